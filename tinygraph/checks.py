"""Numerical gradient checks (central finite differences)."""
from __future__ import annotations

import numpy as np

from . import backend
from .autodiff import grad
from .graph import no_grad
from .tensor import Tensor


class GradcheckError(AssertionError):
    """Analytic and numerical gradients disagree."""


def numerical_grad(fn, inputs, index, eps=1e-6, weight=None):
    """Central-difference gradient of sum(weight * fn(*inputs)) (``weight`` None: 1) with
    respect to inputs[index]."""
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
                    y = backend.as_host(fn(*inputs).data).astype(np.float64)
                values.append(float((y if weight is None else y * weight).sum()))
            flat[k] = saved
            out.reshape(-1)[k] = (values[0] - values[1]) / (2 * eps)
    finally:
        x.data = original
    return out


def gradcheck(fn, inputs, eps=1e-6, atol=1e-5, rtol=1e-3, seed=0):
    """Compare the gradient of sum(r * fn(*inputs)), for a fixed random weighting ``r`` of
    the outputs, with central differences for every input that requires grad.

    The random weighting (PyTorch checks the whole Jacobian to the same end)
    catches a rule that is only right for an all-ones upstream gradient: one
    that ignores ``g``, or forgets to reverse or permute it. Returns True, or
    raises GradcheckError naming the input, the worst element and both
    values (a NaN on either side fails). Inputs must be float64.
    """
    inputs = list(inputs)
    wrt = [i for i, x in enumerate(inputs) if isinstance(x, Tensor) and x.requires_grad]
    if not wrt:
        raise ValueError("gradcheck: no input requires grad")
    narrow = [i for i in wrt if inputs[i].dtype != np.float64]
    if narrow:
        raise ValueError(f"gradcheck: input {narrow[0]} is {inputs[narrow[0]].dtype}; finite differences need "
                         "float64 inputs (tg.tensor(x, dtype='float64') or module.double())")
    y = fn(*inputs)
    weight = np.random.default_rng(seed).uniform(0.5, 1.5, size=y.shape)
    total = (y * Tensor(backend.to_device(weight.astype(y.dtype), y.device))).sum()
    analytic = grad(total, [inputs[i] for i in wrt], allow_unused=True)
    for i, g in zip(wrt, analytic):
        x = inputs[i]
        a = np.zeros(x.shape) if g is None else backend.as_host(g.data).astype(np.float64)
        n = numerical_grad(fn, inputs, i, eps, weight)
        err = np.asarray(np.abs(a - n) - (atol + rtol * np.abs(n)))   # 0-d inputs give a NumPy scalar
        err[~(np.isfinite(a) & np.isfinite(n))] = np.inf   # a NaN compares False: never let one pass
        if err.size and err.max() > 0:
            k = np.unravel_index(int(np.argmax(err)), err.shape)
            name = f"{i} ({x.name})" if x.name else str(i)
            raise GradcheckError(
                f"gradcheck failed for input {name} of shape {x.shape}: at element {tuple(int(v) for v in k)} "
                f"analytic={a[k]:.8g} numerical={n[k]:.8g} (|diff|={abs(a[k] - n[k]):.3g}, "
                f"atol={atol}, rtol={rtol})"
            )
    return True
