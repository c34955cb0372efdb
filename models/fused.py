"""A fused LSTM cell: one primitive with a closed-form vector-Jacobian product.

The decomposed ``LSTMCell`` records ~20 nodes per step (good for diagrams and
teaching); this records one, so eager runs pay the per-op Python overhead
once per step. The primitive's output is ``concat([h', c'], axis=-1)``;
``lstm_cell`` splits it. Gate order is PyTorch's ``[i, f, g, o]``, like
``LSTMCell``.

The forward keeps the gate activations and ``tanh(c')`` as the node's
residuals (``ops.register(..., residuals=True)``), so the plain backward is
the closed form on them: no second forward. The VJP is written with
tinygraph's own functions, so it also runs on Tensors (``create_graph=True``,
differentiable again): that call gets no residuals and recomputes the gates
from the saved inputs with ops. With ``z = U x + W h + b``, ``tc = tanh(c')``
and incoming gradients ``dh'``, ``dc'``::

    dc  = dc' + dh' * o * (1 - tc^2)        do = dh' * tc
    di  = dc * g    df = dc * c    dg = dc * i    dc_prev = dc * f
    dz  = [di i(1-i), df f(1-f), dg (1-g^2), do o(1-o)]
    dx  = dz U      dh = dz W      dU = dz^T x     dW = dz^T h     db = sum_batch dz
"""
from __future__ import annotations

import tinygraph as tg
from tinygraph import backend, ops

__all__ = ["lstm_cell", "LSTM_CELL"]


def _forward(x, h, c, U, W, b):
    xp = backend.array_module(x, h, c, U, W, b)
    z = x @ U.T + h @ W.T + b
    H = h.shape[-1]
    act = xp.empty_like(z)                          # [i, f, g, o]: the residuals, with tanh(c')
    act[:, :2 * H] = ops.stable_sigmoid(z[:, :2 * H])   # the same logistic function as ops.sigmoid
    act[:, 2 * H:3 * H] = xp.tanh(z[:, 2 * H:3 * H])
    act[:, 3 * H:] = ops.stable_sigmoid(z[:, 3 * H:])
    i, f, g, o = act[:, :H], act[:, H:2 * H], act[:, 2 * H:3 * H], act[:, 3 * H:]
    c_new = f * c + i * g
    tc = xp.tanh(c_new)
    return xp.concatenate([o * tc, c_new], axis=-1), (act, tc)


def _gates(x, h, c, U, W, b):
    """(i, f, g, o, tanh(c')) recomputed with ops: the recorded (create_graph) VJP has no residuals."""
    z = ops.matmul(x, ops.transpose(U)) + ops.matmul(h, ops.transpose(W)) + b
    zi, zf, zg, zo = ops.split(z, 4, axis=-1)
    i, f, g, o = ops.sigmoid(zi), ops.sigmoid(zf), ops.tanh(zg), ops.sigmoid(zo)
    return i, f, g, o, ops.tanh(f * c + i * g)


def _vjp(grad, out, needs, x, h, c, U, W, b, residuals=None):
    H = ops.raw(h).shape[-1]
    if residuals is None:
        i, f, g, o, tc = _gates(x, h, c, U, W, b)
    else:
        act, tc = residuals
        i, f, g, o = act[:, :H], act[:, H:2 * H], act[:, 2 * H:3 * H], act[:, 3 * H:]
    grad_h, grad_c = ops.split(grad, [H], axis=-1)
    dc = grad_c + grad_h * o * (1 - tc * tc)
    do = grad_h * tc
    dz = ops.concat([dc * g * i * (1 - i), dc * c * f * (1 - f), dc * i * (1 - g * g), do * o * (1 - o)],
                    axis=-1)
    return (
        ops.matmul(dz, U) if needs[0] else None,
        ops.matmul(dz, W) if needs[1] else None,
        dc * f if needs[2] else None,
        ops.matmul(ops.transpose(dz), x) if needs[3] else None,
        ops.matmul(ops.transpose(dz), h) if needs[4] else None,
        dz if needs[5] else None,   # the engine sums it over the batch (sum_to)
    )


LSTM_CELL = ops.register("lstm_cell", _forward, _vjp, residuals=True, second_order=True,
                         doc="fused LSTM step: concat([h', c']) from (x, h, c, U, W, b), gates [i, f, g, o]")


def lstm_cell(x, h, c, U, W, b=None):
    """One fused LSTM step: (x (B, D), h, c (B, H), U (4H, D), W (4H, H), b (4H)) -> (h', c')."""
    xs, hs, cs = (tuple(ops.raw(v).shape) for v in (x, h, c))
    if len(xs) != 2 or hs != cs or hs != (xs[0], ops.raw(W).shape[-1]):
        # the closed-form VJP has no broadcasting to undo: a (1, H) state would fail in backward
        raise ValueError(f"lstm_cell: x must be (B, D) and h, c (B, H) with the same B, got x {xs}, "
                         f"h {hs}, c {cs}")
    if b is None:
        data = ops.raw(U)
        b = backend.array_module(data).zeros(data.shape[0], dtype=data.dtype)
    both = ops.apply(LSTM_CELL, x, h, c, U, W, b)
    H = ops.raw(h).shape[-1]
    h_new, c_new = ops.split(both, [H], axis=-1)
    if isinstance(h_new, tg.Tensor):
        h_new.name, c_new.name = "h", "c"
    return h_new, c_new
