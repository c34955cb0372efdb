"""Matplotlib plots of training and gradient flow (matplotlib is an optional extra).

Each function draws on ``ax`` when given, otherwise on a new figure; with
``path`` it saves a PNG atomically (temporary file + ``os.replace``) and
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


def _figure(ax, figsize):
    plt = _pyplot()
    if ax is not None:
        return ax.figure, ax, False
    fig, ax = plt.subplots(figsize=figsize)
    return fig, ax, True


def save_figure(fig, path, dpi=100):
    """Write ``fig`` to ``path`` as PNG without ever leaving a half-written file."""
    path = os.fspath(path)
    atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=dpi, bbox_inches="tight"))
    return path


def _finish(fig, owned, path):
    if path is not None:
        save_figure(fig, path)
        if owned:
            _pyplot().close(fig)
    return fig


def plot_gradient_flow(curves, path=None, ax=None, title="Gradient flow: ‖∂L/∂h(t)‖",
                       xlabel="time step t"):
    """One log-scale line per model: ``curves`` maps a label to an array (T,) of norms.

    Feed it ``tinygraph.bptt.gradient_flow(...)`` for several models (a tanh
    RNN, an LSTM, one with scaled-up recurrent weights) to see vanishing and
    exploding gradients side by side. Zeros and NaNs are left out (log scale).
    """
    if not curves:
        raise ValueError("plot_gradient_flow: give at least one curve (label -> array of norms)")
    fig, ax, owned = _figure(ax, (7, 4))
    for label, values in curves.items():
        values = np.asarray(values, dtype=np.float64).ravel()
        shown = np.where((values > 0) & np.isfinite(values), values, np.nan)
        ax.plot(np.arange(len(values)), shown, marker="o", markersize=2.5, linewidth=1.4, label=str(label))
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
    fig, ax, owned = _figure(ax, (7, 4))
    with np.errstate(divide="ignore", invalid="ignore"):
        logged = np.where(matrix > 0, np.log10(matrix), np.nan)
    image = ax.imshow(logged, aspect="auto", origin="lower", cmap="viridis", interpolation="nearest")
    fig.colorbar(image, ax=ax, label="log10 gradient norm")
    ax.set_xlabel("time step t")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    return _finish(fig, owned, path)


def _loss_series(history):
    """(per-step losses, per-epoch train, per-epoch eval) from a History, dict or array."""
    if hasattr(history, "step_loss"):
        return (np.asarray(history.step_loss, dtype=np.float64), history.metric("train_loss"),
                history.metric("eval_loss"), np.asarray(history.step_epoch))
    if isinstance(history, dict):
        return (np.asarray(history.get("loss", []), dtype=np.float64), history.get("train_loss"),
                history.get("eval_loss"), None)
    return np.asarray(history, dtype=np.float64).ravel(), None, None, None


def plot_loss_curve(history, path=None, ax=None, title="Training loss", log=False):
    """Per-update loss (faint) with its running mean, plus per-epoch train/eval loss.

    ``history`` is a :class:`tinygraph.bptt.History`, a dict with ``"loss"``
    (and optionally ``"train_loss"``/``"eval_loss"`` per epoch), or an array.
    """
    steps, train, evals, step_epoch = _loss_series(history)
    if steps.size == 0:
        raise ValueError("plot_loss_curve: the history holds no losses")
    fig, ax, owned = _figure(ax, (7, 4))
    x = np.arange(1, len(steps) + 1)
    ax.plot(x, steps, color="tab:blue", alpha=0.3, linewidth=0.8, label="loss per update")
    width = max(1, len(steps) // 20)
    if width > 1:
        smooth = np.convolve(steps, np.ones(width) / width, mode="valid")
        ax.plot(x[width - 1:], smooth, color="tab:blue", linewidth=1.6, label=f"running mean ({width})")
    if train and step_epoch is not None and len(step_epoch):
        ends = [int(np.nonzero(step_epoch == e)[0].max()) + 1 for e in np.unique(step_epoch)][:len(train)]
        ax.plot(ends, train[:len(ends)], "o-", color="tab:orange", label="train (epoch mean)")
        if evals and any(v is not None for v in evals):
            ax.plot(ends, [np.nan if v is None else v for v in evals[:len(ends)]], "s--",
                    color="tab:green", label="eval")
    if log:
        ax.set_yscale("log")
    ax.set_xlabel("update")
    ax.set_ylabel("loss")
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    ax.legend()
    return _finish(fig, owned, path)
