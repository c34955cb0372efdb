"""Fold and unfold a recorded graph: the data behind every diagram (no drawing here).

A *view* is a ``networkx.DiGraph`` whose nodes carry what a picture needs:

* ``kind``: ``"param"`` (leaf that requires grad), ``"data"`` (constant leaf:
  inputs, targets, initial state), ``"op"``, ``"delay"``, ``"elided"`` or
  ``"group"`` (a collapsed scope);
* ``label``, ``name``, ``op``, ``scope``, ``timestep``, ``ordinal``, ``shape``,
  ``backward`` (recorded by ``create_graph=True``);
* ``members``: the recorded node ids the view node stands for (so callers can
  map "node 42 is being processed" onto whatever is drawn).

Edges carry ``delay`` (``t_dst - t_src`` for edges that cross time steps, 0
otherwise), ``positions`` (input slots, used to name leaves when folding) and,
in the variables view, ``params`` (the weights that map source to target).

Views:

* :func:`unfolded` - every recorded node; parameters appear once because they
  are single nodes shared by every step.
* :func:`variables` - the textbook view: named nodes, leaves and outputs kept,
  unnamed op chains between them contracted into one edge labelled with the
  parameter(s) that multiply along it (``h(t-1) -W-> a(t)``).
* :func:`fold` - the quotient by time: nodes with the same fold key at
  different steps become one circuit node, and an edge that crosses steps goes
  through an explicit delay node, so the circuit is cyclic.
* :func:`elide_steps`, :func:`collapse_scopes` - keep big graphs drawable.

Fold key: an op at a time step is identified by ``(scope, ordinal, op,
parameters, occurrence)`` (``ordinal`` is its creation index within its scope
and step; the op name and the parameters it reads keep a cell whose first
step runs different ops from merging unrelated nodes; the occurrence keeps
apart two nodes of one step whose ordinals coincide because ``tg.timestep(t)``
was entered twice). A constant leaf at a step (``x(t)``, ``h0``) has no
stable ordinal of its own - it is created lazily at first use - so it is
identified by where it plugs in: ``(consumer's key, input slot)``, for the
consumer whose key sorts first. A constant read at several steps is
time-invariant (drawn outside the steps, like a parameter). Nodes outside
any recurrence (parameters, a total loss) stay themselves.
"""
from __future__ import annotations

import warnings
from typing import TYPE_CHECKING

from .graph import Graph, Node

if TYPE_CHECKING:  # networkx is imported where a view is built: the engine does not need it to import
    import networkx as nx

__all__ = [
    "node_kind", "unfolded", "variables", "fold", "circuit", "elide_steps",
    "collapse_scopes", "choose_steps", "view_of", "label_initial_states", "merge_shared_inputs",
    "MULTIPLICATIVE_OPS",
]

# ops through which a parameter "maps" one variable to another (edge labels)
MULTIPLICATIVE_OPS = frozenset({"matmul", "mul", "take", "div"})


def _nx():
    import networkx as nx
    return nx


def node_kind(node: Node) -> str:
    if node.is_leaf:
        return "param" if node.requires_grad else "data"
    return "op"


def _is_backward(scope) -> bool:
    return bool(scope) and scope.startswith("backward")


def _as_graph(source) -> Graph:
    if isinstance(source, Graph):
        return source
    if isinstance(source, (list, tuple)):
        return Graph.from_outputs(*source)
    return Graph.from_outputs(source)


def _node_attrs(n: Node, invariant=frozenset()):
    attrs = dict(
        kind=node_kind(n), label=n.name or n.op, name=n.name, op=n.op,
        scope=n.scope or "", timestep=n.timestep, ordinal=n.ordinal,
        shape=tuple(n.shape), dtype=str(n.dtype), backward=_is_backward(n.scope),
        members=(n.id,), reps=(n.id,),
    )
    if n.id in invariant:
        attrs.update(timestep=None, time_invariant=True)
    return attrs


def _time_invariant(nodes) -> frozenset:
    """Ids of constant leaves read at more than one time step.

    Such a constant (a scale, a mask made before the loop) is an input of the
    whole sequence, like a parameter: drawn once, outside the steps, with no
    delays. Its node is made lazily at its first use, so it carries that step;
    left there, every later use would look like state flowing through time.
    """
    first_step, invariant = {}, set()
    for n in nodes:
        if n.timestep is None:
            continue
        for i in n.inputs:
            if i.is_leaf and not i.requires_grad and i.timestep is not None:
                if first_step.setdefault(i.id, n.timestep) != n.timestep:
                    invariant.add(i.id)
    return frozenset(invariant)


def _step_of(invariant):
    """The step a recorded node is drawn at: None for parameters and time-invariant constants."""
    def step(n):
        return None if n.id in invariant else n.timestep
    return step


def _delay(t_src, t_dst) -> int:
    if t_src is None or t_dst is None:
        return 0
    return t_dst - t_src


