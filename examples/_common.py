"""Shared plumbing for the examples: options, progress bar, epoch loop, plots, results line.

Kept out of the library on purpose: it is the glue a user would write in
their own script, and every example reads the same way because of it.
"""
from __future__ import annotations

import argparse
import json
import sys
from contextlib import contextmanager
from pathlib import Path

import numpy as np

import tinygraph as tg
from tinygraph import data
from tinygraph.fileio import atomic_write_text
from tinygraph.progress import ProgressBar


def make_parser(description, *, script, data_name=None):
    """An ArgumentParser with the options every example shares.

    ``script`` is the example's ``__file__`` (its name picks the default output
    folder); ``data_name`` is the file or folder under the shared data
    directory that the example reads by default (``--data`` overrides it).
    """
    parser = argparse.ArgumentParser(description=description,
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--quick", action="store_true",
                        help="tiny sizes and few steps, a smoke test that runs in seconds; "
                             "options given explicitly still win")
    parser.add_argument("--seed", type=int, default=0, help="random seed (data split, init, batches)")
    parser.add_argument("-o", "--out", default=f"example-output/{Path(script).stem}",
                        help="folder for pictures and results.json")
    if data_name is not None:
        parser.add_argument("--data", default=str(data.shared_data_dir() / data_name),
                            help=f"path to {data_name} (env TINYGRAPH_DATA sets the parent folder)")
    return parser


def parse_args(parser, argv=None, quick=None):
    """Parse ``argv``; under ``--quick`` the ``quick`` values are the defaults.

    Options given on the command line still win, so ``--quick --steps 16``
    runs 16 steps: quick mode only changes what the user left unsaid.
    """
    args = parser.parse_args(argv)
    if args.quick and quick:
        unknown = set(quick) - set(vars(args))
        if unknown:  # a typo here would silently leave the real option alone
            raise ValueError(f"quick values for options the parser lacks: {sorted(unknown)}")
        parser.set_defaults(**quick)
        args = parser.parse_args(argv)
    return args


def positive_int(text):
    """An argparse ``type``: an integer of at least 1 (0 epochs or steps would leave nothing to report)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def name_list(known, what="name"):
    """An argparse ``type`` for a comma-separated list of ``known`` names (case-insensitive).

    Returns the names in order without repeats; an unknown or missing name is
    a usage error (exit status 2), before any data is loaded.
    """
    def parse(text):
        names = list(dict.fromkeys(n.strip().lower() for n in text.split(",") if n.strip()))
        bad = [n for n in names if n not in known]
        if bad:
            raise argparse.ArgumentTypeError(f"unknown {what} {bad[0]!r}; choose from {', '.join(known)}")
        if not names:
            raise argparse.ArgumentTypeError(f"no {what} given; choose from {', '.join(known)}")
        return names
    return parse


def one_line(err):
    """An exception as one line of text: ``path: reason`` for OS errors, else its message."""
    if isinstance(err, OSError) and err.strerror and err.filename:
        text = f"{err.filename}: {err.strerror}"
    else:
        text = str(err) or type(err).__name__
    return " ".join(text.split())


@contextmanager
def data_errors(what, extra=()):
    """Report a loader's OSError/ValueError (and ``extra`` types) as a one-line :func:`fail`.

    For files that exist but hold the wrong thing: a folder without the
    expected files, a text file where a CoNLL-U file belongs.
    """
    try:
        yield
    except (OSError, ValueError, *extra) as err:
        fail(f"cannot read {what}: {one_line(err)}")


def setup(args):
    """Seed everything and make the output folder; returns (rng, out_dir)."""
    from tinygraph.backend import limit_blas_threads
    limit_blas_threads()  # small per-step matmuls: BLAS threads cost more than they save
    tg.manual_seed(args.seed)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    return np.random.default_rng(args.seed), out


def need_data(path, what, option="--data"):
    """Return the path, or exit with status 2 and a one-line message when the data set is missing."""
    try:
        return data.require_path(path, what, option)
    except FileNotFoundError as err:
        fail(str(err))


def fail(message):
    """Exit with status 2 (a usage error, as argparse uses) after one line on stderr."""
    print(f"error: {message}", file=sys.stderr)
    raise SystemExit(2)


class Progress(ProgressBar):
    """tinygraph's progress bar, usable as a context manager; ``.metrics`` are its live stats."""

    def __init__(self, total, desc=""):
        super().__init__(total, desc=desc)

    @property
    def metrics(self):
        return self.stats

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def accuracy(predict, batches, *, per_step=False):
    """Share of correct argmax predictions; ``predict(batch)`` returns the logits.

    ``per_step=True`` counts every valid (unpadded) step of ``batch.mask``;
    otherwise one prediction per sequence.
    """
    correct = total = 0
    with tg.no_grad():
        for b in batches:
            pred = np.asarray(predict(b).data).argmax(-1)
            if per_step:
                correct += int(((pred == b.targets) & b.mask).sum())
                total += int(b.mask.sum())
            else:
                correct += int((pred == b.targets).sum())
                total += len(b)
    return correct / max(total, 1)


