"""Third-party baselines: PyTorch (fused layers and a per-step cell loop) and JAX.

Both are optional: ``torch_module()`` / ``jax_modules()`` return ``None`` when
the import fails, and the suite then leaves their rows out. Each runner
follows the protocol of ``benchmarks.workloads``: ``step()`` runs one
training step (forward over the sequence, summed cross-entropy, backward),
``grads()`` returns NumPy gradients under the reference's names.

Weights come from the tinygraph model (``torch_state_dict()``, PyTorch's key
names), so every implementation starts from the same numbers. PyTorch's two
biases per layer are copied as tinygraph exports them (``bias_hh`` zero
except the GRU's n-gate slice, which is ``b_hn``); the gradient of the
folded ``b`` is then ``bias_ih``'s gradient.
"""
from __future__ import annotations

import os

import numpy as np

from .workloads import param_names

__all__ = ["torch_module", "jax_modules", "TorchRunner", "JaxRunner"]

_TORCH, _JAX = [], []  # memoised import results (a failed import is tried once)


def torch_module():
    """``torch`` with as many intra-op threads as cores, or None when it does not import."""
    if not _TORCH:
        try:
            import torch
            torch.set_num_threads(os.cpu_count() or 1)
        except Exception:  # ImportError, or a broken install (missing shared libraries)
            torch = None
        _TORCH.append(torch)
    return _TORCH[0]


def jax_modules():
    """``(jax, jax.numpy)`` or None when JAX does not import.

    JAX is a CPU baseline here: unless the caller chose otherwise,
    ``JAX_PLATFORMS=cpu`` keeps a CUDA build of JAX from running the "CPU"
    rows on the GPU (and from reserving most of the GPU's memory, which the
    CuPy and torch CUDA rows need).
    """
    if not _JAX:
        os.environ.setdefault("JAX_PLATFORMS", "cpu")
        try:
            import jax
            import jax.numpy as jnp
            modules = (jax, jnp)
        except Exception:
            modules = None
        _JAX.append(modules)
    return _JAX[0]


def torch_cuda_available():
    torch = torch_module()
    return torch is not None and torch.cuda.is_available()


# -- PyTorch ------------------------------------------------------------------

_TORCH_LAYERS = {"rnn_char": ("RNN", "RNNCell"), "lstm": ("LSTM", "LSTMCell"), "gru": ("GRU", "GRUCell")}


class TorchRunner:
    """``torch.nn.RNN/LSTM/GRU`` (``loop=False``) or a Python loop over ``RNNCell/LSTMCell/GRUCell``.

    ``layer_state`` is the tinygraph layer's ``torch_state_dict()``;
    ``readout_state`` the char RNN's Linear (``weight``, ``bias``) or None.
    On a CUDA device ``step()`` synchronises before returning, so a wall
    clock around it measures the work, not the kernel launches.
    """

    def __init__(self, workload, data, layer_state, readout_state=None, loop=False, device="cpu"):
        torch = torch_module()
        self.torch, self.workload, self.loop = torch, workload, loop
        self.device = torch.device(device)
        if self.device.type == "cuda":
            # full float32 like tinygraph's cuBLAS SGEMM: cuDNN and cuBLAS would
            # otherwise run their GEMMs in TF32 (10-bit mantissa) by default
            torch.backends.cudnn.allow_tf32 = False
            torch.backends.cuda.matmul.allow_tf32 = False
        w = workload
        layer_name, cell_name = _TORCH_LAYERS[w.kind]
        if loop:
            self.net = getattr(torch.nn, cell_name)(w.D, w.H)
            # a cell's keys are the layer's without the "_l0" suffix
            state = {key.replace("_l0", ""): value for key, value in layer_state.items()}
        else:
            self.net = getattr(torch.nn, layer_name)(w.D, w.H)
            state = layer_state
        self.x = torch.from_numpy(data.x).to(self.device)
        # the modules take the data's dtype (float64 for the tests' tight comparisons)
        self.net.to(device=self.device, dtype=self.x.dtype)
        self.net.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in state.items()})
        self.readout = None
        if readout_state is not None:
            self.readout = torch.nn.Linear(w.H, w.D).to(device=self.device, dtype=self.x.dtype)
            self.readout.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in readout_state.items()})
        self.targets = torch.from_numpy(data.targets.reshape(-1)).to(self.device)
        self.last_loss = None

    def _modules(self):
        return [m for m in (self.net, self.readout) if m is not None]

    def _sequence(self):
        """Hidden states (T, B, H) for the whole sequence, from zero initial state."""
        if not self.loop:
            out, _ = self.net(self.x)
            return out
        torch, w = self.torch, self.workload
        h = torch.zeros(w.B, w.H, dtype=self.x.dtype, device=self.device)
        state = (h, torch.zeros_like(h)) if w.kind == "lstm" else h
        outputs = []
        for t in range(w.T):
            state = self.net(self.x[t], state)
            outputs.append(state[0] if w.kind == "lstm" else state)
        return torch.stack(outputs)

    def step(self):
        """One training step; synchronises a CUDA device before returning."""
        torch, w = self.torch, self.workload
        for module in self._modules():
            module.zero_grad(set_to_none=True)
        logits = self._sequence().reshape(w.T * w.B, w.H)
        if self.readout is not None:
            logits = self.readout(logits)
        loss = torch.nn.functional.cross_entropy(logits, self.targets, reduction="sum")
        loss.backward()
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        self.last_loss = loss

    def loss(self):
        return float(self.last_loss.item())

    def grads(self):
        """Gradients under the reference's names (``b`` is ``bias_ih``'s; ``b_hn`` the n-slice of ``bias_hh``)."""
        sfx = "" if self.loop else "_l0"
        g = {k: p.grad.detach().cpu().numpy() for k, p in self.net.named_parameters()}
        out = {"U": g[f"weight_ih{sfx}"], "W": g[f"weight_hh{sfx}"], "b": g[f"bias_ih{sfx}"]}
        if self.workload.kind == "gru":
            out["b_hn"] = g[f"bias_hh{sfx}"][2 * self.workload.H:]
        if self.readout is not None:
            out["V"] = self.readout.weight.grad.detach().cpu().numpy()
            out["c"] = self.readout.bias.grad.detach().cpu().numpy()
        return out


