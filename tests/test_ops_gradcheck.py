"""Every primitive and functional op against central finite differences (float64)
and against NumPy formulas for its forward value.

``check`` weights the output with a fixed random tensor before gradcheck sums
it: a plain sum would make some gradients trivially zero (sum of a softmax is
1) and hide wrong rules.
"""
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import mutually_broadcastable_shapes

import tinygraph as tg

FAST = settings(max_examples=12, deadline=None)


def t64(array, requires_grad=True):
    return tg.tensor(np.asarray(array, dtype=np.float64), requires_grad=requires_grad)


def check(fn, *inputs, seed=0):
    """gradcheck of sum(w * fn(*inputs)) with a fixed random weight w."""
    out = fn(*inputs)
    weight = tg.tensor(np.random.default_rng(seed).standard_normal(out.shape) + 0.5, dtype="float64")
    assert tg.gradcheck(lambda *xs: fn(*xs) * weight, inputs)


def pair(shapes, seed):
    rng = np.random.default_rng(seed)
    a, b = shapes.input_shapes
    return rng.standard_normal(a), rng.standard_normal(b), shapes.result_shape


binary_shapes = mutually_broadcastable_shapes(num_shapes=2, min_dims=0, max_dims=3, max_side=3)
seeds = st.integers(0, 2**16)


# ---------------------------------------------------------------------------
# elementwise binary ops with broadcasting
# ---------------------------------------------------------------------------
@FAST
@given(shapes=binary_shapes, seed=seeds)
def test_add_sub_mul_broadcast(shapes, seed):
    a, b, out_shape = pair(shapes, seed)
    for fn, ref in [(tg.add, np.add), (tg.sub, np.subtract), (tg.mul, np.multiply)]:
        y = fn(t64(a), t64(b))
        assert y.shape == out_shape
        np.testing.assert_allclose(y.numpy(), ref(a, b))
        check(fn, t64(a), t64(b), seed=seed)


@FAST
@given(shapes=binary_shapes, seed=seeds)
def test_div_broadcast(shapes, seed):
    a, b, _ = pair(shapes, seed)
    b = np.sign(b) * (np.abs(b) + 0.5)  # keep away from zero
    np.testing.assert_allclose(tg.div(t64(a), t64(b)).numpy(), a / b)
    check(tg.div, t64(a), t64(b), seed=seed)


@FAST
@given(shapes=binary_shapes, seed=seeds)
def test_pow_tensor_exponent(shapes, seed):
    a, b, _ = pair(shapes, seed)
    a = np.abs(a) + 0.5  # log(a) appears in d/db
    np.testing.assert_allclose(tg.pow(t64(a), t64(b)).numpy(), a ** b)
    check(tg.pow, t64(a), t64(b), seed=seed)


@pytest.mark.parametrize("exponent", [2, 3.0, 0.5, -1.5])
def test_pow_scalar_exponent(exponent, rng):
    a = np.abs(rng.standard_normal((2, 3))) + 0.5
    np.testing.assert_allclose((t64(a) ** exponent).numpy(), a ** exponent)
    check(lambda x: x ** exponent, t64(a))


def test_pow_scalar_base(rng):
    b = rng.standard_normal((3,))
    np.testing.assert_allclose((2.5 ** t64(b)).numpy(), 2.5 ** b)
    check(lambda x: 2.5 ** x, t64(b))


@FAST
@given(shapes=binary_shapes, seed=seeds)
def test_maximum_minimum(shapes, seed):
    a, b, _ = pair(shapes, seed)
    b = b + 0.05 * np.sign(b - 0.0)  # random floats: ties have probability zero
    np.testing.assert_allclose(tg.maximum(t64(a), t64(b)).numpy(), np.maximum(a, b))
    np.testing.assert_allclose(tg.minimum(t64(a), t64(b)).numpy(), np.minimum(a, b))
    check(tg.maximum, t64(a), t64(b), seed=seed)
    check(tg.minimum, t64(a), t64(b), seed=seed)


def test_maximum_tie_sends_gradient_to_first_argument():
    a, b = t64([1.0, 2.0]), t64([1.0, 3.0])
    tg.maximum(a, b).sum().backward()
    np.testing.assert_array_equal(a.grad.numpy(), [1.0, 0.0])
    np.testing.assert_array_equal(b.grad.numpy(), [0.0, 1.0])


@FAST
@given(shapes=mutually_broadcastable_shapes(num_shapes=3, max_dims=3, max_side=3), seed=seeds)
def test_where_broadcast(shapes, seed):
    rng = np.random.default_rng(seed)
    c_shape, a_shape, b_shape = shapes.input_shapes
    cond = rng.random(c_shape) > 0.5
    a, b = rng.standard_normal(a_shape), rng.standard_normal(b_shape)
    np.testing.assert_allclose(tg.where(cond, t64(a), t64(b)).numpy(), np.where(cond, a, b))
    check(lambda x, y: tg.where(cond, x, y), t64(a), t64(b), seed=seed)


def test_operators_with_python_scalars_on_both_sides(rng):
    a = rng.standard_normal((2, 2)) + 3.0
    x = t64(a)
    np.testing.assert_allclose((2.0 - x).numpy(), 2.0 - a)
    np.testing.assert_allclose((2.0 / x).numpy(), 2.0 / a)
    np.testing.assert_allclose((-x).numpy(), -a)
    check(lambda v: 2.0 - v, x)
    check(lambda v: 2.0 / v, x)
    check(lambda v: 3.0 * v + 1.0, x)
    check(tg.neg, x)


# ---------------------------------------------------------------------------
# elementwise unary ops
# ---------------------------------------------------------------------------
def _sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


