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
