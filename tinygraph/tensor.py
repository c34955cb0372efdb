"""Tensor: an array (NumPy or CuPy) plus the graph node that produced it."""
from __future__ import annotations

import itertools
import weakref

import numpy as np

from . import backend
from .graph import STATE, Node, enable_grad, note_host_read

__all__ = ["Tensor"]


class RemovableHandle:
    """What ``Tensor.register_hook`` returns: ``remove()`` takes the hook off again."""

    _ids = itertools.count()

    def __init__(self, hooks):
        self.id = next(RemovableHandle._ids)
        self._hooks = hooks

    def remove(self):
        self._hooks.pop(self.id, None)


class Tensor:
    """A NumPy/CuPy array that records the ops applied to it.

    ``data`` is the array; ``grad`` is filled by ``backward()`` (a Tensor);
    ``_node`` links into the recorded graph (``None`` for constants that were
    never used by a recorded op).
    """

    __slots__ = ("data", "grad", "requires_grad", "_node", "_name", "__weakref__")
    __array_priority__ = 1000  # so ndarray + Tensor calls Tensor.__radd__

    def __init__(self, data, requires_grad=False, name=None, _node=None):
        self.data = data
        self.grad = None
        self._name = name
        self._node = _node
        self.requires_grad = False
        if requires_grad:
            self.requires_grad_(True)

    @classmethod
    def _from_op(cls, data, node):
        t = cls.__new__(cls)
        t.data = data
        t.grad = None
        t._name = None
        t._node = node
        t.requires_grad = node is not None
        return t

    # -- basic properties -------------------------------------------------
    @property
    def shape(self):
        return tuple(self.data.shape)

    @property
    def ndim(self):
        return self.data.ndim

    @property
    def size(self):
        return int(self.data.size)

    @property
    def dtype(self):
        return self.data.dtype

    @property
    def device(self) -> str:
        return backend.device_of(self.data)

    @property
    def name(self):
        return self._name

    @name.setter
    def name(self, value):
        self._name = value
        if self._node is not None:
            self._node.name = value

    @property
    def node(self):
        """The graph node of this tensor (creating a leaf node if needed)."""
        return self._leaf_node()

    @property
    def is_leaf(self):
        return self._node is None or self._node.prim is None

    def _leaf_node(self):
        node = self._node
        if node is None:
            op = "leaf" if self.requires_grad else "const"
            node = Node(op, (), {}, self.shape, self.dtype, name=self._name,
                        requires_grad=self.requires_grad, is_leaf=True)
            node.out_ref = weakref.ref(self)
            self._node = node
        return node

    def requires_grad_(self, flag=True):
        """Mark a leaf as needing a gradient (floating dtypes only)."""
        if flag:
            if self.dtype.kind not in "fc":
                raise TypeError(
                    f"only floating-point tensors can require gradients, got dtype {self.dtype}; "
                    "convert first, e.g. tg.tensor(data, dtype='float32', requires_grad=True)"
                )
            if self._node is not None and self._node.prim is not None:
                raise RuntimeError("requires_grad_ can only be set on leaf tensors; use .detach() first")
            if self.requires_grad and self._node is not None:
                return self  # already a gradient leaf: keep its node, which recorded graphs point at
            self.requires_grad = True
            self._renew_leaf()
        else:
            self.requires_grad = False
            if self._node is not None and self._node.prim is None:
                self._renew_leaf()
        return self

    def _renew_leaf(self):
        """Replace this leaf's node by one for its current data and flag, keeping its gradient hooks.

        Made now, outside any scope or time step (made lazily inside a forward
        it would take the cell's); a frozen tensor without hooks gets none
        until it is used. A frozen tensor's hooks wait on a constant leaf,
        which gets no gradient, until it is unfrozen.
        """
        old, self._node = self._node, None
        hooks = old.hooks if old is not None else None
        if self.requires_grad or hooks:
            self._leaf_node().hooks = hooks

    def register_hook(self, hook):
        """Call ``hook(grad)`` with this tensor's gradient during every backward or ``grad()``.

        As in PyTorch: the hook gets the gradient as a Tensor once it is
        complete (summed over every use), and may return a new gradient of the
        same shape to use instead (or None to keep it). Do not change its
        argument in place. On a leaf (a parameter) it runs before the gradient
        is added to ``.grad``. Returns a handle whose ``remove()`` takes the
        hook off. ``traced_step`` runs the hooks of its parameters; a hook on
        an intermediate tensor is refused by ``trace`` (a replay has no
        tensors to call it with).
        """
        if not self.requires_grad:
            raise RuntimeError("register_hook: this tensor does not require grad, so it gets no gradient")
        if not callable(hook):
            raise TypeError(f"register_hook: expected a callable, got {type(hook).__name__}")
        node = self._node if self._node is not None else self._leaf_node()
        if node.hooks is None:
            node.hooks = {}
        handle = RemovableHandle(node.hooks)
        node.hooks[handle.id] = hook
        return handle

    def retain_grad(self):
        """Keep ``.grad`` on this non-leaf tensor after backward."""
        if self._node is not None:
            self._node.retains_grad = True
        return self

    # -- conversions ------------------------------------------------------
    def numpy(self):
        """A host (NumPy) copy of the data."""
        if STATE.host_reads is not None:
            note_host_read(self)
        return backend.as_host(self.data)

    def item(self):
        if self.size != 1:
            raise ValueError(f"item() needs a tensor with one element, got shape {self.shape}")
        if STATE.host_reads is not None:
            note_host_read(self)
        return self.data.reshape(()).item()

    def tolist(self):
        return self.numpy().tolist()

    def detach(self):
        """Same values, no graph: gradients do not flow past the result.

        Inside a running ``trace`` it is a recorded op with no gradient, so a
        replay computes the value from its own inputs (a model that cuts its
        incoming state, say) instead of reusing the traced one.
        """
        from . import ops
        out = self._recorded_in_trace(ops.DETACH)
        if out is None:
            return Tensor(self.data, name=self._name)
        out.name = self._name
        return out

    def argmax(self, axis=None):
        """Indices of the maxima along ``axis`` (an integer Tensor; recorded inside a trace, like detach)."""
        from . import ops
        out = self._recorded_in_trace(ops.ARGMAX, axis=axis)
        return Tensor(self.data.argmax(axis=axis)) if out is None else out

    def _recorded_in_trace(self, prim, **attrs):
        """``prim`` on this tensor as a recorded op while a ``trace`` runs (else None).

        Recorded under ``no_grad`` too: such an op passes no gradient, and no
        value was read on the host, so the replay simply computes it again.
        """
        if STATE.host_reads is None or self._node is None:
            return None
        from . import ops
        with enable_grad():
            return ops.apply(prim, self, **attrs)

    def to(self, device=None, dtype=None):
        """Copy to ``device`` ('cpu', 'cuda', 'cuda:N') and/or cast to ``dtype`` (a dtype given as the
        first argument casts, as in PyTorch); differentiable."""
        from . import ops
        if dtype is None and backend.as_dtype(device) is not None:
            device, dtype = None, device
        out = self if device is None else ops.to_device(self, device)
        return out if dtype is None else out.astype(dtype)

    def cpu(self):
        return self.to("cpu")

    def cuda(self, index=0):
        return self.to(f"cuda:{index}")

    def astype(self, dtype):
        from . import ops
        return ops.astype(self, dtype)

    def float(self):
        return self.astype(np.float32)

    def double(self):
        return self.astype(np.float64)

    def backward(self, grad=None, retain_graph=False, create_graph=False):
        """Accumulate d(self)/d(leaf) into every leaf's ``.grad``."""
        from .autodiff import backward
        backward(self, grad, retain_graph=retain_graph, create_graph=create_graph)

    def __repr__(self):
        extra = []
        if self._name:
            extra.append(f"name={self._name!r}")
        if self.requires_grad:
            op = self._node.op if self._node is not None else "leaf"
            extra.append("requires_grad=True" if op in ("leaf",) else f"grad_fn={op}")
        if self.device != "cpu":
            extra.append(f"device={self.device!r}")
        # (not self.numpy(): printing inside a traced function does not make the values part of the trace)
        body = np.array2string(backend.as_host(self.data), precision=4, separator=", ", threshold=50)
        tail = (", " + ", ".join(extra)) if extra else ""
        return f"tensor({body}, dtype={self.dtype}{tail})"

    def __len__(self):
        if self.ndim == 0:
            raise TypeError("len() of a 0-d tensor; use .item() to get its value")
        return self.shape[0]

    def __bool__(self):
        if self.size != 1:
            raise ValueError(
                f"the truth value of a Tensor of shape {self.shape} is ambiguous; "
                "use (x > 0).numpy().any() or .all(), or compare tensors with `is`"
            )
        return bool(self.item())

    def __float__(self):
        return float(self.item())

    def __int__(self):
        return int(self.item())

    def __hash__(self):
        return id(self)

    def __array__(self, dtype=None, copy=None):
        arr = self.numpy()
        return arr.astype(dtype) if dtype is not None else arr

    def __iter__(self):
        for i in range(len(self)):
            yield self[i]


