"""Module machinery, Linear, Embedding, Dropout, LayerNorm and the initialisers."""
import numpy as np
import pytest

import tinygraph as tg
from tinygraph import init, nn

from conftest import requires_gpu


@pytest.fixture(autouse=True)
def _seed():
    tg.manual_seed(0)


def f64(rng, *shape):
    return tg.tensor(rng.standard_normal(shape), dtype="float64", requires_grad=True)


class TwoLayer(nn.Module):
    def __init__(self):
        super().__init__()
        self.first = nn.Linear(3, 4)
        self.second = nn.Linear(4, 2, bias=False)
        self.scale = nn.Parameter(np.ones(2, dtype=np.float32))

    def forward(self, x):
        return self.second(tg.tanh(self.first(x))) * self.scale


def test_module_registers_parameters_and_submodules_in_order():
    m = TwoLayer()
    assert [n for n, _ in m.named_parameters()] == ["scale", "first.weight", "first.bias", "second.weight"]
    assert m.num_parameters() == 2 + 12 + 4 + 8
    assert m.first.weight.name == "weight" and m.scale.name == "scale"


def test_module_call_records_attribute_scopes():
    m = TwoLayer()
    y = m(tg.randn(5, 3, requires_grad=True))
    scopes = {n.scope for n in tg.Graph.from_outputs(y).nodes if not n.is_leaf}
    assert {"TwoLayer", "TwoLayer.first", "TwoLayer.second"} <= scopes


def test_linear_is_x_w_transpose_plus_b(rng):
    lin = nn.Linear(3, 2).double()
    assert lin.weight.shape == (2, 3) and lin.bias.shape == (2,)
    x = rng.standard_normal((4, 3))
    np.testing.assert_allclose(lin(x).numpy(), x @ lin.weight.numpy().T + lin.bias.numpy(), atol=1e-12)
    bound = 1 / np.sqrt(3)
    assert np.all(np.abs(lin.weight.numpy()) <= bound)


def test_linear_gradients(rng):
    lin = nn.Linear(3, 2).double()
    x = f64(rng, 2, 5, 3)
    tg.gradcheck(lambda x, *_: lin(x), [x, *lin.parameters()])


def test_embedding_looks_up_rows_and_adds_repeated_gradients():
    emb = nn.Embedding(5, 3).double()
    ids = np.array([[1, 1], [4, 0]])
    out = emb(ids)
    np.testing.assert_array_equal(out.numpy(), emb.weight.numpy()[ids])
    tg.sum(out).backward()
    counts = np.bincount(ids.ravel(), minlength=5)
    np.testing.assert_array_equal(emb.weight.grad.numpy(), np.repeat(counts[:, None], 3, axis=1))
    with pytest.raises(IndexError, match=r"\[0, 5\)"):
        emb(np.array([5]))
    with pytest.raises(TypeError, match="integers"):
        emb(np.array([0.5]))


def test_dropout_scales_kept_units_and_is_identity_in_eval():
    drop = nn.Dropout(0.25)
    x = tg.ones(2000, dtype="float64", requires_grad=True)
    y = drop(x).numpy()
    kept = y != 0
    np.testing.assert_allclose(y[kept], 1 / 0.75)
    assert 0.70 < kept.mean() < 0.80
    tg.sum(drop(x)).backward()  # the mask is a constant: gradient is mask / (1 - p)
    assert set(np.unique(x.grad.numpy())) <= {0.0, 1 / 0.75}
    drop.eval()
    assert drop(x) is x
    with pytest.raises(ValueError):
        nn.Dropout(1.0)


def test_dropout_reproducible_with_seed():
    tg.manual_seed(3)
    a = nn.Dropout(0.5)(tg.ones(50)).numpy()
    tg.manual_seed(3)
    b = nn.Dropout(0.5)(tg.ones(50)).numpy()
    np.testing.assert_array_equal(a, b)


def test_layer_norm_matches_definition_and_gradients(rng):
    ln = nn.LayerNorm(4).double()
    ln.weight.data = rng.standard_normal(4)
    ln.bias.data = rng.standard_normal(4)
    x = rng.standard_normal((3, 4)) * 5 + 2
    mean, var = x.mean(-1, keepdims=True), x.var(-1, keepdims=True)
    ref = (x - mean) / np.sqrt(var + 1e-5) * ln.weight.numpy() + ln.bias.numpy()
    np.testing.assert_allclose(ln(x).numpy(), ref, atol=1e-12)
    xt = f64(rng, 2, 3, 4)
    tg.gradcheck(lambda x, *_: ln(x), [xt, *ln.parameters()])


def test_sequential_and_module_list():
    seq = nn.Sequential(nn.Linear(3, 4), nn.LayerNorm(4))
    assert len(seq) == 2 and isinstance(seq[1], nn.LayerNorm)
    assert list(seq.state_dict()) == ["0.weight", "0.bias", "1.weight", "1.bias"]
    assert seq(tg.randn(2, 3)).shape == (2, 4)


