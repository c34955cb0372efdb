"""Turn a view (a networkx graph from tinygraph.folding) into a graphviz.Digraph.

DOT names are ``n0, n1, ...`` in the view's node order (topological for
recorded views), so the same recording always gives the same DOT text.
Time-step clusters are named ``cluster_t<step>``; Graphviz draws a subgraph
as a box only when its name starts with ``cluster``.
"""
from __future__ import annotations

import graphviz

from . import labels as L

__all__ = ["to_digraph", "delay_tooltip"]


def delay_tooltip(d) -> str:
    if d == 1:
        return "delay of one time step"
    if d == -1:
        return "delay of one time step, backward in time (step t+1 feeds step t)"
    return f"delay of {d} time steps"


class _Context:
    """What a node's label and colour depend on besides the view itself."""

    def __init__(self, lookup, detail, outputs, show_shapes, show_values, show_grads,
                 highlight, processed, grads, time_suffix):
        self.lookup = lookup
        self.detail = detail
        self.outputs = outputs
        self.show_shapes, self.show_values, self.show_grads = show_shapes, show_values, show_grads
        self.highlight = set(highlight or ())
        self.processed = set(processed or ())
        self.grads = grads
        self.time_suffix = time_suffix

    def value_of(self, reps):
        for r in reversed(reps):
            n = self.lookup.get(r)
            t = n.tensor if n is not None else None
            if t is not None:
                return t.data
        return None

    def grad_of(self, reps):
        """(grad, step) of the latest step that has one; ``grads`` wins over ``.grad``."""
        for r in reversed(reps):
            n = self.lookup.get(r)
            if self.grads is not None and r in self.grads:
                return self.grads[r], (n.timestep if n is not None else None)
            if self.grads is None and n is not None:
                t = n.tensor
                if t is not None and t.grad is not None:
                    return t.grad, n.timestep
        return None, None


def _style_key(v, a, ctx):
    kind = a["kind"]
    if kind != "op":
        return kind
    # backward first: a parameter gradient dL/dW is an output of a backward drawing, but it
    # is drawn purple with the rest of the backward graph (the legend and docs say so)
    if a.get("backward"):
        return "backward"
    if ctx.outputs.intersection(a.get("reps", ())):
        return "output"
    return "variable" if a.get("name") else "op"


def _node_attrs(v, a, ctx, multi_step):
    kind = a["kind"]
    attrs = dict(L.STYLE[_style_key(v, a, ctx)])
    reps = a.get("reps", ())
    if kind == "delay":
        attrs["tooltip"] = L.dot_text(delay_tooltip(a.get("delay", 1)))
        d = a.get("delay", 1)
        if d != 1:
            attrs["xlabel"] = f"{d:+d}"  # e.g. -1: the reverse direction of a bidirectional layer
        return attrs
    if kind == "elided":
        attrs["label"] = L.dot_text(a["label"])
        first, last = a.get("elided", (None, None))
        attrs["tooltip"] = L.dot_text(f"time steps {first} to {last} are not drawn")
        return attrs
    grad, step = ctx.grad_of(reps) if ctx.show_grads else (None, None)
    attrs["label"] = L.node_label(
        a, detail=ctx.detail, time_suffix=ctx.time_suffix, show_shapes=ctx.show_shapes,
        value=ctx.value_of(reps) if ctx.show_values else None, show_value=ctx.show_values,
        grad=grad, show_grad=ctx.show_grads, grad_step=step if multi_step(a) else None)
    tip = [f"op: {a.get('op')}", f"scope: {a.get('scope') or '<top>'}"]
    if a.get("timesteps"):
        tip.append(f"steps: {len(a['timesteps'])}")
    attrs["tooltip"] = L.dot_text("; ".join(tip))  # scopes are user text too
    members = set(a.get("members", ()))
    if members & ctx.processed:
        attrs.update(L.PROCESSED)
    if members & ctx.highlight:
        attrs.update(L.HIGHLIGHT)
    return attrs


def _edge_attrs(view, u, v, e, show_labels=True):
    su, sv = view.nodes[u], view.nodes[v]
    attrs = {}
    params = e.get("params", ())
    if su["kind"] == "param":
        attrs.update(L.EDGE_STYLE["param"])
    elif e.get("delay") or su["kind"] == "delay" or sv["kind"] == "delay":
        attrs.update(L.EDGE_STYLE["state"])
    elif su.get("backward") or sv.get("backward"):
        attrs.update(L.EDGE_STYLE["backward"])
    if params and show_labels:
        attrs["label"] = L.dot_text(", ".join(params))  # parameter names are user text
    if sv["kind"] == "delay":
        attrs.pop("label", None)  # the label sits on the delay's outgoing edge
        attrs["arrowhead"] = "none"
    return attrs


