"""Modules and parameters: the same public API users write models with.

``Module.__call__`` pushes the module's attribute path as the recording
scope, so every node a model creates says which (sub)module made it.
"""
from __future__ import annotations

from collections import OrderedDict

import numpy as np

from . import backend, ops
from . import init
from .graph import scope
from .tensor import Tensor

__all__ = ["Parameter", "Module", "Linear", "Embedding", "Dropout", "LayerNorm",
           "Sequential", "ModuleList", "init"]


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
        if key in params and value is not None and not isinstance(value, Parameter):
            # as PyTorch: a plain Tensor or array here would silently drop the parameter from
            # parameters() and state_dict(), and the optimizer would stop training it
            raise TypeError(f"{type(self).__name__}.{key} is a Parameter; assign a Parameter (or None), "
                            f"not a {type(value).__name__} (or change its .data)")
        if isinstance(value, Parameter):
            modules.pop(key, None)
            params[key] = value   # a replacement keeps its place in parameters() and state_dict()
            if value.name is None:
                value.name = key
        elif isinstance(value, Module):
            params.pop(key, None)
            modules[key] = value
            value.__dict__["_scope_name"] = key
        else:
            params.pop(key, None)
            modules.pop(key, None)
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
            hint = ""
            if "meta" in state and any(str(k).startswith("model/") for k in state):
                hint = ("; this is a training checkpoint (fit's): load it with "
                        "tinygraph.training.load_checkpoint(path, model, optimizer_or_None)")
            raise KeyError(f"load_state_dict: missing parameters {missing}, unexpected {unexpected}{hint}")
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

    def to(self, device=None, dtype=None):
        """Move every parameter to ``device`` and/or cast it to a float ``dtype``, in place; returns self.

        As in PyTorch, ``model.to(np.float64)`` or ``model.to("float64")`` casts.
        """
        if dtype is None and backend.as_dtype(device) is not None:
            device, dtype = None, device
        if dtype is not None:
            if np.dtype(dtype).kind != "f":
                raise TypeError(f"{type(self).__name__}.to: parameters need a float dtype, got {np.dtype(dtype)}")
            self._cast(np.dtype(dtype).type)
        if device is None:
            return self
        for p in self.parameters():
            p.data = backend.to_device(p.data, device)
            if p.grad is not None:
                p.grad = Tensor(backend.to_device(p.grad.data, device))
        return self

    def double(self):
        """Cast every parameter to float64 in place (for gradient checks)."""
        return self._cast(np.float64)

    def float(self):
        """Cast every parameter to float32 in place."""
        return self._cast(np.float32)

    def _cast(self, dtype):
        for p in self.parameters():
            p.data = p.data.astype(dtype)
            if p.grad is not None:   # as PyTorch: the gradient follows the parameter's dtype
                p.grad = Tensor(p.grad.data.astype(dtype))
            p._renew_leaf()   # the leaf node remembers the old dtype
        return self

    def extra_repr(self) -> str:
        return ""

    def __repr__(self):
        lines = [f"{type(self).__name__}({self.extra_repr()}"]
        for name, m in self._modules.items():
            sub = repr(m).replace("\n", "\n  ")
            lines.append(f"  ({name}): {sub}")
        return "\n".join(lines) + (")" if len(lines) == 1 else "\n)")


# ---------------------------------------------------------------------------
# layers
# ---------------------------------------------------------------------------


def _default_dtype():
    from .creation import get_default_dtype
    return get_default_dtype()


def empty_parameter(*shape, dtype=None):
    """A zero Parameter of ``shape`` (an initialiser fills it next)."""
    return Parameter(np.zeros(shape, dtype=dtype or _default_dtype()))


class Linear(Module):
    """y = x W^T + b with ``weight`` shaped (out_features, in_features), like PyTorch.

    Initialised U(-k, k) with k = 1/sqrt(in_features) (PyTorch's default).
    """

    def __init__(self, in_features, out_features, bias=True, dtype=None):
        super().__init__()
        self.in_features, self.out_features = int(in_features), int(out_features)
        if self.in_features < 1 or self.out_features < 1:
            raise ValueError(f"Linear: in_features and out_features must be >= 1, got {in_features} and "
                             f"{out_features}")
        bound = 1.0 / np.sqrt(self.in_features)
        self.weight = init.uniform_(empty_parameter(out_features, in_features, dtype=dtype), -bound, bound)
        self.bias = init.uniform_(empty_parameter(out_features, dtype=dtype), -bound, bound) if bias else None

    def forward(self, x):
        y = ops.matmul(x, ops.transpose(self.weight))
        return y + self.bias if self.bias is not None else y

    def extra_repr(self):
        return f"{self.in_features}, {self.out_features}, bias={self.bias is not None}"


def _index_array(ids):
    """Integer ids as an array (Tensor, array or nested list)."""
    arr = ids.data if isinstance(ids, Tensor) else ids
    if not hasattr(arr, "dtype"):
        arr = np.asarray(arr)
    if arr.dtype.kind not in "iu":
        raise TypeError(f"Embedding: ids must be integers, got dtype {arr.dtype}")
    return arr


