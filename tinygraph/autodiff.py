"""Reverse mode over the recorded graph: backward(), grad(), anomaly checks.

One walk serves both interpretations of the VJP rules: with
``create_graph=False`` the rules run on raw arrays (no recording, NumPy
speed); with ``create_graph=True`` they run on Tensors with recording on, so
the gradients are graph nodes themselves (scope ``backward(<forward scope>)``,
same time step as the forward node) and can be differentiated again.
"""
from __future__ import annotations

import contextlib

import numpy as np

from . import backend
from .graph import STATE, _GradMode, _override_context, creation_order
from .ops import SparseGrad, raw, sum_to
from .tensor import Tensor

__all__ = ["backward", "grad", "detect_anomaly", "AnomalyError", "check_finite"]


class AnomalyError(FloatingPointError):
    """A NaN or Inf appeared while anomaly detection was on."""


@contextlib.contextmanager
def detect_anomaly(enabled=True):
    """Raise at the first NaN/Inf, naming the op, its scope and time step."""
    old = STATE.anomaly
    STATE.anomaly = enabled
    try:
        yield
    finally:
        STATE.anomaly = old


def check_finite(array, op, node, phase):
    xp = backend.array_module(array)
    if array.dtype.kind in "fc" and not bool(xp.isfinite(array).all()):
        bad = "NaN" if bool(xp.isnan(array).any()) else "Inf"
        # an op recorded nothing under no_grad or on constants: the recording context still says where
        scope, step = (node.scope, node.timestep) if node is not None else (STATE.scope_text, STATE.timestep)
        where = f" in scope {scope or '<top>'!r}, time step {step}"
        raise AnomalyError(
            f"{phase} pass: op '{op}'{where} produced {bad} (output shape {tuple(array.shape)}); "
            "check its inputs, lower the learning rate, or clip gradients"
        )


def _initial_grad(t, g, create_graph):
    if g is None:
        if t.size != 1:
            raise RuntimeError(
                f"backward: output has shape {t.shape}; gradients can be created implicitly "
                "only for scalar outputs. Pass grad= (a tensor of the same shape), or reduce "
                "first, e.g. loss.sum().backward()"
            )
        xp = backend.array_module(t.data)
        arr = xp.ones(t.data.shape, dtype=t.dtype)
    else:
        arr = g.data if isinstance(g, Tensor) else g
        xp = backend.array_module(t.data)
        arr = xp.array(arr, dtype=t.dtype)  # a copy: the caller's array must not become a .grad
        if tuple(arr.shape) != t.shape:
            raise ValueError(f"backward: grad has shape {tuple(arr.shape)} but the output has shape {t.shape}")
    if create_graph:
        return g if isinstance(g, Tensor) else Tensor(arr)
    return arr


