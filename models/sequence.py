"""Fused sequence kernels: one direction of one recurrent layer as ONE primitive.

The decomposed cells record every gate op at every step (what the diagrams
and the stepper show). For training speed, ``RNN/LSTM/GRU(..., fused=True)``
record the whole sweep over T steps as a single node instead, with a VJP
written the way a careful hand-written BPTT is:

* the input projection of all T steps is ONE GEMM before the loop
  ``(T*B, D) @ (D, G*H)``, written straight into the gate buffer;
* each step is one GEMM ``h @ W^T`` plus one call of the elementwise gate
  math (``models.kernels``: NumPy ufuncs into preallocated buffers; on CUDA
  ``models.cuda_kernels``: one raw kernel, for small layers with the matrix
  product inside), so a step allocates nothing;
* backward computes the gate-derivative factors that do not depend on the
  recurrence for all T at once, runs the time loop for what does (a few
  ufuncs and one GEMM ``dz @ W`` per step) and computes every weight gradient
  AFTER the loop as one large GEMM over all steps: ``dU = dZ^T X``,
  ``dW = dZ^T H_prev``, ``db = sum dZ``, ``dX = dZ U``;
* the forward keeps exactly what the backward needs (gate activations, the
  cell states and ``tanh(c)`` for the LSTM; the GRU's ``W_n h + b_hn``)
  as the node's residuals (``ops.Primitive``); the hidden states are the
  output itself, not a copy.

Each primitive has ONE VJP rule (below) and is tested against the decomposed
cells, whose rules are the reference (values and gradients, float64). The
rules are first-order: ``create_graph=True`` through a fused layer raises and
says to record decomposed.

Packing: a primitive has one output. RNN and GRU return the hidden states
(T, B, H) (the final state is the last step's row); the LSTM returns
(T + 1, B, H): rows 0..T-1 are h(t), row T is the final cell state.
``reverse=True`` runs the sweep from t = T-1 down to 0 (the backward
direction of a bidirectional layer); outputs stay at their time index.
"""
from __future__ import annotations

import numpy as np

import tinygraph as tg
from tinygraph import backend, ops

from . import cuda_kernels
from .kernels import NumpyKernels as cpu
from .kernels import lstm_gate_affine
from .kernels import per_step

__all__ = ["rnn_sequence", "lstm_sequence", "gru_sequence", "RNN_SEQUENCE", "LSTM_SEQUENCE", "GRU_SEQUENCE"]


def _steps(T, reverse):
    return range(T - 1, -1, -1) if reverse else range(T)


def _shifts(T, reverse):
    """(first, rest, shifted): index expressions for "the state each step started from".

    The first step of the sweep started from the initial state; step ``rest``
    started from ``states[shifted]`` (the neighbour in time on the sweep's side).
    """
    if reverse:
        return T - 1, slice(0, T - 1), slice(1, T)
    return 0, slice(1, T), slice(0, T - 1)


def _check(op, gates, x, h0, U, W, *others):
    if x.ndim != 3 or h0.ndim != 2:
        raise ValueError(f"{op}: x must be (T, B, D) and the initial state (B, H), got {x.shape} and {h0.shape}")
    T, B, D = x.shape
    H = h0.shape[1]
    if T == 0:
        raise ValueError(f"{op}: the sequence is empty (T = 0)")
    dtypes = {a.dtype for a in (x, h0, U, W, *others)}
    if len(dtypes) > 1:
        raise ValueError(f"{op}: all inputs must share one float dtype, got {sorted(str(d) for d in dtypes)}")
    if h0.shape[0] != B or U.shape != (gates * H, D) or W.shape != (gates * H, H):
        raise ValueError(f"{op}: shapes do not fit: x {x.shape}, state {h0.shape}, U {U.shape} "
                         f"(expected {(gates * H, D)}), W {W.shape} (expected {(gates * H, H)})")
    return T, B, D, H


def _input_projection(x, U, b, out2d):
    """U x + b for all T steps at once: one (T*B, D) @ (D, G*H) GEMM into ``out2d``."""
    xp = backend.array_module(x)
    T, B, D = x.shape
    xp.matmul(x.reshape(T * B, D), U.T, out=out2d)
    out2d += b


