"""Render diagrams to files: system Graphviz, else graphviz-pure, else a clear error.

Building DOT text needs nothing native. Rendering runs a Graphviz program on
the DOT source with a timeout (so a huge diagram cannot hang the caller):
first the system ``dot``, then ``graphviz-pure`` (the pip-installable port of
Graphviz, same command line). When neither exists, :func:`save` still writes
the ``.gv`` file and raises :class:`RenderError` saying what to install.
Files are written atomically (temporary file, then rename).
"""
from __future__ import annotations

import os
import shutil
import subprocess

from tinygraph.fileio import atomic_write_bytes

__all__ = ["save", "render", "render_svg", "find_renderer", "use_graphviz_pure",
           "RenderError", "FORMATS", "INSTALL_HINT"]

FORMATS = {".svg": "svg", ".png": "png", ".pdf": "pdf", ".dot": "dot", ".gv": "dot"}
RENDERERS = ("dot", "graphviz-pure")
DEFAULT_TIMEOUT_S = 60
INSTALL_HINT = (
    "install Graphviz: `pip install graphviz-pure` (self-contained, no system packages; "
    "also part of `pip install tinygraph[viz]`) or the system package "
    "(`apt-get install graphviz` / `brew install graphviz`)"
)


class RenderError(RuntimeError):
    """No Graphviz program is available, or it failed on this diagram."""


def find_renderer(prefer=None):
    """Path of the first available Graphviz program ("dot", then "graphviz-pure")."""
    names = (prefer,) if prefer else RENDERERS
    for name in names:
        path = shutil.which(name)
        if path:
            return path
    return None


def use_graphviz_pure():
    """Point the python ``graphviz`` package at graphviz-pure (for .render() and notebooks).

    Returns True when it did; a system ``dot`` is left alone.
    """
    if shutil.which("dot"):
        return False
    path = shutil.which("graphviz-pure")
    if not path:
        return False
    from graphviz.backend import dot_command
    dot_command.DOT_BINARY = type(dot_command.DOT_BINARY)(path)
    return True


def _source(diagram) -> str:
    return diagram if isinstance(diagram, str) else diagram.source


def render(diagram, fmt="svg", renderer=None, timeout=DEFAULT_TIMEOUT_S) -> bytes:
    """Run Graphviz on ``diagram`` (a Digraph or DOT text) and return the output bytes.

    ``renderer``: "dot", "graphviz-pure", or None (the first available).
    """
    source = _source(diagram)
    if fmt == "dot":
        return source.encode("utf-8")
    program = find_renderer(renderer)
    if program is None:
        wanted = renderer or " or ".join(RENDERERS)
        raise RenderError(f"cannot render {fmt}: no Graphviz program ({wanted}) found on PATH; "
                          + INSTALL_HINT)
    try:
        done = subprocess.run([program, f"-T{fmt}"], input=source.encode("utf-8"),
                              capture_output=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise RenderError(
            f"{os.path.basename(program)} took more than {timeout} s to lay out this diagram "
            "(too many nodes): draw fewer steps (steps=), collapse scopes (collapse=) or lower "
            "max_nodes") from None
    if done.returncode != 0:
        raise RenderError(f"{os.path.basename(program)} failed (exit {done.returncode}): "
                          + done.stderr.decode("utf-8", "replace").strip()[:2000])
    return done.stdout


def render_svg(diagram, renderer=None, timeout=DEFAULT_TIMEOUT_S) -> str:
    """The diagram as SVG text."""
    return render(diagram, "svg", renderer, timeout).decode("utf-8")


def _atomic_write(path, data: bytes):
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    atomic_write_bytes(path, data, fsync=False)


def save(diagram, path, renderer=None, timeout=DEFAULT_TIMEOUT_S):
    """Write ``diagram`` to ``path``; the suffix picks the format (.svg .png .pdf .dot .gv).

    Without any Graphviz program the DOT source is written next to ``path``
    (suffix ``.gv``) and :class:`RenderError` says what to install.
    Returns ``path``.
    """
    path = os.fspath(path)
    suffix = os.path.splitext(path)[1].lower()
    fmt = FORMATS.get(suffix)
    if fmt is None:
        raise ValueError(f"save: unknown file type {suffix!r} for {path!r}; use one of "
                         + ", ".join(sorted(FORMATS)))
    if fmt == "dot":
        _atomic_write(path, _source(diagram).encode("utf-8"))
        return path
    try:
        data = render(diagram, fmt, renderer, timeout)
    except RenderError as exc:
        if find_renderer(renderer) is None:
            fallback = os.path.splitext(path)[0] + ".gv"
            _atomic_write(fallback, _source(diagram).encode("utf-8"))
            raise RenderError(f"{exc}. The DOT source was written to {fallback}") from None
        raise
    _atomic_write(path, data)
    return path
