"""RNN, LSTM and GRU match PyTorch's outputs, final states and every gradient.

PyTorch is a test oracle only (skipped when it is not installed); weights
travel as NumPy arrays through ``load_torch_state_dict``.
"""
import numpy as np
import pytest

import tinygraph as tg
from tinygraph.models import GRU, LSTM, RNN

torch = pytest.importorskip("torch")

T, B, D, H = 4, 3, 3, 4
TOLERANCE = {"float32": 1e-5, "float64": 1e-9}
LAYERS = {"rnn": (RNN, torch.nn.RNN), "lstm": (LSTM, torch.nn.LSTM), "gru": (GRU, torch.nn.GRU)}


def ours_from_torch(kind, ref, dtype, **kw):
    ours_cls = LAYERS[kind][0]
    model = ours_cls(D, H, **kw)
    model = model.double() if dtype == "float64" else model.float()
    model.load_torch_state_dict({k: v.detach().numpy() for k, v in ref.state_dict().items()})
    return model


def torch_grads_by_our_name(kind, model, ref):
    """Our parameter name -> the PyTorch gradient(s) it must equal.

    PyTorch's two biases are folded into one ``b``: each has the gradient of
    ``b`` (for the GRU, the n-gate slice of bias_hh is ``b_hn``).
    """
    grads = {k: p.grad.numpy() for k, p in ref.named_parameters()}
    out = {}
    for layer in range(model.num_layers):
        for direction in range(model.num_directions):
            sfx = f"_l{layer}" + ("_reverse" if direction else "")
            name = model.cell_name(layer, direction)
            out[f"{name}.U"] = [grads[f"weight_ih{sfx}"]]
            out[f"{name}.W"] = [grads[f"weight_hh{sfx}"]]
            if kind == "gru":
                out[f"{name}.b"] = [grads[f"bias_ih{sfx}"],
                                    np.concatenate([grads[f"bias_hh{sfx}"][:2 * H], grads[f"bias_ih{sfx}"][2 * H:]])]
                out[f"{name}.b_hn"] = [grads[f"bias_hh{sfx}"][2 * H:]]
            else:
                out[f"{name}.b"] = [grads[f"bias_ih{sfx}"], grads[f"bias_hh{sfx}"]]
    return out


def run_both(kind, dtype, num_layers, bidirectional, lengths=None, seed=0, **options):
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    torch_dtype = getattr(torch, dtype)
    ref = LAYERS[kind][1](D, H, num_layers=num_layers, bidirectional=bidirectional).to(torch_dtype)
    model = ours_from_torch(kind, ref, dtype, num_layers=num_layers, bidirectional=bidirectional, **options)
    dirs = 2 if bidirectional else 1
    x_np = rng.standard_normal((T, B, D)).astype(dtype)
    h0_np = rng.standard_normal((num_layers * dirs, B, H)).astype(dtype)
    c0_np = rng.standard_normal((num_layers * dirs, B, H)).astype(dtype)
    w_out = rng.standard_normal((T, B, H * dirs)).astype(dtype)
    w_h = rng.standard_normal((num_layers * dirs, B, H)).astype(dtype)
    w_c = rng.standard_normal((num_layers * dirs, B, H)).astype(dtype)

    # PyTorch
    xt = torch.tensor(x_np, requires_grad=True)
    h0t = torch.tensor(h0_np, requires_grad=True)
    c0t = torch.tensor(c0_np, requires_grad=True)
    state_t = (h0t, c0t) if kind == "lstm" else h0t
    if lengths is None:
        out_t, fin_t = ref(xt, state_t)
    else:
        packed = torch.nn.utils.rnn.pack_padded_sequence(xt, torch.tensor(lengths), enforce_sorted=False)
        out_p, fin_t = ref(packed, state_t)
        out_t, _ = torch.nn.utils.rnn.pad_packed_sequence(out_p, total_length=T)
    h_t = fin_t[0] if kind == "lstm" else fin_t
    loss_t = (out_t * torch.tensor(w_out)).sum() + (h_t * torch.tensor(w_h)).sum()
    if kind == "lstm":
        loss_t = loss_t + (fin_t[1] * torch.tensor(w_c)).sum()
    loss_t.backward()

    # tinygraph
    x = tg.tensor(x_np, requires_grad=True)
    h0 = tg.tensor(h0_np, requires_grad=True)
    c0 = tg.tensor(c0_np, requires_grad=True)
    out, fin = model(x, (h0, c0) if kind == "lstm" else h0, lengths=lengths)
    h = fin[0] if kind == "lstm" else fin
    loss = tg.sum(out * w_out) + tg.sum(h * w_h)
    if kind == "lstm":
        loss = loss + tg.sum(fin[1] * w_c)
    loss.backward()

    tol = TOLERANCE[dtype]
    close = dict(rtol=tol, atol=tol)
    np.testing.assert_allclose(out.numpy(), out_t.detach().numpy(), **close, err_msg="output")
    np.testing.assert_allclose(h.numpy(), h_t.detach().numpy(), **close, err_msg="h_n")
    if kind == "lstm":
        np.testing.assert_allclose(fin[1].numpy(), fin_t[1].detach().numpy(), **close, err_msg="c_n")
        np.testing.assert_allclose(c0.grad.numpy(), c0t.grad.numpy(), **close, err_msg="grad c0")
    np.testing.assert_allclose(x.grad.numpy(), xt.grad.numpy(), **close, err_msg="grad x")
    np.testing.assert_allclose(h0.grad.numpy(), h0t.grad.numpy(), **close, err_msg="grad h0")
    expected = torch_grads_by_our_name(kind, model, ref)
    assert set(expected) == {n for n, _ in model.named_parameters()}
    for name, p in model.named_parameters():
        for g in expected[name]:
            np.testing.assert_allclose(p.grad.numpy(), g, **close, err_msg=f"grad {name}")


