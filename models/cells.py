"""Recurrent cells: one time step of a vanilla RNN, an LSTM and a GRU.

A cell maps ``(x(t), state(t-1))`` to ``state(t)`` for a batch: ``x`` is
(B, D), ``h`` and ``c`` are (B, H). It runs the same ops every call, so the
recorded steps fold back into one circuit. Every cell names its parameters
like the textbook: ``U`` (input to hidden, rows stacked per gate), ``W``
(hidden to hidden) and ``b``; intermediate tensors carry short names (``a``,
``h``; ``f i g o c h``; ``r z n h``) that the diagrams print.

Gate order of the stacked rows is PyTorch's, so its weights copy over as
they are: LSTM ``[i, f, g, o]``, GRU ``[r, z, n]``.

Options shared by all cells (the textbook's remedies for vanishing and
exploding gradients):

* ``recurrent_init``: ``None`` (PyTorch's U(-1/sqrt(H), 1/sqrt(H)) for all
  weights), ``"orthogonal"`` (each gate's H x H block of ``W``) or
  ``"identity"`` (``W`` = I per block and ``b`` = 0: with ``nonlinearity="relu"``
  this is the IRNN of Le et al. 2015).
* ``layer_norm=True``: layer normalisation of the input projection ``U x``
  and of the recurrent projection ``W h`` (each over all gates together,
  before the bias), and for the LSTM of the cell state before its ``tanh``
  (Ba et al. 2016).
"""
from __future__ import annotations

import math

import numpy as np

import tinygraph as tg
from tinygraph import backend, init
from tinygraph.graph import DECOMPOSED as _DECOMPOSED
from tinygraph.graph import decomposed
from tinygraph.nn import LayerNorm, Module, empty_parameter

from .fused import lstm_cell

__all__ = ["RNNCell", "LSTMCell", "GRUCell", "zeros_state", "decomposed"]

_RECURRENT_INITS = (None, "uniform", "orthogonal", "identity")


def zeros_state(like, batch, hidden_size):
    """A (batch, hidden_size) zero Tensor with the dtype and device of ``like``."""
    data = like.data if isinstance(like, tg.Tensor) else like
    xp = backend.array_module(data)
    return tg.Tensor(xp.zeros((batch, hidden_size), dtype=data.dtype))


def stand_in(cls, **fields):
    """A ``cls`` module built without its ``__init__``, holding ``fields`` as attributes.

    The trace-time fusions run a model's own step code on one of these, with
    the pattern's inputs in place of the parameters (``tinygraph.fusion``).
    """
    module = object.__new__(cls)
    Module.__init__(module)
    for name, value in fields.items():
        object.__setattr__(module, name, value)
    return module


def as_tensor(x, like=None):
    """``x`` as a Tensor in the dtype of ``like`` (a parameter).

    Arrays and lists are cast to ``like``'s dtype, so a float32 model fed
    float64 NumPy data stays float32. A float Tensor of another dtype is an
    error, as in PyTorch: casting it would cut it from its graph silently.
    """
    if isinstance(x, tg.Tensor):
        if like is not None and x.dtype.kind == "f" and x.dtype != like.dtype:
            raise TypeError(f"input Tensor has dtype {x.dtype} but the model's parameters are {like.dtype}; "
                            f"convert the input (tg.tensor(x.numpy(), dtype='{like.dtype}')) or the model "
                            "(model.double() / model.float())")
        return x
    if like is None:
        return tg.tensor(x)
    data = x if hasattr(x, "astype") else np.asarray(x)
    return tg.Tensor(data.astype(like.dtype, copy=False))