# -- unfolded (op level) ------------------------------------------------------

class _Gaps:
    """Which time steps are hidden, grouped into gaps: one "... n steps ..." node each."""

    def __init__(self, all_steps, shown):
        self.shown = set(shown)
        self.gap_of, self.gaps = {}, []
        in_gap = False
        for t in all_steps:
            if t in self.shown:
                in_gap = False
                continue
            if not in_gap:
                self.gaps.append([])
                in_gap = True
            self.gaps[-1].append(t)
            self.gap_of[t] = ("elided", len(self.gaps) - 1)

    def hidden(self, t) -> bool:
        return t is not None and t not in self.shown

    def add_nodes(self, g):
        g.graph["elided_steps"] = sum(len(gap) for gap in self.gaps)
        for k, gap in enumerate(self.gaps):
            g.add_node(("elided", k), kind="elided", label=f"... {len(gap)} steps ...",
                       name=None, op="elided", scope="", timestep=None, ordinal=None, shape=(),
                       backward=False, members=(), reps=(), elided=(gap[0], gap[-1]))


def _gaps_for(graph, steps):
    if steps is None:
        return None
    all_steps = graph.timesteps
    shown = set(steps)
    if all(t in shown for t in all_steps):
        return None
    return _Gaps(all_steps, shown)


def _add_or_merge_edge(g, u, v, **attrs):
    if g.has_edge(u, v):
        g.edges[u, v]["positions"] += attrs.get("positions", ())
    else:
        g.add_edge(u, v, **attrs)


def unfolded(source, steps=None) -> "nx.DiGraph":
    """Every recorded node, keyed by node id, in topological order.

    ``steps``: only these time steps; each run of hidden steps becomes one
    elision node (cheap on a 10,000-step recording: hidden nodes are skipped).
    """
    graph = _as_graph(source)
    gaps = _gaps_for(graph, steps)
    invariant = _time_invariant(graph.nodes)
    step = _step_of(invariant)
    g = _nx().DiGraph(view="unfolded", detail="ops")
    for n in graph.nodes:
        if gaps is None or not gaps.hidden(step(n)):
            g.add_node(n.id, **_node_attrs(n, invariant))
    if gaps is not None:
        gaps.add_nodes(g)
    for n in graph.nodes:
        n_hidden = gaps is not None and gaps.hidden(n.timestep)
        for pos, i in enumerate(n.inputs):
            i_step = step(i)
            i_hidden = gaps is not None and gaps.hidden(i_step)
            if n_hidden and i_hidden:
                continue
            if n_hidden and i.is_leaf and (i.requires_grad or i.id in invariant):
                continue  # a parameter (or constant) feeding hidden steps adds nothing to the picture
            u = gaps.gap_of[i_step] if i_hidden else i.id
            v = gaps.gap_of[n.timestep] if n_hidden else n.id
            if u == v:
                continue
            _add_or_merge_edge(g, u, v, positions=(pos,), delay=_delay(i_step, n.timestep),
                               params=(i.name or "param",) if i.is_leaf and i.requires_grad else ())
    return merge_shared_inputs(g, graph.nodes)


# -- one input, read by several directions -------------------------------------

def _memory_identity(node):
    """Where a leaf's array lives (pointer, shape, strides, dtype), or None when it is gone."""
    tensor = node.tensor
    data = getattr(tensor, "data", None) if tensor is not None else None
    if data is None:
        return None
    interface = getattr(data, "__array_interface__", None)
    if interface is not None:
        pointer = interface["data"][0]
    else:
        pointer = getattr(getattr(data, "data", None), "ptr", None)  # CuPy
        if pointer is None:
            return None
    return (pointer, tuple(data.shape), tuple(getattr(data, "strides", ())), str(data.dtype))


def _input_identity(n):
    """A key shared by recorded nodes that are the same input of one step, else None.

    A bidirectional layer reads x(t) once per direction: two constant leaves
    viewing the same memory (or, once the arrays are freed, two leaves of the
    same name, step and shape in sibling direction scopes), or two ``getitem``
    ops taking the same index of the same tensor (a stacked layer's input).
    """
    if n.timestep is None or not n.name:
        return None
    if n.is_leaf:
        if n.requires_grad:
            return None
        memory = _memory_identity(n)
        if memory is not None:
            return ("memory", n.name, n.timestep) + memory
        parent, _, last = (n.scope or "").rpartition(".")
        if last not in ("forward", "backward"):
            return None
        return ("sibling", n.name, n.timestep, tuple(n.shape), str(n.dtype), parent)
    if n.op == "getitem" and not _is_backward(n.scope):
        return ("getitem", n.name, n.timestep, tuple(i.id for i in n.inputs),
                repr(n.attrs.get("index")))
    return None


