"""Trace a function once, replay it fast.

``trace(fn, *example_inputs, params=...)`` runs ``fn`` eagerly one time with
recording on and flattens the recorded graph into a schedule: a list of
``(primitive, argument slots, attributes, output slot)``. Replaying the
schedule on new arrays runs the same primitives' forwards and the same VJP
rules (on raw arrays) without creating a Tensor or a Node per op, which is
where most of the eager overhead on small arrays goes.

Before flattening, the registered fusions (``tinygraph.fusion``) replace
the subgraphs they match: a decomposed LSTM/GRU/RNN sweep replays its fused
sequence kernel. ``fuse=False`` keeps every recorded op.

Like any tracer, it records one path through the Python code: control flow
that depends on values is frozen, and constants that ``fn`` creates inside
(masks, initial zeros) are baked into the schedule. Parameters are read live
at every replay, so an optimizer can update them between calls; so are
parameters left out of ``params`` (frozen ones, loaded anew or not).
``.detach()`` and ``.argmax()`` are recorded ops while a trace runs, so a
replay recomputes them from its own inputs.

Floating-point inputs are differentiated; integer inputs (token ids,
targets) are plain inputs with gradient ``None``. Every op applied to an
input is recorded while tracing, integers included (``targets.reshape(-1)``,
``targets != 0``, ``tg.where(mask, ...)``, ``x[ids]`` with a Tensor ``ids``,
an ``Embedding`` lookup), so each replay reads the new values. An input that
``fn`` never reads gets ``None`` from ``backward``.

Values read on the host shape the schedule itself: ``int(t.max())``,
``.numpy()``, ``.item()``, sequence ``lengths=`` turned into masks, a Tensor
inside a tuple index, an op run under ``no_grad``. The inputs such a value
came from are held to their traced values: a compiled function refuses
others, and ``traced_step`` traces again for each new value. So is an
integer or boolean input that no op consumes (a tracer cannot tell it from
one read through ``.data``); a float input ``fn`` never reads is ignored.
A value read on the host that came from a parameter is refused at trace
time: a parameter changes at every step, so it cannot key a schedule.
Reading ``.data`` directly is not seen. The range checks of ids and targets
run at trace time only: on replay a negative id wraps around as in NumPy.
"""
from __future__ import annotations

import math
import operator
import warnings

import numpy as np

from . import backend, fusion
from .autodiff import _accumulate, _as_dtype, _owned, _run_hooks
from .creation import generator
from .graph import STATE, Graph, enable_grad
from .ops import MATMUL, SparseGrad, sum_to
from .tensor import Tensor

__all__ = ["trace", "traced_step", "CompiledFunction", "TracedStep"]

_SLOT, _SCALAR = 0, 1


