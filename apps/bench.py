"""`tinygraph bench`: the benchmark suite (``python -m benchmarks``) from the `tinygraph` command.

The suite lives in the source checkout's ``benchmarks/`` folder, next to the
package, not inside it: it compares tinygraph with hand-written NumPy,
PyTorch and JAX, which the library itself must not import. This command
finds that folder from the installed package (an editable install, as the
README's set-up makes) and runs the suite with the arguments that follow
``bench``; without a checkout it says where to get one.

    tinygraph bench --quick
    tinygraph bench --workloads B,D --decomposed --json results.json
"""
from __future__ import annotations

import sys
from pathlib import Path

import tinygraph


def checkout_root():
    """The source checkout this tinygraph was installed from, or None (a regular, non-editable install)."""
    root = Path(tinygraph.__file__).resolve().parent.parent
    return root if (root / "benchmarks" / "__main__.py").is_file() else None


def configure(parser):
    """Listed in ``tinygraph --help`` only: ``tinygraph.cli`` hands everything after ``bench`` to ``run_argv``."""


def run_argv(argv):
    """Run the suite with ``argv`` (its own options: ``tinygraph bench --help``); returns the exit status."""
    root = checkout_root()
    if root is None:
        print("tinygraph bench: the benchmark suite ships with the source checkout, not with the installed "
              "package; clone the repository, pip install -e it, and run tinygraph bench (or python -m benchmarks) "
              "there", file=sys.stderr)
        return 2
    if str(root) not in sys.path:
        sys.path.insert(0, str(root))
    from benchmarks.__main__ import main as suite_main
    # the suite's usage line and errors then name the command that was typed
    return int(suite_main(list(argv), prog="tinygraph bench") or 0)


def run(args):
    return run_argv([])