def test_state_dict_round_trip_and_validation():
    a, b = TwoLayer(), TwoLayer()
    b.load_state_dict(a.state_dict())
    for (n, p), (_, q) in zip(a.named_parameters(), b.named_parameters()):
        np.testing.assert_array_equal(p.numpy(), q.numpy())
    before = b.state_dict()
    bad = a.state_dict()
    bad["first.bias"] = np.zeros(5)
    bad["scale"] = np.full(2, 9.0)
    with pytest.raises(ValueError, match="first.bias"):
        b.load_state_dict(bad)
    for k, v in b.state_dict().items():
        np.testing.assert_array_equal(v, before[k])  # nothing changed, not even 'scale'
    missing = a.state_dict()
    del missing["second.weight"]
    with pytest.raises(KeyError, match="second.weight"):
        b.load_state_dict(missing)


def test_train_eval_zero_grad_double():
    m = TwoLayer()
    m.eval()
    assert not m.training and not m.first.training
    m.train()
    assert m.second.training
    tg.sum(m(tg.randn(2, 3))).backward()
    assert m.first.weight.grad is not None
    m.zero_grad()
    assert all(p.grad is None for p in m.parameters())
    m.double()
    assert all(p.dtype == np.float64 for p in m.parameters())
    y = m(tg.randn(2, 3, dtype="float64"))
    tg.sum(y).backward()
    assert m.first.weight.grad.dtype == np.float64


# -- initialisers -----------------------------------------------------------

def test_uniform_and_normal_use_the_seeded_generator():
    p = nn.Parameter(np.zeros((100, 50), dtype=np.float32))
    tg.manual_seed(1)
    init.uniform_(p, -0.1, 0.1)
    first = p.numpy().copy()
    assert np.all(np.abs(first) <= 0.1) and first.std() > 0.05
    tg.manual_seed(1)
    init.uniform_(p, -0.1, 0.1)
    np.testing.assert_array_equal(p.numpy(), first)
    assert p.dtype == np.float32
    init.normal_(p, 0.0, 2.0)
    assert 1.9 < p.numpy().std() < 2.1


@pytest.mark.parametrize("shape", [(5, 5), (3, 6), (6, 3)])
def test_orthogonal(shape):
    p = nn.Parameter(np.zeros(shape, dtype=np.float64))
    init.orthogonal_(p, gain=2.0)
    w = p.numpy()
    small = min(shape)
    gram = w @ w.T if shape[0] <= shape[1] else w.T @ w
    np.testing.assert_allclose(gram, 4.0 * np.eye(small), atol=1e-10)


def test_identity_and_xavier():
    p = nn.Parameter(np.zeros((4, 4)))
    init.identity_(p)
    np.testing.assert_array_equal(p.numpy(), np.eye(4))
    q = nn.Parameter(np.zeros((300, 200)))
    init.xavier_uniform_(q)
    a = np.sqrt(6 / 500)
    assert np.abs(q.numpy()).max() <= a and np.abs(q.numpy()).max() > 0.9 * a
    init.xavier_normal_(q)
    assert q.numpy().std() == pytest.approx(np.sqrt(2 / 500), rel=0.05)
    with pytest.raises(ValueError, match="2-D"):
        init.orthogonal_(nn.Parameter(np.zeros(3)))


def test_blockwise_init_per_gate():
    p = nn.Parameter(np.zeros((6, 2)))
    init.blockwise_(p, "identity", 3)
    np.testing.assert_array_equal(p.numpy(), np.tile(np.eye(2), (3, 1)))
    with pytest.raises(ValueError, match="gate blocks"):
        init.blockwise_(nn.Parameter(np.zeros((5, 2))), "identity", 3)


def test_embedding_rejects_negative_ids_with_min_and_max():
    with pytest.raises(IndexError, match=r"min -1, max 2"):
        nn.Embedding(5, 3)(np.array([2, -1]))


@pytest.mark.gpu
@requires_gpu
def test_cuda_paths_stay_on_the_device():
    """Dropout draws its mask with CuPy; Embedding, masks, one-hots and grad_norm take CuPy arrays."""
    import cupy

    from tinygraph import optim
    from tinygraph.models import JordanRNN, lengths_to_mask, mask_to_lengths

    drop = nn.Dropout(0.5)
    y = drop(tg.ones(1000, device="cuda"))
    assert isinstance(y.data, cupy.ndarray) and 0.4 < float((y.data != 0).mean()) < 0.6
    emb = nn.Embedding(5, 3).to("cuda")
    assert isinstance(emb(cupy.asarray([[1, 4]])).data, cupy.ndarray)
    with pytest.raises(IndexError, match=r"\[0, 5\)"):
        emb(cupy.asarray([5]))
    assert mask_to_lengths(lengths_to_mask(cupy.asarray([3, 1]), 4)).tolist() == [3, 1]
    model = JordanRNN(2, 3, 4, teacher_forcing=True).to("cuda")
    xs = tg.randn(5, 2, 2).to("cuda")
    out, y_last = model(xs, targets=cupy.asarray(np.ones((5, 2), dtype=np.int64)))
    assert isinstance(y_last.data, cupy.ndarray) and y_last.numpy()[:, 1].tolist() == [1.0, 1.0]
    tg.sum(out).backward()
    norm = optim.grad_norm(model.parameters())
    want = np.sqrt(sum((p.grad.numpy().astype(np.float64) ** 2).sum() for p in model.parameters()))
    assert norm == pytest.approx(want, rel=1e-6)


