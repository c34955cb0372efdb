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
from tinygraph.nn import Module, empty_parameter

from .cells import as_tensor, zeros_state

__all__ = ["ElmanRNN", "JordanRNN"]


def _uniform(shape, bound, dtype):
    return init.uniform_(empty_parameter(*shape, dtype=dtype), -bound, bound)


def _check_sequence(model, x):
    if x.ndim != 3 or x.shape[2] != model.input_size:
        raise ValueError(f"{type(model).__name__}: input must be (T, B, {model.input_size}), got {x.shape}")


class ElmanRNN(Module):
    """Hidden-to-hidden RNN with parameters U (H x D), W (H x H), V (K x H), b (H), c (K).

    ``forward(x, h0=None) -> (o, h_n)``: ``o`` (T, B, K) logits, ``h_n`` (B, H).
    Train with ``tg.cross_entropy(o, y, reduction="sum")``: the sum over time
    of the negative log-likelihoods. All parameters start U(-1/sqrt(H), 1/sqrt(H)).
    """

    def __init__(self, input_size, hidden_size, output_size, dtype=None):
        super().__init__()
        self.input_size, self.hidden_size, self.output_size = int(input_size), int(hidden_size), int(output_size)
        D, H, K = self.input_size, self.hidden_size, self.output_size
        k = 1.0 / math.sqrt(H)
        self.U = _uniform((H, D), k, dtype)
        self.W = _uniform((H, H), k, dtype)
        self.V = _uniform((K, H), k, dtype)
        self.b = _uniform((H,), k, dtype)
        self.c = _uniform((K,), k, dtype)

    def forward(self, x, h0=None):
        """Run over ``x`` (T, B, D) from ``h0`` (B, H; zeros by default)."""
        x = as_tensor(x)
        _check_sequence(self, x)
        steps, batch = x.shape[0], x.shape[1]
        h = zeros_state(x, batch, self.hidden_size) if h0 is None else as_tensor(h0)
        if h.shape != (batch, self.hidden_size):
            raise ValueError(f"ElmanRNN: h0 must be ({batch}, {self.hidden_size}), got {h.shape}")
        outputs = []
        for t in range(steps):
            with tg.timestep(t), tg.scope("cell"):
                h, o = self.step(x[t], h)
            outputs.append(o)
        return tg.stack(outputs, axis=0), h

    def step(self, x_t, h_prev):
        """One step of the textbook equations: (x(t), h(t-1)) -> (h(t), o(t))."""
        x_t.name = "x"
        a = self.b + tg.matmul(h_prev, tg.transpose(self.W)) + tg.matmul(x_t, tg.transpose(self.U))
        a.name = "a"
        h = tg.tanh(a)
        h.name = "h"
        o = self.c + tg.matmul(h, tg.transpose(self.V))
        o.name = "o"
        return h, o

    def extra_repr(self):
        return f"{self.input_size}, {self.hidden_size}, {self.output_size}"


class JordanRNN(Module):
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
        super().__init__()
        if feedback not in ("softmax", "logits"):
            raise ValueError(f"JordanRNN: feedback must be 'softmax' or 'logits', got {feedback!r}")
        self.input_size, self.hidden_size, self.output_size = int(input_size), int(hidden_size), int(output_size)
        self.teacher_forcing, self.feedback = bool(teacher_forcing), feedback
        D, H, K = self.input_size, self.hidden_size, self.output_size
        k = 1.0 / math.sqrt(H)
        self.U = _uniform((H, D), k, dtype)
        self.W = _uniform((H, K), k, dtype)
        self.V = _uniform((K, H), k, dtype)
        self.b = _uniform((H,), k, dtype)
        self.c = _uniform((K,), k, dtype)

    def _one_hot(self, classes, like):
        xp = backend.array_module(like.data)
        eye = xp.eye(self.output_size, dtype=like.dtype)
        return tg.Tensor(eye[backend.to_device(classes, like.device)], name="y")

    def forward(self, x, h0=None, targets=None):
        """Run over ``x`` (T, B, D); returns logits (T, B, K) and the next feedback (B, K)."""
        x = as_tensor(x)
        _check_sequence(self, x)
        steps, batch = x.shape[0], x.shape[1]
        forcing = self.teacher_forcing and self.training and targets is not None
        if forcing:
            classes = np.asarray(targets.numpy() if isinstance(targets, tg.Tensor) else targets)
            if classes.shape != (steps, batch) or classes.dtype.kind not in "iu":
                raise ValueError(f"JordanRNN: targets must be ({steps}, {batch}) integers, got "
                                 f"{classes.shape} {classes.dtype}")
        y = zeros_state(x, batch, self.output_size) if h0 is None else as_tensor(h0)
        if y.shape != (batch, self.output_size):
            raise ValueError(f"JordanRNN: h0 (the fed-back output) must be ({batch}, {self.output_size}), "
                             f"got {y.shape}")
        outputs = []
        for t in range(steps):
            with tg.timestep(t), tg.scope("cell"):
                x_t = x[t]
                x_t.name = "x"
                a = self.b + tg.matmul(y, tg.transpose(self.W)) + tg.matmul(x_t, tg.transpose(self.U))
                a.name = "a"
                h = tg.tanh(a)
                h.name = "h"
                o = self.c + tg.matmul(h, tg.transpose(self.V))
                o.name = "o"
                if forcing:
                    y = self._one_hot(classes[t], o)
                elif self.feedback == "softmax":
                    y = tg.softmax(o, axis=-1)
                    y.name = "y"
                else:
                    y = o
            outputs.append(o)
        return tg.stack(outputs, axis=0), y

    def extra_repr(self):
        return (f"{self.input_size}, {self.hidden_size}, {self.output_size}, "
                f"teacher_forcing={self.teacher_forcing}, feedback={self.feedback!r}")