def _transposed(W):
    """W.T as a C-ordered copy, made once per call.

    The per-step GEMMs run about 10-20% faster on a contiguous W.T than on the
    transposed view. NumPy copies a transposed view element by element across
    rows, so a large W is copied in tiles of 16 rows x 512 columns: each
    output row then takes 16 consecutive floats (one 64-byte cache line) from
    rows that stay in cache (5.6-7.8 against 13.8 ms with 64-row blocks and
    30 ms whole, at 4096 x 1024). A small W fits in cache whole: one call.
    """
    G, H = W.shape
    if W.size <= 1 << 16:
        return np.ascontiguousarray(W.T)
    out = np.empty((H, G), W.dtype)
    for r in range(0, G, 16):
        for c in range(0, H, 512):
            np.copyto(out[c:c + 512, r:r + 16], W[r:r + 16, c:c + 512].T)
    return out


def _weight_grads(dZ, x, hs, h0, U, need_x, need_U, need_W, need_b, reverse):
    """(dx, dU, dW, db) from the stacked pre-activation grads dZ (T, B, G*H), one GEMM each, after the loop."""
    T, B, D = x.shape
    G_H = dZ.shape[-1]
    dZ2 = dZ.reshape(T * B, G_H)
    dx = (dZ2 @ U).reshape(T, B, D) if need_x else None
    dU = dZ2.T @ x.reshape(T * B, D) if need_U else None
    dW = None
    if need_W:
        # sum_t dZ(t)^T h_prev(t) as two GEMMs, so nothing is copied: the first step
        # of the sweep starts from h0, the others from a contiguous block of hs
        H = h0.shape[-1]
        if T == 1:
            dW = dZ[0].T @ h0
        elif reverse:
            dW = dZ[:-1].reshape(-1, G_H).T @ hs[1:T].reshape(-1, H) + dZ[-1].T @ h0
        else:
            dW = dZ[1:].reshape(-1, G_H).T @ hs[:T - 1].reshape(-1, H) + dZ[0].T @ h0
    db = dZ2.sum(axis=0) if need_b else None
    return dx, dU, dW, db


def _feature_major_projection(x, U, b_column, out):
    """out (T, G*H, B) <- U x(t) + b for all t, straight into the feature-major layout.

    One batched GEMM (T products (G*H, D) @ (D, B)); at B = 1 the layout is the
    batch-major one, so it is a single (T, D) @ (D, G*H) GEMM. The bias is
    added as a full (G*H, B) block: contiguous rows, a fast broadcast over T.
    """
    T, B, D = x.shape
    if B == 1:
        _input_projection(x, U, b_column[:, 0], out.reshape(T, -1))
        return
    np.matmul(U, np.ascontiguousarray(x.transpose(0, 2, 1)), out=out)
    out += np.repeat(b_column, B, axis=1)


def _weight_grads_feature_major(dZ, x, hs, h0, U, need_x, need_U, need_W, need_b, reverse):
    """``_weight_grads`` for feature-major dZ (T, G*H, B): one cheap axis swap, then the same GEMMs.

    As (G*H, T, B) the gradients are a (G*H, T*B) matrix whose columns run in
    the order of x's and hs' rows, so each weight gradient is one GEMM on views.
    """
    T, B, D = x.shape
    G_H = dZ.shape[1]
    if not (need_x or need_U or need_W or need_b):
        return None, None, None, None
    Z = np.empty((G_H, T, B), dZ.dtype)
    np.copyto(Z, dZ.transpose(1, 0, 2))  # whole B-rows move: about 0.4 ms at B = 32, H = 256
    Z2 = Z.reshape(G_H, T * B)
    dx = (Z2.T @ U).reshape(T, B, D) if need_x else None
    dU = Z2 @ x.reshape(T * B, D) if need_U else None
    dW = None
    if need_W:
        H = h0.shape[-1]
        if T == 1:
            dW = Z2 @ h0
        elif reverse:  # step t started from h(t+1); the sweep's first step (t = T-1) from h0
            dW = Z2[:, :(T - 1) * B] @ hs[1:T].reshape(-1, H) + Z2[:, (T - 1) * B:] @ h0
        else:
            dW = Z2[:, B:] @ hs[:T - 1].reshape(-1, H) + Z2[:, :B] @ h0
    db = Z2.sum(axis=1) if need_b else None
    return dx, dU, dW, db


