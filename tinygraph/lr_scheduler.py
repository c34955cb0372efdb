"""Learning-rate schedules: the optimizer's ``lr`` as a function of the epoch, as in PyTorch.

    opt = optim.SGD(model.parameters(), lr=0.5)
    schedule = optim.StepLR(opt, step_size=10, gamma=0.5)
    for epoch in range(30):
        ...train one epoch...
        schedule.step()                      # lr for the next epoch

    bptt.fit(model, data, loss_fn, opt, epochs=30, callbacks=[schedule])   # the same, from fit

A schedule is also a ``fit`` callback: at the end of each epoch it sets the
rate for the next one, counting epochs as ``fit`` reports them, so a run
resumed from a checkpoint continues the schedule where it was (the
optimizer's saved state holds the rate, the checkpoint the epoch).
``ReduceLROnPlateau`` reads the epoch's ``eval_loss`` (the ``train_loss``
without ``eval_data``).

Each schedule steps the current rate as PyTorch does (so a loaded rate is
kept and schedules compose), checked against ``torch.optim.lr_scheduler``
and against each schedule's closed form in the tests.
"""
from __future__ import annotations

import math

__all__ = ["LRSchedule", "StepLR", "MultiStepLR", "ExponentialLR", "CosineAnnealingLR", "LambdaLR",
           "ReduceLROnPlateau"]


class LRSchedule:
    """Base class: ``step()`` multiplies the optimizer's current ``lr`` by the schedule's factor.

    As in PyTorch, the rate is changed from what it is now, not recomputed
    from the first one: a rate loaded with ``load_state_dict`` is kept, and
    two schedules on one optimizer multiply. ``LambdaLR`` is the exception
    (PyTorch's too): it sets ``base_lr · lr_lambda(epoch)``.
    """

    def __init__(self, optimizer):
        if not hasattr(optimizer, "lr"):
            raise TypeError(f"{type(self).__name__}: expected an optimizer with an lr, got {type(optimizer).__name__}")
        self.optimizer = optimizer
        self.base_lr = float(optimizer.lr)
        self.last_epoch = 0

    def next_lr(self, lr, epoch) -> float:
        """The rate for ``epoch`` from ``lr``, the rate of the epoch before."""
        raise NotImplementedError

    def step(self):
        """Move to the next epoch and set its rate on the optimizer."""
        self.last_epoch += 1
        self.optimizer.lr = self.next_lr(float(self.optimizer.lr), self.last_epoch)

    def get_last_lr(self):
        """The rate in use, as a one-item list (PyTorch's form: one entry per parameter group)."""
        return [float(self.optimizer.lr)]

    def on_epoch_end(self, info):
        """``fit`` callback: the rate for the epoch after ``info["epoch"]`` (never stops training).

        A fresh schedule in a resumed run takes the optimizer's loaded rate as
        that of the epoch before, and goes on from there.
        """
        self.last_epoch = int(info["epoch"]) - 1
        self.step()
        return False

    def state_dict(self):
        return {"last_epoch": self.last_epoch, "base_lr": self.base_lr}

    def load_state_dict(self, state):
        self.last_epoch, self.base_lr = int(state["last_epoch"]), float(state["base_lr"])
        return self

    def __repr__(self):
        return f"{type(self).__name__}(lr={self.optimizer.lr}, last_epoch={self.last_epoch})"


def _positive_int(name, value, schedule):
    if isinstance(value, bool) or int(value) != value or value < 1:
        raise ValueError(f"{schedule}: {name} must be a positive integer, got {value!r}")
    return int(value)


class StepLR(LRSchedule):
    """lr · gamma every ``step_size`` epochs: base · gamma^(epoch // step_size) when alone."""

    def __init__(self, optimizer, step_size, gamma=0.1):
        super().__init__(optimizer)
        self.step_size, self.gamma = _positive_int("step_size", step_size, "StepLR"), float(gamma)

    def next_lr(self, lr, epoch):
        return lr * self.gamma if epoch % self.step_size == 0 else lr


class MultiStepLR(LRSchedule):
    """lr · gamma at each milestone epoch: base · gamma^(milestones reached) when alone."""

    def __init__(self, optimizer, milestones, gamma=0.1):
        super().__init__(optimizer)
        self.milestones, self.gamma = sorted(int(m) for m in milestones), float(gamma)

    def next_lr(self, lr, epoch):
        return lr * self.gamma ** self.milestones.count(epoch)


class ExponentialLR(LRSchedule):
    """lr · gamma every epoch: base · gamma^epoch when alone."""

    def __init__(self, optimizer, gamma):
        super().__init__(optimizer)
        self.gamma = float(gamma)

    def next_lr(self, lr, epoch):
        return lr * self.gamma