def _install_methods():
    from . import ops

    T = Tensor
    # forward operators bind the ops functions directly (a plain function is a
    # method): one Python call less on every op; reflected ones swap arguments
    T.__add__ = ops.add
    T.__radd__ = lambda a, b: ops.add(b, a)
    T.__sub__ = ops.sub
    T.__rsub__ = lambda a, b: ops.sub(b, a)
    T.__mul__ = ops.mul
    T.__rmul__ = lambda a, b: ops.mul(b, a)
    T.__truediv__ = ops.div
    T.__rtruediv__ = lambda a, b: ops.div(b, a)
    T.__pow__ = ops.pow
    T.__rpow__ = lambda a, b: ops.pow(b, a)
    T.__matmul__ = ops.matmul
    T.__rmatmul__ = lambda a, b: ops.matmul(b, a)
    T.__neg__ = ops.neg
    T.__pos__ = lambda a: a
    T.__abs__ = ops.abs
    T.__getitem__ = ops.getitem
    # comparisons give non-differentiable boolean tensors
    T.__lt__ = lambda a, b: ops.compare(a, b, "lt")
    T.__le__ = lambda a, b: ops.compare(a, b, "le")
    T.__gt__ = lambda a, b: ops.compare(a, b, "gt")
    T.__ge__ = lambda a, b: ops.compare(a, b, "ge")
    T.__eq__ = lambda a, b: ops.compare(a, b, "eq")
    T.__ne__ = lambda a, b: ops.compare(a, b, "ne")

    T.sum = lambda a, axis=None, keepdims=False: ops.sum(a, axis=axis, keepdims=keepdims)
    T.mean = lambda a, axis=None, keepdims=False: ops.mean(a, axis=axis, keepdims=keepdims)
    T.max = lambda a, axis=None, keepdims=False: ops.max(a, axis=axis, keepdims=keepdims)
    T.min = lambda a, axis=None, keepdims=False: ops.min(a, axis=axis, keepdims=keepdims)
    T.reshape = lambda a, *shape: ops.reshape(a, shape[0] if len(shape) == 1 and isinstance(shape[0], (tuple, list)) else shape)
    T.view = T.reshape
    T.transpose = lambda a, *axes: ops.transpose(a, axes[0] if len(axes) == 1 and isinstance(axes[0], (tuple, list)) else (axes or None))
    T.T = property(lambda a: ops.transpose(a, None))
    T.exp = ops.exp
    T.log = ops.log
    T.sqrt = ops.sqrt
    T.tanh = ops.tanh
    T.sigmoid = ops.sigmoid
    T.relu = ops.relu
    T.softmax = lambda a, axis=-1: ops.softmax(a, axis=axis)
    T.log_softmax = lambda a, axis=-1: ops.log_softmax(a, axis=axis)
    T.clip = lambda a, lo=None, hi=None: ops.clip(a, lo, hi)
    T.flatten = lambda a: ops.reshape(a, (-1,))

