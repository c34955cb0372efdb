"""`tinygraph demo --quick` produces every file it promises, and they are real files."""
import argparse
import json
import os
import subprocess
import sys
import xml.etree.ElementTree as ET

import pytest

from tinygraph.apps import demo

PROMISED = {
    "lstm_circuit.svg": "svg",
    "lstm_unfolded.svg": "svg",
    "gradient_flow.png": "png",
    "loss_curve.png": "png",
    "backprop_rnn_3steps.html": "html",
    "summary.json": "json",
}


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    """One quick demo run, with no system Graphviz on PATH: only this Python's own scripts
    (where pip puts graphviz-pure), as on a fresh machine with the viz extra."""
    out = tmp_path_factory.mktemp("demo")
    parser = argparse.ArgumentParser()
    demo.configure(parser)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("PATH", os.path.dirname(sys.executable))
        code = demo.run(parser.parse_args(["--quick", "-o", str(out), "--seed", "0"]))  # the default seed
    return code, out


def test_demo_quick_writes_every_promised_file(quick_run):
    code, out = quick_run
    assert code == 0
    missing = [name for name in PROMISED if not (out / name).is_file()]
    assert not missing, f"demo --quick did not write {missing}"


def test_demo_pictures_parse(quick_run):
    from PIL import Image
    _, out = quick_run
    for name, kind in PROMISED.items():
        path = out / name
        if kind == "svg":
            root = ET.parse(path).getroot()
            assert root.tag.endswith("svg")
            assert len(list(root.iter())) > 10, f"{name} is an almost empty drawing"
        elif kind == "png":
            with Image.open(path) as image:
                image.verify()
                assert image.format == "PNG" and image.size[0] > 100
        elif kind == "html":
            text = path.read_text(encoding="utf-8")
            assert "<html" in text.lower() and "<svg" in text.lower()
            assert "<script src=" not in text.lower()  # one self-contained file


def test_demo_training_beats_untrained_and_records_the_corpus_hash(quick_run):
    _, out = quick_run
    summary = json.loads((out / "summary.json").read_text())
    assert len(summary["corpus"]["sha256"]) == 64
    assert summary["val_bits_per_char"] < summary["val_bits_per_char_before"]
    losses = summary["step_bits_per_char"]
    assert sum(losses[-10:]) / 10 < sum(losses[:10]) / 10
    assert summary["sample_before"].startswith("The ") and summary["sample_after"].startswith("The ")
    assert sorted(summary["files"]) == sorted(str(out / n) for n in PROMISED if n != "summary.json")


def test_demo_is_a_cli_subcommand():
    result = subprocess.run([sys.executable, "-m", "tinygraph", "demo", "--help"],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "--quick" in result.stdout and "--out" in result.stdout


def _flow_ratios(curves):
    """{label: ‖∂L/∂h(0)‖ / ‖∂L/∂h(T-1)‖}: how much of the last step's gradient reaches the first step."""
    return {label: curve[0] / curve[-1] for label, curve in curves.items()}


def _untrained(curves):
    rnn = next(label for label in curves if label.startswith("RNN") and "untrained" in label)
    lstm = next(label for label in curves if label.startswith("LSTM") and "untrained" in label)
    return rnn, lstm


def test_demo_quick_gradient_flow_tells_the_textbook_story(quick_run):
    """The quick run's plot data (summary.json): the untrained tanh RNN's gradient vanishes faster than
    the untrained LSTM's, so its curve lies below the LSTM's at the early steps."""
    import numpy as np
    _, out = quick_run
    summary = json.loads((out / "summary.json").read_text())
    curves = {label: np.asarray(c) for label, c in summary["gradient_flow"].items()}
    assert len(curves) == 3 and any("trained" in label and "untrained" not in label for label in curves)
    assert all(len(c) == summary["config"]["flow_steps"] and np.all(np.isfinite(c)) and np.all(c > 0)
               for c in curves.values())
    rnn, lstm = _untrained(curves)
    ratios = _flow_ratios(curves)
    assert ratios[rnn] < ratios[lstm], ratios
    early = slice(0, len(curves[rnn]) // 4)  # normalised by the last step, the RNN is below at every early t
    assert np.all(curves[rnn][early] / curves[rnn][-1] < curves[lstm][early] / curves[lstm][-1])


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_quick_gradient_flow_story_holds_for_other_seeds(seed):
    """The story is not one lucky seed: untrained models only (no training), quick sizes."""
    import tinygraph as tg
    from tinygraph import data
    from tinygraph.models import LanguageModel
    cfg = dict(demo.QUICK)
    text, _ = data.pydoc_corpus()
    vocab = data.Vocab.build([text[: cfg["chars"]]], unk="<unk>")
    _, val_ids = data.split_train_val(vocab.encode(list(text[: cfg["chars"]])), 0.1)
    streams = data.stream_batches(val_ids, 8)
    tg.manual_seed(seed)
    trained_stand_in = LanguageModel(len(vocab), cfg["embedding"], cfg["hidden"], cell="lstm")
    curves = demo._flow_curves(trained_stand_in, "lstm", streams, cfg, seed)
    rnn, lstm = _untrained(curves)
    ratios = _flow_ratios(curves)
    assert ratios[rnn] < ratios[lstm], ratios


def test_demo_out_that_is_a_file_is_a_clean_error(tmp_path, capsys):
    existing = tmp_path / "results.txt"
    existing.write_text("keep me")
    parser = argparse.ArgumentParser()
    demo.configure(parser)
    for out in (existing, existing / "sub"):
        assert demo.run(parser.parse_args(["--quick", "-o", str(out)])) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and "error" in err and str(out) in err, err
        assert "Traceback" not in err
    assert existing.read_text() == "keep me"


def test_demo_out_file_error_from_the_command_line(tmp_path):
    existing = tmp_path / "taken"
    existing.write_text("")
    result = subprocess.run([sys.executable, "-m", "tinygraph", "demo", "--quick", "-o", str(existing)],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0 and "Traceback" not in result.stderr, result.stderr
