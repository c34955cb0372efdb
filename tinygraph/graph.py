"""The recorded graph: nodes, recording context (scope, time step, grad mode), views.

Every op applied to a Tensor that needs a gradient creates a ``Node``. A node
knows its op, its input nodes (ordered, with multiplicity), its attributes,
output shape/dtype, a name, the module ``scope`` that made it and the
``timestep`` set by the recurrence driver. ``ordinal`` is the creation index
within its ``(scope, timestep)``: two nodes at different time steps with the
same ``(scope, ordinal)`` are the same node of the folded circuit. Nodes
recorded by ``backward(create_graph=True)`` count from a base that one walk
shares across all its steps, so a graph's backward recordings fold alike.
"""
from __future__ import annotations

import contextlib
import itertools
import operator
import threading

__all__ = [
    "Node", "Graph", "scope", "timestep", "no_grad", "enable_grad", "decomposed",
    "is_grad_enabled", "current_scope", "current_timestep",
]


class _RecordingState(threading.local):
    def __init__(self):
        self.grad_enabled = True
        self.scopes: list[str] = []
        self.scope_text = ""
        self.timestep = None
        # ordinal counters: timestep -> {(scope, is_leaf): next ordinal}.
        # Entering ``timestep(t)`` starts fresh counters for t, so running the
        # same cell again at step t gives the same ordinals (needed for folding).
        self.counters: dict = {None: {}}
        # the innermost grad-mode block (a number per entry, see ``_GradMode``):
        # backward() and grad() run each walk in a block of its own, which is how
        # ``_override_context`` tells one recording of a backward graph from the next
        self.grad_block = 0
        self.backward_block = None    # the block the two entries below belong to
        self.backward_bases: dict = {}    # (backward scope, is_leaf) -> this walk's first ordinal
        self.backward_started: set = set()    # (backward scope, step) already set to that base
        self.anomaly = False
        # set by the raw backward walk: getitem's rule may then return a SparseGrad
        # (index, values) instead of a dense array of the input's shape
        self.sparse_grads = False
        # while ``trace`` runs: the nodes whose values were read on the host
        # (``.numpy()``, ``.item()``, lengths), whose inputs then key the trace; else None
        self.host_reads = None


STATE = _RecordingState()
_ids = itertools.count()
_grad_blocks = itertools.count(1)


def note_host_read(tensor):
    """Tell a running ``trace`` that ``tensor``'s values were read on the host (no-op otherwise).

    A value read on the host (``int(t.max())``, lengths turned into masks)
    is frozen into the traced schedule, so the trace inputs it came from
    become part of the trace's key.
    """
    reads = STATE.host_reads
    if reads is not None and getattr(tensor, "_node", None) is not None:
        reads.append(tensor._node)


class Node:
    """One recorded operation (or a leaf: a parameter, an input, a constant)."""

    __slots__ = (
        "id", "op", "inputs", "attrs", "shape", "dtype", "name", "scope",
        "timestep", "ordinal", "prim", "saved", "out_ref", "requires_grad",
        "retains_grad", "literals", "value", "residuals", "hooks", "__weakref__",
    )

    def __init__(self, op, inputs, attrs, shape, dtype, prim=None, saved=None,
                 requires_grad=True, name=None, scope=None, timestep=None, is_leaf=False,
                 literals=None):
        self.id = next(_ids)
        self.op = op
        self.inputs = inputs
        self.attrs = attrs
        self.shape = shape
        self.dtype = dtype
        self.prim = prim
        self.saved = saved
        self.out_ref = None
        # the output array, held by the node itself so its VJP can read ``out`` even
        # after the output Tensor died; released with ``saved`` by backward
        self.value = None
        # what a fused primitive's forward kept for its VJP (see ops.Primitive)
        self.residuals = None
        self.requires_grad = requires_grad
        self.retains_grad = False
        self.hooks = None  # {handle id: fn} from Tensor.register_hook
        # non-tensor arguments as ((position, value), ...): they outlive ``saved``
        # so a dump after backward still shows ``mul(%0, 2.0)``
        self.literals = literals
        self.name = name
        st = STATE
        self.scope = st.scope_text if scope is None else scope
        self.timestep = st.timestep if timestep is None else timestep
        self.ordinal = _next_ordinal(st, self.scope, self.timestep, is_leaf)

    @property
    def is_leaf(self) -> bool:
        return self.prim is None

    @property
    def tensor(self):
        """The Tensor this node produced, if it is still alive."""
        return self.out_ref() if self.out_ref is not None else None

    @property
    def freed(self) -> bool:
        """True when backward released this node's saved inputs."""
        return self.prim is not None and self.saved is None

    def label(self) -> str:
        return self.name or self.op

    def __repr__(self):
        where = f" scope={self.scope!r}" if self.scope else ""
        when = f" t={self.timestep}" if self.timestep is not None else ""
        nm = f" name={self.name!r}" if self.name else ""
        return f"<Node #{self.id} {self.op}{nm} shape={self.shape}{where}{when}>"


