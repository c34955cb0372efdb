"""Optimizers and gradient clipping, with PyTorch's update equations.

Every optimizer updates ``p.data`` in place from ``p.grad`` using the array's
own module (NumPy or CuPy), so the same code runs on either device.
``state_dict()`` holds only NumPy arrays and Python scalars (flat keys such
as ``"hp.lr"`` and ``"state.0.exp_avg"``), so a training checkpoint can be
written with ``tg.save`` as a plain ``.npz``.

Weight decay is L2 regularisation added to the gradient (``g + wd * p``),
one of the textbook's remedies for exploding gradients; clipping is another.
"""
from __future__ import annotations

import functools
import math

import numpy as np

from . import backend

__all__ = ["Optimizer", "SGD", "Adam", "AdamW", "RMSprop", "Adagrad",
           "clip_grad_norm", "clip_grad_value", "grad_norm",
           "StepLR", "MultiStepLR", "ExponentialLR", "CosineAnnealingLR", "LambdaLR", "ReduceLROnPlateau"]


def _param_list(params):
    params = list(params)
    if not params:
        raise ValueError("optimizer got an empty parameter list")
    seen = {}
    for i, p in enumerate(params):
        if not hasattr(p, "data") or not hasattr(p, "grad"):
            raise TypeError(f"optimizer: item {i} is a {type(p).__name__}, not a Parameter/Tensor; "
                            "pass model.parameters()")
        if seen.setdefault(id(p), i) != i:   # it would be updated twice per step
            raise ValueError(f"optimizer: parameter {i} ({getattr(p, 'name', None) or 'unnamed'}) is the same "
                             f"object as parameter {seen[id(p)]}; pass each parameter once")
    return params


def _scalar(value):
    """A Python scalar from a saved 0-d array or a scalar."""
    if isinstance(value, np.ndarray) and value.ndim == 0:
        return value.item()
    if isinstance(value, np.generic):
        return value.item()
    return value


