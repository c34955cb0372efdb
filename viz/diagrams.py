"""The three public diagrams: the recorded graph, the unfolded graph and the folded circuit.

All three take the same keyword contract, which the backprop stepper relies
on for its per-step pictures:

* ``highlight``: recorded node ids drawn as the current node (red outline);
* ``processed``: recorded node ids coloured as done (green);
* ``grads``: ``{node id: array}`` used for gradient summaries (otherwise the
  live ``.grad`` of each tensor; "grad: not computed" when there is none).

In the variables view and the circuit a drawn node stands for several
recorded nodes (the contracted op chain, every time step); an id is mapped
onto every drawn node that stands for it.
"""
from __future__ import annotations

import warnings

from tinygraph import folding
from tinygraph.graph import Graph

from . import render
from .dot import to_digraph

__all__ = ["draw_graph", "draw_unfolded", "draw_circuit", "to_networkx", "unfolded_networkx",
           "folded_networkx",
           "DEFAULT_MAX_NODES"]

DEFAULT_MAX_NODES = 300


def _gradient_names(leaves, forward):
    """The parameters' names for their gradients' labels; two alike (a bidirectional layer's two U)
    say where each is used, as the stepper's leaf sums do: ``U [forward]``, ``U [backward]``."""
    from tinygraph.folding import _common_scope
    from tinygraph.stepper import qualify_clashes

    consumers = {}
    for node in forward.nodes:
        for inp in node.inputs:
            consumers.setdefault(inp.id, []).append(node)
    return qualify_clashes([leaf.name or "param" for leaf in leaves],
                           lambda k: _common_scope([c.scope for c in consumers.get(leaves[k].id, ()) if c.scope]))


class _Recording:
    """The graph to draw, plus what labels need (node lookup, outputs, renamed nodes)."""

    def __init__(self, tensors, backward=False):
        if not tensors:
            raise ValueError("draw: pass at least one Tensor (e.g. the loss) to draw its graph")
        forward = Graph.from_outputs(*tensors)
        if not forward.nodes:
            raise ValueError(
                "draw: these tensors have no recorded graph; build them from tensors with "
                "requires_grad=True (parameters) outside tg.no_grad()")
        self.outputs = {n.id for n in forward.outputs}
        self.renamed = {}
        self.keep_alive = []
        roots = list(forward.outputs)
        if backward:
            grads = self._backward_roots(forward, tensors)
            roots += [g._node for g in grads]
        self.graph = Graph(forward.nodes, roots) if not backward else Graph.from_outputs(*roots)
        self.lookup = {n.id: n for n in self.graph.nodes}

    def _backward_roots(self, forward, tensors):
        """Gradient tensors recorded by create_graph=True (recording them if needed)."""
        leaves = [n for n in forward.nodes if n.is_leaf and n.requires_grad and n.tensor is not None]
        recorded = [(n, n.tensor.grad) for n in leaves
                    if n.tensor.grad is not None and n.tensor.grad._node is not None
                    and not n.tensor.grad._node.is_leaf]
        if not recorded:
            import tinygraph as tg
            scalars = [t for t in tensors if getattr(t, "size", 0) == 1 and t.requires_grad]
            if not scalars:
                raise ValueError("draw(backward=True): pass a scalar output (the loss) to differentiate")
            try:
                grads = tg.grad(scalars[0], [n.tensor for n in leaves], create_graph=True,
                                allow_unused=True)
            except RuntimeError as exc:
                if "already freed" not in str(exc):   # e.g. a fused first-order kernel: say what it said
                    raise RuntimeError(f"draw(backward=True): cannot record the backward graph: {exc}") from exc
                raise RuntimeError(
                    "draw(backward=True): cannot record the backward graph because the forward "
                    "graph was freed by an earlier backward(). Draw before calling backward(), or "
                    "call loss.backward(create_graph=True) and draw afterwards") from exc
            recorded = [(n, g) for n, g in zip(leaves, grads) if g is not None]
        out = []
        recorded = [(leaf, g) for leaf, g in recorded if g._node is not None]
        names = _gradient_names([leaf for leaf, _ in recorded], forward)
        for (leaf, g), name in zip(recorded, names):
            self.renamed[g._node.id] = f"dL/d{name}"
            self.outputs.add(g._node.id)
            out.append(g)
        self.keep_alive = out
        return out

    def view(self, detail, steps=None):
        view = folding.view_of(self.graph, detail, keep=self.renamed, steps=steps)
        for node_id, label in self.renamed.items():
            if node_id in view:
                view.nodes[node_id]["label"] = label
                if detail == "variables":
                    # dL/dW sums every step's contribution: drawn outside the steps, like the
                    # total loss L, not at the step its last partial sum was recorded in
                    # (which drew an edge of delay -1, -2, -3 ... from every later step)
                    view.nodes[node_id]["timestep"] = None
                    for _, _, e in view.in_edges(node_id, data=True):
                        e["delay"] = 0
        if detail == "variables":
            label_backward_direction(view)
        folding.label_initial_states(view)
        qualify_clashing_labels(view)
        return view