UNARY = [
    ("exp", tg.exp, np.exp, lambda a: a),
    ("log", tg.log, np.log, lambda a: np.abs(a) + 0.5),
    ("sqrt", tg.sqrt, np.sqrt, lambda a: np.abs(a) + 0.5),
    ("abs", tg.abs, np.abs, lambda a: np.sign(a) * (np.abs(a) + 0.1)),
    ("tanh", tg.tanh, np.tanh, lambda a: a),
    ("sigmoid", tg.sigmoid, _sigmoid, lambda a: a),
    ("relu", tg.relu, lambda a: np.maximum(a, 0), lambda a: np.sign(a) * (np.abs(a) + 0.1)),
    ("neg", tg.neg, np.negative, lambda a: a),
]


@pytest.mark.parametrize("name,fn,ref,domain", UNARY, ids=[u[0] for u in UNARY])
@pytest.mark.parametrize("shape", [(), (4,), (2, 3)])
def test_unary(name, fn, ref, domain, shape, rng):
    a = domain(rng.standard_normal(shape))
    np.testing.assert_allclose(fn(t64(a)).numpy(), ref(a), rtol=1e-12)
    check(fn, t64(a))


def test_tensor_methods_match_functions(rng):
    a = np.abs(rng.standard_normal((2, 3))) + 0.5
    x = t64(a)
    for method in ["exp", "log", "tanh", "sigmoid", "relu"]:
        np.testing.assert_allclose(getattr(x, method)().numpy(), getattr(tg, method)(x).numpy())


def test_sigmoid_is_stable_for_large_inputs():
    y = tg.sigmoid(t64([-800.0, 0.0, 800.0]))
    np.testing.assert_allclose(y.numpy(), [0.0, 0.5, 1.0])


def _math_sigmoid(v):
    """The logistic function in Python floats, exact to float64 rounding in both tails."""
    import math
    return 1.0 / (1.0 + math.exp(-v)) if v >= 0 else math.exp(v) / (1.0 + math.exp(v))


@pytest.mark.parametrize("dtype,rtol", [("float32", 1e-6), ("float64", 1e-14)])
def test_sigmoid_keeps_relative_precision_in_the_negative_tail(dtype, rtol):
    # 0.5 * (tanh(x/2) + 1) cancels: float32 gave sigmoid(-17) 44% off and sigmoid(-20) = 0
    values = [-100.0, -80.0, -30.0, -20.0, -17.0, -5.0, -0.5, 0.0, 0.5, 5.0, 17.0, 30.0]
    x = tg.tensor(np.array(values), dtype=dtype)
    expected = np.array([_math_sigmoid(v) for v in values])
    expected = expected.astype(dtype).astype(np.float64)  # the reference rounded to the dtype
    got = tg.sigmoid(x).numpy()
    assert got.dtype == np.dtype(dtype)
    np.testing.assert_allclose(got.astype(np.float64), expected, rtol=rtol, atol=0)
    raw = tg.ops.stable_sigmoid(x.data)  # the raw-array helper the fused cells use
    np.testing.assert_array_equal(raw, got)
    # one value at a time: all but the far tail take the direct 1/(1+exp(-x)) branch,
    # which must be just as precise (the whole array above took the e/(1+e) branch)
    alone = np.array([tg.ops.stable_sigmoid(x.data[k:k + 1])[0] for k in range(len(values))])
    np.testing.assert_allclose(alone.astype(np.float64), expected, rtol=rtol, atol=0)


def test_fused_lstm_cell_gates_use_the_precise_sigmoid():
    from tinygraph.models.fused import lstm_cell

    # nearly closed input and forget gates (pre-activations -18, -17): in float32 the
    # tanh form gave f = 5.96e-8 instead of 4.14e-8 and i twice its value: c' 55% off
    H = 2
    b = np.concatenate([np.full(H, -18.0), np.full(H, -17.0), np.full(H, 1.0), np.zeros(H)])
    zeros = lambda *shape: tg.zeros(*shape, dtype="float32")  # noqa: E731
    c = tg.ones(1, H, dtype="float32")
    h_new, c_new = lstm_cell(zeros(1, 3), zeros(1, H), c, zeros(4 * H, 3), zeros(4 * H, H),
                             tg.tensor(b, dtype="float32"))
    i, f, g = _math_sigmoid(-18.0), _math_sigmoid(-17.0), np.tanh(1.0)
    expected_c = f * 1.0 + i * g
    np.testing.assert_allclose(c_new.numpy(), np.full((1, H), expected_c), rtol=1e-5)
    np.testing.assert_allclose(h_new.numpy(), np.full((1, H), 0.5 * np.tanh(expected_c)), rtol=1e-5)


def test_sigmoid_gradient_in_the_negative_tail():
    # d sigmoid/dx = s (1 - s) ~ exp(x) for x << 0: relative precision carries over
    x = t64([-30.0, -20.0])
    tg.sigmoid(x).sum().backward()
    expected = [_math_sigmoid(v) * (1 - _math_sigmoid(v)) for v in (-30.0, -20.0)]
    np.testing.assert_allclose(x.grad.numpy(), expected, rtol=1e-13)


def test_clip(rng):
    a = rng.uniform(-2, 2, (3, 4))
    a = a[np.abs(np.abs(a) - 1.0) > 0.05].reshape(-1)  # no value at a kink
    np.testing.assert_allclose(tg.clip(t64(a), -1.0, 1.0).numpy(), np.clip(a, -1, 1))
    check(lambda x: tg.clip(x, -1.0, 1.0), t64(a))
    check(lambda x: tg.clip(x, None, 0.5), t64(a + 0.013))
    check(lambda x: x.clip(-0.5, None), t64(a + 0.013))


# ---------------------------------------------------------------------------
# reductions
# ---------------------------------------------------------------------------
AXES = [None, 0, -1, 1, (0, 2), (-1, 0)]


