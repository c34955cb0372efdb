"""The training loop: fit() with (truncated) BPTT, clipping, progress, evaluation, checkpoints.

``data`` is an iterable of ``(xs, targets)`` batches (time-major arrays or
Tensors), re-iterated every epoch (a list, or anything whose ``iter()`` starts
over), or a callable returning a fresh iterable: ``data(epoch)`` (or
``data()``), which is how to shuffle reproducibly, seeding from the epoch.

Checkpoints are ``.npz`` files written atomically (``tg.save``): model and
optimizer state, the epoch and batch reached, the history so far, the carried
state and the random generators (tinygraph's, NumPy's legacy global and
Python's), so ``resume=True`` continues bit-for-bit. The first Ctrl-C asks the
loop to stop after the current batch, save and return; a second one aborts
at once.
"""
from __future__ import annotations

import collections
import inspect
import json
import math
import os
import random
import signal
import statistics
import threading
import time
import warnings
from dataclasses import asdict, dataclass, field

import numpy as np

from . import backend
from .graph import no_grad
from .progress import ProgressBar
from .tensor import Tensor

__all__ = ["fit", "evaluate", "History", "ExplodingGradientWarning", "GradientFlowRecorder",
           "save_checkpoint", "load_checkpoint"]

CHECKPOINT_FORMAT = 1


class ExplodingGradientWarning(UserWarning):
    """The gradient norm jumped by orders of magnitude (or became NaN/Inf)."""


@dataclass
class History:
    """What fit() did, as data.

    Per optimizer update (one per TBPTT window): ``step_loss``,
    ``step_grad_norm`` (before clipping), ``step_clipped``, ``step_epoch``.
    Per epoch: ``epochs``, dicts with ``epoch`` (1-based), ``train_loss``,
    ``train_perplexity``, ``eval_loss``/``eval_perplexity`` (None without
    eval data), ``updates`` and ``seconds``. ``warnings``: exploding-gradient
    messages. ``interrupted``: True when Ctrl-C (or a callback) stopped the run.
    """

    step_loss: list = field(default_factory=list)
    step_grad_norm: list = field(default_factory=list)
    step_clipped: list = field(default_factory=list)
    step_epoch: list = field(default_factory=list)
    epochs: list = field(default_factory=list)
    warnings: list = field(default_factory=list)
    interrupted: bool = False

    def arrays(self) -> dict:
        """Per-step series as NumPy arrays (for plotting)."""
        return {
            "loss": np.asarray(self.step_loss, dtype=np.float64),
            "grad_norm": np.asarray(self.step_grad_norm, dtype=np.float64),
            "clipped": np.asarray(self.step_clipped, dtype=bool),
            "epoch": np.asarray(self.step_epoch, dtype=np.int64),
        }

    def metric(self, name) -> list:
        """One per-epoch metric as a list, e.g. ``history.metric("eval_loss")``."""
        return [e.get(name) for e in self.epochs]


def perplexity(mean_loss):
    """exp(mean cross-entropy in nats); inf when it overflows."""
    if mean_loss is None or not math.isfinite(mean_loss):
        return None if mean_loss is None else float("inf")
    return math.exp(mean_loss) if mean_loss < 700 else float("inf")


class _ExplosionDetector:
    """Flags a norm that is ``factor`` times the median of the recent ones."""

    def __init__(self, factor, recent=()):
        self.factor = factor
        self.recent = collections.deque((n for n in recent if math.isfinite(n)), maxlen=20)

    def check(self, norm, step, clipping):
        hint = ("clipping is on, so the updates stay bounded" if clipping else
                f"consider fit(..., clip_norm={self._suggest()}) or a lower learning rate")
        message = None
        if not math.isfinite(norm):
            message = (f"step {step}: the gradient norm is {norm}; {hint}, and run under "
                       "tg.detect_anomaly() to find the op that produced it")
        elif len(self.recent) >= 3:
            typical = statistics.median(self.recent)
            if typical > 0 and norm > self.factor * typical:
                message = (f"step {step}: the gradient norm jumped to {norm:.3g}, "
                           f"{norm / typical:.0f}x the recent median {typical:.3g} "
                           f"(exploding gradients); {hint}")
        if math.isfinite(norm):
            self.recent.append(norm)
        return message

    def _suggest(self):
        typical = statistics.median(self.recent) if self.recent else 1.0
        return f"{max(typical * 5, 1e-3):.2g}"


