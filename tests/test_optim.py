"""Optimizers against their update equations (and torch.optim), clipping, checkpoints."""
import math

import numpy as np
import pytest

import tinygraph as tg
from tinygraph import nn, optim

A = np.array([[3.0, 0.5, 0.0], [0.5, 2.0, 0.3], [0.0, 0.3, 1.0]])
TARGET = np.array([1.0, -2.0, 0.5])
START = np.array([0.3, 0.8, -1.2])


def quadratic_grad(p):
    """Gradient of f(p) = 1/2 (p - t)^T A (p - t)."""
    return A @ (p - TARGET)


def run(make_opt, steps=6):
    """Take ``steps`` optimizer steps on the quadratic; returns the trajectory."""
    p = nn.Parameter(START.copy())
    opt = make_opt([p])
    path = []
    for _ in range(steps):
        opt.zero_grad()
        diff = p - TARGET
        loss = 0.5 * tg.sum(diff * tg.matmul(diff, A))
        loss.backward()
        opt.step()
        path.append(p.numpy().copy())
    return np.array(path)


def reference_sgd(lr, momentum=0.0, nesterov=False, wd=0.0, steps=6):
    p, buf, path = START.copy(), None, []
    for _ in range(steps):
        g = quadratic_grad(p) + wd * p
        if momentum:
            buf = g.copy() if buf is None else momentum * buf + g
            g = g + momentum * buf if nesterov else buf
        p = p - lr * g
        path.append(p)
    return np.array(path)


def reference_adam(lr, b1, b2, eps, wd=0.0, decoupled=False, steps=6):
    p, m, v, path = START.copy(), 0.0, 0.0, []
    for t in range(1, steps + 1):
        g = quadratic_grad(p)
        if decoupled:
            p = p * (1 - lr * wd)
        else:
            g = g + wd * p
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g * g
        m_hat, v_hat = m / (1 - b1 ** t), v / (1 - b2 ** t)
        p = p - lr * m_hat / (np.sqrt(v_hat) + eps)
        path.append(p)
    return np.array(path)


def reference_rmsprop(lr, alpha, eps, momentum=0.0, centered=False, wd=0.0, steps=6):
    p, s, gbar, buf, path = START.copy(), 0.0, 0.0, 0.0, []
    for _ in range(steps):
        g = quadratic_grad(p) + wd * p
        s = alpha * s + (1 - alpha) * g * g
        if centered:
            gbar = alpha * gbar + (1 - alpha) * g
            avg = np.sqrt(s - gbar ** 2) + eps
        else:
            avg = np.sqrt(s) + eps
        if momentum:
            buf = momentum * buf + g / avg
            p = p - lr * buf
        else:
            p = p - lr * g / avg
        path.append(p)
    return np.array(path)


def reference_adagrad(lr, lr_decay=0.0, eps=1e-10, init_acc=0.0, wd=0.0, steps=6):
    p, s, path = START.copy(), init_acc, []
    for t in range(1, steps + 1):
        g = quadratic_grad(p) + wd * p
        s = s + g * g
        p = p - lr / (1 + (t - 1) * lr_decay) * g / (np.sqrt(s) + eps)
        path.append(p)
    return np.array(path)


CASES = [
    ("sgd", lambda ps: optim.SGD(ps, lr=0.1), lambda: reference_sgd(0.1)),
    ("sgd-momentum-wd", lambda ps: optim.SGD(ps, lr=0.05, momentum=0.9, weight_decay=0.1),
     lambda: reference_sgd(0.05, 0.9, wd=0.1)),
    ("sgd-nesterov", lambda ps: optim.SGD(ps, lr=0.05, momentum=0.8, nesterov=True),
     lambda: reference_sgd(0.05, 0.8, nesterov=True)),
    ("adam", lambda ps: optim.Adam(ps, lr=0.1), lambda: reference_adam(0.1, 0.9, 0.999, 1e-8)),
    ("adam-wd", lambda ps: optim.Adam(ps, lr=0.05, betas=(0.8, 0.99), eps=1e-6, weight_decay=0.2),
     lambda: reference_adam(0.05, 0.8, 0.99, 1e-6, wd=0.2)),
    ("adamw", lambda ps: optim.AdamW(ps, lr=0.05, weight_decay=0.1),
     lambda: reference_adam(0.05, 0.9, 0.999, 1e-8, wd=0.1, decoupled=True)),
    ("rmsprop", lambda ps: optim.RMSprop(ps, lr=0.01), lambda: reference_rmsprop(0.01, 0.99, 1e-8)),
    ("rmsprop-momentum-centered", lambda ps: optim.RMSprop(ps, lr=0.01, alpha=0.9, momentum=0.5,
                                                           centered=True, weight_decay=0.1),
     lambda: reference_rmsprop(0.01, 0.9, 1e-8, momentum=0.5, centered=True, wd=0.1)),
    ("adagrad", lambda ps: optim.Adagrad(ps, lr=0.1, lr_decay=0.01, initial_accumulator_value=0.1),
     lambda: reference_adagrad(0.1, 0.01, init_acc=0.1)),
]