class CompiledFunction:
    """A traced function: ``forward(*arrays)`` then ``backward(*grad_outputs)``."""

    def __init__(self, graph, input_nodes, param_tensors, output_nodes, constants, input_grads=True,
                 example_inputs=None, host_read=(), aliases=None, fused=None):
        index = {n.id: k for k, n in enumerate(graph.nodes)}
        # a fused-away node's value is the one its replacement computes (tinygraph.fusion)
        for old_id, new in (aliases or {}).items():
            index[old_id] = index[new.id]
        self.fused = dict(fused or {})  # fusion name -> matches replaced
        self.num_slots = len(graph.nodes)
        # an input fn never read is in no slot (None): it is checked and ignored
        self.input_slots = [index.get(n.id) for n in input_nodes]
        self.input_shapes = [tuple(n.shape) for n in input_nodes]
        self.input_dtypes = [np.dtype(n.dtype) for n in input_nodes]
        # inputs whose values were read on the host while tracing (``host_read``: .numpy(),
        # .item(), lengths, a Tensor index), and integer/bool inputs no op consumed (read
        # on the host some other way, or ignored): their values are part of the schedule,
        # so forward() checks them
        self.value_inputs = {k: backend.as_host(example_inputs[k]).copy()
                             for k, (slot, n) in enumerate(zip(self.input_slots, input_nodes))
                             if example_inputs is not None
                             and (k in host_read or (slot is None and np.dtype(n.dtype).kind in "iub"))}
        self.params = list(param_tensors)
        self.param_slots = [index[p._node.id] if p._node is not None and p._node.id in index else None
                            for p in self.params]
        self.output_slots = [index[n.id] for n in output_nodes]
        self.constants = [(index[nid], value) for nid, value in constants.items() if nid in index]
        # without input_grads only the parameters are differentiated: no dX GEMM for a training step
        differentiable = {s for s, n in zip(self.input_slots, input_nodes)
                          if input_grads and s is not None and np.dtype(n.dtype).kind in "fc"}
        # a frozen parameter (requires_grad=False) is read live but not differentiated, as in eager
        differentiable |= {s for s, p in zip(self.param_slots, self.params) if s is not None and p.requires_grad}
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
            self.schedule.append((n.prim, tuple(spec), n.attrs, out, needs, _arguments_getter(spec)))
        produced = {out for _, _, _, out, _, _ in self.schedule}
        self.reverse, kept = self._backward_plan(produced)
        self.forward_plan = self._forward_plan(kept, produced)
        self.values = self.residuals = None

    def __len__(self):
        return len(self.schedule)

    def forward(self, *inputs):
        """Run the schedule on new input arrays (or Tensors); returns raw arrays."""
        if len(inputs) != len(self.input_slots):
            raise TypeError(f"compiled function takes {len(self.input_slots)} inputs, got {len(inputs)}")
        values = [None] * self.num_slots
        for slot, leaf in self.constants:
            values[slot] = leaf.data  # read now: a frozen parameter may have been loaded anew
        for slot, p in zip(self.param_slots, self.params):
            if slot is not None:
                values[slot] = p.data
        inputs = [x.data if isinstance(x, Tensor) else x if hasattr(x, "shape") else np.asarray(x)
                  for x in inputs]
        for slot, shape, dtype, x in zip(self.input_slots, self.input_shapes, self.input_dtypes, inputs):
            if tuple(x.shape) != shape or x.dtype != dtype:
                # a dtype matters too: an integer mask where a boolean one was traced would index
                raise ValueError(f"compiled function: input is {x.dtype}{tuple(x.shape)}, traced with "
                                 f"{dtype}{shape}; trace again for new shapes or dtypes")
            if slot is not None:
                values[slot] = x
        for k, traced in self.value_inputs.items():
            if not np.array_equal(backend.as_host(inputs[k]), traced):
                raise ValueError(f"compiled function: input {k} ({traced.dtype}{traced.shape}) was read as a "
                                 "constant while tracing (its values, e.g. sequence lengths, shaped the schedule) "
                                 "and now differs; trace again, or use traced_step, which traces once per value")
        residuals = {}  # slot -> what a fused primitive kept for its VJP
        for prim, attrs, out, get, frees in self.forward_plan:
            if prim.residuals:
                values[out], residuals[out] = prim.forward(*get(values), **attrs)
            else:
                values[out] = prim.forward(*get(values), **attrs)
            for slot in frees:  # read for the last time, and no VJP reads it: free it now
                values[slot] = None
        self.values, self.residuals = values, residuals
        outs = [values[s] for s in self.output_slots]
        return outs[0] if len(outs) == 1 else tuple(outs)

    __call__ = forward

    def _backward_plan(self, produced):
        """The reverse schedule: the entries with something to differentiate, last first.

        Each entry carries the slots and shapes of the arguments that receive a
        gradient (found once, here). One rewrite: when two or more matmuls
        ``a_t @ b`` share a 2-D right operand ``b`` that needs a gradient (a
        weight read at every time step), their gradients for ``b`` are not
        formed one by one (T small products and T - 1 adds). The pairs
        ``(a_t, g_t)`` are kept, and once every consumer of ``b`` has run the
        same matmul VJP runs once on the stacked pairs, because
        ``sum_t a_t^T g_t = [a_1; ...; a_T]^T [g_1; ...; g_T]``: one GEMM.
        """
        shapes = self.shapes
        right_uses = {}  # slot b -> positions of the matmuls a @ b that need b's gradient
        for k, (prim, spec, attrs, out, needs, get) in enumerate(self.schedule):
            if prim is MATMUL and needs[1] and len(shapes[spec[0][1]]) == 2 and len(shapes[spec[1][1]]) == 2:
                right_uses.setdefault(spec[1][1], []).append(k)
        batched = {b for b, uses in right_uses.items() if len(uses) >= 2}
        reverse, kept = [], set(batched)  # kept: the slots a VJP reads (its arguments and output)
        for k in range(len(self.schedule) - 1, -1, -1):
            prim, spec, attrs, out, needs, get = self.schedule[k]
            if out in batched:  # every consumer of ``out`` has run: add its batched gradient first
                reverse.append((None, None, out, None, None, None, None))
            deferred = None
            if prim is MATMUL and spec[1][1] in batched and needs[1]:
                deferred, needs = (spec[0][1], spec[1][1]), (needs[0], False)
            receivers = tuple((i, v, shapes[v]) for i, ((_, v), need) in enumerate(zip(spec, needs)) if need)
            if receivers or deferred:
                reverse.append((prim, attrs, out, needs, get, receivers, deferred))
                kept.add(out)
                kept.update(v for kind, v in spec if kind == _SLOT)
        # a batched leaf (a parameter, an input) has no producer: its gradient is added at the end
        reverse.extend((None, None, b, None, None, None, None) for b in sorted(batched - produced))
        return reverse, kept

    def _forward_plan(self, kept, produced):
        """The schedule for ``forward``, each entry with the slots to free once it has run.

        A value that no VJP reads (``kept`` lists those that one does) and
        that is not an output is dropped after its last use in the forward,
        so a replay holds what the backward needs and no more, as the eager
        graph does.
        """
        last_use = {}
        for k, (_, spec, _, out, _, _) in enumerate(self.schedule):
            last_use[out] = k  # an output nothing reads is freed right away
            for kind, v in spec:
                if kind == _SLOT:
                    last_use[v] = k
        outputs, frees = set(self.output_slots), {}
        for slot, k in last_use.items():
            if slot in produced and slot not in kept and slot not in outputs:
                frees.setdefault(k, []).append(slot)
        return [(prim, attrs, out, get, tuple(frees.get(k, ())))
                for k, (prim, _, attrs, out, _, get) in enumerate(self.schedule)]

    def backward(self, *grad_outputs, retain_values=False):
        """VJP of the last forward: returns (input grads, param grads) as arrays
        (``None`` for integer inputs and for inputs or parameters fn never read).

        Like ``loss.backward()`` on a graph, it frees the forward's values as
        it goes (each once its rule has run), so memory falls during the
        backward; run ``forward`` again before the next ``backward``, or pass
        ``retain_values=True`` to call it again with other ``grad_outputs``.
        """
        values = self.values
        if values is None:
            raise RuntimeError("compiled function: call forward() before backward() (a backward without "
                               "retain_values=True frees the forward's values)")
        residuals, free = self.residuals, not retain_values
        grads, owned = {}, set()  # slot -> gradient, as in the eager walk
        for slot, g in zip(self.output_slots, grad_outputs):
            _accumulate(grads, owned, slot, g.data if isinstance(g, Tensor) else g)
        pending = {}  # slot b -> [(a_t, g_t)] of its deferred matmuls a_t @ b
        old_sparse, STATE.sparse_grads = STATE.sparse_grads, True
        try:
            for prim, attrs, out, needs, get, receivers, deferred in self.reverse:
                if prim is None:  # slot ``out`` has all its deferred matmul pairs: one GEMM
                    pairs = pending.pop(out, None)
                    if pairs:
                        _accumulate(grads, owned, out, _batched_right_grad(pairs, values[out]))
                    continue
                # every consumer of ``out`` has run: its gradient is complete, and read here for the last time
                g = grads.pop(out, None) if free else grads.get(out)
                if g is None:
                    continue
                if type(g) is SparseGrad:
                    g = g.dense()
                if deferred is not None:  # a @ b: b's gradient comes from the batch (see _backward_plan)
                    a_slot, b_slot = deferred
                    pending.setdefault(b_slot, []).append((values[a_slot], g))
                    if not receivers:
                        continue
                if prim.residuals:
                    in_grads = prim.vjp(g, values[out], needs, *get(values), residuals=residuals[out], **attrs)
                else:
                    in_grads = prim.vjp(g, values[out], needs, *get(values), **attrs)
                if free:  # nothing later in the reverse walk reads this output or its residuals
                    values[out] = None
                    residuals.pop(out, None)
                for k, slot, shape in receivers:
                    ig = in_grads[k]
                    if ig is None:
                        continue
                    if ig.shape != shape:
                        ig = ig.reshape(shape) if getattr(ig, "size", -1) == math.prod(shape) else sum_to(ig, shape)
                    prev = grads.get(slot)
                    if prev is None:
                        grads[slot] = ig
                    elif type(prev) is SparseGrad or type(ig) is SparseGrad or slot in owned:
                        _accumulate(grads, owned, slot, ig)
                    else:  # two dense gradients, the common case, inline as in the eager walk
                        grads[slot] = prev + ig
        finally:
            STATE.sparse_grads = old_sparse
            if free:
                self.values = self.residuals = None

        def result(slot):
            g = grads.get(slot) if slot is not None else None
            return g.dense() if type(g) is SparseGrad else g

        def hooked(p, g):   # a parameter's gradient hooks run on its replayed gradient, as in eager
            node = p._node
            return _run_hooks(node, g, False) if g is not None and node is not None and node.hooks else g

        return ([result(s) for s in self.input_slots],
                [hooked(p, result(s)) for p, s in zip(self.params, self.param_slots)])