def _common_scope(scopes):
    parts = [s.split(".") for s in scopes]
    common = []
    for level in zip(*parts):
        if len(set(level)) != 1:
            break
        common.append(level[0])
    return ".".join(common)


def merge_shared_inputs(view, nodes):
    """Draw an input read by several directions once per step (changes ``view`` in place).

    The first copy stays (its scope becomes the copies' common scope); the
    others' edges move onto it. Returns ``view``.
    """
    first: dict = {}
    duplicates = []
    for n in nodes:
        if n.id not in view or view.nodes[n.id]["timestep"] is None:
            continue  # not drawn at a step (a time-invariant constant): already drawn once
        key = _input_identity(n)
        if key is None:
            continue
        if key in first:
            duplicates.append((n.id, first[key]))
        else:
            first[key] = n.id
    for dup, keep in duplicates:
        a, k = view.nodes[dup], view.nodes[keep]
        k["scope"] = _common_scope([k["scope"], a["scope"]])
        k["members"] = tuple(k["members"]) + tuple(a["members"])
        k["reps"] = tuple(k.get("reps", ())) + tuple(a.get("reps", ()))
        k["merged"] = k.get("merged", 1) + 1
        for u, _, e in list(view.in_edges(dup, data=True)):
            if u != keep:
                _add_or_merge_edge(view, u, keep, **dict(e))
        for _, w, e in list(view.out_edges(dup, data=True)):
            if w != keep:
                _add_or_merge_edge(view, keep, w, **dict(e))
        view.remove_node(dup)
    return view


# -- variables (textbook level) ----------------------------------------------

def _pure_of(part):
    """Parameter names when every source of ``part`` is a parameter (W, W.T, W[:H]), else None."""
    if isinstance(part, _Lazy):
        return part.pure
    if isinstance(part, _Seq):
        return _flat(part).pure
    return part.get("__pure__")


ELEMENTWISE_OPS = frozenset({
    "add", "sub", "mul", "div", "pow", "maximum", "minimum", "where", "neg", "exp", "log",
    "sqrt", "sign", "abs", "tanh", "sigmoid", "relu", "clip", "astype", "to_device",
})
AXIS_OPS = frozenset({"softmax", "log_softmax", "sum", "mean", "max", "min", "concat", "stack"})


class _Seq:
    """Sources of a tensor whose axis 0 is time, kept per element.

    A layer stacks its per-step outputs and a head maps the whole sequence;
    tracking sources per time index keeps ``h(t) -> o(t)`` instead of letting
    every step feed every later slice.
    """

    __slots__ = ("items", "flat")

    def __init__(self, items):
        self.items = items
        self.flat = None


class _Lazy:
    """Sources of an unnamed op, as references to its inputs' sources (merged on demand).

    Merging eagerly copies every source at every op, which is quadratic on a
    running sum over 10,000 steps; references keep building linear.
    ``parts``: (child, extra weights) pairs; ``pure``: parameter names when
    every source is a parameter (``W.T``), else None.
    """

    __slots__ = ("parts", "pure")

    def __init__(self, parts, pure):
        self.parts = parts
        self.pure = pure


def _flat(part):
    if isinstance(part, _Seq):
        if part.flat is None:
            pures = [_pure_of(p) for p in part.items]
            pure = tuple(sorted(set().union(*pures))) if all(p is not None for p in pures) else None
            part.flat = _Lazy([(item, frozenset()) for item in part.items], pure)
        return part.flat
    return part


def _axes(attr, ndim):
    if attr is None:
        return None
    axes = attr if isinstance(attr, (tuple, list)) else (attr,)
    return {a % ndim for a in axes} if ndim else set()


def _keeps_time(n, seq_inputs):
    """True when output element k of ``n`` depends only on element k of its time-major inputs."""
    out = n.shape
    if not out:
        return False
    T = len(seq_inputs[0][1].items)
    if out[0] != T or any(len(p.items) != T or tuple(i.shape[:1]) != (T,) for i, p in seq_inputs):
        return False
    if n.op in ELEMENTWISE_OPS:
        return all(len(i.shape) == len(out) for i, _ in seq_inputs)
    if n.op == "matmul":
        a, b = n.inputs[0], n.inputs[1]
        seq_ids = {i.id for i, _ in seq_inputs}
        return a.id in seq_ids and b.id not in seq_ids and len(a.shape) >= 3 and len(b.shape) <= 2
    if n.op in AXIS_OPS:
        axes = _axes(n.attrs.get("axis"), len(out) if n.op == "stack" else len(n.inputs[0].shape))
        return axes is not None and 0 not in axes and all(len(i.shape) == len(n.inputs[0].shape)
                                                         for i, _ in seq_inputs)
    if n.op == "transpose":
        axes = n.attrs.get("axes")
        return axes is not None and tuple(axes)[0] == 0
    return False


