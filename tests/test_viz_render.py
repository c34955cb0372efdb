"""Rendering: system dot and graphviz-pure both turn every view into parseable SVG."""
import os
import re
import shutil
import xml.etree.ElementTree as ET

import pytest

from tinygraph import cli
from tinygraph.viz import diagrams, models_zoo, render

SVG = "{http://www.w3.org/2000/svg}"
RENDERERS = [
    pytest.param("dot", marks=pytest.mark.skipif(not shutil.which("dot"), reason="no system Graphviz")),
    pytest.param("graphviz-pure", marks=pytest.mark.skipif(not shutil.which("graphviz-pure"),
                                                           reason="graphviz-pure not installed")),
]
T = 4


def _groups(svg_text, cls):
    root = ET.fromstring(svg_text)
    return [g for g in root.iter(f"{SVG}g") if g.get("class") == cls]


def _dot_node_count(source):
    return len(re.findall(r"^\s*n\d+ \[", source, flags=re.M))


@pytest.fixture(scope="module")
def views():
    example = models_zoo.build("elman", T)
    lstm = models_zoo.build("lstm", 3)
    return {
        "unfolded-variables": diagrams.draw_unfolded(example.loss),
        "unfolded-ops": diagrams.draw_unfolded(example.loss, detail="ops"),
        "circuit-variables": diagrams.draw_circuit(example.loss),
        "circuit-ops": diagrams.draw_circuit(example.loss, detail="ops"),
        "graph-ops": diagrams.draw_graph(example.loss),
        "graph-variables": diagrams.draw_graph(example.loss, detail="variables", legend=True),
        "lstm-unfolded": diagrams.draw_unfolded(lstm.loss),
        "lstm-circuit-collapsed": diagrams.draw_circuit(lstm.loss, detail="ops", collapse=2),
    }


@pytest.mark.parametrize("renderer", RENDERERS)
def test_every_view_renders_to_svg_with_the_expected_nodes(views, renderer):
    for name, diagram in views.items():
        svg = render.render_svg(diagram, renderer=renderer)
        nodes = _groups(svg, "node")
        expected = _dot_node_count(diagram.source) + len(re.findall(r"^\s*legend\d+\w* \[", diagram.source, re.M))
        assert len(nodes) == expected, name
        assert len(_groups(svg, "edge")) > 0


def _clusters_left_to_right(svg):
    clusters = []
    for g in _groups(svg, "cluster"):
        title = g.find(f"{SVG}title").text
        outline = g.find(f".//{SVG}path")
        if outline is None:
            outline = g.find(f".//{SVG}polygon")
        coords = outline.get("d") or outline.get("points")
        xs = [float(v) for v in re.findall(r"(-?\d+\.?\d*),", coords)]
        clusters.append((min(xs), title))
    return [t for _, t in sorted(clusters)]


@pytest.mark.parametrize("renderer", RENDERERS)
def test_textbook_counts_and_time_left_to_right(views, renderer):
    svg = render.render_svg(views["unfolded-variables"], renderer=renderer)
    assert len(_groups(svg, "node")) == 5 + 6 * T + 2  # U V W b c; x a h o y L per step; h0, L
    assert _clusters_left_to_right(svg) == [f"cluster_t{t}" for t in range(T)]
    for name in ("unfolded-ops", "lstm-unfolded"):
        order = _clusters_left_to_right(render.render_svg(views[name], renderer=renderer))
        assert order == sorted(order, key=lambda c: int(c[len("cluster_t"):]))
    circuit = render.render_svg(views["circuit-variables"], renderer=renderer)
    squares = [g for g in _groups(circuit, "node") if "delay of one time step" in ET.tostring(g, encoding="unicode")]
    assert len(squares) == 1


@pytest.mark.parametrize("suffix,magic", [(".svg", b"<?xml"), (".png", b"\x89PNG"), (".pdf", b"%PDF"),
                                          (".dot", b"digraph"), (".gv", b"digraph")])
def test_save_picks_the_format_from_the_suffix(views, tmp_path, suffix, magic):
    path = tmp_path / f"out{suffix}"
    assert render.save(views["circuit-variables"], path) == str(path)
    assert path.read_bytes().startswith(magic)
    assert [p.name for p in tmp_path.iterdir()] == [path.name]  # no temporary files left


def test_save_rejects_unknown_suffix(views, tmp_path):
    with pytest.raises(ValueError, match=r"\.svg"):
        render.save(views["circuit-variables"], tmp_path / "out.jpeg")


def test_without_graphviz_save_writes_dot_and_says_what_to_install(views, tmp_path, monkeypatch):
    monkeypatch.setattr(render.shutil, "which", lambda name: None)
    with pytest.raises(render.RenderError, match="pip install graphviz-pure"):
        render.save(views["circuit-variables"], tmp_path / "out.svg")
    assert (tmp_path / "out.gv").read_text().startswith("digraph")
    assert not (tmp_path / "out.svg").exists()


def test_a_layout_that_runs_too_long_is_stopped(views):
    with pytest.raises(render.RenderError, match="steps="):
        render.render(views["lstm-unfolded"], "svg", timeout=0.000001)


def test_draw_command_writes_both_views(tmp_path, capsys):
    out = tmp_path / "lstm.svg"
    assert cli.main(["draw", "--model", "lstm", "--steps", "3", "--view", "both",
                     "--detail", "variables", "-o", str(out)]) == 0
    for view in ("unfolded", "circuit"):
        path = tmp_path / f"lstm-{view}.svg"
        ET.fromstring(path.read_text())
    assert "wrote" in capsys.readouterr().out


@pytest.mark.parametrize("model", models_zoo.MODEL_NAMES)
def test_draw_command_every_model(tmp_path, model):
    out = tmp_path / f"{model}.gv"
    assert cli.main(["draw", "--model", model, "--steps", "2", "--view", "circuit",
                     "--detail", "ops", "--backward", "-o", str(out)]) == 0
    assert out.read_text().startswith("digraph")
    assert os.listdir(tmp_path) == [f"{model}.gv"]


@pytest.mark.skipif(not shutil.which("graphviz-pure"), reason="graphviz-pure not installed")
def test_without_system_dot_graphviz_pure_renders(views, tmp_path, monkeypatch):
    real_which = shutil.which
    monkeypatch.setattr(render.shutil, "which", lambda name: None if name == "dot" else real_which(name))
    path = render.save(views["unfolded-variables"], tmp_path / "out.svg")
    assert "graphviz-pure" in open(path).read()
    from graphviz.backend import dot_command
    monkeypatch.setattr(dot_command, "DOT_BINARY", dot_command.DOT_BINARY)  # restored after the test
    assert render.use_graphviz_pure()  # the python graphviz package now uses it too
    assert "graphviz-pure" in str(dot_command.DOT_BINARY)
