"""Losses built from primitives (so they draw and differentiate like any op)."""
from __future__ import annotations

import numpy as np

from . import backend, ops
from .graph import DECOMPOSED
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


def _checked_targets(scores, targets, op):
    """The targets as an op argument: range-checked, on the scores' device; a Tensor
    whose data is already that array stays a Tensor (a traced loss reads new ones)."""
    lp = scores.data if isinstance(scores, Tensor) else scores
    t = _targets_array(targets, lp.shape, op)
    xp = backend.array_module(lp)
    t = xp.asarray(t)  # NumPy targets with CuPy logits: move them to the logits' device
    K = lp.shape[-1]
    if t.size and bool(((t < 0) | (t >= K)).any()):  # one host sync, not two
        raise ValueError(f"{op}: target classes must lie in [0, {K}), got min {int(t.min())}, max {int(t.max())}")
    return targets if isinstance(targets, Tensor) and targets.data is t else t


def _masked(losses, reduction, mask, op):
    """Apply ``mask`` (1 = keep) to per-position losses, then reduce."""
    if mask is not None:
        lv = losses.data if isinstance(losses, Tensor) else losses
        xp = backend.array_module(lv)
        if isinstance(mask, Tensor) and backend.device_of(mask.data) == backend.device_of(lv):
            m = ops.astype(mask, lv.dtype)   # a Tensor mask stays in the graph: a traced loss reads new ones
        else:
            m = xp.asarray(mask.data if isinstance(mask, Tensor) else mask).astype(lv.dtype)
        if tuple(m.shape) != tuple(lv.shape):
            # broadcast to the losses' shape, so the mean counts the kept positions, not the mask's own size
            try:
                fits = np.broadcast_shapes(tuple(m.shape), tuple(lv.shape)) == tuple(lv.shape)
            except ValueError:
                fits = False
            if not fits:
                raise ValueError(f"{op}: mask must have the targets' shape {tuple(lv.shape)} (1 = keep) or "
                                 f"broadcast to it, got {tuple(m.shape)}")
            m = ops.broadcast_to(m, tuple(lv.shape)) if isinstance(m, Tensor) else xp.broadcast_to(m, lv.shape)
        losses = ops.mul(losses, m)
        if reduction == "mean":
            # the count stays on the device: no host sync
            return ops.div(ops.sum(losses), ops.maximum(ops.sum(m), 1))
    return _reduce(losses, reduction, op)


def nll_loss(log_probs, targets, reduction="mean", mask=None):
    """Negative log-likelihood of integer ``targets`` under ``log_probs`` (..., K).

    ``mask`` (the targets' shape or broadcast to it, 1 = keep) drops padded positions; with
    ``reduction="mean"`` the mean is over kept positions only.
    """
    t = _checked_targets(log_probs, targets, "nll_loss")
    # a gather, not a dense one-hot: O(N) memory and work instead of O(N*K)
    return _masked(ops.neg(ops.pick(log_probs, t)), reduction, mask, "nll_loss")


def cross_entropy(logits, targets, reduction="mean", mask=None):
    """Softmax cross-entropy of ``logits`` (..., K) against integer class ``targets``.

    One fused node per call (``ops.softmax_cross_entropy``: stable log-sum-exp,
    gradient ``softmax - onehot``). Inside ``tinygraph.decomposed()`` it records
    ``nll_loss(log_softmax(logits))`` op by op instead; both give the same numbers.
    """
    if DECOMPOSED[0]:
        return nll_loss(ops.log_softmax(logits, axis=-1), targets, reduction=reduction, mask=mask)
    t = _checked_targets(logits, targets, "cross_entropy")
    return _masked(ops.softmax_cross_entropy(logits, t), reduction, mask, "cross_entropy")


def mse_loss(pred, target, reduction="mean"):
    """Mean squared error (``reduction="sum"`` or ``"none"`` also available)."""
    ps = pred.shape if isinstance(pred, Tensor) else np.shape(pred)
    ts = target.shape if isinstance(target, Tensor) else np.shape(target)
    if tuple(ps) != tuple(ts):
        raise ValueError(f"mse_loss: prediction shape {tuple(ps)} differs from target shape {tuple(ts)}")
    if isinstance(pred, Tensor) and not isinstance(target, Tensor) and hasattr(target, "dtype") \
            and np.dtype(target.dtype) != np.dtype(pred.dtype):
        # a float64 NumPy target would turn a float32 model's whole backward into float64
        target = backend.array_module(pred.data).asarray(target).astype(pred.dtype)
    diff = ops.sub(pred, target)
    return _reduce(ops.mul(diff, diff), reduction, "mse_loss")
