"""User text in diagrams is drawn literally; `tinygraph draw/step` bad paths are one-line errors.

Escaping is checked on what Graphviz draws (the SVG ``<text>`` of a node or edge)
when a renderer is installed, and always on the DOT source, decoded the way
Graphviz reads it (quoted string, then escString, then entities).
"""
import html
import importlib
import inspect
import re
import shutil
import subprocess
import warnings
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest

import tinygraph as tg
from tinygraph import cli
from tinygraph.viz import diagrams, labels, models_zoo, render, step_command

# the package exports the function under the module's name
player = importlib.import_module("tinygraph.viz.stepper_html")

SVG = "{http://www.w3.org/2000/svg}"
DOCS = Path(__file__).resolve().parents[1] / "docs" / "diagrams.md"
RENDERERS = [
    pytest.param("dot", marks=pytest.mark.skipif(not shutil.which("dot"), reason="no system Graphviz")),
    pytest.param("graphviz-pure", marks=pytest.mark.skipif(not shutil.which("graphviz-pure"),
                                                           reason="graphviz-pure not installed")),
]
NAMES = [
    'say "hi"', "<x>", "<b>bold</b>", "a < b > c", "a & b", "&amp;", "back\\", "a\\lb",
    "\\N", 'q\\"', "dL/dW ∂ é 中",
]
SCOPES = ["cell\\", "<scope>", "a&b"]


def _graph(name, scope="cell"):
    """tanh(x @ P) summed, P a parameter called ``name``, the matmul inside ``scope``."""
    W = tg.nn.Parameter(np.ones((2, 2)), name=name)
    x = tg.Tensor(np.ones((1, 2)), name="x")
    with tg.scope(scope):
        h = tg.tanh(x @ W)
        h.name = "h"
    return h.sum()


# -- reading DOT back the way Graphviz does ------------------------------------------------

_STMT = re.compile(r"^\s*(\w+)(?: -> (\w+))?\s+\[(.*)\]\s*$", re.M)
_ATTR = re.compile(r'(\w+)=("(?:[^"\\]|\\.)*"|<|[^\s\]]+)')


def _escstring(raw):
    """The text Graphviz draws for one DOT attribute value (quoted or a bare ID)."""
    if not raw.startswith('"'):
        return raw
    body = raw[1:-1]
    # \" is the lexer's, \\ \n \l \r the escString's; entities are decoded last
    text = re.sub(r'\\(.)', lambda m: "\n" if m.group(1) in "nlr" else m.group(1), body)
    return html.unescape(text)


def _statements(source):
    """[(node or (tail, head), {attribute: raw value})] for node and edge statements."""
    found = []
    for tail, head, attrs in _STMT.findall(source):
        key = (tail, head) if head else tail
        found.append((key, dict(_ATTR.findall(attrs))))
    return found


def _svg_texts(svg, cls):
    """The text lines drawn in each SVG group of class ``cls`` (node / edge / cluster)."""
    root = ET.fromstring(svg)
    return [[t.text or "" for t in g.iter(f"{SVG}text")]
            for g in root.iter(f"{SVG}g") if g.get("class") == cls]


def _render(source, renderer):
    done = subprocess.run([shutil.which(renderer), "-Tsvg"], input=source.encode("utf-8"),
                          capture_output=True, timeout=60)
    assert done.returncode == 0, done.stderr.decode("utf-8", "replace")
    return done.stdout.decode("utf-8")


# -- 1. escaping ----------------------------------------------------------------------------

@pytest.mark.parametrize("name", NAMES)
def test_dot_labels_of_user_names_are_quoted_literal_text(name):
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # graphviz warns on DOT it knows is invalid
        source = diagrams.draw_graph(_graph(name), show_shapes=False).source
    stmts = _statements(source)
    nodes = [_escstring(a["label"]) for k, a in stmts if isinstance(k, str) and "label" in a]
    edges = [_escstring(a["label"]) for k, a in stmts if isinstance(k, tuple) and "label" in a]
    assert name in nodes  # the parameter's node
    assert edges == [name]  # the parameter's edge label
    for _, attrs in stmts:
        assert attrs.get("label") != "<", "an HTML-like label"


