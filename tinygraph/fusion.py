"""Trace-time fusion: replace recorded subgraphs by an equivalent fused primitive.

A model records its ops at whatever granularity it likes: every gate of an
LSTM step, so the diagrams and the stepper show them. ``trace`` flattens
that graph into a schedule to replay, and before it does, it looks for the
subgraphs registered here and swaps each for its replacement, which
computes the same outputs from the same inputs with fewer, larger
primitives (and a closed-form VJP). Only the replayed schedule changes; the
eager graph, its diagrams and its gradients stay as recorded.

``register_fusion(name, pattern, replacement, example_inputs)``:

* ``pattern(*tensors)`` records the ops to find (one output or a tuple);
* ``replacement(*tensors)`` records what runs instead, with the same outputs;
* ``example_inputs``: arrays with which ``pattern`` is first recorded. A
  match is found by structure (same primitives wired the same way, from an
  anchor at the pattern's first output); the pattern is then recorded again
  at the matched inputs' shapes and dtypes, and must then agree exactly,
  attributes (slice bounds, axes) and literal constants included.

A match is used only when its inner nodes feed nothing outside it (a value
read elsewhere, a gate someone logs, keeps the decomposed ops), and when no
input of it is computed from one of its own outputs (one fused node would
then close a cycle).
"""
from __future__ import annotations

import heapq
import itertools

import numpy as np

from .graph import STATE, Graph, enable_grad
from .tensor import Tensor

__all__ = ["register_fusion", "fusions", "fuse"]

_FUSIONS: dict = {}
_MAX_RECORDINGS = 32  # per fusion
_ARGUMENT = Tensor(np.zeros(0))  # stands for a node argument in a recording's ``saved``


class _Recording:
    """A function recorded on placeholder inputs: its op nodes, placeholders and outputs."""

    def __init__(self, fn, arrays):
        # a recording of its own: no host reads reported to a running trace, and the
        # caller's scope, time step and ordinal counters (the folding's node identities) untouched
        st = STATE
        saved = st.host_reads, st.scopes, st.scope_text, st.timestep, st.counters
        st.host_reads, st.scopes, st.scope_text, st.timestep, st.counters = None, [], "", None, {None: {}}
        try:
            leaves = [Tensor(np.asarray(a) if not hasattr(a, "dtype") else a) for a in arrays]
            for leaf in leaves:
                leaf.requires_grad = True
                leaf._leaf_node()
            with enable_grad():
                outputs = fn(*leaves)
        finally:
            st.host_reads, st.scopes, st.scope_text, st.timestep, st.counters = saved
        outputs = tuple(outputs) if isinstance(outputs, (tuple, list)) else (outputs,)
        self.placeholders = {leaf._node: k for k, leaf in enumerate(leaves)}
        self.outputs = [o._node for o in outputs]
        self.graph = Graph.from_outputs(*outputs)
        self.ops = [n for n in self.graph.nodes if n.prim is not None]
        # per output, the input positions it does not depend on (see _closes_cycle)
        self.independent = []
        for out in self.outputs:
            reached = set(Graph.from_outputs(out).nodes)
            self.independent.append([k for p, k in self.placeholders.items() if p not in reached])
        stray = [n for n in self.graph.nodes if n.prim is None and n not in self.placeholders]
        if stray or None in self.outputs or any(o in self.placeholders for o in self.outputs):
            raise ValueError("register_fusion: a pattern or replacement must compute every output with ops "
                             "from its inputs only (no constants made inside, no input returned as it is)")
        # only the structure is kept: a recording at a large model's shapes holds no arrays
        for n in self.graph.nodes:
            n.value = n.residuals = None
            if n.saved is not None:
                n.saved = tuple(_ARGUMENT if isinstance(a, Tensor) else a for a in n.saved)


