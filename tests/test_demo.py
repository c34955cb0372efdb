"""`tinygraph demo --quick` produces every file it promises, and they are real files."""
import argparse
import json
import os
import subprocess
import sys
import xml.etree.ElementTree as ET

import pytest

from tinygraph import demo

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
        code = demo.run(parser.parse_args(["--quick", "-o", str(out), "--seed", "1"]))
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