# ---------------------------------------------------------------------------
# random generators
# ---------------------------------------------------------------------------
def _rng_state():
    from . import creation
    mt = np.random.get_state()
    version, internal, gauss_next = random.getstate()
    return {
        "tinygraph": creation.generator().bit_generator.state,
        "python": [version, list(internal), gauss_next],
        "numpy": {"keys": mt[1].tolist(), "pos": int(mt[2]), "has_gauss": int(mt[3]),
                  "gauss": float(mt[4])},
    }


def _set_rng_state(state):
    from . import creation
    creation.generator().bit_generator.state = state["tinygraph"]
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    mt = state["numpy"]
    np.random.set_state(("MT19937", np.asarray(mt["keys"], dtype=np.uint32), mt["pos"],
                         mt["has_gauss"], mt["gauss"]))


# ---------------------------------------------------------------------------
# checkpoints
# ---------------------------------------------------------------------------
def _state_structure(state, arrays, prefix):
    """Nested list of array indices mirroring ``state`` (None stays None)."""
    if state is None:
        return None
    if isinstance(state, Tensor):
        key = f"{prefix}{sum(name.startswith(prefix) for name in arrays)}"
        arrays[key] = backend.as_host(state.data)
        return key
    return [_state_structure(s, arrays, prefix) for s in state]


def _state_from_structure(structure, arrays, device):
    if structure is None:
        return None
    if isinstance(structure, str):
        return Tensor(backend.to_device(np.array(arrays[structure]), device))
    return tuple(_state_from_structure(s, arrays, device) for s in structure)


def save_checkpoint(path, model, optimizer, progress):
    """Write model + optimizer state + ``progress`` (a JSON-able dict) atomically to ``path``."""
    from .serialization import save

    entries = {}
    for name, value in model.state_dict().items():
        entries[f"model/{name}"] = value
    if optimizer is not None:
        for name, value in optimizer.state_dict().items():
            entries[f"optim/{name}"] = value
    progress = dict(progress)
    progress["carry"] = _state_structure(progress.get("carry"), entries, "carry/")
    progress["format"] = CHECKPOINT_FORMAT
    entries["meta"] = json.dumps(progress)
    return save(entries, path)


def load_checkpoint(path, model, optimizer):
    """Load a checkpoint written by :func:`save_checkpoint` into ``model``/``optimizer``; returns progress."""
    from .serialization import load

    entries = load(path)
    if "meta" not in entries:
        raise ValueError(f"{path!r} is not a tinygraph training checkpoint (no 'meta' entry)")
    try:
        progress = json.loads(str(entries["meta"]))
    except ValueError as exc:
        raise ValueError(f"{path!r} is not a tinygraph training checkpoint (its 'meta' entry is not JSON: "
                         f"{exc})") from None
    if not isinstance(progress, dict) or progress.get("format") != CHECKPOINT_FORMAT:
        found = progress.get("format") if isinstance(progress, dict) else None
        raise ValueError(f"{path!r}: checkpoint format {found} is not {CHECKPOINT_FORMAT}")
    # All or nothing: each load_state_dict checks everything before it changes anything, so the
    # optimizer goes first and is put back if the model (or the carried state) then refuses.
    optim_state = {k[len("optim/"):]: v for k, v in entries.items() if k.startswith("optim/")}
    before = None
    if optimizer is not None and optim_state:
        before = optimizer.state_dict()
        optimizer.load_state_dict(optim_state)
    try:
        params = list(model.parameters()) if hasattr(model, "parameters") else []
        device = params[0].device if params else "cpu"  # the carried state goes where the model is
        carry = _state_from_structure(progress.get("carry"), entries, device)
        model.load_state_dict({k[len("model/"):]: v for k, v in entries.items() if k.startswith("model/")})
    except Exception:
        if before is not None:
            optimizer.load_state_dict(before)
        raise
    progress["carry"] = carry
    return progress


# ---------------------------------------------------------------------------
# data and evaluation
# ---------------------------------------------------------------------------
def _takes_argument(fn):
    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):
        return True
    return any(p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD, p.VAR_POSITIONAL) for p in params)


def _epoch_data(data, epoch):
    if callable(data) and not hasattr(data, "__iter__"):
        data = data(epoch) if _takes_argument(data) else data()
    return data


