"""Review fixes: the HTML player's embedded JSON, matplotlib plots, render errors, `tinygraph bench` options."""
import json
import os
import re
import shutil
import xml.etree.ElementTree as ET

import numpy as np
import pytest

import tinygraph as tg
from tinygraph.stepper import Stepper
from tinygraph.training import History
from tinygraph.viz import render

AWKWARD = "<!--<script>"
CHROMIUM = shutil.which("chromium") or ("/usr/bin/chromium" if os.path.exists("/usr/bin/chromium") else None)
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
NEEDS_GRAPHVIZ = pytest.mark.skipif(not (shutil.which("dot") or shutil.which("graphviz-pure")),
                                    reason="needs a Graphviz renderer (dot or graphviz-pure)")


# -- 1. the HTML player: a name with "<!--" and "<script" must not break the page ---------------

def _awkward_graph(name):
    """tanh(x W).sum() with the parameter called ``name``."""
    W = tg.nn.Parameter(np.ones((2, 2)), name=name)
    x = tg.Tensor(np.ones((1, 2)), name="x")
    with tg.scope("cell"):
        h = tg.tanh(x @ W)
        h.name = "h"
    return h.sum()


def _embedded_json(page):
    match = re.search(r'<script type="application/json" id="steps-data">(.*?)</script>', page, re.S)
    assert match, "no steps-data script element"
    return match.group(1)


def test_script_json_has_no_lt_and_reads_back_the_same():
    from tinygraph.viz.stepper_html import _json_for_script
    data = [{"label": AWKWARD + "</script><b>", "values": "a < b"}]
    text = _json_for_script(data)
    assert "<" not in text
    assert json.loads(text) == data


@pytest.fixture(scope="module")
def awkward_page(tmp_path_factory):
    from tinygraph.viz.stepper_html import stepper_html
    stepper = Stepper(_awkward_graph(AWKWARD))
    path = tmp_path_factory.mktemp("awkward") / "walk.html"
    return stepper, path, stepper_html(stepper, str(path), view="unfolded")


@NEEDS_GRAPHVIZ
def test_awkward_name_stays_inert_in_the_page(awkward_page):
    stepper, _, page = awkward_page
    embedded = _embedded_json(page)
    assert "<!--" not in embedded and "<script" not in embedded
    steps = json.loads(embedded)
    assert [s["label"] for s in steps[1:]] == [e.label for e in stepper.events]
    assert any(AWKWARD in s["values"] for s in steps)  # the name itself survives the escaping


@NEEDS_GRAPHVIZ
@pytest.mark.browser
def test_awkward_page_plays_to_its_last_step_in_chromium(awkward_page):
    if CHROMIUM is None:
        pytest.skip("needs Chromium (Debian package `chromium`)")
    sync_api = pytest.importorskip("playwright.sync_api")
    stepper, path, text = awkward_page
    last = len(stepper)
    last_header = json.loads(_embedded_json(text))[-1]["header"]
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page()
            errors = []
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.goto(path.as_uri())
            assert page.inner_text("#step-index") == f"0 / {last}"  # the player's script ran
            for _ in range(last + 1):
                page.keyboard.press("ArrowRight")
            assert page.inner_text("#step-index") == f"{last} / {last}"
            assert page.text_content("#node-label") == last_header
            assert errors == []
        finally:
            browser.close()


# -- plots ------------------------------------------------------------------------------------

@pytest.fixture
def plt():
    pytest.importorskip("matplotlib")
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as pyplot
    yield pyplot
    pyplot.close("all")


def _lines(fig):
    """label -> (x, y) of every line on the figure's first axes."""
    return {line.get_label(): (np.asarray(line.get_xdata(), float), np.asarray(line.get_ydata(), float))
            for line in fig.axes[0].get_lines()}


# -- 2. plot_loss_curve draws a dict's per-epoch losses

def test_loss_dict_epochs_sit_at_the_end_of_equal_shares(plt):
    from tinygraph.viz import plot_loss_curve
    loss, train, evals = [3, 2.5, 2, 1.8, 1.7, 1.6], [2.75, 1.9, 1.65], [2.8, 2.0, 1.7]
    lines = _lines(plot_loss_curve({"loss": loss, "train_loss": train, "eval_loss": evals}))
    per_epoch = len(loss) // len(train)
    ends = [per_epoch * (i + 1) for i in range(len(train))]
    np.testing.assert_array_equal(lines["train (epoch mean)"][0], ends)
    np.testing.assert_array_equal(lines["train (epoch mean)"][1], train)
    np.testing.assert_array_equal(lines["eval"][0], ends)
    np.testing.assert_array_equal(lines["eval"][1], evals)