def variables(source, keep=None, steps=None) -> "nx.DiGraph":
    """The textbook view: named nodes, leaves and outputs; unnamed chains contracted.

    ``keep`` (optional set of node ids) forces extra nodes to stay, e.g. the
    parameter gradients of a backward graph. ``steps``: as in :func:`unfolded`.
    """
    graph = _as_graph(source)
    gaps = _gaps_for(graph, steps)
    nodes = graph.nodes
    invariant = _time_invariant(nodes)
    step = _step_of(invariant)
    outputs = {n.id for n in graph.outputs}
    keep = set(keep or ())
    kept = {n.id for n in nodes if n.is_leaf or n.name or n.id in outputs or n.id in keep}
    by_id = {n.id: n for n in nodes}
    kinds = {n.id: node_kind(n) for n in nodes}
    names = {n.id: (n.name or "param") for n in nodes if kinds[n.id] == "param"}
    # reach[u]: for an unnamed op u, kept source id -> set of weight names on the way
    # (or a _Seq of such dicts when u is a time-major sequence)
    reach: dict = {}

    def contribution(i):
        if gaps is not None and gaps.hidden(step(i)):
            return {gaps.gap_of[i.timestep]: set()}
        if i.id in kept:
            if kinds[i.id] == "param":
                return {i.id: set(), "__pure__": (names[i.id],)}
            return {i.id: set()}
        return reach[i.id]

    def merge(n, parts):
        """Reference the parts; weights of multiplicative ops label the other operands."""
        pures = [_pure_of(p) for p in parts]
        pure = tuple(sorted(set().union(*pures))) if all(p is not None for p in pures) else None
        if n.op not in MULTIPLICATIVE_OPS:
            return _Lazy([(p, frozenset()) for p in parts], pure)
        linked = []
        for idx, part in enumerate(parts):
            extra = set()
            if pures[idx] is None:
                for j, w in enumerate(pures):
                    if j != idx and w is not None:
                        extra.update(w)
            linked.append((part, frozenset(extra)))
        return _Lazy(linked, pure)

    def flatten(part):
        """kept source id -> weight names, in input order (deterministic: used by fold keys)."""
        out: dict = {}
        stack, seen = [(_flat(part), frozenset())], set()
        while stack:
            node, extra = stack.pop()
            mark = (id(node), extra)
            if mark in seen:
                continue
            seen.add(mark)
            if isinstance(node, dict):
                for s, ws in node.items():
                    if s == "__pure__":
                        continue
                    entry = out.setdefault(s, set())
                    entry.update(ws)
                    if extra and kinds.get(s) != "param":
                        entry.update(extra)
            else:
                for child, more in reversed(node.parts):
                    stack.append((_flat(child), extra | more if more else extra))
        return out

    def sources_of(n):
        parts = [contribution(i) for i in n.inputs]
        if n.op == "stack" and n.shape and _axes(n.attrs.get("axis", 0), len(n.shape)) == {0}:
            return _Seq([_flat(p) for p in parts])
        seq_inputs = [(i, p) for i, p in zip(n.inputs, parts) if isinstance(p, _Seq)]
        if not seq_inputs:
            return merge(n, parts)
        if n.op == "getitem":
            k = _int_index(n.attrs.get("index"))
            items = seq_inputs[0][1].items
            if k is not None and -len(items) <= k < len(items):
                return items[k]  # indexing a time step of a sequence: just that step
            return _flat(seq_inputs[0][1])
        if _keeps_time(n, seq_inputs):
            T = len(seq_inputs[0][1].items)
            return _Seq([merge(n, [p.items[k] if isinstance(p, _Seq) else p for p in parts])
                         for k in range(T)])
        return merge(n, [_flat(p) for p in parts])

    g = _nx().DiGraph(view="unfolded", detail="variables")
    for n in nodes:
        if n.id in kept and (gaps is None or not gaps.hidden(step(n))):
            g.add_node(n.id, **_node_attrs(n, invariant))
    if gaps is not None:
        gaps.add_nodes(g)
    for n in nodes:
        if n.is_leaf:
            continue
        if gaps is not None and gaps.hidden(n.timestep):
            _edges_into_gap(g, n, gaps, kept, reach, flatten, kinds, step)
            continue
        merged = sources_of(n)
        if n.id not in kept:
            reach[n.id] = merged
            continue
        for pos, (s, ws) in enumerate(flatten(merged).items()):
            if isinstance(s, tuple):  # an elision node
                _add_or_merge_edge(g, s, n.id, positions=(pos,), delay=0, params=())
                continue
            src = by_id[s]
            params = (names[s],) if kinds[s] == "param" else tuple(sorted(ws))
            g.add_edge(s, n.id, positions=(pos,), delay=_delay(step(src), n.timestep),
                       params=params)
    _assign_contracted_members(g, nodes, kept)
    return merge_shared_inputs(g, nodes)