def run_backward(roots, root_grads, *, retain_graph, create_graph, targets=None, on_node=None):
    """Core reverse walk. Returns {node_id: (node, grad)} for ``targets`` (or leaves).

    This loop runs once per training step over every recorded node, so it keys
    its sets and dicts by the Node objects themselves (identity hash) and
    calls no helpers per node in the raw interpretation.

    Without ``retain_graph`` each node's ``saved`` inputs and ``value`` are
    released as soon as its rule has run (the node keeps its own output, so a
    consumer releasing its inputs never takes a producer's ``out`` away).
    """
    root_nodes = [r._node for r in roots]
    order = creation_order(root_nodes)
    # prune to nodes that lie on a path to something that needs a gradient
    wanted = set(targets) if targets is not None else None
    if wanted is None:
        # an op is recorded only when an input requires grad, so every recorded node
        # reaches a leaf that requires one: only constant leaves drop out
        needed = {node for node in order if node.requires_grad}
    else:
        needed = set()
        for node in order:
            if node.id in wanted or not needed.isdisjoint(node.inputs):
                needed.add(node)

    grads, owned = {}, set()
    for r, g in zip(root_nodes, root_grads):
        if r in needed:
            _accumulate(grads, owned, r, g)

    results = {}
    anomaly = STATE.anomaly
    # getitem's rule returns SparseGrads only to this raw walk; a caller's
    # on_node callback (the stepper) sees and re-runs rules, so it gets dense ones
    sparse = not create_graph and on_node is None
    old_sparse = STATE.sparse_grads
    STATE.sparse_grads = sparse
    recording = None  # the create_graph recording context of the node being processed
    try:
        for node in reversed(order):
            g = grads.pop(node, None)
            if g is None:
                continue
            if type(g) is SparseGrad:
                g = g.dense()
            if node.hooks:
                g = _run_hooks(node, g, create_graph)
            if wanted is not None and node.id in wanted:
                results[node.id] = (node, g)
            prim = node.prim
            if prim is None:
                if wanted is None:
                    results[node.id] = (node, g)
                continue
            if node.retains_grad and wanted is None:
                _retain(node, g)
            saved = node.saved
            if saved is None:
                raise RuntimeError(
                    f"backward: the graph through op '{node.op}' (scope {node.scope or '<top>'!r}, "
                    f"time step {node.timestep}) was already freed by an earlier backward. Pass "
                    "retain_graph=True to the first backward if you need to backpropagate twice, "
                    "or detach/truncate the state that reuses it"
                )
            if create_graph and not prim.second_order:
                raise RuntimeError(
                    f"backward: op '{node.op}' (scope {node.scope or '<top>'!r}) is a fused first-order "
                    "kernel; create_graph=True (gradients of gradients) needs the decomposed recording: "
                    "build the layer with fused=False or record inside models.decomposed()")
            if create_graph:
                out_t = node.tensor
                if out_t is None and node.value is not None:  # the output Tensor died: same array, same node
                    out_t = Tensor._from_op(node.value, node)
                needs = tuple(isinstance(a, Tensor) and a.requires_grad and a._node in needed
                              for a in saved)
                # the rule's nodes AND the sum_to/accumulation adds below are recorded
                # as backward(<scope>) at the forward node's time step, so they fold too
                recording = _override_context(f"backward({node.scope})" if node.scope else "backward",
                                              node.timestep)
                recording.__enter__()
                in_grads = prim.vjp(g, out_t, needs, *saved, **node.attrs)
            else:
                # one plain loop: comprehensions cost a function call each before Python 3.12
                args, needs = [], []
                if node.literals is None:  # every saved argument is a Tensor (see ops.apply)
                    for a in saved:
                        args.append(a.data)
                        needs.append(a.requires_grad and a._node in needed)
                else:
                    for a in saved:
                        if isinstance(a, Tensor):
                            args.append(a.data)
                            needs.append(a.requires_grad and a._node in needed)
                        else:
                            args.append(a)
                            needs.append(False)
                needs = tuple(needs)
                if node.residuals is None:
                    in_grads = prim.vjp(g, node.value, needs, *args, **node.attrs)
                else:
                    in_grads = prim.vjp(g, node.value, needs, *args, residuals=node.residuals, **node.attrs)
            if on_node is not None:
                on_node(node, g, in_grads)
            if not retain_graph:
                node.saved = node.value = node.residuals = None
            for a, need, ig in zip(saved, needs, in_grads):
                if not need or ig is None:
                    continue
                shape = a.data.shape
                if getattr(ig, "shape", ()) != shape:
                    if getattr(ig, "size", 0) == a.data.size:  # only size-1 axes differ: (1, H) -> (H,)
                        ig = ig.reshape(shape)
                    else:
                        ig = sum_to(ig, shape)  # undo broadcasting once, here, for every rule
                if anomaly:
                    check_finite(ig.values if type(ig) is SparseGrad else raw(ig),
                                 f"backward of {node.op}", node, "backward")
                receiver = a._node
                prev = grads.get(receiver)
                if prev is None:
                    grads[receiver] = ig
                elif type(prev) is SparseGrad or type(ig) is SparseGrad or receiver in owned:
                    _accumulate(grads, owned, receiver, ig)
                else:  # two dense gradients: the common case, inline
                    grads[receiver] = prev + ig
            if create_graph:
                recording.__exit__(None, None, None)
                recording = None
    finally:
        if recording is not None:  # a rule raised: leave the recording context anyway
            recording.__exit__(None, None, None)
        STATE.sparse_grads = old_sparse
    return results