@pytest.mark.parametrize("renderer", RENDERERS)
@pytest.mark.parametrize("name", NAMES)
def test_rendered_labels_are_the_literal_names(name, renderer):
    svg = _render(diagrams.draw_graph(_graph(name), show_shapes=False).source, renderer)
    assert [name] in _svg_texts(svg, "node")
    assert [texts for texts in _svg_texts(svg, "edge") if texts] == [[name]]


@pytest.mark.parametrize("renderer", RENDERERS)
def test_a_newline_in_a_name_is_a_line_break(renderer):
    source = diagrams.draw_graph(_graph("top\nbottom"), show_shapes=False).source
    # still one statement per line (the stepper reads node statements line by line)
    labels_read = [_escstring(a["label"]) for _, a in _statements(source) if "label" in a]
    assert labels_read.count("top\nbottom") == 2  # the node and its edge
    assert ["top", "bottom"] in _svg_texts(_render(source, renderer), "node")


@pytest.mark.parametrize("scope", SCOPES)
def test_scopes_in_tooltips_and_collapsed_boxes_are_literal(scope):
    source = diagrams.draw_graph(_graph("W", scope), collapse=scope, title=f"t {scope}").source
    stmts = dict((k, a) for k, a in _statements(source) if isinstance(k, str))
    (group,) = [a for a in stmts.values() if "box3d" in a.get("shape", "")]
    assert _escstring(group["label"]).split("\n")[0] == scope
    assert f"scope: {scope}" in _escstring(group["tooltip"])
    for renderer in ("dot", "graphviz-pure"):
        if shutil.which(renderer):
            texts = _svg_texts(_render(source, renderer), "node")
            assert any(lines[:1] == [scope] for lines in texts)


@pytest.mark.parametrize("renderer", RENDERERS)
def test_notes_titles_and_the_legend_render(renderer):
    example = models_zoo.build("elman", 3)
    diagram = diagrams.draw_unfolded(example.loss, steps=2, legend=True, title="<b>x</b> y\\")
    svg = _render(diagram.source, renderer)
    drawn = {line for group in _svg_texts(svg, "node") for line in group}
    assert {text for _, text in labels.LEGEND} <= drawn
    (notes,) = _svg_texts(svg, "graph")
    assert any("time steps" in line for line in notes)


# -- 3. parameter gradients: colour, legend and docs agree ----------------------------------

def _style(attrs):
    return {k: _escstring(attrs[k]) for k in ("shape", "fillcolor", "color") if k in attrs}


@pytest.mark.parametrize("detail", ["variables", "ops"])
def test_parameter_gradients_look_like_the_legend_entry_that_names_them(detail):
    example = models_zoo.build("elman", 2)
    source = diagrams.draw_circuit(example.loss, detail=detail, backward=True,
                                   legend=True).source
    stmts = [(k, a) for k, a in _statements(source) if isinstance(k, str) and "label" in a]
    legend = {_escstring(a["label"]): _style(a) for k, a in stmts if k.startswith("legend")}
    naming = [text for text in legend if "dL/dW" in text]
    assert len(naming) == 1, "exactly one legend entry covers parameter gradients"
    grads = [a for k, a in stmts if not k.startswith("legend")
             and re.match(r"dL/d\w+", _escstring(a["label"]))]
    assert grads, "the backward drawing shows the parameter gradients"
    for attrs in grads:
        assert _style(attrs) == legend[naming[0]]
    # the total loss L (not a per-step L(t) term) is the one red output
    output = legend[next(t for t in legend if "loss L" in t)]
    outputs = [_escstring(a["label"]).split("\n")[0] for k, a in stmts
               if not k.startswith("legend") and _style(a) == output]
    assert outputs == ["L"]


def test_the_docs_table_gives_parameter_gradients_the_backward_colour():
    rows = [line for line in DOCS.read_text(encoding="utf-8").splitlines()
            if line.startswith("| ") and "dL/dW" in line]
    assert len(rows) == 1
    look = rows[0].split("|")[1]
    assert "purple" in look and labels.STYLE["backward"]["fillcolor"] == "#e5dbff"
    (output,) = [line for line in DOCS.read_text(encoding="utf-8").splitlines()
                 if line.startswith("| red double ellipse")]
    assert "gradient" not in output


# -- 2. the CLI: bad paths and too-long walks are one-line errors, exit status 2 ------------

