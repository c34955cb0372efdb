"""Primitives: a forward on raw arrays and ONE vector-Jacobian rule each.

A VJP rule is written with this module's own functions and operators, so it
has two interpretations:

* called with raw arrays (the default backward), every function below
  short-circuits to the primitive's forward: backward costs what hand-written
  NumPy costs;
* called with Tensors (``create_graph=True``), every step is recorded, so the
  gradient is itself a graph that can be drawn or differentiated again.

Rules return one gradient per argument (``None`` where ``needs[i]`` is False)
in the *broadcast* shape; the engine reduces it to the input's shape once,
centrally (``sum_to``), so no rule deals with broadcasting.
"""
from __future__ import annotations

import builtins
import weakref
from functools import partial

import numpy as np

from . import backend
from .graph import STATE, note_host_read, op_node
from .tensor import Tensor

PRIMITIVES: dict = {}
_new_tensor = object.__new__


class Primitive:
    """A named operation: ``forward(*arrays, **attrs)`` and ``vjp(g, out, needs, *args, **attrs)``.

    A primitive registered with ``residuals=True`` (a fused kernel such as a
    whole LSTM sequence) returns ``(out, residuals)`` from its forward: the
    intermediates its VJP needs that are not in ``out`` (gate activations).
    The node keeps them beside its output and the engine hands them to the
    rule as the keyword ``residuals=`` -- JAX's custom_vjp fwd/bwd split. Such
    rules are first-order fast paths on raw arrays, unless registered with
    ``second_order=True``: then the rule also runs on Tensors without its
    residuals (recomputing them with ops), so ``create_graph=True`` works.
    """

    __slots__ = ("name", "forward", "vjp", "doc", "residuals", "second_order")

    def __init__(self, name, forward, vjp, doc="", residuals=False, second_order=None):
        self.name, self.forward, self.vjp, self.doc = name, forward, vjp, doc
        self.residuals = bool(residuals)
        # default: a rule without residuals is written with the library's ops, so it records
        self.second_order = (not residuals) if second_order is None else bool(second_order)

    def __repr__(self):
        return f"<Primitive {self.name}>"


def register(name, forward, vjp, doc="", residuals=False, second_order=None):
    """Register a primitive by name (explicitly: no namespace magic).

    ``residuals=True``: see ``Primitive``. ``second_order=True`` says such a
    rule also runs without its residuals on Tensors (it recomputes them with
    ops), so ``create_graph=True`` can differentiate through the node.
    ``second_order=False`` marks a rule that works on raw arrays only (a fused
    kernel that keeps no residuals): ``create_graph=True`` then says so.
    By default a rule is second-order exactly when it keeps no residuals.
    """
    prim = Primitive(name, forward, vjp, doc, residuals, second_order)
    PRIMITIVES[name] = prim
    return prim


def _is_array(a):
    return isinstance(a, np.ndarray) or (backend._cupy is not None and isinstance(a, backend._cupy.ndarray))


def _describe(args):
    parts = []
    for a in args:
        if isinstance(a, Tensor):
            parts.append(f"Tensor{a.shape} {a.dtype} on {a.device}")
        elif _is_array(a):
            parts.append(f"array{tuple(a.shape)} {a.dtype} on {backend.device_of(a)}")
        else:
            parts.append(repr(a))
    return ", ".join(parts)


def _check_devices(prim, args, datas):
    cupy = backend._cupy
    if cupy is None:
        return
    seen = None  # -1 for the host, else the CUDA device id: no strings on the hot path
    for d in datas:
        if isinstance(d, cupy.ndarray):
            where = d.device.id
        elif isinstance(d, np.ndarray):
            where = -1
        else:
            continue
        if seen is None:
            seen = where
        elif where != seen:
            raise RuntimeError(
                f"{prim.name}: inputs live on different devices ({_describe(args)}); "
                "move them to one device first with .to('cuda') or .to('cpu')"
            )


def apply(prim, *args, **attrs):
    """Run ``prim`` on ``args``; record a node when a Tensor input needs a gradient.

    This is on the path of every op, so it is written as one pass over the
    arguments with no helper calls in the common case.
    """
    datas = []
    has_tensor = needs_grad = False
    all_tensors = True
    for a in args:
        if isinstance(a, Tensor):
            has_tensor = True
            datas.append(a.data)
            if a.requires_grad:
                needs_grad = True
        else:
            all_tensors = False
            if isinstance(a, np.generic):
                # a NumPy scalar mixes like a Python scalar: x * np.float64(2) stays float32
                datas.append(a.item())
            else:
                datas.append(a)
    if not has_tensor:
        return _apply_raw(prim, args, attrs)

    if backend._cupy is not None:
        _check_devices(prim, args, datas)
    try:
        out = prim.forward(*datas, **attrs)
    except (ValueError, TypeError, IndexError) as exc:
        raise _named_error(exc, f"{prim.name}: {exc} (inputs: {_describe(args)}){_hint(exc)}") from None
    residuals = None
    if prim.residuals:
        out, residuals = out
    if type(out) is not np.ndarray and not _is_array(out):
        out = backend.array_module(*datas).asarray(out)

    st = STATE
    if needs_grad and st.grad_enabled:
        if all_tensors:  # the common case, kept short
            saved, literals = args, None
            inputs = []
            for a in args:
                inputs.append(a._node or a._leaf_node())
            inputs = tuple(inputs)
        else:
            saved, inputs, literals = _mixed_arguments(args, datas)
        node = op_node(prim, inputs, attrs, out, saved, literals, residuals)
        result = _new_tensor(Tensor)
        result.data, result.grad, result._name, result._node, result.requires_grad = out, None, None, node, True
        node.out_ref = weakref.ref(result)
    else:
        result = Tensor._from_op(out, None)
        if needs_grad and st.host_reads is not None:
            # under no_grad inside a trace: the result is a constant of the schedule, so
            # the values it came from key the trace
            for a in args:
                if isinstance(a, Tensor):
                    note_host_read(a)
    if st.anomaly:
        from .autodiff import check_finite
        check_finite(out, prim.name, result._node, phase="forward")
    return result


