"""Backpropagation through time: full and truncated, streaming state, gradient-flow diagnostics.

Model contract: ``model(x_window, state) -> (outputs, state)`` with time-major
inputs ``(T, B, ...)`` and outputs ``(T, B, ...)``; ``state`` is ``None`` (the
model's initial state), a Tensor, or a tuple of Tensors (LSTM ``(h, c)``).
``loss_fn(outputs, targets_window) -> scalar Tensor``.

Truncated BPTT(k1, k2) after Williams & Peng: the sequence is cut into loss
windows of k1 steps; window ``[a, b)`` differentiates ``loss_fn`` on the
outputs of steps ``a..b-1`` through the last k2 steps, ``[max(0, b - k2), b)``
(so k2 >= T is full BPTT). With k1 == k2 every window backpropagates
through itself only, the last short one included, so TBPTT(k, k) is plain
chunking with detached states for any T. The steps before ``a`` are
*re-run* from a detached copy of the state stored when the previous window
passed that point (so every window owns a fresh graph and memory is O(k2),
whatever the sequence length). With an optimizer the re-run uses the current
parameters, as in the re-computing variant of the algorithm; without one the
gradients accumulate into ``.grad`` and are exactly the sum of the per-window
truncated gradients.
"""
from __future__ import annotations

import inspect
import math
from dataclasses import dataclass, field

import numpy as np

from . import backend
from .autodiff import grad as _grad
from .ops import concat
from .optim import _rescale_grads, clip_grad_value, grad_norm, power_sum
from .tensor import Tensor
from .trace import modules_of

__all__ = [
    "BPTTResult", "backprop_through_time", "window_plan", "truncate", "check_state",
    "FreedStateError", "StreamState", "StatefulBPTT", "gradient_flow", "jacobian_norms",
    "grad_norm", "state_tensors", "state_sources", "fit", "evaluate", "History",
    "GradientFlowRecorder", "ExplodingGradientWarning",
]


# ---------------------------------------------------------------------------
# state helpers: a state is None, a Tensor or a (nested) tuple of Tensors
# ---------------------------------------------------------------------------
def _map_state(fn, state):
    if state is None:
        return None
    if isinstance(state, Tensor):
        return fn(state)
    if isinstance(state, (tuple, list)):
        return type(state)(_map_state(fn, s) for s in state)
    raise TypeError(
        f"a recurrent state must be None, a Tensor or a tuple of Tensors, got {type(state).__name__}"
    )


def state_tensors(state) -> list:
    """The Tensors of ``state`` in order (h first, then c for an LSTM)."""
    found = []
    _map_state(found.append, state)
    return found


def truncate(state):
    """Same values, graph cut: gradients never flow past the returned state."""
    return _map_state(lambda t: t.detach(), state)


class FreedStateError(RuntimeError):
    """A state still points into a graph that an earlier backward freed."""


def _has_freed_ancestor(node, budget=64):
    # A state's own node is usually the last op of a step (tanh, mul), which the
    # backward that freed the graph did reach; look a little way up to be sure.
    stack, seen = [node], set()
    while stack and len(seen) < budget:
        n = stack.pop()
        if n.id in seen:
            continue
        seen.add(n.id)
        if n.freed:
            return True
        stack.extend(n.inputs)
    return False


def check_state(state, what="state"):
    """Raise FreedStateError if ``state`` carries a graph that backward already freed."""
    for t in state_tensors(state):
        if t._node is not None and _has_freed_ancestor(t._node):
            raise FreedStateError(
                f"the {what} carries a graph that an earlier backward already freed "
                f"(op '{t._node.op}', scope {t._node.scope or '<top>'!r}); truncate it before "
                "reusing it: state = tinygraph.bptt.truncate(state) (or stream.truncate()) keeps "
                "the value and cuts the graph"
            )
    return state