def _forward_scope(scope):
    """``backward(LSTM.layer0.forward)`` -> ``LSTM.layer0.forward``."""
    while scope.startswith("backward(") and scope.endswith(")"):
        scope = scope[len("backward("):-1]
    return scope


def _owner_scope(view, v, a):
    """The scope a node belongs to; a parameter (no scope) belongs where it is used."""
    if a["kind"] != "param":
        return a.get("scope") or ""
    users = {_forward_scope(view.nodes[w].get("scope") or "") for w in view.successors(v)}
    users.discard("")
    return folding._common_scope(sorted(users)) if users else ""


def label_backward_direction(view):
    """The reverse direction's hidden state ``h`` is the textbook's ``g`` (variables detail).

    A bidirectional layer runs ``h(t) = f(h(t-1), x(t))`` forward and
    ``g(t) = f(g(t+1), x(t))`` backward in time; both record the name ``h``.
    Skipped when the view already has a ``g`` (the LSTM's gate).
    """
    if any(a.get("name") == "g" for _, a in view.nodes(data=True)):
        return view
    for _, a in view.nodes(data=True):
        scope = a.get("scope") or ""
        if (a.get("name") == "h" and a["kind"] == "op" and not a.get("backward")
                and scope.rpartition(".")[2] == "backward"):
            a["label"] = "g"
    return view


def qualify_clashing_labels(view):
    """Add the differing scope part to labels shared by nodes of different scopes.

    A bidirectional layer names both pre-activations ``a``; drawn as ``a [forward]``
    and ``a [backward]`` (a 2-layer stack: ``h [layer0]``, ``h [layer1]``).
    Parameters have no scope of their own: they take the common scope of the
    nodes they feed, so each direction's weights read ``W [forward]``, ``W [backward]``.
    """
    scopes_by_label: dict = {}
    owners = {}

    def named(a):  # unnamed ops are labelled by their op: clashes there say nothing
        return a["kind"] in ("op", "data", "param") and (a.get("name") or a.get("initial_of"))

    for v, a in view.nodes(data=True):
        if named(a):
            owners[v] = _owner_scope(view, v, a)
            if owners[v]:
                scopes_by_label.setdefault((a["kind"] == "param", a["label"]), set()).add(owners[v])
    for v, a in view.nodes(data=True):
        scopes = scopes_by_label.get((a["kind"] == "param", a["label"]), ())
        if not named(a) or not owners.get(v) or len(scopes) < 2:
            continue
        split = [sc.split(".") for sc in sorted(scopes)]
        mine = owners[v].split(".")
        differing = [part for k, part in enumerate(mine)
                     if any(len(o) <= k or o[k] != part for o in split)]
        if differing:
            a["qualifier"] = ".".join(differing)


def _draw(view, rec, *, title, detail, notes, rankdir, clusters, time_suffix, show_shapes,
          show_values, show_grads, highlight, processed, grads, legend, rows=None):
    render.use_graphviz_pure()  # so .render() and notebook display work without a system dot
    return to_digraph(
        view, lookup=rec.lookup, title=title, rankdir=rankdir, clusters=clusters,
        detail=detail, outputs=rec.outputs, show_shapes=show_shapes, show_values=show_values,
        show_grads=show_grads, highlight=highlight, processed=processed, grads=grads,
        time_suffix=time_suffix, notes=notes, legend=legend, rows=rows)