def op_node(prim, inputs, attrs, value, saved, literals, residuals):
    """The node of one recorded op: ``Node(...)`` with every slot set once.

    ``ops.apply`` calls this for every recorded op, so it skips the keyword
    parsing and the double assignments of the general constructor.
    """
    node = _new_node(Node)
    node.id = next(_ids)
    node.op = prim.name
    node.inputs = inputs
    node.attrs = attrs
    node.shape = value.shape
    node.dtype = value.dtype
    node.prim = prim
    node.saved = saved
    node.out_ref = None
    node.value = value
    node.residuals = residuals
    node.requires_grad = True
    node.retains_grad = False
    node.hooks = None
    node.literals = literals
    node.name = None
    st = STATE
    node.scope = scope = st.scope_text
    node.timestep = step = st.timestep
    node.ordinal = _next_ordinal(st, scope, step, False)
    return node


def _next_ordinal(st, scope, step, is_leaf):
    """The creation index of a new node within its (scope, time step), leaves counted apart."""
    counters = st.counters.get(step)
    if counters is None:
        counters = st.counters[step] = {}
    key = (scope, is_leaf)
    ordinal = counters.get(key, 0)
    counters[key] = ordinal + 1
    return ordinal


_new_node = object.__new__


def topological_order(roots) -> list:
    """Nodes reachable from ``roots``, inputs before consumers (iterative DFS).

    Post-order, first input explored first; an explicit stack of input
    iterators instead of recursion, so a 100,000-step chain is fine.
    """
    order, visited = [], set()
    for root in roots:
        if root is None or root in visited:
            continue
        visited.add(root)
        stack = [(root, iter(root.inputs))]
        while stack:
            node, pending = stack[-1]
            for inp in pending:
                if inp not in visited:
                    visited.add(inp)
                    stack.append((inp, iter(inp.inputs)))
                    break
            else:
                stack.pop()
                order.append(node)
    return order


def creation_order(roots) -> list:
    """Nodes reachable from ``roots`` sorted by creation (``id``): a topological order.

    An op's node is created after its inputs' nodes, so ids increase along
    every edge. This is what the backward walk uses: a plain reachability
    sweep and one C-level sort, cheaper per node than the DFS of
    ``topological_order`` (whose input-first post-order the diagrams keep).
    """
    seen = set(roots)
    seen.discard(None)
    stack = list(seen)
    pop, push, add = stack.pop, stack.append, seen.add
    while stack:
        for inp in pop().inputs:
            if inp not in seen:
                add(inp)
                push(inp)
    return sorted(seen, key=_by_id)


_by_id = operator.attrgetter("id")


