"""Learning-rate schedules: against torch.optim.lr_scheduler, their closed forms, and inside fit."""
import math

import numpy as np
import pytest

import tinygraph as tg
from tinygraph import bptt, nn, optim
from tinygraph.models import ElmanRNN

SCHEDULES = [
    ("StepLR", dict(step_size=3, gamma=0.5), lambda base, e: base * 0.5 ** (e // 3)),
    ("MultiStepLR", dict(milestones=[2, 5], gamma=0.1), lambda base, e: base * 0.1 ** ((e >= 2) + (e >= 5))),
    ("ExponentialLR", dict(gamma=0.9), lambda base, e: base * 0.9 ** e),
    ("CosineAnnealingLR", dict(T_max=5, eta_min=0.01),
     lambda base, e: 0.01 + (base - 0.01) * (1 + math.cos(math.pi * e / 5)) / 2),
    ("LambdaLR", dict(lr_lambda=lambda e: 1.0 / (1 + e)), lambda base, e: base / (1 + e)),
]


def _rates(make, epochs=10):
    opt = optim.SGD([nn.Parameter(np.zeros(2))], lr=0.5)
    schedule = make(opt)
    rates = [opt.lr]
    for _ in range(epochs):
        schedule.step()
        rates.append(opt.lr)
    return rates


@pytest.mark.parametrize("name, kwargs, closed_form", SCHEDULES, ids=[s[0] for s in SCHEDULES])
def test_schedule_follows_its_closed_form(name, kwargs, closed_form):
    rates = _rates(lambda opt: getattr(optim, name)(opt, **kwargs))
    np.testing.assert_allclose(rates, [closed_form(0.5, e) for e in range(11)], rtol=1e-12)


@pytest.mark.parametrize("name, kwargs, closed_form", SCHEDULES, ids=[s[0] for s in SCHEDULES])
def test_schedule_matches_pytorch(name, kwargs, closed_form):
    torch = pytest.importorskip("torch")
    p = torch.nn.Parameter(torch.zeros(2))
    opt = torch.optim.SGD([p], lr=0.5)
    schedule = getattr(torch.optim.lr_scheduler, name)(opt, **kwargs)
    rates = [opt.param_groups[0]["lr"]]
    for _ in range(10):
        opt.step()
        schedule.step()
        rates.append(opt.param_groups[0]["lr"])
    np.testing.assert_allclose(_rates(lambda o: getattr(optim, name)(o, **kwargs)), rates, rtol=1e-9)


def test_reduce_on_plateau_matches_pytorch():
    torch = pytest.importorskip("torch")
    metrics = [1.0, 0.9, 0.95, 0.95, 0.95, 0.89] + [0.95] * 16    # improvements, then a long plateau
    p = torch.nn.Parameter(torch.zeros(2))
    topt = torch.optim.SGD([p], lr=0.5)
    tsched = torch.optim.lr_scheduler.ReduceLROnPlateau(topt, factor=0.5, patience=2, cooldown=1, min_lr=0.05)
    opt = optim.SGD([nn.Parameter(np.zeros(2))], lr=0.5)
    sched = optim.ReduceLROnPlateau(opt, factor=0.5, patience=2, cooldown=1, min_lr=0.05)
    ours, theirs = [], []
    for m in metrics:
        tsched.step(m)
        sched.step(m)
        theirs.append(topt.param_groups[0]["lr"])
        ours.append(opt.lr)
    np.testing.assert_allclose(ours, theirs, rtol=1e-12)
    assert min(ours) == 0.05 and ours[0] == 0.5


def test_a_schedule_as_a_fit_callback_continues_after_a_resume(tmp_path):
    rng = np.random.default_rng(0)
    batches = [(rng.standard_normal((6, 2, 3)), rng.integers(0, 2, (6, 2))) for _ in range(2)]

    def run(epochs, resume):
        tg.manual_seed(0)
        model = ElmanRNN(3, 4, 2)
        opt = optim.SGD(model.parameters(), lr=0.5)
        schedule = optim.StepLR(opt, step_size=1, gamma=0.5)
        bptt.fit(model, batches, tg.cross_entropy, opt, epochs=epochs, callbacks=[schedule],
                 checkpoint=tmp_path / "run.npz", resume=resume, progress=False)
        return opt.lr, model

    lr_whole, whole = run(4, resume=False)
    (tmp_path / "run.npz").unlink()
    run(2, resume=False)                       # stop after two epochs...
    lr_resumed, resumed = run(4, resume=True)  # ...and a fresh schedule resumes from the checkpoint
    assert lr_whole == lr_resumed == 0.5 * 0.5 ** 4
    for p, q in zip(whole.parameters(), resumed.parameters()):
        np.testing.assert_array_equal(p.numpy(), q.numpy())


def test_plateau_callback_reads_the_eval_loss():
    opt = optim.SGD([nn.Parameter(np.zeros(2))], lr=1.0)
    sched = optim.ReduceLROnPlateau(opt, patience=0, factor=0.5)
    for loss in (1.0, 1.0, 1.0):
        sched.on_epoch_end({"epoch": 1, "metrics": {"eval_loss": loss, "train_loss": 0.0}})
    assert opt.lr == 0.25                      # two epochs without improvement of the eval loss


def test_bad_schedule_arguments_are_named():
    opt = optim.SGD([nn.Parameter(np.zeros(2))], lr=0.1)
    for bad in (0, 0.5, 2.5):
        with pytest.raises(ValueError, match="StepLR: step_size must be a positive integer"):
            optim.StepLR(opt, step_size=bad)
    with pytest.raises(ValueError, match="T_max must be a positive integer"):
        optim.CosineAnnealingLR(opt, T_max=2.5)
    with pytest.raises(ValueError, match="factor must lie in"):
        optim.ReduceLROnPlateau(opt, factor=1.5)
    with pytest.raises(TypeError, match="expected an optimizer"):
        optim.ExponentialLR(object(), gamma=0.9)


def test_schedules_step_from_the_current_rate_like_pytorch():
    """A rate loaded into the optimizer is kept, and two schedules on one optimizer multiply."""
    torch = pytest.importorskip("torch")
    p = torch.nn.Parameter(torch.zeros(2))
    topt = torch.optim.SGD([p], lr=0.5)
    chain = [torch.optim.lr_scheduler.ExponentialLR(topt, 0.9), torch.optim.lr_scheduler.StepLR(topt, 2, 0.1)]
    opt = optim.SGD([nn.Parameter(np.zeros(2))], lr=0.5)
    ours = [optim.ExponentialLR(opt, 0.9), optim.StepLR(opt, 2, 0.1)]
    for epoch in range(6):
        if epoch == 3:   # a rate loaded from elsewhere mid-run
            topt.param_groups[0]["lr"] = 0.01
            opt.load_state_dict(dict(opt.state_dict(), **{"hp.lr": 0.01}))
        topt.step()
        for s in chain:
            s.step()
        for s in ours:
            s.step()
        assert opt.lr == pytest.approx(topt.param_groups[0]["lr"], rel=1e-12)


def test_cosine_over_three_periods_matches_pytorch():
    torch = pytest.importorskip("torch")
    p = torch.nn.Parameter(torch.zeros(2))
    topt = torch.optim.SGD([p], lr=0.5)
    tsched = torch.optim.lr_scheduler.CosineAnnealingLR(topt, T_max=4, eta_min=0.05)
    opt = optim.SGD([nn.Parameter(np.zeros(2))], lr=0.5)
    sched = optim.CosineAnnealingLR(opt, T_max=4, eta_min=0.05)
    for _ in range(12):
        topt.step()
        tsched.step()
        sched.step()
        assert opt.lr == pytest.approx(topt.param_groups[0]["lr"], rel=1e-9, abs=1e-12)
