"""Atomic file writes: readers see the old file or the new one, never half of one.

``atomic_write(path, write_fn)`` calls ``write_fn(f)`` on a temporary file in
the same folder (same file system, so the rename is atomic), optionally
fsyncs it, and renames it over ``path`` with ``os.replace``. On any error the
temporary file is removed and ``path`` is left untouched.

The new file gets the permissions a plain ``open(path, "w")`` would give it:
0o666 minus the umask (0o644 with the usual umask 022) for a new file, and
the old file's permission bits when it replaces one.
"""
from __future__ import annotations

import os
import secrets
import stat

__all__ = ["atomic_write", "atomic_write_bytes", "atomic_write_text"]


def _create_temporary(folder, name):
    """Open a fresh file next to the target; the kernel applies the umask to 0o666."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0)
    for _ in range(100):
        tmp = os.path.join(folder, f".{name}.{secrets.token_hex(6)}.tmp")
        try:
            return os.open(tmp, flags, 0o666), tmp
        except FileExistsError:
            continue
    raise FileExistsError(f"atomic_write: could not create a temporary file in {folder!r}")


def atomic_write(path, write_fn, mode="wb", *, encoding=None, fsync=True):
    """Write ``path`` atomically by calling ``write_fn(f)`` on a temporary file.

    ``mode`` is "wb" (bytes) or "w" (text, ``encoding`` defaults to UTF-8).
    ``fsync=True`` flushes the data (and the folder entry, where the OS allows)
    to disk before returning, so the new file survives a power cut. Returns
    ``path``.
    """
    if mode not in ("w", "wb"):
        raise ValueError(f"atomic_write: mode must be 'w' or 'wb', got {mode!r}")
    # through a symlink to its target, as open(path, "w") writes (the link itself stays)
    given = os.fspath(path)
    path = os.path.realpath(given)
    folder = os.path.dirname(path)
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"cannot write {path!r}: its folder {folder!r} does not exist")
    fd, tmp = _create_temporary(folder, os.path.basename(path))
    try:
        if mode == "w":
            f = os.fdopen(fd, "w", encoding=encoding or "utf-8")
        else:
            f = os.fdopen(fd, "wb")
        with f:
            write_fn(f)
            f.flush()
            if fsync:
                os.fsync(f.fileno())
        try:
            os.chmod(tmp, stat.S_IMODE(os.stat(path).st_mode))  # replacing a file keeps its mode
        except FileNotFoundError:
            pass
        os.replace(tmp, path)
    except BaseException:
        try:
            os.remove(tmp)
        except FileNotFoundError:
            pass
        raise
    if fsync:
        _fsync_folder(folder)
    return given


def _fsync_folder(folder):
    """Make the rename itself durable (POSIX); a no-op where folders cannot be opened."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write_bytes(path, data, *, fsync=True):
    """Write ``data`` (bytes) to ``path`` atomically."""
    return atomic_write(path, lambda f: f.write(data), "wb", fsync=fsync)


def atomic_write_text(path, text, *, encoding="utf-8", fsync=True):
    """Write ``text`` to ``path`` atomically."""
    return atomic_write(path, lambda f: f.write(text), "w", encoding=encoding, fsync=fsync)
