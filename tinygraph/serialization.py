"""Save and load state dicts as ``.npz`` files: no pickle, atomic writes.

``save`` accepts a mapping of names to arrays, Tensors, Python scalars or
strings (a model's ``state_dict()``, an optimizer's, or both merged under
prefixes). It writes to a temporary file in the same folder and renames it
over the target with ``os.replace``, so a crash never leaves half a file.
``load`` reads with ``allow_pickle=False`` and returns an ordered dict of
NumPy arrays (scalars come back as 0-d arrays).
"""
from __future__ import annotations

import os
import zipfile
from collections import OrderedDict

import numpy as np

from . import backend
from .fileio import atomic_write
from .tensor import Tensor

__all__ = ["save", "load"]


def _as_array(name, value):
    if isinstance(value, Tensor):
        value = value.data
    if hasattr(value, "shape") and not isinstance(value, np.ndarray):
        value = backend.as_host(value)  # a CuPy array
    arr = np.asarray(value)
    if arr.dtype.kind == "O":
        raise TypeError(
            f"save: entry {name!r} holds Python objects ({type(value).__name__}); only numeric "
            "arrays, scalars and strings can be stored without pickle"
        )
    return arr


def _write_npz(f, arrays):
    """The .npz layout np.savez writes, without its keyword-name collisions ("file")."""
    with zipfile.ZipFile(f, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as zf:
        for name, arr in arrays.items():
            with zf.open(name + ".npy", "w", force_zip64=True) as member:
                np.lib.format.write_array(member, arr, allow_pickle=False)


def save(state_dict, path):
    """Write ``state_dict`` (name -> array/Tensor/scalar/str) to ``path`` as .npz, atomically."""
    if not hasattr(state_dict, "items"):
        raise TypeError(f"save: expected a mapping of names to arrays, got {type(state_dict).__name__}")
    arrays = OrderedDict()
    for name, value in state_dict.items():
        if not isinstance(name, str) or not name:
            raise TypeError(f"save: keys must be non-empty strings, got {name!r}")
        arrays[name] = _as_array(name, value)
    return atomic_write(path, lambda f: _write_npz(f, arrays), "wb")


def load(path):
    """Read a file written by ``save``: an ordered dict of NumPy arrays (never unpickles).

    Anything else (an empty or truncated file, a ``.npy`` array, a pickle)
    is a ``ValueError`` that names the file.
    """
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"load: no such file {path!r}")
    unreadable = (ValueError, EOFError, OSError, zipfile.BadZipFile)
    try:
        data = np.load(path, allow_pickle=False)
    except unreadable as exc:
        raise ValueError(f"load: {path!r} is not a pickle-free .npz state file "
                         f"({type(exc).__name__}: {exc})") from None
    if not isinstance(data, np.lib.npyio.NpzFile):
        raise ValueError(f"load: {path!r} holds one {type(data).__name__} (a .npy file?), not the .npz "
                         "of named arrays that save writes")
    try:
        with data:
            return OrderedDict((name, data[name]) for name in data.files)
    except unreadable as exc:
        raise ValueError(f"load: {path!r} is not a pickle-free .npz state file "
                         f"({type(exc).__name__}: {exc})") from None
