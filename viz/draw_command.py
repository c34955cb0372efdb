"""`tinygraph draw`: draw a small model's unfolded graph and/or folded circuit.

    tinygraph draw --model lstm --steps 4 --view both --detail variables -o lstm.svg

With ``--view both`` two files are written: ``<name>-unfolded<suffix>`` and
``<name>-circuit<suffix>``.
"""
from __future__ import annotations

import os
import sys

__all__ = ["configure", "run", "output_paths", "check_args", "path_problem", "write_problem"]


def configure(parser):
    from .models_zoo import MODEL_NAMES
    parser.add_argument("--model", choices=MODEL_NAMES, default="rnn",
                        help="which example model to run (default: rnn)")
    parser.add_argument("--steps", type=int, default=4, help="sequence length T (default: 4)")
    parser.add_argument("--view", choices=("unfolded", "circuit", "both"), default="both",
                        help="unfolded in time, folded circuit, or both (default: both)")
    parser.add_argument("--detail", choices=("variables", "ops"), default="variables",
                        help="textbook variables or every primitive op (default: variables)")
    parser.add_argument("--backward", action="store_true",
                        help="also draw the backward graph recorded with create_graph=True")
    parser.add_argument("--show-steps", type=int, default=None, metavar="N",
                        help="unfolded view: draw at most N steps (first and last few)")
    parser.add_argument("--collapse", default=None, metavar="SCOPE",
                        help="fold a scope (e.g. 'LSTM.layer0') or a depth (e.g. 2) into boxes")
    parser.add_argument("--legend", action="store_true", help="add a colour legend")
    parser.add_argument("-o", "--output", default="graph.svg",
                        help="output file; the suffix picks the format: .svg .png .pdf .dot .gv. With "
                             "--view both (the default) two files: NAME-unfolded.SUFFIX and NAME-circuit.SUFFIX")


def output_paths(output, view):
    """{view name: path} for the requested view(s)."""
    if view != "both":
        return {view: output}
    stem, suffix = os.path.splitext(output)
    return {"unfolded": f"{stem}-unfolded{suffix}", "circuit": f"{stem}-circuit{suffix}"}


def path_problem(path):
    """Why no file can be written at ``path`` (a directory there, a file as parent), or None."""
    if os.path.isdir(path):
        return f"{path} is a directory"
    parent = os.path.dirname(path)
    while parent and not os.path.exists(parent):  # the first part that exists decides
        parent = os.path.dirname(parent)
    if parent and not os.path.isdir(parent):
        return f"{parent} is not a directory"
    return None


def write_problem(path, exc) -> str:
    """One line for an OSError raised writing ``path`` (not the temporary file's name)."""
    return f"cannot write {path}: {path_problem(path) or exc.strerror or exc}"


def _collapse_arg(text):
    if text is None:
        return None
    return int(text) if text.isdigit() else text


def check_args(args):
    """A one-line complaint about the command line, or None (checked before building anything)."""
    from .render import FORMATS

    suffix = os.path.splitext(args.output)[1].lower()
    if suffix not in FORMATS:
        return (f"-o {args.output}: unknown file type {suffix or '(no suffix)'!r}; "
                f"use one of {', '.join(sorted(FORMATS))}")
    if args.steps < 1:
        return f"--steps must be at least 1, got {args.steps}"
    if args.show_steps is not None and args.show_steps < 1:
        return f"--show-steps must be at least 1, got {args.show_steps}"
    for path in output_paths(args.output, args.view).values():
        problem = path_problem(path)
        if problem:
            written = "" if path == args.output else f" (writes {path})"
            return f"-o {args.output}{written}: {problem}"
    return None


def run(args) -> int:
    from . import diagrams, render
    from .models_zoo import build

    problem = check_args(args)
    if problem:
        print(f"tinygraph draw: {problem}", file=sys.stderr)
        return 2
    try:
        example = build(args.model, steps=args.steps)
    except (ValueError, RuntimeError) as exc:
        print(f"tinygraph draw: {exc}", file=sys.stderr)
        return 2
    common = dict(detail=args.detail, backward=args.backward,
                  collapse=_collapse_arg(args.collapse), legend=args.legend)
    for view, path in output_paths(args.output, args.view).items():
        try:
            if view == "unfolded":
                diagram = diagrams.draw_unfolded(example.loss, steps=args.show_steps,
                                                 title=f"{args.model} unfolded", **common)
            else:
                diagram = diagrams.draw_circuit(example.loss, title=f"{args.model} circuit",
                                                **common)
        except ValueError as exc:  # e.g. --collapse naming no scope
            print(f"tinygraph draw: {exc}", file=sys.stderr)
            return 2
        try:
            render.save(diagram, path)
        except render.RenderError as exc:
            print(f"tinygraph draw: {exc}", file=sys.stderr)
            return 1
        except OSError as exc:  # e.g. no permission: a bad argument, not a crash
            print(f"tinygraph draw: {write_problem(path, exc)}", file=sys.stderr)
            return 2
        print(f"wrote {path} ({view}, {args.detail}, {example.source}, T={args.steps})")
    return 0