# ---------------------------------------------------------------------------
# windows
# ---------------------------------------------------------------------------
def resolve_window(k1, k2, T):
    """(k1, k2) as integers; None, None means full BPTT (one window of T steps)."""
    if k1 is None and k2 is None:
        return max(T, 1), max(T, 1)
    if k1 is None:
        k1 = k2
    if k2 is None:
        k2 = k1
    if int(k1) != k1 or int(k2) != k2 or k1 < 1:
        raise ValueError(f"TBPTT: k1 and k2 must be positive integers, got k1={k1}, k2={k2}")
    if k2 < k1:
        raise ValueError(
            f"TBPTT: k2 (steps of backprop, {k2}) must be >= k1 (steps between updates, {k1}); "
            "otherwise some losses would not be differentiated at all"
        )
    return int(k1), int(k2)


def window_plan(T, k1, k2):
    """[(a, b, r)]: loss on steps [a, b), backprop through steps [r, b).

    k1 < k2 (Williams & Peng): r = max(0, b - k2), the last k2 steps, also
    for a short last window. k1 == k2: r = a, every window only through
    itself, so TBPTT(k, k) equals independent detached chunks for any T.
    Either way k2 >= T is full BPTT.
    """
    plan = []
    for a in range(0, T, k1):
        b = min(a + k1, T)
        plan.append((a, b, a if k1 == k2 else max(0, b - k2)))
    return plan


def _time_slice(x, a, b):
    """Steps [a, b) of a time-major array/Tensor, as a view (no recorded op unless needed)."""
    if isinstance(x, Tensor):
        return x[a:b] if x.requires_grad else Tensor(x.data[a:b])
    return Tensor(x[a:b]) if hasattr(x, "shape") and hasattr(x, "dtype") else x[a:b]


def _target_slice(y, a, b):
    if y is None:
        return None
    if isinstance(y, Tensor):
        return Tensor(y.data[a:b])
    return y[a:b]


def _check_time_major(model, xs, targets, T):
    """The drivers cut along axis 0 as time: refuse what would make them cut something else."""
    _refuse_batch_first(model, "BPTT: the drivers cut windows along axis 0 as time (a window would be a "
                               "group of sequences)")
    if targets is None:
        return
    tshape = targets.shape if hasattr(targets, "shape") else np.shape(targets)
    xshape = xs.shape if hasattr(xs, "shape") else np.shape(xs)
    many_to_one = ("for one label per sequence (many-to-one) write the loop yourself, as "
                   "examples/sentiment.py does")
    if tshape and int(tshape[0]) != T:
        raise ValueError(f"BPTT: inputs have {T} steps but targets have {tshape[0]} (both time-major). "
                         f"The drivers need one target per step, (T, B, ...); {many_to_one}")
    # batched inputs (T, B, D): one target per step AND per sequence; an unbatched sequence (T, D)
    # of a user's model may have targets (T,) or (T, K)
    if len(xshape) >= 3 and (len(tshape) < 2 or int(tshape[1]) != int(xshape[1])):
        raise ValueError(f"BPTT: targets of shape {tuple(tshape)} are not per step and per sequence like the "
                         f"inputs {tuple(xshape)} (time-major (T, B, ...)); {many_to_one}")


def _refuse_batch_first(model, why):
    if any(getattr(m, "batch_first", False) is True for m in modules_of(model)):
        raise ValueError(f"{why}, but the model has a batch_first=True layer: build it with "
                         "batch_first=False and pass time-major (T, B, ...) inputs and targets")


def _seq_len(xs):
    shape = xs.shape if hasattr(xs, "shape") else np.shape(xs)
    if not shape:
        raise ValueError("BPTT: inputs must be time-major with at least one axis (T, B, ...)")
    return int(shape[0])


# ---------------------------------------------------------------------------
# gradient norms
# ---------------------------------------------------------------------------
def _norm(array):
    return power_sum([array]) ** 0.5


def _parameters_of(model, optimizer):
    if hasattr(model, "parameters"):
        return list(model.parameters())
    if optimizer is not None and hasattr(optimizer, "params"):
        return list(optimizer.params)
    return []


def _trained_parameters(params, optimizer):
    """What a window's update clips and reports the norm of: the optimizer's parameters when it
    holds only some of the model's (the others are not trained, so their gradients are not counted)."""
    if optimizer is not None and hasattr(optimizer, "params"):
        return list(optimizer.params)
    return params