class _Cell(Module):
    """Shared parts: parameters U (G*H, D), W (G*H, H), b (G*H), projections, checks."""

    num_gates = 1

    def __init__(self, input_size, hidden_size, bias=True, layer_norm=False, recurrent_init=None, dtype=None):
        super().__init__()
        if recurrent_init not in _RECURRENT_INITS:
            raise ValueError(f"{type(self).__name__}: recurrent_init must be one of {_RECURRENT_INITS}, "
                             f"got {recurrent_init!r}")
        self.input_size, self.hidden_size = int(input_size), int(hidden_size)
        if self.input_size < 1 or self.hidden_size < 1:
            raise ValueError(f"{type(self).__name__}: input_size and hidden_size must be >= 1, got "
                             f"{input_size} and {hidden_size}")
        self.has_bias, self.layer_norm = bool(bias), bool(layer_norm)
        G, H, D = self.num_gates, self.hidden_size, self.input_size
        k = 1.0 / math.sqrt(H)
        self.U = init.uniform_(empty_parameter(G * H, D, dtype=dtype), -k, k)
        self.W = init.uniform_(empty_parameter(G * H, H, dtype=dtype), -k, k)
        self.b = init.uniform_(empty_parameter(G * H, dtype=dtype), -k, k) if bias else None
        if recurrent_init in ("orthogonal", "identity"):
            init.blockwise_(self.W, recurrent_init, G)
        if recurrent_init == "identity" and self.b is not None:
            init.zeros_(self.b)
        if layer_norm:
            self.ln_x = LayerNorm(G * H, dtype=dtype)
            self.ln_h = LayerNorm(G * H, dtype=dtype)

    def _check(self, x, h):
        if x.ndim != 2 or x.shape[1] != self.input_size:
            raise ValueError(f"{type(self).__name__}: input must be (batch, {self.input_size}), got {x.shape}")
        if h is not None and (h.ndim != 2 or h.shape != (x.shape[0], self.hidden_size)):
            raise ValueError(f"{type(self).__name__}: state must be ({x.shape[0]}, {self.hidden_size}), "
                             f"got {h.shape}")

    def _prepare(self, x, states):
        """Validate one step's input and states (None -> zeros); returns (x, states)."""
        x = as_tensor(x, self.U)
        states = tuple(zeros_state(x, x.shape[0], self.hidden_size) if s is None else as_tensor(s, self.U)
                       for s in states)
        for s in states:
            self._check(x, s)
        return x, states

    def forward(self, x, h=None):
        """One step (single-state cells): (B, D), (B, H) -> (B, H). A missing ``h`` is zeros."""
        x, (h,) = self._prepare(x, (h,))
        return self.step(x, h, self.weights())

    def weights(self):
        """The per-sequence constants ``step`` takes: (U^T, W^T).

        A layer computes them once per forward, outside the time steps, so a
        sequence of T steps records 2 transposes instead of 2 T.
        """
        return tg.transpose(self.U), tg.transpose(self.W)

    def _projections(self, x, h, weights):
        """(U x, W h) for a batch, layer-normalised when ``layer_norm`` is on."""
        u_t, w_t = weights
        ux = tg.matmul(x, u_t)
        wh = tg.matmul(h, w_t)
        if self.layer_norm:
            ux, wh = self.ln_x(ux), self.ln_h(wh)
        return ux, wh

    def extra_repr(self):
        extra = ", layer_norm=True" if self.layer_norm else ""
        return f"{self.input_size}, {self.hidden_size}, bias={self.has_bias}{extra}"

    # -- PyTorch weights ---------------------------------------------------
    def from_torch(self, weight_ih, weight_hh, bias_ih=None, bias_hh=None):
        """This cell's parameters (name -> array) from PyTorch's per-layer weights.

        PyTorch keeps two biases; for the gates where they are simply added
        they fold into one ``b`` (the gradient of each PyTorch bias equals
        the gradient of ``b``).
        """
        out = {"U": np.asarray(weight_ih), "W": np.asarray(weight_hh)}
        if self.has_bias:
            out["b"] = np.asarray(bias_ih) + np.asarray(bias_hh)
        return out

    def to_torch(self):
        """PyTorch's (weight_ih, weight_hh, bias_ih, bias_hh) as NumPy arrays (bias_hh all zero)."""
        U, W = self.U.numpy(), self.W.numpy()
        if not self.has_bias:
            return U, W, None, None
        b = self.b.numpy()
        return U, W, b, np.zeros_like(b)


class RNNCell(_Cell):
    """Vanilla (Elman) cell: a = b + W h + U x, h' = tanh(a) (or relu(a))."""

    def __init__(self, input_size, hidden_size, nonlinearity="tanh", bias=True, layer_norm=False,
                 recurrent_init=None, dtype=None):
        if nonlinearity not in ("tanh", "relu"):
            raise ValueError(f"RNNCell: nonlinearity must be 'tanh' or 'relu', got {nonlinearity!r}")
        super().__init__(input_size, hidden_size, bias, layer_norm, recurrent_init, dtype)
        self.nonlinearity = nonlinearity

    def step(self, x, h, weights):
        """One step without checks; ``weights`` comes from :meth:`weights`."""
        ux, wh = self._projections(x, h, weights)
        a = wh + ux
        if self.b is not None:
            a = self.b + a
        a.name = "a"
        h_new = tg.tanh(a) if self.nonlinearity == "tanh" else tg.relu(a)
        h_new.name = "h"
        return h_new

    def extra_repr(self):
        return super().extra_repr() + f", nonlinearity={self.nonlinearity!r}"


