"""The fused sequence kernels (models.sequence) against the decomposed cells.

The decomposed cells record every gate op and are themselves checked against
closed-form equations, finite differences and PyTorch elsewhere; here the
fused kernels must give the same outputs, final states and every gradient,
in float64 to rounding error, on the CPU always and on CUDA when present.
"""
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import tinygraph as tg
from tinygraph import Graph
from tinygraph.trace import trace
from tinygraph.models import GRU, LSTM, RNN, decomposed, gru_sequence, lstm_sequence, rnn_sequence

from conftest import DEVICES, requires_gpu

LAYERS = [
    ("rnn-tanh", lambda **kw: RNN(4, 6, **kw)),
    ("rnn-relu", lambda **kw: RNN(4, 6, nonlinearity="relu", **kw)),
    ("lstm", lambda **kw: LSTM(4, 6, **kw)),
    ("gru", lambda **kw: GRU(4, 6, **kw)),
]


def run(model, x, state=None, device="cpu", lengths=None):
    """Outputs, final states, the input's grad and every parameter grad of a fixed loss."""
    xt = tg.tensor(x, requires_grad=True, device=device)
    out, final = model(xt, state) if lengths is None else model(xt, state, lengths=lengths)
    finals = final if isinstance(final, tuple) else (final,)
    weight = tg.tensor(np.linspace(-1.0, 1.5, out.size).reshape(out.shape), device=device)
    loss = (out * weight).sum() + sum((f * f * 0.7).sum() for f in finals)
    for p in model.parameters():
        p.grad = None
    loss.backward()
    arrays = [out, *finals, xt.grad, *[p.grad for p in model.parameters()]]
    return [tg.backend.as_host(a.data) for a in arrays]


def assert_same(a, b, tol):
    assert len(a) == len(b)
    for u, v in zip(a, b):
        assert u.shape == v.shape
        np.testing.assert_allclose(u, v, rtol=tol, atol=tol)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("layers,bidirectional", [(1, False), (2, False), (1, True), (2, True)])
@pytest.mark.parametrize("name,make", LAYERS, ids=[n for n, _ in LAYERS])
def test_fused_layer_equals_decomposed_float64(name, make, layers, bidirectional, device):
    model = make(num_layers=layers, bidirectional=bidirectional, fused=True, dtype="float64").to(device)
    x = np.random.default_rng(1).standard_normal((5, 3, 4))
    fused = run(model, x, device=device)
    with decomposed():
        reference = run(model, x, device=device)
    assert_same(fused, reference, 1e-10)


@pytest.mark.parametrize("batch", [1, 2])
@pytest.mark.parametrize("name,make", LAYERS, ids=[n for n, _ in LAYERS])
def test_fused_layer_equals_decomposed_at_small_batches(name, make, batch):
    # B = 1 takes the single-GEMM projection of the feature-major kernels
    model = make(num_layers=1, bidirectional=True, fused=True, dtype="float64")
    x = np.random.default_rng(4).standard_normal((6, batch, 4))
    fused = run(model, x)
    with decomposed():
        reference = run(model, x)
    assert_same(fused, reference, 1e-10)


@pytest.mark.parametrize("name,make", LAYERS, ids=[n for n, _ in LAYERS])
def test_fused_layer_with_initial_state_and_batch_first(name, make):
    model = make(num_layers=2, batch_first=True, fused=True, dtype="float64")
    rng = np.random.default_rng(2)
    x = rng.standard_normal((3, 7, 4))
    shape = (2, 3, 6)
    h0 = tg.tensor(rng.standard_normal(shape), requires_grad=True)
    state = (h0, tg.tensor(rng.standard_normal(shape), requires_grad=True)) if name == "lstm" else h0
    fused = run(model, x, state) + [h0.grad.numpy()]
    h0.grad = None
    with decomposed():
        reference = run(model, x, state) + [h0.grad.numpy()]
    assert_same(fused, reference, 1e-10)


def test_fused_float32_matches_decomposed_to_float32_tolerance():
    model = LSTM(8, 16, fused=True)
    x = np.random.default_rng(3).standard_normal((20, 4, 8)).astype(np.float32)
    fused = run(model, x)
    with decomposed():
        reference = run(model, x)
    assert_same(fused, reference, 2e-4)


def test_fused_layer_records_one_node_per_direction_and_decomposed_records_gates():
    model = LSTM(3, 4, num_layers=2, bidirectional=True, fused=True)
    x = np.random.default_rng(0).standard_normal((6, 2, 3)).astype(np.float32)
    out, _ = model(tg.tensor(x))
    ops = [n.op for n in Graph.from_outputs(out.sum()).nodes]
    assert ops.count("lstm_sequence") == 4          # 2 layers x 2 directions
    assert "sigmoid" not in ops
    with decomposed():
        out, _ = model(tg.tensor(x))
    ops = [n.op for n in Graph.from_outputs(out.sum()).nodes]
    assert "lstm_sequence" not in ops
    assert ops.count("sigmoid") == 3 * 6 * 4        # i, f, o at every step of every direction


