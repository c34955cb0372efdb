"""The benchmark workloads and the two NumPy-side implementations (tinygraph, hand-written NumPy).

A workload is one recurrent model at one size. One training step is the
forward pass over the whole sequence, the summed cross-entropy over every
(t, b) and the backward pass to every parameter:

* rnn_char: h_t = tanh(U x_t + W h_{t-1} + b) on one-hot characters, logits
  o_t = V h_t + c over the K characters;
* lstm / gru: the hidden state h_t itself is the logits over H classes.

Every implementation is a *runner*: ``step()`` runs one training step and
leaves the gradients behind, ``grads()`` returns them as NumPy arrays under
the reference's names (``U W b`` plus ``V c`` / ``b_hn``), so all runners
can be compared against each other and timed the same way.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

import tinygraph as tg
from tinygraph import backend
from tinygraph.models import GRU, LSTM, RNN

from .reference import STEPS

__all__ = ["Workload", "WORKLOADS", "Data", "make_data", "TinygraphRunner", "TracedRunner", "NumpyRunner",
           "param_names"]


@dataclass(frozen=True)
class Workload:
    """One model at one size (time-major x of shape (T, B, D))."""

    key: str
    title: str
    kind: str          # "rnn_char", "lstm" or "gru"
    T: int
    B: int
    D: int
    H: int
    large: bool = False

    @property
    def classes(self):
        """Number of classes of the cross-entropy: the vocabulary for rnn_char, else H."""
        return self.D if self.kind == "rnn_char" else self.H

    def describe(self):
        size = f"K={self.D}" if self.kind == "rnn_char" else f"D={self.D}"
        return f"{self.key}: {self.title}, {size} H={self.H} T={self.T} B={self.B}"

    def shape(self):
        """The sizes as a dict (for the JSON output)."""
        return {"kind": self.kind, "T": self.T, "B": self.B, "D": self.D, "H": self.H, "classes": self.classes}


WORKLOADS = {
    w.key: w for w in (
        Workload("A", "char RNN", "rnn_char", T=50, B=32, D=65, H=128),
        Workload("B", "LSTM", "lstm", T=50, B=32, D=64, H=256),
        Workload("C", "GRU", "gru", T=50, B=32, D=64, H=256),
        Workload("D", "LSTM latency", "lstm", T=20, B=1, D=16, H=32),
        Workload("E", "LSTM large", "lstm", T=35, B=64, D=512, H=1024, large=True),
    )
}


def param_names(kind):
    """The reference's parameter names for a model kind, in a fixed order."""
    return {"rnn_char": ("U", "W", "b", "V", "c"), "lstm": ("U", "W", "b"), "gru": ("U", "W", "b", "b_hn")}[kind]


@dataclass
class Data:
    """One batch: ``x`` (T, B, D) float (one-hot for rnn_char), ``targets`` (T, B) int64."""

    x: np.ndarray
    targets: np.ndarray


def make_data(workload, dtype="float32", seed=0):
    """A seeded random batch for ``workload``; the one-hot encoding happens here, outside any timed step."""
    rng = np.random.default_rng(seed)
    w = workload
    if w.kind == "rnn_char":
        ids = rng.integers(0, w.D, size=(w.T, w.B))
        x = np.eye(w.D, dtype=dtype)[ids]
    else:
        x = rng.standard_normal((w.T, w.B, w.D)).astype(dtype)
    targets = rng.integers(0, w.classes, size=(w.T, w.B)).astype(np.int64)
    return Data(x, targets)


_LAYERS = {"rnn_char": RNN, "lstm": LSTM, "gru": GRU}


