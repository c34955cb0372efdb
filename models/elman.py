"""The textbook recurrent networks, parameter for parameter.

``ElmanRNN`` is the network of Goodfellow et al. (2016, sec. 10.2), with
recurrence from hidden to hidden::

    a(t) = b + W h(t-1) + U x(t)
    h(t) = tanh(a(t))
    o(t) = c + V h(t)          (logits; y_hat(t) = softmax(o(t)))

``JordanRNN`` has its recurrence from the output to the hidden layer
instead (sec. 10.2.1), which is what makes teacher forcing possible::

    a(t) = b + W y(t-1) + U x(t),  h(t) = tanh(a(t)),  o(t) = c + V h(t)

where ``y(t-1)`` is ``softmax(o(t-1))`` (the model's own output
distribution; ``feedback="logits"`` feeds ``o(t-1)`` itself), or, with
teacher forcing during training, the one-hot true target ``y(t-1)``.

Both are time-major: ``x`` is (T, B, D), outputs ``o`` are (T, B, K).
Every step runs inside ``tg.timestep(t)`` and ``tg.scope("cell")`` and names
its tensors ``x``, ``a``, ``h``, ``o`` (and ``y`` for the Jordan feedback).
"""
from __future__ import annotations

import math

import numpy as np

import tinygraph as tg
from tinygraph import backend, init
from tinygraph.fusion import register_fusion
from tinygraph.graph import note_host_read
from tinygraph.nn import Module, empty_parameter

from .cells import _DECOMPOSED, as_tensor, stand_in, zeros_state
from .sequence import rnn_sequence

__all__ = ["ElmanRNN", "JordanRNN"]


def _uniform(shape, bound, dtype):
    return init.uniform_(empty_parameter(*shape, dtype=dtype), -bound, bound)


class _TextbookRNN(Module):
    """Shared parts of the Elman and Jordan networks: parameters, one step, the time loop.

    Both run ``a = b + W s(t-1) + U x(t)``, ``h = tanh(a)``, ``o = c + V h``;
    they differ only in the carried state ``s``: h itself (Elman) or the
    fed-back output (Jordan), of width ``state_size``.
    """

    def __init__(self, input_size, hidden_size, output_size, state_size, dtype):
        super().__init__()
        self.input_size, self.hidden_size, self.output_size = int(input_size), int(hidden_size), int(output_size)
        D, H, K = self.input_size, self.hidden_size, self.output_size
        k = 1.0 / math.sqrt(H)
        self.U = _uniform((H, D), k, dtype)
        self.W = _uniform((H, state_size), k, dtype)
        self.V = _uniform((K, H), k, dtype)
        self.b = _uniform((H,), k, dtype)
        self.c = _uniform((K,), k, dtype)

    def weights(self):
        """(U^T, W^T, V^T): computed once per forward, outside the time steps."""
        return tg.transpose(self.U), tg.transpose(self.W), tg.transpose(self.V)

    def step(self, x_t, s_prev, weights=None):
        """One step of the textbook equations: (x(t), s(t-1)) -> (h(t), o(t))."""
        u_t, w_t, v_t = self.weights() if weights is None else weights
        x_t.name = "x"
        a = self.b + tg.matmul(s_prev, w_t) + tg.matmul(x_t, u_t)
        a.name = "a"
        h = tg.tanh(a)
        h.name = "h"
        o = self.c + tg.matmul(h, v_t)
        o.name = "o"
        return h, o

    def _prepare(self, x, s0, size, what):
        """Validate the sequence and the initial state (None -> zeros) once per forward."""
        x = as_tensor(x, self.U)
        if x.ndim != 3 or x.shape[2] != self.input_size:
            raise ValueError(f"{type(self).__name__}: input must be (T, B, {self.input_size}), got {x.shape}")
        batch = x.shape[1]
        s = zeros_state(x, batch, size) if s0 is None else as_tensor(s0, self.U)
        if s.shape != (batch, size):
            raise ValueError(f"{type(self).__name__}: {what} must be ({batch}, {size}), got {s.shape}")
        return x, s

    def _unroll(self, x, s, carry):
        """Run every step; ``carry(t, h, o)`` gives the state step t+1 receives."""
        weights = self.weights()
        outputs = []
        for t in range(x.shape[0]):
            with tg.timestep(t), tg.scope("cell"):
                h, o = self.step(x[t], s, weights)
                s = carry(t, h, o)
            outputs.append(o)
        return tg.stack(outputs, axis=0), s


class ElmanRNN(_TextbookRNN):
    """Hidden-to-hidden RNN with parameters U (H x D), W (H x H), V (K x H), b (H), c (K).

    ``forward(x, h0=None) -> (o, h_n)``: ``o`` (T, B, K) logits, ``h_n`` (B, H).
    ``fused=True`` records the recurrence as one fused kernel
    (``models.sequence``) and the readout as one matrix product over all
    steps, for training speed; ``models.decomposed()`` brings the per-step
    textbook graph back for pictures and the stepper.
    Train with ``tg.cross_entropy(o, y, reduction="sum")``: the sum over time
    of the negative log-likelihoods. All parameters start U(-1/sqrt(H), 1/sqrt(H)).
    """

    def __init__(self, input_size, hidden_size, output_size, dtype=None, fused=False):
        super().__init__(input_size, hidden_size, output_size, hidden_size, dtype)
        self.fused = bool(fused)

    def forward(self, x, h0=None):
        """Run over ``x`` (T, B, D) from ``h0`` (B, H; zeros by default)."""
        x, h = self._prepare(x, h0, self.hidden_size, "h0")
        if self.fused and x.shape[0] > 1 and not _DECOMPOSED[0]:  # one step: the textbook cell (see layers)
            return self._forward_fused(x, h)
        return self._unroll(x, h, lambda t, h, o: h)

    def _forward_fused(self, x, h0):
        """The same equations as two nodes: the recurrence as one fused kernel, o = c + V h as one GEMM."""
        steps, batch, _ = x.shape
        with tg.scope("cell"):
            hs = rnn_sequence(x, h0, self.U, self.W, self.b)
            hs.name = "h"
            flat = tg.reshape(hs, (steps * batch, self.hidden_size))
            o = tg.reshape(tg.matmul(flat, tg.transpose(self.V)) + self.c, (steps, batch, self.output_size))
            o.name = "o"
        return o, hs[steps - 1]

    def extra_repr(self):
        extra = ", fused=True" if self.fused else ""
        return f"{self.input_size}, {self.hidden_size}, {self.output_size}{extra}"