class LSTMCell(_Cell):
    """Long short-term memory cell; state is (h, c).

    i, f, o = sigmoid(.), g = tanh(.) of b + W h + U x (rows [i, f, g, o]);
    c' = f * c + i * g;  h' = o * tanh(c').
    ``forget_bias`` sets the forget gate's slice of ``b`` (1.0 is the usual
    remedy that keeps early gradients flowing through c). ``fused=True`` runs
    the step as one primitive with a closed-form VJP (``models.fused``):
    same numbers, one recorded node per step instead of ~20.
    """

    num_gates = 4

    def __init__(self, input_size, hidden_size, bias=True, layer_norm=False, recurrent_init=None,
                 forget_bias=None, fused=False, dtype=None):
        super().__init__(input_size, hidden_size, bias, layer_norm, recurrent_init, dtype)
        if fused and layer_norm:
            raise ValueError("LSTMCell: the fused cell has no layer norm; use fused=False with layer_norm=True")
        self.fused = bool(fused)
        if forget_bias is not None:
            if self.b is None:
                raise ValueError("LSTMCell: forget_bias needs bias=True")
            H = self.hidden_size
            values = self.b.numpy().copy()
            values[H:2 * H] = forget_bias
            self.b.data = backend.to_device(values, self.b.device)
        if layer_norm:
            self.ln_c = LayerNorm(hidden_size, dtype=dtype)

    def forward(self, x, state=None):
        """One step: (B, D), (h, c) -> (h', c'). A missing state is zeros."""
        x, state = self._prepare(x, (None, None) if state is None else state)
        return self.step(x, state, self.weights())

    def weights(self):
        """(U^T, W^T) for ``step``, or None for the fused cell (its primitive transposes inside)."""
        return None if self.fused and not _DECOMPOSED[0] else super().weights()

    def step(self, x, state, weights):
        """One step without checks; ``weights`` comes from :meth:`weights`."""
        h, c = state
        if self.fused and not _DECOMPOSED[0]:
            return lstm_cell(x, h, c, self.U, self.W, self.b)
        ux, wh = self._projections(x, h, weights)
        gates = wh + ux
        if self.b is not None:
            gates = self.b + gates
        gi, gf, gg, go = tg.split(gates, 4, axis=-1)
        f = tg.sigmoid(gf)
        f.name = "f"
        i = tg.sigmoid(gi)
        i.name = "i"
        g = tg.tanh(gg)
        g.name = "g"
        o = tg.sigmoid(go)
        o.name = "o"
        c_new = f * c + i * g
        c_new.name = "c"
        squashed = tg.tanh(self.ln_c(c_new) if self.layer_norm else c_new)
        h_new = o * squashed
        h_new.name = "h"
        return h_new, c_new


class GRUCell(_Cell):
    """Gated recurrent unit in PyTorch's formulation; rows of U, W, b are [r, z, n].

    r = sigmoid(U_r x + W_r h + b_r),  z = sigmoid(U_z x + W_z h + b_z),
    n = tanh(U_n x + b_n + r * (W_n h + b_hn)),  h' = (1 - z) * n + z * h.
    The reset gate multiplies ``W_n h + b_hn``, so that bias (``b_hn``) is a
    parameter of its own.
    """

    num_gates = 3

    def __init__(self, input_size, hidden_size, bias=True, layer_norm=False, recurrent_init=None, dtype=None):
        super().__init__(input_size, hidden_size, bias, layer_norm, recurrent_init, dtype)
        if bias:
            k = 1.0 / math.sqrt(self.hidden_size)
            self.b_hn = init.uniform_(empty_parameter(self.hidden_size, dtype=dtype), -k, k)
            if recurrent_init == "identity":
                init.zeros_(self.b_hn)
        else:
            self.b_hn = None

    def step(self, x, h, weights):
        """One step without checks; ``weights`` comes from :meth:`weights`."""
        ux, wh = self._projections(x, h, weights)
        if self.b is not None:
            ux = ux + self.b
        xr, xz, xn = tg.split(ux, 3, axis=-1)
        hr, hz, hn = tg.split(wh, 3, axis=-1)
        if self.b_hn is not None:
            hn = hn + self.b_hn
        r = tg.sigmoid(xr + hr)
        r.name = "r"
        z = tg.sigmoid(xz + hz)
        z.name = "z"
        n = tg.tanh(xn + r * hn)
        n.name = "n"
        h_new = (1 - z) * n + z * h
        h_new.name = "h"
        return h_new

    def from_torch(self, weight_ih, weight_hh, bias_ih=None, bias_hh=None):
        """This cell's state dict from PyTorch's GRU weights: the r and z biases summed, b_hn kept apart."""
        out = {"U": np.asarray(weight_ih), "W": np.asarray(weight_hh)}
        if self.has_bias:
            H = self.hidden_size
            b_ih, b_hh = np.asarray(bias_ih), np.asarray(bias_hh)
            out["b"] = np.concatenate([b_ih[:2 * H] + b_hh[:2 * H], b_ih[2 * H:]])
            out["b_hn"] = b_hh[2 * H:].copy()
        return out

    def to_torch(self):
        """(weight_ih, weight_hh, bias_ih, bias_hh) for PyTorch's GRU: b_hn goes back into bias_hh."""
        U, W = self.U.numpy(), self.W.numpy()
        if not self.has_bias:
            return U, W, None, None
        H = self.hidden_size
        b, b_hn = self.b.numpy(), self.b_hn.numpy()
        b_hh = np.concatenate([np.zeros(2 * H, dtype=b.dtype), b_hn])
        return U, W, b.copy(), b_hh