def test_loss_dict_from_history_arrays_uses_its_epoch_labels(plt):
    from tinygraph.viz import plot_loss_curve
    history = History(step_loss=[2.0, 1.5, 1.2, 0.9], step_epoch=[1, 1, 1, 2],
                      epochs=[{"epoch": 1, "train_loss": 1.6}, {"epoch": 2, "train_loss": 0.9}])
    data = dict(history.arrays(), train_loss=history.metric("train_loss"))
    x, y = _lines(plot_loss_curve(data))["train (epoch mean)"]
    labels = np.asarray(history.step_epoch)
    np.testing.assert_array_equal(x, [np.flatnonzero(labels == e)[-1] + 1 for e in (1, 2)])
    np.testing.assert_array_equal(y, history.metric("train_loss"))


def test_loss_dict_with_only_per_epoch_losses_is_drawn_per_epoch(plt):
    from tinygraph.viz import plot_loss_curve
    train = [2.75, 1.9]
    fig = plot_loss_curve({"train_loss": train})
    x, y = _lines(fig)["train (epoch mean)"]
    np.testing.assert_array_equal(x, np.arange(1, len(train) + 1))
    np.testing.assert_array_equal(y, train)
    assert fig.axes[0].get_xlabel() == "epoch"


def test_loss_dict_epoch_labels_must_cover_every_update(plt):
    from tinygraph.viz import plot_loss_curve
    with pytest.raises(ValueError, match="every update"):
        plot_loss_curve({"loss": [3, 2, 1], "step_epoch": [1, 2], "train_loss": [2, 1]})


# -- 3. plot_gradient_flow draws a per_state (h, c) result as one line per state

def test_gradient_flow_per_state_is_one_line_per_state(plt):
    from tinygraph import bptt
    from tinygraph.models import LSTM
    from tinygraph.viz import plot_gradient_flow
    tg.manual_seed(0)
    xs = tg.tensor(np.random.default_rng(0).normal(size=(5, 1, 3)).astype(np.float32))
    flow = bptt.gradient_flow(LSTM(3, 4), xs, None, lambda out, tgt: (out[-1] ** 2).sum(), per_state=True)
    lines = _lines(plot_gradient_flow({"lstm": flow, "plain": flow[0]}))
    assert set(lines) == {"lstm (h)", "lstm (c)", "plain"}
    for label, norms in (("lstm (h)", flow[0]), ("lstm (c)", flow[1]), ("plain", flow[0])):
        x, y = lines[label]
        np.testing.assert_array_equal(x, np.arange(len(norms)))
        shown = norms > 0  # zeros are left out of the log scale
        np.testing.assert_allclose(y[shown], norms[shown])


def test_gradient_flow_refuses_more_than_two_dimensions(plt):
    from tinygraph.viz import plot_gradient_flow
    with pytest.raises(ValueError, match="states, T"):
        plot_gradient_flow({"odd": np.ones((2, 2, 3))})


# -- 4. the suffix picks the plot's file format

def _svg_root(path):
    return ET.parse(path).getroot().tag


@pytest.mark.parametrize("suffix,check", [
    (".png", lambda p: p.read_bytes().startswith(b"\x89PNG\r\n\x1a\n")),
    (".svg", lambda p: _svg_root(p) == "{http://www.w3.org/2000/svg}svg"),
    (".pdf", lambda p: p.read_bytes().startswith(b"%PDF-")),
    (".PDF", lambda p: p.read_bytes().startswith(b"%PDF-")),
])
def test_plot_file_format_follows_the_suffix(plt, tmp_path, suffix, check):
    from tinygraph.viz import plot_loss_curve
    path = tmp_path / f"curve{suffix}"
    plot_loss_curve([3, 2, 1], path=path)
    assert check(path)
    assert os.listdir(tmp_path) == [path.name]  # no temporary file left behind


@pytest.mark.parametrize("name", ["curve.xyz", "curve"])
def test_plot_refuses_an_unknown_suffix_before_drawing(plt, tmp_path, name):
    from tinygraph.viz import plot_gradient_flow, plot_loss_curve
    before = plt.get_fignums()
    with pytest.raises(ValueError, match=r"\.png"):
        plot_loss_curve([3, 2, 1], path=tmp_path / name)
    with pytest.raises(ValueError, match=r"\.svg"):
        plot_gradient_flow({"a": [1.0, 0.5]}, path=tmp_path / name)
    assert plt.get_fignums() == before  # no figure opened and left behind
    assert os.listdir(tmp_path) == []