def _one_line_error(capsys, prefix):
    err = capsys.readouterr().err
    assert err.startswith(f"{prefix}: ") and err.count("\n") == 1, err
    assert "Traceback" not in err and "Error:" not in err
    return err


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "afile").write_text("not a directory")
    (tmp_path / "d.svg").mkdir()
    (tmp_path / "d.html").mkdir()
    return tmp_path


@pytest.mark.parametrize("argv,reason", [
    (["-o", "afile/x.svg"], "afile is not a directory"),
    (["--view", "circuit", "-o", "d.svg"], "d.svg is a directory"),
    (["--view", "circuit", "-o", "afile/deeper/x.svg"], "afile is not a directory"),
    (["--view", "both", "-o", "d.svg"], None),  # d-unfolded.svg, d-circuit.svg are fine
])
def test_draw_rejects_unwritable_outputs_before_building(workdir, monkeypatch, capsys, argv,
                                                         reason):
    if reason is None:
        monkeypatch.setattr(render, "save", lambda diagram, path: Path(path).write_text("x"))
        assert cli.main(["draw", "--model", "elman", "--steps", "1", *argv]) == 0
        assert (workdir / "d-unfolded.svg").exists() and (workdir / "d-circuit.svg").exists()
        return
    monkeypatch.setattr(models_zoo, "build", lambda *a, **k: pytest.fail("built the model first"))
    assert cli.main(["draw", "--model", "elman", *argv]) == 2
    assert reason in _one_line_error(capsys, "tinygraph draw")


def test_draw_reports_a_failed_write_in_one_line(workdir, monkeypatch, capsys):
    def denied(diagram, path):
        raise PermissionError(13, "Permission denied", str(workdir / ".x.gv.1234.tmp"))

    monkeypatch.setattr(render, "save", denied)
    assert cli.main(["draw", "--model", "elman", "--steps", "1", "--view", "circuit",
                     "-o", "x.gv"]) == 2
    err = _one_line_error(capsys, "tinygraph draw")
    assert "x.gv" in err and "Permission denied" in err and ".tmp" not in err


@pytest.mark.parametrize("target,reason", [
    ("afile/x.html", "afile is not a directory"),
    ("d.html", "d.html is a directory"),
])
def test_step_html_rejects_unwritable_paths_before_walking(workdir, monkeypatch, capsys,
                                                           target, reason):
    monkeypatch.setattr(models_zoo, "build", lambda *a, **k: pytest.fail("built the model first"))
    assert cli.main(["step", "--html", target]) == 2
    assert reason in _one_line_error(capsys, "tinygraph step")


def test_step_html_reports_a_failed_write_in_one_line(workdir, monkeypatch, capsys):
    def denied(stepper, path, **kw):
        raise PermissionError(13, "Permission denied", str(workdir / ".w.html.99.tmp"))

    monkeypatch.setattr(player, "stepper_html", denied)
    assert cli.main(["step", "--steps", "1", "--html", "w.html"]) == 2
    err = _one_line_error(capsys, "tinygraph step")
    assert "w.html" in err and "Permission denied" in err and ".tmp" not in err


@pytest.mark.parametrize("argv", [
    ["--model", "lstm", "--steps", "100"],  # the reviewer's: more than the default limit
    ["--model", "elman", "--steps", "2", "--max-steps", "5"],
])
def test_step_html_too_long_a_walk_names_the_cli_options(workdir, capsys, argv):
    assert cli.main(["step", *argv, "--html", "big.html"]) == 2
    err = _one_line_error(capsys, "tinygraph step")
    steps = int(re.search(r"the walk has (\d+) steps", err).group(1))
    limit = int(re.search(r"--max-steps (\d+)", err).group(1))
    assert steps > limit and "--steps" in err and "max_steps" not in err
    assert not (workdir / "big.html").exists()


def test_step_max_steps_option_defaults_to_the_players_limit(workdir, capsys):
    default = inspect.signature(player.stepper_html).parameters["max_steps"].default
    assert step_command.HTML_MAX_STEPS == default
    assert cli.main(["step", "--max-steps", "0", "--html", "x.html"]) == 2
    assert "--max-steps must be at least 1" in _one_line_error(capsys, "tinygraph step")
