"""Every example's --quick mode runs on tiny data, its loss decreases, and it reports a RESULT line.

The examples run in-process (their ``main(argv)`` returns the summary they
also write to results.json), which keeps this file fast.
"""
import argparse
import importlib.util
import json
import re
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
    # a known data set's download link may come between (data.require_path)
    assert re.search(rf"not found at {re.escape(str(missing))}(; download it from \S+)?; pass its path with "
                     rf"{argv[0]}", err), err


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


@pytest.mark.parametrize("doc, expect, at_least", [
    ("bptt.md", ("flow.png", "heat.png", "loss.png", "run.npz"), 8),
    ("models.md", ("model.npz", "ckpt.npz"), 8),
    ("stepper.md", (), 3),
])
def test_doc_code_runs(doc, expect, at_least, tmp_path, monkeypatch, capsys):
    """Every ```python block of docs/bptt.md, docs/models.md and docs/stepper.md runs, in order, in
    one namespace: no fragment uses a name that the page has not defined."""
    import re
    text = (EXAMPLES.parent / "docs" / doc).read_text(encoding="utf-8")
    blocks = re.findall(r"```python\n(.*?)```", text, re.S)
    assert len(blocks) >= at_least
    monkeypatch.chdir(tmp_path)
    namespace = {}
    for i, block in enumerate(blocks):
        exec(compile(block, f"docs/{doc} block {i}", "exec"), namespace)
    for name in expect:
        assert (tmp_path / name).stat().st_size > 0, name
    if doc == "stepper.md":   # the page prints this walk's step: the same text, value for value
        shown = text.split("print(event.explain())\n```\n\n```\n")[1].split("\n```")[0]
        assert namespace["event"].explain().startswith(shown.split("\n  ∂L/∂a(1)")[0])


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



# ---------------------------------------------------------------------------
# --quick sets defaults only; option typos and wrong data are one-line errors
# ---------------------------------------------------------------------------
def load_common():
    load_example("char_lm")  # puts examples/ on sys.path
    import _common
    return _common


def assert_one_line_error(capsys, *needles):
    err = capsys.readouterr().err
    assert "Traceback" not in err, err
    last = err.strip().splitlines()[-1]
    for needle in needles:
        assert needle in last, err
    return err


def test_common_parse_args_quick_values_are_only_defaults():
    common = load_common()
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--lr", type=float, default=1e-3)
    quick = {"steps": 4, "lr": 0.5}
    assert (common.parse_args(parser, [], quick).steps, parser.get_default("steps")) == (100, 100)
    args = common.parse_args(parser, ["--quick", "--steps", "9"], quick)
    assert (args.steps, args.lr) == (9, 0.5)
    with pytest.raises(ValueError, match="stpes"):
        common.parse_args(parser, ["--quick"], {"stpes": 4})


@pytest.mark.parametrize("name, argv, ran", [
    ("char_lm", ["--steps", "5"], lambda s: [h["update"][-1] for h in s["histories"].values()] == [5]
     and "TBPTT k=16" in s["histories"]),  # the quick window still applies
    ("adding_problem", ["--steps", "7", "--cells", "lstm"], lambda s: s["eval_history"]["lstm"]["step"][-1] == 7
     and s["T"] == 10),
    ("copy_task", ["--steps", "6", "--cells", "gru"], lambda s: s["eval_history"]["gru"]["step"][-1] == 6
     and s["T"] == 5),
    ("dynamical_system", ["--iters", "5"], lambda s: len(s["loss_history"]) == 5 and s["steps"] == 12),
    ("jordan_teacher_forcing", ["--iters", "5"],
     lambda s: all(h["step"][-1] == 5 for h in s["histories"].values()) and s["T"] == 6),
    ("pos_tagging", ["--epochs", "1", "--directions", "bi"], lambda s: s["histories"]["BiLSTM"]["epoch"] == [1]),
    ("sentiment", ["--epochs", "1", "--cells", "gru"], lambda s: s["histories"]["gru"]["epoch"] == [1]),
    ("spoken_digits", ["--epochs", "2"], lambda s: s["history"]["epoch"] == [1, 2]),
])
def test_quick_keeps_explicit_options(name, argv, ran, tmp_path, capsys):
    skip_without_data(name)
    summary = load_example(name).main(["--quick", *argv, "-o", str(tmp_path)])
    assert ran(summary), summary


