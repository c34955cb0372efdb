"""Traced BPTT windows: ``backprop_through_time(..., traced=True)`` and ``fit(..., traced=True)``.

A BPTT window is one training step: the model over steps ``[r, b)`` from a
detached state, the loss on ``[a, b)``, backward. ``TracedWindows`` records
that step once per window shape with ``traced_step(has_aux=True)`` and
replays it for every later window and batch of that shape, so a model pays
no per-op Python cost while it trains; a decomposed layer (every gate
recorded) replays its fused kernel (``tinygraph.fusion``). The window's
offsets (where the loss starts, where the next window's state is stored)
are an integer input read on the host, so each distinct layout is traced
once and keyed by its values.

What a trace cannot follow is refused instead of replayed wrongly: random
draws (``Dropout`` in training mode), inputs that need a gradient, and
per-step gradient-norm tracking (it needs the eager graph).
"""
from __future__ import annotations

import numpy as np

from . import backend
from .bptt import _map_state, _model_call, state_tensors
from .ops import concat
from .tensor import Tensor
from .trace import module_modes, modules_of, summed_counts, traced_step

__all__ = ["TracedWindows"]


def _structure(state):
    """The shape of a state as a hashable key: None, 0 for a Tensor, nested tuples/lists of those."""
    return _map_state(lambda t: 0, state)


def _rebuild(structure, leaves):
    if structure is None:
        return None
    if isinstance(structure, int):
        return next(leaves)
    return type(structure)(_rebuild(s, leaves) for s in structure)


def _key(structure):
    return repr(structure)  # lists are not hashable; their repr is, and differs from a tuple's


def _steps(x, u, v, length):
    """Steps [u, v) of a traced window input, recorded so each replay slices the new values."""
    return x if x is None or (u, v) == (0, length) else x[u:v]