def _edges_into_gap(g, n, gaps, kept, reach, flatten, kinds, step):
    """State flowing from a shown step into hidden ones ends at the gap's elision node."""
    gap = gaps.gap_of[n.timestep]
    for i in n.inputs:
        if step(i) is None or gaps.hidden(i.timestep):
            continue  # only state that leaves a shown step for a hidden one
        sources = [i.id] if i.id in kept else [s for s in flatten(reach[i.id])
                                              if not isinstance(s, tuple)]
        for s in sources:
            if kinds.get(s) != "param" and s in g and g.nodes[s]["timestep"] is not None:
                _add_or_merge_edge(g, s, gap, positions=(), delay=1, params=())


def _int_index(index):
    if isinstance(index, tuple) and len(index) == 1:
        index = index[0]
    if isinstance(index, bool):
        return None
    try:
        import numbers
        if isinstance(index, numbers.Integral):
            return int(index)
    except TypeError:
        pass
    return None


def _assign_contracted_members(g, nodes, kept):
    """Each unnamed op belongs to the kept nodes it feeds (for highlight mapping)."""
    owners: dict = {}
    for n in reversed(nodes):  # consumers before inputs
        if n.id not in g and n.id in kept:
            continue  # a hidden step
        mine = {n.id} if n.id in kept else owners.get(n.id, set())
        for i in n.inputs:
            if i.id not in kept:
                owners.setdefault(i.id, set()).update(mine)
    extra: dict = {}
    for op_id, owner_ids in owners.items():
        for o in owner_ids:
            extra.setdefault(o, []).append(op_id)
    for o, ops in extra.items():
        if o in g:
            g.nodes[o]["members"] = (o,) + tuple(sorted(ops))


# -- folding ------------------------------------------------------------------

def _fold_keys(view):
    """Circuit key of every node of an unfolded view (ops or variables level)."""
    keys = {v: ("node", v) for v, a in view.nodes(data=True)
            if a["timestep"] is None and a["kind"] != "elided"}
    _key_ops(view, keys)
    _key_step_leaves(view, keys)
    return keys


def _recurring_params(view):
    """Parameters read at more than one step: the weights of a cell. One read at a single step (a
    learned initial state h0) stands in for state, like the constant h0, and keys nothing."""
    nodes = view.nodes
    return {u for u, a in nodes(data=True) if a["kind"] == "param"
            and len({nodes[c]["timestep"] for c in view.successors(u)} - {None}) > 1}


def _param_sources(view, v, keys, recurring=None):
    """Fold keys of the parameters that feed ``v``.

    Part of an op's key, so ``x @ U`` at the first step never folds with
    ``h @ W`` at later ones although both are the step's first matmul.
    Parameters only: an op outside the steps (a loss slicing its gradient per
    step) is a different node at every step, and a constant read at several
    steps may stand in for a state (``h(-1)`` of a two-step recurrence).
    Sorted by ``repr``: keys may mix ids and tuples, which do not compare.
    """
    nodes = view.nodes
    params = [keys[u] for u in view.predecessors(v) if nodes[u]["kind"] == "param" and u in keys
              and (recurring is None or u in recurring)]
    return tuple(params if len(params) < 2 else sorted(params, key=repr))


def _created(order, v, a):
    """Creation rank of a view node: its recorded id (a scope box: its first member's)."""
    if isinstance(v, int):
        return (v, order[v])
    reps = a.get("reps") or a.get("members")
    return (min(reps) if reps else -1, order[v])


def _key_ops(view, keys):
    """Key each op (or scope box) at a step by (scope, ordinal, op, parameters, occurrence).

    The occurrence index counts earlier nodes of the same step with the same
    key, in creation order: re-entering ``tg.timestep(t)`` restarts step t's
    ordinals (a readout pass, a helper called twice per step), and two nodes of
    one step must never become one circuit node.
    """
    order = {v: k for k, v in enumerate(view.nodes)}
    ops = [v for v, a in view.nodes(data=True)
           if a["timestep"] is not None and a["kind"] in ("op", "group")]
    ops.sort(key=lambda v: _created(order, v, view.nodes[v]))
    seen: dict = {}
    recurring = _recurring_params(view)
    for v in ops:
        a = view.nodes[v]
        base = ("op", a["scope"], a["ordinal"], a["op"], _param_sources(view, v, keys, recurring))
        occurrence = seen.get((base, a["timestep"]), 0)
        seen[(base, a["timestep"])] = occurrence + 1
        keys[v] = base + (occurrence,)