class Fusion:
    """One registered rewrite (see the module docstring)."""

    def __init__(self, name, pattern, replacement, example_inputs):
        self.name, self.pattern, self.replacement = name, pattern, replacement
        self.example_inputs = example_inputs if callable(example_inputs) else list(example_inputs)
        self._recordings = {}  # (kind, signature) -> _Recording at those shapes and dtypes
        self.anchor_prim = None  # the primitive of the pattern's first output, once recorded
        if not callable(example_inputs):
            self._recording("replacement", _signature_of(self.example_inputs))

    def _recording(self, kind, signature):
        key = (kind, tuple(signature))
        rec = self._recordings.get(key)
        if rec is None:
            fn = self.pattern if kind == "pattern" else self.replacement
            # inputs of 0.5: no op of a cell's pattern warns on them (no log(0), no 0/0)
            rec = _Recording(fn, [np.full(s, 0.5, d) for s, d in signature])
            if kind == "pattern":
                self.anchor_prim = rec.outputs[0].prim
            else:
                expected = len(self._recording("pattern", signature).outputs)
                if len(rec.outputs) != expected:
                    raise ValueError(f"register_fusion({self.name!r}): the replacement returns "
                                     f"{len(rec.outputs)} outputs, the pattern {expected}")
            if len(self._recordings) >= _MAX_RECORDINGS:  # e.g. one per sequence length seen: keep the newest
                del self._recordings[next(iter(self._recordings))]
            self._recordings[key] = rec
        return rec

    def match(self, anchor, taken, consumers):
        """A match with the pattern's first output at ``anchor``, or None.

        Returns (signature, binding: input position -> node, the matched
        nodes of the pattern's outputs, all matched nodes).
        """
        examples = self.example_inputs(anchor) if callable(self.example_inputs) else self.example_inputs
        if examples is None:
            return None
        found = _match_from(self._recording("pattern", _signature_of(examples)), anchor, False, taken, consumers)
        if found is None:
            return None
        signature = _signature(found[0])
        rec = self._recording("pattern", signature)
        found = _match_from(rec, anchor, True, taken, consumers)
        if found is None:
            return None
        binding, mapping = found
        outputs = [mapping[o] for o in rec.outputs]
        if _closes_cycle(rec, binding, outputs):
            return None
        return signature, binding, outputs, set(mapping.values())


def _closes_cycle(rec, binding, outputs):
    """Whether an input of the match is computed from one of its outputs that does not depend on it.

    One fused node takes all the inputs and gives all the outputs, so such a
    path outside the match would become a cycle. Leaves (parameters,
    inputs) are computed from nothing, so only computed inputs are searched.
    """
    for out, independent in zip(outputs, rec.independent):
        for k in independent:
            start = binding[k]
            if start.prim is None:
                continue
            seen, stack = set(), [start]
            while stack:
                node = stack.pop()
                if node is out:
                    return True
                if node not in seen:
                    seen.add(node)
                    stack.extend(node.inputs)
    return False


def register_fusion(name, pattern, replacement, example_inputs):
    """Register a trace-time rewrite of the ops ``pattern`` records into those of ``replacement``.

    Both take the same Tensors and return the same outputs (to float
    tolerance: the models test theirs against the decomposed ops). See the
    module docstring for how matches are found; ``trace(..., fuse=False)``
    turns all fusions off.
    """
    if not callable(pattern) or not callable(replacement):
        raise TypeError("register_fusion: pattern and replacement must be functions of Tensors")
    _FUSIONS[name] = Fusion(name, pattern, replacement, example_inputs)
    return _FUSIONS[name]


def fusions():
    """The registered fusions, name -> Fusion."""
    return dict(_FUSIONS)


def _signature(binding):
    """(shape, dtype) of each bound input, in the pattern's argument order."""
    return [(tuple(binding[k].shape), np.dtype(binding[k].dtype)) for k in range(len(binding))]


def _signature_of(arrays):
    return [(tuple(np.shape(a)), np.asarray(a).dtype) for a in arrays]


