"""Modules and parameters: the same public API users write models with.

``Module.__call__`` pushes the module's attribute path as the recording
scope, so every node a model creates says which (sub)module made it.
"""
from __future__ import annotations

from collections import OrderedDict

import numpy as np

from . import backend
from .graph import scope
from .tensor import Tensor

__all__ = ["Parameter", "Module"]


class Parameter(Tensor):
    """A leaf Tensor that a Module owns and an optimizer updates."""

    __slots__ = ()

    def __init__(self, data, name=None, requires_grad=True):
        if isinstance(data, Tensor):
            data = data.data
        if not hasattr(data, "dtype"):
            from .creation import DEFAULT_DTYPE
            data = np.asarray(data, dtype=DEFAULT_DTYPE)
        super().__init__(data, requires_grad=requires_grad, name=name)

    def __repr__(self):
        return "Parameter(" + super().__repr__() + ")"


class Module:
    """Base class: assign Parameters and Modules as attributes; define forward()."""

    def __init__(self):
        object.__setattr__(self, "_parameters", OrderedDict())
        object.__setattr__(self, "_modules", OrderedDict())
        object.__setattr__(self, "_scope_name", None)
        object.__setattr__(self, "training", True)

    def __setattr__(self, key, value):
        if "_parameters" not in self.__dict__:
            raise RuntimeError(f"{type(self).__name__}: call super().__init__() before assigning attributes")
        params, modules = self.__dict__["_parameters"], self.__dict__["_modules"]
        params.pop(key, None)
        modules.pop(key, None)
        if isinstance(value, Parameter):
            params[key] = value
            if value.name is None:
                value.name = key
        elif isinstance(value, Module):
            modules[key] = value
            value.__dict__["_scope_name"] = key
        object.__setattr__(self, key, value)

    def __delattr__(self, key):
        self._parameters.pop(key, None)
        self._modules.pop(key, None)
        object.__delattr__(self, key)

    # -- calling ------------------------------------------------------------
    @property
    def scope_name(self) -> str:
        return self._scope_name or type(self).__name__

    def __call__(self, *args, **kwargs):
        with scope(self.scope_name):
            return self.forward(*args, **kwargs)

    def forward(self, *args, **kwargs):
        raise NotImplementedError(f"{type(self).__name__} must define forward()")

    # -- traversal ------------------------------------------------------------
    def named_modules(self, prefix=""):
        yield prefix, self
        for name, m in self._modules.items():
            yield from m.named_modules(f"{prefix}.{name}" if prefix else name)

    def modules(self):
        return [m for _, m in self.named_modules()]

    def children(self):
        return list(self._modules.values())

    def named_parameters(self, prefix=""):
        """(dotted name, Parameter) pairs, each parameter once."""
        seen = set()
        for mod_name, mod in self.named_modules(prefix):
            for name, p in mod._parameters.items():
                if id(p) in seen:
                    continue
                seen.add(id(p))
                yield (f"{mod_name}.{name}" if mod_name else name), p

    def parameters(self):
        return [p for _, p in self.named_parameters()]

    def num_parameters(self) -> int:
        return int(sum(p.size for p in self.parameters()))

    # -- state --------------------------------------------------------------
    def state_dict(self):
        """Parameter name -> NumPy copy of its value."""
        return OrderedDict((n, backend.as_host(p.data).copy()) for n, p in self.named_parameters())

    def load_state_dict(self, state, strict=True):
        """Copy values in; checks every name and shape before changing anything."""
        own = dict(self.named_parameters())
        missing = [n for n in own if n not in state]
        unexpected = [n for n in state if n not in own]
        if strict and (missing or unexpected):
            raise KeyError(f"load_state_dict: missing parameters {missing}, unexpected {unexpected}")
        for n, value in state.items():
            if n in own and tuple(np.shape(value)) != own[n].shape:
                raise ValueError(
                    f"load_state_dict: parameter '{n}' has shape {own[n].shape} but the state "
                    f"holds shape {tuple(np.shape(value))}"
                )
        for n, value in state.items():
            if n in own:
                p = own[n]
                arr = backend.as_host(value.data if isinstance(value, Tensor) else value)
                p.data = backend.to_device(np.asarray(arr, dtype=p.dtype).copy(), p.device)
        return self

    def zero_grad(self):
        for p in self.parameters():
            p.grad = None

    def train(self, mode=True):
        for m in self.modules():
            object.__setattr__(m, "training", mode)
        return self

    def eval(self):
        return self.train(False)

    def to(self, device):
        """Move every parameter to ``device`` in place; returns self."""
        for p in self.parameters():
            p.data = backend.to_device(p.data, device)
            if p.grad is not None:
                p.grad = Tensor(backend.to_device(p.grad.data, device))
        return self

    def double(self):
        for p in self.parameters():
            p.data = p.data.astype(np.float64)
        return self

    def float(self):
        for p in self.parameters():
            p.data = p.data.astype(np.float32)
        return self

    def extra_repr(self) -> str:
        return ""

    def __repr__(self):
        lines = [f"{type(self).__name__}({self.extra_repr()}"]
        for name, m in self._modules.items():
            sub = repr(m).replace("\n", "\n  ")
            lines.append(f"  ({name}): {sub}")
        return "\n".join(lines) + (")" if len(lines) == 1 else "\n)")
