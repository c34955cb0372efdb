"""The README's Python snippets run as written (GPU ones only where a GPU is)."""
import re
from pathlib import Path

import pytest

import tinygraph as tg

README = Path(__file__).resolve().parents[1] / "README.md"


def python_blocks():
    return re.findall(r"```python\n(.*?)```", README.read_text(encoding="utf-8"), re.S)


def test_readme_has_the_promised_snippets():
    blocks = python_blocks()
    assert any("tg.grad(" in b and "create_graph=True" in b for b in blocks)
    assert any("ElmanRNN" in b and "draw_circuit" in b for b in blocks)


@pytest.mark.parametrize("index", range(len(python_blocks())))
def test_readme_snippet_runs(index, tmp_path, monkeypatch):
    block = python_blocks()[index]
    if "cuda" in block and not tg.cuda_available():
        pytest.skip("GPU snippet: needs CuPy and a CUDA device")
    pytest.importorskip("graphviz")
    monkeypatch.chdir(tmp_path)
    namespace = {}
    if "cuda" in block:  # the GPU snippet continues the ElmanRNN one
        exec(compile(python_blocks()[1], "README.md ElmanRNN", "exec"), namespace)
    exec(compile(block, f"README.md python block {index}", "exec"), namespace)
    if "save(draw_unfolded" in block:
        for name in ("unfolded.svg", "circuit.svg"):
            assert (tmp_path / name).read_text().lstrip().startswith(("<?xml", "<svg"))