class JordanRNN(_TextbookRNN):
    """Output-to-hidden RNN: U (H x D), W (H x K), V (K x H), b (H), c (K).

    ``forward(x, h0=None, targets=None) -> (o, y_last)``. The carried state is
    the fed-back output y (B, K): ``h0`` is the initial one (zeros by default)
    and ``y_last`` the one the next step would receive, so windows chain.
    With ``teacher_forcing=True``, in training mode and when ``targets``
    (T, B) integer classes are given, step t receives the one-hot true
    target of step t-1 instead of the model's own output.
    """

    def __init__(self, input_size, hidden_size, output_size, teacher_forcing=False, feedback="softmax",
                 dtype=None):
        if feedback not in ("softmax", "logits"):
            raise ValueError(f"JordanRNN: feedback must be 'softmax' or 'logits', got {feedback!r}")
        super().__init__(input_size, hidden_size, output_size, output_size, dtype)
        self.teacher_forcing, self.feedback = bool(teacher_forcing), feedback

    def _one_hots(self, targets, like):
        """(T, B, K) one-hot targets on ``like``'s device (a Tensor), built once per forward."""
        classes = targets if isinstance(targets, tg.Tensor) or hasattr(targets, "dtype") else np.asarray(targets)
        steps, batch = like.shape[0], like.shape[1]
        if tuple(classes.shape) != (steps, batch) or np.dtype(classes.dtype).kind not in "iu":
            raise ValueError(f"JordanRNN: targets must be ({steps}, {batch}) integers, got "
                             f"{tuple(classes.shape)} {classes.dtype}")
        # checked, not noted as a host read: the one-hots stay an op on the ids (eye[-1] would
        # quietly be the last class, so a padding id of -1 must not get through)
        ids = backend.as_host(classes.data if isinstance(classes, tg.Tensor) else classes)
        if ids.size and (ids.min() < 0 or ids.max() >= self.output_size):
            raise ValueError(f"JordanRNN: targets must be class ids in [0, {self.output_size}), got min "
                             f"{ids.min()}, max {ids.max()}")
        eye = tg.Tensor(backend.array_module(like.data).eye(self.output_size, dtype=like.dtype))
        if isinstance(classes, tg.Tensor):
            if classes.device == like.device:
                return eye[classes]  # an op on the ids: a trace replays it with each new targets
            note_host_read(classes)  # copied on the host: a trace keys on the ids' values
            classes = classes.data
        return eye[backend.to_device(classes, like.device)]

    def forward(self, x, h0=None, targets=None):
        """Run over ``x`` (T, B, D); returns logits (T, B, K) and the next feedback (B, K)."""
        x, y = self._prepare(x, h0, self.output_size, "h0 (the fed-back output)")
        if self.teacher_forcing and self.training and targets is not None:
            one_hots = self._one_hots(targets, x)
            return self._unroll(x, y, lambda t, h, o: _named(one_hots[t], "y"))
        if self.feedback == "logits":
            return self._unroll(x, y, lambda t, h, o: o)
        return self._unroll(x, y, lambda t, h, o: _named(tg.softmax(o, axis=-1), "y"))

    def extra_repr(self):
        return (f"{self.input_size}, {self.hidden_size}, {self.output_size}, "
                f"teacher_forcing={self.teacher_forcing}, feedback={self.feedback!r}")


def _named(tensor, name):
    tensor.name = name
    return tensor


# -- trace-time fusion: the decomposed Elman network replays as the fused kernel ---------
# The textbook graph (every a, h, o of every step) stays what the eager model records;
# a trace of it (tg.trace, tg.traced_step) runs ``_forward_fused`` instead. The pattern is
# the model's own ``_unroll`` and the replacement its own ``_forward_fused``, both on a
# stand-in model whose parameters are the pattern's inputs (see ``tinygraph.fusion``).

def _elman_stand_in(U, W, V, b, c):
    return stand_in(ElmanRNN, U=U, W=W, V=V, b=b, c=c, input_size=U.shape[1], hidden_size=U.shape[0],
                    output_size=V.shape[0], fused=False)


def _elman_examples(anchor):
    """Small inputs with the anchor's number of steps (the anchor is the stack of the outputs o)."""
    if anchor.op != "stack" or len(anchor.inputs) < 2 or len(anchor.shape) != 3:
        return None
    T, D, H, K = len(anchor.inputs), 3, 2, 2
    return [np.zeros(s) for s in [(T, 2, D), (2, H), (H, D), (H, H), (K, H), (H,), (K,)]]


register_fusion("elman_rnn",
                lambda x, h0, *params: _elman_stand_in(*params)._unroll(x, h0, lambda t, h, o: h),
                lambda x, h0, *params: _elman_stand_in(*params)._forward_fused(x, h0),
                _elman_examples)