def _zero_window_grads(optimizer, params):
    """Before a window: clear the optimizer's gradients and the model's, so a parameter the
    optimizer does not hold gets this window's gradient only, never a pile-up of all of them."""
    optimizer.zero_grad()
    for p in params:
        p.grad = None


def _clip(params, clip_norm, clip_value):
    """Clip in place; returns (pre-clip norm, whether anything was clipped)."""
    norm = grad_norm(params)
    clipped = False
    if clip_value is not None:
        clipped = grad_norm(params, math.inf) > clip_value
        clip_grad_value(params, clip_value)
    if clip_norm is not None:
        # value clipping changed the gradients; otherwise the norm above is still current
        total = norm if clip_value is None else grad_norm(params)
        _rescale_grads(params, clip_norm, total)
        clipped = clipped or total > clip_norm
    return norm, clipped


def _as_model_input(xs, params):
    """A float array in the parameters' dtype (cast once, not per window); Tensors as they are,
    nested lists as NumPy arrays."""
    if isinstance(xs, (list, tuple)):
        xs = np.asarray(xs)
    if (params and not isinstance(xs, Tensor) and hasattr(xs, "astype") and xs.dtype.kind == "f"
            and xs.dtype != params[0].dtype):
        return xs.astype(params[0].dtype)
    return xs


def _model_call(model):
    """``call(x, state, targets)``: passes ``targets=`` when the model's forward takes it.

    Teacher forcing (``JordanRNN``) needs the targets window; the signature is
    read once per sequence, not per step.
    """
    try:
        takes = "targets" in inspect.signature(getattr(model, "forward", model)).parameters
    except (TypeError, ValueError):
        takes = False
    run = (lambda x, state, y: model(x, state, targets=y)) if takes else (lambda x, state, y: model(x, state))

    def call(x, state, y):
        out = run(x, state, y)
        if not (isinstance(out, (tuple, list)) and len(out) == 2):
            kind = type(out).__name__
            got = (f"a {kind} of shape {out.shape}" if hasattr(out, "shape")
                   else f"a {kind} of {len(out)} items" if isinstance(out, (tuple, list)) else f"a {kind}")
            raise TypeError(f"BPTT: model(x, state) must return (outputs, state); got {got}")
        return out
    return call


def _bidirectional(model):
    return any(getattr(m, "num_directions", 1) > 1 or getattr(m, "bidirectional", False) is True
               for m in modules_of(model))


def _require_unidirectional(model, what):
    if _bidirectional(model):
        raise ValueError(
            f"{what} runs the model one step per call, so a bidirectional layer's backward "
            "direction would see only that step, not the rest of the sequence: per-step "
            "diagnostics need a unidirectional model")


# ---------------------------------------------------------------------------
# the driver
# ---------------------------------------------------------------------------
@dataclass
class BPTTResult:
    """What one call of :func:`backprop_through_time` did.

    ``loss``: sum of the window losses. ``state``: final state, detached.
    ``grad_norms``: (T,) ‖∂L/∂h(t)‖ summed over the windows whose backward
    reached step t (NaN where not computed, i.e. everywhere unless
    ``track_grad_norms=True``); ``state_grad_norms`` has one such array per
    state tensor (h, then c for an LSTM), and is empty without tracking.
    ``windows``: (a, b, r) per window.
    ``update_grad_norms``/``clipped``: pre-clip parameter-gradient norm and
    whether clipping changed it, per optimizer step (or once, at the end,
    without an optimizer).
    """

    loss: float
    state: object
    grad_norms: np.ndarray
    state_grad_norms: tuple = ()
    window_losses: list = field(default_factory=list)
    windows: list = field(default_factory=list)
    update_grad_norms: list = field(default_factory=list)
    clipped: list = field(default_factory=list)
    num_updates: int = 0  # optimizer steps taken


