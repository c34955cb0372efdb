"""The `tinygraph` command: the one face that uses everything.

Each subcommand lives in its own module exposing ``configure(parser)`` and
``run(args) -> int``; this file only wires them up, importing lazily so that
`tinygraph --help` stays instant and optional extras load only when used.
"""
from __future__ import annotations

import argparse
import importlib
import sys

SUBCOMMANDS = {
    "demo": ("tinygraph.apps.demo", "train a char-level LSTM on embedded text and write every picture"),
    "draw": ("tinygraph.viz.draw_command", "draw a model's folded circuit and/or unfolded graph"),
    "step": ("tinygraph.viz.step_command", "step through backprop of a small recurrent model"),
    "bench": ("tinygraph.apps.bench", "time training steps against NumPy/PyTorch/JAX baselines (python -m benchmarks)"),
}


def build_parser():
    parser = argparse.ArgumentParser(
        prog="tinygraph",
        description="tinygraph: an autodiff engine whose graph you can see, fold, unfold and step through.",
    )
    from . import __version__
    parser.add_argument("--version", action="version", version=f"tinygraph {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module_name, help_text) in SUBCOMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.set_defaults(_module=module_name)
        try:
            module = importlib.import_module(module_name)
        except ImportError as exc:  # an optional extra is missing: only this subcommand fails
            p.set_defaults(_import_error=f"{name}: cannot load {module_name} ({exc}); "
                                        'install the extras with pip install -e ".[viz]"')
            continue
        module.configure(p)
    return parser


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["bench"]:  # the suite parses its own options (tinygraph bench --help)
        return importlib.import_module(SUBCOMMANDS["bench"][0]).run_argv(argv[1:])
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "command", None):
        parser.print_help()
        return 0
    if getattr(args, "_import_error", None):
        print(args._import_error, file=sys.stderr)
        return 2
    module = importlib.import_module(args._module)
    try:
        return int(module.run(args) or 0)
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