class TracedWindows:
    """The traced training steps of one model and loss, one schedule per window layout.

    ``tracer(xs, targets, state, loss_from, store_at)`` runs the model over
    ``xs`` (the window's steps ``[r, b)``) from ``state`` (detached), takes
    ``loss_fn`` on the outputs from step ``loss_from`` on (``a - r``),
    and adds the gradients to the parameters' ``.grad``. Returns
    ``(loss, stored, final)``: the state after ``store_at`` steps (``None``
    when ``store_at`` is 0 or the window's length) and the state at its end,
    both graph-free. Pass one instance to every ``backprop_through_time``
    call (``fit`` does) so each layout is traced once.

    Schedules are keyed by the input shapes and dtypes, the state's
    structure, the window offsets, each module's train/eval mode and the
    parameters' dtypes and ``requires_grad`` flags (a frozen parameter is
    read at every replay and gets no gradient). Other Python attributes
    that change what the model records (``JordanRNN.teacher_forcing``) are
    not seen: make a new ``TracedWindows`` after changing them.
    """

    def __init__(self, model, loss_fn, *, fuse=True, max_traces=16):
        params = list(model.parameters()) if hasattr(model, "parameters") else []
        if not params:
            raise ValueError("traced training: the model has no parameters (model.parameters())")
        self.model, self.loss_fn = model, loss_fn
        self._call = _model_call(model)
        self._fuse, self._max_traces, self._params = fuse, max_traces, params
        self._steps = {}  # see _step_for -> TracedStep

    @property
    def traces(self):
        """How many window layouts have been traced so far."""
        return sum(step.traces for step in self._steps.values())

    @property
    def fused(self):
        """What trace-time fusion replaced in the schedules kept: fusion name -> matches."""
        return summed_counts(step.fused for step in self._steps.values())

    def reserve(self, layouts):
        """Keep at least ``layouts`` schedules per state structure (TBPTT(k1, k2) has about
        k2 / k1 + 2), so a plan's windows never evict each other's traces."""
        self._max_traces = max(self._max_traces, int(layouts))
        for step in self._steps.values():
            step.max_traces = max(step.max_traces, self._max_traces)

    def check(self, model, loss_fn):
        if model is not self.model or loss_fn is not self.loss_fn:
            raise ValueError("traced training: this TracedWindows was made for another model or loss function")
        _refuse_dropout(model)

    def __call__(self, xs, targets, state, loss_from, store_at):
        offsets = np.array([loss_from, store_at], dtype=np.int64)
        xs, targets = self._on_model_device(xs), self._on_model_device(targets)
        step, inputs = self._step_for(state, targets, with_targets=True)
        loss, (stored, final) = step(xs, offsets, *inputs)
        return loss, stored, final

    def _on_model_device(self, x):
        """Host token ids for a GPU model are copied before the replay, not inside it: a copy inside
        is a host read, which would key a new trace on every batch's values."""
        if x is None:
            return None
        data = x.data if isinstance(x, Tensor) else x
        device = backend.device_of(self._params[0].data)
        if not hasattr(data, "dtype") or backend.device_of(data) == device:
            return x
        return Tensor(backend.to_device(data, device))

    def evaluate(self, xs, targets, state):
        """``(loss, final state)`` of ``model(xs, state)`` and ``loss_fn``: the forward replay alone,
        parameters' ``.grad`` untouched (``evaluate`` in ``fit(..., traced=True)``). Like the eager
        ``evaluate``, the model is called without ``targets=``."""
        offsets = np.array([0, xs.shape[0]], dtype=np.int64)
        xs, targets = self._on_model_device(xs), self._on_model_device(targets)
        step, inputs = self._step_for(state, targets, with_targets=False)
        loss, (_, final) = step.evaluate(xs, offsets, *inputs)
        return loss, final

    def _step_for(self, state, targets, with_targets):
        """The TracedStep for this state structure and mode, and its inputs after ``xs, offsets``."""
        structure = _structure(state)
        has_targets = targets is not None
        # train/eval can change what the model records (JordanRNN's teacher forcing): one schedule
        # per mode (traced_step itself keys on the parameters' dtypes and requires_grad flags)
        key = (_key(structure), has_targets, with_targets, module_modes(self.model))
        step = self._steps.get(key)
        if step is None:
            step = self._steps[key] = traced_step(
                self._window_loss(structure, has_targets, with_targets), self._params,
                max_traces=self._max_traces, fuse=self._fuse, has_aux=True)
        leaves = state_tensors(state)
        return step, ([targets, *leaves] if has_targets else leaves)

    def _window_loss(self, structure, has_targets, with_targets):
        call = self._call if with_targets else (lambda x, state, y: self.model(x, state))
        loss_fn = self.loss_fn

        def window(xs, offsets, *rest):
            # read on the host, not by an op: traced_step keys the schedule by these values
            loss_from, store_at = (int(v) for v in offsets.data)
            targets, leaves = (rest[0], rest[1:]) if has_targets else (None, rest)
            length = xs.shape[0]
            state = _rebuild(structure, iter(leaves))
            stored, parts = None, []
            cuts = sorted({0, loss_from, store_at, length})
            for u, v in zip(cuts, cuts[1:]):
                out, state = call(_steps(xs, u, v, length), state, _steps(targets, u, v, length))
                if u >= loss_from:
                    parts.append(out)
                if v == store_at and v < length:
                    stored = state
            outputs = parts[0] if len(parts) == 1 else concat(parts, axis=0)
            loss = loss_fn(outputs, _steps(targets, loss_from, length, length))
            if not isinstance(loss, Tensor) or loss.size != 1:
                raise TypeError("BPTT: loss_fn must return a scalar Tensor")
            return loss, (stored, state)

        return window


def _refuse_dropout(model):
    from .nn import Dropout

    for m in modules_of(model):
        if isinstance(m, Dropout) and m.training and m.p > 0:
            raise ValueError(
                f"traced BPTT: the model has a {m!r} in training mode; a trace would replay the same "
                "dropout mask at every step. Train it with traced=False, or use p=0")