class Embedding(Module):
    """A lookup table: ``weight[ids]`` with ``weight`` shaped (num_embeddings, embedding_dim).

    Initialised N(0, 1) like PyTorch. Repeated ids add their gradients.
    """

    def __init__(self, num_embeddings, embedding_dim, dtype=None):
        super().__init__()
        self.num_embeddings, self.embedding_dim = int(num_embeddings), int(embedding_dim)
        self.weight = init.normal_(empty_parameter(num_embeddings, embedding_dim, dtype=dtype))

    def forward(self, ids):
        arr = _index_array(ids)
        # one device sync for the check; min and max only for the error message
        if arr.size and bool(((arr < 0) | (arr >= self.num_embeddings)).any()):
            raise IndexError(
                f"Embedding: ids must lie in [0, {self.num_embeddings}), got min {int(arr.min())}, "
                f"max {int(arr.max())}"
            )
        if isinstance(ids, Tensor):
            # the ids stay a graph input, so a traced function reads new ids at every replay
            return ops.take(self.weight, ids, axis=0)
        return ops.take(self.weight, backend.to_device(arr, self.weight.device), axis=0)

    def extra_repr(self):
        return f"{self.num_embeddings}, {self.embedding_dim}"


class Dropout(Module):
    """Zero each element with probability ``p`` in training, scaling the rest by 1/(1-p).

    The mask is a constant drawn on the input's device: from ``tg.generator()``
    for NumPy arrays (reproducible with ``tg.manual_seed``), from ``cupy.random``
    on a GPU (no host draw and copy every call). In eval mode (or with p = 0)
    the input passes through unchanged and nothing is recorded.
    """

    def __init__(self, p=0.5):
        super().__init__()
        if not 0.0 <= p < 1.0:
            raise ValueError(f"Dropout: p must lie in [0, 1), got {p}")
        self.p = float(p)

    def forward(self, x):
        if not self.training or self.p == 0.0:
            return x
        if np.dtype(x.dtype).kind != "f":   # the 1/(1-p) scale would be cut to an integer
            raise TypeError(f"Dropout: expected a floating-point input, got {x.dtype}")
        from .creation import generator
        xp = backend.array_module(x.data)
        uniform = generator().random(x.shape) if xp is np else xp.random.random(x.shape, dtype=x.dtype)
        mask = ((uniform >= self.p) / (1.0 - self.p)).astype(x.dtype)
        return x * mask

    def extra_repr(self):
        return f"p={self.p}"


class LayerNorm(Module):
    """Normalise the last axis to zero mean and unit variance, then scale and shift.

    y = (x - mean) / sqrt(var + eps) * weight + bias, composed from primitives
    so it draws and differentiates like everything else (usable inside cells).
    """

    def __init__(self, normalized_shape, eps=1e-5, elementwise_affine=True, dtype=None):
        super().__init__()
        if isinstance(normalized_shape, (tuple, list)):   # PyTorch's form: the last axis only here
            if len(normalized_shape) != 1:
                raise ValueError(f"LayerNorm: normalizes the last axis only; normalized_shape must be one "
                                 f"size, got {tuple(normalized_shape)}")
            normalized_shape = normalized_shape[0]
        self.normalized_shape = int(normalized_shape)
        self.eps = float(eps)
        if elementwise_affine:
            self.weight = init.ones_(empty_parameter(self.normalized_shape, dtype=dtype))
            self.bias = init.zeros_(empty_parameter(self.normalized_shape, dtype=dtype))
        else:
            self.weight = self.bias = None

    def forward(self, x):
        if x.ndim == 0 or x.shape[-1] != self.normalized_shape:
            raise ValueError(f"LayerNorm: expected last axis {self.normalized_shape}, got shape {x.shape}")
        centred = x - ops.mean(x, axis=-1, keepdims=True)
        var = ops.mean(centred * centred, axis=-1, keepdims=True)
        y = centred / ops.sqrt(var + self.eps)
        if self.weight is not None:
            y = y * self.weight + self.bias
        return y

    def extra_repr(self):
        return f"{self.normalized_shape}, eps={self.eps}"


class ModuleList(Module):
    """Submodules held in order, registered as "0", "1", ..."""

    def __init__(self, modules=()):
        super().__init__()
        for m in modules:
            self.append(m)

    # The registered submodules are the one store: setattr(seq, "0", new) and seq[0] = new
    # replace what forward runs and what parameters() lists alike.
    def append(self, module):
        setattr(self, str(len(self)), self._checked(module))
        return self

    def _checked(self, module):
        if not isinstance(module, Module):
            raise TypeError(f"{type(self).__name__}: items must be Modules, got {type(module).__name__}")
        return module

    def __getitem__(self, i):
        return list(self._modules.values())[i]

    def __setitem__(self, i, module):
        setattr(self, list(self._modules)[i], self._checked(module))

    def __len__(self):
        return len(self._modules)

    def __iter__(self):
        return iter(self._modules.values())


class Sequential(ModuleList):
    """Apply submodules one after another."""

    def __init__(self, *modules):
        super().__init__(modules)

    def forward(self, x):
        for m in self._modules.values():
            x = m(x)
        return x
