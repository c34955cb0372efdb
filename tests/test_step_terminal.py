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
    assert f"wrote {target}" in capsys.readouterr().out
    page = target.read_text(encoding="utf-8")
    assert page.startswith("<!DOCTYPE html>") and 'id="next"' in page and "<svg" in page
