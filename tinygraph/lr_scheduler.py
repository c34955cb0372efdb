"""Learning-rate schedules: the optimizer's ``lr`` as a function of the epoch, as in PyTorch.

    opt = optim.SGD(model.parameters(), lr=0.5)
    schedule = optim.StepLR(opt, step_size=10, gamma=0.5)
    for epoch in range(30):
        ...train one epoch...
        schedule.step()                      # lr for the next epoch

    bptt.fit(model, data, loss_fn, opt, epochs=30, callbacks=[schedule])   # the same, from fit

A schedule is also a ``fit`` callback: at the end of each epoch it sets the
rate for the epoch ``fit`` reports as done, so a run resumed from a
checkpoint continues the schedule where it was (the optimizer's saved state
holds the rate, the checkpoint the epoch). ``ReduceLROnPlateau`` reads the
epoch's ``eval_loss`` (the ``train_loss`` without ``eval_data``).

Each schedule's rate is a closed form of the epoch, checked against
``torch.optim.lr_scheduler`` in the tests.
"""
from __future__ import annotations

import math

__all__ = ["LRSchedule", "StepLR", "MultiStepLR", "ExponentialLR", "CosineAnnealingLR", "LambdaLR",
           "ReduceLROnPlateau"]


class LRSchedule:
    """Base class: ``lr_at(epoch)`` from the rate the optimizer had when the schedule was made."""

    def __init__(self, optimizer):
        if not hasattr(optimizer, "lr"):
            raise TypeError(f"{type(self).__name__}: expected an optimizer with an lr, got {type(optimizer).__name__}")
        self.optimizer = optimizer
        self.base_lr = float(optimizer.lr)
        self.last_epoch = 0

    def lr_at(self, epoch) -> float:
        raise NotImplementedError

    def step(self):
        """Move to the next epoch and set its rate on the optimizer."""
        self.last_epoch += 1
        self.optimizer.lr = self.lr_at(self.last_epoch)

    def get_last_lr(self):
        """The rate in use, as a one-item list (PyTorch's form: one entry per parameter group)."""
        return [float(self.optimizer.lr)]

    def on_epoch_end(self, info):
        """``fit`` callback: the rate for the epoch after ``info["epoch"]`` (never stops training)."""
        self.last_epoch = int(info["epoch"])
        self.optimizer.lr = self.lr_at(self.last_epoch)
        return False

    def state_dict(self):
        return {"last_epoch": self.last_epoch, "base_lr": self.base_lr}

    def load_state_dict(self, state):
        self.last_epoch, self.base_lr = int(state["last_epoch"]), float(state["base_lr"])
        return self

    def __repr__(self):
        return f"{type(self).__name__}(base_lr={self.base_lr}, last_epoch={self.last_epoch})"


def _positive(name, value, schedule):
    if value <= 0:
        raise ValueError(f"{schedule}: {name} must be > 0, got {value}")


class StepLR(LRSchedule):
    """lr = base · gamma^(epoch // step_size)."""

    def __init__(self, optimizer, step_size, gamma=0.1):
        super().__init__(optimizer)
        _positive("step_size", step_size, "StepLR")
        self.step_size, self.gamma = int(step_size), float(gamma)

    def lr_at(self, epoch):
        return self.base_lr * self.gamma ** (epoch // self.step_size)


class MultiStepLR(LRSchedule):
    """lr = base · gamma^(number of milestones reached)."""

    def __init__(self, optimizer, milestones, gamma=0.1):
        super().__init__(optimizer)
        self.milestones, self.gamma = sorted(int(m) for m in milestones), float(gamma)

    def lr_at(self, epoch):
        return self.base_lr * self.gamma ** sum(epoch >= m for m in self.milestones)


class ExponentialLR(LRSchedule):
    """lr = base · gamma^epoch."""

    def __init__(self, optimizer, gamma):
        super().__init__(optimizer)
        self.gamma = float(gamma)

    def lr_at(self, epoch):
        return self.base_lr * self.gamma ** epoch


class CosineAnnealingLR(LRSchedule):
    """lr = eta_min + (base − eta_min) (1 + cos(π epoch / T_max)) / 2 (SGDR without restarts)."""

    def __init__(self, optimizer, T_max, eta_min=0.0):
        super().__init__(optimizer)
        _positive("T_max", T_max, "CosineAnnealingLR")
        self.T_max, self.eta_min = int(T_max), float(eta_min)

    def lr_at(self, epoch):
        return self.eta_min + (self.base_lr - self.eta_min) * (1 + math.cos(math.pi * epoch / self.T_max)) / 2


class LambdaLR(LRSchedule):
    """lr = base · lr_lambda(epoch)."""

    def __init__(self, optimizer, lr_lambda):
        super().__init__(optimizer)
        if not callable(lr_lambda):
            raise TypeError(f"LambdaLR: lr_lambda must be callable, got {type(lr_lambda).__name__}")
        self.lr_lambda = lr_lambda
        self.optimizer.lr = self.lr_at(0)   # as PyTorch: the factor applies from the first epoch

    def lr_at(self, epoch):
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
        self.step(metrics.get("train_loss") if value is None else value)
        return False

    def __repr__(self):
        return f"ReduceLROnPlateau(lr={self.optimizer.lr}, best={self.best}, bad epochs={self.num_bad_epochs})"