def _fit(view, max_nodes, notes, steps_first=True):
    """Elide steps, then collapse scopes, then cut, until ``view`` has at most max_nodes nodes."""
    if max_nodes is None or view.number_of_nodes() <= max_nodes:
        return view
    steps = sorted({a["timestep"] for _, a in view.nodes(data=True) if a["timestep"] is not None})
    if steps_first and len(steps) > 2:
        per_step = sum(1 for _, a in view.nodes(data=True) if a["timestep"] is not None) / len(steps)
        outside = view.number_of_nodes() - per_step * len(steps)
        shown = folding.choose_steps(steps, node_budget=int(max(0, max_nodes - outside - 2)),
                                     nodes_per_step=max(1, round(per_step)))
        if len(shown) < len(steps):
            view = folding.elide_steps(view, shown)
            notes.append(f"showing {len(shown)} of {len(steps)} time steps (the rest elided)")
    depth = max((len(a["scope"].split(".")) for _, a in view.nodes(data=True) if a["scope"]),
                default=0)
    while view.number_of_nodes() > max_nodes and depth > 0:
        view = folding.collapse_scopes(view, depth, strict=False)
        notes.append(f"scopes collapsed to depth {depth} to fit {max_nodes} nodes")
        depth -= 1
    if view.number_of_nodes() > max_nodes:
        total = view.number_of_nodes()
        keep = list(view.nodes)[-max_nodes:]  # the nodes nearest the outputs
        view = view.subgraph(keep).copy()
        notes.append(f"{total - max_nodes} of {total} nodes not drawn (max_nodes={max_nodes})")
    return view


def _steps_to_show(graph, detail, steps, max_nodes):
    """The steps to draw (None: all), from the recording alone so hidden steps cost nothing."""
    all_steps = graph.timesteps
    if steps is not None:
        folding.choose_steps(all_steps, steps)  # a bad request is an error, even with no steps
    if not all_steps:
        return None
    if steps is None:
        if max_nodes is None:
            return None
        if detail == "variables":
            drawn = [n for n in graph.nodes if n.is_leaf or n.name]
        else:
            drawn = graph.nodes
        in_steps = sum(1 for n in drawn if n.timestep is not None)
        outside = (len(drawn) - in_steps) if detail == "ops" else \
            sum(1 for n in drawn if n.timestep is None)
        per_step = max(1, round(in_steps / len(all_steps)))
        if in_steps + outside <= max_nodes:
            return None
        shown = folding.choose_steps(all_steps, node_budget=max(0, max_nodes - outside - 2),
                                     nodes_per_step=per_step)
    else:
        shown = folding.choose_steps(all_steps, steps)
    return shown if len(shown) < len(all_steps) else None


def _time_rows(view):
    """Copies of one circuit node across steps, in time order."""
    keys = folding._fold_keys(view)
    rows: dict = {}
    for v, a in view.nodes(data=True):
        if a["timestep"] is not None and v in keys:
            rows.setdefault(keys[v], []).append((a["timestep"], v))
    return [[v for _, v in sorted(row)] for row in rows.values() if len(row) > 1]


def draw_graph(*tensors, detail="ops", backward=False, show_shapes=True, show_values=False,
               show_grads=False, collapse=None, highlight=None, processed=None, grads=None,
               max_nodes=DEFAULT_MAX_NODES, legend=False, title="graph"):
    """The recorded graph as it is (``backward=True`` adds the recorded backward graph)."""
    rec = _Recording(tensors, backward)
    view = folding.collapse_scopes(rec.view(detail), collapse)
    notes = []
    view = _fit(view, max_nodes, notes)
    return _draw(view, rec, title=title, detail=detail, notes=notes, rankdir="TB",
                 clusters=False, time_suffix=True, show_shapes=show_shapes,
                 show_values=show_values, show_grads=show_grads, highlight=highlight,
                 processed=processed, grads=grads, legend=legend)


