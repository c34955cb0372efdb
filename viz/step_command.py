"""`tinygraph step`: walk the backward pass of a small recurrent model in the terminal.

Interactive keys: Enter or space = next step, ``b`` = one step back, ``r`` =
run to the end, ``q`` = quit. On a terminal the keys are read one at a time
(termios cbreak mode); from a pipe, one command per line (an empty line is
"next", end of input is "quit"). ``--no-interactive`` prints the whole walk,
``--explain`` plugs the numbers into every formula, ``--html FILE`` writes
the self-contained HTML player instead of walking in the terminal (walks
longer than ``--max-steps`` are refused: the page would be too big).
"""
from __future__ import annotations

import os
import sys

__all__ = ["configure", "run"]

MODELS = ("rnn", "elman", "jordan", "lstm", "gru", "birnn")
HTML_MAX_STEPS = 2000  # stepper_html's own default
KEYS_HELP = "[Enter/space] next  [b] back  [r] run to the end  [q] quit"


def configure(parser):
    """Add the `step` options to an argparse parser."""
    parser.add_argument("--model", choices=MODELS, default="elman",
                        help="which small model to step through (default: elman, the textbook RNN)")
    parser.add_argument("--steps", type=int, default=3, help="sequence length T (default 3)")
    parser.add_argument("--seed", type=int, default=0, help="random seed for weights and data")
    parser.add_argument("--hidden", type=int, default=3, help="hidden size (default 3)")
    parser.add_argument("--no-interactive", dest="interactive", action="store_false",
                        help="print the whole walk and exit (for scripts and docs)")
    parser.add_argument("--explain", action="store_true",
                        help="show each formula with the numbers plugged in")
    parser.add_argument("--html", metavar="FILE",
                        help="write the self-contained HTML player to FILE and exit")
    parser.add_argument("--view", choices=("unfolded", "ops", "graph"), default="unfolded",
                        help="diagram of the HTML player (default: unfolded variables)")
    parser.add_argument("--max-steps", type=int, default=HTML_MAX_STEPS, metavar="N",
                        help=f"--html: refuse walks longer than N steps (default {HTML_MAX_STEPS})")
    return parser


def _fail(message) -> int:
    """A one-line complaint about the command line: exit status 2, like argparse."""
    print(f"tinygraph step: {message}", file=sys.stderr)
    return 2


def run(args) -> int:
    """Build the model, then write HTML, print the walk, or walk interactively."""
    from tinygraph.stepper import Stepper

    from . import models_zoo
    from .draw_command import path_problem

    for option, value in (("--steps", args.steps), ("--hidden", args.hidden),
                          ("--max-steps", args.max_steps)):
        if value < 1:
            return _fail(f"{option} must be at least 1, got {value}")
    if args.html and path_problem(args.html):  # before the (slow) walk is worked out
        return _fail(f"--html {args.html}: {path_problem(args.html)}")
    example = models_zoo.build(args.model, steps=args.steps, seed=args.seed,
                               hidden_size=args.hidden)
    stepper = Stepper(example.loss)
    intro = (f"{args.model}: {example.source}, T={args.steps}; the backward pass has "
             f"{len(stepper)} steps, from the loss back to the parameters")
    if args.html:
        return _write_html(stepper, args, intro)
    show = (lambda e: e.explain()) if args.explain else str
    if not args.interactive:
        try:
            print(intro)
            print(stepper.explain() if args.explain else stepper.walkthrough(), flush=True)
        except BrokenPipeError:  # `tinygraph step --no-interactive | head` is fine
            # the Python docs' recipe: point stdout at devnull so the exit flush is quiet
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    return _interactive(stepper, intro, show)


def _write_html(stepper, args, intro) -> int:
    """``--html FILE``: the player, or a one-line reason why not (no traceback)."""
    from .draw_command import write_problem
    from .render import RenderError
    from .stepper_html import stepper_html

    if len(stepper) > args.max_steps:  # said in the CLI's own options, not stepper_html's
        return _fail(f"--html: the walk has {len(stepper)} steps, more than --max-steps "
                     f"{args.max_steps}; use fewer --steps or a smaller --model (e.g. elman), "
                     "or raise --max-steps")
    print(intro, flush=True)
    try:
        stepper_html(stepper, args.html, view=args.view, progress=True, max_steps=args.max_steps,
                     title=f"tinygraph step: {args.model}, T={args.steps}")
    except RenderError as exc:  # no Graphviz, or it failed: not the user's argument
        print(f"tinygraph step: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:
        return _fail(write_problem(args.html, exc))
    except ValueError as exc:
        return _fail(str(exc))
    size = os.path.getsize(args.html)
    print(f"wrote {args.html} ({size / 1024:.0f} KiB)")
    return 0


def _interactive(stepper, intro, show) -> int:
    out = sys.stdout
    print(intro, file=out)
    print(KEYS_HELP, file=out, flush=True)
    with _KeyReader(sys.stdin) as keys:
        while True:
            key = keys.read()
            if key in ("q", None):
                print("quit", file=out, flush=True)
                return 0
            if key == "b":
                event = stepper.back()
                where = f"back to step {event.index + 1}" if event else "back at the start"
                print(f"\n← {where}", file=out)
                if event is not None:
                    print(show(event), file=out)
            elif key == "r":
                for event in stepper:
                    print("\n" + show(event), file=out)
            elif key in ("", " ", "n"):
                event = stepper.step()
                if event is not None:
                    print("\n" + show(event), file=out)
            else:
                print(f"unknown key {key!r}; {KEYS_HELP}", file=out, flush=True)
                continue
            print(_time_strip(stepper), file=out)
            if stepper.done:
                print("\n" + stepper.summary(numbers=True), file=out)
                print("end of the walk: the gradients above equal loss.backward()'s", file=out,
                      flush=True)
                return 0
            print(KEYS_HELP, file=out, flush=True)


def _time_strip(stepper) -> str:
    """``time: ■0 ■1 □2``: which time steps the gradient has reached so far."""
    reached = set(stepper.reached_timesteps())
    cells = " ".join(("■" if t in reached else "□") + str(t) for t in stepper.timesteps())
    return f"time steps reached: {cells}" if cells else ""


class _KeyReader:
    """Single keys from a terminal (cbreak mode), else one command per line."""

    def __init__(self, stream):
        self.stream = stream
        self.saved = None

    def __enter__(self):
        if self._is_tty():
            import termios
            import tty
            fd = self.stream.fileno()
            self.saved = termios.tcgetattr(fd)
            tty.setcbreak(fd)  # keys arrive unbuffered; Ctrl-C still interrupts
        return self

    def __exit__(self, *exc):
        if self.saved is not None:
            import termios
            termios.tcsetattr(self.stream.fileno(), termios.TCSADRAIN, self.saved)
        return False

    def _is_tty(self):
        try:
            return self.stream.isatty()
        except (AttributeError, ValueError):
            return False

    def read(self):
        """"" for next (Enter/space/empty line), a lowercase letter, or None at end of input."""
        if self.saved is not None:
            ch = self.stream.read(1)
            if ch == "":
                return None
            return "" if ch in ("\n", "\r", " ") else ch.lower()
        line = self.stream.readline()
        if line == "":
            return None
        word = line.strip().lower()
        return word[:1] if word else ""