@pytest.mark.parametrize("name, make, reference", CASES, ids=[c[0] for c in CASES])
def test_update_equations(name, make, reference):
    np.testing.assert_allclose(run(make), reference(), rtol=1e-12, atol=1e-14)


TORCH_CASES = [
    (lambda ps: optim.SGD(ps, lr=0.05, momentum=0.9, nesterov=True, weight_decay=0.01),
     "SGD", dict(lr=0.05, momentum=0.9, nesterov=True, weight_decay=0.01)),
    (lambda ps: optim.Adam(ps, lr=0.05, weight_decay=0.01), "Adam", dict(lr=0.05, weight_decay=0.01)),
    (lambda ps: optim.AdamW(ps, lr=0.05), "AdamW", dict(lr=0.05)),
    (lambda ps: optim.RMSprop(ps, lr=0.01, momentum=0.3, centered=True), "RMSprop",
     dict(lr=0.01, momentum=0.3, centered=True)),
    (lambda ps: optim.Adagrad(ps, lr=0.1, lr_decay=0.01), "Adagrad", dict(lr=0.1, lr_decay=0.01)),
]


@pytest.mark.parametrize("make, torch_name, kwargs", TORCH_CASES, ids=[c[1] for c in TORCH_CASES])
def test_matches_torch_optim(make, torch_name, kwargs):
    torch = pytest.importorskip("torch")
    p = torch.tensor(START.copy(), requires_grad=True)
    opt = getattr(torch.optim, torch_name)([p], **kwargs)
    At, Tt = torch.tensor(A), torch.tensor(TARGET)
    path = []
    for _ in range(6):
        opt.zero_grad()
        d = p - Tt
        (0.5 * d @ At @ d).backward()
        opt.step()
        path.append(p.detach().numpy().copy())
    np.testing.assert_allclose(run(make), np.array(path), rtol=1e-10, atol=1e-12)


def test_step_skips_params_without_grad_and_zero_grad_clears():
    a, b = nn.Parameter(np.ones(2)), nn.Parameter(np.ones(2))
    opt = optim.SGD([a, b], lr=0.5)
    tg.sum(a * 3).backward()
    opt.step()
    np.testing.assert_array_equal(a.numpy(), [-0.5, -0.5])
    np.testing.assert_array_equal(b.numpy(), [1, 1])
    opt.zero_grad()
    assert a.grad is None


def test_update_is_in_place():
    p = nn.Parameter(np.ones(3))
    before = p.data
    opt = optim.Adam([p], lr=0.1)
    tg.sum(p * p).backward()
    opt.step()
    assert p.data is before and not np.allclose(before, 1)


def test_invalid_hyperparameters_raise():
    p = [nn.Parameter(np.ones(2))]
    with pytest.raises(ValueError):
        optim.SGD(p, lr=-1)
    with pytest.raises(ValueError, match="Nesterov"):
        optim.SGD(p, lr=0.1, nesterov=True)
    with pytest.raises(ValueError):
        optim.Adam(p, betas=(1.0, 0.9))
    with pytest.raises(ValueError, match="empty"):
        optim.SGD([], lr=0.1)


@pytest.mark.parametrize("make", [c[1] for c in CASES], ids=[c[0] for c in CASES])
def test_checkpoint_resume_is_exact(make, tmp_path):
    """3 steps, save (npz), load into a fresh optimizer, 3 more == 6 uninterrupted steps."""
    whole = run(make, steps=6)
    p = nn.Parameter(START.copy())
    opt = make([p])

    def step(opt, p):
        opt.zero_grad()
        p.grad = tg.Tensor(quadratic_grad(p.numpy()))
        opt.step()

    for _ in range(3):
        step(opt, p)
    tg.save(opt.state_dict(), tmp_path / "opt.npz")
    tg.save({"p": p}, tmp_path / "p.npz")
    q = nn.Parameter(tg.load(tmp_path / "p.npz")["p"])
    fresh = make([q])
    fresh.load_state_dict(tg.load(tmp_path / "opt.npz"))
    for _ in range(3):
        step(fresh, q)
    np.testing.assert_allclose(q.numpy(), whole[-1], rtol=1e-12, atol=1e-14)


