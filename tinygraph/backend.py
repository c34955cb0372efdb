"""Array-module dispatch: NumPy on the CPU, CuPy on NVIDIA GPUs.

Ops never ask "are we on the GPU?"; they ask the array which module made it
(``array_module``) and call that module. CuPy is imported lazily and only when
a CUDA device is requested, so NumPy-only machines never pay for it.
"""
from __future__ import annotations

import os

import numpy as np

_cupy = None
_cupy_import_error = None

GPU_INSTALL_HINT = (
    'install the GPU extra with `pip install "tinygraph[gpu]"` '
    "(CuPy for CUDA 12) on a machine with an NVIDIA GPU"
)


def _try_import_cupy():
    global _cupy, _cupy_import_error
    if _cupy is None and _cupy_import_error is None:
        try:
            import cupy  # noqa: F401  (optional dependency)

            _cupy = cupy
        except Exception as exc:  # ImportError, or a broken CUDA install
            _cupy_import_error = exc
    return _cupy


def cuda_available() -> bool:
    """True when CuPy imports and sees at least one CUDA device."""
    cp = _try_import_cupy()
    if cp is None:
        return False
    try:
        return cp.cuda.runtime.getDeviceCount() > 0
    except Exception:
        return False


def get_cupy():
    """Return the cupy module or raise an error that says how to get it."""
    cp = _try_import_cupy()
    if cp is None:
        raise RuntimeError(
            f"device 'cuda' requested but CuPy could not be imported ({_cupy_import_error!r}); "
            + GPU_INSTALL_HINT
        )
    return cp


def array_module(*arrays):
    """The module (numpy or cupy) that owns the given arrays; numpy for scalars."""
    if _cupy is None:  # CuPy never loaded: nothing can be a CuPy array (the common, hot case)
        return np
    for a in arrays:
        if isinstance(a, np.ndarray) or isinstance(a, np.generic):
            continue
        if _cupy is not None and isinstance(a, _cupy.ndarray):
            return _cupy
    return np


def parse_device(device) -> tuple[str, int]:
    """'cpu' -> ('cpu', 0); 'cuda' / 'cuda:N' -> ('cuda', N)."""
    if device is None:
        return ("cpu", 0)
    text = str(device).strip().lower()
    if text == "cpu":
        return ("cpu", 0)
    if text == "cuda" or text == "gpu":
        return ("cuda", 0)
    if text.startswith("cuda:"):
        try:
            return ("cuda", int(text[5:]))
        except ValueError:
            pass
    hint = ""
    if as_dtype(device) is not None:
        hint = f" ({device!r} is a dtype: cast with .astype({str(device)!r}), .double() or .float())"
    raise ValueError(f"unknown device {device!r}: use 'cpu', 'cuda' or 'cuda:N'{hint}")


def as_dtype(value):
    """``value`` as a NumPy dtype when it names one (np.float64, "float32"), else None (a device)."""
    if value is None:   # np.dtype(None) is float64, but None means "no change" / the CPU
        return None
    if isinstance(value, str) and (value.strip().lower() in ("cpu", "cuda", "gpu")
                                   or value.strip().lower().startswith("cuda:")):
        return None
    try:
        return np.dtype(value)
    except TypeError:
        return None


def device_of(array) -> str:
    """Canonical device string of an array: 'cpu' or 'cuda:N'."""
    if isinstance(array, (np.ndarray, np.generic)):
        return "cpu"
    if _cupy is not None and isinstance(array, _cupy.ndarray):
        return f"cuda:{array.device.id}"
    return "cpu"


def to_device(array, device):
    """Copy ``array`` to ``device`` (no copy when it is already there)."""
    kind, index = parse_device(device)
    if kind == "cpu":
        if isinstance(array, np.ndarray):
            return array
        if _cupy is not None and isinstance(array, _cupy.ndarray):
            return _cupy.asnumpy(array)
        return np.asarray(array)
    cp = get_cupy()
    if isinstance(array, cp.ndarray) and array.device.id == index:
        return array
    with cp.cuda.Device(index):
        return cp.asarray(array)


def as_host(array):
    """A NumPy copy of any backend array."""
    return to_device(array, "cpu")


def module_for_device(device):
    kind, _ = parse_device(device)
    return np if kind == "cpu" else get_cupy()


def openblas_libraries():
    """Paths of the OpenBLAS shared libraries loaded in this process (Linux; empty elsewhere)."""
    try:
        with open("/proc/self/maps") as f:
            return sorted({line.split()[-1] for line in f if "openblas" in line.lower() and ".so" in line})
    except OSError:
        return []


def limit_blas_threads(n=1):
    """Ask a loaded OpenBLAS to use ``n`` threads; returns True when it could.

    Recurrent models multiply small matrices one time step at a time; there a
    multi-threaded BLAS spends more on waking threads than it saves, and on a
    busy 2-core machine it made training 3-10x slower. Best effort: Linux
    OpenBLAS builds only (others are left as they are), and the variable
    OPENBLAS_NUM_THREADS, when set, wins.
    """
    import ctypes
    if os.environ.get("OPENBLAS_NUM_THREADS"):
        return False
    for path in openblas_libraries():
        lib = ctypes.CDLL(path)
        for name in ("openblas_set_num_threads", "scipy_openblas_set_num_threads64_",
                     "scipy_openblas_set_num_threads", "openblas_set_num_threads64_"):
            setter = getattr(lib, name, None)
            if setter is not None:
                setter(int(n))
                return True
    return False


def keep_freed_memory():
    """Let glibc keep freed memory for reuse instead of handing it back to the OS.

    A training step allocates and frees the same few megabyte-sized buffers
    every time. By default glibc returns such blocks to the kernel (``mmap``
    above a threshold, heap trimming below it), so every step pays for fresh
    zeroed pages on first touch: measured here, that made a softmax
    cross-entropy forward+backward 3.6x slower and an LSTM training step 13%
    slower. This raises both thresholds (the process keeps up to 1 GiB of
    freed heap); the effect is what PyTorch's caching allocator gives on the
    GPU. Called once at import on Linux with glibc; set the environment
    variable ``TINYGRAPH_SYSTEM_MALLOC=1`` to leave the allocator alone.
    Returns True when the setting was applied.
    """
    import ctypes
    import platform
    if os.environ.get("TINYGRAPH_SYSTEM_MALLOC") or platform.system() != "Linux":
        return False
    if platform.libc_ver()[0] != "glibc":
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return False
    M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
    ok = libc.mallopt(M_MMAP_THRESHOLD, 32 * 1024 * 1024)   # glibc's upper limit on 64-bit
    ok = libc.mallopt(M_TRIM_THRESHOLD, 1024 * 1024 * 1024) and ok
    return bool(ok)