# -- JAX ----------------------------------------------------------------------

def _jax_losses(jax, jnp):
    """Loss functions ``loss(params, x, targets)`` per model kind, each a ``lax.scan`` over time."""

    def cross_entropy(logits, targets):
        logp = jax.nn.log_softmax(logits, axis=-1)
        return -jnp.take_along_axis(logp, targets[:, None], axis=-1).sum()

    def rnn_char(p, x, targets):
        def cell(h, inputs):
            x_t, y_t = inputs
            h = jnp.tanh(x_t @ p["U"].T + h @ p["W"].T + p["b"])
            return h, cross_entropy(h @ p["V"].T + p["c"], y_t)
        h0 = jnp.zeros((x.shape[1], p["W"].shape[0]), x.dtype)
        return jax.lax.scan(cell, h0, (x, targets))[1].sum()

    def lstm(p, x, targets):
        H = p["W"].shape[1]

        def cell(state, inputs):
            (h, c), (x_t, y_t) = state, inputs
            z = x_t @ p["U"].T + h @ p["W"].T + p["b"]
            i, f = jax.nn.sigmoid(z[:, :H]), jax.nn.sigmoid(z[:, H:2 * H])
            g, o = jnp.tanh(z[:, 2 * H:3 * H]), jax.nn.sigmoid(z[:, 3 * H:])
            c = f * c + i * g
            h = o * jnp.tanh(c)
            return (h, c), cross_entropy(h, y_t)
        h0 = jnp.zeros((x.shape[1], H), x.dtype)
        return jax.lax.scan(cell, (h0, h0), (x, targets))[1].sum()

    def gru(p, x, targets):
        H = p["W"].shape[1]

        def cell(h, inputs):
            x_t, y_t = inputs
            gx = x_t @ p["U"].T + p["b"]
            gh = h @ p["W"].T
            r = jax.nn.sigmoid(gx[:, :H] + gh[:, :H])
            z = jax.nn.sigmoid(gx[:, H:2 * H] + gh[:, H:2 * H])
            n = jnp.tanh(gx[:, 2 * H:] + r * (gh[:, 2 * H:] + p["b_hn"]))
            h = (1 - z) * n + z * h
            return h, cross_entropy(h, y_t)
        h0 = jnp.zeros((x.shape[1], H), x.dtype)
        return jax.lax.scan(cell, h0, (x, targets))[1].sum()

    return {"rnn_char": rnn_char, "lstm": lstm, "gru": gru}


class JaxRunner:
    """``jax.jit(jax.value_and_grad(loss))`` with the recurrence in ``lax.scan``, on the CPU.

    The first ``step()`` compiles (the suite's warm-up call absorbs it);
    every step blocks until the gradients are ready, since JAX dispatches
    asynchronously.
    """

    def __init__(self, workload, data, weights):
        jax, jnp = jax_modules()
        self.jax, self.workload = jax, workload
        loss = _jax_losses(jax, jnp)[workload.kind]
        self.fn = jax.jit(jax.value_and_grad(loss))
        # arrays committed to the CPU pin the compiled step there even if JAX_PLATFORMS allows a GPU
        cpu = jax.devices("cpu")[0]
        self.params = {name: jax.device_put(np.asarray(weights[name]), cpu) for name in param_names(workload.kind)}
        self.x = jax.device_put(data.x, cpu)
        self.targets = jax.device_put(data.targets.astype(np.int32), cpu)  # JAX's default integer width
        self._loss, self._grads = None, None

    def step(self):
        self._loss, self._grads = self.fn(self.params, self.x, self.targets)
        self.jax.block_until_ready(self._grads)

    def loss(self):
        return float(self._loss)

    def grads(self):
        return {name: np.asarray(g) for name, g in self._grads.items()}