def test_load_state_dict_validates_before_changing():
    p = nn.Parameter(np.ones(3))
    opt = optim.SGD([p], lr=0.1, momentum=0.9)
    p.grad = tg.Tensor(np.ones(3))
    opt.step()
    good = opt.state_dict()
    bad = dict(good, **{"state.0.momentum_buffer": np.zeros(4), "hp.lr": 5.0})
    with pytest.raises(ValueError, match="momentum_buffer"):
        opt.load_state_dict(bad)
    assert opt.lr == 0.1
    with pytest.raises(ValueError, match="SGD"):
        optim.Adam([p]).load_state_dict(good)
    assert all(isinstance(v, (np.ndarray, int, float, bool, str)) for v in good.values())


# -- clipping ---------------------------------------------------------------

def test_clip_grad_norm_returns_pre_clip_norm_and_rescales():
    a, b = nn.Parameter(np.zeros(2)), nn.Parameter(np.zeros(1))
    a.grad, b.grad = tg.Tensor(np.array([3.0, 4.0])), tg.Tensor(np.array([12.0]))
    total = optim.clip_grad_norm([a, b], max_norm=1.3)
    assert total == pytest.approx(13.0)
    new = np.concatenate([a.grad.numpy(), b.grad.numpy()])
    assert np.linalg.norm(new) == pytest.approx(1.3, rel=1e-6)
    np.testing.assert_allclose(new / np.linalg.norm(new), np.array([3, 4, 12]) / 13)


def test_clip_grad_norm_leaves_small_gradients_alone():
    a = nn.Parameter(np.zeros(2))
    a.grad = tg.Tensor(np.array([0.3, 0.4]))
    assert optim.clip_grad_norm([a], max_norm=1.0) == pytest.approx(0.5)
    np.testing.assert_array_equal(a.grad.numpy(), [0.3, 0.4])
    assert optim.clip_grad_norm([a], 0.1, norm_type=math.inf) == pytest.approx(0.4)


def test_clip_grad_value():
    a = nn.Parameter(np.zeros(3))
    a.grad = tg.Tensor(np.array([-5.0, 0.2, 3.0]))
    optim.clip_grad_value([a], 1.0)
    np.testing.assert_array_equal(a.grad.numpy(), [-1.0, 0.2, 1.0])


def test_clip_matches_torch():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(0)
    grads = [rng.standard_normal((3, 2)) * 5, rng.standard_normal(4)]
    ours = [nn.Parameter(np.zeros_like(g)) for g in grads]
    for p, g in zip(ours, grads):
        p.grad = tg.Tensor(g.copy())
    theirs = [torch.zeros(g.shape, dtype=torch.float64, requires_grad=True) for g in grads]
    for p, g in zip(theirs, grads):
        p.grad = torch.tensor(g.copy())
    n1 = optim.clip_grad_norm(ours, 2.0)
    n2 = torch.nn.utils.clip_grad_norm_(theirs, 2.0)
    assert n1 == pytest.approx(float(n2), rel=1e-12)
    for p, q in zip(ours, theirs):
        np.testing.assert_allclose(p.grad.numpy(), q.grad.numpy(), rtol=1e-12)


def test_sgd_takes_only_lr_and_momentum_by_position():
    p = nn.Parameter(START.copy())
    with pytest.raises(TypeError):
        optim.SGD([p], 0.1, 0.9, True)  # would have set dampening=True, not nesterov
    opt = optim.SGD([p], 0.1, 0.9, nesterov=True, weight_decay=0.01)
    assert (opt.nesterov, opt.dampening, opt.weight_decay) == (True, 0.0, 0.01)
    np.testing.assert_allclose(run(lambda ps: optim.SGD(ps, 0.1, 0.9, nesterov=True)),
                               reference_sgd(0.1, 0.9, nesterov=True))


def test_grad_norm_is_the_one_norm_used_by_clipping_and_bptt():
    from tinygraph import bptt
    a, b, none = nn.Parameter(np.zeros(3)), nn.Parameter(np.zeros((2, 2))), nn.Parameter(np.zeros(1))
    a.grad, b.grad = tg.tensor([3.0, 0.0, -4.0]), tg.tensor([[0.0, 12.0], [0.0, 0.0]])
    assert bptt.grad_norm is optim.grad_norm
    assert optim.grad_norm([a, b, none]) == pytest.approx(13.0)
    assert optim.grad_norm([a, b], math.inf) == pytest.approx(12.0)
    assert optim.grad_norm([a, b], 1) == pytest.approx(19.0)
    assert optim.grad_norm([none]) == 0.0
    assert optim.clip_grad_norm([a, b], 6.5) == pytest.approx(13.0)
    np.testing.assert_allclose(a.grad.numpy(), [1.5, 0.0, -2.0], rtol=1e-6)