class Graph:
    """A recorded graph as data: ``nodes`` in topological order plus outputs."""

    def __init__(self, nodes, outputs):
        self.nodes = list(nodes)
        self.outputs = list(outputs)

    @classmethod
    def from_outputs(cls, *tensors):
        """The graph that produced ``tensors`` (Tensors or Nodes)."""
        roots = []
        for t in tensors:
            if isinstance(t, (list, tuple)):
                roots.extend(_node_of(x) for x in t)
            else:
                roots.append(_node_of(t))
        roots = [r for r in roots if r is not None]
        return cls(topological_order(roots), roots)

    # -- queries ---------------------------------------------------------
    def __len__(self):
        return len(self.nodes)

    def __iter__(self):
        return iter(self.nodes)

    @property
    def leaves(self):
        return [n for n in self.nodes if n.is_leaf]

    @property
    def timesteps(self):
        return sorted({n.timestep for n in self.nodes if n.timestep is not None})

    def consumers(self):
        """node id -> list of consumer nodes (with multiplicity)."""
        out = {n.id: [] for n in self.nodes}
        for n in self.nodes:
            for i in n.inputs:
                out.setdefault(i.id, []).append(n)
        return out

    def to_networkx(self):
        """A ``networkx.MultiDiGraph``-free ``DiGraph``: one node per recorded node.

        Node keys are the node ids; attributes are op, name, shape, dtype,
        scope, timestep, ordinal, is_leaf, literals ({argument position: scalar}
        for scalar arguments such as the 2.0 of ``x * 2.0``). Edge attribute ``positions`` lists
        the input slots the edge feeds (``a*a`` gives one edge, positions [0, 1]).
        """
        import networkx as nx

        g = nx.DiGraph()
        for n in self.nodes:
            g.add_node(n.id, op=n.op, name=n.name, shape=tuple(n.shape), dtype=str(n.dtype),
                       scope=n.scope, timestep=n.timestep, ordinal=n.ordinal,
                       is_leaf=n.is_leaf, literals=dict(n.literals or ()))
        for n in self.nodes:
            for pos, i in enumerate(n.inputs):
                if g.has_edge(i.id, n.id):
                    g.edges[i.id, n.id]["positions"].append(pos)
                else:
                    g.add_edge(i.id, n.id, positions=[pos])
        return g

    def dump(self) -> str:
        """A flat, printable list of equations, one per node (JAX style)."""
        names = {}
        lines = []
        for k, n in enumerate(self.nodes):
            names[n.id] = f"%{k}"
        for n in self.nodes:
            lhs = names[n.id]
            meta = []
            if n.name:
                meta.append(f"name={n.name}")
            if n.scope:
                meta.append(f"scope={n.scope}")
            if n.timestep is not None:
                meta.append(f"t={n.timestep}")
            tail = ("  # " + " ".join(meta)) if meta else ""
            shape = "x".join(str(s) for s in n.shape) or "scalar"
            if n.is_leaf:
                lines.append(f"{lhs}: {shape} = {n.op}{tail}")
            else:
                args = ", ".join(_call_arguments(n, names))
                attrs = "".join(f", {k}={_fmt_attr(v)}" for k, v in sorted(n.attrs.items()))
                lines.append(f"{lhs}: {shape} = {n.op}({args}{attrs}){tail}")
        return "\n".join(lines)

    __str__ = dump

    def __repr__(self):
        return f"<Graph {len(self.nodes)} nodes, {len(self.timesteps)} time steps>"


def _call_arguments(node, names):
    """Input names in argument order, with scalar arguments (``2.0``) in their places."""
    literals = dict(node.literals or ())
    inputs = iter(node.inputs)
    total = len(node.inputs) + len(literals)
    return [repr(literals[k]) if k in literals else names[next(inputs).id] for k in range(total)]


def _fmt_attr(v):
    if hasattr(v, "shape") and getattr(v, "ndim", 0) > 0:
        return f"array{tuple(v.shape)}"
    return repr(v)


def _node_of(t):
    if t is None or isinstance(t, Node):
        return t
    return getattr(t, "_node", None)


# -- recording context -----------------------------------------------------

DECOMPOSED = [0]  # nesting depth of decomposed() blocks (read by the losses and by models)


@contextlib.contextmanager
def decomposed():
    """Record every elementary op, even where a fused primitive would run.

    Train fused, look decomposed: inside this block ``cross_entropy`` records
    ``log_softmax``, ``pick``, ``neg`` instead of one fused node, and the
    recurrent layers of ``tinygraph.models`` (same parameters) record the
    textbook per-step, per-gate graph that the diagrams and the stepper show
    instead of their fused kernels. Both record the same numbers (tested).
    """
    DECOMPOSED[0] += 1
    try:
        yield
    finally:
        DECOMPOSED[0] -= 1


