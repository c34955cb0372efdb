"""`tinygraph step` driven through a pseudo-terminal: single keys advance, go back, quit."""
import os
import re
import shutil
import subprocess
import sys

import pytest

pexpect = pytest.importorskip("pexpect")

COMMAND = [sys.executable, "-m", "tinygraph", "step"]


def _env():
    env = dict(os.environ, PYTHONIOENCODING="utf-8", TERM="dumb", COLUMNS="120")
    return env


def _spawn(*args):
    child = pexpect.spawn(COMMAND[0], COMMAND[1:] + list(args), encoding="utf-8",
                          timeout=30, env=_env(), dimensions=(40, 160))
    child.expect(r"the backward pass has (\d+) steps")
    total = int(child.match.group(1))
    child.expect(r"\[q\] quit")
    return child, total


def test_keys_advance_go_back_and_quit():
    child, total = _spawn("--model", "elman", "--steps", "2")
    child.send(" ")
    child.expect(rf"step 1/{total} ")
    child.expect(r"\[q\] quit")
    child.send("\r")  # Enter
    child.expect(rf"step 2/{total} ")
    child.expect(r"\[q\] quit")
    child.send("b")
    child.expect("back to step 1")
    child.expect(rf"step 1/{total} ")
    child.expect(r"\[q\] quit")
    child.send(" ")
    child.expect(rf"step 2/{total} ")
    child.send("q")
    child.expect("quit")
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0


def test_r_runs_to_the_end_and_prints_the_sums_over_time():
    child, total = _spawn("--model", "elman", "--steps", "2", "--explain")
    child.send("r")
    child.expect(rf"step {total}/{total} ")
    child.expect("gradients of the leaves")
    child.expect(r"∇W = \(?from ")
    child.expect("end of the walk")
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0


def test_no_interactive_prints_the_whole_walk():
    done = subprocess.run(COMMAND + ["--model", "gru", "--steps", "2", "--no-interactive"],
                          capture_output=True, text=True, env=_env(), timeout=60)
    assert done.returncode == 0, done.stderr
    total = int(re.search(r"the backward pass has (\d+) steps", done.stdout).group(1))
    headers = re.findall(r"^step (\d+)/(\d+) ", done.stdout, re.M)
    assert [int(k) for k, _ in headers] == list(range(1, total + 1))
    assert "∂L/∂" in done.stdout and "gradients of the leaves" in done.stdout


def test_html_option_writes_the_player(tmp_path, capsys):
    import argparse

    from tinygraph.viz import step_command

    if shutil.which("dot") is None and shutil.which("graphviz-pure") is None:
        pytest.skip("needs a Graphviz renderer (dot or graphviz-pure)")
    parser = step_command.configure(argparse.ArgumentParser())
    target = tmp_path / "walk.html"
    args = parser.parse_args(["--model", "gru", "--steps", "1", "--html", str(target)])
    assert step_command.run(args) == 0
    captured = capsys.readouterr()
    assert f"wrote {target}" in captured.out
    assert "rendering the player" in captured.err and "|########################|" in captured.err
    page = target.read_text(encoding="utf-8")
    assert page.startswith("<!DOCTYPE html>") and 'id="next"' in page and "<svg" in page


def test_html_player_stays_small(tmp_path):
    """One diagram for the whole walk: GRU with T=3 was 4.5 MB as one SVG per step."""
    import json

    from tinygraph.stepper import Stepper
    from tinygraph.viz import models_zoo
    from tinygraph.viz.stepper_html import stepper_html

    if shutil.which("dot") is None and shutil.which("graphviz-pure") is None:
        pytest.skip("needs a Graphviz renderer (dot or graphviz-pure)")
    stepper = Stepper(models_zoo.build("gru", steps=3).loss)
    page = stepper_html(stepper, str(tmp_path / "walk.html"))
    assert page.count("<svg") == 1
    assert len(page.encode("utf-8")) < 400_000, len(page)
    steps = json.loads(re.search(r'id="steps-data">(.*?)</script>', page, re.S).group(1))
    assert len(steps) == len(stepper) + 1
    ids = set(re.findall(r'<g id="(node\d+)" class="node">', page))
    for k, record in enumerate(steps[1:], start=1):
        assert len(record["current"]) >= 1 and set(record["current"]) <= ids
        assert set(record["processed"]) <= ids
        assert set(steps[k - 1].get("processed", [])) <= set(record["processed"])  # grows


@pytest.mark.parametrize("option", ["--hidden", "--steps"])
def test_sizes_below_one_are_refused_in_one_line(option):
    done = subprocess.run(COMMAND + ["--model", "elman", option, "0", "--no-interactive"],
                          capture_output=True, text=True, env=_env(), timeout=60)
    assert done.returncode == 2
    assert done.stderr.strip() == f"tinygraph step: {option} must be at least 1, got 0"
    assert "Traceback" not in done.stderr and done.stdout == ""


def test_grads_on_nodes_keeps_one_picture_per_step(tmp_path):
    from tinygraph.stepper import Stepper
    from tinygraph.viz import models_zoo
    from tinygraph.viz.stepper_html import stepper_html

    if shutil.which("dot") is None and shutil.which("graphviz-pure") is None:
        pytest.skip("needs a Graphviz renderer (dot or graphviz-pure)")
    stepper = Stepper(models_zoo.build("elman", steps=1).loss)
    page = stepper_html(stepper, None, view="ops", grads_on_nodes=True)
    assert page.count("<svg") == len(stepper) + 1 and "grad: |g|" in page
    assert len(re.findall(r'class="node current\b', page)) == len(stepper)
    with pytest.raises(ValueError, match="grads_on_nodes"):
        stepper_html(stepper, None, grads_on_nodes=True, max_steps=4 * len(stepper) - 4)