def _run_hooks(node, g, create_graph):
    """``g`` passed through the node's ``Tensor.register_hook`` functions, in registration order."""
    for hook in list(node.hooks.values()):
        out = hook(g if isinstance(g, Tensor) else Tensor(g))
        if out is None:
            continue
        data = out.data if isinstance(out, Tensor) else out
        shape = tuple(g.shape)   # the gradient's own (a leaf's recorded shape may predate a new .data)
        if tuple(getattr(data, "shape", ())) != shape:
            raise ValueError(f"gradient hook on {node.name or node.op}: returned shape "
                             f"{tuple(getattr(data, 'shape', ()))}, the gradient has shape {shape}")
        if create_graph:
            g = out if isinstance(out, Tensor) else Tensor(data)
        else:
            g = data
    return g


def _retain(node, g):
    """retain_grad(): the non-leaf's .grad accumulates across backward calls, like a leaf's."""
    t = node.tensor
    if t is None:
        return
    if isinstance(g, Tensor):
        t.grad = g if t.grad is None else t.grad + g
        return
    g_own = _as_dtype(_array(g), t.dtype)   # a gradient has its tensor's dtype, as a leaf's does
    if t.grad is None:
        t.grad = Tensor(g_own.copy() if g_own is g else g_own)  # a copy: g also flows on
    else:
        t.grad = Tensor(_array(t.grad.data + g_own))


def _accumulate(grads, owned, key, g):
    """grads[key] += g, where either may be a SparseGrad.

    Two dense gradients add out of place, as always. Once a sparse one is
    involved the receiver gets one dense buffer of its own (``owned``) and
    every later contribution is added into it in place: O(slice) for a sparse
    one, so T reads ``x[t]`` cost O(T * slice + x), not O(T * x).
    """
    prev = grads.get(key)
    if prev is None:
        grads[key] = g
        return
    sparse_g = type(g) is SparseGrad
    if key not in owned:
        sparse_prev = type(prev) is SparseGrad
        if not sparse_g and not sparse_prev:
            grads[key] = prev + g
            return
        dtype = prev.dtype if prev.dtype == g.dtype else np.result_type(prev.dtype, g.dtype)
        # prev may alias a forward buffer or another receiver's gradient: copy it once
        # (into an array: a rule on 0-d values may have returned a NumPy scalar)
        prev = prev.dense(dtype) if sparse_prev else _array(prev).astype(dtype, copy=True)
        owned.add(key)
    elif prev.dtype != g.dtype and np.result_type(prev.dtype, g.dtype) != prev.dtype:
        prev = prev.astype(np.result_type(prev.dtype, g.dtype))
    if sparse_g:
        g.add_to(prev)
    else:
        prev += g
    grads[key] = prev


def _as_list(x):
    if isinstance(x, Tensor):
        return [x]
    return list(x)


def _one_gradient_per_output(grads, count, op):
    """Normalise the seed gradients to a list with one entry (or None) per output."""
    if grads is None:
        return [None] * count
    if isinstance(grads, (Tensor, int, float)) or hasattr(grads, "shape"):
        grads = [grads]
    grads = list(grads)
    if count == 1 and len(grads) != 1 and all(isinstance(g, (int, float, list, tuple)) for g in grads):
        grads = [grads]   # one output's seed written as a (nested) list of numbers, as NumPy would read it
    if len(grads) != count:
        raise ValueError(
            f"{op}: got {len(grads)} seed gradient(s) for {count} output(s); "
            "pass a list with one gradient (or None for a scalar) per output"
        )
    return grads