@contextlib.contextmanager
def scope(name: str):
    """Nest a module path: nodes created inside carry ``scope="outer.name"``."""
    st = STATE
    st.scopes.append(str(name))
    old = st.scope_text
    st.scope_text = ".".join(s for s in st.scopes if s)
    try:
        yield
    finally:
        st.scopes.pop()
        st.scope_text = old


@contextlib.contextmanager
def timestep(t):
    """Tag nodes created inside with time step ``t`` (the recurrence driver calls this).

    Entering ``t`` restarts its ordinal counters, so a second recording of the
    same cell numbers step t alike. Re-entering ``t`` within one recording (a
    readout pass) therefore repeats ordinals: folding tells such nodes apart by
    their parameters and by their occurrence within the step.
    """
    st = STATE
    old = st.timestep
    st.timestep = t
    st.counters[t] = {}
    try:
        yield
    finally:
        st.timestep = old


@contextlib.contextmanager
def _override_context(scope_text, step):
    """Used by backward(create_graph=True): backward nodes carry backward(scope)."""
    st = STATE
    _start_backward_ordinals(st, scope_text, step)
    old_scope, old_step, old_scopes = st.scope_text, st.timestep, st.scopes
    st.scope_text, st.timestep, st.scopes = scope_text, step, [scope_text]
    try:
        yield
    finally:
        st.scope_text, st.timestep, st.scopes = old_scope, old_step, old_scopes


def _start_backward_ordinals(st, scope_text, step):
    """Start this walk's counters of ``scope_text`` at ``step`` on a base shared by every step.

    Backward nodes fold by ``(scope, ordinal)`` like forward ones, so every
    step of one recording must count its ``backward(...)`` nodes from the same
    place. A walk that simply went on counting would start each step where the
    previous recording of the same graph left it (a different place per step,
    as the last and first steps record fewer nodes): a second drawing of the
    backward graph then folds into a different circuit. The base lies above
    whatever an earlier recording left at any step, so two recordings held at
    once (``backward(create_graph=True)`` twice) still never share an identity.
    """
    if st.backward_block != st.grad_block:  # the first node of a new walk
        st.backward_block = st.grad_block
        st.backward_bases = {}
        st.backward_started = set()
    if (scope_text, step) in st.backward_started:
        return
    st.backward_started.add((scope_text, step))
    counters = st.counters.setdefault(step, {})
    for key in ((scope_text, False), (scope_text, True)):
        base = st.backward_bases.get(key)
        if base is None:
            base = st.backward_bases[key] = max(c.get(key, 0) for c in st.counters.values())
        counters[key] = base


def current_scope() -> str:
    """The module scope new nodes are recorded under (``""`` at the top)."""
    return STATE.scope_text


def current_timestep():
    """The time step new nodes are recorded at (None outside ``tg.timestep``)."""
    return STATE.timestep


def is_grad_enabled() -> bool:
    """True unless inside ``tg.no_grad()``: whether ops are recorded."""
    return STATE.grad_enabled


class _GradMode:
    def __init__(self, enabled):
        self.enabled = enabled

    def __enter__(self):
        st = STATE
        self.prev = st.grad_enabled, st.grad_block
        st.grad_enabled = self.enabled
        st.grad_block = next(_grad_blocks)  # restored on exit: a no_grad() inside a walk leaves it one walk

    def __exit__(self, *exc):
        STATE.grad_enabled, STATE.grad_block = self.prev

    def __call__(self, fn):  # usable as a decorator too
        import functools

        @functools.wraps(fn)
        def wrapper(*a, **k):
            with _GradMode(self.enabled):
                return fn(*a, **k)

        return wrapper


def no_grad():
    """Context manager / decorator: ops inside record nothing."""
    return _GradMode(False)


def enable_grad():
    """Context manager / decorator: turn recording back on inside no_grad."""
    return _GradMode(True)