class CosineAnnealingLR(LRSchedule):
    """eta_min + (base − eta_min) (1 + cos(π epoch / T_max)) / 2 when alone (SGDR without restarts).

    Stepped as PyTorch steps it, from the current rate, so it composes.
    """

    def __init__(self, optimizer, T_max, eta_min=0.0):
        super().__init__(optimizer)
        self.T_max, self.eta_min = _positive_int("T_max", T_max, "CosineAnnealingLR"), float(eta_min)

    def next_lr(self, lr, epoch):
        T, low = self.T_max, self.eta_min
        if (epoch - 1 - T) % (2 * T) == 0:   # past a minimum: the recursion below would divide by 0
            return lr + (self.base_lr - low) * (1 - math.cos(math.pi / T)) / 2
        return low + (lr - low) * (1 + math.cos(math.pi * epoch / T)) / (1 + math.cos(math.pi * (epoch - 1) / T))


class LambdaLR(LRSchedule):
    """lr = base · lr_lambda(epoch) (set, not multiplied: PyTorch's LambdaLR)."""

    def __init__(self, optimizer, lr_lambda):
        super().__init__(optimizer)
        if not callable(lr_lambda):
            raise TypeError(f"LambdaLR: lr_lambda must be callable, got {type(lr_lambda).__name__}")
        self.lr_lambda = lr_lambda
        self.optimizer.lr = self.next_lr(self.base_lr, 0)   # as PyTorch: the factor applies from the first epoch

    def next_lr(self, lr, epoch):
        return self.base_lr * float(self.lr_lambda(epoch))


class ReduceLROnPlateau:
    """Multiply lr by ``factor`` when a metric has not improved for ``patience`` epochs (PyTorch's rule).

    ``step(metric)`` once per epoch. Improvement is ``metric < best · (1 −
    threshold)`` (mode "min", threshold_mode "rel"; "max" and "abs" as in
    PyTorch). After a reduction, ``cooldown`` epochs pass before counting
    again; lr never goes below ``min_lr``, and changes smaller than ``eps``
    are skipped. As a ``fit`` callback it reads ``eval_loss`` (else
    ``train_loss``). Its counters are not part of a ``fit`` checkpoint.
    """

    def __init__(self, optimizer, mode="min", factor=0.1, patience=10, threshold=1e-4, threshold_mode="rel",
                 cooldown=0, min_lr=0.0, eps=1e-8):
        if mode not in ("min", "max") or threshold_mode not in ("rel", "abs"):
            raise ValueError(f"ReduceLROnPlateau: mode must be 'min' or 'max' and threshold_mode 'rel' or "
                             f"'abs', got {mode!r} and {threshold_mode!r}")
        if not 0.0 < factor < 1.0:
            raise ValueError(f"ReduceLROnPlateau: factor must lie in (0, 1), got {factor}")
        self.optimizer = optimizer
        self.mode, self.factor, self.patience = mode, float(factor), int(patience)
        self.threshold, self.threshold_mode = float(threshold), threshold_mode
        self.cooldown, self.min_lr, self.eps = int(cooldown), float(min_lr), float(eps)
        self.best = math.inf if mode == "min" else -math.inf
        self.num_bad_epochs = self.cooldown_counter = 0
        self.last_epoch = 0

    def _better(self, value):
        if self.mode == "min":
            bound = self.best * (1 - self.threshold) if self.threshold_mode == "rel" else self.best - self.threshold
            return value < bound
        bound = self.best * (1 + self.threshold) if self.threshold_mode == "rel" else self.best + self.threshold
        return value > bound

    def step(self, metric):
        """Record one epoch's ``metric``; reduce the rate after ``patience`` epochs without improvement."""
        value = float(metric)
        self.last_epoch += 1
        if self._better(value):
            self.best, self.num_bad_epochs = value, 0
        else:
            self.num_bad_epochs += 1
        if self.cooldown_counter > 0:
            self.cooldown_counter -= 1
            self.num_bad_epochs = 0
        if self.num_bad_epochs > self.patience:
            new = max(self.optimizer.lr * self.factor, self.min_lr)
            if self.optimizer.lr - new > self.eps:
                self.optimizer.lr = new
            self.cooldown_counter, self.num_bad_epochs = self.cooldown, 0

    def get_last_lr(self):
        return [float(self.optimizer.lr)]

    def on_epoch_end(self, info):
        """``fit`` callback: steps on the epoch's eval loss (its train loss without eval data)."""
        metrics = info.get("metrics", {})
        value = metrics.get("eval_loss")
        value = metrics.get("train_loss") if value is None else value
        if value is not None:   # an epoch without batches has no loss to judge
            self.step(value)
        return False

    def __repr__(self):
        return f"ReduceLROnPlateau(lr={self.optimizer.lr}, best={self.best}, bad epochs={self.num_bad_epochs})"
