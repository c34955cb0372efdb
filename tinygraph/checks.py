"""Numerical gradient checks (central finite differences)."""
from __future__ import annotations

import numpy as np

from . import backend
from .autodiff import grad
from .graph import no_grad
from .tensor import Tensor


class GradcheckError(AssertionError):
    """Analytic and numerical gradients disagree."""


def numerical_grad(fn, inputs, index, eps=1e-6):
    """Central-difference gradient of sum(fn(*inputs)) with respect to inputs[index]."""
    x = inputs[index]
    host = backend.as_host(x.data).astype(np.float64)
    out = np.zeros_like(host)
    flat = host.reshape(-1)
    original = x.data
    xp = backend.array_module(original)
    try:
        for k in range(flat.size):
            saved = flat[k]
            values = []
            for delta in (eps, -eps):
                flat[k] = saved + delta
                x.data = xp.asarray(host.astype(original.dtype))
                with no_grad():
                    y = fn(*inputs)
                values.append(float(backend.as_host(y.data).astype(np.float64).sum()))
            flat[k] = saved
            out.reshape(-1)[k] = (values[0] - values[1]) / (2 * eps)
    finally:
        x.data = original
    return out


def gradcheck(fn, inputs, eps=1e-6, atol=1e-5, rtol=1e-3):
    """Compare grad(sum(fn(*inputs))) with central differences for every input
    that requires grad. Returns True, or raises GradcheckError naming the input,
    the worst element and both values. Use float64 inputs."""
    inputs = list(inputs)
    wrt = [i for i, x in enumerate(inputs) if isinstance(x, Tensor) and x.requires_grad]
    if not wrt:
        raise ValueError("gradcheck: no input requires grad")
    y = fn(*inputs)
    total = y.sum() if y.size != 1 else y
    analytic = grad(total, [inputs[i] for i in wrt], allow_unused=True)
    for i, g in zip(wrt, analytic):
        x = inputs[i]
        a = np.zeros(x.shape) if g is None else backend.as_host(g.data).astype(np.float64)
        n = numerical_grad(fn, inputs, i, eps)
        err = np.abs(a - n) - (atol + rtol * np.abs(n))
        if err.size and err.max() > 0:
            k = np.unravel_index(int(np.argmax(err)), err.shape)
            name = f"{i} ({x.name})" if x.name else str(i)
            raise GradcheckError(
                f"gradcheck failed for input {name} of shape {x.shape}: at element {tuple(int(v) for v in k)} "
                f"analytic={a[k]:.8g} numerical={n[k]:.8g} (|diff|={abs(a[k] - n[k]):.3g}, "
                f"atol={atol}, rtol={rtol})"
            )
    return True
