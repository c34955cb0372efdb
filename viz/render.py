"""Render diagrams to files: system Graphviz, else graphviz-pure, else a clear error.

Building DOT text needs nothing native. Rendering runs a Graphviz program on
the DOT source with a timeout (so a huge diagram cannot hang the caller):
first the system ``dot``, then ``graphviz-pure`` (the pip-installable port of
Graphviz, same command line), which is also tried when ``dot`` fails on a
diagram (its layout code has crash bugs on some large clustered graphs).
Errors quote only the first lines of the renderer's stderr. graphviz-pure
writes no PDF, so PDF needs the system ``dot``. When no program here can
write the format, :func:`save` still writes the ``.gv`` file and raises
:class:`RenderError` saying what to install.
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
SYSTEM_GRAPHVIZ = "the system package (`apt-get install graphviz` / `brew install graphviz`)"
INSTALL_HINT = (
    "install Graphviz: `pip install graphviz-pure` (self-contained, no system packages; "
    "also part of `pip install tinygraph[viz]`) or " + SYSTEM_GRAPHVIZ
)
# how to get each program on its own, for a renderer= that is missing
PROGRAM_HINTS = {"dot": "install " + SYSTEM_GRAPHVIZ, "graphviz-pure": "`pip install graphviz-pure`"}
# graphviz-pure's -T list has svg and png but no pdf
DOT_ONLY_FORMATS = {"pdf"}
FALLBACK_HINT = "; `pip install graphviz-pure` gives a second renderer to fall back on"


class RenderError(RuntimeError):
    """No Graphviz program is available, or it failed on this diagram."""


class _NoRenderer(RenderError):
    """No program here can write the format: save() then leaves the DOT source behind."""


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


def _first_lines(text: str, lines=2, chars=300) -> str:
    """The start of a renderer's stderr: dot can print hundreds of lines for one error."""
    kept = [line.strip() for line in text.strip().splitlines() if line.strip()]
    short = "; ".join(kept[:lines])[:chars]
    more = len(kept) - min(lines, len(kept))
    return short + (f" (+{more} more lines)" if more > 0 else "")


def _run(program, source, fmt, timeout):
    """(stdout, None) or (None, one-line reason) for one Graphviz program."""
    name = os.path.basename(program)
    try:
        done = subprocess.run([program, f"-T{fmt}"], input=source.encode("utf-8"),
                              capture_output=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise RenderError(
            f"{name} took more than {timeout} s to lay out this diagram "
            "(too many nodes): draw fewer steps (steps=), collapse scopes (collapse=) or lower "
            "max_nodes") from None
    if done.returncode != 0:
        stderr = _first_lines(done.stderr.decode("utf-8", "replace")) or "no message"
        return None, f"{name} failed (exit {done.returncode}): {stderr}"
    return done.stdout, None


def _is_pure(name):
    return os.path.basename(name) == "graphviz-pure"


def _programs(fmt, renderer):
    """(name, path) of each program to try for ``fmt``, in order."""
    names = (renderer,) if renderer else RENDERERS
    if fmt in DOT_ONLY_FORMATS:
        names = [name for name in names if not _is_pure(name)]
    found = [(name, find_renderer(name)) for name in names]
    return [(name, path) for name, path in found if path]


def _missing(fmt, renderer):
    """Why nothing can write ``fmt``, and what would help."""
    if fmt in DOT_ONLY_FORMATS:  # installing graphviz-pure would not help here
        return (f"cannot render {fmt}: {fmt.upper()} needs the system Graphviz's dot "
                f"(graphviz-pure writes svg and png only); install {SYSTEM_GRAPHVIZ}, or save as .svg or .png")
    if not renderer:
        return f"cannot render {fmt}: no Graphviz program ({' or '.join(RENDERERS)}) found on PATH; " + INSTALL_HINT
    others = [name for name in RENDERERS if name != renderer and find_renderer(name)]
    help_ = (f"{others[0]} is installed: pass renderer={others[0]!r} or leave renderer unset" if others
             else PROGRAM_HINTS.get(renderer, INSTALL_HINT))
    return f"cannot render {fmt}: {renderer} not found on PATH; {help_}"


def _fallback_hint(fmt, programs, renderer, failures):
    """Suggest graphviz-pure only where it would be a second chance: dot alone failed, and not on bad DOT."""
    if renderer or fmt in DOT_ONLY_FORMATS or len(programs) != 1 or programs[0][0] != "dot":
        return ""
    if "syntax error" in failures[0]:  # every renderer rejects malformed DOT the same way
        return ""
    return FALLBACK_HINT


def render(diagram, fmt="svg", renderer=None, timeout=DEFAULT_TIMEOUT_S) -> bytes:
    """Run Graphviz on ``diagram`` (a Digraph or DOT text) and return the output bytes.

    ``renderer``: "dot", "graphviz-pure", or None (the first available; when the
    system ``dot`` fails on a diagram, graphviz-pure is tried before giving up).
    PDF needs ``dot``: graphviz-pure cannot write it.
    """
    source = _source(diagram)
    if fmt == "dot":
        return source.encode("utf-8")
    programs = _programs(fmt, renderer)
    if not programs:
        raise _NoRenderer(_missing(fmt, renderer))
    failures = []
    for _, program in programs:
        output, failure = _run(program, source, fmt, timeout)
        if failure is None:
            return output
        failures.append(failure)
    raise RenderError("; then ".join(failures) + _fallback_hint(fmt, programs, renderer, failures))


def render_svg(diagram, renderer=None, timeout=DEFAULT_TIMEOUT_S) -> str:
    """The diagram as SVG text."""
    return render(diagram, "svg", renderer, timeout).decode("utf-8")


def _atomic_write(path, data: bytes):
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    atomic_write_bytes(path, data, fsync=False)


def save(diagram, path, renderer=None, timeout=DEFAULT_TIMEOUT_S):
    """Write ``diagram`` to ``path``; the suffix picks the format (.svg .png .pdf .dot .gv).

    When no Graphviz program here can write the format (none at all, or only
    graphviz-pure for ``.pdf``) the DOT source is written next to ``path``
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
    except _NoRenderer as exc:
        # the diagram is not lost: the .gv file renders later, once Graphviz is there
        fallback = os.path.splitext(path)[0] + ".gv"
        _atomic_write(fallback, _source(diagram).encode("utf-8"))
        raise RenderError(f"{exc}. The DOT source was written to {fallback}") from None
    _atomic_write(path, data)
    return path
