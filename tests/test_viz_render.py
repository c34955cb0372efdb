"""Rendering: system dot and graphviz-pure both turn every view into parseable SVG."""
import os
import re
import shutil
import xml.etree.ElementTree as ET

import pytest

from tinygraph import cli
from tinygraph.viz import diagrams, labels, models_zoo, render

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


# Drawn nodes per view, from the equations (not from the DOT text):
# Elman over T steps: parameters U V W b c; the transposes U^T W^T V^T (once, outside the
# steps); h0; per step the leaves x(t), y(t), the cell a = b + W h + U x (2 matmul, 2 add),
# h = tanh(a), o = c + V h (matmul, add) = 7 ops, the loss L(t) = -(log_softmax(o[t]) * y).sum()
# / B (getitem, log_softmax, mul, sum, neg, div = 6 ops); stack(o); L = stack(L(t)).sum().
ELMAN_OPS = 5 + 3 + 1 + T * (2 + 7 + 6) + 1 + 2
ELMAN_VARIABLES = 5 + 6 * T + 2          # U V W b c; x a h o y L(t) per step; h0, L
# LSTM (T = 3), variables: U W b + head weight, bias; x, y per step; h0, c0; f i g o c h L(t)
# per step; L. Circuit with the layer collapsed to one box (collapse=2): 5 parameters, x y h0
# c0, the box, the head (transpose, matmul, add), the 6 loss ops, stack + sum, 2 delays (h, c)
EXPECTED_NODES = {
    "unfolded-variables": ELMAN_VARIABLES,
    "unfolded-ops": ELMAN_OPS,
    "circuit-variables": 5 + 6 + 2 + 1,  # the cell once, one delay (h)
    "circuit-ops": 5 + 3 + 1 + (2 + 7 + 6) + 1 + 2 + 1,
    "graph-ops": ELMAN_OPS,
    "graph-variables": ELMAN_VARIABLES + len(labels.LEGEND) + 1,  # + the delay's legend text
    "lstm-unfolded": 5 + 2 * 3 + 2 + 7 * 3 + 1,
    "lstm-circuit-collapsed": 5 + 4 + 1 + 3 + 6 + 2 + 2,
}


@pytest.mark.parametrize("renderer", RENDERERS)
def test_every_view_renders_to_svg_with_the_expected_nodes(views, renderer):
    assert set(EXPECTED_NODES) == set(views)
    for name, diagram in views.items():
        svg = render.render_svg(diagram, renderer=renderer)
        nodes = _groups(svg, "node")
        assert len(nodes) == EXPECTED_NODES[name], name
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


# -- the system dot crashed on long backward diagrams (reviewer's exact commands) --------

def _only_system_dot(monkeypatch):
    real_which = shutil.which
    monkeypatch.setattr(render.shutil, "which",
                        lambda name: None if name == "graphviz-pure" else real_which(name))


@pytest.mark.skipif(not shutil.which("dot"), reason="no system Graphviz")
@pytest.mark.parametrize("argv,written", [
    # parallel flat edges (an invisible ordering edge beside c(t-1) -> c(t)): merge_chain abort
    (["--model", "lstm", "--steps", "30", "--backward"], ["x-unfolded.svg", "x-circuit.svg"]),
    # a labelled edge inside one rank (collapsed cell -> itself, label W): trouble in init_rank
    (["--model", "elman", "--steps", "50", "--view", "unfolded", "--backward"], ["x.svg"]),
])
def test_system_dot_renders_long_backward_diagrams(tmp_path, monkeypatch, capsys, argv, written):
    _only_system_dot(monkeypatch)  # no fallback: the system dot itself must cope
    assert cli.main(["draw", *argv, "-o", str(tmp_path / "x.svg")]) == 0, capsys.readouterr().err
    for name in written:
        ET.fromstring((tmp_path / name).read_text())


def _fake_program(path, script):
    path.write_text("#!/bin/sh\n" + script)
    path.chmod(0o755)
    return str(path)


def _fake_renderers(tmp_path, monkeypatch, pure_works):
    crash = "echo 'Error: trouble in init_rank' >&2\n" + "echo '\t%0 31' >&2\n" * 287 + "exit 1\n"
    programs = {
        "dot": _fake_program(tmp_path / "dot", crash),
        "graphviz-pure": _fake_program(
            tmp_path / "graphviz-pure",
            "cat > /dev/null; echo '<svg xmlns=\"http://www.w3.org/2000/svg\"><!-- pure --></svg>'\n"
            if pure_works else "cat > /dev/null; echo 'pure: cannot lay out' >&2; exit 3\n"),
    }
    monkeypatch.setattr(render.shutil, "which", programs.get)


def test_a_dot_crash_falls_back_to_graphviz_pure(views, tmp_path, monkeypatch):
    _fake_renderers(tmp_path, monkeypatch, pure_works=True)
    assert "<!-- pure -->" in render.render_svg(views["circuit-variables"])
    out = render.save(views["circuit-variables"], tmp_path / "out.svg")
    assert "<!-- pure -->" in open(out).read()


def test_renderer_errors_quote_only_the_first_stderr_lines(views, tmp_path, monkeypatch):
    _fake_renderers(tmp_path, monkeypatch, pure_works=False)
    with pytest.raises(render.RenderError) as info:
        render.render_svg(views["circuit-variables"])
    message = str(info.value)
    assert "trouble in init_rank" in message and "pure: cannot lay out" in message
    assert message.count("%0 31") <= 2 and "more lines" in message
    assert len(message) < 600 and "\n" not in message


@pytest.mark.parametrize("argv,message", [
    (["-o", "out.jpeg"], r"unknown file type '\.jpeg'.*\.svg"),
    (["-o", "out"], r"unknown file type"),
    (["--steps", "0", "-o", "out.svg"], r"--steps must be at least 1"),
    (["--show-steps", "0", "-o", "out.svg"], r"--show-steps must be at least 1"),
])
def test_draw_command_checks_arguments_before_building(tmp_path, monkeypatch, capsys, argv, message):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(models_zoo, "build", lambda *a, **k: pytest.fail("built the model first"))
    assert cli.main(["draw", "--model", "elman", *argv]) == 2
    err = capsys.readouterr().err
    assert re.search(message, err) and err.count("\n") == 1
    assert os.listdir(tmp_path) == []


def test_draw_command_bad_collapse_is_a_one_line_error(tmp_path, capsys):
    assert cli.main(["draw", "--model", "elman", "--steps", "2", "--collapse", "nonexistent",
                     "-o", str(tmp_path / "x.svg")]) == 2
    err = capsys.readouterr().err
    assert "matches no scope" in err and err.count("\n") == 1