# -- 0-d parameters (a learned temperature): the same updates as a one-element one -----------
def _scalar_path(make, shape, steps, resume_at=None, tmp_path=None):
    """Parameter values of ``steps`` updates on loss 3 p + p^2 from p = 1, of the given shape;
    with ``resume_at``, the optimizer's state goes through an .npz file into a fresh one there."""
    p = nn.Parameter(np.ones(shape))
    opt = make([p])
    path = []
    for k in range(steps):
        if k == resume_at:
            tg.save(opt.state_dict(), tmp_path / "opt.npz")
            opt = make([p])
            opt.load_state_dict(tg.load(tmp_path / "opt.npz"))
        opt.zero_grad()
        (p * 3.0 + p * p).sum().backward()
        opt.step()
        path.append(float(p.numpy().reshape(-1)[0]))
    return path


@pytest.mark.parametrize("make", [c[1] for c in CASES], ids=[c[0] for c in CASES])
def test_zero_d_parameter_updates_like_a_one_element_one(make):
    np.testing.assert_allclose(_scalar_path(make, (), 5), _scalar_path(make, (1,), 5), rtol=1e-13)


@pytest.mark.parametrize("make", [c[1] for c in CASES], ids=[c[0] for c in CASES])
def test_zero_d_parameter_resumes_exactly(make, tmp_path):
    np.testing.assert_allclose(_scalar_path(make, (), 6, resume_at=3, tmp_path=tmp_path),
                               _scalar_path(make, (), 6), rtol=1e-13)


@pytest.mark.parametrize("make", [lambda ps: optim.Adam(ps, weight_decay=-0.1),
                                  lambda ps: optim.RMSprop(ps, weight_decay=-0.1),
                                  lambda ps: optim.Adagrad(ps, weight_decay=-0.1),
                                  lambda ps: optim.AdamW(ps, weight_decay=-0.1)])
def test_negative_weight_decay_is_refused_by_every_optimizer(make):
    with pytest.raises(ValueError, match="weight_decay"):
        make([nn.Parameter(np.ones(2))])


def test_a_parameter_given_twice_is_refused():
    p = nn.Parameter(np.ones(2))
    with pytest.raises(ValueError, match="parameter 1 .* same object as parameter 0"):
        optim.SGD([p, p], lr=0.1)


# -- float32 stays float32 (a silent float64 doubles the memory traffic) --------------------
def test_numpy_float64_hyperparameters_and_clip_bounds_keep_float32_state():
    p = nn.Parameter(np.ones(4, np.float32))
    opt = optim.SGD([p], lr=np.float64(0.1), momentum=0.9, weight_decay=np.float64(1e-4))
    tg.sum(p * p).backward()
    optim.clip_grad_value([p], np.float64(0.5))
    assert p.grad.dtype == np.float32
    opt.step()
    opt.lr = np.float64(0.05)                  # a schedule setting it later, too
    opt.step()
    assert p.dtype == np.float32 and opt.state[0]["momentum_buffer"].dtype == np.float32
    assert type(opt.lr) is float
    adam = optim.Adam([p], lr=np.float32(1e-3), betas=(np.float64(0.9), 0.999), eps=np.float64(1e-8))
    adam.step()
    assert all(v.dtype == np.float32 for v in adam.state[0].values() if hasattr(v, "dtype"))


def test_grad_norm_is_float64_accurate_on_float32_gradients():
    g = np.full(1_000_000, 0.1, np.float32)
    p = nn.Parameter(np.zeros_like(g))
    p.grad = tg.Tensor(g)
    # each square is rounded to float32 (rel 6e-8), the sum runs in float64: a float32 running sum
    # over a million terms would be off by about 2e-5
    exact = float(np.sqrt((g.astype(np.float64) ** 2).sum()))
    assert optim.grad_norm([p]) == pytest.approx(exact, rel=1e-7)


def test_clipping_an_exploding_float32_gradient_scales_it_rather_than_zeroing_it():
    p = nn.Parameter(np.zeros(2, np.float32))
    p.grad = tg.Tensor(np.array([3e19, -3e19], np.float32))   # squares overflow float32
    norm = optim.clip_grad_norm([p], max_norm=1.0)
    assert np.isfinite(norm) and norm == pytest.approx(3e19 * np.sqrt(2), rel=1e-6)
    np.testing.assert_allclose(p.grad.numpy(), [2 ** -0.5, -2 ** -0.5], rtol=1e-5)


def test_the_norm_of_a_vanishing_float32_gradient_is_not_rounded_to_zero():
    p = nn.Parameter(np.zeros(100, np.float32))
    p.grad = tg.Tensor(np.full(100, 1e-25, np.float32))       # squares underflow float32
    assert optim.grad_norm([p]) == pytest.approx(1e-24, rel=1e-6)