@pytest.mark.parametrize("kind", ["rnn", "lstm", "gru"])
@pytest.mark.parametrize("num_layers, bidirectional", [(1, False), (2, True)])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_matches_torch(kind, num_layers, bidirectional, dtype):
    run_both(kind, dtype, num_layers, bidirectional)


@pytest.mark.parametrize("kind", ["rnn", "lstm", "gru"])
@pytest.mark.parametrize("num_layers, bidirectional", [(2, False), (1, True)])
def test_matches_torch_float64_more_shapes(kind, num_layers, bidirectional):
    run_both(kind, "float64", num_layers, bidirectional, seed=1)


@pytest.mark.parametrize("kind", ["rnn", "lstm", "gru"])
def test_variable_lengths_match_packed_sequences(kind):
    run_both(kind, "float64", 2, True, lengths=[4, 2, 3], seed=2)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_fused_lstm_matches_torch(dtype):
    run_both("lstm", dtype, 2, True, lengths=[4, 1, 3], seed=5, fused=True)


def test_relu_rnn_matches_torch():
    torch.manual_seed(3)
    ref = torch.nn.RNN(D, H, nonlinearity="relu").double()
    model = RNN(D, H, nonlinearity="relu").double()
    model.load_torch_state_dict({k: v.detach().numpy() for k, v in ref.state_dict().items()})
    x = np.random.default_rng(3).standard_normal((T, B, D))
    out_t, h_t = ref(torch.tensor(x))
    out, h = model(tg.tensor(x))
    np.testing.assert_allclose(out.numpy(), out_t.detach().numpy(), atol=1e-12)


def test_torch_state_dict_round_trips_into_torch():
    model = LSTM(D, H, num_layers=2, bidirectional=True).double()
    ref = torch.nn.LSTM(D, H, num_layers=2, bidirectional=True).double()
    ref.load_state_dict({k: torch.tensor(v) for k, v in model.torch_state_dict().items()})
    x = np.random.default_rng(4).standard_normal((T, B, D))
    np.testing.assert_allclose(model(tg.tensor(x))[0].numpy(), ref(torch.tensor(x))[0].detach().numpy(),
                               atol=1e-12)


def test_load_torch_state_dict_names_the_bad_key_and_changes_nothing():
    ref = torch.nn.GRU(D, H, num_layers=2)
    model = GRU(D, H, num_layers=2)
    before = model.state_dict()
    sd = {k: v.detach().numpy() for k, v in ref.state_dict().items()}
    missing = dict(sd)
    del missing["bias_hh_l1"]
    with pytest.raises(KeyError, match="bias_hh_l1"):
        model.load_torch_state_dict(missing)
    bad = dict(sd, weight_hh_l1=np.zeros((3 * H, H + 1), dtype=np.float32))
    with pytest.raises(ValueError, match="weight_hh_l1"):
        model.load_torch_state_dict(bad)
    with pytest.raises(KeyError, match="weight_ih_l2"):
        model.load_torch_state_dict(dict(sd, weight_ih_l2=sd["weight_ih_l1"]))
    for k, v in model.state_dict().items():
        np.testing.assert_array_equal(v, before[k])
