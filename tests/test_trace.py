"""Trace-and-replay must give exactly what eager execution gives."""
import numpy as np
import pytest

import tinygraph as tg
from tinygraph.trace import trace


def _lstm_step(Wx, Wh, b):
    def step(x, h, c):
        z = x @ Wx + h @ Wh + b
        f, i, g, o = tg.split(z, 4, axis=1)
        c2 = tg.sigmoid(f) * c + tg.sigmoid(i) * tg.tanh(g)
        h2 = tg.sigmoid(o) * tg.tanh(c2)
        return (h2 * h2).sum() + c2.sum()
    return step


@pytest.fixture
def lstm():
    tg.manual_seed(0)
    D, H = 3, 4
    params = [tg.randn(D, 4 * H, dtype="float64", requires_grad=True),
              tg.randn(H, 4 * H, dtype="float64", requires_grad=True),
              tg.randn(4 * H, dtype="float64", requires_grad=True)]
    return params, _lstm_step(*params), (D, H)


def _eager(step, params, arrays):
    xs = [tg.tensor(a, requires_grad=True) for a in arrays]
    for p in params:
        p.grad = None
    loss = step(*xs)
    loss.backward()
    return loss.item(), [x.grad.numpy() for x in xs], [p.grad.numpy() for p in params]


def test_replay_matches_eager_on_new_data(lstm):
    params, step, (D, H) = lstm
    rng = np.random.default_rng(1)
    example = [rng.standard_normal((2, n)) for n in (D, H, H)]
    compiled = trace(step, *example, params=params)
    fresh = [rng.standard_normal((2, n)) for n in (D, H, H)]
    value = compiled(*fresh)
    input_grads, param_grads = compiled.backward(np.ones(()))
    ref_value, ref_inputs, ref_params = _eager(step, params, fresh)
    assert float(value) == pytest.approx(ref_value, abs=1e-12)
    for a, b in zip(input_grads + param_grads, ref_inputs + ref_params):
        np.testing.assert_allclose(a, b, atol=1e-12)


def test_replay_reads_parameters_live(lstm):
    params, step, (D, H) = lstm
    rng = np.random.default_rng(2)
    data = [rng.standard_normal((2, n)) for n in (D, H, H)]
    compiled = trace(step, *data)  # params found automatically
    before = float(compiled(*data))
    params[0].data = params[0].data * 0.5  # what an optimizer step does
    after = float(compiled(*data))
    assert after != before
    assert after == pytest.approx(_eager(step, params, data)[0], abs=1e-12)


def test_replay_rejects_new_shapes(lstm):
    params, step, (D, H) = lstm
    compiled = trace(step, np.zeros((2, D)), np.zeros((2, H)), np.zeros((2, H)))
    with pytest.raises(ValueError, match="trace again"):
        compiled(np.zeros((3, D)), np.zeros((3, H)), np.zeros((3, H)))


def test_an_input_fn_does_not_read_gets_no_gradient(lstm):
    params, step, (D, H) = lstm
    rng = np.random.default_rng(3)
    data = [rng.standard_normal((2, n)) for n in (D, H, H)]
    ignored = rng.standard_normal((2, 7))
    compiled = trace(lambda x, h, c, unused: step(x, h, c), *data, ignored, params=params)
    fresh = [rng.standard_normal((2, n)) for n in (D, H, H)]
    value = compiled(*fresh, rng.standard_normal((2, 7)))
    input_grads, param_grads = compiled.backward(np.ones(()))
    ref_value, ref_inputs, ref_params = _eager(step, params, fresh)
    assert float(value) == pytest.approx(ref_value, abs=1e-12)
    assert input_grads[3] is None
    for a, b in zip(input_grads[:3] + param_grads, ref_inputs + ref_params):
        np.testing.assert_allclose(a, b, atol=1e-12)
    with pytest.raises(ValueError, match="trace again"):
        compiled(*fresh, np.zeros((3, 7)))


def test_integer_token_ids_are_plain_inputs_read_at_every_replay():
    rng = np.random.default_rng(4)
    table = tg.tensor(rng.standard_normal((10, 3)), dtype="float64", requires_grad=True)

    def fn(ids, scale):
        rows = tg.take(table, ids, axis=0)  # an embedding lookup
        return (tg.tanh(rows * scale) ** 2).sum()

    compiled = trace(fn, np.array([1, 2, 2]), np.ones(3), params=[table])
    ids, scale = np.array([7, 0, 7]), rng.standard_normal(3)
    value = compiled(ids, scale)
    (ids_grad, scale_grad), (table_grad,) = compiled.backward(np.ones(()))
    # eager reference on the new ids
    s = tg.tensor(scale, requires_grad=True)
    table.grad = None
    loss = fn(tg.tensor(ids), s)
    loss.backward()
    assert float(value) == pytest.approx(loss.item(), abs=1e-12)
    assert ids_grad is None
    np.testing.assert_allclose(scale_grad, s.grad.numpy(), atol=1e-12)
    np.testing.assert_allclose(table_grad, table.grad.numpy(), atol=1e-12)
    assert np.count_nonzero(np.abs(table_grad).sum(axis=1)) == 2  # rows 0 and 7 only


def test_replay_of_per_step_indexing_matches_eager():
    # the replayed backward accumulates x[t] slices like the eager walk (sparse)
    rng = np.random.default_rng(5)
    w = tg.tensor(rng.standard_normal((3, 3)) * 0.5, dtype="float64", requires_grad=True)

    def fn(x):
        h = tg.zeros(2, 3, dtype="float64")
        for t in range(x.shape[0]):
            h = tg.tanh(x[t] @ w + h)
        return (h * h).sum()

    xs = rng.standard_normal((6, 2, 3))
    compiled = trace(fn, xs, params=[w])
    fresh = rng.standard_normal((6, 2, 3))
    compiled(fresh)
    (x_grad,), (w_grad,) = compiled.backward(np.ones(()))
    x = tg.tensor(fresh, requires_grad=True)
    w.grad = None
    fn(x).backward()
    np.testing.assert_allclose(x_grad, x.grad.numpy(), atol=1e-12)
    np.testing.assert_allclose(w_grad, w.grad.numpy(), atol=1e-12)


def test_tg_trace_stays_the_function_after_importing_the_submodule():
    import importlib
    import tinygraph
    importlib.import_module("tinygraph.trace")
    assert callable(tinygraph.trace) and tinygraph.trace.__module__ == "tinygraph.trace"


def test_cross_entropy_targets_given_as_a_tensor_are_read_at_every_replay():
    from tinygraph.trace import trace
    rng = np.random.default_rng(3)
    W = tg.tensor(rng.standard_normal((4, 5)), requires_grad=True)

    def loss_of(x, y):
        return tg.cross_entropy(x @ W, y, reduction="sum")

    x0, y0 = rng.standard_normal((6, 4)), rng.integers(0, 5, 6)
    compiled = trace(loss_of, tg.tensor(x0), tg.tensor(y0), params=[W])
    x1, y1 = rng.standard_normal((6, 4)), rng.integers(0, 5, 6)
    assert not np.array_equal(y0, y1)
    value = compiled(x1, y1)
    _, (dW,) = compiled.backward(np.ones(()))
    eager = loss_of(tg.tensor(x1), tg.tensor(y1))
    W.grad = None
    eager.backward()
    np.testing.assert_allclose(value, eager.item(), rtol=1e-12)
    np.testing.assert_allclose(dW, W.grad.numpy(), rtol=1e-10)