def to_digraph(view, *, lookup, title="tinygraph", rankdir="TB", clusters=False,
               detail="ops", outputs=(), show_shapes=True, show_values=False, show_grads=False,
               highlight=None, processed=None, grads=None, time_suffix=True, notes=(),
               legend=False, edge_labels=True, rows=None):
    """The DOT diagram of ``view``; ``lookup`` maps recorded node ids to Nodes."""
    ctx = _Context(lookup, detail, set(outputs), show_shapes, show_values, show_grads,
                   highlight, processed, grads, time_suffix)
    dot = graphviz.Digraph(name=_graph_name(title))
    dot.attr(rankdir=rankdir, fontname="Helvetica", fontsize="12", newrank="true")
    if rows:
        # little crossing minimisation keeps the steps in the order they are written: time
        dot.attr(mclimit="0.1")
    dot.attr("node", fontname="Helvetica", fontsize="11")
    dot.attr("edge", fontname="Helvetica", fontsize="10")
    if notes:
        dot.attr(label=L.dot_lines(notes), labelloc="t", labeljust="l")
    names = {v: f"n{k}" for k, v in enumerate(view.nodes)}
    multi_step = (lambda a: bool(a.get("timesteps")))
    # cluster sort key -> (cluster name, label, members); steps and gaps in time order
    by_cluster: dict = {}
    steps = {a.get("timestep") for _, a in view.nodes(data=True)}
    for v, a in view.nodes(data=True):
        t = a.get("timestep")
        if clusters and (t is not None or a["kind"] == "elided"):
            if a["kind"] == "elided":
                # Graphviz will not keep a separate gap box between the step boxes, so
                # the marker opens the box of the first step after the gap
                after = a["elided"][1] + 1
                box = (f"cluster_t{after}", f"t = {after}") if after in steps else \
                    (f"cluster_gap{v[1]}", "")
                by_cluster.setdefault((after, 1), box + ([],))[2].append(v)
            else:
                by_cluster.setdefault((t, 1), (f"cluster_t{t}", f"t = {t}", []))[2].append(v)
        else:
            dot.node(names[v], **_node_attrs(v, a, ctx, multi_step))
    for key in sorted(by_cluster):
        name, label, members = by_cluster[key]
        with dot.subgraph(name=name) as sub:
            sub.attr(label=L.dot_text(label), style="rounded" if label else "dashed",
                     color="#adb5bd", fontcolor="#495057")
            for v in members:
                sub.node(names[v], **_node_attrs(v, view.nodes[v], ctx, multi_step))
    row_of = {v: k for k, row in enumerate(rows or ()) for v in row}
    for u, v, e in view.edges(data=True):
        attrs = _edge_attrs(view, u, v, e, edge_labels)
        if rows and (e.get("delay") or "elided" in (view.nodes[u]["kind"], view.nodes[v]["kind"])):
            attrs["constraint"] = "false"  # the rows below fix where each step sits
        if u in row_of and row_of.get(u) == row_of.get(v) and "label" in attrs:
            # an edge inside one row is flat (same rank); the system dot gives a flat edge's
            # label a rank of its own and crashes ("trouble in init_rank") with clusters
            attrs["xlabel"] = attrs.pop("label")
        dot.edge(names[u], names[v], **attrs)
    for row in rows or ():
        # one rank per circuit node; invisible edges keep its copies in time order.
        # No invisible edge beside a drawn one between the same two copies (c(t-1) -> c(t),
        # a collapsed cell feeding itself): parallel flat edges crash the system dot
        # ("trouble in init_rank", "merge_chain: Assertion") on larger graphs.
        with dot.subgraph() as same:
            same.attr(rank="same")
            for v in row:
                same.node(names[v])
        for u, v in zip(row, row[1:]):
            if not (view.has_edge(u, v) or view.has_edge(v, u)):
                dot.edge(names[u], names[v], style="invis")
    if legend:
        _add_legend(dot)
    return dot


def _graph_name(title) -> str:
    """The DOT graph name for ``title``: quoted text, never an HTML-like ``<...>`` id."""
    # a graph name is no escString: only a doubled backslash keeps it valid (odd ones at the
    # end would escape the closing quote); it shows doubled in the SVG <title>
    return graphviz.nohtml(str(title).replace(" ", "_").replace("\\", "\\\\"))


def _add_legend(dot):
    """A boxed key: one sample node per kind, stacked (invisible edges keep them in a column)."""
    with dot.subgraph(name="cluster_legend") as sub:
        sub.attr(label="legend", style="dashed", color="#adb5bd")
        previous = None
        for k, (kind, text) in enumerate(L.LEGEND):
            attrs = dict(L.STYLE[kind])
            name = f"legend{k}"
            if kind == "delay":
                sub.node(name, **attrs)
                with sub.subgraph() as row:
                    row.attr(rank="same")
                    row.node(name)
                    row.node(f"{name}_text", label=L.dot_text(text), shape="plaintext")
                sub.edge(name, f"{name}_text", style="invis")
            else:
                attrs["label"] = L.dot_text(text)
                sub.node(name, **attrs)
            if previous is not None:
                sub.edge(previous, name, style="invis")
            previous = name