class _NormTracker:
    """Sums ∂L/∂state(t) over the windows that reach step t, O(k2) memory."""

    def __init__(self, T):
        self.T = T
        self.pending = {}  # (t, component, source) -> gradient array
        self.norms = None

    def add(self, t, comps):
        if self.norms is None:
            self.norms = [np.full(self.T, np.nan) for _ in comps]
        for i, sources in enumerate(comps):
            for j, tensor in enumerate(sources):
                if tensor.grad is None:
                    continue
                key = (t, i, j)
                prev = self.pending.get(key)
                self.pending[key] = tensor.grad.data if prev is None else prev + tensor.grad.data
                tensor.grad = None

    def finish_before(self, step):
        squares = {}
        for key in [k for k in self.pending if k[0] < step]:
            t, i, _ = key
            squares[(t, i)] = squares.get((t, i), 0.0) + _norm(self.pending.pop(key)) ** 2
        for (t, i), sq in squares.items():
            self.norms[i][t] = math.sqrt(sq)

    def result(self):
        self.finish_before(self.T)
        return tuple(self.norms or ())


def state_sources(tensor) -> list:
    """The tensors a state tensor is assembled from, where ∂L/∂h(t) has to be taken.

    A layer returns ``h_n = stack([h of each layer])`` (a reshape to (1, B, H)
    for a single layer) while its outputs are built from those same h's, so
    the gradient at ``h_n`` would miss the output path; the stacked inputs
    get the whole gradient.
    """
    node = tensor._node
    if node is not None and node.op in ("stack", "concat", "reshape") and node.saved is not None:
        found = [a for a in node.saved if isinstance(a, Tensor) and a.requires_grad]
        if found:
            return found
    return [tensor]


def _step_sources(state):
    return [state_sources(t) for t in state_tensors(state)]


def _run(call, xs, targets, state, u, v, track, tracked):
    """Run steps [u, v); with ``track`` one step per call so each state is its own tensor."""
    if not track:
        return call(_time_slice(xs, u, v), state, _target_slice(targets, u, v))
    outs = []
    for t in range(u, v):
        out, state = call(_time_slice(xs, t, t + 1), state, _target_slice(targets, t, t + 1))
        comps = _step_sources(state)
        for sources in comps:
            for c in sources:
                c.retain_grad()
        tracked.append((t, comps))
        outs.append(out)
    return (outs[0] if len(outs) == 1 else concat(outs, axis=0)), state


