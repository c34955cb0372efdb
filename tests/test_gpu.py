"""The gradient checks on every device: "cpu" always, "cuda" when CuPy sees a GPU.

The cuda cases carry the ``gpu`` marker (``pytest -m gpu`` runs them) and are
skipped with a reason on machines without CuPy or a CUDA device.
"""
import numpy as np
import pytest

import tinygraph as tg

from conftest import DEVICES, requires_gpu


def on(device, array, requires_grad=True):
    return tg.tensor(np.asarray(array, dtype=np.float64), device=device, requires_grad=requires_grad)


def weighted(fn, out_shape, device, seed=0):
    """fn followed by a fixed random weighting, so no gradient is trivially zero."""
    weight = on(device, np.random.default_rng(seed).standard_normal(out_shape) + 0.5, requires_grad=False)
    return lambda *xs: fn(*xs) * weight


R = np.random.default_rng(7)
A23, B3, B23 = R.standard_normal((2, 3)), R.standard_normal(3), R.standard_normal((2, 3))
POS23 = np.abs(R.standard_normal((2, 3))) + 0.5
A34 = R.standard_normal((3, 4))

# (name, function, input arrays): one line per op; broadcasting included
CASES = [
    ("add broadcast", tg.add, [A23, B3]),
    ("sub", tg.sub, [A23, B23]),
    ("mul broadcast", tg.mul, [A23, B3]),
    ("div", tg.div, [A23, POS23]),
    ("pow", tg.pow, [POS23, B23]),
    ("pow scalar", lambda x: x ** 2.5, [POS23]),
    ("exp", tg.exp, [A23]),
    ("log", tg.log, [POS23]),
    ("sqrt", tg.sqrt, [POS23]),
    ("abs", tg.abs, [POS23 - 2.2]),
    ("tanh", tg.tanh, [A23]),
    ("sigmoid", tg.sigmoid, [A23]),
    ("relu", tg.relu, [POS23 - 1.1]),
    ("maximum", tg.maximum, [A23, B23]),
    ("minimum", tg.minimum, [A23, B3]),
    ("clip", lambda x: tg.clip(x, -0.5, 0.5), [A23 + 0.01]),
    ("clip upper only", lambda x: tg.clip(x, None, 0.2), [A23 + 0.01]),
    ("where", lambda x, y: tg.where(x.data > 0, x, y), [A23, B23]),
    ("sum axis", lambda x: x.sum(axis=0), [A23]),
    ("mean keepdims", lambda x: x.mean(axis=1, keepdims=True), [A23]),
    ("max", lambda x: x.max(axis=-1), [A23]),
    ("reshape", lambda x: x.reshape(3, 2), [A23]),
    ("transpose", lambda x: x.T, [A23]),
    ("swapaxes", lambda x: tg.swapaxes(x, 0, 1), [A23]),
    ("broadcast_to", lambda x: tg.broadcast_to(x, (2, 3)), [B3]),
    ("matmul", tg.matmul, [A23, A34]),
    ("matmul 1-D", tg.matmul, [B3, A34]),
    ("getitem slice", lambda x: x[:, 1:], [A23]),
    ("getitem repeated", lambda x: x[[0, 0, 1]], [A23]),
    ("take", lambda x: tg.take(x, [2, 2, 0], axis=1), [A23]),
    ("take_along_axis", lambda x: tg.ops.take_along_axis(x, np.array([[2, 2], [0, 1]]), axis=1), [A23]),
    ("concat", lambda x, y: tg.concat([x, y], axis=0), [A23, B23]),
    ("stack", lambda x, y: tg.stack([x, y], axis=1), [A23, B23]),
    ("split", lambda x: tg.split(x, [1], axis=1)[1], [A23]),
    ("softmax", lambda x: tg.softmax(x, axis=-1), [A23]),
    ("log_softmax", lambda x: tg.log_softmax(x, axis=0), [A23]),
    ("pick", lambda x: tg.ops.pick(x, np.array([2, 0])), [A23]),
    ("cross_entropy", lambda x: tg.cross_entropy(x, np.array([2, 0]), reduction="none"), [A23]),
    ("cross_entropy mask", lambda x: tg.cross_entropy(x, np.array([2, 0]), mask=np.array([1, 0])), [A23]),
    ("mse_loss", lambda x, y: tg.mse_loss(x, y, reduction="sum"), [A23, B23]),
]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("name,fn,arrays", CASES, ids=[c[0] for c in CASES])
def test_gradcheck_on_device(device, name, fn, arrays):
    inputs = [on(device, a) for a in arrays]
    out = fn(*inputs)
    assert out.device.split(":")[0] == device
    assert tg.gradcheck(weighted(fn, out.shape, device), inputs)


