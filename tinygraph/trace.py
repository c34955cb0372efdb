"""Trace a function once, replay it fast.

``trace(fn, *example_inputs, params=...)`` runs ``fn`` eagerly one time with
recording on and flattens the recorded graph into a schedule: a list of
``(primitive, argument slots, attributes, output slot)``. Replaying the
schedule on new arrays runs the same primitives' forwards and the same VJP
rules (on raw arrays) without creating a Tensor or a Node per op, which is
where most of the eager overhead on small arrays goes.

Like any tracer, it records one path through the Python code: control flow
that depends on values is frozen, and constants that ``fn`` creates inside
(masks, initial zeros) are baked into the schedule. Parameters are read live
at every replay, so an optimizer can update them between calls.

Floating-point inputs are differentiated; integer inputs (token ids) are
plain inputs with gradient ``None``, read at every replay when ``fn`` passes
them to an op as Tensors (``tg.take(table, ids)``; ``x[ids]`` bakes the ids
into the schedule as an index). An input that ``fn`` never reads gets
``None`` from ``backward``.
"""
from __future__ import annotations

import numpy as np

from .graph import STATE, Graph, enable_grad
from .ops import SparseGrad, sum_to
from .tensor import Tensor

__all__ = ["trace", "CompiledFunction"]

_SLOT, _SCALAR = 0, 1


class CompiledFunction:
    """A traced function: ``forward(*arrays)`` then ``backward(*grad_outputs)``."""

    def __init__(self, graph, input_nodes, param_tensors, output_nodes, constants):
        index = {n.id: k for k, n in enumerate(graph.nodes)}
        self.num_slots = len(graph.nodes)
        # an input fn never read is in no slot (None): it is checked and ignored
        self.input_slots = [index.get(n.id) for n in input_nodes]
        self.input_shapes = [tuple(n.shape) for n in input_nodes]
        self.params = list(param_tensors)
        self.param_slots = [index[p._node.id] if p._node is not None and p._node.id in index else None
                            for p in self.params]
        self.output_slots = [index[n.id] for n in output_nodes]
        self.constants = [(index[nid], value) for nid, value in constants.items() if nid in index]
        differentiable = {s for s, n in zip(self.input_slots, input_nodes) if s is not None and n.requires_grad}
        differentiable |= {s for s in self.param_slots if s is not None}
        self.schedule = []
        self.shapes = [tuple(n.shape) for n in graph.nodes]
        for n in graph.nodes:
            if n.prim is None:
                continue
            spec, node_inputs = [], iter(n.inputs)
            for arg in n.saved:
                if isinstance(arg, Tensor):
                    spec.append((_SLOT, index[next(node_inputs).id]))
                else:
                    spec.append((_SCALAR, arg))
            out = index[n.id]
            if any(kind == _SLOT and k in differentiable for kind, k in spec):
                differentiable.add(out)
            needs = tuple(kind == _SLOT and k in differentiable for kind, k in spec)
            self.schedule.append((n.prim, tuple(spec), n.attrs, out, needs))
        self.values = self.residuals = None

    def __len__(self):
        return len(self.schedule)

    def forward(self, *inputs):
        """Run the schedule on new input arrays (or Tensors); returns raw arrays."""
        if len(inputs) != len(self.input_slots):
            raise TypeError(f"compiled function takes {len(self.input_slots)} inputs, got {len(inputs)}")
        values = [None] * self.num_slots
        for slot, value in self.constants:
            values[slot] = value
        for slot, p in zip(self.param_slots, self.params):
            if slot is not None:
                values[slot] = p.data
        for slot, shape, x in zip(self.input_slots, self.input_shapes, inputs):
            x = x.data if isinstance(x, Tensor) else x
            if tuple(x.shape) != shape:
                raise ValueError(f"compiled function: input has shape {tuple(x.shape)}, traced with {shape}; trace again for new shapes")
            if slot is not None:
                values[slot] = x
        residuals = {}  # slot -> what a fused primitive kept for its VJP
        for prim, spec, attrs, out, _ in self.schedule:
            args = [values[v] if kind == _SLOT else v for kind, v in spec]
            if prim.residuals:
                values[out], residuals[out] = prim.forward(*args, **attrs)
            else:
                values[out] = prim.forward(*args, **attrs)
        self.values, self.residuals = values, residuals
        outs = [values[s] for s in self.output_slots]
        return outs[0] if len(outs) == 1 else tuple(outs)

    __call__ = forward

    def backward(self, *grad_outputs):
        """VJP of the last forward: returns (input grads, param grads) as arrays
        (``None`` for integer inputs and for inputs or parameters fn never read)."""
        from .autodiff import _accumulate

        values = self.values
        if values is None:
            raise RuntimeError("compiled function: call forward() before backward()")
        grads, owned = {}, set()  # slot -> gradient, as in the eager walk
        for slot, g in zip(self.output_slots, grad_outputs):
            _accumulate(grads, owned, slot, g.data if isinstance(g, Tensor) else g)
        old_sparse, STATE.sparse_grads = STATE.sparse_grads, True
        try:
            for prim, spec, attrs, out, needs in reversed(self.schedule):
                g = grads.get(out)
                if g is None or not any(needs):
                    continue
                if type(g) is SparseGrad:
                    g = grads[out] = g.dense()
                args = [values[v] if kind == _SLOT else v for kind, v in spec]
                if prim.residuals:
                    in_grads = prim.vjp(g, values[out], needs, *args, residuals=self.residuals[out], **attrs)
                else:
                    in_grads = prim.vjp(g, values[out], needs, *args, **attrs)
                for (kind, slot), need, ig in zip(spec, needs, in_grads):
                    if not need or ig is None:
                        continue
                    if tuple(ig.shape) != self.shapes[slot]:
                        ig = sum_to(ig, self.shapes[slot])
                    _accumulate(grads, owned, slot, ig)
        finally:
            STATE.sparse_grads = old_sparse

        def result(slot):
            g = grads.get(slot) if slot is not None else None
            return g.dense() if type(g) is SparseGrad else g

        return [result(s) for s in self.input_slots], [result(s) for s in self.param_slots]


def trace(fn, *example_inputs, params=()):
    """Trace ``fn(*inputs)`` (Tensors in, Tensor or tuple of Tensors out) into a CompiledFunction.

    ``params`` are the Tensors (e.g. ``model.parameters()``) that ``fn`` reads
    and that you want gradients for; they are read live at each replay.
    """
    leaves = []
    for x in example_inputs:
        data = x.data if isinstance(x, Tensor) else x
        if not hasattr(data, "dtype"):
            data = np.asarray(data)
        leaf = Tensor(data, requires_grad=data.dtype.kind in "fc")  # integer ids are not differentiated
        leaf._leaf_node()  # every input gets a node, even one fn never reads
        leaves.append(leaf)
    with enable_grad():
        outputs = fn(*leaves)
    outputs = outputs if isinstance(outputs, (tuple, list)) else (outputs,)
    graph = Graph.from_outputs(*outputs)
    input_ids = {x._node.id for x in leaves}
    if not params:  # default: every parameter-like leaf the function read
        params = [n.tensor for n in graph.nodes
                  if n.op == "leaf" and n.id not in input_ids and n.tensor is not None]
    constants = {n.id: n.tensor.data for n in graph.nodes
                 if n.prim is None and n.tensor is not None
                 and not any(n is leaf._node for leaf in leaves)
                 and not any(n is p._node for p in params)}
    return CompiledFunction(graph, [x._node for x in leaves], params,
                            [o._node for o in outputs], constants)
