"""Variable-length batches: lengths <-> (T, B) masks for time-major padded sequences."""
from __future__ import annotations

import numpy as np

import tinygraph as tg
from tinygraph import backend

__all__ = ["lengths_to_mask", "mask_to_lengths", "check_lengths"]


def _host(values):
    """A NumPy array from a Tensor, a NumPy/CuPy array or a list (np.asarray refuses CuPy).

    ``Tensor.numpy()`` tells a running trace that these values were read on the host.
    """
    return values.numpy() if isinstance(values, tg.Tensor) else backend.as_host(values)


def check_lengths(lengths, steps, batch):
    """``lengths`` as a host int array of shape (batch,), each in [1, steps]."""
    arr = _host(lengths)
    if arr.shape != (batch,) or arr.dtype.kind not in "iu":
        raise ValueError(f"lengths must be {batch} integers (one per sequence), got shape {arr.shape} "
                         f"dtype {arr.dtype}")
    if arr.size and (arr.min() < 1 or arr.max() > steps):
        raise ValueError(f"lengths must lie in [1, {steps}] (the padded length), got min {arr.min()}, "
                         f"max {arr.max()}")
    return arr.astype(np.int64)


def lengths_to_mask(lengths, steps):
    """Boolean (steps, B) mask, True at the valid (non-padded) steps of each sequence."""
    arr = _host(lengths)
    return np.arange(steps)[:, None] < arr[None, :]


def mask_to_lengths(mask):
    """Lengths (B,) from a (T, B) mask of valid steps that are a prefix of each column."""
    m = _host(mask).astype(bool)
    lengths = m.sum(axis=0)
    if not np.array_equal(m, lengths_to_mask(lengths, m.shape[0])):
        raise ValueError("mask_to_lengths: each sequence's valid steps must come first (a prefix mask)")
    return lengths.astype(np.int64)
