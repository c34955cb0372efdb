"""Matplotlib plots of training and gradient flow (matplotlib is an optional extra).

Each function draws on ``ax`` when given, otherwise on a new figure; with
``path`` it saves the figure atomically (temporary file + ``os.replace``),
in the format the suffix names (``.png``, ``.svg``, ``.pdf``, ...), and
closes the figure it made. Each returns the figure. The Agg backend is used
when pyplot has not been set up yet, so nothing needs a display.
"""
from __future__ import annotations

import os

import numpy as np

from tinygraph.fileio import atomic_write

__all__ = ["plot_gradient_flow", "plot_gradient_heatmap", "plot_loss_curve", "save_figure"]


def _pyplot():
    try:
        import matplotlib
    except ImportError:
        raise ImportError("plotting needs matplotlib: pip install 'tinygraph[viz]'") from None
    import sys
    if "matplotlib.pyplot" not in sys.modules:
        matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def _figure(ax, figsize, path=None):
    plt = _pyplot()
    if path is not None:
        _format_of(path)  # refuse a bad suffix before drawing anything
    if ax is not None:
        return ax.figure, ax, False
    fig, ax = plt.subplots(figsize=figsize)
    return fig, ax, True


def _format_of(path):
    """The matplotlib format named by ``path``'s suffix; ValueError for one it cannot write."""
    from matplotlib.backend_bases import FigureCanvasBase
    suffix = os.path.splitext(os.fspath(path))[1].lower()
    known = FigureCanvasBase.get_supported_filetypes()
    if suffix[1:] not in known:
        raise ValueError(f"cannot save a plot as {suffix or 'a file without a suffix'} ({os.fspath(path)!r}); "
                         f"use one of {', '.join('.' + k for k in sorted(known))}")
    return suffix[1:]


def save_figure(fig, path, dpi=100):
    """Write ``fig`` to ``path`` (format from the suffix) without ever leaving a half-written file."""
    path = os.fspath(path)
    fmt = _format_of(path)
    # the temporary file has no telling suffix, so the format is passed explicitly
    atomic_write(path, lambda f: fig.savefig(f, format=fmt, dpi=dpi, bbox_inches="tight"))
    return path


def _finish(fig, owned, path):
    if path is not None:
        try:
            save_figure(fig, path)
        finally:  # a figure this module made is not left open, even when saving fails
            if owned:
                _pyplot().close(fig)
    return fig


def _flow_lines(label, values):
    """(line label, norms over t) pairs for one curve: one per state row of a per_state result."""
    per_state = isinstance(values, (tuple, list)) and len(values) and np.ndim(values[0]) >= 1
    values = np.asarray(values, dtype=np.float64)
    if not per_state and values.ndim == 2 and 1 in values.shape:   # a column or row of norms: one line
        values = values.reshape(-1)
    if values.ndim <= 1:
        return [(str(label), np.atleast_1d(values))]
    if values.ndim > 2:
        raise ValueError(f"plot_gradient_flow: curve {label!r} has shape {values.shape}; give norms (T,) "
                         "or one row per state tensor (states, T), as gradient_flow(..., per_state=True) does")
    # gradient_flow(..., per_state=True) gives (h,) or (h, c): a line per state, not one 2T-long line
    names = ("h", "c") if len(values) <= 2 else [f"state {i}" for i in range(len(values))]
    return [(f"{label} ({name})", row) for name, row in zip(names, values)]


def plot_gradient_flow(curves, path=None, ax=None, title="Gradient flow: ‖∂L/∂h(t)‖",
                       xlabel="time step t"):
    """One log-scale line per model: ``curves`` maps a label to an array (T,) of norms.

    Feed it ``tinygraph.bptt.gradient_flow(...)`` for several models (a tanh
    RNN, an LSTM, one with scaled-up recurrent weights) to see vanishing and
    exploding gradients side by side. A ``per_state=True`` result, ``(h, c)``,
    is drawn as one line per state ("label (h)", "label (c)"). Zeros and NaNs
    are left out (log scale).
    """
    if not curves:
        raise ValueError("plot_gradient_flow: give at least one curve (label -> array of norms)")
    lines = [line for label, values in curves.items() for line in _flow_lines(label, values)]
    fig, ax, owned = _figure(ax, (7, 4), path)
    for label, values in lines:
        shown = np.where((values > 0) & np.isfinite(values), values, np.nan)
        ax.plot(np.arange(len(values)), shown, marker="o", markersize=2.5, linewidth=1.4, label=label)
    ax.set_yscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel("gradient norm (log scale)")
    ax.set_title(title)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    return _finish(fig, owned, path)