def _mixed_arguments(args, datas):
    """(saved, input nodes, literals) when some arguments are not Tensors.

    A raw array becomes a constant leaf Tensor; a scalar stays in ``saved`` as
    itself and is listed in ``literals`` as (position, value).
    """
    saved, inputs, literals = [], [], None
    for position, (a, d) in enumerate(zip(args, datas)):
        if isinstance(a, Tensor):
            inputs.append(a._node or a._leaf_node())
        elif type(d) is np.ndarray or _is_array(d):
            a = Tensor(d)
            inputs.append(a._leaf_node())
        else:
            a = d
            literals = (literals or ()) + ((position, d),)
        saved.append(a)
    return tuple(saved), tuple(inputs), literals


def _apply_raw(prim, args, attrs):
    """The raw interpretation (no Tensor anywhere): just the forward, no recording."""
    out = prim.forward(*args, **attrs)
    if prim.residuals:
        out = out[0]
    if isinstance(out, np.generic) and not any(_is_array(a) for a in args):
        # scalars in, scalar out: return a Python scalar so it stays weakly typed
        # (the VJP of 2.0 ** x multiplies a float32 gradient by log(2.0))
        return out.item()
    return out


def _named_error(exc, message):
    """The same exception type with the op's name and inputs in the message."""
    try:
        return type(exc)(message)
    except Exception:  # a subclass whose constructor wants other arguments
        return (IndexError if isinstance(exc, IndexError) else
                TypeError if isinstance(exc, TypeError) else ValueError)(message)


def _hint(exc):
    if "broadcast" in str(exc):
        return ("; make the shapes broadcast-compatible (trailing axes must be equal or 1), "
                "e.g. reshape or transpose one input")
    return ""


def rule_keywords(node):
    """The keywords a node's VJP rule takes: its attributes, plus ``residuals`` when it kept some."""
    if node.residuals is None:
        return node.attrs
    return {**node.attrs, "residuals": node.residuals}


def raw(x):
    """The array behind ``x`` (a Tensor's data, or ``x`` itself)."""
    return x.data if isinstance(x, Tensor) else x


def _xp(*xs):
    return backend.array_module(*[raw(x) for x in xs])


def _kept_shape(shape, axis):
    """The shape a reduction over ``axis`` has with keepdims=True."""
    if axis is None:
        return (1,) * len(shape)
    axes = axis if isinstance(axis, tuple) else (axis,)
    axes = {a % len(shape) for a in axes}
    return tuple(1 if i in axes else s for i, s in enumerate(shape))


def _norm_axis(axis):
    if isinstance(axis, list):
        return tuple(axis)
    return axis


# ---------------------------------------------------------------------------
# elementwise binary ops
# ---------------------------------------------------------------------------
ADD = register("add", lambda a, b: a + b, lambda g, out, needs, a, b: (g, g))
SUB = register("sub", lambda a, b: a - b, lambda g, out, needs, a, b: (g, -g if needs[1] else None))
MUL = register(
    "mul", lambda a, b: a * b,
    lambda g, out, needs, a, b: (g * b if needs[0] else None, g * a if needs[1] else None),
)
DIV = register(
    "div", lambda a, b: a / b,
    lambda g, out, needs, a, b: (g / b if needs[0] else None, -g * out / b if needs[1] else None),
)


def _pow_vjp(g, out, needs, a, b):
    """As PyTorch: d(a^0)/da = 0 and d(0^b)/db = 0 for b >= 0, where the textbook
    products would be 0 * inf. The masked places read a safe base of 1 (the
    "double where"), so no inf reaches a second derivative either."""
    ga = gb = None
    if needs[0]:
        if isinstance(b, (int, float)):       # x ** 2, x ** 0.5: the common case stays one product
            ga = g * 0.0 if b == 0 else g * b * a ** (b - 1)
        else:
            flat = raw(b) == 0
            ga = where(flat, 0.0, g * b * where(flat, 1.0, a) ** (b - 1))
    if needs[1]:
        if isinstance(a, (int, float)):
            gb = g * 0.0 if a == 0 else g * out * log(a)
        else:
            flat = (raw(a) == 0) & (raw(b) >= 0)
            gb = where(flat, 0.0, g * out * log(where(flat, 1.0, a)))
    return ga, gb


POW = register("pow", lambda a, b: a ** b, _pow_vjp)


def _maximum_vjp(g, out, needs, a, b):
    mask = raw(a) >= raw(b)  # ties send the gradient to the first argument
    return (where(mask, g, 0.0) if needs[0] else None,
            where(mask, 0.0, g) if needs[1] else None)


def _minimum_vjp(g, out, needs, a, b):
    mask = raw(a) <= raw(b)
    return (where(mask, g, 0.0) if needs[0] else None,
            where(mask, 0.0, g) if needs[1] else None)