def _check_carry(carry, xs):
    """carry_state=True hands each batch the last one's state: the batch sizes must agree."""
    from .bptt import state_tensors

    tensors = state_tensors(carry) if carry is not None else []
    if not tensors:   # no state, or a stateless model's empty tuple
        return
    first = tensors[0]
    shape = xs.shape if hasattr(xs, "shape") else np.shape(xs)
    if hasattr(first, "shape") and len(shape) >= 2 and len(first.shape) >= 2 and first.shape[-2] != shape[1]:
        raise ValueError(f"fit(carry_state=True): this batch has {shape[1]} sequences but the state carried "
                         f"from the previous batch has {first.shape[-2]}; carry_state needs the same batch "
                         "size in every batch (drop or pad the last one)")


def _unpack(batch):
    if hasattr(batch, "lengths") and hasattr(batch, "mask"):   # a padded data.Batch
        raise TypeError(
            "fit: got a padded Batch (data.make_batches). fit and backprop_through_time train full-length, "
            "time-major (xs, targets) pairs and have no lengths or mask to pass on, so the padding would "
            "count as data. For padded batches write the loop: model(b.inputs, lengths=b.lengths) and "
            "tg.cross_entropy(..., mask=b.mask), as examples/pos_tagging.py and sentiment.py do")
    try:
        xs, targets = batch
    except (TypeError, ValueError):
        raise TypeError("fit: every batch must be a pair (xs, targets) of time-major arrays or Tensors") from None
    return xs, targets


def evaluate(model, data, loss_fn, *, carry_state=False, epoch=0, traced=None):
    """Mean of ``loss_fn`` over the batches of ``data``, full sequences, no gradients.

    ``traced``: True, or a ``TracedWindows`` of this model and loss (``fit``
    passes its own), replays each batch's forward from a schedule traced in
    eval mode.
    """
    from .bptt import _as_model_input, _parameters_of, truncate

    params = _parameters_of(model, None)
    if traced is True:
        from .traced_windows import TracedWindows
        traced = TracedWindows(model, loss_fn)
    total, count, state = 0.0, 0, None
    was_training = getattr(model, "training", None)
    if was_training is not None:
        model.eval()  # dropout off while measuring
    try:
        if traced:
            traced.check(model, loss_fn)  # once: the model and its modes stay as they are below
        with no_grad():
            for batch in _epoch_data(data, epoch):
                xs, targets = _unpack(batch)
                xs = xs if isinstance(xs, Tensor) else Tensor(_as_model_input(xs, params))
                start = state if carry_state else None
                if traced:
                    loss, state = traced.evaluate(xs, targets, start)
                else:
                    outputs, new_state = model(xs, start)
                    state = truncate(new_state)
                    loss = loss_fn(outputs, targets)
                total += float(loss.item())
                count += 1
    finally:
        if was_training is not None:
            model.train(was_training)
    return total / count if count else None


# ---------------------------------------------------------------------------
# Ctrl-C: stop after the current batch
# ---------------------------------------------------------------------------
class _StopRequest:
    def __init__(self, notify):
        self.requested = False
        self.notify = notify
        self._old = None

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            self._old = signal.signal(signal.SIGINT, self._handler)
        return self

    def _handler(self, signum, frame):
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        self.notify("interrupt: stopping after this batch (press Ctrl-C again to abort now)")

    def __exit__(self, *exc):
        if self._old is not None:
            signal.signal(signal.SIGINT, self._old)
        return False


def _call_hook(callback, name, info):
    hook = getattr(callback, name, None)
    if hook is None and name == "on_epoch_end" and callable(callback):
        hook = callback
    return bool(hook(info)) if hook is not None else False


class GradientFlowRecorder:
    """Callback: ‖∂L/∂h(t)‖ on a fixed probe batch, one row per epoch (or every n batches).

    ``recorder.matrix`` (updates × T) is what ``tinygraph.viz.plot_gradient_heatmap`` draws.
    """

    def __init__(self, xs, targets, loss_fn, every_batches=None):
        self.xs, self.targets, self.loss_fn = xs, targets, loss_fn
        self.every_batches = every_batches
        self.rows = []

    def _record(self, model):
        from .bptt import gradient_flow
        self.rows.append(gradient_flow(model, self.xs, self.targets, self.loss_fn))

    def on_batch_end(self, info):
        if self.every_batches and info["batches_done"] % self.every_batches == 0:
            self._record(info["model"])

    def on_epoch_end(self, info):
        if not self.every_batches:
            self._record(info["model"])

    @property
    def matrix(self):
        return np.array(self.rows)