def test_save_figure_writes_svg(plt, tmp_path):
    from tinygraph.viz.plots import save_figure
    fig, ax = plt.subplots()
    ax.plot([0, 1], [1, 0])
    path = save_figure(fig, tmp_path / "fig.svg")
    assert _svg_root(path) == "{http://www.w3.org/2000/svg}svg"


# -- 5. render errors: hints only where they help ---------------------------------------------

DIAGRAM = "digraph { a -> b }"


def _fake_program(path, script):
    path.write_text("#!/bin/sh\n" + script)
    path.chmod(0o755)
    return str(path)


def _only(monkeypatch, **programs):
    """PATH holds exactly these programs (name -> path)."""
    monkeypatch.setattr(render.shutil, "which", programs.get)


def test_pdf_with_only_graphviz_pure_needs_system_graphviz(tmp_path, monkeypatch):
    marker = tmp_path / "pure-was-run"
    pure = _fake_program(tmp_path / "graphviz-pure", f"touch {marker}; exit 1\n")
    _only(monkeypatch, **{"graphviz-pure": pure})
    with pytest.raises(render.RenderError) as info:
        render.save(DIAGRAM, tmp_path / "out.pdf")
    message = str(info.value)
    assert "apt-get install graphviz" in message and "pip install graphviz-pure" not in message
    assert (tmp_path / "out.gv").read_text() == DIAGRAM  # the fallback, as for the other failures
    assert not (tmp_path / "out.pdf").exists() and not marker.exists()


@pytest.mark.skipif(not shutil.which("graphviz-pure"), reason="graphviz-pure not installed")
def test_real_graphviz_pure_alone_pdf_and_svg(tmp_path, monkeypatch):
    real = shutil.which
    monkeypatch.setattr(render.shutil, "which", lambda name: None if name == "dot" else real(name))
    with pytest.raises(render.RenderError, match="system Graphviz"):
        render.save(DIAGRAM, tmp_path / "out.pdf")
    assert (tmp_path / "out.gv").exists()
    svg = render.save(DIAGRAM, tmp_path / "out.svg")
    assert ET.parse(svg).getroot().tag.endswith("svg")


def test_missing_renderer_dot_points_at_the_installed_one(tmp_path, monkeypatch):
    pure = _fake_program(tmp_path / "graphviz-pure", "cat > /dev/null; echo '<svg/>'\n")
    _only(monkeypatch, **{"graphviz-pure": pure})
    with pytest.raises(render.RenderError) as info:
        render.save(DIAGRAM, tmp_path / "out.svg", renderer="dot")
    message = str(info.value)
    assert "dot not found" in message and "renderer='graphviz-pure'" in message
    assert "pip install graphviz-pure" not in message
    assert (tmp_path / "out.gv").exists()


SYNTAX_ERROR = "cat > /dev/null; echo \"Error: <stdin>: syntax error in line 1 near '}'\" >&2; exit 1\n"
CRASH = "cat > /dev/null; echo 'Error: trouble in init_rank' >&2; exit 1\n"


@pytest.mark.parametrize("name,script,hinted", [
    ("graphviz-pure", CRASH, False),    # the renderer that failed is the one the hint names
    ("dot", SYNTAX_ERROR, False),       # bad DOT fails in every renderer
    ("dot", CRASH, True),               # a dot crash: graphviz-pure would be a second chance
])
def test_fallback_hint_only_when_it_helps(tmp_path, monkeypatch, name, script, hinted):
    _only(monkeypatch, **{name: _fake_program(tmp_path / name, script)})
    with pytest.raises(render.RenderError) as info:
        render.save(DIAGRAM, tmp_path / "out.svg")
    assert ("pip install graphviz-pure" in str(info.value)) == hinted
    assert f"{name} failed" in str(info.value)
    assert not (tmp_path / "out.svg").exists()


# -- 6-9. `tinygraph bench` options -----------------------------------------------------------

def _bench_error(capsys, argv):
    """Run `tinygraph bench ARGV`, which must stop with a usage error; its stderr."""
    from tinygraph import cli
    with pytest.raises(SystemExit) as info:
        cli.main(["bench", *argv])
    assert info.value.code == 2
    return capsys.readouterr().err