# -- vanilla RNN ---------------------------------------------------------------

def _rnn_forward(x, h0, U, W, b, reverse=False, nonlinearity="tanh"):
    T, B, D, H = _check("rnn_sequence", 1, x, h0, U, W, b)
    xp = backend.array_module(x, h0, U, W, b)
    hs = xp.empty((T, B, H), dtype=x.dtype)
    _input_projection(x, U, b, hs.reshape(T * B, H))  # hs holds U x + b until each step overwrites it
    if xp is not np:
        cuda_kernels.rnn_forward(hs, h0, W, nonlinearity == "relu", reverse)
        return hs
    ws = cpu.workspace(xp, B, H, x.dtype)
    WT, zh, relu = _transposed(W), xp.empty((B, H), x.dtype), nonlinearity == "relu"
    h = h0
    for h_t, in per_step(_steps(T, reverse), hs):
        np.dot(h, WT, zh)
        cpu.rnn_forward(h_t, zh, relu, ws)
        h = h_t
    return hs


def _rnn_vjp(grad, out, needs, x, h0, U, W, b, reverse=False, nonlinearity="tanh"):
    T, B, _ = x.shape
    H = h0.shape[-1]
    grad = grad.astype(out.dtype, copy=False)  # a float64 loss may send float64 grads; kernels are typed
    xp = backend.array_module(grad, out)
    relu = nonlinearity == "relu"
    if xp is not np:
        dA, carry = cuda_kernels.rnn_backward(grad, out, W, relu, reverse)
    else:
        dA = xp.empty((T, B, H), dtype=out.dtype)
        carry = cpu.rnn_backward_sweep(grad, out, W, dA, relu, _steps(T, not reverse),
                                       cpu.workspace(xp, B, H, out.dtype))
    dx, dU, dW, db = _weight_grads(dA, x, out, h0, U, *(needs[0], needs[2], needs[3], needs[4]), reverse)
    return dx, carry if needs[1] else None, dU, dW, db


RNN_SEQUENCE = ops.register(
    "rnn_sequence", _rnn_forward, _rnn_vjp, second_order=False,   # its rule runs NumPy/CuPy kernels
    doc="fused vanilla RNN over a sequence: h(t) = act(U x(t) + W h(t-1) + b) for all t, (T, B, H)")


def rnn_sequence(x, h0, U, W, b=None, *, nonlinearity="tanh", reverse=False):
    """Hidden states (T, B, H) of a tanh/relu RNN over ``x`` (T, B, D) from ``h0`` (B, H), one node."""
    if nonlinearity not in ("tanh", "relu"):
        raise ValueError(f"rnn_sequence: nonlinearity must be 'tanh' or 'relu', got {nonlinearity!r}")
    return ops.apply(RNN_SEQUENCE, x, h0, U, W, _bias(b, U), reverse=bool(reverse), nonlinearity=nonlinearity)


# -- LSTM ------------------------------------------------------------------------

