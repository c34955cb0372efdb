"""Initialisers: fill a Parameter's array in place, drawing from ``tg.generator()``.

All randomness comes from tinygraph's seeded generator, so ``tg.manual_seed``
makes a model's initial weights reproducible. Values are drawn on the host
in float64 and then cast and moved to the parameter's dtype and device.

The names follow PyTorch (trailing underscore = in place):

* ``uniform_(p, -k, k)`` with ``k = 1/sqrt(hidden)`` is the default for
  Linear layers and recurrent cells, like PyTorch.
* ``orthogonal_`` for recurrent weights (keeps ``W``'s singular values at 1).
* ``identity_`` for the IRNN (ReLU recurrence starting as the identity map).
* ``xavier_uniform_`` / ``xavier_normal_`` (Glorot).
"""
from __future__ import annotations

import math

import numpy as np

from . import backend
from .creation import generator

__all__ = [
    "uniform_", "normal_", "zeros_", "ones_", "constant_", "orthogonal_",
    "identity_", "xavier_uniform_", "xavier_normal_", "fan_in_and_fan_out",
    "blockwise_",
]


def _assign(param, host_values):
    """Write ``host_values`` into ``param`` keeping its dtype and device."""
    values = np.asarray(host_values, dtype=param.dtype).reshape(param.shape)
    param.data = backend.to_device(values, param.device)
    return param


def uniform_(param, low=0.0, high=1.0):
    """Fill with U(low, high)."""
    return _assign(param, generator().uniform(low, high, size=param.shape))


def normal_(param, mean=0.0, std=1.0):
    """Fill with N(mean, std^2)."""
    return _assign(param, generator().normal(mean, std, size=param.shape))


def constant_(param, value):
    """Fill with ``value``."""
    return _assign(param, np.full(param.shape, value, dtype=np.float64))


def zeros_(param):
    """Fill with 0."""
    return constant_(param, 0.0)


def ones_(param):
    """Fill with 1."""
    return constant_(param, 1.0)


def _orthogonal(rows, cols, gain):
    """A (rows, cols) matrix with orthonormal rows or columns (QR of a Gaussian)."""
    a = generator().standard_normal((max(rows, cols), min(rows, cols)))
    q, r = np.linalg.qr(a)
    # the sign fix makes Q uniformly distributed (Haar), as in Saxe et al.
    q = q * np.sign(np.diag(r))
    if rows < cols:
        q = q.T
    return gain * q[:rows, :cols]


def orthogonal_(param, gain=1.0):
    """Fill a 2-D parameter with a (semi-)orthogonal matrix times ``gain``."""
    if param.ndim != 2:
        raise ValueError(f"orthogonal_: needs a 2-D parameter, got shape {param.shape}")
    return _assign(param, _orthogonal(param.shape[0], param.shape[1], gain))


def identity_(param, gain=1.0):
    """Fill a 2-D parameter with ``gain`` times the identity (IRNN initialisation)."""
    if param.ndim != 2:
        raise ValueError(f"identity_: needs a 2-D parameter, got shape {param.shape}")
    return _assign(param, gain * np.eye(*param.shape))


def fan_in_and_fan_out(shape):
    """(fan_in, fan_out) of a weight shaped (out, in, *receptive field), as PyTorch counts them:
    each is multiplied by the size of the receptive field (1 for a matrix)."""
    if len(shape) < 2:
        raise ValueError(f"fan_in_and_fan_out: needs at least 2 dimensions, got shape {tuple(shape)}")
    field = math.prod(int(s) for s in shape[2:])
    return int(shape[1]) * field, int(shape[0]) * field


def xavier_uniform_(param, gain=1.0):
    """Glorot uniform: U(-a, a) with a = gain * sqrt(6 / (fan_in + fan_out))."""
    fan_in, fan_out = fan_in_and_fan_out(param.shape)
    a = gain * math.sqrt(6.0 / (fan_in + fan_out))
    return uniform_(param, -a, a)


def xavier_normal_(param, gain=1.0):
    """Glorot normal: N(0, std^2) with std = gain * sqrt(2 / (fan_in + fan_out))."""
    fan_in, fan_out = fan_in_and_fan_out(param.shape)
    return normal_(param, 0.0, gain * math.sqrt(2.0 / (fan_in + fan_out)))


_BLOCK_INITS = {
    "orthogonal": lambda rows, cols: _orthogonal(rows, cols, 1.0),
    "identity": lambda rows, cols: np.eye(rows, cols),
}


def blockwise_(param, kind, blocks):
    """Initialise a gate-stacked weight (blocks*H, H) one (H, H) block at a time.

    Gated cells stack their gates' recurrent weights; each gate's block gets
    its own orthogonal (or identity) matrix, as the per-gate equations expect.
    """
    if kind not in _BLOCK_INITS:
        raise ValueError(f"blockwise_: unknown kind {kind!r}; use one of {sorted(_BLOCK_INITS)}")
    rows, cols = param.shape
    if int(blocks) < 1:
        raise ValueError(f"blockwise_: blocks must be >= 1, got {blocks}")
    if rows % blocks:
        raise ValueError(f"blockwise_: {rows} rows cannot be split into {blocks} gate blocks")
    step = rows // blocks
    return _assign(param, np.concatenate([_BLOCK_INITS[kind](step, cols) for _ in range(blocks)], axis=0))