# -- found in review ------------------------------------------------------------------------
def test_sequential_item_replaced_by_setattr_or_index_is_what_forward_runs():
    seq = nn.Sequential(nn.Linear(2, 3), nn.Linear(3, 1))
    for replace in (lambda new: setattr(seq, "0", new), lambda new: seq.__setitem__(0, new)):
        new = nn.Linear(2, 3)
        replace(new)
        assert seq[0] is new and list(seq)[0] is new and len(seq) == 2
        seq(tg.ones(4, 2)).sum().backward()
        assert new.weight.grad is not None
        assert any(p is new.weight for p in seq.parameters())


def test_a_parameter_cannot_be_replaced_by_a_plain_tensor():
    lin = nn.Linear(2, 2)
    with pytest.raises(TypeError, match="Linear.bias is a Parameter"):
        lin.bias = tg.zeros(2, requires_grad=True)
    order = list(lin.state_dict())
    lin.weight = nn.Parameter(np.zeros((2, 2), np.float32))   # a replacement keeps its place
    assert list(lin.state_dict()) == order
    lin.bias = None
    assert [name for name, _ in lin.named_parameters()] == ["weight"]


def test_layer_norm_takes_pytorchs_tuple_and_dropout_refuses_integers():
    torch = pytest.importorskip("torch")
    x = np.random.default_rng(0).standard_normal((3, 4))
    ours = nn.LayerNorm((4,), dtype="float64")(tg.tensor(x)).numpy()
    np.testing.assert_allclose(ours, torch.nn.LayerNorm((4,)).double()(torch.tensor(x)).detach().numpy(),
                               rtol=1e-12, atol=1e-12)
    with pytest.raises(ValueError, match="last axis"):
        nn.LayerNorm(4)(tg.tensor(1.0))
    with pytest.raises(TypeError, match="floating-point input"):
        nn.Dropout(0.3)(tg.tensor(np.array([1, 2, 3])))


def test_empty_linear_and_fan_of_a_kernel_follow_pytorch():
    with pytest.raises(ValueError, match="Linear: in_features and out_features must be >= 1"):
        nn.Linear(0, 3)
    from tinygraph import init
    assert init.fan_in_and_fan_out((8, 6, 3, 3)) == (54, 72)    # PyTorch: in * field, out * field
    assert init.fan_in_and_fan_out((4, 3)) == (3, 4)
    with pytest.raises(ValueError, match="blocks must be >= 1"):
        init.blockwise_(nn.Parameter(np.zeros((4, 2))), "orthogonal", 0)


def test_to_takes_a_dtype_as_pytorch_does_and_a_checkpoint_loaded_as_a_state_dict_says_what_to_use(tmp_path):
    lin = nn.Linear(2, 2)
    assert lin.to(np.float64).weight.dtype == np.float64 and lin.to("float32").weight.dtype == np.float32
    with pytest.raises(TypeError, match="float dtype"):
        lin.to(np.int32)
    assert tg.ones(2).to("float64").dtype == np.float64
    from tinygraph.training import load_checkpoint, save_checkpoint
    save_checkpoint(tmp_path / "run.npz", lin, None, {"epoch": 1})
    with pytest.raises(KeyError, match="load_checkpoint"):
        lin.load_state_dict(tg.load(tmp_path / "run.npz"))
    load_checkpoint(tmp_path / "run.npz", nn.Linear(2, 2), None)


def test_a_cast_moves_the_gradient_and_keeps_a_frozen_parameters_hooks():
    lin = nn.Linear(2, 1)
    calls = []
    lin.weight.register_hook(lambda g: calls.append(g.dtype) or g)
    (lin(tg.ones(3, 2)) ** 2).sum().backward()
    lin.double()
    assert lin.weight.grad.dtype == np.float64 and lin.bias.grad.dtype == np.float64
    lin.weight.requires_grad_(False)
    lin.float()
    lin.weight.requires_grad_(True)
    lin.zero_grad()
    (lin(tg.ones(3, 2)) ** 2).sum().backward()
    assert calls == [np.float32, np.float32]