# ---------------------------------------------------------------------------
# fit
# ---------------------------------------------------------------------------
def _open_epoch(data, run):
    """(iterator over the epoch's remaining batches, number of batches or None).

    Resuming mid-epoch replays the epoch's data order: the generators are set
    back to where they were when the epoch began, the batches already done
    are drawn and skipped, then the generators continue from the checkpoint.
    """
    rng_now = _rng_state()
    mid_epoch = run.batch > 0
    if mid_epoch:
        _set_rng_state(run.epoch_rng)
    else:
        run.epoch_rng = rng_now
    epoch_data = _epoch_data(data, run.epoch)
    total = len(epoch_data) if hasattr(epoch_data, "__len__") else None
    batches = iter(epoch_data)
    for _ in range(run.batch):
        next(batches)
    if mid_epoch:
        _set_rng_state(rng_now)
    return batches, total


def _record_updates(history, result, epoch, detector, clipping):
    """Append one history row per optimizer update; warn (once per call site) on explosions."""
    for loss, norm, clipped in zip(result.window_losses, result.update_grad_norms, result.clipped):
        history.step_loss.append(loss)
        history.step_grad_norm.append(norm)
        history.step_clipped.append(bool(clipped))
        history.step_epoch.append(epoch)
        message = detector.check(norm, len(history.step_loss), clipping)
        if message:
            if not history.warnings:
                warnings.warn(message, ExplodingGradientWarning, stacklevel=3)
            history.warnings.append(message)


@dataclass
class _Progress:
    """Where the run stands; exactly what a checkpoint stores besides model and optimizer."""

    epoch: int = 0             # completed epochs
    batch: int = 0             # completed batches in the current epoch
    batches_done: int = 0      # completed batches overall
    epoch_loss_sum: float = 0.0
    epoch_updates: int = 0
    carry: object = None
    rng: dict = None
    epoch_rng: dict = None
    history: dict = None