@pytest.mark.parametrize("device", DEVICES)
def test_forward_values_match_numpy_on_device(device):
    x = on(device, A23)
    np.testing.assert_allclose(tg.tanh(x @ on(device, A34)).numpy(), np.tanh(A23 @ A34))
    np.testing.assert_allclose(tg.softmax(x).numpy(),
                               np.exp(A23) / np.exp(A23).sum(axis=-1, keepdims=True))


@pytest.mark.parametrize("device", DEVICES)
def test_hessian_vector_product_on_device(device):
    v = np.random.default_rng(1).standard_normal((2, 3))

    def f(x):
        return (tg.softmax(tg.tanh(x), axis=-1) ** 2).sum()

    x = on(device, A23)
    g, = tg.grad(f(x), [x], create_graph=True)
    hv, = tg.grad((g * on(device, v, requires_grad=False)).sum(), [x])
    assert hv.device.split(":")[0] == device

    def grad_at(point):
        p = on(device, point)
        return tg.grad(f(p), [p])[0].numpy()

    eps = 1e-5
    fd = (grad_at(A23 + eps * v) - grad_at(A23 - eps * v)) / (2 * eps)
    np.testing.assert_allclose(hv.numpy(), fd, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("device", DEVICES)
def test_default_dtype_and_device_of_factories(device):
    for t in (tg.zeros(2, 3, device=device), tg.randn(2, device=device), tg.ones((2,), device=device)):
        assert t.dtype == np.float32
        assert t.device.split(":")[0] == device


@pytest.mark.parametrize("device", DEVICES)
def test_backward_accumulates_on_device(device):
    w = on(device, [0.5, -0.25])
    h = on(device, [0.0, 0.0], requires_grad=False)
    for _ in range(5):
        h = tg.tanh(h * w + 0.3)
    h.sum().backward()
    assert w.grad.device == w.device
    w_cpu = on("cpu", [0.5, -0.25])
    h = on("cpu", [0.0, 0.0], requires_grad=False)
    for _ in range(5):
        h = tg.tanh(h * w_cpu + 0.3)
    h.sum().backward()
    np.testing.assert_allclose(w.grad.numpy(), w_cpu.grad.numpy(), rtol=1e-12)


@pytest.mark.gpu
@requires_gpu
def test_to_cuda_round_trip_and_gradient_flows_back_to_cpu():
    x = on("cpu", A23)
    y = x.to("cuda")
    assert y.device == "cuda:0" and y.requires_grad
    back = (y * 2.0).to("cpu")
    assert back.device == "cpu"
    np.testing.assert_array_equal(back.numpy(), 2.0 * A23)
    back.sum().backward()
    assert x.grad.device == "cpu"
    np.testing.assert_array_equal(x.grad.numpy(), np.full((2, 3), 2.0))
    assert tg.tensor(A23).to("cuda").to("cpu").numpy().tolist() == A23.tolist()


@pytest.mark.gpu
@requires_gpu
def test_mixing_devices_is_a_clear_error():
    a = tg.ones(2, device="cuda")
    b = tg.ones(2)
    with pytest.raises(RuntimeError) as info:
        a + b
    text = str(info.value)
    assert text.startswith("add:") and "cuda:0" in text and "cpu" in text and ".to(" in text


@pytest.mark.parametrize("device", DEVICES)
def test_per_step_indexing_gradient_on_device(device):
    # the raw walk's sparse getitem gradients (scatter-adds on the device) against the
    # dense recorded walk, with repeated rows so the add must accumulate
    xs = np.random.default_rng(2).standard_normal((5, 3, 2))

    def loss(x):
        h = on(device, np.zeros((3, 2)), requires_grad=False)
        for t in range(5):
            h = tg.tanh(x[t][[0, 2, 0]] + h * 0.5)
        return (h * h).sum()

    x = on(device, xs)
    sparse, = tg.grad(loss(x), [x])
    dense, = tg.grad(loss(x), [x], create_graph=True)
    assert sparse.device == x.device
    np.testing.assert_allclose(sparse.numpy(), dense.numpy(), rtol=1e-13, atol=1e-15)


@pytest.mark.parametrize("device", DEVICES)
def test_float32_sigmoid_tail_on_device(device):
    x = tg.tensor(np.array([-20.0, -17.0, 17.0]), dtype="float32", device=device)
    expected = np.array([np.exp(-20.0) / (1 + np.exp(-20.0)), np.exp(-17.0) / (1 + np.exp(-17.0)),
                         1 / (1 + np.exp(-17.0))])
    np.testing.assert_allclose(tg.sigmoid(x).numpy(), expected, rtol=1e-6)


def test_scatter_add_prefers_the_modules_add_at(monkeypatch):
    # CuPy has cupy.add.at (cupyx.scatter_add is deprecated): any module with add.at gets it
    from tinygraph import backend, ops

    calls = []

    class FakeAdd:
        @staticmethod
        def at(z, index, values):
            calls.append(index)
            np.add.at(z, index, values)

    class FakeModule:
        add = FakeAdd

    monkeypatch.setattr(backend, "array_module", lambda *arrays: FakeModule)
    z = np.zeros(3)
    ops._scatter_add(z, (np.array([0, 2, 0]),), np.array([1.0, 2.0, 3.0]))
    assert len(calls) == 1
    np.testing.assert_array_equal(z, [4.0, 0.0, 2.0])


# -- whole models on the GPU: the same numbers as on the CPU ------------------

def _build_model(name):
    from tinygraph import models
    tg.manual_seed(0)
    if name == "ElmanRNN":
        return models.ElmanRNN(3, 4, 5).double()
    if name == "RNN-bidirectional":
        return models.RNN(3, 4, num_layers=2, bidirectional=True).double()
    return getattr(models, name)(3, 4, num_layers=2).double()


@pytest.mark.gpu
@requires_gpu
@pytest.mark.parametrize("name", ["ElmanRNN", "LSTM", "GRU", "RNN-bidirectional"])
def test_models_train_the_same_on_cpu_and_cuda(name):
    from tinygraph import backend, optim
    x = np.random.default_rng(0).standard_normal((6, 2, 3))
    runs = []
    for device in ("cpu", "cuda"):
        model = _build_model(name).to(device)
        out, _ = model(tg.tensor(x).to(device))
        assert out.device.startswith(device)
        loss = (out * out).sum()
        loss.backward()
        grads = [p.grad.numpy() for p in model.parameters()]
        optim.Adam(model.parameters(), lr=0.1).step()
        runs.append((out.numpy(), grads, [backend.as_host(p.data) for p in model.parameters()]))
    (out_cpu, g_cpu, p_cpu), (out_gpu, g_gpu, p_gpu) = runs
    np.testing.assert_allclose(out_gpu, out_cpu, atol=1e-10)
    for a, b in zip(g_gpu + p_gpu, g_cpu + p_cpu):
        np.testing.assert_allclose(a, b, atol=1e-9)


@pytest.mark.gpu
@requires_gpu
def test_truncated_bptt_language_model_on_cuda_matches_cpu():
    from tinygraph import bptt, optim
    from tinygraph.models import LanguageModel
    rng = np.random.default_rng(1)
    tokens = rng.integers(0, 7, size=(13, 3))
    losses = []
    for device in ("cpu", "cuda"):
        tg.manual_seed(0)
        model = LanguageModel(7, 5, 6, cell="lstm").double().to(device)
        opt = optim.SGD(model.parameters(), lr=0.5)
        result = bptt.backprop_through_time(
            model, tokens[:-1], tokens[1:],
            lambda logits, y: tg.cross_entropy(logits, y, reduction="sum"),
            k1=4, optimizer=opt, clip_norm=1.0)
        losses.append((result.loss, [p.numpy() for p in model.parameters()]))
    assert losses[1][0] == pytest.approx(losses[0][0], rel=1e-9)
    for a, b in zip(losses[1][1], losses[0][1]):
        np.testing.assert_allclose(a, b, atol=1e-9)


@pytest.mark.parametrize("device", DEVICES)
def test_traced_truncated_bptt_on_device_matches_eager_cpu(device):
    """fit's traced windows (traced=True) on the device give the eager CPU run's updates;
    the decomposed layer replays its fused kernel there."""
    from tinygraph import bptt, optim
    from tinygraph.models import LanguageModel
    from tinygraph.traced_windows import TracedWindows
    rng = np.random.default_rng(2)
    batches = [rng.integers(0, 7, size=(15, 3)) for _ in range(2)]  # host token ids, new every call
    runs = []
    for where, traced in (("cpu", False), (device, True)):
        tg.manual_seed(0)
        model = LanguageModel(7, 5, 6, cell="lstm").double().to(where)
        loss_fn = lambda logits, y: tg.cross_entropy(logits, y, reduction="sum")  # noqa: E731
        tracer = TracedWindows(model, loss_fn) if traced else False
        opt = optim.SGD(model.parameters(), lr=0.5)
        traces = []
        for tokens in batches:
            result = bptt.backprop_through_time(model, tokens[:-1], tokens[1:], loss_fn, k1=4, k2=6,
                                                optimizer=opt, clip_norm=1.0, traced=tracer)
            traces.append(tracer.traces if traced else 0)
        runs.append((result.loss, [p.numpy() for p in model.parameters()], tracer, traces))
    assert runs[1][0] == pytest.approx(runs[0][0], rel=1e-9)
    for a, b in zip(runs[1][1], runs[0][1]):
        np.testing.assert_allclose(a, b, atol=1e-9)
    assert runs[1][2].fused.get("lstm_sweep", 0) >= 1
    assert runs[1][3][0] == runs[1][3][1]  # new ids replay, they do not key new traces


@pytest.mark.gpu
@requires_gpu
def test_host_ids_into_a_gpu_embedding_are_not_frozen_into_a_trace():
    """Ids copied to the device inside a traced loss are a host read: new ids must not replay the old ones."""
    from tinygraph.nn import Embedding
    tg.manual_seed(0)
    table = Embedding(5, 3, dtype="float64").to("cuda")
    step = tg.traced_step(lambda ids: (table(ids) ** 2).sum(), table.parameters())
    for ids in (np.array([0, 1, 2]), np.array([3, 4, 4])):
        table.zero_grad()
        loss = step(ids)
        want = float((table.weight.numpy()[ids] ** 2).sum())
        assert loss.item() == pytest.approx(want, rel=1e-12)


@pytest.mark.parametrize("fused", [True, False])
@pytest.mark.parametrize("device", DEVICES)
def test_traced_step_and_fused_cross_entropy_on_device(device, fused):
    """tg.traced_step replays a fused LSTM and the fused loss on the device, as eager does;
    a decomposed one replays the same kernel (trace-time fusion)."""
    from tinygraph.models import LSTM
    tg.manual_seed(0)
    model = LSTM(3, 4, fused=fused, dtype="float64")
    if device != "cpu":
        model.to(device)
    rng = np.random.default_rng(1)
    x = tg.tensor(rng.standard_normal((5, 2, 3)), device=device)
    y = rng.integers(0, 4, 10)

    def loss_fn(a, b):
        out, _ = model(a)
        return tg.cross_entropy(out.reshape(-1, 4), b, reduction="sum")

    model.zero_grad()
    eager = loss_fn(x, y)
    eager.backward()
    expected = [p.grad.numpy() for p in model.parameters()]
    model.zero_grad()
    step = tg.traced_step(loss_fn, model.parameters())
    for _ in range(2):  # trace, then replay
        model.zero_grad()
        loss = step(x, tg.tensor(y, device=device))
    assert loss.device.split(":")[0] == device and step.traces == 1
    assert step.fused == ({} if fused else {"lstm_sweep": 1})
    assert loss.item() == pytest.approx(eager.item(), rel=1e-12)
    for p, e in zip(model.parameters(), expected):
        np.testing.assert_allclose(p.grad.numpy(), e, rtol=1e-10, atol=1e-12)