MAXIMUM = register("maximum", lambda a, b: backend.array_module(a, b).maximum(a, b), _maximum_vjp)
MINIMUM = register("minimum", lambda a, b: backend.array_module(a, b).minimum(a, b), _minimum_vjp)


def _where_fwd(cond, a, b):
    return backend.array_module(cond, a, b).where(cond, a, b)


def _where_vjp(g, out, needs, cond, a, b):
    c = raw(cond)
    return (None,
            where(c, g, 0.0) if needs[1] else None,
            where(c, 0.0, g) if needs[2] else None)


WHERE = register("where", _where_fwd, _where_vjp)

# ---------------------------------------------------------------------------
# elementwise unary ops
# ---------------------------------------------------------------------------
NEG = register("neg", lambda x: -x, lambda g, out, needs, x: (-g,))
EXP = register("exp", lambda x: backend.array_module(x).exp(x), lambda g, out, needs, x: (g * out,))
LOG = register("log", lambda x: backend.array_module(x).log(x), lambda g, out, needs, x: (g / x,))
SQRT = register("sqrt", lambda x: backend.array_module(x).sqrt(x), lambda g, out, needs, x: (g / (2 * out),))
SIGN = register("sign", lambda x: backend.array_module(x).sign(x), lambda g, out, needs, x: (g * 0,))
ABS = register("abs", lambda x: backend.array_module(x).abs(x), lambda g, out, needs, x: (g * sign(x),))
TANH = register("tanh", lambda x: backend.array_module(x).tanh(x), lambda g, out, needs, x: (g * (1 - out * out),))


# below these inputs exp(-x) overflows (or 1 / (1 + e) leaves the normal range)
_SIGMOID_DIRECT_FROM = {np.dtype(np.float16): -10.0, np.dtype(np.float32): -80.0, np.dtype(np.float64): -700.0}


def stable_sigmoid(x):
    """The logistic function on a raw array, accurate in both tails.

    On the CPU, ``1 / (1 + exp(-x))``: it does not cancel anywhere (unlike
    0.5*(tanh(x/2)+1), which gives 0 at -20 in float32) and takes four passes.
    When some input lies so far left that exp(-x) would overflow, and always
    on a GPU (no host sync for the check), it is e/(1+e) with e = exp(-|x|),
    whose subnormal results are right too.
    """
    xp = backend.array_module(x)
    start = _SIGMOID_DIRECT_FROM.get(getattr(x, "dtype", None)) if xp is np else None  # (min() would sync a GPU)
    if start is None or x.size == 0 or x.min() < start:
        e = xp.exp(-xp.abs(x))
        r = 1 / (1 + e)
        return xp.where(x >= 0, r, e * r)
    e = np.exp(-x)
    e += 1
    return np.reciprocal(e, out=e) if type(e) is np.ndarray else 1 / e


SIGMOID = register("sigmoid", stable_sigmoid, lambda g, out, needs, x: (g * out * (1 - out),))
RELU = register(
    "relu", lambda x: backend.array_module(x).maximum(x, 0),
    lambda g, out, needs, x: (g * (raw(x) > 0),),
)


def _clip_fwd(x, lo=None, hi=None):
    return backend.array_module(x).clip(x, lo, hi)


def _clip_vjp(g, out, needs, x, lo=None, hi=None):
    xr = raw(x)
    inside = True if lo is None else (xr >= lo)  # a Python bool mixes with NumPy and CuPy alike
    if hi is not None:
        inside = inside & (xr <= hi)
    return (g * inside,)


CLIP = register("clip", _clip_fwd, _clip_vjp)