def _lstm_forward(x, h0, c0, U, W, b, reverse=False, ends=None):
    T, B, D, H = _check("lstm_sequence", 4, x, h0, U, W, c0, b)
    xp = backend.array_module(x, h0, c0, U, W, b)
    out = xp.empty((T + 1, B, H), dtype=x.dtype)      # h(0..T-1), then the final c
    if xp is not np:
        gates = xp.empty((T, B, 4 * H), dtype=x.dtype)   # pre-activations, then activations [i, f, g, o]
        cs = xp.empty((T, B, H), dtype=x.dtype)
        tcs = xp.empty((T, B, H), dtype=x.dtype)
        _input_projection(x, U, b, gates.reshape(T * B, 4 * H))
        cuda_kernels.lstm_forward(gates, h0, c0, W, out, cs, tcs, reverse)
        if ends is not None:  # row b's final c is the one after its step ends[b]
            out[T] = cs[xp.asarray(np.asarray(ends, dtype=np.int64)), xp.arange(B)]
            hold_after_ends(gates, ends, reverse)  # for the backward kernel: see there
        return out, (gates, cs, tcs)
    # The CPU loop is feature-major (see models.kernels): a step is (4H, B), its product W h.
    # The one-tanh gates want k z with k = [1/2, 1/2, 1, 1/2] per block: k goes into
    # copies of U, b and W once per call, exactly (a power of two).
    k = lstm_gate_affine(H, np.dtype(x.dtype).str)[0][:, None]
    gates = np.empty((T, 4 * H, B), x.dtype)       # k z, then the activations [i, f, g, o]
    _feature_major_projection(x, U * k, b[:, None] * k, gates)
    Wk = W * k
    cs, tcs, hs = (np.empty((T, H, B), x.dtype) for _ in range(3))
    ws = cpu.lstm_workspace(B, H, x.dtype)
    zh = np.empty((4 * H, B), x.dtype)
    h, c = np.ascontiguousarray(h0.T), c0.T
    for a_t, c_t, tc_t, h_t in per_step(_steps(T, reverse), gates, cs, tcs, hs):
        np.dot(Wk, h, zh)
        cpu.lstm_forward(a_t, zh, c, c_t, tc_t, h_t, ws)
        h, c = h_t, c_t
    np.copyto(out[:T], hs.transpose(0, 2, 1))
    out[T] = c.T if ends is None else cs[np.asarray(ends, dtype=np.intp), :, np.arange(B)]   # (B, H) either way
    return out, (gates, cs, tcs)


def hold_after_ends(gates, ends, reverse):
    """Make the LSTM backward sweep of a padded batch the plain one: in place on the saved gates.

    ``gates`` (T, B, 4H) are a sweep's activations [i, f, g, o], batch-major;
    ``ends`` (B,) ints, row b's last step. At each row's steps after its end
    (in sweep order) this sets i = o = 0 and f = 1. The backward then passes
    dc through those steps unchanged (dc f), adds nothing from h
    (dh o (1 - tanh(c)^2)), and gives them no gate gradient (every factor
    of dZ holds i (1 - i), f (1 - f), i or o (1 - o)), so the final c's
    gradient, seeded at the sweep's last step, reaches row b's step ends[b]
    whole: what a kernel that joined it there would compute. The forward's
    outputs are already made; only the backward reads these gates.
    """
    xp = backend.array_module(gates)
    T, B, G = gates.shape
    H = G // 4
    steps = xp.arange(T)[:, None]
    last = xp.asarray(np.asarray(ends, dtype=np.int64))[None, :]
    running = ((steps >= last) if reverse else (steps <= last)).astype(gates.dtype)[:, :, None]  # (T, B, 1)
    gates[:, :, :H] *= running
    gates[:, :, 3 * H:] *= running
    forget = gates[:, :, H:2 * H]
    forget *= running
    forget += 1 - running