def _batched_right_grad(pairs, b):
    """sum_t a_t^T g_t for the pairs of matmuls a_t @ b: matmul's VJP once, on the stacked pairs."""
    if len(pairs) == 1:
        a, g = pairs[0]
    else:
        xp = backend.array_module(b)
        a = xp.concatenate([a for a, _ in pairs])
        g = xp.concatenate([g for _, g in pairs])
    return MATMUL.vjp(g, None, (False, True), a, b)[1]


def _arguments_getter(spec):
    """values -> the op's argument tuple: ``operator.itemgetter`` (C) when every argument is a slot."""
    if all(kind == _SLOT for kind, _ in spec):
        slots = [v for _, v in spec]
        if len(slots) == 1:
            only = slots[0]
            return lambda values: (values[only],)
        return operator.itemgetter(*slots)
    return lambda values: tuple(values[v] if kind == _SLOT else v for kind, v in spec)


def trace(fn, *example_inputs, params=(), input_grads=True, fuse=True):
    """Trace ``fn(*inputs)`` (Tensors in, Tensor or tuple of Tensors out) into a CompiledFunction.

    ``params`` are the Tensors (e.g. ``model.parameters()``) that ``fn`` reads
    and that you want gradients for; they are read live at each replay. With
    ``input_grads=False`` backward returns ``None`` for every input and skips
    the work that only the inputs' gradients need. With ``fuse`` (the
    default) the registered fusions (``tinygraph.fusion``) replace the
    subgraphs they match, e.g. a decomposed LSTM sweep by its fused
    sequence kernel; ``.fused`` on the result counts them.
    """
    leaves = []
    for x in example_inputs:
        data = x.data if isinstance(x, Tensor) else x
        if not hasattr(data, "dtype"):
            data = np.asarray(data)
        leaf = Tensor(data)
        # Every input is marked as needing a gradient while tracing, integers too, so that
        # each op on it is recorded (targets.reshape(-1) included) and replays with new
        # values; only floating inputs are differentiated (CompiledFunction).
        leaf.requires_grad = True
        leaf._leaf_node()  # every input gets a node, even one fn never reads
        leaves.append(leaf)
    for p in params:
        # ``p.data = ...`` of a new shape or dtype leaves the old leaf node's record behind, and
        # the schedule takes its shapes from the nodes: give such a parameter a fresh leaf
        node = p._node
        if node is not None and node.prim is None and (tuple(node.shape) != tuple(p.data.shape)
                                                       or node.dtype != p.data.dtype):
            p._renew_leaf()
    old_reads, STATE.host_reads = STATE.host_reads, []
    try:
        with enable_grad():
            outputs = fn(*leaves)
        host_read = _inputs_behind(STATE.host_reads, [leaf._node for leaf in leaves])
    finally:
        STATE.host_reads = old_reads
    outputs = outputs if isinstance(outputs, (tuple, list)) else (outputs,)
    for k, out in enumerate(outputs):
        if not isinstance(out, Tensor) or out._node is None:
            # a constant, or a value cut from the graph (Tensor(x.data)): a replay cannot tell
            # which, and would return the traced value for ever
            raise ValueError(
                f"trace: output {k} ({type(out).__name__}{tuple(getattr(out, 'shape', ()))}) was not computed "
                "by recorded ops (a constant, or made from .data), so a replay would return its traced "
                "value every time; compute it with ops, or run this function eagerly")
    graph = Graph.from_outputs(*outputs)
    hooked = [n for n in graph.nodes if n.hooks and n.prim is not None]
    if hooked:
        raise ValueError(
            f"trace: a gradient hook is registered on an intermediate tensor ({hooked[0].name or hooked[0].op}, "
            f"scope {hooked[0].scope or '<top>'!r}); a replay makes no tensors to call it with. Hooks on "
            "parameters are kept; move the hook there, or run this function eagerly")
    input_ids = {x._node.id for x in leaves}
    if not params:  # default: every parameter-like leaf the function read
        params = [n.tensor for n in graph.nodes
                  if n.op == "leaf" and n.id not in input_ids and n.tensor is not None]
    # the leaf Tensors themselves: a parameter not listed in ``params`` (frozen) is read at each
    # replay, so load_state_dict or .to() after tracing is seen, as in eager
    constants = {n.id: n.tensor for n in graph.nodes
                 if n.prim is None and n.tensor is not None
                 and not any(n is leaf._node for leaf in leaves)
                 and not any(n is p._node for p in params)}
    aliases, fused = {}, {}
    if fuse:
        nodes, aliases, fused = fusion.fuse(graph.nodes, graph.outputs)
        graph = Graph(nodes, graph.outputs)
    return CompiledFunction(graph, [x._node for x in leaves], params,
                            [o._node for o in outputs], constants, input_grads=input_grads,
                            example_inputs=[x.data for x in leaves], host_read=host_read,
                            aliases=aliases, fused=fused)