def backprop_through_time(model, xs, targets, loss_fn, *, state=None, k1=None, k2=None,
                          optimizer=None, clip_norm=None, clip_value=None,
                          track_grad_norms=False, traced=False):
    """Full BPTT (k1 = k2 = None) or Williams & Peng's TBPTT(k1, k2) over one sequence.

    ``state`` is the starting state (cut from any graph it carries). With
    ``optimizer``: zero_grad, backward, clip, step for every window. Without
    one, every window's gradient accumulates into ``.grad`` (and clipping, if
    asked, is applied once at the end). ``track_grad_norms=True`` runs the
    model one step per call to record ‖∂L/∂h(t)‖ for every step.
    ``traced=True`` (or a :class:`~tinygraph.traced_windows.TracedWindows`
    kept across calls, as ``fit`` does) records each window's training step
    once and replays it: the same numbers, no per-op Python cost, decomposed
    layers replayed fused. Returns a :class:`BPTTResult`.
    """
    T = _seq_len(xs)
    if T == 0:
        raise ValueError("BPTT: the sequence is empty (T = 0)")
    _check_time_major(model, xs, targets, T)
    k1, k2 = resolve_window(k1, k2, T)
    params = _parameters_of(model, optimizer)
    trained = _trained_parameters(params, optimizer)
    xs = _as_model_input(xs, params)
    call = _model_call(model)
    tracker = _NormTracker(T) if track_grad_norms else None
    plan = window_plan(T, k1, k2)
    if track_grad_norms:
        _require_unidirectional(model, "track_grad_norms=True")
    tracer = _window_tracer(traced, model, loss_fn, xs, track_grad_norms)
    if tracer is not None:  # one schedule per window layout: keep them all, or the plan evicts its own
        nexts = [p[2] for p in plan[1:]] + [T]
        tracer.reserve(2 * len({(b - r, a - r, n - r) for (a, b, r), n in zip(plan, nexts)}))
    if len(plan) > 1 and _bidirectional(model):
        raise ValueError(
            f"TBPTT(k1={k1}, k2={k2}) cuts the sequence into windows, and a bidirectional layer's "
            "backward direction would then see only the future inside each window; use full "
            "BPTT (k1 = k2 = None) or a unidirectional model")

    result = BPTTResult(loss=0.0, state=None, grad_norms=np.full(T, np.nan))
    restart_state = truncate(state)  # detached state before step r of the coming window
    final = restart_state
    for w, (a, b, r) in enumerate(plan):
        next_r = plan[w + 1][2] if w + 1 < len(plan) else b
        if tracer is not None:
            if optimizer is not None:
                _zero_window_grads(optimizer, params)
            loss, stored, final = tracer(_time_slice(xs, r, b), _target_slice(targets, r, b), restart_state,
                                         a - r, next_r - r)
            _finish_window(result, loss, (a, b, r), trained, optimizer, clip_norm, clip_value)
            restart_state = restart_state if next_r == r else final if next_r == b else stored
            continue
        # run [r, b) in segments: split at a (only loss-window outputs are kept) and at
        # next_r (the detached state there is where the next window re-runs from)
        cuts = sorted({r, a, b, next_r})
        s = restart_state
        stored = restart_state if next_r == r else None
        loss_parts, tracked = [], []
        for u, v in zip(cuts, cuts[1:]):
            out, s = _run(call, xs, targets, s, u, v, track_grad_norms, tracked)
            if u >= a:
                loss_parts.append(out)
            if v == next_r:
                stored = truncate(s)
        outputs = loss_parts[0] if len(loss_parts) == 1 else concat(loss_parts, axis=0)
        if optimizer is not None:
            _zero_window_grads(optimizer, params)
        loss = loss_fn(outputs, _target_slice(targets, a, b))
        if not isinstance(loss, Tensor) or loss.size != 1:
            raise TypeError("BPTT: loss_fn must return a scalar Tensor")
        loss.backward()
        if tracker is not None:
            for t, comps in tracked:
                tracker.add(t, comps)
            tracker.finish_before(next_r)
        _finish_window(result, loss, (a, b, r), trained, optimizer, clip_norm, clip_value)
        restart_state, final = stored, truncate(s)
        del loss, outputs, loss_parts, tracked, s  # drop this window's graph before the next one

    if optimizer is None and params:
        if clip_norm is None and clip_value is None:
            norm, clipped = grad_norm(params), False
        else:
            norm, clipped = _clip(params, clip_norm, clip_value)
        result.update_grad_norms.append(norm)
        result.clipped.append(clipped)
    result.loss = float(sum(result.window_losses))
    result.state = final
    if tracker is not None:
        result.state_grad_norms = tracker.result()
        result.grad_norms = result.state_grad_norms[0]
    return result


def _finish_window(result, loss, window, params, optimizer, clip_norm, clip_value):
    """Record the window's loss; with an optimizer, clip and step (its gradients are in ``.grad``)."""
    result.window_losses.append(float(loss.item()))
    result.windows.append(window)
    if optimizer is not None:
        norm, clipped = _clip(params, clip_norm, clip_value)
        optimizer.step()
        result.num_updates += 1
        result.update_grad_norms.append(norm)
        result.clipped.append(clipped)


def _window_tracer(traced, model, loss_fn, xs, track_grad_norms):
    """The TracedWindows to run the windows with (None: eager), after checking it can."""
    if traced is False or traced is None:
        return None
    from .traced_windows import TracedWindows

    if track_grad_norms:
        raise ValueError("BPTT: track_grad_norms=True needs the eager graph of every step; use traced=False")
    if isinstance(xs, Tensor) and xs.requires_grad:
        raise ValueError("BPTT: traced=True differentiates the parameters only; these inputs require a "
                         "gradient, so use traced=False")
    tracer = TracedWindows(model, loss_fn) if traced is True else traced
    if not isinstance(tracer, TracedWindows):
        raise TypeError(f"BPTT: traced must be True, False or a TracedWindows, got {type(traced).__name__}")
    tracer.check(model, loss_fn)
    return tracer