def test_bench_help_names_the_tinygraph_command(capsys):
    from tinygraph import cli
    with pytest.raises(SystemExit) as info:
        cli.main(["bench", "--help"])
    assert info.value.code == 0
    assert capsys.readouterr().out.startswith("usage: tinygraph bench ")
    assert "tinygraph bench: error: unknown workloads" in _bench_error(capsys, ["--workloads", "Z"])


@pytest.mark.parametrize("argv", [["--rounds", "0"], ["--rounds", "-1"], ["--repeat", "0"], ["--repeat", "-1"]])
def test_bench_refuses_counts_below_one(capsys, monkeypatch, argv):
    import benchmarks.__main__ as suite
    monkeypatch.setattr(suite, "run_cpu_workload", lambda *a: pytest.fail("ran a workload"))
    err = _bench_error(capsys, ["--workloads", "A", *argv])
    assert f"argument {argv[0]}: must be at least 1" in err


def test_explicit_rounds_and_repeat_win_over_quick():
    from benchmarks.__main__ import parse_args, settings_for
    from benchmarks.workloads import WORKLOADS
    quick = settings_for(parse_args(["--quick"]))(WORKLOADS["A"])
    assert settings_for(parse_args(["--quick", "--rounds", "5"]))(WORKLOADS["A"]) == (5, quick[1])
    assert settings_for(parse_args(["--quick", "--repeat", "4"]))(WORKLOADS["A"]) == (quick[0], 4)
    assert settings_for(parse_args(["--rounds", "1", "--repeat", "1"]))(WORKLOADS["E"]) == (1, 1)


def test_bench_json_folder_is_checked_before_the_run(capsys, monkeypatch, tmp_path):
    import benchmarks.__main__ as suite
    monkeypatch.setattr(suite, "run_cpu_workload", lambda *a: pytest.fail("ran a workload"))
    missing = tmp_path / "nodir" / "r.json"
    err = _bench_error(capsys, ["--quick", "--workloads", "A", "--json", str(missing)])
    assert "does not exist" in err and str(missing.parent) in err


def test_bench_quick_with_only_e_is_an_error(capsys, monkeypatch):
    import benchmarks.__main__ as suite
    monkeypatch.setattr(suite, "run_cpu_workload", lambda *a: pytest.fail("ran a workload"))
    err = _bench_error(capsys, ["--quick", "--workloads", "E"])
    assert "--quick leaves out the large workload E" in err


def _no_constants(name):
    raise AssertionError(f"JSON holds {name}, which is not JSON")


def test_bench_run_records_the_explicit_counts_as_strict_json(tmp_path):
    from tinygraph import cli
    out = tmp_path / "bench.json"
    assert cli.main(["bench", "--quick", "--workloads", "D", "--rounds", "1", "--repeat", "2",
                     "--json", str(out)]) == 0
    record = json.loads(out.read_text(), parse_constant=_no_constants)["workloads"]["D"]
    assert (record["rounds"], record["repeat"]) == (1, 2)
    assert all(np.isfinite(ms) and ms > 0 for ms in record["results"].values())


# -- second review: regressions of the first fixes -----------------------------------------
def test_a_plain_per_epoch_dict_and_a_column_of_norms_draw():
    from tinygraph.viz import plots
    fig = plots.plot_loss_curve({"epoch": [1, 2, 3], "train_loss": [1.0, 0.7, 0.5]})
    drawn = [line.get_ydata() for ax in fig.axes for line in ax.get_lines()]
    assert any(np.allclose(y, [1.0, 0.7, 0.5]) for y in drawn)
    fig = plots.plot_gradient_flow({"rnn": np.array([[1.0], [0.5], [0.25]])})
    lines = fig.axes[0].get_lines()
    assert len(lines) == 1 and np.allclose(lines[0].get_ydata(), [1.0, 0.5, 0.25])
    assert len(plots.plot_gradient_flow({"lstm": np.ones((2, 3))}).axes[0].get_lines()) == 2   # (h, c) rows


@pytest.mark.parametrize("argv, message", [
    (["--workloads", ","], "no workload selected"),
    (["--gpu-only", "--workloads", "A,C"], "--gpu-only runs B, E"),
])
def test_bench_refuses_a_selection_that_times_nothing(argv, message, capsys):
    from benchmarks.__main__ import parse_args
    with pytest.raises(SystemExit):
        parse_args(argv)
    assert message in capsys.readouterr().err


def test_bench_refuses_a_json_path_that_is_a_folder(tmp_path, capsys):
    from benchmarks.__main__ import parse_args
    with pytest.raises(SystemExit):
        parse_args(["--json", str(tmp_path)])
    assert "that is a folder" in capsys.readouterr().err