def _inputs_behind(nodes, input_nodes):
    """Positions of the ``input_nodes`` that any of ``nodes`` was computed from (an iterative walk).

    A value read on the host that came from a parameter cannot key a trace
    (parameters change at every step): that is refused here, by name.
    """
    position = {n.id: k for k, n in enumerate(input_nodes)}
    found, seen, stack = set(), set(), list(nodes)
    while stack:
        node = stack.pop()
        if node.id in seen:
            continue
        seen.add(node.id)
        if node.id in position:
            found.add(position[node.id])
        elif node.prim is None and node.requires_grad:
            raise ValueError(
                f"trace: the function read values computed from "
                f"{repr(node.name) if node.name else 'a parameter'} {tuple(node.shape)} on the host "
                "(.item(), .numpy(), float(...), or an op under no_grad), so a replay would keep the "
                "traced values while the parameter changes; compute it with recorded ops, or run this "
                "function eagerly")
        stack.extend(node.inputs)
    return found


class TracedStep:
    """A loss function traced per input signature; each call is forward + backward.

    ``step(*inputs)`` returns the loss (a Tensor without a graph) and adds the
    gradients to every parameter's ``.grad``, exactly as ``loss.backward()``
    would after an eager call, so optimizers and gradient clipping work
    unchanged. The first call with new input shapes, dtypes or devices traces
    the loss again (``traces`` counts them); later calls replay a flat
    schedule. So does a new value of an integer input that the loss reads on
    the host rather than in an op (sequence ``lengths=``: see ``trace``). At
    most ``max_traces`` schedules are kept (the oldest goes first), with a
    warning the first time: inputs whose shape changes at every call re-trace
    every call and are better run eagerly or padded.

    With ``has_aux=True`` (as in JAX) ``loss_fn`` returns ``(loss, aux)``,
    where ``aux`` is a Tensor, a (nested) tuple or list of Tensors, or None:
    values computed along the way that the caller needs but that are not
    differentiated (a recurrent layer's final state). The step then returns
    ``(loss, aux)`` with ``aux`` rebuilt from the replay, graph-free.

    A loss that draws random numbers from ``tg.generator()`` while it is
    traced (a ``Dropout`` in training mode on the CPU) is refused: the trace
    would replay the same mask at every step. On a GPU, ``Dropout`` draws
    from ``cupy.random``, which this check cannot see: put such a model in
    eval mode (``fit(..., traced=True)`` refuses it by module type).
    """

    def __init__(self, loss_fn, params, max_traces=16, fuse=True, has_aux=False, model=None):
        self.loss_fn = loss_fn
        self.model = model  # its modules' train/eval modes key the schedules (what they record differs)
        self.has_aux = bool(has_aux)
        self.fuse = bool(fuse)
        self.params = list(params)
        if not self.params:
            raise ValueError("traced_step: needs the parameters to differentiate, e.g. model.parameters()")
        self.max_traces = int(max_traces)
        self.compiled = {}  # (shape, dtype, device) per input [+ values read as constants] -> CompiledFunction
        self.value_positions = {}  # signature -> the inputs whose values the schedule depends on
        self.traces = 0
        self._warned_of_evictions = False

    def __call__(self, *inputs):
        compiled, outs = self._replay(inputs)
        loss = outs[0]
        _, grads = compiled.backward(backend.array_module(loss).ones(loss.shape, dtype=loss.dtype))
        compiled.values = compiled.residuals = None  # the step's buffers go back to the allocator now
        handed_out = set()
        for p, g in zip(self.params, grads):
            if g is None:
                continue
            if p.grad is None:
                p.grad = Tensor(_owned(g, p.dtype, handed_out))
            else:
                p.grad = Tensor(p.grad.data + _as_dtype(g, p.dtype))
        return self._result(compiled, outs)

    def evaluate(self, *inputs):
        """The loss (and ``aux``) from the forward replay alone: no backward, ``.grad`` untouched.

        For measuring a validation set with the schedule traced for these
        shapes. A model that records differently in eval mode (teacher
        forcing) needs its own schedule: make the step with ``model=`` so the
        modes are part of the key, or trace a second step in eval mode.
        """
        compiled, outs = self._replay(inputs)
        compiled.values = compiled.residuals = None
        return self._result(compiled, outs)

    def _replay(self, inputs):
        """The schedule for these inputs (traced now if new) and its forward outputs, as a tuple."""
        arrays = [x.data if isinstance(x, Tensor) else x if hasattr(x, "dtype") else np.asarray(x)
                  for x in inputs]
        signature = tuple((tuple(a.shape), a.dtype.str, backend.device_of(a)) for a in arrays)
        # the parameters' shapes, dtypes and which of them are frozen shape the schedule too
        signature += (tuple((p.shape, p.dtype.str, p.requires_grad) for p in self.params),)
        if self.model is not None:
            signature += (module_modes(self.model),)
        key = self._key(signature, arrays)
        compiled = self.compiled.get(key)
        if compiled is None:
            if len(self.compiled) >= self.max_traces:
                if not self._warned_of_evictions:   # once, whatever reserve() did to the limit
                    self._warned_of_evictions = True
                    warnings.warn(
                        f"traced_step: {self.traces + 1} input signatures so far (shapes {key[0][0]}, ...); "
                        "inputs whose shapes (or values read as constants, such as lengths) keep changing "
                        "re-trace at every call. Pad batches to a few fixed shapes and lengths, or call the "
                        "loss eagerly", UserWarning, stacklevel=3)
                del self.compiled[next(iter(self.compiled))]
            compiled = self._trace(arrays)
            self.value_positions[signature] = tuple(sorted(compiled.value_inputs))
            self.compiled[self._key(signature, arrays)] = compiled
        outs = compiled(*arrays)
        return compiled, (outs if isinstance(outs, tuple) else (outs,))

    def _result(self, compiled, outs):
        if self.has_aux:
            return Tensor(outs[0]), _unflatten(compiled.aux_structure, iter(Tensor(a) for a in outs[1:]))
        return Tensor(outs[0])

    @property
    def fused(self):
        """What trace-time fusion replaced in the schedules kept now: fusion name -> matches, summed."""
        return summed_counts(compiled.fused for compiled in self.compiled.values())

    def _key(self, signature, arrays):
        """The cache key: the signature, plus the values of the inputs its schedule read as constants."""
        positions = self.value_positions.get(signature, ())
        if not positions:
            return signature
        return signature + tuple(backend.as_host(arrays[k]).tobytes() for k in positions)

    def _trace(self, arrays):
        structure = []

        def checked(*leaves):
            result = self.loss_fn(*leaves)
            aux_leaves = []
            if self.has_aux:
                if not isinstance(result, tuple) or len(result) != 2:
                    raise ValueError("traced_step(has_aux=True): the loss function must return (loss, aux), "
                                     f"got {type(result).__name__}")
                result, aux = result
                structure.append(_flatten(aux, aux_leaves))
            if not isinstance(result, Tensor) or result.size != 1:
                raise ValueError("traced_step: the loss function must return a scalar Tensor, got "
                                 f"{type(result).__name__}{getattr(result, 'shape', '')}")
            return (result, *aux_leaves) if self.has_aux else result

        self.traces += 1
        before = generator().bit_generator.state
        compiled = trace(checked, *arrays, params=self.params, input_grads=False, fuse=self.fuse)
        if generator().bit_generator.state != before:
            raise ValueError(
                "traced_step: the loss drew random numbers from tg.generator() while it was traced "
                "(a Dropout in training mode?); a replay would reuse the same draws at every step. "
                "Call it eagerly, or turn the randomness off (model.eval(), Dropout(p=0))")
        compiled.aux_structure = structure[0] if structure else None
        return compiled


