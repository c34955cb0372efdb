"""Elementwise math of the fused sequence kernels on the CPU (NumPy).

Forward: ``models.sequence`` runs each step as one BLAS matrix product and
then ONE call here: NumPy ufuncs writing into preallocated buffers (``out=``)
so a step allocates nothing; the sigmoid gates share one ``tanh`` call with
the others through ``sigmoid(z) = (1 + tanh(z / 2)) / 2``.

Backward: one ``*_backward_sweep`` call per sequence. The derivative factors
that do not depend on the recurrence are computed for all T steps at once
(a few large ufunc calls), and the time loop does only what does: 2-6 small
ufuncs and one GEMM per step.

The CUDA version of the same equations is ``models.cuda_kernels``. Both are
checked against the decomposed cells.

Ufuncs get their output positionally (``np.add(a, b, out)``): the ``out=``
keyword costs about 0.25 us more per call, a fifth of a small step's call.
The per-step products use ``np.dot(a, b, out)``, which goes straight to BLAS:
half the call overhead of ``np.matmul`` (0.55 against 1.04 us at B = 1).

Layout: gate blocks are stacked in PyTorch's order, LSTM ``[i, f, g, o]``
and GRU ``[r, z, n]``; ``H`` is the hidden size. The RNN kernels are
batch-major (a step is (B, H)); the LSTM and GRU kernels are feature-major
(a step is (G·H, B), its product W h), because at small batches OpenBLAS
splits (4H x H) @ (H x B) over its threads far better than (B x H) @ (H x 4H):
105 against 120-190 us at B = 32, H = 256 (``models.sequence`` transposes
at the edges).
"""
from __future__ import annotations

import functools

import numpy as np

__all__ = ["NumpyKernels", "per_step", "lstm_gate_affine"]


@functools.lru_cache(maxsize=64)
def lstm_gate_affine(hidden, dtype):
    """(k, m) of the LSTM's one-tanh activation, per hidden size; read-only, shared by calls."""
    half, one, zero = np.full(hidden, 0.5, dtype), np.ones(hidden, dtype), np.zeros(hidden, dtype)
    scale, shift = np.concatenate([half, half, one, half]), np.concatenate([half, half, zero, half])
    scale.flags.writeable = shift.flags.writeable = False
    return scale, shift


def per_step(steps, *arrays):
    """Zip the (T, ...) ``arrays`` step by step in ``steps`` order (a range): one view of each per step.

    Iterating an array makes its row views in C; indexing ``array[t]`` inside
    the loop would cost a Python-level index per array per step.
    """
    rows = slice(steps.start, steps.stop if steps.stop >= 0 else None, steps.step)
    return zip(*[a[rows] for a in arrays])


@functools.lru_cache(maxsize=64)
def _lstm_affine_columns(hidden, batch, dtype):
    """(k, m) of the one-tanh activation as (4H, B) arrays for the feature-major layout; read-only."""
    scale, shift = lstm_gate_affine(hidden, dtype)
    scale, shift = np.repeat(scale[:, None], batch, axis=1), np.repeat(shift[:, None], batch, axis=1)
    scale.flags.writeable = shift.flags.writeable = False
    return scale, shift


def _segments_before(steps, ends):
    """Cut the sweep ``steps`` (a range) where columns end: [(sub-range, columns joining before it), ...].

    The columns whose ``ends`` value is t join just before step t runs;
    steps before the first such t run with nothing joining (None).
    """
    cuts = sorted({int(t) for t in ends}, reverse=steps.step < 0)
    first = cuts[0] if cuts else steps.stop
    out = [] if first == steps.start else [(range(steps.start, first, steps.step), None)]
    for k, t in enumerate(cuts):
        stop = cuts[k + 1] if k + 1 < len(cuts) else steps.stop
        out.append((range(t, stop, steps.step), np.flatnonzero(ends == t)))
    return out