@pytest.mark.parametrize("name", ["sentiment", "copy_task", "adding_problem"])
def test_unknown_cell_is_a_usage_error(name, tmp_path, capsys):
    with pytest.raises(SystemExit) as stop:
        load_example(name).main(["--quick", "--cells", "lstm,lstmx", "-o", str(tmp_path / "out")])
    assert stop.value.code == 2
    assert_one_line_error(capsys, "--cells", "'lstmx'", "rnn, lstm, gru")
    assert not (tmp_path / "out").exists()


def test_cell_names_are_case_insensitive_and_not_repeated():
    args = load_example("copy_task").build_parser().parse_args(["--cells", "LSTM, gru,lstm"])
    assert args.cells == ["lstm", "gru"]


@pytest.mark.parametrize("argv", [["--steps", "0"], ["--steps", "-3"]])
def test_zero_steps_is_a_usage_error(argv, tmp_path, capsys):
    with pytest.raises(SystemExit) as stop:
        load_example("adding_problem").main(["--quick", *argv, "-o", str(tmp_path)])
    assert stop.value.code == 2
    assert_one_line_error(capsys, "--steps", "at least 1")


@pytest.mark.parametrize("text, expect", [("both", ["bi", "uni"]), ("uni,both", ["uni", "bi"]),
                                          ("BI", ["bi"]), ("bi,uni", ["bi", "uni"])])
def test_pos_directions_both_means_bi_and_uni(text, expect):
    assert load_example("pos_tagging").build_parser().parse_args(["--directions", text]).directions == expect


def test_pos_unknown_direction_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as stop:
        load_example("pos_tagging").build_parser().parse_args(["--directions", "bii"])
    assert stop.value.code == 2
    assert_one_line_error(capsys, "--directions", "'bii'", "bi, uni, both")


def conllu(sentences):
    """CoNLL-U text of [(word, upos), ...] sentences."""
    blocks = ["\n".join(f"{i}\t{w}\t{w}\t{t}\t_\t_\t0\t_\t_\t_" for i, (w, t) in enumerate(s, 1))
              for s in sentences]
    return "\n\n".join(blocks) + "\n\n"


def test_pos_limit_keeps_dev_tags_unseen_in_training(tmp_path, capsys):
    """The first N training sentences lack the dev set's X and INTJ: still a vocabulary of 17 tags, no KeyError."""
    train, dev = tmp_path / "train.conllu", tmp_path / "dev.conllu"
    train.write_text(conllu([[("dogs", "NOUN"), ("bark", "VERB")]] * 30 + [[("wow", "INTJ")]] * 5))
    dev.write_text(conllu([[("dogs", "NOUN"), ("qwz", "X")], [("wow", "INTJ"), ("dogs", "NOUN")]] * 5))
    summary = load_example("pos_tagging").main(
        ["--quick", "--train", str(train), "--dev", str(dev), "--limit", "20", "--epochs", "1",
         "--directions", "both", "-o", str(tmp_path / "out")])
    assert set(summary["dev_accuracy"]) == {"BiLSTM", "LSTM"}
    assert "17 tags" in capsys.readouterr().out


def test_pos_tag_vocabulary_is_upos_then_any_other_tags():
    module = load_example("pos_tagging")
    tags = module.tag_vocab([data.Sentence(["a", "b"], ["NOUN", "XYZ"])])
    assert tags.itos == list(module.UPOS_TAGS) + ["XYZ"] and len(module.UPOS_TAGS) == 17


def write_polarity(folder, n=60):
    folder.mkdir()
    (folder / "rt-polarity.pos").write_text("".join(f"a good fine film number {i}\n" for i in range(n)))
    (folder / "rt-polarity.neg").write_text("".join(f"a bad dull film number {i}\n" for i in range(n)))
    return folder


def test_sentiment_selects_the_model_on_validation_not_test(tmp_path, monkeypatch, capsys):
    """Per cell the example asks for the validation accuracy (one epoch) and then the test accuracy;
    the scripted answers make the best-on-validation cell (rnn) the worst on test."""
    module = load_example("sentiment")
    answers = iter([0.9, 0.1,    # rnn: val, test
                    0.5, 0.95,   # lstm
                    0.2, 0.3])   # gru
    monkeypatch.setattr(module, "accuracy", lambda model, batches: next(answers))
    summary = module.main(["--quick", "--epochs", "1", "--data", str(write_polarity(tmp_path / "polarity")),
                           "-o", str(tmp_path / "out")])
    assert summary["best_cell"] == "rnn" and summary["val_accuracy"]["rnn"] == 0.9
    result = capsys.readouterr().out.strip().splitlines()[-1]
    assert result.startswith("RESULT: rnn test accuracy (best on validation) = 10.0000%"), result


