"""Per-time-step elementwise math of the fused sequence kernels on the CPU (NumPy).

``models.sequence`` runs each step as one BLAS matrix product and then ONE
call here: NumPy ufuncs writing into preallocated buffers (``out=``) so a
step allocates nothing; the sigmoid gates share one ``tanh`` call with the
others through ``sigmoid(z) = (1 + tanh(z / 2)) / 2``. The CUDA version of the same
equations is ``models.cuda_kernels`` (one raw kernel per step). Both are
checked against the decomposed cells.

Layout: gate blocks are stacked along the last axis in PyTorch's order,
LSTM ``[i, f, g, o]`` and GRU ``[r, z, n]``; ``H`` is the hidden size.
"""
from __future__ import annotations

import numpy as np

__all__ = ["NumpyKernels"]


class NumpyKernels:
    """The step math as NumPy ufunc calls into caller-owned buffers."""

    @staticmethod
    def workspace(xp, batch, hidden, gates, dtype):
        """Scratch buffers for one sequence call (reused by every step)."""
        ws = {"bh": xp.empty((batch, hidden), dtype), "bh2": xp.empty((batch, hidden), dtype)}
        if gates == 4:
            half = xp.full(hidden, 0.5, dtype)
            ws["lstm_scale"] = xp.concatenate([half, half, xp.ones(hidden, dtype), half])
            ws["lstm_shift"] = xp.concatenate([half, half, xp.zeros(hidden, dtype), half])
        return ws

    # -- vanilla RNN -------------------------------------------------------
    @staticmethod
    def rnn_forward(a, zh, relu, ws):
        """a <- act(a + zh) in place; ``a`` holds U x + b and becomes h."""
        np.add(a, zh, out=a)
        if relu:
            np.maximum(a, 0, out=a)
        else:
            np.tanh(a, out=a)

    @staticmethod
    def rnn_backward(gh, carry, h, da, relu, ws):
        """da <- (gh + carry) * act'(h)."""
        np.add(gh, carry, out=da)
        if relu:
            np.multiply(da, h > 0, out=da)
        else:
            t = ws["bh"]
            np.multiply(h, h, out=t)
            np.subtract(1, t, out=t)
            np.multiply(da, t, out=da)

    # -- LSTM ----------------------------------------------------------------
    @staticmethod
    def lstm_forward(a, zh, c_prev, c, tc, h, ws):
        """Gates in place in ``a`` (pre-activations U x + b), then c, tanh(c), h.

        All four gates in three passes over the row: [i, f, g, o] = k tanh(k z) + m
        with k = [1/2, 1/2, 1, 1/2] and m = [1/2, 1/2, 0, 1/2] (sigmoid(z) =
        (1 + tanh(z/2)) / 2), so a step makes 10 ufunc calls whatever its size.
        """
        H = c.shape[-1]
        scale, shift = ws["lstm_scale"], ws["lstm_shift"]
        np.add(a, zh, out=a)
        np.multiply(a, scale, out=a)
        np.tanh(a, out=a)
        np.multiply(a, scale, out=a)
        np.add(a, shift, out=a)
        i, f, g, o = a[:, :H], a[:, H:2 * H], a[:, 2 * H:3 * H], a[:, 3 * H:]
        t = ws["bh"]
        np.multiply(f, c_prev, out=c)
        np.multiply(i, g, out=t)
        np.add(c, t, out=c)
        np.tanh(c, out=tc)
        np.multiply(o, tc, out=h)

    @staticmethod
    def lstm_backward(a, tc, c_prev, gh, carry, dc_in, dz, dc_out, ws):
        """dz (gate pre-activation grads) and dc_out (grad of c(t-1)) from step t's grads.

        With dh = gh + carry:  dc = dc_in + dh o (1 - tc^2);
        dz = [dc g, dc c_prev, dc i, dh tc] * [i(1-i), f(1-f), 1-g^2, o(1-o)];  dc_out = dc f.
        """
        H = tc.shape[-1]
        i, f, g, o = a[:, :H], a[:, H:2 * H], a[:, 2 * H:3 * H], a[:, 3 * H:]
        dh, t = ws["bh2"], ws["bh"]
        np.add(gh, carry, out=dh)
        np.subtract(1, a, out=dz)            # s (1 - s) for every block, the g block fixed below
        np.multiply(dz, a, out=dz)
        dg = dz[:, 2 * H:3 * H]
        np.multiply(g, g, out=dg)
        np.subtract(1, dg, out=dg)
        np.multiply(tc, tc, out=t)           # dc = dc_in + dh o (1 - tc^2)
        np.subtract(1, t, out=t)
        np.multiply(t, o, out=t)
        np.multiply(t, dh, out=t)
        np.add(dc_in, t, out=dc_out)
        dc = dc_out
        for block, left, right in ((dz[:, 3 * H:], dh, tc), (dz[:, :H], dc, g),
                                   (dz[:, H:2 * H], dc, c_prev), (dg, dc, i)):
            np.multiply(left, right, out=t)
            np.multiply(block, t, out=block)
        np.multiply(dc_out, f, out=dc_out)

    # -- GRU -----------------------------------------------------------------
    @staticmethod
    def gru_forward(a, zh, b_hn, h_prev, hn, h, ws):
        """a (U x + b) becomes [r, z, n]; hn <- W_n h + b_hn; h <- n + z (h_prev - n)."""
        H = h.shape[-1]
        np.add(zh[:, 2 * H:], b_hn, out=hn)
        rz = a[:, :2 * H]
        np.add(rz, zh[:, :2 * H], out=rz)
        np.multiply(rz, 0.5, out=rz)
        np.tanh(rz, out=rz)
        np.multiply(rz, 0.5, out=rz)
        np.add(rz, 0.5, out=rz)
        r, z, n = a[:, :H], a[:, H:2 * H], a[:, 2 * H:]
        t = ws["bh"]
        np.multiply(r, hn, out=t)
        np.add(n, t, out=n)
        np.tanh(n, out=n)
        np.subtract(h_prev, n, out=t)
        np.multiply(t, z, out=t)
        np.add(n, t, out=h)

    @staticmethod
    def gru_backward(a, hn, h_prev, gh, carry, direct_in, gx, ghh, direct_out, ws):
        """Pre-activation grads of step t: gx (input side [r, z, n]) and ghh (recurrent side).

        dh = gh + carry + direct_in (carry = next step's ghh @ W, direct_in its dh z):
        dn = dh (1-z)(1-n^2), dz = dh (h_prev - n) z(1-z), dr = dn hn r(1-r);
        gx = [dr, dz, dn], ghh = [dr, dz, dn r], direct_out = dh z.
        """
        H = hn.shape[-1]
        r, z, n = a[:, :H], a[:, H:2 * H], a[:, 2 * H:]
        dh, t = ws["bh2"], ws["bh"]
        np.add(gh, carry, out=dh)
        np.add(dh, direct_in, out=dh)
        dr, dzp, dn = gx[:, :H], gx[:, H:2 * H], gx[:, 2 * H:]
        np.multiply(n, n, out=dn)                   # dn = dh (1 - z)(1 - n^2)
        np.subtract(1, dn, out=dn)
        np.subtract(1, z, out=t)
        np.multiply(dn, t, out=dn)
        np.multiply(dn, dh, out=dn)
        np.multiply(t, z, out=t)                    # dz = dh (h_prev - n) z (1 - z)
        np.subtract(h_prev, n, out=dzp)
        np.multiply(dzp, t, out=dzp)
        np.multiply(dzp, dh, out=dzp)
        np.subtract(1, r, out=t)                    # dr = dn hn r (1 - r)
        np.multiply(t, r, out=t)
        np.multiply(dn, hn, out=dr)
        np.multiply(dr, t, out=dr)
        ghh[:, :2 * H] = gx[:, :2 * H]
        np.multiply(dn, r, out=ghh[:, 2 * H:])
        np.multiply(dh, z, out=direct_out)


