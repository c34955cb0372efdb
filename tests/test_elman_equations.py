"""ElmanRNN's gradients equal the closed-form BPTT equations, computed by hand in NumPy.

With L = sum_t -log softmax(o(t))[y(t)] (cross_entropy with reduction="sum"):

    grad o(t) = y_hat(t) - 1_y(t)
    grad h(tau) = V^T grad o(tau)                                  (last step)
    grad h(t) = W^T diag(1 - h(t+1)^2) grad h(t+1) + V^T grad o(t)
    grad c = sum_t grad o(t)
    grad b = sum_t diag(1 - h(t)^2) grad h(t)
    grad V = sum_t grad o(t) h(t)^T
    grad W = sum_t diag(1 - h(t)^2) grad h(t) h(t-1)^T
    grad U = sum_t diag(1 - h(t)^2) grad h(t) x(t)^T

Column vectors as in the textbook, one sequence at a time; a batch sums over
its sequences.
"""
import numpy as np
import pytest

import tinygraph as tg
from tinygraph.models import ElmanRNN


def softmax(v):
    e = np.exp(v - v.max())
    return e / e.sum()


def textbook_bptt(U, W, V, b, c, xs, ys, h0):
    """Forward and backward of one sequence exactly as the equations read."""
    steps = len(xs)
    hs, yhats = [h0], []
    for t in range(steps):
        a = b + W @ hs[-1] + U @ xs[t]
        h = np.tanh(a)
        hs.append(h)
        yhats.append(softmax(c + V @ h))
    h = hs[1:]  # h[t] is h(t); hs[t] is h(t-1)
    grad_o = [yhats[t] - np.eye(len(c))[ys[t]] for t in range(steps)]
    grad_h = [None] * steps
    grad_h[-1] = V.T @ grad_o[-1]
    for t in range(steps - 2, -1, -1):
        grad_h[t] = W.T @ np.diag(1 - h[t + 1] ** 2) @ grad_h[t + 1] + V.T @ grad_o[t]
    local = [np.diag(1 - h[t] ** 2) @ grad_h[t] for t in range(steps)]
    return {
        "c": sum(grad_o),
        "b": sum(local),
        "V": sum(np.outer(grad_o[t], h[t]) for t in range(steps)),
        "W": sum(np.outer(local[t], hs[t]) for t in range(steps)),
        "U": sum(np.outer(local[t], xs[t]) for t in range(steps)),
        "h0": W.T @ local[0],
        "x": np.stack([U.T @ local[t] for t in range(steps)]),
        "loss": -sum(np.log(yhats[t][ys[t]]) for t in range(steps)),
    }


@pytest.mark.parametrize("steps, batch", [(1, 1), (5, 1), (6, 3)])
def test_backward_equals_closed_form_bptt(steps, batch):
    rng = np.random.default_rng(steps * 10 + batch)
    D, H, K = 3, 4, 5
    tg.manual_seed(0)
    model = ElmanRNN(D, H, K).double()
    xs = rng.standard_normal((steps, batch, D))
    ys = rng.integers(0, K, size=(steps, batch))
    h0 = rng.standard_normal((batch, H)) * 0.5
    x = tg.tensor(xs, requires_grad=True)
    h0_t = tg.tensor(h0, requires_grad=True)

    o, _ = model(x, h0_t)
    loss = tg.cross_entropy(o, ys, reduction="sum")
    loss.backward()

    params = {n: p.numpy() for n, p in model.named_parameters()}
    expected = {k: 0.0 for k in ("U", "W", "V", "b", "c", "loss")}
    grad_x = np.zeros_like(xs)
    grad_h0 = np.zeros_like(h0)
    for j in range(batch):
        ref = textbook_bptt(params["U"], params["W"], params["V"], params["b"], params["c"],
                            xs[:, j], ys[:, j], h0[j])
        for k in expected:
            expected[k] = expected[k] + ref[k]
        grad_x[:, j] = ref["x"]
        grad_h0[j] = ref["h0"]

    assert loss.item() == pytest.approx(expected["loss"], rel=1e-12)
    for name, p in model.named_parameters():
        np.testing.assert_allclose(p.grad.numpy(), expected[name], rtol=1e-10, atol=1e-12, err_msg=name)
    np.testing.assert_allclose(x.grad.numpy(), grad_x, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(h0_t.grad.numpy(), grad_h0, rtol=1e-10, atol=1e-12)


def test_forward_equals_textbook_equations():
    rng = np.random.default_rng(5)
    model = ElmanRNN(2, 3, 4).double()
    xs = rng.standard_normal((4, 1, 2))
    o, h_n = model(tg.tensor(xs))
    U, W, V, b, c = (getattr(model, n).numpy() for n in "UWVbc")
    h = np.zeros(3)
    for t in range(4):
        h = np.tanh(b + W @ h + U @ xs[t, 0])
        np.testing.assert_allclose(o.numpy()[t, 0], c + V @ h, rtol=1e-12)
    np.testing.assert_allclose(h_n.numpy()[0], h, rtol=1e-12)