@pytest.mark.parametrize("reverse", [False, True])
def test_primitives_pass_gradcheck(reverse):
    rng = np.random.default_rng(4)
    T, B, D, H = 4, 2, 3, 5

    def p(*shape):
        return tg.tensor(rng.standard_normal(shape) * 0.6, requires_grad=True)

    x, h0, c0 = p(T, B, D), p(B, H), p(B, H)
    assert tg.gradcheck(lambda x, h, U, W, b: rnn_sequence(x, h, U, W, b, reverse=reverse),
                        [x, h0, p(H, D), p(H, H), p(H)])
    assert tg.gradcheck(lambda x, h, U, W, b: rnn_sequence(x, h, U, W, b, nonlinearity="relu", reverse=reverse),
                        [x, h0, p(H, D), p(H, H), p(H)])

    def lstm_all(x, h, c, U, W, b):
        out, h_n, c_n = lstm_sequence(x, h, c, U, W, b, reverse=reverse)
        return tg.concat([out.reshape(-1), h_n.reshape(-1) * 0.3, c_n.reshape(-1) * 1.7], axis=0)

    assert tg.gradcheck(lstm_all, [x, h0, c0, p(4 * H, D), p(4 * H, H), p(4 * H)])
    assert tg.gradcheck(lambda x, h, U, W, b, bn: gru_sequence(x, h, U, W, b, bn, reverse=reverse),
                        [x, h0, p(3 * H, D), p(3 * H, H), p(3 * H), p(H)])


def run_padded(model, x, lengths, state=None, device="cpu"):
    """``run`` on a padded batch, plus the initial state's grads when ``state`` (arrays) is given."""
    states = () if state is None else tuple(tg.tensor(s, requires_grad=True, device=device) for s in state)
    arrays = run(model, x, (states[0] if len(states) == 1 else states) if states else None, device, lengths)
    return arrays + [tg.backend.as_host(s.grad.data) for s in states]


@pytest.mark.parametrize("layers,bidirectional", [(1, False), (2, False), (1, True), (2, True)])
@pytest.mark.parametrize("name,make", LAYERS, ids=[n for n, _ in LAYERS])
def test_padded_batches_run_the_fused_kernel_and_match_the_step_by_step_layer(name, make, layers, bidirectional):
    """lengths=: the fused path (final state at each row's last step, reversed prefixes for the backward
    direction) gives the step-by-step path's outputs, final states and every gradient, in float64."""
    model = make(num_layers=layers, bidirectional=bidirectional, fused=True, dtype="float64")
    rng = np.random.default_rng(7)
    T, B = 6, 5
    x = rng.standard_normal((T, B, 4))
    lengths = [6, 2, 1, 4, 6]
    shape = (layers * (2 if bidirectional else 1), B, 6)
    state = [rng.standard_normal(shape) * 0.5 for _ in range(model.state_tensors)]
    fused = run_padded(model, x, lengths, state)
    with decomposed():
        reference = run_padded(model, x, lengths, state)
    assert_same(fused, reference, 1e-10)
    assert np.all(fused[0][2, 1:3] == 0.0)   # the outputs at padded steps are zeros, exactly


@pytest.mark.gpu
@requires_gpu
@pytest.mark.parametrize("limit", [1 << 24, 0], ids=["one-kernel steps", "cuBLAS steps"])
@pytest.mark.parametrize("name,make", LAYERS, ids=[n for n, _ in LAYERS])
def test_cuda_padded_batches_match_the_cpu_fused_path(name, make, limit, monkeypatch):
    """Padded batches run through the fused kernels on CUDA too (the LSTM's backward with its gates held
    after each row's end), with both kinds of step kernel: the CPU's numbers, and the step-by-step layer's."""
    from tinygraph.models import cuda_kernels
    monkeypatch.setattr(cuda_kernels, "SMALL_STEP_LIMIT", limit)
    model = make(num_layers=2, bidirectional=True, fused=True, dtype="float64")
    x = np.random.default_rng(9).standard_normal((6, 4, 4))
    lengths = [6, 3, 1, 5]
    on_cpu = run_padded(model, x, lengths)
    model.to("cuda")
    on_gpu = run_padded(model, x, lengths, device="cuda")
    assert_same(on_gpu, on_cpu, 1e-10)
    with decomposed():
        step_by_step = run_padded(model, x, lengths, device="cuda")
    assert_same(on_gpu, step_by_step, 1e-10)
    out, _ = model(tg.tensor(x, device="cuda"), lengths=lengths)
    ops_recorded = [n.op for n in Graph.from_outputs(out.sum()).nodes]
    kernel = {"lstm": "lstm_sequence", "gru": "gru_sequence"}.get(name, "rnn_sequence")
    assert ops_recorded.count(kernel) == 4   # two layers, two directions, no per-step cells


