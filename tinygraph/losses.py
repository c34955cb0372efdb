"""Losses built from primitives (so they draw and differentiate like any op)."""
from __future__ import annotations

import numpy as np

from . import backend, ops
from .tensor import Tensor

_REDUCTIONS = ("mean", "sum", "none")


def _reduce(values, reduction, op):
    if reduction == "mean":
        return ops.mean(values)
    if reduction == "sum":
        return ops.sum(values)
    if reduction == "none":
        return values
    raise ValueError(f"{op}: reduction must be one of {_REDUCTIONS}, got {reduction!r}")


def _targets_array(targets, logits_shape, op):
    t = targets.data if isinstance(targets, Tensor) else targets
    xp = backend.array_module(t) if hasattr(t, "dtype") else np
    t = xp.asarray(t)
    if t.dtype.kind not in "iu":
        raise TypeError(f"{op}: targets must be integer class indices, got dtype {t.dtype}")
    if tuple(t.shape) != tuple(logits_shape[:-1]):
        raise ValueError(
            f"{op}: logits have shape {tuple(logits_shape)} so targets must have shape "
            f"{tuple(logits_shape[:-1])} (one class index per row), got {tuple(t.shape)}"
        )
    return t


def nll_loss(log_probs, targets, reduction="mean", mask=None):
    """Negative log-likelihood of integer ``targets`` under ``log_probs`` (..., K).

    ``mask`` (same shape as targets, 1 = keep) drops padded positions; with
    ``reduction="mean"`` the mean is over kept positions only.
    """
    lp = log_probs.data if isinstance(log_probs, Tensor) else log_probs
    t = _targets_array(targets, lp.shape, "nll_loss")
    xp = backend.array_module(lp)
    t = xp.asarray(t)  # NumPy targets with CuPy logits: move them to the logits' device
    K = lp.shape[-1]
    if t.size and bool(((t < 0) | (t >= K)).any()):  # one host sync, not two
        raise ValueError(f"nll_loss: target classes must lie in [0, {K}), got min {int(t.min())}, max {int(t.max())}")
    # a gather, not a dense one-hot: O(N) memory and work instead of O(N*K). Tensor
    # targets stay Tensors, so a traced loss (tinygraph.trace) reads new ones at replay
    picked = ops.neg(ops.pick(log_probs, targets if isinstance(targets, Tensor) and targets.data is t else t))
    if mask is not None:
        m = xp.asarray(mask.data if isinstance(mask, Tensor) else mask).astype(lp.dtype)
        picked = ops.mul(picked, m)
        if reduction == "mean":
            # the count stays on the device: no host sync
            return ops.div(ops.sum(picked), xp.maximum(m.sum(), 1))
    return _reduce(picked, reduction, "nll_loss")


def cross_entropy(logits, targets, reduction="mean", mask=None):
    """Softmax cross-entropy of ``logits`` (..., K) against integer class ``targets``.

    Computed as ``nll_loss(log_softmax(logits))``, stable for large logits.
    """
    return nll_loss(ops.log_softmax(logits, axis=-1), targets, reduction=reduction, mask=mask)


def mse_loss(pred, target, reduction="mean"):
    """Mean squared error (``reduction="sum"`` or ``"none"`` also available)."""
    ps = pred.shape if isinstance(pred, Tensor) else np.shape(pred)
    ts = target.shape if isinstance(target, Tensor) else np.shape(target)
    if tuple(ps) != tuple(ts):
        raise ValueError(f"mse_loss: prediction shape {tuple(ps)} differs from target shape {tuple(ts)}")
    diff = ops.sub(pred, target)
    return _reduce(ops.mul(diff, diff), reduction, "mse_loss")