def _lstm_vjp(grad, out, needs, x, h0, c0, U, W, b, reverse=False, ends=None, residuals=None):
    gates, cs, tcs = residuals
    T, B, _ = x.shape
    H = h0.shape[-1]
    grad = grad.astype(out.dtype, copy=False)  # a float64 loss may send float64 grads; kernels are typed
    xp = backend.array_module(grad, out)
    if xp is not np:
        dZ, carry, dc = cuda_kernels.lstm_backward(grad, gates, cs, tcs, c0, W, reverse)
        dx, dU, dW, db = _weight_grads(dZ, x, out, h0, U, needs[0], needs[3], needs[4], needs[5], reverse)
        return dx, carry if needs[1] else None, dc if needs[2] else None, dU, dW, db
    # feature-major like the forward: the output's gradient turns once, dZ is (T, 4H, B)
    grad = np.ascontiguousarray(grad.transpose(0, 2, 1))
    if ends is not None:  # the outputs after each row's end get no gradient, as on CUDA (hold_after_ends)
        steps, last = np.arange(T + 1)[:, None], np.asarray(ends)[None, :]
        running = (steps >= last) if reverse else (steps <= last)
        running[T] = True                    # the last row is the final c's gradient
        grad = grad * running[:, None, :]    # a new array: the incoming gradient may be shared
    dZ = np.empty_like(gates)
    carry, dc = cpu.lstm_backward_sweep(grad, gates, cs, tcs, c0.T,
                                        _transposed(W), dZ, _steps(T, not reverse), _shifts(T, reverse),
                                        cpu.lstm_workspace(B, H, out.dtype),
                                        None if ends is None else np.asarray(ends, dtype=np.intp))
    dx, dU, dW, db = _weight_grads_feature_major(dZ, x, out, h0, U, needs[0], needs[3], needs[4], needs[5], reverse)
    return dx, carry.T if needs[1] else None, dc.T if needs[2] else None, dU, dW, db


LSTM_SEQUENCE = ops.register(
    "lstm_sequence", _lstm_forward, _lstm_vjp, residuals=True,
    doc="fused LSTM over a sequence, gates [i, f, g, o]: (T + 1, B, H) = h(0..T-1) and the final c")


def lstm_sequence(x, h0, c0, U, W, b=None, *, reverse=False, ends=None):
    """One fused LSTM sweep over ``x`` (T, B, D): returns (outputs (T, B, H), h_n, c_n).

    ``ends`` (B ints), for a padded batch: row b's final state is the one
    after step ``ends[b]`` (its last valid step), not after the sweep's last
    step. The steps after it still run, and their outputs get no gradient
    (the layers zero them anyway): the CPU backward drops it, and on CUDA
    the backward kernel is told so through the saved gates
    (``hold_after_ends``).
    """
    T, B = ops.raw(x).shape[:2]
    if ends is not None:
        given = np.asarray(ends.numpy() if isinstance(ends, tg.Tensor) else backend.as_host(ends))
        if given.shape != (B,) or (given.size and given.dtype.kind not in "iu") \
                or not ((given >= 0) & (given < T)).all():
            raise ValueError(f"lstm_sequence: ends must be one integer step in [0, {T}) per batch row ({B}), "
                             f"got {given.tolist()}")
        ends = tuple(int(e) for e in given)
    padded = {} if ends is None else {"ends": ends}
    packed = ops.apply(LSTM_SEQUENCE, x, h0, c0, U, W, _bias(b, U), reverse=bool(reverse), **padded)
    outputs, c_n = packed[:T], packed[T]
    return _named(outputs, "h"), final_rows(outputs, ends, reverse), _named(c_n, "c")


def final_rows(hs, ends, reverse):
    """A sweep's final state from its outputs ``hs`` (T, B, H): the last step's, or row b's at step ends[b]."""
    if ends is not None:
        return hs[np.asarray(ends, dtype=np.intp), np.arange(len(ends))]
    return hs[0] if reverse else hs[hs.shape[0] - 1]


# -- GRU ---------------------------------------------------------------------------

