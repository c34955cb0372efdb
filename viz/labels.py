"""Node labels and the colour legend shared by every diagram.

Labels are plain text (lines joined by DOT's ``\\n`` escape), never HTML-like, so the
system Graphviz and graphviz-pure render them the same. User text (names, scopes)
goes through :func:`dot_text` / :func:`dot_lines`, so it is always drawn literally.
"""
from __future__ import annotations

import re

import graphviz
import numpy as np

__all__ = ["STYLE", "LEGEND", "shape_text", "array_summary", "grad_summary", "node_label",
           "dot_text", "dot_lines"]

# kind -> Graphviz node attributes. The legend in docs/diagrams.md mirrors this.
STYLE = {
    "param": dict(shape="box", style="filled", fillcolor="#ffd8a8", color="#e8590c"),
    "data": dict(shape="box", style="rounded,filled", fillcolor="#d0ebff", color="#1c7ed6"),
    "op": dict(shape="ellipse", style="filled", fillcolor="#f1f3f5", color="#495057"),
    "variable": dict(shape="ellipse", style="filled", fillcolor="#ffffff", color="#212529"),
    "output": dict(shape="ellipse", style="filled", fillcolor="#ffc9c9", color="#c92a2a",
                   peripheries="2"),
    "backward": dict(shape="ellipse", style="filled", fillcolor="#e5dbff", color="#7048e8"),
    "group": dict(shape="box3d", style="filled", fillcolor="#e9ecef", color="#495057"),
    "delay": dict(shape="square", style="filled", fillcolor="black", color="black",
                  width="0.2", height="0.2", fixedsize="true", label=""),
    "elided": dict(shape="plaintext", fontcolor="#495057"),
    "note": dict(shape="note", style="filled", fillcolor="#fff3bf", color="#f08c00"),
}
HIGHLIGHT = dict(color="#e03131", penwidth="3")
PROCESSED = dict(fillcolor="#b2f2bb")
EDGE_STYLE = {
    "param": dict(color="#e8590c", fontcolor="#e8590c"),
    "state": dict(color="#1c7ed6", penwidth="2"),
    "backward": dict(color="#7048e8", style="dashed"),
}

LEGEND = [
    ("param", "parameter (leaf that learns): U, V, W, b, c"),
    ("data", "data / constant leaf: x(t), y(t), h0"),
    ("variable", "named variable: a, h, o, gates"),
    ("op", "unnamed primitive op"),
    ("output", "output of the forward graph: the loss L"),
    ("backward", "recorded by backward(create_graph=True), gradients dL/dW too"),
    ("group", "collapsed scope (collapse=)"),
    ("delay", "delay of one time step"),
]


_NEWLINE = re.compile(r"\r\n|\r|\n")


def _escape(text) -> str:
    """One line of user text as the inside of a DOT escString that draws it literally."""
    # a lone backslash would start a DOT escape (\l, \N, ...) or, last, swallow the quote
    text = str(text).replace("\\", "\\\\")
    # Graphviz decodes entities (&amp; -> &) in plain labels and tooltips too
    text = text.replace("&", "&amp;")
    # a real newline becomes DOT's line break, so every statement stays on one line
    return "\\n".join(_NEWLINE.split(text))


def dot_text(text) -> str:
    """``text`` for a DOT label, tooltip or name: literal, never an HTML-like ``<...>`` label."""
    return graphviz.nohtml(_escape(text))


def dot_lines(lines) -> str:
    """Lines of user text joined by DOT's own line break escape (``\\n``)."""
    return graphviz.nohtml("\\n".join(_escape(line) for line in lines))


def shape_text(shape) -> str:
    return "x".join(str(s) for s in shape) if shape else "scalar"


def _fmt(x) -> str:
    return f"{x:.3g}"


def array_summary(array) -> str:
    """A short, plain text summary of an array's values."""
    a = np.asarray(_host(array), dtype=float)
    if a.size == 0:
        return "empty"
    if a.size <= 3:
        return "[" + ", ".join(_fmt(v) for v in a.ravel()) + "]"
    return f"mean {_fmt(a.mean())}, std {_fmt(a.std())}"


def grad_summary(grad) -> str:
    """'grad: ...', or 'grad: not computed' when there is none (never a fake 0)."""
    if grad is None:
        return "grad: not computed"
    data = getattr(grad, "data", grad)
    a = np.asarray(_host(data), dtype=float)
    return f"grad: |g| {_fmt(float(np.sqrt((a * a).sum())))}, " + array_summary(a)


def _host(array):
    get = getattr(array, "get", None)  # CuPy arrays copy to the host with .get()
    return get() if callable(get) and not isinstance(array, np.ndarray) else array


def node_label(attrs, *, detail, time_suffix=True, show_shapes=True, value=None,
               show_value=False, grad=None, show_grad=False, grad_step=None) -> str:
    """The text inside one node."""
    kind = attrs["kind"]
    name, op = attrs.get("name"), attrs.get("op")
    t = attrs.get("timestep")
    title = attrs.get("label") or name or op
    if (time_suffix and t is not None and (name or kind == "data")
            and not title[-1:].isdigit()):
        title = f"{title}({t})"
    if attrs.get("qualifier"):
        title = f"{title} [{attrs['qualifier']}]"
    lines = [title]
    if kind == "op" and detail == "ops" and name and op != name:
        lines.append(op)
    if kind == "group":
        lines.append(f"{attrs.get('collapsed', 0)} ops collapsed")
    if show_shapes and kind not in ("group", "elided") and attrs.get("shape") is not None:
        lines.append(shape_text(attrs["shape"]))
    if show_value and kind not in ("group", "elided"):
        lines.append("value: " + (array_summary(value) if value is not None else "not kept"))
    if show_grad and kind not in ("elided",):
        text = grad_summary(grad)
        if grad is not None and grad_step is not None:
            text = text.replace("grad:", f"grad (t={grad_step}):", 1)
        lines.append(text)
    return dot_lines(lines)