@pytest.mark.parametrize("axis", AXES)
@pytest.mark.parametrize("keepdims", [False, True])
@pytest.mark.parametrize("name", ["sum", "mean", "max"])
def test_reductions(name, axis, keepdims, rng):
    a = rng.standard_normal((2, 3, 4))
    y = getattr(tg, name)(t64(a), axis=axis, keepdims=keepdims)
    np.testing.assert_allclose(y.numpy(), getattr(np, name)(a, axis=axis, keepdims=keepdims))
    check(lambda x: getattr(tg, name)(x, axis=axis, keepdims=keepdims), t64(a))
    method = getattr(t64(a), name)(axis=axis, keepdims=keepdims)
    np.testing.assert_allclose(method.numpy(), y.numpy())


def test_max_ties_split_the_gradient():
    x = t64([[1.0, 3.0, 3.0], [2.0, 0.0, 2.0]])
    tg.max(x, axis=1).sum().backward()
    np.testing.assert_allclose(x.grad.numpy(), [[0, 0.5, 0.5], [0.5, 0, 0.5]])


def test_min_reduction(rng):
    a = rng.standard_normal((3, 4))
    np.testing.assert_allclose(tg.min(t64(a), axis=0).numpy(), a.min(axis=0))
    check(lambda x: tg.min(x, axis=0), t64(a))


# ---------------------------------------------------------------------------
# shape ops
# ---------------------------------------------------------------------------
def test_reshape(rng):
    a = rng.standard_normal((2, 3, 2))
    np.testing.assert_array_equal(tg.reshape(t64(a), (3, 4)).numpy(), a.reshape(3, 4))
    check(lambda x: tg.reshape(x, (3, 4)), t64(a))
    check(lambda x: x.reshape(-1, 2), t64(a))
    check(lambda x: x.reshape(12), t64(a))


@pytest.mark.parametrize("axes", [None, (1, 0, 2), (2, 0, 1), (-1, 0, 1), (0, -1, -2)])
def test_transpose(axes, rng):
    a = rng.standard_normal((2, 3, 4))
    np.testing.assert_array_equal(tg.transpose(t64(a), axes).numpy(), np.transpose(a, axes))
    check(lambda x: tg.transpose(x, axes), t64(a))


def test_transpose_method_and_T(rng):
    a = rng.standard_normal((2, 3))
    np.testing.assert_array_equal(t64(a).T.numpy(), a.T)
    np.testing.assert_array_equal(t64(a).transpose(1, 0).numpy(), a.T)
    check(lambda x: x.T, t64(a))


@pytest.mark.parametrize("ax1,ax2", [(0, 1), (0, -1), (-1, -2), (2, 0)])
def test_swapaxes(ax1, ax2, rng):
    a = rng.standard_normal((2, 3, 4))
    np.testing.assert_array_equal(tg.swapaxes(t64(a), ax1, ax2).numpy(), np.swapaxes(a, ax1, ax2))
    check(lambda x: tg.swapaxes(x, ax1, ax2), t64(a))


@FAST
@given(shapes=binary_shapes, seed=seeds)
def test_broadcast_to_and_sum_to(shapes, seed):
    a, _, out_shape = pair(shapes, seed)
    np.testing.assert_array_equal(tg.broadcast_to(t64(a), out_shape).numpy(), np.broadcast_to(a, out_shape))
    check(lambda x: tg.broadcast_to(x, out_shape), t64(a), seed=seed)
    big = np.random.default_rng(seed).standard_normal(out_shape)
    small = tg.sum_to(t64(big), a.shape)
    assert small.shape == a.shape
    # sum_to is the adjoint of broadcast_to: <broadcast(a), big> == <a, sum_to(big)>
    np.testing.assert_allclose(np.sum(np.broadcast_to(a, out_shape) * big), np.sum(a * small.numpy()))
    check(lambda x: tg.sum_to(x, a.shape), t64(big), seed=seed)


# ---------------------------------------------------------------------------
# matmul
# ---------------------------------------------------------------------------
MATMUL_SHAPES = [
    ((3, 4), (4, 2)),
    ((4,), (4, 2)),          # 1-D left
    ((3, 4), (4,)),          # 1-D right
    ((4,), (4,)),            # inner product -> scalar
    ((2, 3, 4), (4, 5)),     # batched left, broadcast right
    ((3, 4), (2, 4, 5)),     # broadcast left
    ((2, 1, 3, 4), (5, 4, 2)),  # batch dims broadcast against each other
    ((4,), (2, 4, 3)),       # 1-D against a batch
]


@pytest.mark.parametrize("sa,sb", MATMUL_SHAPES, ids=[f"{a}@{b}" for a, b in MATMUL_SHAPES])
def test_matmul(sa, sb, rng):
    a, b = rng.standard_normal(sa), rng.standard_normal(sb)
    y = tg.matmul(t64(a), t64(b))
    assert y.shape == np.matmul(a, b).shape
    np.testing.assert_allclose(y.numpy(), np.matmul(a, b))
    np.testing.assert_allclose((t64(a) @ t64(b)).numpy(), a @ b)
    check(tg.matmul, t64(a), t64(b))


# ---------------------------------------------------------------------------
# indexing, take, concat, stack, split
# ---------------------------------------------------------------------------
INDICES = [
    ("int", 1),
    ("negative int", -1),
    ("slice", slice(1, 3)),
    ("step slice", slice(None, None, -2)),
    ("tuple", (slice(None), 2)),
    ("ellipsis", (Ellipsis, 0)),
    ("newaxis", (None, 1)),
    ("int array", np.array([0, 2])),
    ("repeated", np.array([1, 1, 0, 1])),
    ("list", [2, 2]),
    ("2-D int array", np.array([[0, 1], [1, 1]])),
    ("two arrays", (np.array([0, 1, 1]), np.array([2, 2, 0]))),
    ("array and slice", (slice(None), np.array([3, 0, 3]))),
    ("bool mask", np.array([True, False, True])),
]