def summed_counts(counts):
    """{name: count} dicts added up: the fusions of several schedules."""
    total = {}
    for one in counts:
        for name, count in one.items():
            total[name] = total.get(name, 0) + count
    return total


def _flatten(value, leaves):
    """A nested tuple/list of Tensors (or None) -> its structure; the Tensors go to ``leaves``."""
    if value is None:
        return None
    if isinstance(value, Tensor):
        leaves.append(value)
        return Tensor
    if isinstance(value, (tuple, list)):
        return type(value), tuple(_flatten(v, leaves) for v in value)
    raise TypeError("traced_step(has_aux=True): aux must be a Tensor, a tuple or list of Tensors, "
                    f"or None; got {type(value).__name__}")


def _unflatten(structure, leaves):
    """The inverse of ``_flatten``: rebuild the structure from an iterator of Tensors."""
    if structure is None:
        return None
    if structure is Tensor:
        return next(leaves)
    kind, items = structure
    return kind(_unflatten(item, leaves) for item in items)


def modules_of(model):
    """Every module of ``model`` (itself included), or ``[model]`` for a plain callable."""
    return list(model.modules()) if callable(getattr(model, "modules", None)) else [model]


def module_modes(model):
    """The train/eval flag of every module of ``model`` (a Module, or anything without modules)."""
    return tuple(bool(getattr(m, "training", False)) for m in modules_of(model))


def traced_step(loss_fn, params, max_traces=16, fuse=True, has_aux=False, model=None):
    """Trace ``loss_fn(*inputs) -> scalar loss`` (or ``(loss, aux)`` with
    ``has_aux=True``) for training: see ``TracedStep`` (and ``trace`` for ``fuse``).
    With ``model=``, its modules' train/eval modes are part of the key: a model
    that records differently in eval mode (teacher forcing) gets its own schedule.

    ``loss_fn`` must compute the same ops for every input of one shape (no
    dropout masks drawn inside it, no branches on values): a trace freezes one
    path through the Python code and bakes the constants made inside.
    """
    return TracedStep(loss_fn, params, max_traces=max_traces, fuse=fuse, has_aux=has_aux, model=model)
