"""Small example models with a loss, for `tinygraph draw`, `tinygraph step` and tests.

``build(name, steps)`` runs one forward pass of a tiny model over a random
sequence and returns an :class:`Example` (model, loss, outputs). It uses
``tinygraph.models`` when that package provides the model, and otherwise the
hand-built textbook RNN below (the equations of the design doc, with the
parameters named U, W, V, b, c), so diagrams work at every stage.
"""
from __future__ import annotations

import dataclasses

import numpy as np

import tinygraph as tg
from tinygraph.nn import Module, Parameter

__all__ = ["MODEL_NAMES", "Example", "TextbookRNN", "build", "textbook_rnn"]

MODEL_NAMES = ("rnn", "elman", "jordan", "lstm", "gru", "birnn")


@dataclasses.dataclass
class Example:
    """One forward pass of a small model: what the diagrams and the stepper need."""

    name: str
    model: object
    loss: tg.Tensor
    output: tg.Tensor
    steps: int
    source: str  # "tinygraph.models.X" or "textbook (hand-built)"

    @property
    def tensors(self):
        return (self.loss,)


class TextbookRNN(Module):
    """a(t) = b + W h(t-1) + U x(t); h(t) = tanh(a(t)); o(t) = c + V h(t)."""

    def __init__(self, input_size, hidden_size, output_size, rng=None):
        super().__init__()
        rng = rng or np.random.default_rng(0)
        def init(*shape):
            return Parameter(rng.normal(0.0, 0.5, size=shape))
        self.U = init(input_size, hidden_size)
        self.W = init(hidden_size, hidden_size)
        self.V = init(hidden_size, output_size)
        self.b = init(hidden_size)
        self.c = init(output_size)

    def forward(self, x, h0):
        h, outputs = h0, []
        for t in range(x.shape[0]):
            with tg.timestep(t), tg.scope("cell"):
                x_t = tg.Tensor(x.data[t], name="x")
                a = self.b + h @ self.W + x_t @ self.U
                a.name = "a"
                h = tg.tanh(a)
                h.name = "h"
                o = self.c + h @ self.V
                o.name = "o"
            outputs.append(o)
        return tg.stack(outputs), h


def textbook_rnn(steps=4, batch=1, input_size=2, hidden_size=3, output_size=2, seed=0):
    """The hand-built textbook RNN with a per-step softmax loss (no tinygraph.models needed)."""
    rng = np.random.default_rng(seed)
    model = TextbookRNN(input_size, hidden_size, output_size, rng)
    x = tg.Tensor(rng.normal(size=(steps, batch, input_size)), name="x")
    h0 = tg.Tensor(np.zeros((batch, hidden_size)), name="h0")
    o, _ = model(x, h0)
    loss = sequence_loss(o, rng.integers(0, output_size, size=(steps, batch)))
    return Example("rnn", model, loss, o, steps, "textbook (hand-built)")


def sequence_loss(outputs, targets):
    """L = sum over t of L(t), L(t) = cross-entropy of o(t) against one-hot y(t)."""
    steps, batch = targets.shape
    classes = outputs.shape[-1]
    losses = []
    for t in range(steps):
        with tg.timestep(t), tg.scope("loss"):
            y = tg.Tensor(np.eye(classes)[targets[t]].astype(outputs.dtype), name="y")
            step_loss = -(tg.log_softmax(outputs[t], axis=-1) * y).sum() / batch
            step_loss.name = "L"
        losses.append(step_loss)
    total = tg.stack(losses).sum()  # one node, not a 10,000-long chain of adds
    total.name = "L"
    return total


def _models_module():
    try:
        import tinygraph.models as models
    except ImportError:
        return None
    return models


_MODEL_CLASSES = {
    # name -> (class name in tinygraph.models, extra constructor kwargs)
    "rnn": ("RNN", {}),
    "elman": ("ElmanRNN", {}),
    "jordan": ("JordanRNN", {}),
    "lstm": ("LSTM", {}),
    "gru": ("GRU", {}),
    "birnn": ("RNN", {"bidirectional": True}),
}


def build(name="rnn", steps=4, batch=1, input_size=2, hidden_size=3, output_size=2, seed=0,
          num_layers=1):
    """Run one forward pass of the example model ``name`` and attach a loss."""
    if name not in MODEL_NAMES:
        raise ValueError(f"unknown model {name!r}; choose one of {', '.join(MODEL_NAMES)}")
    models = _models_module()
    cls_name, extra = _MODEL_CLASSES[name]
    cls = getattr(models, cls_name, None) if models is not None else None
    if cls is None:
        if name not in ("rnn", "elman"):
            raise RuntimeError(
                f"model {name!r} needs tinygraph.models.{cls_name}, which is not available yet; "
                "use --model rnn (the hand-built textbook RNN)")
        return textbook_rnn(steps, batch, input_size, hidden_size, output_size, seed)
    tg.manual_seed(seed)
    rng = np.random.default_rng(seed)
    x = tg.Tensor(rng.normal(size=(steps, batch, input_size)), name="x")
    targets = rng.integers(0, output_size, size=(steps, batch))
    if cls_name in ("ElmanRNN", "JordanRNN"):
        model = cls(input_size, hidden_size, output_size).double()
        o, _ = model(x)
        return Example(name, model, sequence_loss(o, targets), o, steps, f"tinygraph.models.{cls_name}")
    # layer models return hidden states; a Linear head maps them to class scores
    layer = cls(input_size, hidden_size, num_layers=num_layers, **extra).double()
    head = tg.nn.Linear(hidden_size * (2 if extra.get("bidirectional") else 1), output_size).double()
    out = layer(x)
    h = out[0] if isinstance(out, tuple) else out
    o = head(h)
    return Example(name, (layer, head), sequence_loss(o, targets), o, steps,
                   f"tinygraph.models.{cls_name}")