def _match_forward(rec, mapping, binding, exact, taken, consumers):
    """Map the pattern ops the anchor does not reach (another output's own ops) through the
    consumers of nodes already matched, binding inputs met only there; False when one has no
    counterpart."""
    matched = set(mapping.values())
    remaining = [p for p in rec.ops if p not in mapping]
    while remaining:
        progress = False
        for p in list(remaining):
            inputs, ready = [], True
            for i in p.inputs:
                k = rec.placeholders.get(i)
                if i in mapping:
                    inputs.append(mapping[i])
                elif k is not None:
                    inputs.append(binding.get(k))  # None: bound below, from the counterpart
                else:
                    ready = False  # an op of the pattern not matched yet
            known = [i for i in inputs if i is not None]
            if not ready or not known:
                continue
            for t in consumers.get(known[0], ()):
                if (t.prim is p.prim and t not in taken and t not in matched and len(t.inputs) == len(inputs)
                        and all(a is b for a, b in zip(t.inputs, inputs) if b is not None)
                        and _same_arguments(p, t, exact)):
                    for i, a, b in zip(p.inputs, t.inputs, inputs):
                        if b is None and binding.setdefault(rec.placeholders[i], a) is not a:
                            return False
                    mapping[p] = t
                    matched.add(t)
                    remaining.remove(p)
                    progress = True
                    break
            else:
                return False
        if not progress:
            return False
    return True


def _match_from(rec, anchor, exact, taken, consumers):
    """Match ``rec`` with its first output at ``anchor``: (binding, node map) or None.

    The anchor's ancestry is matched walking inputs; pattern ops it does not
    reach (another output's own ops) are then found among the consumers.
    """
    mapping, binding = {}, {}
    stack = [(rec.outputs[0], anchor)]
    while stack:
        p, t = stack.pop()
        k = rec.placeholders.get(p)
        if k is not None:
            if binding.setdefault(k, t) is not t:
                return None
            continue
        if p in mapping:
            if mapping[p] is not t:
                return None
            continue
        if t.prim is not p.prim or t in taken or len(t.inputs) != len(p.inputs) or not _same_arguments(p, t, exact):
            return None
        mapping[p] = t
        stack.extend(zip(p.inputs, t.inputs))
    if len(mapping) != len(rec.ops) and not _match_forward(rec, mapping, binding, exact, taken, consumers):
        return None
    if len(binding) != len(rec.placeholders) or len(mapping) != len(rec.ops):
        return None
    if len({id(t) for t in mapping.values()}) != len(mapping):
        return None
    if not exact:
        return binding, mapping
    for p, t in mapping.items():
        if tuple(p.shape) != tuple(t.shape) or p.dtype != t.dtype:
            return None
    return binding, mapping


def _same_arguments(p, t, exact):
    """The same argument kinds (node or literal), and with ``exact`` the same literals and attributes."""
    if len(p.saved) != len(t.saved):
        return False
    for a, b in zip(p.saved, t.saved):
        if isinstance(a, Tensor) != isinstance(b, Tensor):
            return False
        if exact and not isinstance(a, Tensor) and not _equal(a, b):
            return False
    if not exact:
        return set(p.attrs) == set(t.attrs)
    return p.attrs.keys() == t.attrs.keys() and all(_equal(v, t.attrs[k]) for k, v in p.attrs.items())


def _equal(a, b):
    if type(a) is not type(b):
        return False
    if isinstance(a, np.ndarray):
        return a.shape == b.shape and a.dtype == b.dtype and bool(np.array_equal(a, b))
    try:
        return bool(a == b)
    except (TypeError, ValueError):  # e.g. a tuple holding arrays
        return repr(a) == repr(b)


class SplicedNode:
    """An op of a replacement, wired into the traced graph (what the schedule reads)."""

    __slots__ = ("id", "op", "prim", "inputs", "saved", "attrs", "shape", "dtype")

    def __init__(self, template, inputs):
        self.id = -next(_spliced_ids)  # never a recorded node's id
        self.op, self.prim, self.saved, self.attrs = template.op, template.prim, template.saved, template.attrs
        self.shape, self.dtype, self.inputs = template.shape, template.dtype, inputs


