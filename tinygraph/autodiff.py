"""Reverse mode over the recorded graph: backward(), grad(), anomaly checks.

One walk serves both interpretations of the VJP rules: with
``create_graph=False`` the rules run on raw arrays (no recording, NumPy
speed); with ``create_graph=True`` they run on Tensors with recording on, so
the gradients are graph nodes themselves (scope ``backward(<forward scope>)``,
same time step as the forward node) and can be differentiated again.
"""
from __future__ import annotations

import contextlib

from . import backend
from .graph import STATE, _override_context, topological_order
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
        where = ""
        if node is not None:
            where = f" in scope {node.scope or '<top>'!r}, time step {node.timestep}"
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
        arr = xp.asarray(arr, dtype=t.dtype)
        if tuple(arr.shape) != t.shape:
            raise ValueError(f"backward: grad has shape {tuple(arr.shape)} but the output has shape {t.shape}")
    if create_graph:
        return g if isinstance(g, Tensor) else Tensor(arr)
    return arr


def _accumulate(grads, node, g, create_graph):
    prev = grads.get(node.id)
    if prev is None:
        grads[node.id] = g
    elif create_graph:
        grads[node.id] = prev + g
    else:
        # first contribution may alias a forward buffer or another grad: copy on first add
        grads[node.id] = prev + g


def run_backward(roots, root_grads, *, retain_graph, create_graph, targets=None, on_node=None):
    """Core reverse walk. Returns {node_id: (node, grad)} for ``targets`` (or leaves)."""
    from .ops import sum_to

    root_nodes = [r._node for r in roots]
    order = topological_order(root_nodes)
    # prune to nodes that lie on a path to something that needs a gradient
    wanted = set(targets) if targets is not None else None
    needed = {}
    for node in order:
        if wanted is not None:
            hit = node.id in wanted
        else:
            hit = node.prim is None and node.requires_grad
        if not hit:
            for i in node.inputs:
                if needed.get(i.id):
                    hit = True
                    break
        needed[node.id] = hit

    grads = {}
    for r, g in zip(root_nodes, root_grads):
        if needed.get(r.id):
            _accumulate(grads, r, g, create_graph)

    results = {}
    processed = []
    anomaly = STATE.anomaly
    for node in reversed(order):
        g = grads.pop(node.id, None)
        if g is None:
            continue
        if wanted is not None and node.id in wanted:
            results[node.id] = (node, g)
        if node.prim is None:
            if wanted is None:
                results[node.id] = (node, g)
            continue
        if node.retains_grad and wanted is None:
            t = node.tensor
            if t is not None:
                t.grad = g if isinstance(g, Tensor) else Tensor(g)
        saved = node.saved
        if saved is None:
            raise RuntimeError(
                f"backward: the graph through op '{node.op}' (scope {node.scope or '<top>'!r}, "
                f"time step {node.timestep}) was already freed by an earlier backward. Pass "
                "retain_graph=True to the first backward if you need to backpropagate twice, "
                "or detach/truncate the state that reuses it"
            )
        out_t = node.tensor
        needs = tuple(isinstance(a, Tensor) and a.requires_grad and needed.get(a._node.id, False)
                      for a in saved)
        if create_graph:
            with _override_context(f"backward({node.scope})" if node.scope else "backward", node.timestep):
                in_grads = node.prim.vjp(g, out_t, needs, *saved, **node.attrs)
        else:
            args = [a.data if isinstance(a, Tensor) else a for a in saved]
            out = out_t.data if out_t is not None else None
            in_grads = node.prim.vjp(g, out, needs, *args, **node.attrs)
        if on_node is not None:
            on_node(node, g, in_grads)
        if not retain_graph:
            # freed only after the walk: a consumer's saved inputs keep its producers'
            # outputs alive, and the producers' rules still need them (e.g. tanh's out)
            processed.append(node)
        for a, need, ig in zip(saved, needs, in_grads):
            if not need or ig is None:
                continue
            ishape = a.shape
            gshape = ig.shape if isinstance(ig, Tensor) else getattr(ig, "shape", ())
            if tuple(gshape) != tuple(ishape):
                ig = sum_to(ig, ishape)
            if anomaly:
                check_finite(ig.data if isinstance(ig, Tensor) else ig, f"backward of {node.op}", node, "backward")
            _accumulate(grads, a._node, ig, create_graph)
    for node in processed:
        node.saved = None
    return results


def _as_list(x):
    if isinstance(x, Tensor):
        return [x]
    return list(x)


def backward(tensors, grad_tensors=None, retain_graph=False, create_graph=False):
    """Accumulate gradients of ``tensors`` into the ``.grad`` of every leaf that requires one."""
    tensors = _as_list(tensors)
    if grad_tensors is None or isinstance(grad_tensors, Tensor) or hasattr(grad_tensors, "shape"):
        grad_tensors = [grad_tensors] * len(tensors) if len(tensors) == 1 else [None] * len(tensors)
    for t in tensors:
        if not t.requires_grad or t._node is None:
            raise RuntimeError(
                "backward: this tensor does not require grad and has no recorded graph; "
                "create the leaves with requires_grad=True (and not inside tg.no_grad())"
            )
    root_grads = [_initial_grad(t, g, create_graph) for t, g in zip(tensors, grad_tensors)]
    retain = retain_graph or create_graph
    with _grad_mode(create_graph):
        results = run_backward(tensors, root_grads, retain_graph=retain, create_graph=create_graph)
    for node, g in results.values():
        leaf = node.tensor
        if leaf is None:
            continue
        gt = g if isinstance(g, Tensor) else Tensor(g)
        if leaf.grad is None:
            leaf.grad = gt if create_graph else Tensor(_owned(gt.data))
        elif create_graph:
            leaf.grad = leaf.grad + gt
        else:
            leaf.grad = Tensor(leaf.grad.data + gt.data)


def _owned(arr):
    """A gradient array that does not alias a forward buffer (so += on it is safe)."""
    return arr.copy() if not arr.flags.owndata or not arr.flags.writeable else arr


@contextlib.contextmanager
def _grad_mode(enabled):
    old = STATE.grad_enabled
    STATE.grad_enabled = enabled
    try:
        yield
    finally:
        STATE.grad_enabled = old


def grad(outputs, inputs, grad_outputs=None, retain_graph=None, create_graph=False, allow_unused=False):
    """Gradients of ``outputs`` with respect to ``inputs`` as a tuple of Tensors.

    Nothing is accumulated into ``.grad``. With ``create_graph=True`` the
    returned gradients are recorded graphs, differentiable again.
    """
    outputs = _as_list(outputs)
    inputs = _as_list(inputs)
    if grad_outputs is None:
        grad_outputs = [None] * len(outputs)
    elif isinstance(grad_outputs, Tensor) or hasattr(grad_outputs, "shape"):
        grad_outputs = [grad_outputs]
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
    with _grad_mode(create_graph):
        results = run_backward(outputs, root_grads, retain_graph=retain_graph,
                               create_graph=create_graph, targets=targets)
    answer = []
    for i, t in enumerate(inputs):
        g = results.get(t._node.id, (None, None))[1]
        if g is None:
            if not allow_unused:
                raise RuntimeError(
                    f"grad: input {i} ({t.name or 'unnamed'}, shape {t.shape}) is not used to compute "
                    "the outputs; pass allow_unused=True to get None for it"
                )
            answer.append(None)
        else:
            answer.append(g if isinstance(g, Tensor) else Tensor(g))
    return tuple(answer)