def plot_gradient_heatmap(matrix, path=None, ax=None, title="‖∂L/∂h(t)‖ over training",
                          ylabel="update"):
    """Heatmap of log10 norms: rows are epochs/updates, columns time steps (updates × T)."""
    matrix = np.asarray(matrix, dtype=np.float64)
    if matrix.ndim != 2 or matrix.size == 0:
        raise ValueError(f"plot_gradient_heatmap: need a non-empty 2-D array (updates x T), got shape {matrix.shape}")
    fig, ax, owned = _figure(ax, (7, 4), path)
    with np.errstate(divide="ignore", invalid="ignore"):
        logged = np.where(matrix > 0, np.log10(matrix), np.nan)
    image = ax.imshow(logged, aspect="auto", origin="lower", cmap="viridis", interpolation="nearest")
    fig.colorbar(image, ax=ax, label="log10 gradient norm")
    ax.set_xlabel("time step t")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    return _finish(fig, owned, path)


def _per_epoch(values):
    """Per-epoch values as floats (None -> NaN), or None when there is nothing to draw."""
    if values is None or all(v is None for v in values):
        return None
    return np.array([np.nan if v is None else v for v in values], dtype=np.float64).ravel()


def _dict_step_epoch(history, steps):
    """The optional per-update epoch labels of a dict ("step_epoch", or "epoch" as History.arrays() names it)."""
    key = "step_epoch" if "step_epoch" in history else "epoch" if "epoch" in history else None
    if key is None:
        return None
    labels = np.asarray(history[key]).ravel()
    if len(steps) == 0 and key == "epoch":   # a per-epoch dict (examples' run_epochs): the epoch numbers
        return None
    if len(labels) != len(steps):
        raise ValueError(f"plot_loss_curve: {key!r} must give the epoch of every update "
                         f"({len(steps)} losses), got {len(labels)} values")
    return labels


def _loss_series(history):
    """(per-step losses, per-epoch train, per-epoch eval, per-step epoch or None) from a History, dict or array."""
    if hasattr(history, "step_loss"):
        return (np.asarray(history.step_loss, dtype=np.float64), _per_epoch(history.metric("train_loss")),
                _per_epoch(history.metric("eval_loss")), np.asarray(history.step_epoch))
    if isinstance(history, dict):
        steps = np.asarray(history.get("loss", []), dtype=np.float64).ravel()
        return (steps, _per_epoch(history.get("train_loss")), _per_epoch(history.get("eval_loss")),
                _dict_step_epoch(history, steps))
    return np.asarray(history, dtype=np.float64).ravel(), None, None, None


def _epoch_ends(n_steps, step_epoch, n_epochs):
    """The update number each epoch's point sits at: the last update of that epoch."""
    if step_epoch is not None and len(step_epoch):
        return np.array([np.nonzero(step_epoch == e)[0].max() + 1 for e in np.unique(step_epoch)])[:n_epochs]
    # no per-update epoch labels: take the epochs as equal shares of the updates
    return np.round(np.arange(1, n_epochs + 1) * n_steps / n_epochs).astype(int)


def _plot_steps(ax, steps):
    """The per-update loss, faint, and its running mean."""
    x = np.arange(1, len(steps) + 1)
    ax.plot(x, steps, color="tab:blue", alpha=0.3, linewidth=0.8, label="loss per update")
    width = max(1, len(steps) // 20)
    if width > 1:
        smooth = np.convolve(steps, np.ones(width) / width, mode="valid")
        ax.plot(x[width - 1:], smooth, color="tab:blue", linewidth=1.6, label=f"running mean ({width})")


def plot_loss_curve(history, path=None, ax=None, title="Training loss", log=False):
    """Per-update loss (faint) with its running mean, plus per-epoch train/eval loss.

    ``history`` is a :class:`tinygraph.bptt.History`, a dict or an array. A
    dict holds ``"loss"`` (per update) and/or ``"train_loss"``/``"eval_loss"``
    (per epoch), and optionally ``"step_epoch"`` (or ``"epoch"``, as
    ``History.arrays()`` names it): the epoch of every update. Each epoch's
    point sits at its last update; without per-update epochs the epochs are
    taken as equal shares of the updates, and without per-update losses the
    per-epoch losses are drawn against the epoch number.
    """
    steps, train, evals, step_epoch = _loss_series(history)
    n_epochs = max(len(series) for series in (train, evals, ()) if series is not None)
    if steps.size == 0 and n_epochs == 0:
        raise ValueError("plot_loss_curve: the history holds no losses")
    fig, ax, owned = _figure(ax, (7, 4), path)
    if steps.size:
        _plot_steps(ax, steps)
        x = _epoch_ends(len(steps), step_epoch, n_epochs) if n_epochs else None
    else:
        x = np.arange(1, n_epochs + 1)
    if train is not None:
        ax.plot(x[:len(train)], train[:len(x)], "o-", color="tab:orange", label="train (epoch mean)")
    if evals is not None:
        ax.plot(x[:len(evals)], evals[:len(x)], "s--", color="tab:green", label="eval")
    if log:
        ax.set_yscale("log")
    ax.set_xlabel("update" if steps.size else "epoch")
    ax.set_ylabel("loss")
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    ax.legend()
    return _finish(fig, owned, path)