_spliced_ids = itertools.count(1)


def fuse(nodes, outputs):
    """Apply the registered fusions to ``nodes`` (a topological order) whose results are ``outputs``.

    Returns ``(nodes, aliases, counts)``: the new topological order, the ids
    of replaced output nodes -> the nodes now computing their values, and
    fusion name -> matches used.
    """
    if not _FUSIONS:
        return nodes, {}, {}
    consumers, position = {}, {}
    for k, n in enumerate(nodes):
        position[n] = k
        for i in n.inputs:
            consumers.setdefault(i, []).append(n)
    kept_outside = set(outputs)
    removed, aliases, counts, spliced = set(), {}, {}, []
    for fusion in _FUSIONS.values():
        for anchor in nodes:
            if anchor.prim is None or anchor in removed or (
                    fusion.anchor_prim is not None and anchor.prim is not fusion.anchor_prim):
                continue
            try:
                found = fusion.match(anchor, removed, consumers)
            except (ValueError, TypeError, IndexError):
                continue  # the pattern does not run at these shapes (e.g. a broadcast input): no match
            if found is None:
                continue
            signature, binding, pattern_outputs, matched = found
            inner = matched.difference(pattern_outputs)
            if any(n in kept_outside for n in inner) or any(
                    c not in matched for n in inner for c in consumers.get(n, ())):
                continue  # an inner value is read elsewhere: keep the recorded ops
            try:
                replacement = fusion._recording("replacement", signature)
            except (ValueError, TypeError, IndexError, NotImplementedError):
                continue  # the replacement does not take these shapes: keep the recorded ops
            if any(tuple(new.shape) != tuple(old.shape) or new.dtype != old.dtype
                   for old, new in zip(pattern_outputs, replacement.outputs)):
                continue  # not the same outputs at these shapes: keep the recorded ops
            copies = {p: binding[k] for p, k in replacement.placeholders.items()}
            last = max(position[n] for n in matched)
            for template in replacement.ops:
                copies[template] = SplicedNode(template, tuple(copies[i] for i in template.inputs))
                spliced.append((last, copies[template]))
            for old, new in zip(pattern_outputs, replacement.outputs):
                aliases[old.id] = copies[new]
            removed |= matched
            counts[fusion.name] = counts.get(fusion.name, 0) + 1
    if not removed:
        return nodes, {}, {}
    order = _stable_order(nodes, removed, spliced, aliases)
    if order is None:  # two matches that only together close a cycle: replay the recorded ops
        return nodes, {}, {}
    return order, aliases, counts


def _stable_order(nodes, removed, spliced, aliases):
    """A topological order of the kept and spliced nodes, as close to the recorded one as the edges allow
    (None if there is none).

    A consumer of a fused output may have been recorded before the last node
    of the match, so the nodes are re-sorted (Kahn's algorithm, earliest
    recorded first), reading an aliased input as the node that now computes it.
    """
    key = {n: (k, 0) for k, n in enumerate(nodes) if n not in removed}
    key.update({n: (last, 1 + j) for j, (last, n) in enumerate(spliced)})
    waiting, users = {}, {}
    for n in key:
        waiting[n] = len(n.inputs)
        for i in n.inputs:
            users.setdefault(aliases.get(i.id, i), []).append(n)
    heap = [(key[n], n.id, n) for n, w in waiting.items() if w == 0]
    heapq.heapify(heap)
    order = []
    while heap:
        _, _, n = heapq.heappop(heap)
        order.append(n)
        for u in users.get(n, ()):
            waiting[u] -= 1
            if waiting[u] == 0:
                heapq.heappush(heap, (key[u], u.id, u))
    return order if len(order) == len(key) else None  # None: the fused nodes would form a cycle