def test_sentiment_folder_without_the_files_is_one_line(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    with pytest.raises(SystemExit) as stop:
        load_example("sentiment").main(["--quick", "--data", str(tmp_path / "empty"), "-o", str(tmp_path / "out")])
    assert stop.value.code == 2
    assert_one_line_error(capsys, "rt-polarity.neg")
    assert not (tmp_path / "out").exists()


def fake_digits(folder, names=("0_anna_0.wav", "1_anna_6.wav")):
    """A folder of tiny silent WAVs named like the Free Spoken Digit recordings."""
    import wave
    folder.mkdir()
    for name in names:
        with wave.open(str(folder / name), "wb") as w:
            w.setnchannels(1)
            w.setsampwidth(2)
            w.setframerate(8000)
            w.writeframes(b"\0\0" * 800)
    return folder


@pytest.mark.parametrize("case, needle", [("empty", "digit_speaker_index.wav"), ("file", "not a folder"),
                                          ("damaged", "3_zed_7.wav"), ("speaker", "anna"),
                                          ("no validation", "0 validation")])
def test_spoken_digits_wrong_data_is_one_line(case, needle, tmp_path, capsys):
    folder, extra = tmp_path / "digits", []
    if case == "empty":
        folder.mkdir()
    elif case == "file":
        folder.write_text("not audio")
    elif case == "no validation":  # indices 0-4 only: the default split has nothing to validate on
        fake_digits(folder, names=("0_anna_0.wav", "1_anna_1.wav"))
    else:
        fake_digits(folder)
    if case == "damaged":
        (folder / "3_zed_7.wav").write_bytes(b"junk")
    if case == "speaker":
        extra = ["--holdout-speaker", "Anna"]
    with pytest.raises(SystemExit) as stop:
        load_example("spoken_digits").main(["--quick", "--data", str(folder), *extra, "-o", str(tmp_path / "out")])
    assert stop.value.code == 2
    assert_one_line_error(capsys, needle)


def test_spoken_digits_unknown_speaker_names_the_speakers(tmp_path, capsys):
    skip_without_data("spoken_digits")
    with pytest.raises(SystemExit) as stop:
        load_example("spoken_digits").main(["--quick", "--holdout-speaker", "George", "-o", str(tmp_path)])
    assert stop.value.code == 2
    assert_one_line_error(capsys, "'George'", "george, jackson")


@pytest.mark.parametrize("content", ["First Citizen:\nBefore we proceed\n", "", b"\x8a\x00\xff"])
def test_pos_file_that_is_not_conllu_is_one_line(content, tmp_path, capsys):
    bad = tmp_path / "bad.conllu"
    bad.write_bytes(content if isinstance(content, bytes) else content.encode())
    with pytest.raises(SystemExit) as stop:
        load_example("pos_tagging").main(["--quick", "--train", str(bad), "--dev", str(bad),
                                          "-o", str(tmp_path / "out")])
    assert stop.value.code == 2
    assert_one_line_error(capsys, "training CoNLL-U file", str(bad))
    assert not (tmp_path / "out").exists()


# ---------------------------------------------------------------------------
# tinygraph demo: --minutes / --epochs must bound a real run
# ---------------------------------------------------------------------------
def demo_args(argv):
    from tinygraph.apps import demo
    parser = argparse.ArgumentParser()
    demo.configure(parser)
    return demo, parser.parse_args(argv)


@pytest.mark.parametrize("option, value", [("--minutes", "0"), ("--minutes", "-1"), ("--minutes", "nan"),
                                           ("--minutes", "inf"), ("--epochs", "0"), ("--epochs", "nan"),
                                           ("--epochs", "-0.5")])
def test_demo_refuses_an_empty_or_endless_budget(option, value, tmp_path, capsys):
    demo, args = demo_args(["--quick", option, value, "-o", str(tmp_path / "out")])
    assert demo.run(args) == 2
    err = assert_one_line_error(capsys, "error", option)
    assert err.strip().count("\n") == 0
    assert not (tmp_path / "out").exists()


def test_demo_budget_shorter_than_one_window_still_trains_one(tmp_path, capsys):
    demo, args = demo_args(["--quick", "--minutes", "1e-12", "-o", str(tmp_path)])
    assert demo.run(args) == 0
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["updates"] == 1 and len(summary["epochs"]) == 1