@pytest.mark.parametrize("name,make", LAYERS, ids=[n for n, _ in LAYERS])
def test_padded_fused_layer_with_batch_first_and_a_mask(name, make):
    model = make(num_layers=2, bidirectional=True, batch_first=True, fused=True, dtype="float64")
    rng = np.random.default_rng(10)
    x = rng.standard_normal((4, 6, 4))
    mask = np.arange(6)[None, :] < np.array([6, 2, 3, 1])[:, None]   # (B, T) with batch_first

    def outputs_and_grads():
        xt = tg.tensor(x, requires_grad=True)
        out, final = model(xt, mask=mask)
        finals = final if isinstance(final, tuple) else (final,)
        ((out * out).sum() + sum((f * f).sum() for f in finals)).backward()
        return [out.numpy(), xt.grad.numpy(), *(f.numpy() for f in finals)]

    fused = outputs_and_grads()
    with decomposed():
        reference = outputs_and_grads()
    assert_same(fused, reference, 1e-10)


def test_padded_fused_layer_records_sequence_kernels_not_steps():
    model = LSTM(4, 5, bidirectional=True, fused=True)
    out, _ = model(tg.tensor(np.ones((6, 3, 4), np.float32)), lengths=[6, 2, 4])
    ops_recorded = [n.op for n in Graph.from_outputs(out.sum()).nodes]
    assert ops_recorded.count("lstm_sequence") == 2
    assert "lstm_cell" not in ops_recorded and "sigmoid" not in ops_recorded


@pytest.mark.parametrize("reverse", [False, True])
def test_lstm_sequence_ends_gives_each_row_the_state_after_its_own_last_step(reverse):
    """ends[b]: h_n and c_n of row b are those after step ends[b] of the sweep; gradients included."""
    rng = np.random.default_rng(8)
    T, B, D, H = 5, 4, 3, 2
    x, h0, c0 = rng.standard_normal((T, B, D)), rng.standard_normal((B, H)), rng.standard_normal((B, H))
    U, W, b = rng.standard_normal((4 * H, D)), rng.standard_normal((4 * H, H)), rng.standard_normal(4 * H)
    ends = [4, 0, 2, 2] if not reverse else [0, 4, 1, 3]

    def finals(x, h0, c0, U, W, b):
        _, h_n, c_n = lstm_sequence(x, h0, c0, U, W, b, reverse=reverse, ends=ends)
        return tg.concat([h_n.reshape(-1), c_n.reshape(-1) * 1.3], axis=0)

    args = [tg.tensor(a, requires_grad=True) for a in (x, h0, c0, U, W, b)]
    assert tg.gradcheck(finals, args)
    got = finals(*[tg.tensor(a) for a in (x, h0, c0, U, W, b)]).numpy()
    for row, end in enumerate(ends):   # the same row alone, over the steps its sweep ran
        steps = slice(end, T) if reverse else slice(0, end + 1)
        _, h_n, c_n = lstm_sequence(tg.tensor(x[steps, row:row + 1]), tg.tensor(h0[row:row + 1]),
                                    tg.tensor(c0[row:row + 1]), tg.tensor(U), tg.tensor(W), tg.tensor(b),
                                    reverse=reverse)
        np.testing.assert_allclose(got[row * H:(row + 1) * H], h_n.numpy()[0], atol=1e-12)
        np.testing.assert_allclose(got[B * H + row * H:B * H + (row + 1) * H], c_n.numpy()[0] * 1.3, atol=1e-12)


@pytest.mark.parametrize("reverse", [False, True])
def test_held_gates_make_the_plain_lstm_backward_the_padded_one(reverse):
    """hold_after_ends (how CUDA runs a padded LSTM backward with its plain kernel): on the CPU kernel,
    the saved gates held after each row's end and no ``ends`` give the same gradients as ``ends``."""
    from models.sequence import _lstm_forward, _lstm_vjp, hold_after_ends
    rng = np.random.default_rng(11)
    T, B, D, H = 6, 4, 3, 5
    x, h0, c0 = rng.standard_normal((T, B, D)), rng.standard_normal((B, H)), rng.standard_normal((B, H))
    U, W, b = rng.standard_normal((4 * H, D)), rng.standard_normal((4 * H, H)), rng.standard_normal(4 * H)
    ends = (2, 5, 0, 3) if not reverse else (3, 0, 5, 1)
    out, (gates, cs, tcs) = _lstm_forward(x, h0, c0, U, W, b, reverse=reverse, ends=ends)
    grad = rng.standard_normal(out.shape)
    steps = np.arange(T)[:, None]
    after = (steps < np.array(ends)) if reverse else (steps > np.array(ends))
    grad[:T][after] = 0.0   # the layers zero the outputs after each row's end: no gradient reaches them
    needs = (True,) * 6
    want = _lstm_vjp(grad, out, needs, x, h0, c0, U, W, b, reverse=reverse, ends=ends,
                     residuals=(gates.copy(), cs, tcs))
    held = np.ascontiguousarray(gates.transpose(0, 2, 1))   # the CPU keeps (T, 4H, B); CUDA (T, B, 4H)
    hold_after_ends(held, ends, reverse)
    held = np.ascontiguousarray(held.transpose(0, 2, 1))
    got = _lstm_vjp(grad, out, needs, x, h0, c0, U, W, b, reverse=reverse, residuals=(held, cs, tcs))
    for g, w in zip(got, want):
        np.testing.assert_allclose(g, w, rtol=1e-12, atol=1e-12)
    unheld = _lstm_vjp(grad, out, needs, x, h0, c0, U, W, b, reverse=reverse, residuals=(gates, cs, tcs))
    assert not np.allclose(unheld[3], want[3])   # without the hold the padded steps leak into dU