def _key_step_leaves(view, keys):
    """Key a constant leaf at a step (``x(t)``, ``h0``) by where it plugs in.

    It has no stable ordinal of its own (it is made lazily at first use), so
    its key is (consumer's key, input slot) for the consumer that sorts first:
    a criterion of the keys alone, so a leaf read by two directions picks the
    same consumer at every step whatever order the graph was walked in.
    Consumers at a step come before consumers outside the steps (a total
    loss reads every step's leaf, which would not fold).
    """
    for v, a in view.nodes(data=True):
        if v in keys or a["kind"] == "elided":
            continue
        plugs = [(c, slot) for c in view.successors(v) if c in keys
                 for slot in (view.edges[v, c].get("positions") or (0,))]
        if not plugs:
            keys[v] = ("node", v)
            continue
        if len(plugs) > 1:  # repr only where there is a choice: it is the costly part
            plugs.sort(key=lambda p: (view.nodes[p[0]]["timestep"] is None, repr(keys[p[0]]), p[1]))
        consumer, slot = plugs[0]
        keys[v] = ("input", keys[consumer], slot)


def label_initial_states(view):
    """Name unnamed constants that stand where a delayed state enters at the first step.

    ``zeros`` passed as h(-1) gets the label ``h0`` when, at later steps, the
    same input slot is fed by ``h`` through a delay. Changes ``view`` in place.
    """
    keys = _fold_keys(view)
    leaves = {}
    for v, k in keys.items():
        if k[0] == "input":
            leaves.setdefault(k, []).append(v)
    for u, v, e in view.edges(data=True):
        if not e.get("delay") or v not in keys or view.nodes[u]["kind"] in ("elided", "data"):
            continue  # only a state (an op) has an initial value; a constant is not one
        for slot in e.get("positions", ()):
            for leaf in leaves.get(("input", keys[v], slot), ()):
                a = view.nodes[leaf]
                if a["kind"] == "data" and not a.get("name"):
                    a["label"] = f"{view.nodes[u]['label']}0"
                    a["initial_of"] = u
    return view


def fold(view) -> "nx.DiGraph":
    """The circuit: the quotient of an unfolded view by time, with explicit delay nodes."""
    nx = _nx()
    keys = _fold_keys(view)
    c = nx.DiGraph(view="circuit", detail=view.graph.get("detail", "ops"))
    for v, a in view.nodes(data=True):
        k = keys.get(v)
        if k is None:
            continue
        if k not in c:
            attrs = dict(a)
            attrs["members"] = tuple(a.get("members", ()))
            attrs["reps"] = tuple(a.get("reps", ()))
            attrs["timesteps"] = () if a["timestep"] is None else (a["timestep"],)
            attrs["timestep"] = None
            c.add_node(k, **attrs)
        else:
            node = c.nodes[k]
            node["members"] = node["members"] + tuple(a["members"])
            node["reps"] = node.get("reps", ()) + tuple(a.get("reps", ()))
            if a["timestep"] is not None:
                node["timesteps"] = node["timesteps"] + (a["timestep"],)
            if _given_label(a) and not _given_label(node):
                node["label"] = a["label"]
    for u, v, e in view.edges(data=True):
        ku, kv = keys.get(u), keys.get(v)
        if ku is None or kv is None:
            continue
        d = e.get("delay", 0)
        if d:
            # one delay per state and offset, fanning out to every consumer (h -> [] -> gates)
            delay = ("delay", ku, d)
            if delay not in c:
                c.add_node(delay, kind="delay", label="", delay=d, name=None, op="delay",
                           scope=c.nodes[ku]["scope"], timestep=None, timesteps=(),
                           ordinal=None, shape=c.nodes[ku]["shape"], members=(), reps=(),
                           backward=c.nodes[ku]["backward"])
            _merge_edge(c, ku, delay, dict(e, params=()), delay=d)
            _merge_edge(c, delay, kv, e, delay=0)
        else:
            _merge_edge(c, ku, kv, e, delay=0)
    _note_mixed_inputs(c, view, keys)
    return c


def _input_pattern(view, v, keys, index, recurring):
    """What feeds step node ``v`` apart from state: keys of same-step ops and parameters.

    State and constants are left out on purpose: ``h0`` at the first step and
    ``h(t-1)`` through a delay later are the same input of the circuit.
    ``index`` numbers keys as they are met, so patterns compare as sorted ints.
    """
    t = view.nodes[v]["timestep"]
    pattern = []
    for u in view.predecessors(v):
        a = view.nodes[u]
        if u in keys and ((a["timestep"] == t and a["kind"] in ("op", "group"))
                          or (a["kind"] == "param" and u in recurring)):
            pattern.append(index.setdefault(keys[u], len(index)))
    return tuple(sorted(pattern))