class Optimizer:
    """Base class: holds parameters, hyperparameters and per-parameter buffers.

    Subclasses list their hyperparameter names in ``hyperparameters`` and
    implement ``_update(p, g, state)``, where ``g`` is the gradient array
    (weight decay already added where the algorithm adds it) and ``state`` a
    dict of that parameter's buffers.
    """

    hyperparameters: tuple = ("lr",)
    adds_weight_decay_to_grad = True

    def __setattr__(self, name, value):
        if name in type(self).hyperparameters:
            # np.float64(1e-3) is a strong float64 in NumPy arithmetic: a float32 parameter's
            # update and buffers would become float64. A Python float stays weak, as in ops.
            value = _scalar(value) if not isinstance(value, tuple) else tuple(_scalar(v) for v in value)
        object.__setattr__(self, name, value)

    def __init__(self, params, **hyper):
        self.params = _param_list(params)
        if hyper.get("weight_decay", 0.0) < 0:
            raise ValueError(f"{type(self).__name__}: weight_decay must be >= 0, got {hyper['weight_decay']}")
        for name, value in hyper.items():
            setattr(self, name, value)
        self.state = [dict() for _ in self.params]

    def zero_grad(self):
        """Forget the gradients of every parameter (set ``.grad`` to None)."""
        for p in self.params:
            p.grad = None

    def step(self):
        """Apply one update to every parameter that has a gradient."""
        for p, state in zip(self.params, self.state):
            if p.grad is None:
                continue
            g = p.grad.data
            if tuple(g.shape) != tuple(p.data.shape):
                raise ValueError(
                    f"{type(self).__name__}.step: gradient of {p.name or 'a parameter'} has shape "
                    f"{tuple(g.shape)}, parameter has {tuple(p.data.shape)}"
                )
            wd = getattr(self, "weight_decay", 0.0)
            if wd and self.adds_weight_decay_to_grad:
                # asarray: for a 0-d parameter NumPy returns a scalar, and a buffer made from
                # it would not be updated in place
                g = _xp(p.data).asarray(g + wd * p.data)
            self._update(p, g, state)

    def _update(self, p, g, state):
        raise NotImplementedError

    # -- checkpoints ------------------------------------------------------
    def state_dict(self):
        """Flat dict of NumPy arrays and scalars: hyperparameters and buffers."""
        out = {"type": type(self).__name__, "num_params": len(self.params)}
        for name in self.hyperparameters:
            value = getattr(self, name)
            out[f"hp.{name}"] = np.asarray(value) if isinstance(value, tuple) else value
        for i, state in enumerate(self.state):
            for key, value in state.items():
                out[f"state.{i}.{key}"] = backend.as_host(value).copy() if hasattr(value, "shape") else value
        return out

    def load_state_dict(self, state_dict):
        """Restore hyperparameters and buffers; validates everything before changing anything."""
        kind = str(_scalar(state_dict.get("type", type(self).__name__)))
        if kind != type(self).__name__:
            raise ValueError(f"load_state_dict: state is for {kind}, this optimizer is {type(self).__name__}")
        n = int(_scalar(state_dict.get("num_params", len(self.params))))
        if n != len(self.params):
            raise ValueError(f"load_state_dict: state holds {n} parameters, this optimizer has {len(self.params)}")
        new_state = [dict() for _ in self.params]
        hyper = {}
        for key, value in state_dict.items():
            if key.startswith("hp."):
                name = key[3:]
                if name not in self.hyperparameters:
                    raise KeyError(f"load_state_dict: unknown hyperparameter {name!r} for {kind}")
                value = _scalar(value)
                hyper[name] = tuple(value.tolist()) if isinstance(value, np.ndarray) else value
            elif key.startswith("state."):
                _, index, buffer = key.split(".", 2)
                i = int(index)
                if not 0 <= i < len(self.params):
                    raise KeyError(f"load_state_dict: {key!r} refers to parameter {i}, which does not exist")
                p = self.params[i]
                if buffer != "step":   # a buffer is updated in place: an array even for a 0-d parameter
                    value = np.asarray(value)
                    if tuple(value.shape) != tuple(p.shape):
                        raise ValueError(
                            f"load_state_dict: buffer {key!r} has shape {tuple(value.shape)}, "
                            f"parameter {i} ({p.name}) has shape {tuple(p.shape)}"
                        )
                    value = backend.to_device(value.astype(p.dtype, copy=True), p.device)
                else:
                    value = _scalar(value)
                new_state[i][buffer] = value
            elif key not in ("type", "num_params"):
                raise KeyError(f"load_state_dict: unexpected key {key!r}")
        for name, value in hyper.items():
            setattr(self, name, value)
        self.state = new_state
        return self

    def __repr__(self):
        hp = ", ".join(f"{n}={getattr(self, n)!r}" for n in self.hyperparameters)
        return f"{type(self).__name__}({len(self.params)} params, {hp})"


def _xp(a):
    return backend.array_module(a)


class SGD(Optimizer):
    """Stochastic gradient descent with optional (Nesterov) momentum.

    ``SGD(params, lr, momentum=0, *, nesterov=False, weight_decay=0, dampening=0)``.

    g <- grad + wd * p;  buf <- g (first step) else momentum * buf + (1 - dampening) * g;
    g <- g + momentum * buf (Nesterov) or buf;  p <- p - lr * g.
    """

    hyperparameters = ("lr", "momentum", "dampening", "nesterov", "weight_decay")

    def __init__(self, params, lr, momentum=0.0, *, nesterov=False, weight_decay=0.0, dampening=0.0):
        # keyword-only after momentum: SGD(ps, 0.1, 0.9, True) must not silently set dampening
        if lr < 0 or momentum < 0 or weight_decay < 0:
            raise ValueError(f"SGD: lr, momentum and weight_decay must be >= 0 (got {lr}, {momentum}, {weight_decay})")
        if nesterov and (momentum <= 0 or dampening != 0):
            raise ValueError("SGD: Nesterov momentum needs momentum > 0 and dampening = 0")
        super().__init__(params, lr=lr, momentum=momentum, dampening=dampening,
                         nesterov=bool(nesterov), weight_decay=weight_decay)

    def _update(self, p, g, state):
        if self.momentum:
            buf = state.get("momentum_buffer")
            if buf is None:
                buf = state["momentum_buffer"] = g.copy()
            else:
                buf *= self.momentum
                buf += (1 - self.dampening) * g
            g = g + self.momentum * buf if self.nesterov else buf
        p.data -= self.lr * g