def test_lstm_sequence_outputs_after_a_rows_end_get_no_gradient():
    """As on CUDA (hold_after_ends), the CPU backward drops the gradient of the outputs past each row's end."""
    rng = np.random.default_rng(12)
    T, B, D, H = 5, 3, 2, 4
    args = [tg.tensor(a, requires_grad=True) for a in (rng.standard_normal((T, B, D)), rng.standard_normal((B, H)),
                                                         rng.standard_normal((B, H)), rng.standard_normal((4 * H, D)),
                                                         rng.standard_normal((4 * H, H)), rng.standard_normal(4 * H))]
    ends = [1, 4, 0]
    after = tg.tensor((np.arange(T)[:, None] > np.array(ends))[:, :, None] * 1.0)
    outputs, _, _ = lstm_sequence(*args, ends=ends)
    (outputs * after).sum().backward()
    assert all(np.all(a.grad.numpy() == 0.0) for a in args)
    outputs, _, _ = lstm_sequence(*args, ends=ends)
    (outputs * (1.0 - after)).sum().backward()   # the valid steps still pass theirs
    assert np.abs(args[0].grad.numpy()).sum() > 0


def test_lstm_sequence_ends_checks_its_steps():
    x, s = tg.tensor(np.ones((3, 2, 1))), tg.tensor(np.zeros((2, 2)))
    U, W = tg.tensor(np.ones((8, 1))), tg.tensor(np.ones((8, 2)))
    for bad in ([3, 0], [1], [1.5, 0], [[1, 0]], [-1, 0]):
        with pytest.raises(ValueError, match=r"ends must be one integer step in \[0, 3\) per batch row \(2\)"):
            lstm_sequence(x, s, s, U, W, ends=bad)


def test_padded_fused_layers_take_an_empty_batch():
    for layer in (LSTM, GRU, RNN):
        out, _ = layer(3, 4, fused=True)(tg.tensor(np.zeros((4, 0, 3), np.float32)), lengths=np.zeros(0, np.int64))
        assert out.shape == (4, 0, 4)


@settings(max_examples=25, deadline=None)
@given(cell=st.sampled_from(["lstm", "gru", "rnn"]), T=st.integers(2, 6), B=st.integers(1, 4),
       bidirectional=st.booleans(), seed=st.integers(0, 2**16))
def test_padded_fused_layers_equal_the_step_by_step_layer_at_any_lengths(cell, T, B, bidirectional, seed):
    rng = np.random.default_rng(seed)
    model = {"lstm": LSTM, "gru": GRU, "rnn": RNN}[cell](3, 4, bidirectional=bidirectional, fused=True,
                                                         dtype="float64")
    for p in model.parameters():
        p.data[...] = rng.standard_normal(p.shape) * 0.5
    x = rng.standard_normal((T, B, 3))
    lengths = rng.integers(1, T + 1, size=B)
    fused = run_padded(model, x, lengths)
    with decomposed():
        reference = run_padded(model, x, lengths)
    assert_same(fused, reference, 1e-10)


def test_create_graph_through_a_fused_layer_says_what_to_do():
    model = LSTM(3, 4, fused=True, dtype="float64")
    x = tg.tensor(np.ones((2, 1, 3)), requires_grad=True)
    out, _ = model(x)
    with pytest.raises(RuntimeError, match="fused=False"):
        tg.grad(out.sum(), [x], create_graph=True)


