"""Every example's --quick mode runs on tiny data, its loss decreases, and it reports a RESULT line.

The examples run in-process (their ``main(argv)`` returns the summary they
also write to results.json), which keeps this file fast.
"""
import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pytest

from tinygraph import data

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
SHARED = data.shared_data_dir()
NEEDS = {
    "sentiment": SHARED / "sentence-polarity",
    "pos_tagging": SHARED / "ud-english-ewt",
    "spoken_digits": SHARED / "free-spoken-digit" / "train",
}
ALL = ["char_lm", "pos_tagging", "sentiment", "spoken_digits", "adding_problem", "copy_task",
       "dynamical_system", "jordan_teacher_forcing"]


def load_example(name):
    if str(EXAMPLES) not in sys.path:
        sys.path.insert(0, str(EXAMPLES))  # the examples import their shared helper, _common
    spec = importlib.util.spec_from_file_location(f"example_{name}", EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def series(loss_history):
    """The loss histories of a summary: one list, or one per model."""
    if isinstance(loss_history, dict):
        return loss_history
    return {"model": loss_history}


def skip_without_data(name):
    path = NEEDS.get(name)
    if path is not None and not path.exists():
        pytest.skip(f"shared data for {name} not found at {path} (set TINYGRAPH_DATA)")


@pytest.mark.parametrize("name", ALL)
def test_example_has_help(name, capsys):
    module = load_example(name)
    with pytest.raises(SystemExit) as stop:
        module.main(["--help"])
    assert stop.value.code == 0
    text = capsys.readouterr().out
    assert "--quick" in text and "--seed" in text


@pytest.mark.parametrize("name", ALL)
def test_example_quick_run_learns(name, tmp_path, capsys):
    skip_without_data(name)
    module = load_example(name)
    summary = module.main(["--quick", "--seed", "0", "-o", str(tmp_path)])
    printed = capsys.readouterr().out
    assert "RESULT:" in printed.splitlines()[-1]
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["task"] == summary["task"]
    for label, losses in series(summary["loss_history"]).items():
        losses = np.asarray(losses, dtype=float)
        assert np.all(np.isfinite(losses)), f"{name}/{label}: non-finite loss"
        k = max(1, len(losses) // 4)
        assert losses[-k:].mean() < losses[:k].mean(), f"{name}/{label}: loss did not decrease: {losses}"
    for picture in summary["pictures"]:
        assert Path(picture).stat().st_size > 0


def test_char_lm_compares_full_and_truncated_bptt(tmp_path, capsys):
    module = load_example("char_lm")
    summary = module.main(["--quick", "--compare-bptt", "-o", str(tmp_path), "--steps", "16"])
    labels = list(summary["val_bits_per_char"])
    assert len(labels) == 2 and any("full" in label for label in labels)
    updates = {label: h["update"][-1] for label, h in summary["histories"].items()}
    # same characters read, so full BPTT over 4 windows makes 4x fewer updates
    assert updates[labels[0]] == 4 * updates[labels[1]]


def test_char_lm_decomposed_traced_trains_as_the_eager_run(tmp_path, capsys):
    module = load_example("char_lm")
    runs = {flag: module.main(["--quick", "--decomposed", "--steps", "6", "-o", str(tmp_path / str(i)), *flag])
            for i, flag in enumerate([(), ("--traced",)])}
    eager, traced = runs[()], runs[("--traced",)]
    assert traced["traced"] and traced["decomposed"] and not eager["traced"]
    np.testing.assert_allclose(traced["loss_history"]["TBPTT k=16"], eager["loss_history"]["TBPTT k=16"],
                               rtol=1e-4)
    assert traced["val_bits_per_char"] == pytest.approx(eager["val_bits_per_char"], rel=1e-4)


def test_char_lm_reads_any_text_file(tmp_path, capsys):
    text = tmp_path / "tiny.txt"
    text.write_text("the quick brown fox jumps over the lazy dog. " * 200)
    module = load_example("char_lm")
    summary = module.main(["--quick", "--data", str(text), "-o", str(tmp_path / "out")])
    assert summary["source"] == str(text)
    assert "unigram baseline" in capsys.readouterr().out.splitlines()[-1]


def test_char_lm_explicit_missing_data_is_an_error(tmp_path, capsys):
    """A --data path the user names must exist; only the default path falls back on the pydoc text."""
    module = load_example("char_lm")
    missing = tmp_path / "no-such-file.txt"
    with pytest.raises(SystemExit) as stop:
        module.main(["--quick", "--data", str(missing), "-o", str(tmp_path / "out")])
    assert stop.value.code == 2
    captured = capsys.readouterr()
    assert captured.err.strip().count("\n") == 0 and str(missing) in captured.err, captured.err
    assert "pydoc" not in captured.out
    assert not (tmp_path / "out").exists()  # stopped before making the output folder


def test_char_lm_default_data_falls_back_on_pydoc_text(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("TINYGRAPH_DATA", str(tmp_path / "no-shared-data"))  # the default path is missing
    module = load_example("char_lm")
    summary = module.main(["--quick", "--steps", "4", "-o", str(tmp_path / "out")])
    assert summary["source"].startswith("pydoc_data/topics.py")
    assert "using Python's pydoc_data/topics.py text" in capsys.readouterr().out


@pytest.mark.parametrize("name, argv", [
    ("sentiment", ["--data"]), ("spoken_digits", ["--data"]), ("pos_tagging", ["--data"]),
    ("pos_tagging", ["--train"]), ("char_lm", ["--data"]),
])
def test_missing_data_exits_2_with_one_line(name, argv, tmp_path, capsys):
    missing = tmp_path / "nonexistent"
    module = load_example(name)
    with pytest.raises(SystemExit) as stop:
        module.main(["--quick", *argv, str(missing), "-o", str(tmp_path / "out")])
    assert stop.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.strip().count("\n") == 0, err
    assert f"not found at {missing}; pass its path with {argv[0]}" in err, err


def test_tutorial_code_runs(tmp_path, monkeypatch, capsys):
    """Every ```python block of docs/tutorial.md runs, in order, in one namespace."""
    import re
    text = (EXAMPLES.parent / "docs" / "tutorial.md").read_text(encoding="utf-8")
    blocks = re.findall(r"```python\n(.*?)```", text, re.S)
    assert len(blocks) > 10
    monkeypatch.chdir(tmp_path)
    namespace = {}
    for i, block in enumerate(blocks):
        exec(compile(block, f"docs/tutorial.md block {i}", "exec"), namespace)
    assert "BPTT equations match" in capsys.readouterr().out
    for picture in ("gradient_flow_scales.png", "gradient_flow_cells.png", "rnn_circuit.svg"):
        assert (tmp_path / "img" / picture).stat().st_size > 0


@pytest.mark.parametrize("doc, expect", [
    ("bptt.md", ("flow.png", "heat.png", "loss.png", "run.npz")),
    ("models.md", ("model.npz", "ckpt.npz")),
])
def test_doc_code_runs(doc, expect, tmp_path, monkeypatch, capsys):
    """Every ```python block of docs/bptt.md and docs/models.md runs, in order, in one namespace:
    no fragment uses a name that the page has not defined."""
    import re
    text = (EXAMPLES.parent / "docs" / doc).read_text(encoding="utf-8")
    blocks = re.findall(r"```python\n(.*?)```", text, re.S)
    assert len(blocks) >= 8
    monkeypatch.chdir(tmp_path)
    namespace = {}
    for i, block in enumerate(blocks):
        exec(compile(block, f"docs/{doc} block {i}", "exec"), namespace)
    for name in expect:
        assert (tmp_path / name).stat().st_size > 0, name


@pytest.mark.parametrize("decomposed", [False, True])
def test_adding_problem_traced_training_matches_eager(tmp_path, capsys, decomposed):
    """--traced (tg.traced_step) makes the same updates as the eager loop: same losses, same weights;
    with --decomposed the eager loop records every gate and the traced one replays the fused kernel."""
    module = load_example("adding_problem")
    runs = {}
    for traced in (False, True):
        args = module.build_parser().parse_args(["--quick", "--seed", "0", "-o", str(tmp_path)]
                                                + (["--traced"] if traced else [])
                                                + (["--decomposed"] if decomposed else []))
        args.T, args.steps, args.hidden, args.batch, args.eval_size, args.lr = 8, 12, 8, 6, 20, 1e-2
        module.tg.manual_seed(0)
        model, history = module.train_one("lstm", args, np.random.default_rng(3))
        runs[traced] = (history["train_mse"], [p.numpy() for p in model.parameters()])
    np.testing.assert_allclose(runs[True][0], runs[False][0], rtol=1e-4)
    for a, b in zip(runs[True][1], runs[False][1]):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
    fused = "{'lstm_sweep': 1}" if decomposed else "nothing"
    assert f"fused at trace time: {fused}" in capsys.readouterr().out