@pytest.mark.parametrize("name,index", INDICES, ids=[i[0] for i in INDICES])
def test_getitem(name, index, rng):
    a = rng.standard_normal((3, 4))
    np.testing.assert_array_equal(t64(a)[index].numpy(), a[index])
    check(lambda x: x[index], t64(a))


def test_getitem_repeated_indices_add_up():
    x = t64([1.0, 2.0, 3.0])
    x[np.array([0, 0, 2, 0])].sum().backward()
    np.testing.assert_array_equal(x.grad.numpy(), [3.0, 0.0, 1.0])


def test_getitem_with_int_tensor_index():
    x = t64([1.0, 2.0, 3.0])
    idx = tg.tensor([2, 2])
    x[idx].sum().backward()
    np.testing.assert_array_equal(x.grad.numpy(), [0.0, 0.0, 2.0])


@pytest.mark.parametrize("shape", [(5, 4), (2, 3, 4), (4,)])
def test_pick_equals_take_along_axis_and_passes_gradcheck(shape, rng):
    a = rng.standard_normal(shape)
    indices = rng.integers(0, shape[-1], shape[:-1])
    got = tg.ops.pick(t64(a), indices)
    np.testing.assert_array_equal(got.numpy(), np.take_along_axis(a, indices[..., None], axis=-1)[..., 0])
    check(lambda x: tg.ops.pick(x, indices), t64(a))
    f = lambda z: (tg.ops.pick(z, indices) ** 3).sum()  # noqa: E731  (second derivative too)
    v = rng.standard_normal(shape)
    np.testing.assert_allclose(_hvp(f, t64(a), v), _fd_hvp(f, a, v), rtol=1e-5, atol=1e-7)


def test_pick_rejects_bad_indices():
    with pytest.raises(TypeError, match="pick: indices must be integers"):
        tg.ops.pick(t64([[1.0, 2.0]]), np.array([0.0]))
    with pytest.raises(ValueError, match="pick: indices must have shape"):
        tg.ops.pick(t64([[1.0, 2.0]]), np.array([0, 1]))


@pytest.mark.parametrize("axis", [0, 1, -1])
@pytest.mark.parametrize("indices", [[0, 2, 2], np.array([[1, 0], [1, 1]])])
def test_take(axis, indices, rng):
    a = rng.standard_normal((3, 3, 2)) if axis != -1 else rng.standard_normal((2, 3))
    np.testing.assert_array_equal(tg.take(t64(a), indices, axis=axis).numpy(), np.take(a, indices, axis=axis))
    check(lambda x: tg.take(x, indices, axis=axis), t64(a))


@pytest.mark.parametrize("shape,index_shape,axis", [
    ((5, 4), (5, 1), -1),        # one pick per row: what nll_loss does
    ((5, 4), (5, 3), 1),         # several picks per row, repeats likely
    ((3, 4), (2, 4), 0),
    ((2, 3, 4), (2, 3, 2), 2),
    ((2, 3, 4), (2, 5, 4), 1),
    ((2, 3, 4), (1, 3, 4), 0),   # a size-1 axis of the indices broadcasts
])
def test_take_along_axis(shape, index_shape, axis, rng):
    a = rng.standard_normal(shape)
    indices = rng.integers(0, shape[axis], index_shape)
    got = tg.ops.take_along_axis(t64(a), indices, axis=axis)
    np.testing.assert_array_equal(got.numpy(), np.take_along_axis(a, indices, axis=axis))
    check(lambda x: tg.ops.take_along_axis(x, indices, axis=axis), t64(a))


def test_take_along_axis_repeated_picks_add_and_second_derivative(rng):
    x = t64([[1.0, 2.0, 3.0]])
    indices = np.array([[2, 0, 2, 2]])
    (tg.ops.take_along_axis(x, indices, axis=1) * t64([[1.0, 10.0, 100.0, 1000.0]], False)).sum().backward()
    np.testing.assert_array_equal(x.grad.numpy(), [[10.0, 0.0, 1101.0]])
    a, v = rng.standard_normal(4) + 0.3, rng.standard_normal(4)
    f = lambda z: (tg.ops.take_along_axis(z, np.array([0, 3, 3]), axis=0) ** 3).sum()  # noqa: E731
    np.testing.assert_allclose(_hvp(f, t64(a), v), _fd_hvp(f, a, v), rtol=1e-5, atol=1e-7)


def test_take_along_axis_rejects_float_indices():
    with pytest.raises(TypeError, match="take_along_axis: indices must be integers"):
        tg.ops.take_along_axis(t64([[1.0, 2.0]]), np.array([[0.0]]), axis=1)


@pytest.mark.parametrize("axis", [0, 1, -1])
def test_concat_and_stack(axis, rng):
    shapes = [[2, 3, 2] for _ in range(3)]
    for k, shape in enumerate(shapes):
        shape[axis] = k + 1  # sizes differ along the joined axis only
    arrays = [rng.standard_normal(s) for s in shapes]
    got = tg.concat([t64(a) for a in arrays], axis=axis)
    np.testing.assert_array_equal(got.numpy(), np.concatenate(arrays, axis=axis))
    check(lambda *xs: tg.concat(list(xs), axis=axis), *[t64(a) for a in arrays])
    same = [rng.standard_normal((2, 3)) for _ in range(3)]
    np.testing.assert_array_equal(tg.stack([t64(a) for a in same], axis=axis).numpy(), np.stack(same, axis=axis))
    check(lambda *xs: tg.stack(list(xs), axis=axis), *[t64(a) for a in same])