def test_retain_graph_keeps_residuals_and_backward_frees_them():
    model = LSTM(3, 4, fused=True, dtype="float64")
    x = tg.tensor(np.random.default_rng(6).standard_normal((5, 2, 3)))
    out, _ = model(x)
    loss = (out * out).sum()
    node = next(n for n in Graph.from_outputs(loss).nodes if n.op == "lstm_sequence")
    assert node.residuals is not None
    loss.backward(retain_graph=True)
    first = model.cell(0).W.grad.numpy().copy()
    assert node.residuals is not None
    loss.backward()
    np.testing.assert_allclose(model.cell(0).W.grad.numpy(), 2 * first, rtol=1e-12)
    assert node.residuals is None and node.value is None


def test_trace_replays_a_fused_layer():
    model = LSTM(3, 4, fused=True, dtype="float64")
    x = np.random.default_rng(7).standard_normal((5, 2, 3))

    def loss_of(xt):
        out, _ = model(xt)
        return (out * out).sum()

    compiled = trace(loss_of, tg.tensor(x), params=model.parameters())
    value = compiled(x)
    _, param_grads = compiled.backward(np.ones(()))
    eager = loss_of(tg.tensor(x))
    for p in model.parameters():
        p.grad = None
    eager.backward()
    np.testing.assert_allclose(value, eager.item(), rtol=1e-12)
    for g, p in zip(param_grads, model.parameters()):
        np.testing.assert_allclose(g, p.grad.numpy(), rtol=1e-10, atol=1e-12)


def test_fused_layer_matches_torch():
    torch = pytest.importorskip("torch")
    model = LSTM(4, 6, num_layers=2, bidirectional=True, fused=True, dtype="float64")
    reference = torch.nn.LSTM(4, 6, num_layers=2, bidirectional=True).double()
    reference.load_state_dict({k: torch.from_numpy(v) for k, v in model.torch_state_dict().items()})
    x = np.random.default_rng(8).standard_normal((5, 3, 4))
    xt = tg.tensor(x, requires_grad=True)
    out, (h, c) = model(xt)
    (out.sum() + (h * c).sum()).backward()
    tx = torch.tensor(x, requires_grad=True)
    tout, (th, tc) = reference(tx)
    (tout.sum() + (th * tc).sum()).backward()
    np.testing.assert_allclose(out.numpy(), tout.detach().numpy(), atol=1e-12)
    np.testing.assert_allclose(xt.grad.numpy(), tx.grad.numpy(), atol=1e-12)
    np.testing.assert_allclose(model.cell(1, 1).W.grad.numpy(), reference.weight_hh_l1_reverse.grad.numpy(),
                               atol=1e-12)


@pytest.mark.parametrize("kind", ["LSTM", "GRU", "RNN"])
def test_padded_fused_layer_matches_torch_packed_sequences(kind):
    """lengths= through the fused kernels equals PyTorch's pack_padded_sequence: outputs, final states, grads."""
    torch = pytest.importorskip("torch")
    from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

    layer = {"LSTM": LSTM, "GRU": GRU, "RNN": RNN}[kind]
    model = layer(4, 6, num_layers=2, bidirectional=True, fused=True, dtype="float64")
    reference = getattr(torch.nn, kind)(4, 6, num_layers=2, bidirectional=True).double()
    reference.load_state_dict({k: torch.from_numpy(v) for k, v in model.torch_state_dict().items()})
    x, lengths = np.random.default_rng(11).standard_normal((7, 4, 4)), np.array([7, 3, 1, 5])
    xt = tg.tensor(x, requires_grad=True)
    out, final = model(xt, lengths=lengths)
    finals = final if isinstance(final, tuple) else (final,)
    (out.sum() + sum((f * f).sum() for f in finals)).backward()
    tx = torch.tensor(x, requires_grad=True)
    tout, tfinal = reference(pack_padded_sequence(tx, torch.from_numpy(lengths), enforce_sorted=False))
    tout, _ = pad_packed_sequence(tout, total_length=7)
    tfinals = tfinal if isinstance(tfinal, tuple) else (tfinal,)
    (tout.sum() + sum((f * f).sum() for f in tfinals)).backward()
    np.testing.assert_allclose(out.numpy(), tout.detach().numpy(), atol=1e-12)
    for ours, theirs in zip(finals, tfinals):
        np.testing.assert_allclose(ours.numpy(), theirs.detach().numpy(), atol=1e-12)
    np.testing.assert_allclose(xt.grad.numpy(), tx.grad.numpy(), atol=1e-12)
    np.testing.assert_allclose(model.cell(1, 1).W.grad.numpy(), reference.weight_hh_l1_reverse.grad.numpy(),
                               atol=1e-12)
    np.testing.assert_allclose(model.cell(0, 0).U.grad.numpy(), reference.weight_ih_l0.grad.numpy(), atol=1e-12)