class NumpyKernels:
    """The step math as NumPy ufunc calls into caller-owned buffers."""

    @staticmethod
    def workspace(xp, batch, hidden, dtype):
        """Two (B, H) scratch buffers for one batch-major sequence call (reused by every step)."""
        return {"bh": xp.empty((batch, hidden), dtype), "bh2": xp.empty((batch, hidden), dtype)}

    # -- vanilla RNN -------------------------------------------------------
    @staticmethod
    def rnn_forward(a, zh, relu, ws):
        """a <- act(a + zh) in place; ``a`` holds U x + b and becomes h."""
        np.add(a, zh, a)
        if relu:
            np.maximum(a, 0, out=a)   # (np.maximum alone deprecates a positional out)
        else:
            np.tanh(a, a)

    @staticmethod
    def rnn_backward_sweep(grad, hs, W, dA, relu, steps, ws):
        """dA (pre-activation grads) for all steps; returns the grad reaching h0.

        act'(h) does not depend on the recurrence, so it is computed for all T
        at once before the loop; a step is then two ufuncs and one GEMM.
        """
        if relu:
            np.sign(hs, dA)              # h >= 0: 1 where h > 0, else 0
        else:
            np.multiply(hs, hs, dA)
            np.subtract(1, dA, dA)
        carry, t_sum = np.zeros_like(ws["bh"]), ws["bh"]
        for g_t, dA_t in per_step(steps, grad, dA):
            np.add(g_t, carry, t_sum)
            np.multiply(dA_t, t_sum, dA_t)
            np.dot(dA_t, W, carry)   # the gradient reaching h(t-1) through W
        return carry

    # -- LSTM ----------------------------------------------------------------
    @staticmethod
    def feature_major_workspace(batch, hidden, dtype):
        """Two (H, B) scratch buffers for a feature-major step."""
        return {"t": np.empty((hidden, batch), dtype), "t2": np.empty((hidden, batch), dtype)}

    @staticmethod
    def lstm_workspace(batch, hidden, dtype):
        """Scratch for the feature-major LSTM: (H, B) buffers and the gate affine (k, m) as full (4H, B) arrays."""
        ws = NumpyKernels.feature_major_workspace(batch, hidden, dtype)
        ws["scale"], ws["shift"] = _lstm_affine_columns(hidden, batch, np.dtype(dtype).str)
        return ws

    @staticmethod
    def lstm_forward(a, zh, c_prev, c, tc, h, ws):
        """One step, feature-major: ``a`` and ``zh`` are (4H, B), the states (H, B).

        Gates in place in ``a``, then c, tanh(c), h. All four gates in three
        passes: [i, f, g, o] = k tanh(z') + m with k = [1/2, 1/2, 1, 1/2] and
        m = [1/2, 1/2, 0, 1/2] per block (sigmoid(z) = (1 + tanh(z/2)) / 2).
        The caller folds k into the weights, so ``a`` and ``zh`` already hold
        z' = k z (k U x + k b and k W h: scaling by a power of two is exact).
        k and m come as full (4H, B) arrays: a broadcast column would make
        NumPy loop over rows of only B elements.
        """
        H = c.shape[0]
        np.add(a, zh, a)
        np.tanh(a, a)
        np.multiply(a, ws["scale"], a)
        np.add(a, ws["shift"], a)
        t = ws["t"]
        np.multiply(a[H:2 * H], c_prev, c)
        np.multiply(a[:H], a[2 * H:3 * H], t)
        np.add(c, t, c)
        np.tanh(c, tc)
        np.multiply(a[3 * H:], tc, h)

    @staticmethod
    def lstm_backward_sweep(grad, gates, cs, tcs, c0, WT, dZ, steps, prev, ws, ends=None):
        """dZ (gate pre-activation grads, (T, 4H, B)) for all steps; returns (grad of h0, grad of c0), (H, B).

        Feature-major like the forward: ``grad`` (T + 1, H, B) holds the
        output's gradient (the last row: the final c's), ``gates`` (T, 4H, B),
        ``cs``/``tcs`` (T, H, B), ``c0`` (H, B), ``WT`` = W.T contiguous (H, 4H).
        With dh = grad(t) + W.T dZ(t+1) and dc = dc(t+1) f(t+1) + dh o (1 - tc^2):
        dZ(t) = [dc, dc, dc, dh] * K(t), K = [g i(1-i), c_prev f(1-f), i (1-g^2), tc o(1-o)].
        K and o (1 - tc^2) do not depend on the recurrence: they are computed
        for all T at once (into dZ itself) before the loop, which then makes
        six ufunc calls and one GEMM per step.

        ``ends`` (B,) ints, for a padded batch: the final c of column b is
        c(ends[b]), so its gradient (the last row of ``grad``) joins the chain
        just before step ends[b] instead of at the sweep's first step.
        """
        T, G, B = gates.shape
        H = G // 4
        i, f, g, o = gates[:, :H], gates[:, H:2 * H], gates[:, 2 * H:3 * H], gates[:, 3 * H:]
        np.subtract(1, gates, dZ)        # s (1 - s) for every block; the g block is fixed next
        np.multiply(dZ, gates, dZ)
        Ki, Kf, Kg, Ko = dZ[:, :H], dZ[:, H:2 * H], dZ[:, 2 * H:3 * H], dZ[:, 3 * H:]
        np.multiply(g, g, Kg)
        np.subtract(1, Kg, Kg)
        np.multiply(Kg, i, Kg)
        np.multiply(Ki, g, Ki)
        np.multiply(Ko, tcs, Ko)
        first, rest, shifted = prev            # c(t-1) for every t: c0 at the first step, else cs shifted
        np.multiply(Kf[first], c0, Kf[first])
        np.multiply(Kf[rest], cs[shifted], Kf[rest])
        do = np.multiply(tcs, tcs)           # o (1 - tc^2), the path from h(t) into c(t)
        np.subtract(1, do, do)
        np.multiply(do, o, do)
        carry, dh, dc = np.zeros((H, B), dZ.dtype), ws["t"], ws["t2"]
        dc3 = dc[None]
        dZ4 = dZ.reshape(T, 4, H, B)
        if ends is None:
            dcf = np.array(grad[T])           # the final c's own gradient starts the chain
            segments = [(steps, None)]
        else:
            dcf = np.zeros((H, B), dZ.dtype)
            segments = _segments_before(steps, ends)
        for segment, joining in segments:
            if joining is not None:           # the columns whose final c is the one of the next step
                dcf[:, joining] += grad[T][:, joining]
            for g_t, do_t, ifg_t, o_t, f_t, dZ_t in per_step(segment, grad, do, dZ4[:, :3], dZ4[:, 3], f, dZ):
                np.add(g_t, carry, dh)
                np.multiply(dh, do_t, dc)
                np.add(dc, dcf, dc)
                np.multiply(ifg_t, dc3, ifg_t)
                np.multiply(o_t, dh, o_t)
                np.multiply(dc, f_t, dcf)   # what reaches c(t-1)
                np.dot(WT, dZ_t, carry)
        return carry, dcf

    # -- GRU -----------------------------------------------------------------
    @staticmethod
    def gru_forward(a, zh, b_hn, h_prev, hn, h, ws):
        """One step, feature-major: ``a`` (U x + b) and ``zh`` (W h) are (3H, B), the rest (H, B).

        ``a`` becomes [r, z, n]; hn <- W_n h + b_hn; h <- n + z (h_prev - n).
        ``b_hn`` comes as a full (H, B) array (a broadcast column would make
        NumPy loop over rows of only B elements).
        """
        H = h.shape[0]
        np.add(zh[2 * H:], b_hn, hn)
        rz = a[:2 * H]
        np.add(rz, zh[:2 * H], rz)
        np.multiply(rz, 0.5, rz)
        np.tanh(rz, rz)
        np.multiply(rz, 0.5, rz)
        np.add(rz, 0.5, rz)
        r, z, n = a[:H], a[H:2 * H], a[2 * H:]
        t = ws["t"]
        np.multiply(r, hn, t)
        np.add(n, t, n)
        np.tanh(n, n)
        np.subtract(h_prev, n, t)
        np.multiply(t, z, t)
        np.add(n, t, h)

    @staticmethod
    def gru_backward_sweep(grad, gates, hns, hs, h0, WT, dGX, dGH, steps, prev, ws):
        """dGX, dGH (input- and recurrent-side pre-activation grads, (T, 3H, B)) for all steps; returns dh0 (H, B).

        Feature-major like the forward: ``grad``, ``hns``, ``hs`` are (T, H, B),
        ``h0`` (H, B), ``WT`` = W.T contiguous (H, 3H).
        With dh = grad(t) + W.T dGH(t+1) + dh(t+1) z(t+1):
        dGX(t) = dh [K_n hn r(1-r), (h_prev - n) z(1-z), K_n] with K_n = (1-z)(1-n^2),
        dGH(t) = dh [K_n hn r(1-r), (h_prev - n) z(1-z), K_n r].
        The bracketed factors do not depend on the recurrence: they are computed
        for all T at once (into dGX, dGH) before the loop, which then makes five
        ufunc calls and one GEMM per step.
        """
        T, G, B = gates.shape
        H = G // 3
        r, z, n = gates[:, :H], gates[:, H:2 * H], gates[:, 2 * H:]
        Xr, Xz, Xn = dGX[:, :H], dGX[:, H:2 * H], dGX[:, 2 * H:]
        Hr, Hn = dGH[:, :H], dGH[:, 2 * H:]
        np.multiply(n, n, Xn)            # K_n = (1 - z)(1 - n^2)
        np.subtract(1, Xn, Xn)
        np.subtract(1, z, Hn)            # Hn, Hr: scratch until the end
        np.multiply(Xn, Hn, Xn)
        np.multiply(Hn, z, Xz)           # z (1 - z) (h_prev - n)
        first, rest, shifted = prev
        np.subtract(h0, n[first], Hr[first])
        np.subtract(hs[shifted], n[rest], Hr[rest])
        np.multiply(Xz, Hr, Xz)
        np.subtract(1, r, Hr)            # K_n hn r (1 - r)
        np.multiply(Hr, r, Hr)
        np.multiply(Xn, hns, Xr)
        np.multiply(Xr, Hr, Xr)
        np.copyto(dGH[:, :2 * H], dGX[:, :2 * H])
        np.multiply(Xn, r, Hn)
        carry, dh, direct = np.zeros((H, B), dGX.dtype), ws["t"], np.zeros((H, B), dGX.dtype)
        dh3 = dh[None]
        for g_t, gx, gh, z_t, dGH_t in per_step(steps, grad, dGX.reshape(T, 3, H, B),
                                                dGH.reshape(T, 3, H, B), z, dGH):
            np.add(g_t, carry, dh)
            np.add(dh, direct, dh)
            np.multiply(gx, dh3, gx)
            np.multiply(gh, dh3, gh)
            np.multiply(dh, z_t, direct)
            np.dot(WT, dGH_t, carry)
        return carry + direct