class TinygraphRunner:
    """tinygraph's layer (plus a ``tg.nn.Linear`` readout for rnn_char) trained for one step.

    ``fused=True`` builds the layer on its fused sequence kernels
    (``models.sequence``); ``fused=False`` records every gate op.
    """

    def __init__(self, workload, data, fused=True, dtype="float32", seed=0, device="cpu"):
        self.workload, self.device = workload, device
        w = workload
        tg.manual_seed(seed)
        self.fused = bool(fused)
        self.layer = _LAYERS[w.kind](w.D, w.H, fused=self.fused, dtype=dtype)
        self.readout = tg.nn.Linear(w.H, w.D, dtype=dtype) if w.kind == "rnn_char" else None
        if device != "cpu":
            self.layer.to(device)
            if self.readout is not None:
                self.readout.to(device)
        # inputs become device arrays once; targets are flattened to match the (T*B, C) logits
        self.x = tg.Tensor(backend.to_device(data.x.astype(dtype, copy=False), device))
        self.targets = backend.to_device(data.targets.reshape(-1), device)
        self.last_loss = None

    @property
    def label(self):
        """Short description of what was timed."""
        return "fused" if self.fused else "decomposed"

    def modules(self):
        return [m for m in (self.layer, self.readout) if m is not None]

    def params(self):
        """Reference name -> Parameter ("layer0.U" -> "U"; the readout's weight/bias -> V/c)."""
        out = {name.rsplit(".", 1)[-1]: p for name, p in self.layer.named_parameters()}
        if self.readout is not None:
            out["V"], out["c"] = self.readout.weight, self.readout.bias
        expected = set(param_names(self.workload.kind))
        if set(out) != expected:
            raise RuntimeError(f"tinygraph {type(self.layer).__name__} has parameters {sorted(out)}, "
                               f"expected {sorted(expected)}")
        return out

    def weights(self):
        """Reference name -> NumPy copy of the value."""
        return {name: p.numpy().copy() for name, p in self.params().items()}

    def set_weights(self, weights):
        """Load reference-named NumPy arrays (so several runners share one set of weights)."""
        for name, p in self.params().items():
            p.data = backend.to_device(np.asarray(weights[name], dtype=p.dtype).copy(), p.device)

    def torch_state(self):
        """(layer state dict, readout state dict or None) with PyTorch's key names, NumPy values."""
        readout = None
        if self.readout is not None:
            readout = {"weight": self.readout.weight.numpy(), "bias": self.readout.bias.numpy()}
        return self.layer.torch_state_dict(), readout

    def step(self):
        """One training step: forward, summed cross-entropy, backward."""
        for module in self.modules():
            module.zero_grad()
        w = self.workload
        out, _ = self.layer(self.x)
        logits = out.reshape(w.T * w.B, w.H)
        if self.readout is not None:
            logits = self.readout(logits)
        loss = tg.cross_entropy(logits, self.targets, reduction="sum")
        loss.backward()
        self.last_loss = loss

    def loss(self):
        return float(self.last_loss.item())

    def grads(self):
        return {name: p.grad.numpy() for name, p in self.params().items()}


class TracedRunner(TinygraphRunner):
    """The same model and loss as a ``tinygraph.traced_step``: traced once, replayed each step.

    A decomposed layer (``fused=False``) is swapped for its fused kernel at
    trace time (``tinygraph.fusion``) unless ``fuse=False``.
    Replay runs the recorded primitives' forwards and VJP rules on raw arrays,
    with no Tensor or graph node per op: what is left of the engine's per-step
    cost. Inputs and targets are read at every replay, the parameters live,
    and the gradients land in ``.grad`` as after ``backward()``.
    """

    def __init__(self, workload, data, fused=True, dtype="float32", seed=0, device="cpu", fuse=True):
        super().__init__(workload, data, fused=fused, dtype=dtype, seed=seed, device=device)
        # fuse=False: no trace-time fusion, so a decomposed layer replays every gate op
        self.traced = tg.traced_step(self._loss_of, list(self.params().values()), fuse=fuse)
        self.traced(self.x, self.targets)  # the trace itself is not timed

    def _loss_of(self, x, targets):
        w = self.workload
        out, _ = self.layer(x)
        logits = out.reshape(w.T * w.B, w.H)
        if self.readout is not None:
            logits = self.readout(logits)
        return tg.cross_entropy(logits, targets, reduction="sum")

    def step(self):
        for module in self.modules():
            module.zero_grad()
        self.last_loss = self.traced(self.x, self.targets)


class NumpyRunner:
    """The hand-written NumPy BPTT of ``benchmarks.reference`` on the same weights and data."""

    def __init__(self, workload, data, weights):
        self.step_fn = STEPS[workload.kind]
        self.params = {name: np.array(weights[name]) for name in param_names(workload.kind)}
        self.x, self.targets = data.x, data.targets
        self._loss, self._grads = None, None

    def step(self):
        self._loss, self._grads = self.step_fn(self.params, self.x, self.targets)

    def loss(self):
        return float(self._loss)

    def grads(self):
        return self._grads