def scalar(t) -> float:
    return float(t.item()) if hasattr(t, "item") else float(t)


def save_json(path, obj):
    """Write JSON atomically, so a crash never leaves half a file."""
    atomic_write_text(path, json.dumps(obj, indent=2, default=_jsonable))


def _jsonable(x):
    if isinstance(x, (np.floating, np.integer)):
        return x.item()
    if isinstance(x, np.ndarray):
        return x.tolist()
    return str(x)


def result(name, value, baseline_name, baseline, *, better="lower", unit="", extra=""):
    """Print the final ``RESULT:`` line: the metric next to its baseline and whether it beats it."""
    beats = value < baseline if better == "lower" else value > baseline
    verdict = "beats" if beats else "does NOT beat"
    print(f"RESULT: {name} = {value:.4f}{unit} ({verdict} {baseline_name} {baseline:.4f}{unit})"
          + (f"; {extra}" if extra else ""))
    return beats


def finish(out_dir, summary, pictures=()):
    """Write results.json and list the pictures written."""
    summary = dict(summary, pictures=[str(p) for p in pictures])
    save_json(Path(out_dir) / "results.json", summary)
    for p in pictures:
        print(f"wrote {p}")
    return summary


def plot_lines(series, path, *, title="", xlabel="", ylabel="", logy=False, hlines=None):
    """Plot named (x, y) series on one figure and save it (matplotlib, Agg backend).

    ``hlines`` maps a label to a y value drawn dashed (e.g. a baseline).
    """
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from tinygraph.viz.plots import save_figure
    fig, ax = plt.subplots(figsize=(6.4, 4.0), dpi=100)
    for label, (xs, ys) in series.items():
        ax.plot(xs, ys, label=label, marker="o" if len(xs) < 30 else None, markersize=3)
    for label, y in (hlines or {}).items():
        ax.axhline(y, linestyle="--", color="grey", linewidth=1)
        ax.annotate(label, (0.01, y), xycoords=("axes fraction", "data"), fontsize=8, va="bottom", color="grey")
    if logy:
        ax.set_yscale("log")
    ax.set(title=title, xlabel=xlabel, ylabel=ylabel)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    save_figure(fig, path)  # atomic: a half-written PNG never replaces a good one
    plt.close(fig)
    return Path(path)


def gradient_flow_picture(models, make_batch, loss_fn, path, *, title):
    """‖∂L/∂h(t)‖ over t for several models on one log-scale plot (tinygraph.bptt.gradient_flow).

    Returns the path and the curves, a NumPy array (T,) per model label.
    """
    from tinygraph.bptt import gradient_flow
    from tinygraph.viz import plot_gradient_flow
    xs, ys = make_batch()
    curves = {label: np.asarray(gradient_flow(model, xs, ys, loss_fn), dtype=float)
              for label, model in models.items()}
    plot_gradient_flow(curves, path, title=title)
    return Path(path), curves


def run_epochs(model, optimizer, batches, batch_loss, *, epochs, evaluate=None, clip=None, seed=0, desc="train"):
    """The plain epoch loop the batch examples share.

    ``batch_loss(batch) -> scalar Tensor``; ``evaluate() -> dict`` of metrics
    after each epoch. The batch order is reshuffled each epoch with ``seed``.
    Returns a history dict: per-epoch mean train loss, per-batch losses and
    the evaluation metrics.
    """
    from tinygraph import optim
    rng = np.random.default_rng(seed)
    history = {"epoch": [], "train_loss": [], "batch_loss": [], "eval": []}
    for epoch in range(1, epochs + 1):
        model.train()
        total, count = 0.0, 0
        with Progress(len(batches), desc=f"{desc} {epoch}/{epochs}") as bar:
            for i in rng.permutation(len(batches)):
                optimizer.zero_grad()
                loss = batch_loss(batches[i])
                loss.backward()
                if clip:
                    optim.clip_grad_norm(model.parameters(), clip)
                optimizer.step()
                value = scalar(loss)
                history["batch_loss"].append(value)
                total, count = total + value, count + 1
                bar.update(loss=total / count)
            model.eval()
            metrics = evaluate() if evaluate else {}
            bar.metrics.update(metrics)
        history["epoch"].append(epoch)
        history["train_loss"].append(total / max(count, 1))
        history["eval"].append(metrics)
    return history