def test_bad_shapes_and_options_are_clear_errors():
    with pytest.raises(ValueError, match="layer norm"):
        GRU(3, 4, fused=True, layer_norm=True)
    with pytest.raises(ValueError, match="nonlinearity"):
        rnn_sequence(np.zeros((2, 1, 3)), np.zeros((1, 4)), np.zeros((4, 3)), np.zeros((4, 4)),
                     nonlinearity="sigmoid")
    with pytest.raises(ValueError, match="shapes do not fit"):
        rnn_sequence(tg.tensor(np.zeros((2, 1, 3))), tg.tensor(np.zeros((1, 4))),
                     tg.tensor(np.zeros((4, 2)), requires_grad=True), tg.tensor(np.zeros((4, 4))))


@pytest.mark.gpu
@requires_gpu
@pytest.mark.parametrize("path", ["one-kernel steps", "cuBLAS steps"])
@pytest.mark.parametrize("name,make", LAYERS, ids=[n for n, _ in LAYERS])
def test_cuda_float32_matches_the_cpu(name, make, path, monkeypatch):
    from tinygraph.models import cuda_kernels
    if path == "cuBLAS steps":  # small layers normally take the one-kernel path
        monkeypatch.setattr(cuda_kernels, "SMALL_STEP_LIMIT", 0)
    model = make(num_layers=2, bidirectional=True, fused=True)
    x = np.random.default_rng(9).standard_normal((20, 8, 4)).astype(np.float32)
    cpu = run(model, x)
    gpu = run(model.to("cuda"), x, device="cuda")
    assert_same(gpu, cpu, 2e-4)


@pytest.mark.gpu
@requires_gpu
@pytest.mark.parametrize("limit", [1 << 24, 0], ids=["one-kernel steps", "cuBLAS steps"])
@pytest.mark.parametrize("cell", ["rnn", "lstm", "gru"])
def test_cuda_time_loops_never_synchronise_with_the_host(cell, limit, monkeypatch):
    """No host-device copy or sync inside a fused forward or backward sweep."""
    import cupy as cp
    from tinygraph.models import cuda_kernels
    monkeypatch.setattr(cuda_kernels, "SMALL_STEP_LIMIT", limit)
    cupyx = pytest.importorskip("cupyx")
    if not hasattr(cupyx, "allow_synchronize"):
        pytest.skip("this CuPy has no cupyx.allow_synchronize")
    from tinygraph.models import sequence
    rng = np.random.default_rng(10)
    T, B, D, H = 12, 4, 5, 8
    G = {"rnn": 1, "lstm": 4, "gru": 3}[cell]

    def arr(*shape):
        return cp.asarray(rng.standard_normal(shape).astype(np.float32))

    x, h0, c0, U, W, b, b_hn = arr(T, B, D), arr(B, H), arr(B, H), arr(G * H, D), arr(G * H, H), arr(G * H), arr(H)
    prim, args = {"rnn": (sequence.RNN_SEQUENCE, (x, h0, U, W, b)),
                  "lstm": (sequence.LSTM_SEQUENCE, (x, h0, c0, U, W, b)),
                  "gru": (sequence.GRU_SEQUENCE, (x, h0, U, W, b, b_hn))}[cell]
    needs = (True,) * len(args)
    for reverse in (False, True):
        result = prim.forward(*args, reverse=reverse)  # compiles the kernels (that may sync)
        cp.cuda.Device().synchronize()
        with cupyx.allow_synchronize(False):
            result = prim.forward(*args, reverse=reverse)
            out, extra = (result, {}) if not prim.residuals else (result[0], {"residuals": result[1]})
            grads = prim.vjp(cp.ones_like(out), out, needs, *args, reverse=reverse, **extra)
        assert all(g is not None for g in grads)
        cp.cuda.Device().synchronize()


def test_fused_elman_rnn_equals_the_textbook_unrolling():
    from tinygraph.models import ElmanRNN
    model = ElmanRNN(4, 6, 3, dtype="float64", fused=True)
    rng = np.random.default_rng(11)
    x = rng.standard_normal((7, 2, 4))
    h0 = tg.tensor(rng.standard_normal((2, 6)), requires_grad=True)
    y = rng.integers(0, 3, (7, 2))

    def grads():
        for p in model.parameters():
            p.grad = None
        h0.grad = None
        o, h_n = model(tg.tensor(x), h0)
        (tg.cross_entropy(o, y, reduction="sum") + (h_n * h_n).sum()).backward()
        return [o.numpy(), h_n.numpy(), h0.grad.numpy()] + [p.grad.numpy() for p in model.parameters()]

    fused = grads()
    with decomposed():
        reference = grads()
    assert_same(fused, reference, 1e-10)


# -- memory ----------------------------------------------------------------------------

def test_fused_lstm_keeps_exactly_what_its_backward_needs():
    """Residuals: gate activations (4H), c and tanh(c) per step; h is the output itself, not a copy."""
    T, B, D, H = 30, 4, 5, 7
    model = LSTM(D, H, fused=True)
    out, _ = model(tg.tensor(np.ones((T, B, D), np.float32)))
    node = next(n for n in Graph.from_outputs(out.sum()).nodes if n.op == "lstm_sequence")
    kept = sum(a.nbytes for a in node.residuals)
    assert kept == T * B * (4 + 1 + 1) * H * 4
    assert node.value.nbytes == (T + 1) * B * H * 4     # h(0..T-1) and the final c
    assert not any(np.shares_memory(a, node.value) for a in node.residuals)


