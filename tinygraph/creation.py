"""Tensor factories and the global random generator."""
from __future__ import annotations

import numpy as np

from . import backend
from .tensor import Tensor

DEFAULT_DTYPE = np.float32
_rng = np.random.default_rng()


def manual_seed(seed: int):
    """Seed tinygraph's generator (and CuPy's, when it is loaded)."""
    global _rng
    _rng = np.random.default_rng(seed)
    if backend._cupy is not None:
        backend._cupy.random.seed(seed)
    return _rng


def generator() -> np.random.Generator:
    """The generator used by randn/rand and the initialisers."""
    return _rng


def get_default_dtype():
    """The floating dtype used when none is given (float32 unless set)."""
    return np.dtype(DEFAULT_DTYPE)


def set_default_dtype(dtype):
    """Set the floating dtype used when none is given (float32 or float64)."""
    global DEFAULT_DTYPE
    if np.dtype(dtype).kind != "f":
        raise TypeError(f"set_default_dtype: the default dtype must be a float dtype (float32 or float64), "
                        f"got {np.dtype(dtype)}")
    DEFAULT_DTYPE = np.dtype(dtype).type


def _float_dtype(dtype, op):
    """Refuse a non-float ``dtype`` for random samples (an integer cast would make them all 0)."""
    if dtype is not None and np.dtype(dtype).kind != "f":
        raise TypeError(f"{op}: samples need a float dtype, got {np.dtype(dtype)}")


def _shape(shape):
    if len(shape) == 1 and isinstance(shape[0], (tuple, list)):
        shape = tuple(shape[0])
    for s in shape:   # int(2.5) would quietly be 2
        if not isinstance(s, (int, np.integer)) or isinstance(s, bool):
            raise TypeError(f"shape sizes must be integers, got {s!r} in {tuple(shape)}")
    return tuple(int(s) for s in shape)


def _finish(array, dtype, device, requires_grad, name=None):
    if dtype is not None:
        array = array.astype(np.dtype(dtype), copy=False)
    array = backend.to_device(array, device)
    return Tensor(array, requires_grad=requires_grad, name=name)


def tensor(data, dtype=None, device="cpu", requires_grad=False, name=None):
    """Make a Tensor from a list, scalar, NumPy/CuPy array or Tensor (copies it)."""
    if isinstance(data, Tensor):
        data = data.data
    if isinstance(data, (np.ndarray, np.generic)) or (
            backend._cupy is not None and isinstance(data, backend._cupy.ndarray)):
        array = data.copy()  # arrays and NumPy scalars keep their dtype (float64 stays float64)
        if isinstance(array, np.generic):
            array = np.asarray(array)
    else:
        array = np.array(data)
        if dtype is None and array.dtype.kind == "f":
            array = array.astype(DEFAULT_DTYPE)
    return _finish(array, dtype, device, requires_grad, name)


def zeros(*shape, dtype=None, device="cpu", requires_grad=False, name=None):
    """A Tensor of zeros of ``shape`` (sizes or one tuple)."""
    return _finish(np.zeros(_shape(shape), dtype or DEFAULT_DTYPE), None, device, requires_grad, name)


def ones(*shape, dtype=None, device="cpu", requires_grad=False, name=None):
    """A Tensor of ones of ``shape`` (sizes or one tuple)."""
    return _finish(np.ones(_shape(shape), dtype or DEFAULT_DTYPE), None, device, requires_grad, name)


def full(shape, fill_value, dtype=None, device="cpu", requires_grad=False, name=None):
    """A Tensor of ``shape`` filled with ``fill_value``."""
    shape = (int(shape),) if isinstance(shape, (int, np.integer)) else tuple(shape)
    return _finish(np.full(shape, fill_value, dtype or DEFAULT_DTYPE), None, device, requires_grad, name)


def randn(*shape, dtype=None, device="cpu", requires_grad=False, name=None):
    """Standard normal samples from tinygraph's seeded generator (a float dtype)."""
    _float_dtype(dtype, "randn")
    arr = _rng.standard_normal(_shape(shape)).astype(dtype or DEFAULT_DTYPE)
    return _finish(arr, None, device, requires_grad, name)


def rand(*shape, dtype=None, device="cpu", requires_grad=False, name=None):
    """Uniform [0, 1) samples from tinygraph's seeded generator (a float dtype)."""
    _float_dtype(dtype, "rand")
    arr = _rng.random(_shape(shape)).astype(dtype or DEFAULT_DTYPE)
    return _finish(arr, None, device, requires_grad, name)


def arange(start, stop=None, step=1, dtype=None, device="cpu", requires_grad=False):
    """Evenly spaced values in [start, stop) (or [0, start) without ``stop``), like ``np.arange``."""
    arr = np.arange(start, stop, step) if stop is not None else np.arange(0, start, step)
    if dtype is None and arr.dtype.kind == "f":
        arr = arr.astype(DEFAULT_DTYPE)
    return _finish(arr, dtype, device, requires_grad)


def eye(n, m=None, dtype=None, device="cpu", requires_grad=False):
    """The (n, m) identity matrix (m = n by default)."""
    return _finish(np.eye(n, m, dtype=dtype or DEFAULT_DTYPE), None, device, requires_grad)


def zeros_like(t, dtype=None, device=None, requires_grad=False):
    """Zeros with ``t``'s shape, dtype and device unless given."""
    device = device or t.device
    return _finish(np.zeros(t.shape, dtype or t.dtype), None, device, requires_grad)


def ones_like(t, dtype=None, device=None, requires_grad=False):
    """Ones with ``t``'s shape, dtype and device unless given."""
    device = device or t.device
    return _finish(np.ones(t.shape, dtype or t.dtype), None, device, requires_grad)