def _note_mixed_inputs(c, view, keys):
    """Flag circuit nodes whose steps are fed differently (a cell whose first step differs).

    Such a node is still one (scope, ordinal, op, parameters) of the cell, but
    its steps compute different things: mark it ``mixed_inputs`` and warn, so
    a user reads the unfolded graph before trusting the circuit. Forward nodes
    only: a recorded backward walk always differs at its ends (the last step
    starts the gradient, the first has no earlier state to feed), by design.
    """
    patterns: dict = {}
    index: dict = {}
    recurring = _recurring_params(view)
    for v, a in view.nodes(data=True):
        if a["timestep"] is not None and a["kind"] in ("op", "group") and v in keys \
                and not a.get("backward"):
            pattern = _input_pattern(view, v, keys, index, recurring)
            patterns.setdefault(keys[v], {}).setdefault(pattern, []).append(a["timestep"])
    mixed = []
    for k, by_pattern in patterns.items():
        if len(by_pattern) > 1:
            node = c.nodes[k]
            node["mixed_inputs"] = sorted(sorted(steps) for steps in by_pattern.values())
            mixed.append(f"{node['label']!r}" + (f" in {node['scope']}" if node["scope"] else "")
                         + " (steps " + " vs ".join(_steps_text(s) for s in node["mixed_inputs"])
                         + ")")
    if mixed:
        note = ("circuit nodes fold steps whose inputs differ: " + ", ".join(mixed)
                + "; the cell records different ops at some steps, see the unfolded graph")
        c.graph["notes"] = list(c.graph.get("notes", ())) + [note]
        warnings.warn(f"fold: {note}", UserWarning, stacklevel=3)


def _steps_text(steps):
    """``[1, 2, 3]`` -> ``"1-3"``, ``[0]`` -> ``"0"``, ``[0, 2]`` -> ``"0,2"``."""
    if len(steps) > 2 and steps == list(range(steps[0], steps[-1] + 1)):
        return f"{steps[0]}-{steps[-1]}"
    return ",".join(str(t) for t in steps)


def _given_label(a) -> bool:
    """True when a caller named this node beyond its recorded name or op (``dL/db``, ``h0``).

    Such a name belongs to the whole circuit node: the running sum of ``dL/db``
    is recorded at every step but named only at the step its last add happens
    in, which need not be the first member folded in.
    """
    return a.get("label") not in (a.get("name") or a.get("op"), None)


def _merge_edge(c, u, v, e, delay):
    if c.has_edge(u, v):
        c.edges[u, v]["count"] += 1
        return
    c.add_edge(u, v, delay=delay, positions=tuple(e.get("positions", ())),
               params=tuple(e.get("params", ())), count=1)


def circuit(source, detail="ops") -> "nx.DiGraph":
    """The folded circuit of a recording (``detail`` "ops" or "variables")."""
    graph = _as_graph(source)
    return fold(view_of(graph, detail))


def view_of(graph, detail="ops", keep=None, steps=None):
    """The unfolded view at ``detail`` ("ops" or "variables"), optionally only ``steps``."""
    if detail == "ops":
        return unfolded(graph, steps=steps)
    if detail == "variables":
        return variables(graph, keep=keep, steps=steps)
    raise ValueError(f"detail must be 'ops' or 'variables', got {detail!r}")


# -- keeping big graphs drawable -------------------------------------------------