def _forward_bytes(model, x):
    import tracemalloc
    tracemalloc.start()
    try:
        out, _ = model(tg.tensor(x))
        return tracemalloc.get_traced_memory()[1], out
    finally:
        tracemalloc.stop()


def test_fused_forward_stores_a_fraction_of_the_decomposed_recording():
    model = LSTM(16, 32, fused=True)
    x = np.random.default_rng(12).standard_normal((100, 8, 16)).astype(np.float32)
    fused, out_f = _forward_bytes(model, x)
    with decomposed():
        decomposed_bytes, out_d = _forward_bytes(model, x)
    assert fused < decomposed_bytes / 2, (fused, decomposed_bytes)


def _tbptt_peak(T, k, fused):
    import tracemalloc
    from tinygraph import bptt
    rng = np.random.default_rng(0)
    xs = rng.standard_normal((T, 4, 3)).astype(np.float32)  # the model's dtype: no copy of the whole input
    ys = rng.integers(0, 32, (T, 4))
    tg.manual_seed(0)
    model = LSTM(3, 32, fused=fused)

    def loss_fn(out, y):
        return tg.cross_entropy(out, y, reduction="sum")

    tracemalloc.start()
    try:
        bptt.backprop_through_time(model, xs, ys, loss_fn, k1=k, k2=k)
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_truncated_bptt_peak_with_fused_layers_does_not_grow_with_sequence_length():
    short, long = _tbptt_peak(200, 50, True), _tbptt_peak(2000, 50, True)
    assert long <= 1.5 * short, (short, long)
    full_short, full_long = _tbptt_peak(200, None, True), _tbptt_peak(800, None, True)
    assert full_long > 2.5 * full_short  # full BPTT does grow: the measurement sees the graph


@pytest.mark.parametrize("cell", ["rnn", "lstm", "gru"])
def test_gradient_diagnostics_see_the_same_flow_through_fused_layers(cell):
    from tinygraph import bptt
    from tinygraph.models import LanguageModel
    tg.manual_seed(0)
    model = LanguageModel(12, 5, 7, cell=cell, fused=True).double()
    rng = np.random.default_rng(13)
    x, y = rng.integers(0, 12, (9, 3)), rng.integers(0, 12, (9, 3))

    def flow():
        return bptt.gradient_flow(model, x, y, lambda logits, t: tg.cross_entropy(logits[-1], t[-1]),
                                  per_state=True)

    fused = flow()
    with decomposed():
        reference = flow()
    assert all(np.all(f > 0) for f in fused)
    assert_same(list(fused), list(reference), 1e-10)


def test_performance_guide_code_runs(capsys):
    """docs/performance.md's example: fused training recording, decomposed pictures from the same
    model, a traced decomposed model and a user's fusion (unregistered again afterwards)."""
    import re
    from pathlib import Path

    from tinygraph import fusion
    from tinygraph import ops as primitives
    text = (Path(__file__).resolve().parent.parent / "docs" / "performance.md").read_text(encoding="utf-8")
    blocks = re.findall(r"```python\n(.*?)```", text, re.S)
    assert blocks
    namespace = {}
    try:
        for i, block in enumerate(blocks):
            exec(compile(block, f"docs/performance.md block {i}", "exec"), namespace)
    finally:
        fusion._FUSIONS.pop("softplus", None)
        primitives.PRIMITIVES.pop("my_softplus", None)
    printed = capsys.readouterr().out
    assert "{'lstm_sweep': 2, 'lstm_sweep_reverse': 2}" in printed and "{'softplus': 1} 3" in printed
    ops = [n.op for n in Graph.from_outputs(namespace["out"].sum()).nodes]
    assert "sigmoid" in ops and "lstm_sequence" not in ops
    assert namespace["lstm"].cell(1, 1).W.grad is not None   # the fused backward reached every layer
    assert len(namespace["param_grads"]) == len(namespace["lstm"].parameters())
    assert all(g is not None and np.all(np.isfinite(g)) for g in namespace["param_grads"])
    assert namespace["step"].traces == 1 and np.isfinite(namespace["loss"].item())
    loss_ops = [n.op for n in Graph.from_outputs(namespace["fused"]).nodes]
    assert loss_ops == ["leaf", "const", "cross_entropy", "mean"]
    assert "log_softmax" in [n.op for n in Graph.from_outputs(namespace["textbook"]).nodes]