def backward(tensors, grad_tensors=None, retain_graph=False, create_graph=False):
    """Accumulate gradients of ``tensors`` into the ``.grad`` of every leaf that requires one."""
    tensors = _as_list(tensors)
    grad_tensors = _one_gradient_per_output(grad_tensors, len(tensors), "backward")
    for t in tensors:
        if not t.requires_grad or t._node is None:
            raise RuntimeError(
                "backward: this tensor does not require grad and has no recorded graph; "
                "create the leaves with requires_grad=True (and not inside tg.no_grad())"
            )
    root_grads = [_initial_grad(t, g, create_graph) for t, g in zip(tensors, grad_tensors)]
    retain = retain_graph or create_graph
    with _GradMode(create_graph):
        results = run_backward(tensors, root_grads, retain_graph=retain, create_graph=create_graph)
    handed_out = set()
    for node, g in results.values():
        leaf = node.tensor
        if leaf is None:
            continue
        if create_graph:
            gt = g if isinstance(g, Tensor) else Tensor(g)
            leaf.grad = gt if leaf.grad is None else leaf.grad + gt
        elif leaf.grad is None:
            leaf.grad = Tensor(_owned(g, leaf.dtype, handed_out))
        else:
            leaf.grad = Tensor(_array(leaf.grad.data + _as_dtype(_array(g), leaf.dtype)))


def _array(g):
    """A NumPy scalar (what a ufunc returns for 0-d inputs) as a 0-d array; anything else as it is."""
    return np.asarray(g) if isinstance(g, np.generic) else g


def _as_dtype(arr, dtype):
    """A gradient has its input's dtype (float32 x times a float64 constant gives a float32 x.grad)."""
    return arr if arr.dtype == dtype else arr.astype(dtype)


def _owned(arr, dtype=None, handed_out=None):
    """A gradient array that aliases no forward buffer, user array or other leaf's
    gradient (``add`` hands the same array to both inputs), so += on it is safe."""
    if isinstance(arr, np.generic):
        arr = np.array(arr)  # a fresh 0-d array: a .grad is always an array
    if dtype is not None and arr.dtype != dtype:
        arr = arr.astype(dtype)  # a fresh array
    elif not arr.flags.owndata or not getattr(arr.flags, "writeable", True) or (
            handed_out is not None and id(arr) in handed_out):
        arr = arr.copy()
    if handed_out is not None:
        handed_out.add(id(arr))
    return arr


def grad(outputs, inputs, grad_outputs=None, retain_graph=None, create_graph=False, allow_unused=False):
    """Gradients of ``outputs`` with respect to ``inputs`` as a tuple of Tensors.

    Nothing is accumulated into ``.grad``. With ``create_graph=True`` the
    returned gradients are recorded graphs, differentiable again.
    """
    outputs = _as_list(outputs)
    inputs = _as_list(inputs)
    grad_outputs = _one_gradient_per_output(grad_outputs, len(outputs), "grad")
    for t in outputs:
        if not t.requires_grad or t._node is None:
            raise RuntimeError("grad: an output does not require grad (no recorded graph reaches it)")
    for i, t in enumerate(inputs):
        if not isinstance(t, Tensor) or not t.requires_grad:
            raise RuntimeError(f"grad: input {i} does not require grad; create it with requires_grad=True")
    if retain_graph is None:
        retain_graph = create_graph
    root_grads = [_initial_grad(t, g, create_graph) for t, g in zip(outputs, grad_outputs)]
    targets = [t._node.id for t in inputs]
    with _GradMode(create_graph):
        results = run_backward(outputs, root_grads, retain_graph=retain_graph,
                               create_graph=create_graph, targets=targets)
    answer = []
    handed_out = set()
    for i, t in enumerate(inputs):
        g = results.get(t._node.id, (None, None))[1]
        if g is None:
            if not allow_unused:
                raise RuntimeError(
                    f"grad: input {i} ({t.name or 'unnamed'}, shape {t.shape}) is not used to compute "
                    "the outputs; pass allow_unused=True to get None for it"
                )
            answer.append(None)
        elif isinstance(g, Tensor):
            answer.append(g)
        else:
            answer.append(Tensor(_owned(g, t.dtype, handed_out)))
    return tuple(answer)