def choose_steps(timesteps, steps=None, node_budget=None, nodes_per_step=1):
    """Which time steps to show: all, or the first and last few.

    ``steps`` is an int (at most that many steps), an iterable of step
    indices, or None (as many as ``node_budget`` allows, at least 2).
    """
    timesteps = sorted(timesteps)
    if steps is None:
        if node_budget is None:
            return timesteps
        steps = max(2, int(node_budget // max(1, nodes_per_step)))
    valid = (f"{timesteps[0]}..{timesteps[-1]}" if timesteps else "none: nothing was recorded "
             "inside tg.timestep()")
    if isinstance(steps, bool):
        raise ValueError(f"steps must be an int (how many steps to draw) or a list of step "
                         f"indices, got {steps!r}")
    if isinstance(steps, int):
        if steps < 1:
            raise ValueError(f"steps={steps}: draw at least 1 step (an int from 1 to "
                             f"{len(timesteps)}, or a list of steps from {valid}, or None)")
        if steps >= len(timesteps):
            return timesteps
        first = (steps + 1) // 2
        last = steps - first
        return timesteps[:first] + (timesteps[-last:] if last else [])
    wanted = set(steps)
    missing = sorted(wanted - set(timesteps))
    if missing or not wanted:
        raise ValueError(f"steps={sorted(wanted)!r}: "
                         + (f"step(s) {missing} were not recorded; " if missing else "no steps given; ")
                         + f"the recorded steps are {valid} (or pass an int: how many to draw)")
    return [t for t in timesteps if t in wanted]


def elide_steps(view, shown):
    """Drop nodes of steps not in ``shown``; each gap becomes one "... n steps ..." node."""
    all_steps = sorted({a["timestep"] for _, a in view.nodes(data=True) if a["timestep"] is not None})
    gaps = _Gaps(all_steps, shown)
    if not gaps.gaps:
        return view
    out = _nx().DiGraph(**view.graph)
    for v, a in view.nodes(data=True):
        if not gaps.hidden(a["timestep"]):
            out.add_node(v, **a)
    gaps.add_nodes(out)
    for u, v, e in view.edges(data=True):
        tu, tv = view.nodes[u]["timestep"], view.nodes[v]["timestep"]
        su = gaps.gap_of[tu] if gaps.hidden(tu) else u
        sv = gaps.gap_of[tv] if gaps.hidden(tv) else v
        if su == sv:
            continue
        if _outside_input(view.nodes[u]) and gaps.hidden(tv):
            continue  # a parameter (or constant) feeding hidden steps adds nothing to the picture
        if not out.has_edge(su, sv):
            out.add_edge(su, sv, **e)
    return out


def _outside_input(a) -> bool:
    """True for a parameter or a time-invariant constant: one node read by every step."""
    return a["kind"] == "param" or bool(a.get("time_invariant"))


def _scope_group(scope, collapse):
    """The collapsed scope ``scope`` falls into, or None."""
    if not scope:
        return None
    if isinstance(collapse, bool):
        return scope if collapse else None
    if isinstance(collapse, int):
        parts = scope.split(".")
        return ".".join(parts[:collapse]) if len(parts) >= collapse else None
    prefixes = [collapse] if isinstance(collapse, str) else list(collapse)
    best = None
    for p in prefixes:
        if scope == p or scope.startswith(p + "."):
            if best is None or len(p) < len(best):
                best = p  # the outermost collapsed scope wins
    return best


def _check_collapse(view, collapse):
    scopes = sorted({a["scope"] for _, a in view.nodes(data=True)
                     if a["kind"] in ("op", "group") and a["scope"]})
    depth = max((len(sc.split(".")) for sc in scopes), default=0)
    shown = ", ".join(repr(sc) for sc in scopes[:12]) + (" ..." if len(scopes) > 12 else "")
    choices = (f"choose a scope ({shown}) or one of its dotted prefixes, or a depth from 1 to "
               f"{depth}" if scopes else "this graph has no scopes to collapse")
    if isinstance(collapse, int):
        if not 1 <= collapse <= depth:
            raise ValueError(f"collapse={collapse}: no scope is that deep; {choices}")
        return
    prefixes = [collapse] if isinstance(collapse, str) else list(collapse)
    for p in prefixes:
        if not isinstance(p, str) or not any(sc == p or sc.startswith(p + ".") for sc in scopes):
            raise ValueError(f"collapse={p!r} matches no scope; {choices}")


def collapse_scopes(view, collapse, strict=True):
    """Merge the op nodes of each collapsed scope (per time step) into one box.

    ``collapse``: a scope prefix, a list of them, an int depth (every scope is
    cut to that many dotted parts) or True (every innermost scope). Leaves
    keep their own nodes; edges inside a box disappear, delays stay.
    ``strict``: a prefix or depth that matches no op is a ValueError naming
    the scopes there are.
    """
    if collapse is None or collapse is False:
        return view
    if not isinstance(collapse, (bool, int, str, list, tuple, set, frozenset)):
        raise ValueError(f"collapse must be a scope name, a list of them, a depth (int) or True, "
                         f"got {collapse!r}")
    if strict and not isinstance(collapse, bool):
        _check_collapse(view, collapse)
    nx = _nx()
    group_of = {}
    for v, a in view.nodes(data=True):
        if a["kind"] not in ("op", "group"):
            continue
        grp = _scope_group(a["scope"], collapse)
        if grp is not None:
            group_of[v] = ("group", grp, a["timestep"])
    if not group_of:
        return view
    out = nx.DiGraph(**view.graph)
    counts: dict = {}
    for v, a in view.nodes(data=True):
        gk = group_of.get(v)
        if gk is None:
            out.add_node(v, **a)
            continue
        if gk not in out:
            attrs = dict(a)
            attrs.pop("qualifier", None)
            attrs.update(kind="group", label=gk[1], name=None, op="group:" + gk[1],
                         scope=gk[1], members=tuple(a["members"]), reps=tuple(a.get("reps", ())))
            out.add_node(gk, **attrs)
            counts[gk] = 0
        else:
            node = out.nodes[gk]
            node["members"] = node["members"] + tuple(a["members"])
            node["reps"] = node.get("reps", ()) + tuple(a.get("reps", ()))
            node["ordinal"] = min(node["ordinal"], a["ordinal"]) if node.get("ordinal") is not None \
                else a["ordinal"]
        counts[gk] += 1
    for gk, n in counts.items():
        out.nodes[gk]["collapsed"] = n
    for u, v, e in view.edges(data=True):
        su, sv = group_of.get(u, u), group_of.get(v, v)
        if su == sv and not e.get("delay"):
            continue
        if out.has_edge(su, sv):
            old = out.edges[su, sv]
            old["params"] = tuple(sorted(set(old.get("params", ())) | set(e.get("params", ()))))
        else:
            out.add_edge(su, sv, **e)
    return out