@pytest.mark.parametrize("name,make", LAYERS, ids=[n for n, _ in LAYERS])
def test_stepper_walks_a_fused_layer_and_ends_at_backwards_gradients(name, make):
    from tinygraph.stepper import Stepper
    model = make(fused=True, dtype="float64")
    out, _ = model(tg.tensor(np.random.default_rng(14).standard_normal((5, 2, 4))))
    loss = (out * out).sum()
    stepper = Stepper(loss)
    stepper.run()
    stepped = {node.id: g for node, g in stepper.grads.items()}
    kinds = [event.node.op for event in stepper.events if event.node is not None]
    assert f"{name.split('-')[0]}_sequence" in kinds
    loss.backward()
    for p in model.parameters():
        assert np.array_equal(stepped[p._node.id], p.grad.data), p.name


def test_drawing_a_fused_recording_says_how_to_see_the_steps():
    viz = pytest.importorskip("tinygraph.viz")
    model = LSTM(3, 4, fused=True)
    x = tg.tensor(np.random.default_rng(15).standard_normal((4, 2, 3)).astype(np.float32))
    out, _ = model(x)
    with pytest.warns(UserWarning, match=r"decomposed\(\)"):
        source = viz.draw_unfolded(out.sum()).source
    assert "lstm_sequence" in source and "decomposed()" in source
    with decomposed():
        out, _ = model(x)
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        viz.draw_circuit(out.sum())   # the decomposed recording draws without the note


@settings(max_examples=25, deadline=None)
@given(cell=st.sampled_from(["lstm", "gru", "rnn"]), T=st.integers(1, 5), B=st.integers(1, 4),
       D=st.integers(1, 4), H=st.integers(1, 5), reverse=st.booleans(), seed=st.integers(0, 2 ** 16))
def test_sequence_primitives_equal_the_cells_at_any_shape(cell, T, B, D, H, reverse, seed):
    """The CPU kernels (feature-major LSTM/GRU, batch-major RNN) against the textbook cells, float64.

    Random shapes reach the edges the fixed tests might miss: T = 1, B = 1 (the
    single-GEMM projection), H = 1, D = 1, and both directions.
    """
    from tinygraph.models import GRUCell, LSTMCell, RNNCell, gru_sequence, lstm_sequence, rnn_sequence
    rng = np.random.default_rng(seed)
    make = {"lstm": LSTMCell, "gru": GRUCell, "rnn": RNNCell}[cell]
    tg.manual_seed(seed)
    cellm = make(D, H, dtype="float64")
    x = rng.standard_normal((T, B, D))
    states = [rng.standard_normal((B, H)) for _ in range(2 if cell == "lstm" else 1)]
    weight = rng.standard_normal((T, B, H))

    def grads_of(run):
        xt = tg.tensor(x, requires_grad=True)
        st_t = [tg.tensor(s, requires_grad=True) for s in states]
        for p in cellm.parameters():
            p.grad = None
        outs, last = run(xt, st_t)
        loss = (outs * tg.tensor(weight)).sum() + sum((v * v).sum() for v in last)
        loss.backward()
        return [outs.numpy(), *[v.numpy() for v in last], xt.grad.numpy(), *[s.grad.numpy() for s in st_t],
                *[p.grad.numpy() for p in cellm.parameters()]]

    def fused(xt, st_t):
        if cell == "lstm":
            outs, h_n, c_n = lstm_sequence(xt, st_t[0], st_t[1], cellm.U, cellm.W, cellm.b, reverse=reverse)
            return outs, [h_n, c_n]
        if cell == "gru":
            outs = gru_sequence(xt, st_t[0], cellm.U, cellm.W, cellm.b, cellm.b_hn, reverse=reverse)
        else:
            outs = rnn_sequence(xt, st_t[0], cellm.U, cellm.W, cellm.b, reverse=reverse)
        return outs, [outs[0] if reverse else outs[T - 1]]

    def stepwise(xt, st_t):
        state = tuple(st_t) if cell == "lstm" else st_t[0]
        outs = [None] * T
        for t in (range(T - 1, -1, -1) if reverse else range(T)):
            state = cellm(xt[t], state)
            outs[t] = state[0] if cell == "lstm" else state
        return tg.stack(outs, axis=0), list(state) if cell == "lstm" else [state]

    for a, b in zip(grads_of(fused), grads_of(stepwise)):
        np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("shape", [(128, 32), (4096, 1024), (1000, 333), (513, 1030)])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_transposed_copy_equals_the_transpose_for_whole_and_ragged_tiles(shape, dtype):
    """The kernels' W.T copy (one call when small, 16 x 512 tiles when large, ragged at the edges)."""
    from tinygraph.models.sequence import _transposed

    W = np.random.default_rng(0).standard_normal(shape).astype(dtype)
    WT = _transposed(W)
    assert WT.flags.c_contiguous and WT.dtype == dtype
    np.testing.assert_array_equal(WT, W.T)