def test_concat_with_a_constant_input(rng):
    a, c = rng.standard_normal((2, 2)), rng.standard_normal((1, 2))
    check(lambda x: tg.concat([x, tg.tensor(c), x], axis=0), t64(a))


@pytest.mark.parametrize("spec,axis", [(2, 0), (3, 1), ([1, 3], 1), ([2], -1)])
def test_split(spec, axis, rng):
    a = rng.standard_normal((4, 6))
    parts = tg.split(t64(a), spec, axis=axis)
    expected = np.split(a, spec, axis=axis)
    assert len(parts) == len(expected)
    for p, e in zip(parts, expected):
        np.testing.assert_array_equal(p.numpy(), e)
    weights = [np.random.default_rng(k).standard_normal(e.shape) for k, e in enumerate(expected)]
    check(lambda x: tg.concat([p * w for p, w in zip(tg.split(x, spec, axis=axis), weights)], axis=axis), t64(a))


# ---------------------------------------------------------------------------
# softmax family and losses
# ---------------------------------------------------------------------------
def _np_softmax(a, axis):
    e = np.exp(a - a.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


@pytest.mark.parametrize("axis", [-1, 0, 1])
def test_softmax_and_log_softmax(axis, rng):
    a = rng.standard_normal((2, 3, 4))
    np.testing.assert_allclose(tg.softmax(t64(a), axis=axis).numpy(), _np_softmax(a, axis))
    np.testing.assert_allclose(tg.log_softmax(t64(a), axis=axis).numpy(), np.log(_np_softmax(a, axis)))
    check(lambda x: tg.softmax(x, axis=axis), t64(a))
    check(lambda x: tg.log_softmax(x, axis=axis), t64(a))


def test_log_softmax_is_stable_for_huge_logits():
    y = tg.log_softmax(t64([[1000.0, 0.0, -1000.0]]))
    np.testing.assert_allclose(y.numpy(), [[0.0, -1000.0, -2000.0]])


def _np_cross_entropy(logits, targets):
    logp = np.log(_np_softmax(logits, -1))
    return -np.take_along_axis(logp, targets[..., None], axis=-1)[..., 0]


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("shape", [(4, 3), (2, 3, 5)])
def test_cross_entropy(reduction, shape, rng):
    logits = rng.standard_normal(shape) * 3
    targets = rng.integers(0, shape[-1], shape[:-1])
    per_item = _np_cross_entropy(logits, targets)
    expected = {"mean": per_item.mean(), "sum": per_item.sum(), "none": per_item}[reduction]
    np.testing.assert_allclose(tg.cross_entropy(t64(logits), targets, reduction=reduction).numpy(), expected)
    check(lambda x: tg.cross_entropy(x, targets, reduction=reduction), t64(logits))


def test_cross_entropy_mask_averages_over_kept_positions(rng):
    logits = rng.standard_normal((3, 4, 5))
    targets = rng.integers(0, 5, (3, 4))
    mask = np.array([[1, 1, 1, 0], [1, 0, 0, 0], [1, 1, 0, 0]])
    per_item = _np_cross_entropy(logits, targets)
    expected = (per_item * mask).sum() / mask.sum()
    np.testing.assert_allclose(tg.cross_entropy(t64(logits), targets, mask=mask).numpy(), expected)
    check(lambda x: tg.cross_entropy(x, targets, mask=mask), t64(logits))
    summed = tg.cross_entropy(t64(logits), targets, reduction="sum", mask=mask)
    np.testing.assert_allclose(summed.numpy(), (per_item * mask).sum())
    # masked positions get exactly zero gradient
    x = t64(logits)
    tg.cross_entropy(x, targets, mask=mask).backward()
    assert np.all(x.grad.numpy()[mask == 0] == 0)


def test_cross_entropy_records_no_dense_one_hot(rng):
    # the target picks are a gather: nothing of shape (N, K) besides the logits and
    # their log-softmax, so memory stays O(N) however many classes there are
    N, K = 6, 50
    logits = t64(rng.standard_normal((N, K)))
    targets = rng.integers(0, K, N)
    mask = (rng.random(N) > 0.3).astype(np.float64)
    for loss in (tg.cross_entropy(logits, targets), tg.cross_entropy(logits, targets, mask=mask)):
        big = [n.op for n in tg.Graph.from_outputs(loss).nodes if tuple(n.shape) == (N, K)]
        assert big == ["leaf"], big  # the fused node's output is per row
    with tg.decomposed():
        loss = tg.cross_entropy(logits, targets, mask=mask)
    big = [n.op for n in tg.Graph.from_outputs(loss).nodes if tuple(n.shape) == (N, K)]
    assert sorted(big) == ["leaf", "log_softmax"], big


@pytest.mark.parametrize("shape", [(7, 5), (3, 4, 6), (1, 1)])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("masked", [False, True])
def test_fused_cross_entropy_equals_the_decomposed_ops(shape, reduction, masked, rng):
    # the fused node (one VJP: softmax - onehot) against log_softmax + pick + neg, float64
    a = rng.standard_normal(shape) * 3
    targets = rng.integers(0, shape[-1], shape[:-1])
    mask = (rng.random(shape[:-1]) > 0.3).astype(np.float64) if masked else None
    w = rng.standard_normal(shape[:-1]) if reduction == "none" else 1.0
    x_fused, x_dec = t64(a), t64(a)
    fused = tg.cross_entropy(x_fused, targets, reduction=reduction, mask=mask)
    with tg.decomposed():
        dec = tg.cross_entropy(x_dec, targets, reduction=reduction, mask=mask)
    assert "cross_entropy" in [n.op for n in tg.Graph.from_outputs(fused).nodes]
    assert "cross_entropy" not in [n.op for n in tg.Graph.from_outputs(dec).nodes]
    np.testing.assert_allclose(fused.numpy(), dec.numpy(), rtol=1e-12, atol=1e-12)
    (fused * w).sum().backward()
    (dec * w).sum().backward()
    np.testing.assert_allclose(x_fused.grad.numpy(), x_dec.grad.numpy(), rtol=1e-12, atol=1e-12)
    check(lambda x: tg.cross_entropy(x, targets, reduction=reduction, mask=mask), t64(a))


def test_fused_cross_entropy_second_derivative_and_large_logits(rng):
    a = rng.standard_normal((4, 5))
    targets = rng.integers(0, 5, 4)
    f = lambda z: (tg.ops.softmax_cross_entropy(z, targets) ** 2).sum()  # noqa: E731
    v = rng.standard_normal((4, 5))
    np.testing.assert_allclose(_hvp(f, t64(a), v), _fd_hvp(f, a, v), rtol=1e-5, atol=1e-7)
    # stable for logits far beyond exp's range, in float32 too
    big = np.array([[1000.0, 0.0, -1000.0], [-5000.0, 5000.0, 0.0]], dtype=np.float32)
    x = tg.tensor(big, requires_grad=True)
    loss = tg.ops.softmax_cross_entropy(x, np.array([0, 0]))
    np.testing.assert_allclose(loss.numpy(), [0.0, 10000.0])
    loss.sum().backward()
    np.testing.assert_allclose(x.grad.numpy(), [[0.0, 0.0, 0.0], [-1.0, 1.0, 0.0]])


def test_fused_cross_entropy_rejects_bad_targets():
    x = t64([[1.0, 2.0], [0.0, 1.0]])
    with pytest.raises(TypeError, match="softmax_cross_entropy: targets must be integers"):
        tg.ops.softmax_cross_entropy(x, np.array([0.0, 1.0]))
    with pytest.raises(ValueError, match="softmax_cross_entropy: targets must have shape"):
        tg.ops.softmax_cross_entropy(x, np.array([0, 1, 1]))
    with pytest.raises(ValueError, match=r"cross_entropy: target classes must lie in \[0, 2\)"):
        tg.cross_entropy(x, np.array([0, 2]))


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_nll_loss(reduction, rng):
    logp = np.log(_np_softmax(rng.standard_normal((5, 4)), -1))
    targets = rng.integers(0, 4, 5)
    per_item = -logp[np.arange(5), targets]
    expected = {"mean": per_item.mean(), "sum": per_item.sum(), "none": per_item}[reduction]
    np.testing.assert_allclose(tg.nll_loss(t64(logp), targets, reduction=reduction).numpy(), expected)
    check(lambda x: tg.nll_loss(x, targets, reduction=reduction), t64(logp))


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_mse_loss(reduction, rng):
    p, q = rng.standard_normal((3, 4)), rng.standard_normal((3, 4))
    sq = (p - q) ** 2
    expected = {"mean": sq.mean(), "sum": sq.sum(), "none": sq}[reduction]
    np.testing.assert_allclose(tg.mse_loss(t64(p), t64(q), reduction=reduction).numpy(), expected)
    check(lambda a, b: tg.mse_loss(a, b, reduction=reduction), t64(p), t64(q))


# ---------------------------------------------------------------------------
# dtypes: float32 stays float32 through forward and backward
# ---------------------------------------------------------------------------
FLOAT32_CASES = {
    "scalar mul/add": lambda x: x * 2.0 + 1,
    "scalar div/sub": lambda x: 1.0 / (x + 3.0) - 0.5,
    "pow scalar exponent": lambda x: (x * x + 1.0) ** 1.5,
    "pow scalar base": lambda x: 2.0 ** x,
    "numpy scalar": lambda x: x * np.float64(2.0),
    "sigmoid/tanh/exp": lambda x: tg.sigmoid(x) + tg.tanh(x) + tg.exp(x),
    "mean/max": lambda x: x.mean(axis=0) + x.max(axis=0),
    "softmax": lambda x: tg.softmax(x) * tg.log_softmax(x),
    "clip/relu/abs": lambda x: tg.clip(x, -0.5, 0.5) + tg.relu(x) + abs(x),
    "where/maximum": lambda x: tg.where(x.data > 0, x, 0.0) + tg.maximum(x, 0.1),
    "cross_entropy": lambda x: tg.cross_entropy(x, np.array([0, 1, 2])),
    "mse": lambda x: tg.mse_loss(x, np.zeros((3, 4), np.float32)),
    "getitem/take": lambda x: x[np.array([0, 0])] + tg.take(x, [1, 2], axis=0),
}


@pytest.mark.parametrize("name", list(FLOAT32_CASES))
def test_float32_stays_float32(name, rng):
    x = tg.tensor(rng.standard_normal((3, 4)), dtype="float32", requires_grad=True)
    y = FLOAT32_CASES[name](x)
    assert y.dtype == np.float32, f"{name}: forward gave {y.dtype}"
    y.sum().backward()
    assert x.grad.dtype == np.float32, f"{name}: gradient is {x.grad.dtype}"


def test_tensor_keeps_float64_arrays_and_defaults_lists_to_float32():
    assert tg.tensor(np.zeros(3)).dtype == np.float64
    assert tg.tensor(np.float64(1.5)).dtype == np.float64
    assert tg.tensor([1.0, 2.0]).dtype == np.float32
    assert tg.tensor(1.5).dtype == np.float32
    assert tg.tensor([1, 2]).dtype.kind == "i"
    assert tg.tensor([1.0], dtype="float64").dtype == np.float64
    assert tg.randn(2, 2).dtype == np.float32
    assert tg.zeros((2, 3), dtype="float64").dtype == np.float64


# ---------------------------------------------------------------------------
# second derivatives
# ---------------------------------------------------------------------------
def _hvp(f, x, v):
    """Hessian-vector product of scalar f at x via double backward."""
    g, = tg.grad(f(x), [x], create_graph=True)
    hv, = tg.grad((g * tg.tensor(v)).sum(), [x])
    return hv.numpy()


def _fd_hvp(f, x0, v, eps=1e-5):
    """Central differences of the first-order gradient along v."""
    def gradient_at(point):
        x = t64(point)
        g, = tg.grad(f(x), [x])
        return g.numpy()
    return (gradient_at(x0 + eps * v) - gradient_at(x0 - eps * v)) / (2 * eps)


@pytest.mark.parametrize("name,fn,second", [
    ("tanh", tg.tanh, lambda a: -2 * np.tanh(a) * (1 - np.tanh(a) ** 2)),
    ("sigmoid", tg.sigmoid, lambda a: _sigmoid(a) * (1 - _sigmoid(a)) * (1 - 2 * _sigmoid(a))),
])
def test_second_derivative_elementwise(name, fn, second, rng):
    a = rng.standard_normal((2, 3))
    w = rng.standard_normal((2, 3))
    f = lambda x: (fn(x) * tg.tensor(w)).sum()  # noqa: E731
    x = t64(a)
    g, = tg.grad(f(x), [x], create_graph=True)
    assert g.requires_grad, "create_graph=True must give a differentiable gradient"
    h, = tg.grad(g.sum(), [x])  # diagonal Hessian: d/dx (w * f'(x)) = w * f''(x)
    np.testing.assert_allclose(h.numpy(), w * second(a), rtol=1e-10, atol=1e-12)
    v = rng.standard_normal((2, 3))
    np.testing.assert_allclose(_hvp(f, t64(a), v), _fd_hvp(f, a, v), rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("axis", [-1, 0])
def test_second_derivative_softmax(axis, rng):
    a = rng.standard_normal((3, 4))
    w = rng.standard_normal((3, 4))
    f = lambda x: (tg.softmax(x, axis=axis) ** 2 * tg.tensor(w)).sum()  # noqa: E731
    for _ in range(2):
        v = rng.standard_normal((3, 4))
        np.testing.assert_allclose(_hvp(f, t64(a), v), _fd_hvp(f, a, v), rtol=1e-5, atol=1e-7)


def test_second_derivative_log_softmax_and_cross_entropy(rng):
    a = rng.standard_normal((3, 4))
    targets = np.array([0, 3, 1])
    f = lambda x: tg.cross_entropy(x * x, targets)  # noqa: E731
    v = rng.standard_normal((3, 4))
    np.testing.assert_allclose(_hvp(f, t64(a), v), _fd_hvp(f, a, v), rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("name,f", [
    ("take", lambda x: (tg.take(x, [0, 0, 2]) ** 3).sum()),
    ("getitem", lambda x: (x[np.array([1, 1, 3])] ** 3).sum()),
    ("max", lambda x: (tg.max(x * x, axis=0) * 2.0).sum()),
    ("div/log/sqrt", lambda x: (tg.log(x * x + 1.0) / tg.sqrt(x * x + 2.0)).sum()),
    ("matmul/concat", lambda x: (tg.concat([x, x * x]) @ tg.concat([x, x])).sum()),
])
def test_second_derivative_other_ops(name, f, rng):
    a = rng.standard_normal(4) + 0.3
    v = rng.standard_normal(4)
    np.testing.assert_allclose(_hvp(f, t64(a), v), _fd_hvp(f, a, v), rtol=1e-5, atol=1e-7)


def test_hessian_vector_product_two_layer_net(rng):
    x = rng.standard_normal((5, 3))
    y = rng.standard_normal((5, 2))
    W1, b1, W2 = rng.standard_normal((3, 4)), rng.standard_normal(4), rng.standard_normal((4, 2))
    sizes = [W1.size, b1.size, W2.size]
    shapes = [W1.shape, b1.shape, W2.shape]

    def unpack(theta):
        parts = np.split(theta, np.cumsum(sizes)[:-1])
        return [p.reshape(s) for p, s in zip(parts, shapes)]

    def loss(params):
        w1, c1, w2 = params
        hidden = tg.tanh(tg.tensor(x) @ w1 + c1)
        return tg.mse_loss(hidden @ w2, tg.tensor(y), reduction="sum")

    def flat_grad(theta):
        params = [t64(p) for p in unpack(theta)]
        return np.concatenate([g.numpy().ravel() for g in tg.grad(loss(params), params)])

    theta = np.concatenate([W1.ravel(), b1, W2.ravel()])
    v = rng.standard_normal(theta.size)
    params = [t64(p) for p in unpack(theta)]
    grads = tg.grad(loss(params), params, create_graph=True)
    dot = sum((g * tg.tensor(vp)).sum() for g, vp in zip(grads, unpack(v)))
    hv = np.concatenate([h.numpy().ravel() for h in tg.grad(dot, params)])
    eps = 1e-5
    fd = (flat_grad(theta + eps * v) - flat_grad(theta - eps * v)) / (2 * eps)
    np.testing.assert_allclose(hv, fd, rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------------------
# factories
# ---------------------------------------------------------------------------
def test_factories_accept_ints_or_a_tuple_and_keywords():
    for make in (tg.zeros, tg.ones, tg.randn, tg.rand):
        assert make(2, 3).shape == make((2, 3)).shape == (2, 3)
        t = make(2, dtype="float64", requires_grad=True)
        assert t.dtype == np.float64 and t.requires_grad and t.device == "cpu"
    np.testing.assert_array_equal(tg.zeros(2, 2).numpy(), np.zeros((2, 2)))
    np.testing.assert_array_equal(tg.ones(3).numpy(), np.ones(3))
    np.testing.assert_array_equal(tg.full((2, 2), 7.0).numpy(), np.full((2, 2), 7.0))
    np.testing.assert_array_equal(tg.arange(5).numpy(), np.arange(5))
    np.testing.assert_array_equal(tg.arange(1.0, 2.0, 0.5).numpy(), [1.0, 1.5])
    np.testing.assert_array_equal(tg.eye(3).numpy(), np.eye(3))
    base = tg.tensor([[1.0, 2.0]], dtype="float64")
    assert tg.zeros_like(base).dtype == np.float64 and tg.zeros_like(base).shape == (1, 2)
    np.testing.assert_array_equal(tg.ones_like(base).numpy(), [[1.0, 1.0]])
    u = tg.rand(1000)
    assert 0.0 <= float(u.numpy().min()) and float(u.numpy().max()) < 1.0


def test_manual_seed_makes_sampling_reproducible():
    tg.manual_seed(123)
    a, b = tg.randn(3, 2), tg.rand(4)
    tg.manual_seed(123)
    np.testing.assert_array_equal(tg.randn(3, 2).numpy(), a.numpy())
    np.testing.assert_array_equal(tg.rand(4).numpy(), b.numpy())


def test_tensor_copies_its_input():
    source = np.array([1.0, 2.0])
    t = tg.tensor(source)
    source[0] = 99.0
    assert t.numpy()[0] == 1.0


def test_public_api_names_exist():
    names = """tensor zeros ones full randn rand arange eye zeros_like ones_like manual_seed
        Tensor matmul add sub mul div neg pow exp log sqrt abs tanh sigmoid relu maximum minimum
        clip where sum mean max reshape transpose swapaxes broadcast_to sum_to getitem concat stack
        split take softmax log_softmax cross_entropy nll_loss mse_loss grad backward no_grad
        enable_grad Graph scope timestep gradcheck cuda_available detect_anomaly""".split()
    missing = [n for n in names if not hasattr(tg, n)]
    assert not missing, f"tinygraph lacks {missing}"
    x = tg.tensor([[1.0, -2.0]], requires_grad=True)
    for attr in ["data", "grad", "shape", "ndim", "dtype", "device", "requires_grad", "name",
                 "numpy", "item", "detach", "to", "backward", "sum", "mean", "max", "reshape",
                 "transpose", "T", "exp", "log", "tanh", "sigmoid", "relu"]:
        assert hasattr(x, attr), attr


# ---------------------------------------------------------------------------
# found in review: pow at zero, min on every dtype, where's condition, arange's step
# ---------------------------------------------------------------------------
def test_pow_gradients_at_zero_are_zero_like_pytorch():
    x = t64([0.0, 2.0])
    (x ** 0).sum().backward()                  # d(x^0)/dx = 0, also at x = 0 (not 0 * inf)
    np.testing.assert_array_equal(x.grad.numpy(), [0.0, 0.0])
    base, y = t64([0.0, 0.0, 3.0]), t64([2.0, 0.0, 1.5])
    tg.pow(base, y).sum().backward()           # d(0^y)/dy = 0 for y >= 0; elsewhere y-th power's log rule
    np.testing.assert_allclose(y.grad.numpy(), [0.0, 0.0, 3.0 ** 1.5 * np.log(3.0)])
    np.testing.assert_allclose(base.grad.numpy(), [0.0, 0.0, 1.5 * 3.0 ** 0.5])
    e = t64([0.0, 1.0])
    tg.pow(t64([0.0, 0.0], requires_grad=False), e).sum().backward()
    assert np.isfinite(e.grad.numpy()).all()


def test_pow_masked_gradient_stays_finite_in_second_order():
    x = t64([0.0, 0.7])
    y = t64([0.0, 2.0])
    g, = tg.grad(tg.pow(x, y).sum(), [x], create_graph=True)
    h, = tg.grad(g.sum(), [x])
    np.testing.assert_allclose(h.numpy(), [0.0, 2.0])   # d2/dx2 x^0 = 0; x^2 gives 2


@pytest.mark.parametrize("dtype", ["uint8", "int8", "bool", "float32"])
def test_min_is_numpys_min_on_every_dtype(dtype):
    values = {"uint8": [0, 5, 3], "int8": [-128, 7, 0], "bool": [True, False, True],
              "float32": [0.5, -2.0, 1.0]}[dtype]
    a = np.array(values, dtype=dtype)
    assert tg.tensor(a).min().numpy() == a.min()
    assert tg.min(tg.tensor(a)).numpy() == a.min()


def test_min_ties_split_the_gradient_like_max():
    x = t64([[1.0, -3.0, -3.0], [2.0, 0.0, 0.0]])
    tg.min(x, axis=1).sum().backward()
    np.testing.assert_allclose(x.grad.numpy(), [[0, 0.5, 0.5], [0, 0.5, 0.5]])


@pytest.mark.parametrize("cond", [[True, False, True], True, np.array(False)])
def test_where_takes_a_list_or_bool_condition_like_numpy(cond):
    a = t64([1.0, 2.0, 3.0])
    out = tg.where(cond, a, 0.0)
    np.testing.assert_array_equal(out.numpy(), np.where(cond, [1.0, 2.0, 3.0], 0.0))
    out.sum().backward()
    np.testing.assert_array_equal(a.grad.numpy(), np.broadcast_to(np.asarray(cond, float), (3,)))


@pytest.mark.parametrize("args,kwargs", [((10,), {"step": 2}), ((2, 9, 3), {}), ((5,), {}), ((1.0, 2.0, 0.25), {})])
def test_arange_is_numpys(args, kwargs):
    np.testing.assert_allclose(tg.arange(*args, **kwargs).numpy(), np.arange(*args, **kwargs))