def _gru_forward(x, h0, U, W, b, b_hn, reverse=False):
    T, B, D, H = _check("gru_sequence", 3, x, h0, U, W, b, b_hn)
    xp = backend.array_module(x, h0, U, W, b, b_hn)
    if xp is not np:
        gates = xp.empty((T, B, 3 * H), dtype=x.dtype)   # U x + b, then activations [r, z, n]
        _input_projection(x, U, b, gates.reshape(T * B, 3 * H))
        hs = xp.empty((T, B, H), dtype=x.dtype)
        hns = xp.empty((T, B, H), dtype=x.dtype)          # W_n h(t-1) + b_hn, which r multiplies
        cuda_kernels.gru_forward(gates, h0, W, b_hn, hs, hns, reverse)
        return hs, (gates, hns)
    # feature-major on the CPU, like the LSTM (see models.kernels): a step is (3H, B)
    gates = np.empty((T, 3 * H, B), x.dtype)
    _feature_major_projection(x, U, b[:, None], gates)
    hns, hsT = np.empty((T, H, B), x.dtype), np.empty((T, H, B), x.dtype)
    ws = cpu.feature_major_workspace(B, H, x.dtype)
    b_hn_full = np.repeat(b_hn[:, None], B, axis=1)
    zh = np.empty((3 * H, B), x.dtype)
    h = np.ascontiguousarray(h0.T)
    for a_t, hn_t, h_t in per_step(_steps(T, reverse), gates, hns, hsT):
        np.dot(W, h, zh)
        cpu.gru_forward(a_t, zh, b_hn_full, h, hn_t, h_t, ws)
        h = h_t
    hs = np.empty((T, B, H), x.dtype)
    np.copyto(hs, hsT.transpose(0, 2, 1))
    return hs, (gates, hns)


def _gru_vjp(grad, out, needs, x, h0, U, W, b, b_hn, reverse=False, residuals=None):
    gates, hns = residuals
    T, B, _ = x.shape
    H = h0.shape[-1]
    grad = grad.astype(out.dtype, copy=False)  # a float64 loss may send float64 grads; kernels are typed
    xp = backend.array_module(grad, out)
    if xp is not np:
        # dGX: grads of the input-side pre-activations (U x + b); dGH: of the recurrent side (W h, b_hn)
        dGX, dGH, dh0 = cuda_kernels.gru_backward(grad, gates, hns, out, h0, W, reverse)
        dx, dU, _, db = _weight_grads(dGX, x, out, h0, U, needs[0], needs[2], False, needs[4], reverse)
        dW = _weight_grads(dGH, x, out, h0, U, False, False, needs[3], False, reverse)[2]
        db_hn = dGH[:, :, 2 * H:].sum(axis=(0, 1)) if needs[5] else None
        return dx, dh0 if needs[1] else None, dU, dW, db, db_hn
    # feature-major like the forward: the output and its gradient turn once, dGX and dGH are (T, 3H, B)
    dGX, dGH = np.empty_like(gates), np.empty_like(gates)
    dh0 = cpu.gru_backward_sweep(np.ascontiguousarray(grad.transpose(0, 2, 1)), gates, hns,
                                 np.ascontiguousarray(out.transpose(0, 2, 1)), h0.T, _transposed(W), dGX, dGH,
                                 _steps(T, not reverse), _shifts(T, reverse),
                                 cpu.feature_major_workspace(B, H, out.dtype))
    dx, dU, _, db = _weight_grads_feature_major(dGX, x, out, h0, U, needs[0], needs[2], False, needs[4], reverse)
    dW = _weight_grads_feature_major(dGH, x, out, h0, U, False, False, needs[3], False, reverse)[2]
    db_hn = dGH[:, 2 * H:].sum(axis=(0, 2)) if needs[5] else None
    return dx, dh0.T if needs[1] else None, dU, dW, db, db_hn


GRU_SEQUENCE = ops.register(
    "gru_sequence", _gru_forward, _gru_vjp, residuals=True,
    doc="fused GRU over a sequence (PyTorch's formulation, gates [r, z, n]): (T, B, H)")


def gru_sequence(x, h0, U, W, b=None, b_hn=None, *, reverse=False):
    """Hidden states (T, B, H) of a GRU over ``x`` (T, B, D) from ``h0`` (B, H), one node."""
    H = ops.raw(h0).shape[-1]
    return ops.apply(GRU_SEQUENCE, x, h0, U, W, _bias(b, U), _bias(b_hn, U, H), reverse=bool(reverse))


# -- helpers -----------------------------------------------------------------------

def _bias(b, like, size=None):
    """``b``, or zeros of the right size when the layer has no bias."""
    if b is not None:
        return b
    data = ops.raw(like)
    return backend.array_module(data).zeros(data.shape[0] if size is None else size, dtype=data.dtype)


def _named(tensor, name):
    if isinstance(tensor, tg.Tensor):
        tensor.name = name
    return tensor