class Adam(Optimizer):
    """Adam (Kingma & Ba) with bias correction, as PyTorch computes it.

    m <- b1 m + (1-b1) g;  v <- b2 v + (1-b2) g^2;
    p <- p - (lr / (1 - b1^t)) * m / (sqrt(v) / sqrt(1 - b2^t) + eps).
    """

    hyperparameters = ("lr", "betas", "eps", "weight_decay")

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0):
        if lr < 0 or eps < 0 or not all(0.0 <= b < 1.0 for b in betas):
            raise ValueError(f"{type(self).__name__}: invalid lr={lr}, betas={betas} or eps={eps}")
        super().__init__(params, lr=lr, betas=tuple(float(b) for b in betas), eps=eps,
                         weight_decay=weight_decay)

    def _update(self, p, g, state):
        xp = _xp(p.data)
        b1, b2 = self.betas
        if "step" not in state:
            state["step"] = 0
            state["exp_avg"] = xp.zeros_like(p.data)
            state["exp_avg_sq"] = xp.zeros_like(p.data)
        state["step"] += 1
        t = state["step"]
        m, v = state["exp_avg"], state["exp_avg_sq"]
        m *= b1
        m += (1 - b1) * g
        v *= b2
        v += (1 - b2) * (g * g)
        denom = xp.sqrt(v) / math.sqrt(1 - b2 ** t) + self.eps
        p.data -= (self.lr / (1 - b1 ** t)) * (m / denom)


class AdamW(Adam):
    """Adam with decoupled weight decay: p <- p (1 - lr wd) before the Adam step."""

    adds_weight_decay_to_grad = False

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-2):
        super().__init__(params, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay)

    def _update(self, p, g, state):
        if self.weight_decay:
            p.data *= 1 - self.lr * self.weight_decay
        super()._update(p, g, state)


class RMSprop(Optimizer):
    """RMSprop (Hinton), optionally centred and with momentum, as in PyTorch.

    s <- alpha s + (1-alpha) g^2;  avg = sqrt(s - gbar^2 if centred else s) + eps;
    buf <- momentum buf + g / avg and p <- p - lr buf (momentum > 0), else p <- p - lr g / avg.
    """

    hyperparameters = ("lr", "alpha", "eps", "weight_decay", "momentum", "centered")

    def __init__(self, params, lr=1e-2, alpha=0.99, eps=1e-8, weight_decay=0.0, momentum=0.0, centered=False):
        if lr < 0 or eps < 0 or momentum < 0 or not 0.0 <= alpha <= 1.0:
            raise ValueError(f"RMSprop: invalid lr={lr}, alpha={alpha}, eps={eps} or momentum={momentum}")
        super().__init__(params, lr=lr, alpha=alpha, eps=eps, weight_decay=weight_decay,
                         momentum=momentum, centered=bool(centered))

    def _update(self, p, g, state):
        xp = _xp(p.data)
        if "step" not in state:
            state["step"] = 0
            state["square_avg"] = xp.zeros_like(p.data)
            if self.momentum:
                state["momentum_buffer"] = xp.zeros_like(p.data)
            if self.centered:
                state["grad_avg"] = xp.zeros_like(p.data)
        state["step"] += 1
        s = state["square_avg"]
        s *= self.alpha
        s += (1 - self.alpha) * (g * g)
        if self.centered:
            gbar = state["grad_avg"]
            gbar *= self.alpha
            gbar += (1 - self.alpha) * g
            avg = xp.sqrt(s - gbar * gbar) + self.eps
        else:
            avg = xp.sqrt(s) + self.eps
        if self.momentum:
            buf = state["momentum_buffer"]
            buf *= self.momentum
            buf += g / avg
            p.data -= self.lr * buf
        else:
            p.data -= self.lr * (g / avg)


class Adagrad(Optimizer):
    """Adagrad (Duchi et al.): per-coordinate step sizes from the summed squared gradients.

    lr_t = lr / (1 + (t-1) lr_decay);  s <- s + g^2;  p <- p - lr_t g / (sqrt(s) + eps).
    """

    hyperparameters = ("lr", "lr_decay", "weight_decay", "initial_accumulator_value", "eps")

    def __init__(self, params, lr=1e-2, lr_decay=0.0, weight_decay=0.0, initial_accumulator_value=0.0, eps=1e-10):
        if lr < 0 or lr_decay < 0 or eps < 0 or initial_accumulator_value < 0:
            raise ValueError(f"Adagrad: invalid lr={lr}, lr_decay={lr_decay}, eps={eps} "
                             f"or initial_accumulator_value={initial_accumulator_value}")
        super().__init__(params, lr=lr, lr_decay=lr_decay, weight_decay=weight_decay,
                         initial_accumulator_value=initial_accumulator_value, eps=eps)

    def _update(self, p, g, state):
        xp = _xp(p.data)
        if "step" not in state:
            state["step"] = 0
            state["sum"] = xp.full(p.data.shape, self.initial_accumulator_value, dtype=p.data.dtype)
        state["step"] += 1
        lr_t = self.lr / (1 + (state["step"] - 1) * self.lr_decay)
        s = state["sum"]
        s += g * g
        p.data -= lr_t * (g / (xp.sqrt(s) + self.eps))