def _fused_notes(graph):
    """A note (and a warning) when fused sequence kernels hide the time steps.

    A layer built with ``fused=True`` records each layer and direction as one
    ``*_sequence`` node, so there is nothing per step to unfold or fold.
    """
    fused = sorted({n.op for n in graph.nodes if n.op.endswith("_sequence")})
    if not fused:
        return []
    note = (f"{', '.join(fused)}: whole sequences in one fused node; record inside "
            "tinygraph.models.decomposed() to see every step and gate")
    warnings.warn(f"draw: {note}", UserWarning, stacklevel=3)
    return [note]


def draw_unfolded(*tensors, detail="variables", steps=None, backward=False, show_shapes=True,
                  show_values=False, show_grads=False, collapse=None, highlight=None,
                  processed=None, grads=None, max_nodes=DEFAULT_MAX_NODES, legend=False,
                  title="unfolded"):
    """The graph unfolded in time: one cluster per step, left to right; parameters once.

    ``steps``: an int (show at most that many steps: the first and last few),
    an iterable of step indices, or None (as many as ``max_nodes`` allows).
    Hidden steps become one "... n steps ..." node per gap.
    """
    rec = _Recording(tensors, backward)
    notes = _fused_notes(rec.graph)
    shown = _steps_to_show(rec.graph, detail, steps, max_nodes)
    view = rec.view(detail, steps=shown)
    if shown is not None:
        notes.append(f"showing {len(shown)} of {len(rec.graph.timesteps)} time steps "
                     "(the rest elided)")
    view = folding.collapse_scopes(view, collapse)
    view = _fit(view, max_nodes, notes)
    return _draw(view, rec, title=title, detail=detail, notes=notes, rankdir="BT",
                 clusters=True, time_suffix=True, show_shapes=show_shapes,
                 show_values=show_values, show_grads=show_grads, highlight=highlight,
                 processed=processed, grads=grads, legend=legend, rows=_time_rows(view))


def draw_circuit(*tensors, detail="variables", backward=False, show_shapes=True,
                 show_values=False, show_grads=False, collapse=None, highlight=None,
                 processed=None, grads=None, max_nodes=DEFAULT_MAX_NODES, legend=False,
                 title="circuit"):
    """The folded circuit: the cell once, edges across steps looped through delay squares."""
    rec = _Recording(tensors, backward)
    view = folding.fold(rec.view(detail))
    view = folding.collapse_scopes(view, collapse)
    notes = _fused_notes(rec.graph)
    view = _fit(view, max_nodes, notes, steps_first=False)
    return _draw(view, rec, title=title, detail=detail, notes=notes, rankdir="BT",
                 clusters=False, time_suffix=False, show_shapes=show_shapes,
                 show_values=show_values, show_grads=show_grads, highlight=highlight,
                 processed=processed, grads=grads, legend=legend)


def to_networkx(*tensors, view="unfolded", detail="ops", backward=False):
    """The recorded graph as a networkx DiGraph, for other tools.

    ``view="unfolded"``: every step (acyclic; node keys are recorded node ids).
    ``view="folded"`` (or ``"circuit"``): the circuit, cyclic through its delay
    nodes (``kind="delay"``, ``delay=`` the step offset); backward never runs on it.
    ``detail``: ``"ops"`` (every primitive) or ``"variables"`` (the textbook view).
    """
    if view == "unfolded":
        return unfolded_networkx(*tensors, detail=detail, backward=backward)
    if view in ("folded", "circuit"):
        return folded_networkx(*tensors, detail=detail, backward=backward)
    raise ValueError(f"to_networkx: view must be 'unfolded' or 'folded', got {view!r}")


def unfolded_networkx(*tensors, detail="ops", backward=False):
    """The unfolded view as a networkx DiGraph (acyclic; node keys are recorded node ids)."""
    return _Recording(tensors, backward).view(detail)


def folded_networkx(*tensors, detail="ops", backward=False):
    """The folded circuit as a networkx DiGraph (cyclic through its delay nodes)."""
    return folding.fold(_Recording(tensors, backward).view(detail))