def _softmax_fwd(x, axis=-1):
    xp = backend.array_module(x)
    e = xp.exp(x - x.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


def _softmax_vjp(g, out, needs, x, axis=-1):
    return (out * (g - sum(g * out, axis=axis, keepdims=True)),)


def _log_softmax_fwd(x, axis=-1):
    xp = backend.array_module(x)
    shifted = x - x.max(axis=axis, keepdims=True)
    return shifted - xp.log(xp.exp(shifted).sum(axis=axis, keepdims=True))


def _log_softmax_vjp(g, out, needs, x, axis=-1):
    return (g - exp(out) * sum(g, axis=axis, keepdims=True),)


SOFTMAX = register("softmax", _softmax_fwd, _softmax_vjp)
LOG_SOFTMAX = register("log_softmax", _log_softmax_fwd, _log_softmax_vjp)

# ---------------------------------------------------------------------------
# reductions and shape ops
# ---------------------------------------------------------------------------


def _sum_vjp(g, out, needs, x, axis=None, keepdims=False):
    return (broadcast_to(reshape(g, _kept_shape(x.shape, axis)), x.shape),)


def _mean_fwd(x, axis=None, keepdims=False):
    return x.mean(axis=axis, keepdims=keepdims)


def _mean_vjp(g, out, needs, x, axis=None, keepdims=False):
    count = _size(x.shape) // builtins.max(1, _size(out.shape))
    return (broadcast_to(reshape(g, _kept_shape(x.shape, axis)), x.shape) / count,)


def _max_fwd(x, axis=None, keepdims=False):
    return x.max(axis=axis, keepdims=keepdims)


def _max_vjp(g, out, needs, x, axis=None, keepdims=False):
    kept = _kept_shape(x.shape, axis)
    xr, outr = raw(x), raw(out)
    mask = xr == outr.reshape(kept)
    share = mask / mask.sum(axis=axis, keepdims=True)  # ties split the gradient
    return (broadcast_to(reshape(g, kept), x.shape) * share.astype(xr.dtype),)


def _size(shape):
    n = 1
    for s in shape:
        n *= s
    return n


SUM = register("sum", lambda x, axis=None, keepdims=False: x.sum(axis=axis, keepdims=keepdims), _sum_vjp)
MEAN = register("mean", _mean_fwd, _mean_vjp)
# Recorded only while a trace runs (Tensor.detach and Tensor.argmax stay graph-free in eager
# code): a replay then recomputes them from its own inputs instead of reusing traced values.
DETACH = register("detach", lambda x: x, lambda g, out, needs, x: (None,),
                  doc="the same values with no gradient past them (recorded inside a trace)")
ARGMAX = register("argmax", lambda x, axis=None: x.argmax(axis=axis), lambda g, out, needs, x, axis=None: (None,),
                  doc="indices of the maxima, not differentiable (recorded inside a trace)")
MAX = register("max", _max_fwd, _max_vjp)
# the same rule: the gradient goes to where x equals the result (shared among ties)
MIN = register("min", lambda x, axis=None, keepdims=False: x.min(axis=axis, keepdims=keepdims), _max_vjp)

RESHAPE = register(
    "reshape", lambda x, shape: x.reshape(shape),
    lambda g, out, needs, x, shape: (reshape(g, x.shape),),
)


def _transpose_vjp(g, out, needs, x, axes=None):
    if axes is None:
        return (transpose(g, None),)
    inverse = tuple(int(i) for i in np.argsort(axes))
    return (transpose(g, inverse),)


TRANSPOSE = register("transpose", lambda x, axes=None: x.transpose(axes), _transpose_vjp)
BROADCAST_TO = register(
    "broadcast_to", lambda x, shape: backend.array_module(x).broadcast_to(x, shape),
    lambda g, out, needs, x, shape: (sum_to(g, x.shape),),
)


def _sum_to_fwd(x, shape):
    shape = tuple(shape)
    if tuple(x.shape) == shape:
        return x
    lead = x.ndim - len(shape)
    axes = tuple(range(lead)) + tuple(
        i + lead for i, s in enumerate(shape) if s == 1 and x.shape[i + lead] != 1
    )
    return x.sum(axis=axes, keepdims=True).reshape(shape)


SUM_TO = register(
    "sum_to", _sum_to_fwd,
    lambda g, out, needs, x, shape: (broadcast_to(g, x.shape),),
)


def _matmul_fwd(a, b):
    if a.shape[-1] != b.shape[-2]:
        raise ValueError(
            f"shape mismatch {tuple(a.shape)} @ {tuple(b.shape)}: the last axis of the left "
            f"operand ({a.shape[-1]}) must equal the second-to-last axis of the right "
            f"operand ({b.shape[-2]}); transpose one of them (.T) or check the layer sizes"
        )
    return a @ b


def _swap_last(x):
    if not isinstance(x, Tensor):  # raw interpretation: the same view, without the wrapper's checks
        return x.swapaxes(-1, -2)
    axes = list(range(len(x.shape)))
    axes[-1], axes[-2] = axes[-2], axes[-1]
    return transpose(x, tuple(axes))


def _matmul_vjp(g, out, needs, a, b):
    return (g @ _swap_last(b) if needs[0] else None,
            _swap_last(a) @ g if needs[1] else None)


MATMUL = register("matmul", _matmul_fwd, _matmul_vjp)


def _is_basic_index(index):
    """Slices, integers, None and Ellipsis only (no index array): z[index] += g is then exact."""
    for i in (index if type(index) is tuple else (index,)):
        kind = type(i)
        if kind is slice or kind is int or i is None or i is Ellipsis:
            continue
        if not isinstance(i, (int, np.integer, slice)):
            return False
    return True


def _scatter_add(z, index, g):
    """z[index] += g, adding repeated indices (xp.add.at; cupyx.scatter_add on old CuPy)."""
    if _is_basic_index(index):
        z[index] += g
        return z
    add_at = getattr(backend.array_module(z).add, "at", None)
    if add_at is not None:
        add_at(z, index, g)
    else:  # CuPy before add.at existed; cupyx.scatter_add is deprecated since
        import cupyx
        cupyx.scatter_add(z, index, g)
    return z


class SparseGrad:
    """A gradient that is zero except ``values`` at ``index`` of an array of ``shape``.

    getitem's rule returns one in the raw backward walk (``STATE.sparse_grads``),
    so reading ``x[t]`` at each of T steps costs O(slice) per step, not O(x):
    the walk adds all of them into one dense buffer per receiver.
    """

    __slots__ = ("index", "values", "shape")

    def __init__(self, index, values, shape):
        self.index, self.values, self.shape = index, values, tuple(shape)

    @property
    def dtype(self):
        return self.values.dtype

    def add_to(self, array):
        """array[index] += values (in place, repeated indices added); returns array."""
        return _scatter_add(array, self.index, self.values)

    def dense(self, dtype=None):
        """A fresh dense array."""
        xp = backend.array_module(self.values)
        return self.add_to(xp.zeros(self.shape, dtype=dtype or self.values.dtype))

    def __repr__(self):
        return f"<SparseGrad shape={self.shape} values{tuple(self.values.shape)}>"


def _getitem_grad_fwd(g, index, shape):
    return SparseGrad(index, g, shape).dense()


GETITEM = register(
    "getitem", lambda x, index: x[index],
    lambda g, out, needs, x, index: (getitem_grad(g, index, x.shape),),
)
GETITEM_GRAD = register(
    "getitem_grad", _getitem_grad_fwd,
    lambda g, out, needs, x, index, shape: (getitem(g, index),),
)


def _take_index(axis, indices):
    return (slice(None),) * axis + (indices,)


def _take_fwd(x, indices, axis=0):
    return backend.array_module(x).take(x, indices, axis=axis)


def _take_vjp(g, out, needs, x, indices, axis=0):
    axis = axis % len(x.shape)
    # the indices are an index, never a differentiated value, even under create_graph
    return (getitem_grad(g, _take_index(axis, raw(indices)), x.shape), None)


TAKE = register("take", _take_fwd, _take_vjp)


def _along_axis_index(indices, shape, axis):
    """The advanced index with x[index] == take_along_axis(x, indices, axis)."""
    xp = backend.array_module(indices)
    ndim = len(shape)
    return tuple(indices if d == axis else
                 xp.arange(shape[d]).reshape((-1,) + (1,) * (ndim - d - 1))
                 for d in range(ndim))


def _take_along_axis_fwd(x, indices, axis):
    return backend.array_module(x).take_along_axis(x, indices, axis=axis)


def _take_along_axis_vjp(g, out, needs, x, indices, axis):
    index = _along_axis_index(raw(indices), x.shape, axis % len(x.shape))
    return (getitem_grad(g, index, x.shape), None)


TAKE_ALONG_AXIS = register("take_along_axis", _take_along_axis_fwd, _take_along_axis_vjp)


def _pick_fwd(x, indices):
    return backend.array_module(x).take_along_axis(x, indices[..., None], axis=-1)[..., 0]


def _pick_vjp(g, out, needs, x, indices):
    index = _along_axis_index(raw(indices)[..., None], x.shape, len(x.shape) - 1)
    return (getitem_grad(reshape(g, tuple(g.shape) + (1,)), index, x.shape), None)


PICK = register("pick", _pick_fwd, _pick_vjp,
                doc="x[..., indices]: one entry of the last axis per row (the target class of a loss)")


def _rows_of(a, targets):
    """(a reshaped to (N, K), row numbers, flat targets): the advanced index of one entry per row."""
    xp = backend.array_module(a)
    flat = targets.reshape(-1)
    return a.reshape(-1, a.shape[-1]), xp.arange(flat.shape[0]), flat


def _cross_entropy_fwd(x, targets):
    xp = backend.array_module(x)
    top = x.max(axis=-1, keepdims=True)
    e = x - top
    rows, n, t = _rows_of(e, targets)
    picked = rows[n, t].reshape(targets.shape)  # x[target] - max, before e is overwritten
    xp.exp(e, out=e)
    total = e.sum(axis=-1, keepdims=True)
    # residuals: exp(x - max) and its row sums, the softmax unnormalised (one pass fewer)
    return xp.log(total[..., 0]) - picked, (e, total)


def _cross_entropy_vjp(g, out, needs, x, targets, residuals=None):
    """dL/dx = g (softmax(x) - onehot(targets)): log_softmax + pick + neg in one rule.

    The raw walk gets the forward's exp(x - max) and row sums as ``residuals``
    (one pass here); recorded (create_graph) the rule recomputes the softmax
    with ops, so the gradient is a graph and cross_entropy stays twice
    differentiable.
    """
    g1 = reshape(g, tuple(g.shape) + (1,))
    if isinstance(x, Tensor):  # recorded: the softmax and one-hot become nodes
        p = softmax(x, axis=-1)
        index = _along_axis_index(raw(targets)[..., None], x.shape, len(x.shape) - 1)
        ones = Tensor(backend.array_module(raw(p)).ones(g1.shape, dtype=p.dtype))
        return (g1 * (p - getitem_grad(ones, index, x.shape)), None)
    e, total = residuals if residuals is not None else _cross_entropy_fwd(x, targets)[1]
    grad = e * (g1 / total)
    rows, n, t = _rows_of(grad, targets)
    rows[n, t] -= g.reshape(-1)  # one entry per row: no index repeats
    return (grad, None)


CROSS_ENTROPY = register(
    "cross_entropy", _cross_entropy_fwd, _cross_entropy_vjp, residuals=True, second_order=True,
    doc="fused softmax cross-entropy per row: logsumexp(x) - x[..., targets]; "
        "the same numbers as -pick(log_softmax(x), targets)")


def _concat_fwd(*xs, axis=0):
    return backend.array_module(*xs).concatenate(xs, axis=axis)


def _concat_vjp(g, out, needs, *xs, axis=0):
    grads, start = [], 0
    ax = axis % len(out.shape)
    for x, need in zip(xs, needs):
        stop = start + x.shape[ax]
        grads.append(getitem(g, (slice(None),) * ax + (slice(start, stop),)) if need else None)
        start = stop
    return tuple(grads)


def _stack_fwd(*xs, axis=0):
    return backend.array_module(*xs).stack(xs, axis=axis)


def _stack_vjp(g, out, needs, *xs, axis=0):
    ax = axis % len(out.shape)
    take = g.__getitem__ if type(g) is np.ndarray else partial(getitem, g)  # raw: plain views
    return tuple(take((slice(None),) * ax + (i,)) if need else None for i, need in enumerate(needs))


CONCAT = register("concat", _concat_fwd, _concat_vjp)
STACK = register("stack", _stack_fwd, _stack_vjp)


def _to_device_vjp(g, out, needs, x, device, source):
    return (to_device(g, source),)


TO_DEVICE = register(
    "to_device", lambda x, device, source: backend.to_device(x, device), _to_device_vjp,
)
ASTYPE = register(
    "astype", lambda x, dtype: x.astype(dtype),
    lambda g, out, needs, x, dtype: (astype(g, x.dtype),),
)

# ---------------------------------------------------------------------------
# functional API (works on Tensors, raw arrays and Python scalars alike)
# ---------------------------------------------------------------------------


def add(a, b):
    """a + b with broadcasting."""
    return apply(ADD, a, b)


def sub(a, b):
    """a - b with broadcasting."""
    return apply(SUB, a, b)


def mul(a, b):
    """Elementwise a * b with broadcasting."""
    return apply(MUL, a, b)


def div(a, b):
    """Elementwise a / b with broadcasting."""
    return apply(DIV, a, b)


def pow(a, b):  # noqa: A001 - mirrors the operator name
    """Elementwise a ** b."""
    return apply(POW, a, b)


def neg(x):
    """Elementwise -x."""
    return apply(NEG, x)


def exp(x):
    """Elementwise e**x."""
    return apply(EXP, x)


def log(x):
    """Elementwise natural logarithm."""
    return apply(LOG, x)


def sqrt(x):
    """Elementwise square root."""
    return apply(SQRT, x)


def sign(x):
    """Sign of x (zero gradient)."""
    return apply(SIGN, x)


def abs(x):  # noqa: A001
    """Elementwise |x| (gradient sign(x), 0 at 0)."""
    return apply(ABS, x)


def tanh(x):
    """Elementwise hyperbolic tangent (one primitive, as the textbook draws it)."""
    return apply(TANH, x)


def sigmoid(x):
    """The logistic function 1 / (1 + exp(-x))."""
    return apply(SIGMOID, x)


def relu(x):
    """Elementwise max(x, 0)."""
    return apply(RELU, x)


def maximum(a, b):
    """Elementwise max; on ties the gradient goes to ``a``."""
    return apply(MAXIMUM, a, b)


def minimum(a, b):
    """Elementwise min; on ties the gradient goes to ``a``."""
    return apply(MINIMUM, a, b)


def clip(x, lo=None, hi=None):
    """Clamp to [lo, hi]; the gradient is zero outside the interval."""
    return apply(CLIP, x, lo=lo, hi=hi)


def where(cond, a, b):
    """``a`` where ``cond`` holds, else ``b`` (``cond`` is not differentiated).

    A Tensor ``cond`` stays an input of the node, so a traced function reads
    a new mask at every replay.
    """
    if isinstance(cond, Tensor):
        return apply(WHERE, cond, a, b)
    if isinstance(a, Tensor) or isinstance(b, Tensor):
        if not hasattr(cond, "shape"):  # a list or a bool, as NumPy takes it: an array where a/b live
            cond = backend.array_module(raw(a if isinstance(a, Tensor) else b)).asarray(cond)
        return apply(WHERE, Tensor(cond), a, b)
    return apply(WHERE, cond, a, b)


def sum(x, axis=None, keepdims=False):  # noqa: A001
    """Sum over ``axis`` (all axes when None)."""
    return apply(SUM, x, axis=_norm_axis(axis), keepdims=keepdims)


def mean(x, axis=None, keepdims=False):
    """Mean over ``axis`` (all axes when None)."""
    return apply(MEAN, x, axis=_norm_axis(axis), keepdims=keepdims)


def max(x, axis=None, keepdims=False):  # noqa: A001
    """Maximum over ``axis``; ties share the gradient equally."""
    return apply(MAX, x, axis=_norm_axis(axis), keepdims=keepdims)


def min(x, axis=None, keepdims=False):  # noqa: A001
    """Minimum over ``axis``; ties share the gradient equally (any dtype: no negation)."""
    return apply(MIN, x, axis=_norm_axis(axis), keepdims=keepdims)


def reshape(x, *shape):
    """``x`` with a new shape of the same size (``-1`` infers one axis); a view when NumPy can."""
    if len(shape) == 1 and isinstance(shape[0], (tuple, list)):
        shape = shape[0]
    shape = tuple(map(int, shape))
    if type(x) is np.ndarray:  # a rule's raw interpretation: the forward itself, no dispatch
        return x.reshape(shape)
    if tuple(raw(x).shape) == shape:
        return x
    return apply(RESHAPE, x, shape=shape)


def transpose(x, axes=None):
    """Permute axes (reverse them when ``axes`` is None)."""
    if axes is not None:
        # negative axes are made positive: the VJP inverts the permutation with argsort
        ndim = raw(x).ndim
        axes = tuple(int(a) + ndim if int(a) < 0 else int(a) for a in axes)
    if type(x) is np.ndarray:  # a rule's raw interpretation: the forward itself, no dispatch
        return x.transpose(axes)
    return apply(TRANSPOSE, x, axes=axes)


def swapaxes(x, a, b):
    """``x`` with axes ``a`` and ``b`` exchanged (a transpose)."""
    axes = list(range(raw(x).ndim))
    axes[a], axes[b] = axes[b], axes[a]
    return transpose(x, axes)


def broadcast_to(x, shape):
    """``x`` broadcast to ``shape`` (the gradient sums back over the broadcast axes)."""
    shape = tuple(shape)
    if tuple(raw(x).shape) == shape:
        return x
    if type(x) is np.ndarray:  # a rule's raw interpretation: the forward itself, no dispatch
        return np.broadcast_to(x, shape)
    return apply(BROADCAST_TO, x, shape=shape)


def sum_to(x, shape):
    """Sum a broadcast array back down to ``shape`` (undoes broadcasting)."""
    shape = tuple(shape)
    if tuple(raw(x).shape) == shape:
        return x
    return apply(SUM_TO, x, shape=shape)


def matmul(a, b):
    """Matrix product with NumPy's rules (1-D operands and batch broadcasting)."""
    if type(a) is np.ndarray and type(b) is np.ndarray and a.ndim >= 2 and b.ndim >= 2:
        return _matmul_fwd(a, b)  # a rule's raw interpretation: the forward itself, no dispatch
    if isinstance(a, (list, tuple)):   # as NumPy: a nested list is an array (on the other operand's device)
        a = backend.array_module(raw(b)).asarray(a)
    if isinstance(b, (list, tuple)):
        b = backend.array_module(raw(a)).asarray(b)
    ra, rb = raw(a), raw(b)
    if getattr(ra, "ndim", 0) == 0 or getattr(rb, "ndim", 0) == 0:
        raise ValueError(
            f"matmul: operands must have at least one dimension, got shapes "
            f"{getattr(ra, 'shape', ())} and {getattr(rb, 'shape', ())}; use * for scalars"
        )
    if (ra.ndim == 1 or rb.ndim == 1) and ra.shape[-1] != rb.shape[0 if rb.ndim == 1 else -2]:
        # checked here: past this point the 1-D operand is a reshaped (1, n) or (n, 1)
        raise ValueError(f"matmul: shape mismatch {tuple(ra.shape)} @ {tuple(rb.shape)}: the last axis of the "
                         f"left operand ({ra.shape[-1]}) must equal the "
                         f"{'only' if rb.ndim == 1 else 'second-to-last'} axis of the right operand "
                         f"({rb.shape[0 if rb.ndim == 1 else -2]})")
    if ra.ndim == 1 and rb.ndim == 1:
        return reshape(apply(MATMUL, reshape(a, (1, -1)), reshape(b, (-1, 1))), ())
    if ra.ndim == 1:
        out = apply(MATMUL, reshape(a, (1, ra.shape[0])), b)
        return reshape(out, tuple(raw(out).shape[:-2]) + (raw(out).shape[-1],))
    if rb.ndim == 1:
        out = apply(MATMUL, a, reshape(b, (rb.shape[0], 1)))
        return reshape(out, tuple(raw(out).shape[:-1]))
    return apply(MATMUL, a, b)


def _normalize_index(index):
    if isinstance(index, Tensor):
        note_host_read(index)   # an index is baked into a traced schedule: its values key the trace
        return index.data
    if isinstance(index, list):
        return np.asarray(index)
    if isinstance(index, tuple):
        return tuple(_normalize_index(i) for i in index)
    return index


def _index_on_device_of(x, index):
    """Move NumPy index arrays to the device of ``x`` (a CuPy array wants CuPy indices)."""
    if backend._cupy is None:  # CuPy never loaded: nothing to move
        return index
    xp = _xp(x)
    if xp is np:
        return index
    if isinstance(index, tuple):
        return tuple(_index_on_device_of(x, i) for i in index)
    return xp.asarray(index) if isinstance(index, np.ndarray) else index


def getitem(x, index):
    """x[index] for slices, integers, integer arrays (gradients scatter-add).

    An integer Tensor index (``x[ids]``) is a ``take`` along the first axis,
    with the ids as an input of the node: a traced function reads new ids at
    every replay.
    """
    if isinstance(index, Tensor) and index.dtype.kind in "iu" and isinstance(x, Tensor):
        return take(x, index, axis=0)
    return apply(GETITEM, x, index=_index_on_device_of(x, _normalize_index(index)))


def getitem_grad(g, index, shape):
    """Zeros of ``shape`` with ``g`` added at ``index`` (the adjoint of getitem).

    In the raw backward walk this is a ``SparseGrad`` (the same values, never
    materialised per call), so a rule returns it as it is and never computes
    with it; recorded (``create_graph=True``) it is a dense node.
    """
    if STATE.sparse_grads and not isinstance(g, Tensor):
        return SparseGrad(index, g, shape)
    return apply(GETITEM_GRAD, g, index=index, shape=tuple(shape))


def _indices_argument(x, indices):
    """Integer indices as an op argument on ``x``'s device. A Tensor stays a Tensor,
    so the graph has it as an input (a traced function reads new ids at replay)."""
    if isinstance(indices, Tensor):
        if backend.device_of(indices.data) == backend.device_of(raw(x)):
            return indices
        note_host_read(indices)  # copied across devices outside the graph: a trace keys on the values
        indices = backend.to_device(indices.data, backend.device_of(raw(x)))
    elif isinstance(indices, list):
        indices = np.asarray(indices)
    return _index_on_device_of(x, indices)


def take(x, indices, axis=0):
    """Select ``indices`` along ``axis`` (repeated indices add their gradients)."""
    return apply(TAKE, x, _indices_argument(x, indices), axis=axis)


def take_along_axis(x, indices, axis):
    """Pick ``indices`` (integer array, same ndim as ``x``) along ``axis``, like
    ``numpy.take_along_axis``; the gradient scatters back (repeats add up)."""
    indices = _indices_argument(x, indices)
    if indices.dtype.kind not in "iu":
        raise TypeError(f"take_along_axis: indices must be integers, got dtype {indices.dtype}")
    return apply(TAKE_ALONG_AXIS, x, indices, axis=axis)


def pick(x, indices):
    """``x[..., indices]``: from ``x`` (..., K) the entry ``indices`` (...) of each row.

    ``take_along_axis`` on the last axis without the size-1 axis, as one node:
    what a loss does with its integer targets. Integer ``indices`` given as a
    Tensor stay in the graph, so a traced loss reads new targets at every replay.
    """
    return apply(PICK, x, _row_indices(x, indices, "pick", "indices"))


def _row_indices(x, indices, op, what):
    """One integer index per row of ``x`` (..., K), as an op argument on x's device."""
    indices = _indices_argument(x, indices)
    if indices.dtype.kind not in "iu":
        raise TypeError(f"{op}: {what} must be integers, got dtype {indices.dtype}")
    if tuple(indices.shape) != tuple(x.shape[:-1]):
        raise ValueError(f"{op}: {what} must have shape {tuple(x.shape[:-1])} (one per row of "
                         f"{'logits' if what == 'targets' else 'x'}), got {tuple(indices.shape)}")
    return indices


def softmax_cross_entropy(logits, targets):
    """Per-row softmax cross-entropy of ``logits`` (..., K) against integer ``targets`` (...).

    One fused node with the values of ``-pick(log_softmax(logits), targets)``
    and the closed-form gradient ``softmax - onehot``: fewer passes over the
    logits and no per-op overhead. ``tinygraph.decomposed()`` makes
    ``tg.cross_entropy`` record the three elementary ops instead.
    """
    return apply(CROSS_ENTROPY, logits, _row_indices(logits, targets, "softmax_cross_entropy", "targets"))


def _nonempty(tensors, op):
    tensors = list(tensors)
    if not tensors:
        raise ValueError(
            f"{op}: needs at least one tensor, got an empty list (a sequence with no time "
            "steps, T=0?); check the input length before stacking or concatenating"
        )
    return tensors


def concat(tensors, axis=0):
    """Join tensors along an existing axis."""
    tensors = _nonempty(tensors, "concat")
    if all(type(t) is np.ndarray for t in tensors):  # a rule's raw interpretation, no dispatch
        return np.concatenate(tensors, axis=axis)
    return apply(CONCAT, *tensors, axis=axis)


def stack(tensors, axis=0):
    """Join tensors along a new axis."""
    return apply(STACK, *_nonempty(tensors, "stack"), axis=axis)


def split(x, sections_or_indices, axis=0):
    """Split into equal ``sections`` (an int) or at the given indices; a list of views."""
    length = raw(x).shape[axis]
    if isinstance(sections_or_indices, (int, np.integer)):
        n = int(sections_or_indices)
        if n <= 0 or length % n:
            raise ValueError(f"split: axis {axis} of length {length} cannot be split into {n} equal sections")
        bounds = [i * (length // n) for i in range(n + 1)]
    else:
        bounds = [0] + [int(i) for i in sections_or_indices] + [length]
    ax = axis % raw(x).ndim
    lead = (slice(None),) * ax
    if type(x) is np.ndarray:  # a rule's raw interpretation: plain views, no dispatch
        return [x[lead + (slice(lo, hi),)] for lo, hi in zip(bounds[:-1], bounds[1:])]
    return [getitem(x, lead + (slice(lo, hi),)) for lo, hi in zip(bounds[:-1], bounds[1:])]


def softmax(x, axis=-1):
    """exp(x) / sum(exp(x)) along ``axis``, computed stably (one primitive)."""
    return apply(SOFTMAX, x, axis=axis)


def log_softmax(x, axis=-1):
    """log(softmax(x)), computed stably."""
    return apply(LOG_SOFTMAX, x, axis=axis)


def to_device(x, device):
    """Copy to a device; the gradient flows back to the source device."""
    source = backend.device_of(raw(x))
    kind, index = backend.parse_device(device)
    target = "cpu" if kind == "cpu" else f"cuda:{index}"
    if target == source:
        return x
    return apply(TO_DEVICE, x, device=target, source=source)


def astype(x, dtype):
    """``x`` cast to ``dtype`` (the gradient is cast back to x's dtype)."""
    dtype = np.dtype(dtype)
    if raw(x).dtype == dtype:
        return x
    return apply(ASTYPE, x, dtype=dtype)


_COMPARE = {"lt": "less", "le": "less_equal", "gt": "greater", "ge": "greater_equal",
            "eq": "equal", "ne": "not_equal"}


def _compare_fwd(a, b, how):
    return getattr(backend.array_module(a, b), _COMPARE[how])(a, b)


COMPARE = register("compare", _compare_fwd, lambda g, out, needs, a, b, how: (None, None),
                   doc="elementwise comparison (how: lt, le, gt, ge, eq, ne); no gradient")


def compare(a, b, how):
    """Elementwise comparison; the result is a boolean Tensor with no gradient.

    Recorded only while ``trace`` runs (so a traced mask such as
    ``targets != 0`` is computed again at every replay); eagerly the result is
    a plain constant, outside the graph.
    """
    if STATE.host_reads is not None and (isinstance(a, Tensor) or isinstance(b, Tensor)):
        return apply(COMPARE, a, b, how=how)
    ra, rb = raw(a), raw(b)
    return Tensor(_compare_fwd(ra, rb, how))