# ---------------------------------------------------------------------------
# streaming: a state that persists across calls
# ---------------------------------------------------------------------------
class StreamState:
    """A recurrent state that persists across calls, for a hand-written loop over a long text.

        stream = StreamState()
        for x, y in chunks:
            out, h = model(x, stream.value)
            stream.update(h)
            loss_fn(out, y).backward(); opt.step(); opt.zero_grad()
            stream.truncate()          # keep the value, cut the graph

    Forgetting ``truncate()`` makes the next ``stream.value`` raise a
    :class:`FreedStateError` that says so. ``reset()`` goes back to the
    initial state (e.g. at a document boundary).
    """

    def __init__(self, initial=None):
        self._initial = truncate(initial)
        self._state = self._initial

    @property
    def value(self):
        return check_state(self._state, "stream state")

    def update(self, state):
        """Remember the state a model just returned (graph attached)."""
        _map_state(lambda t: t, state)  # validates the structure
        self._state = state
        return state

    def truncate(self):
        """Keep the value, cut the graph; returns the truncated state."""
        self._state = truncate(self._state)
        return self._state

    def reset(self):
        """Back to the initial state."""
        self._state = self._initial
        return self._state


class StatefulBPTT:
    """TBPTT over a stream that arrives in chunks; the state persists between ``step`` calls.

    Each ``step(xs, targets)`` runs :func:`backprop_through_time` on the chunk,
    starting from the state the previous chunk ended in; the chunk edge is a
    truncation point too (with k1 = k2 and chunk lengths that are multiples of
    k1 this equals one call over the concatenated stream). ``traced=True``
    replays each window's traced step (see :func:`backprop_through_time`).
    """

    def __init__(self, model, loss_fn, *, k1, k2=None, optimizer=None, clip_norm=None,
                 clip_value=None, initial_state=None, traced=False):
        resolve_window(k1, k2, 1)  # validate early
        self.model, self.loss_fn = model, loss_fn
        if traced is True:  # one tracer for every chunk: each window layout is traced once
            from .traced_windows import TracedWindows
            traced = TracedWindows(model, loss_fn)
        self.traced = traced
        self.k1, self.k2 = k1, k2
        self.optimizer, self.clip_norm, self.clip_value = optimizer, clip_norm, clip_value
        self.stream = StreamState(initial_state)

    @property
    def state(self):
        return self.stream.value

    def step(self, xs, targets, track_grad_norms=False):
        result = backprop_through_time(
            self.model, xs, targets, self.loss_fn, state=self.stream.value, k1=self.k1, k2=self.k2,
            optimizer=self.optimizer, clip_norm=self.clip_norm, clip_value=self.clip_value,
            track_grad_norms=track_grad_norms, traced=self.traced)
        self.stream.update(result.state)
        return result

    def truncate(self):
        return self.stream.truncate()

    def reset(self):
        return self.stream.reset()


# ---------------------------------------------------------------------------
# diagnostics: vanishing and exploding gradients as data
# ---------------------------------------------------------------------------
def _unrolled(model, xs, state, targets=None, what="gradient_flow"):
    """Run one step per call: (outputs (T, ...), per step [sources of each state tensor])."""
    _require_unidirectional(model, what)
    _refuse_batch_first(model, f"{what} runs the model one time step per call along axis 0 (a step "
                               "would be a group of sequences)")
    xs = _as_model_input(xs, _parameters_of(model, None))
    call = _model_call(model) if targets is not None else (lambda x, s, y: model(x, s))
    s = truncate(state)
    outs, per_step = [], []
    for t in range(_seq_len(xs)):
        out, s = call(_time_slice(xs, t, t + 1), s, _target_slice(targets, t, t + 1))
        outs.append(out)
        per_step.append(_step_sources(s))
    if not per_step or not per_step[0]:
        raise ValueError("gradient diagnostics need a model whose state is a Tensor or a tuple of Tensors")
    return (outs[0] if len(outs) == 1 else concat(outs, axis=0)), per_step, s


