"""Arrows point down: the engine (tinygraph/*.py) never imports models, viz or apps.

cli.py is the one face that reaches them, by module name at run time.
"""
import ast
from pathlib import Path

import pytest

ENGINE = Path(__file__).resolve().parents[1] / "tinygraph"
ABOVE = ("tinygraph.models", "tinygraph.viz", "tinygraph.apps")


def imported_modules(path):
    tree = ast.parse(path.read_text(encoding="utf-8"))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: inside the engine package
                base = "tinygraph" + ("." + base if base else "")
            yield base
            yield from (f"{base}.{alias.name}" for alias in node.names)


@pytest.mark.parametrize("path", sorted(ENGINE.glob("*.py")), ids=lambda p: p.name)
def test_engine_module_does_not_import_layers_above(path):
    above = [m for m in imported_modules(path) if m.startswith(ABOVE)]
    assert not above, f"{path.name} imports {above}"