def fit(model, data, loss_fn, optimizer, *, epochs, k1=None, k2=None, clip_norm=None,
        clip_value=None, eval_data=None, callbacks=(), checkpoint=None, checkpoint_every=None,
        resume=False, progress=True, carry_state=False, explode_factor=100.0, traced=False):
    """Train ``model`` with (truncated) BPTT; returns a :class:`History`.

    Every batch goes through ``backprop_through_time`` (full BPTT, or
    TBPTT(k1, k2)) with one optimizer step per window, clipped by norm
    (``clip_norm``) and/or value (``clip_value``). ``carry_state=True``
    carries the final state of a batch into the next (contiguous text);
    otherwise every batch starts from the model's initial state.

    ``callbacks``: objects with optional ``on_batch_end(info)`` and
    ``on_epoch_end(info)`` methods (a plain callable is an epoch-end hook);
    a hook returning True stops training after saving. ``info`` holds
    ``model``, ``optimizer``, ``history``, ``batches_done`` and ``epoch``
    (1-based: the epoch running, or at its end the one just finished), plus
    ``loss`` and ``result`` after a batch and ``metrics`` after an epoch. ``checkpoint``: path
    of an ``.npz`` written after every epoch (and every ``checkpoint_every``
    batches, and on interrupt); ``resume=True`` continues from it when it
    exists. ``explode_factor``: warn when the gradient norm exceeds this many
    times its recent median. ``traced=True`` records each window's training
    step once and replays it (``tinygraph.traced_windows``): the same updates
    without the per-op Python cost, and decomposed layers replay their fused
    kernels; ``eval_data`` is measured with a forward replay too. It refuses
    models that draw random numbers (``Dropout`` in training mode).
    """
    from .bptt import backprop_through_time

    if optimizer is None:
        raise TypeError("fit: needs an optimizer (e.g. tg.optim.Adam(model.parameters())); "
                        "use backprop_through_time to only accumulate gradients")
    if epochs < 0:
        raise ValueError(f"fit: epochs must be >= 0, got {epochs}")
    if not callable(data) and iter(data) is data and epochs > 1:
        raise TypeError(
            "fit: data is a one-shot iterator, which would be empty after the first epoch; "
            "pass a list of batches or a callable data(epoch) that returns a fresh iterator"
        )
    if checkpoint is not None and not hasattr(model, "state_dict"):
        raise TypeError("fit: checkpoints need a model with state_dict()/load_state_dict() (a tg.nn.Module)")
    callbacks = list(callbacks) if isinstance(callbacks, (list, tuple)) else [callbacks]
    if traced is True:  # (a TracedWindows passed in is used as it is)
        from .traced_windows import TracedWindows
        traced = TracedWindows(model, loss_fn)
    history = History()
    run = _Progress()
    notes = ProgressBar()  # rare messages (resume, interrupt) are shown even without bars

    if resume and checkpoint is not None and os.path.exists(checkpoint):
        saved = load_checkpoint(checkpoint, model, optimizer)
        run = _Progress(**{k: saved[k] for k in _Progress.__dataclass_fields__ if k in saved})
        history = History(**run.history)
        history.interrupted = False  # this run goes on
        _set_rng_state(run.rng)
        notes.write(f"resumed from {checkpoint}: epoch {run.epoch}, batch {run.batch}")
    elif resume and checkpoint is not None:
        notes.write(f"resume: no checkpoint at {checkpoint} yet, starting from scratch")

    detector = _ExplosionDetector(explode_factor, history.step_grad_norm[-20:])
    clipping = clip_norm is not None or clip_value is not None
    consistent = True  # False while a batch is half done (its checkpoint would not resume exactly)

    def save():
        if checkpoint is None:
            return
        run.rng = _rng_state()
        run.history = asdict(history)
        # not asdict(run): it would deep-copy the carried Tensors
        save_checkpoint(checkpoint, model, optimizer,
                        {name: getattr(run, name) for name in _Progress.__dataclass_fields__})

    def hooks(name, **extra):
        info = {"model": model, "optimizer": optimizer, "history": history, "epoch": run.epoch + 1,
                "batches_done": run.batches_done, **extra}
        return any([_call_hook(cb, name, info) for cb in callbacks])  # every hook runs

    if hasattr(model, "train"):
        model.train()
    stop = _StopRequest(notes.write)
    try:
        with stop:
            while run.epoch < epochs:
                start = time.perf_counter()
                batches, total = _open_epoch(data, run)
                bar = ProgressBar(total, desc=f"epoch {run.epoch + 1}/{epochs}", enabled=bool(progress))
                bar.count = run.batch
                for batch in batches:
                    xs, targets = _unpack(batch)
                    _check_carry(run.carry, xs)
                    consistent = False
                    result = backprop_through_time(
                        model, xs, targets, loss_fn, state=run.carry, k1=k1, k2=k2, optimizer=optimizer,
                        clip_norm=clip_norm, clip_value=clip_value, traced=traced)
                    _record_updates(history, result, run.epoch + 1, detector, clipping)
                    run.carry = result.state if carry_state else None
                    run.batch += 1
                    run.batches_done += 1
                    run.epoch_loss_sum += sum(result.window_losses)
                    run.epoch_updates += len(result.window_losses)
                    consistent = True
                    batch_loss = result.loss / len(result.window_losses)
                    bar.update(loss=batch_loss, ppl=perplexity(batch_loss), gnorm=history.step_grad_norm[-1])
                    stopping = hooks("on_batch_end", loss=batch_loss, result=result)
                    if checkpoint_every and run.batches_done % checkpoint_every == 0:
                        save()
                    if stopping or stop.requested:
                        bar.close()
                        raise KeyboardInterrupt
                train_loss = run.epoch_loss_sum / run.epoch_updates if run.epoch_updates else None
                eval_loss = evaluate(model, eval_data, loss_fn, carry_state=carry_state, epoch=run.epoch,
                                     traced=traced) if eval_data is not None else None
                metrics = {"epoch": run.epoch + 1, "train_loss": train_loss,
                           "train_perplexity": perplexity(train_loss), "eval_loss": eval_loss,
                           "eval_perplexity": perplexity(eval_loss), "updates": run.epoch_updates,
                           "seconds": time.perf_counter() - start}
                bar.close(loss=train_loss, eval=eval_loss)
                history.epochs.append(metrics)
                run.epoch += 1
                run.batch, run.carry = 0, None  # a new epoch starts the data (and the state) over
                run.epoch_loss_sum, run.epoch_updates = 0.0, 0
                stopping = hooks("on_epoch_end", metrics=metrics, epoch=run.epoch)  # the epoch just done
                save()
                if stopping or stop.requested:   # a Ctrl-C during the evaluation counts too
                    raise KeyboardInterrupt
    except KeyboardInterrupt:
        history.interrupted = True
        if consistent:
            save()
            where = f"; checkpoint saved to {checkpoint}, resume with resume=True" if checkpoint else ""
            at = (f"after epoch {run.epoch}" if run.batch == 0 and run.epoch > 0
                  else f"at epoch {run.epoch + 1}, batch {run.batch}")
            notes.write(f"stopped {at}{where}")
        else:
            notes.write("aborted in the middle of a batch; the last checkpoint written (if any) is intact")
    return history