def gradient_flow(model, xs, targets, loss_fn, state=None, *, per_state=False):
    """‖∂L/∂h(t)‖ for every step t, with L = loss_fn(outputs, targets) over the whole sequence.

    Runs the model one step per call (``xs[t:t+1]``) so each h(t) is its own
    tensor, then takes one reverse pass. The norm is the Frobenius norm over
    the whole (batch, hidden) state (all layers of a stacked layer). Returns
    a NumPy array (T,) for h (the first state tensor); with
    ``per_state=True`` a tuple of such arrays, one per state tensor: ``(h,)``,
    or ``(h, c)`` for an LSTM. Nothing is accumulated into the parameters'
    ``.grad``. To see the textbook decay, put the loss on the last step only
    (``loss_fn`` may ignore the other outputs).
    """
    outputs, per_step, _ = _unrolled(model, xs, state, targets)
    loss = loss_fn(outputs, targets)
    flat = [(t, i, src) for t, comps in enumerate(per_step)
            for i, sources in enumerate(comps) for src in sources]
    grads = _grad(loss, [src for _, _, src in flat], allow_unused=True)
    norms = np.zeros((len(per_step[0]), len(per_step)))
    for (t, i, _), g in zip(flat, grads):
        if g is not None:
            norms[i, t] += _norm(g.data) ** 2
    norms = np.sqrt(norms)
    return tuple(norms) if per_state else norms[0]


def _per_sample(arr, B):
    """(..., B, H) -> (B, rest) on the host; a 1-D state is one sample."""
    arr = backend.as_host(arr)
    if arr.ndim < 2:
        return arr.reshape(1, -1)
    return np.moveaxis(arr, arr.ndim - 2, 0).reshape(B, -1)


def jacobian_norms(model, xs, state=None, *, ord="fro", state_index=0):
    """Norms of ∂s(T)/∂s(t) for every t: how much step t still influences the last state.

    ``s`` is state tensor ``state_index`` (0 = h; 1 = c for an LSTM). The
    Jacobian is taken per batch element (samples do not interact; the batch
    axis is the second-to-last axis of the state) and its norm, ``"fro"``
    (Frobenius) or ``2`` (spectral), averaged over the batch. Returns a NumPy
    array (T,); the last entry is the norm of the identity. Costs one reverse
    pass per state unit, so use small hidden sizes.
    """
    _, per_step, final = _unrolled(model, xs, state, what="jacobian_norms")
    last = state_tensors(final)[state_index]
    sources = [comps[state_index] for comps in per_step]
    shape = last.shape
    batch_axis = len(shape) - 2 if len(shape) >= 2 else None
    B = shape[batch_axis] if batch_axis is not None else 1
    M = last.size // B
    xp = backend.array_module(last.data)
    flat_sources = [src for srcs in sources for src in srcs]
    jac = [None] * len(sources)
    for unit in range(M):
        seed = np.zeros((B, M), dtype=last.dtype)
        seed[:, unit] = 1.0
        if batch_axis is None:
            seed = seed.reshape(shape)
        else:
            moved = tuple(s for i, s in enumerate(shape) if i != batch_axis)
            seed = np.moveaxis(seed.reshape((B,) + moved), 0, batch_axis)
        grads = iter(_grad(last, flat_sources, grad_outputs=xp.asarray(seed), retain_graph=True,
                           allow_unused=True))
        for t, srcs in enumerate(sources):
            row = [np.zeros((B, src.size // B)) if g is None else _per_sample(g.data, B)
                   for src, g in zip(srcs, grads)]
            row = np.concatenate(row, axis=1)  # (B, M_in)
            if jac[t] is None:
                jac[t] = np.zeros((B, M, row.shape[1]))
            jac[t][:, unit, :] = row
    return np.array([np.mean([np.linalg.norm(jac[t][b], ord) for b in range(B)])
                     for t in range(len(sources))])


# The training loop lives in its own module; re-exported here (import at the end:
# training imports the driver above).
from .training import (ExplodingGradientWarning, GradientFlowRecorder, History,  # noqa: E402
                       evaluate, fit)