# ---------------------------------------------------------------------------
# gradient clipping
# ---------------------------------------------------------------------------


def _with_grads(params):
    return [p for p in params if getattr(p, "grad", None) is not None]


def grad_norm(params, norm_type=2.0) -> float:
    """Total norm of the ``.grad`` of ``params`` (those without one are skipped), summed in float64
    (see ``power_sum``).

    Reduces on the gradients' device and syncs once (one ``float``), not once
    per parameter.
    """
    grads = [p.grad.data for p in _with_grads(params) if p.grad.data.size]
    if not grads:
        return 0.0
    xp = _xp(grads[0])
    norm_type = float(norm_type)
    if math.isinf(norm_type):
        return float(functools.reduce(xp.maximum, [xp.abs(g).max() for g in grads]))
    return power_sum(grads, norm_type) ** (1.0 / norm_type)


def power_sum(arrays, p=2.0):
    """sum over ``arrays`` of sum |a|^p, in float64, as a float (one host sync for all of them).

    The powers are taken in each array's own dtype and summed in float64, so
    a float32 gradient needs no float64 copy. When they overflow (a float32
    element above ~1.8e19 squared: exactly the exploding gradient clipping is
    for) the sum is done again from float64 copies, so the norm stays finite.
    """
    arrays = list(arrays)
    with np.errstate(over="ignore", under="ignore"):   # both are handled below
        total = float(sum((_xp(a).square(a) if p == 2.0 else _xp(a).abs(a) ** p).sum(dtype=np.float64)
                          for a in arrays))
    # Below this total, elements small enough to vanish when raised in their own dtype may be all
    # there is (a vanishing gradient: what gradient_flow is for); above it they cannot matter.
    floor = max((float(np.finfo(a.dtype).tiny) for a in arrays if np.dtype(a.dtype).kind == "f"),
                default=0.0) * 1e18
    if not math.isfinite(total) or total < floor:
        total = float(sum((_xp(a).abs(a.astype(np.float64)) ** p).sum() for a in arrays))
    return total


def _rescale_grads(params, max_norm, total):
    """Scale all gradients by max_norm / (total + 1e-6) when that is below 1 (PyTorch's rule)."""
    coef = max_norm / (total + 1e-6)
    if coef < 1.0:
        for p in _with_grads(params):
            p.grad.data = p.grad.data * p.grad.data.dtype.type(coef)


def clip_grad_norm(params, max_norm, norm_type=2.0):
    """Rescale all gradients together so their total norm is at most ``max_norm``.

    Returns the total norm *before* clipping (a float), the number to log when
    watching for exploding gradients. Scales by max_norm / (norm + 1e-6) like
    PyTorch, and only when that factor is below 1.
    """
    if max_norm <= 0:
        raise ValueError(f"clip_grad_norm: max_norm must be > 0, got {max_norm}")
    params = list(params)
    total = grad_norm(params, norm_type)
    _rescale_grads(params, max_norm, total)
    return total


def clip_grad_value(params, clip_value):
    """Clamp every gradient element to [-clip_value, clip_value]."""
    if clip_value < 0:
        raise ValueError(f"clip_grad_value: clip_value must be >= 0, got {clip_value}")
    for p in _with_grads(params):
        g = p.grad.data
        c = g.dtype.type(clip_value)   # a NumPy float64 bound would make the gradient float64
        p.grad.data = _xp(g).clip(g, -c, c)


# learning-rate schedules live in their own module; optim.StepLR etc. as PyTorch users look for them
from . import lr_scheduler  # noqa: E402
from .lr_scheduler import (CosineAnnealingLR, ExponentialLR, LambdaLR, MultiStepLR,  # noqa: E402
                           ReduceLROnPlateau, StepLR)
