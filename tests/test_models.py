"""Cells, layers, textbook networks and heads: gradients, semantics, recording."""
import numpy as np
import pytest

import tinygraph as tg
from tinygraph.models import (GRU, GRUCell, IRNN, LSTM, LSTMCell, RNN, RNNCell, ElmanRNN, JordanRNN,
                              LanguageModel, SequenceClassifier, SequenceTagger, lengths_to_mask,
                              mask_to_lengths)

T, B, D, H = 3, 2, 2, 2


@pytest.fixture(autouse=True)
def _seed():
    tg.manual_seed(1234)


def f64(rng, *shape, grad=True):
    return tg.tensor(rng.standard_normal(shape), dtype="float64", requires_grad=grad)


def projected_sum(rng, tensors):
    """sum_k <R_k, t_k> with fixed random R_k: every output element gets its own weight."""
    weights = [rng.standard_normal(t.shape) for t in tensors]

    def total(*ts):
        out = None
        for t, w in zip(ts, weights):
            term = tg.sum(t * w)
            out = term if out is None else out + term
        return out
    return total


def flat_state(state):
    return list(state) if isinstance(state, tuple) else [state]


def gradcheck_module(model, rng, inputs, run):
    """gradcheck of a random projection of run(*inputs) w.r.t. inputs and all parameters."""
    params = model.parameters()
    outs = run(*inputs)
    total = projected_sum(rng, outs)
    return tg.gradcheck(lambda *args: total(*run(*args[:len(inputs)])), list(inputs) + params,
                        atol=1e-6, rtol=1e-4)


# ---------------------------------------------------------------------------
# cells
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("cell_cls, kw", [
    (RNNCell, {}), (RNNCell, {"nonlinearity": "relu"}), (RNNCell, {"layer_norm": True}),
    (LSTMCell, {}), (LSTMCell, {"layer_norm": True, "forget_bias": 1.0}),
    (GRUCell, {}), (GRUCell, {"layer_norm": True}), (GRUCell, {"bias": False}),
])
def test_cell_gradients_match_finite_differences(cell_cls, kw, rng):
    cell = cell_cls(D, H, **kw).double()
    x, h = f64(rng, B, D), f64(rng, B, H)
    if cell_cls is LSTMCell:
        c = f64(rng, B, H)
        gradcheck_module(cell, rng, [x, h, c], lambda x, h, c: list(cell(x, (h, c))))
    else:
        gradcheck_module(cell, rng, [x, h], lambda x, h: [cell(x, h)])


def test_rnn_cell_computes_textbook_equation(rng):
    cell = RNNCell(D, H).double()
    x, h = rng.standard_normal((B, D)), rng.standard_normal((B, H))
    U, W, b = cell.U.numpy(), cell.W.numpy(), cell.b.numpy()
    np.testing.assert_allclose(cell(x, h).numpy(), np.tanh(b + h @ W.T + x @ U.T), atol=1e-12)


def test_lstm_cell_gate_order_is_i_f_g_o(rng):
    cell = LSTMCell(D, H).double()
    x, h, c = (rng.standard_normal(s) for s in [(B, D), (B, H), (B, H)])
    z = cell.b.numpy() + h @ cell.W.numpy().T + x @ cell.U.numpy().T
    sig = lambda v: 1 / (1 + np.exp(-v))  # noqa: E731
    i, f, g, o = sig(z[:, :H]), sig(z[:, H:2 * H]), np.tanh(z[:, 2 * H:3 * H]), sig(z[:, 3 * H:])
    c_ref = f * c + i * g
    h_new, c_new = cell(x, (h, c))
    np.testing.assert_allclose(c_new.numpy(), c_ref, atol=1e-12)
    np.testing.assert_allclose(h_new.numpy(), o * np.tanh(c_ref), atol=1e-12)


def test_gru_cell_resets_the_recurrent_term_with_its_own_bias(rng):
    cell = GRUCell(D, H).double()
    x, h = rng.standard_normal((B, D)), rng.standard_normal((B, H))
    U, W, b, bhn = cell.U.numpy(), cell.W.numpy(), cell.b.numpy(), cell.b_hn.numpy()
    sig = lambda v: 1 / (1 + np.exp(-v))  # noqa: E731
    gx, gh = x @ U.T + b, h @ W.T
    r = sig(gx[:, :H] + gh[:, :H])
    z = sig(gx[:, H:2 * H] + gh[:, H:2 * H])
    n = np.tanh(gx[:, 2 * H:] + r * (gh[:, 2 * H:] + bhn))
    np.testing.assert_allclose(cell(x, h).numpy(), (1 - z) * n + z * h, atol=1e-12)


def test_cell_names_intermediates_for_the_diagrams(rng):
    cell = LSTMCell(D, H)
    h, c = cell(tg.randn(B, D, requires_grad=True))
    names = {n.name for n in tg.Graph.from_outputs(h, c).nodes}
    assert {"f", "i", "g", "o", "c", "h"} <= names
    r = GRUCell(D, H)(tg.randn(B, D, requires_grad=True))
    assert {"r", "z", "n", "h"} <= {n.name for n in tg.Graph.from_outputs(r).nodes}


def test_cell_rejects_wrong_shapes():
    with pytest.raises(ValueError, match=r"input must be \(batch, 2\)"):
        RNNCell(2, 3)(tg.randn(4, 5))
    with pytest.raises(ValueError, match="nonlinearity"):
        RNNCell(2, 3, nonlinearity="sigmoid")


# ---------------------------------------------------------------------------
# layers
# ---------------------------------------------------------------------------

LAYER_CASES = [  # (layer, options, lengths)
    (RNN, {}, None),
    (LSTM, {}, None),
    (GRU, {}, None),
    (RNN, {}, [T, T - 1]),
    (RNN, {"num_layers": 2, "bidirectional": True}, None),
    (LSTM, {"num_layers": 2, "bidirectional": True}, None),
    (GRU, {"num_layers": 2, "bidirectional": True}, None),
    (RNN, {"num_layers": 2, "bidirectional": True}, [T, T - 1]),
    (LSTM, {"num_layers": 2, "bidirectional": True}, [T - 1, T]),
    (GRU, {"num_layers": 2, "bidirectional": True}, [1, T]),
    (LSTM, {"num_layers": 2, "residual": True, "layer_norm": True}, None),
    (GRU, {"batch_first": True, "bias": False}, None),
    (RNN, {"nonlinearity": "relu", "recurrent_init": "orthogonal"}, None),
]


@pytest.mark.parametrize("layer_cls, kw, lengths", LAYER_CASES)
def test_layer_gradients_match_finite_differences(layer_cls, kw, lengths, rng):
    model = layer_cls(D, H, **kw).double()
    shape = (B, T, D) if kw.get("batch_first") else (T, B, D)
    x = f64(rng, *shape)
    rows = model.num_layers * model.num_directions
    init = [f64(rng, rows, B, H) for _ in range(model.state_tensors)]

    def run(x, *state):
        state = tuple(state) if len(state) > 1 else state[0]
        out, final = model(x, state, lengths=lengths)
        return [out] + flat_state(final)

    gradcheck_module(model, rng, [x] + init, run)


def run_one(model, seq):
    """Run a single unpadded sequence (T_i, D) through ``model`` (batch of one)."""
    out, final = model(tg.tensor(seq[:, None, :]))
    return out.numpy()[:, 0], [s.numpy()[:, 0] for s in flat_state(final)]


@pytest.mark.parametrize("layer_cls", [RNN, LSTM, GRU])
def test_padded_steps_change_nothing_and_output_zero(layer_cls, rng):
    model = layer_cls(D, H, num_layers=2, bidirectional=True).double()
    lengths = [4, 2, 3]
    x = rng.standard_normal((4, 3, D))
    x[2:, 1] = 100.0  # padding garbage must not leak anywhere
    out, final = model(tg.tensor(x), lengths=lengths)
    out, final = out.numpy(), [s.numpy() for s in flat_state(final)]
    for b, n in enumerate(lengths):
        ref_out, ref_final = run_one(model, x[:n, b])
        np.testing.assert_allclose(out[:n, b], ref_out, atol=1e-12)
        assert np.all(out[n:, b] == 0)
        for got, ref in zip(final, ref_final):
            np.testing.assert_allclose(got[:, b], ref, atol=1e-12)


def test_padded_steps_get_no_gradient(rng):
    model = LSTM(D, H, bidirectional=True).double()
    x = f64(rng, T, B, D)
    out, (h, c) = model(x, lengths=[T, 1])
    (tg.sum(out * rng.standard_normal(out.shape)) + tg.sum(h) + tg.sum(c)).backward()
    assert np.all(x.grad.numpy()[1:, 1] == 0)
    assert np.any(x.grad.numpy()[1:, 0] != 0)


def test_bidirectional_output_is_forward_and_reversed_backward(rng):
    model = GRU(D, H, bidirectional=True).double()
    x = rng.standard_normal((T, B, D))
    out, h_n = model(tg.tensor(x))
    fwd, bwd = model.cell(0, 0), model.cell(0, 1)
    hf, hb = np.zeros((B, H)), np.zeros((B, H))
    ref_f, ref_b = [], [None] * T
    for t in range(T):
        hf = fwd(x[t], hf).numpy()
        ref_f.append(hf)
    for t in reversed(range(T)):
        hb = bwd(x[t], hb).numpy()
        ref_b[t] = hb
    np.testing.assert_allclose(out.numpy(), np.concatenate([np.stack(ref_f), np.stack(ref_b)], -1), atol=1e-12)
    np.testing.assert_allclose(h_n.numpy(), np.stack([ref_f[-1], ref_b[0]]), atol=1e-12)


@pytest.mark.parametrize("layer_cls", [RNN, LSTM, GRU])
def test_state_carries_across_windows(layer_cls, rng):
    """The BPTT contract: model(x_window, state) -> (outputs, state) chains exactly."""
    model = layer_cls(D, H, num_layers=2).double()
    x = tg.tensor(rng.standard_normal((4, B, D)))
    whole, final = model(x)
    first, state = model(x[:2], None)
    second, state = model(x[2:], state)
    np.testing.assert_allclose(np.concatenate([first.numpy(), second.numpy()]), whole.numpy(), atol=1e-12)
    for a, b in zip(flat_state(state), flat_state(final)):
        np.testing.assert_allclose(a.numpy(), b.numpy(), atol=1e-12)


def test_batch_first_matches_time_major(rng):
    model = LSTM(D, H, bidirectional=True).double()
    x = rng.standard_normal((T, B, D))
    ref, (h, _) = model(tg.tensor(x))
    model.batch_first = True
    out, (h2, _) = model(tg.tensor(x.transpose(1, 0, 2)))
    np.testing.assert_allclose(out.numpy().transpose(1, 0, 2), ref.numpy(), atol=1e-12)
    np.testing.assert_allclose(h2.numpy(), h.numpy(), atol=1e-12)


def run_cell(cell, xs):
    """Outputs of a single cell over xs (T, B, D), from zeros, as a NumPy array."""
    h, outs = np.zeros((xs.shape[1], cell.hidden_size)), []
    for x_t in xs:
        h = cell(x_t, h).numpy()
        outs.append(h)
    return np.stack(outs)


def test_residual_adds_each_stacked_layers_input(rng):
    model = RNN(D, D, num_layers=3, residual=True).double()
    x = rng.standard_normal((T, B, D))
    out, _ = model(tg.tensor(x))
    first = run_cell(model.cell(0), x)              # layer 0 has no residual
    second = run_cell(model.cell(1), first) + first
    third = run_cell(model.cell(2), second) + second
    np.testing.assert_allclose(out.numpy(), third, atol=1e-12)


def test_dropout_between_layers_only_in_training(rng):
    model = LSTM(D, H, num_layers=2, dropout=0.5).double()
    x = tg.tensor(rng.standard_normal((T, B, D)))
    model.eval()
    a, _ = model(x)
    b, _ = model(x)
    np.testing.assert_array_equal(a.numpy(), b.numpy())
    model.train()
    c, _ = model(x)
    assert not np.allclose(a.numpy(), c.numpy())


def test_layer_records_scopes_and_original_time_steps():
    model = GRU(D, H, num_layers=2, bidirectional=True)
    out, h = model(tg.randn(T, B, D, requires_grad=True))
    nodes = tg.Graph.from_outputs(out, h).nodes
    scopes = {n.scope for n in nodes if n.timestep is not None}
    for layer in (0, 1):
        for direction in ("forward", "backward"):
            assert f"GRU.layer{layer}.{direction}" in scopes
    reads = [n for n in nodes if n.scope == "GRU.layer0.backward" and n.name == "x"]
    assert sorted(n.timestep for n in reads) == list(range(T))
    assert all(n.attrs["index"] == n.timestep for n in reads)  # step t reads x[t]


@pytest.mark.parametrize("model_fn", [
    lambda: LSTM(D, H, bidirectional=True),
    lambda: ElmanRNN(D, H, 3),
    lambda: RNN(D, H, layer_norm=True),
])
def test_every_step_runs_the_same_ops(model_fn):
    """Folding needs (scope, ordinal) -> op to be the same at every time step, step 0 included."""
    model = model_fn()
    out = model(tg.randn(4, B, D, requires_grad=True))[0]
    by_step = {}
    for n in tg.Graph.from_outputs(out).nodes:
        if n.timestep is not None and not n.is_leaf:
            by_step.setdefault(n.timestep, set()).add((n.scope, n.ordinal, n.op))
    assert len(by_step) == 4
    assert all(ops == by_step[0] for ops in by_step.values())


def test_lengths_validation():
    model = RNN(D, H)
    with pytest.raises(ValueError, match="lengths must lie in"):
        model(tg.randn(T, B, D), lengths=[T + 1, 1])
    with pytest.raises(ValueError, match="state tensor must have shape"):
        model(tg.randn(T, B, D), tg.zeros(2, B, H))
    with pytest.raises(ValueError, match="input feature size"):
        model(tg.randn(T, B, D + 1))


def test_mask_helpers_round_trip():
    mask = lengths_to_mask([3, 1], 4)
    assert mask.shape == (4, 2) and mask[:, 0].tolist() == [True, True, True, False]
    assert mask_to_lengths(mask).tolist() == [3, 1]
    with pytest.raises(ValueError, match="prefix"):
        mask_to_lengths(np.array([[0, 1], [1, 1]]))


# ---------------------------------------------------------------------------
# initialisation remedies
# ---------------------------------------------------------------------------

def test_irnn_is_relu_with_identity_recurrence():
    model = IRNN(3, 4)
    cell = model.cell(0)
    assert cell.nonlinearity == "relu"
    np.testing.assert_array_equal(cell.W.numpy(), np.eye(4))
    np.testing.assert_array_equal(cell.b.numpy(), np.zeros(4))


def test_orthogonal_recurrent_init_per_gate_block():
    cell = LSTM(3, 5, recurrent_init="orthogonal").cell(0)
    W = cell.W.numpy().astype(np.float64)
    for k in range(4):
        block = W[5 * k:5 * (k + 1)]
        np.testing.assert_allclose(block @ block.T, np.eye(5), atol=1e-5)


def test_forget_bias_sets_the_f_slice_only():
    b = LSTMCell(3, 4, forget_bias=1.0).b.numpy()
    np.testing.assert_array_equal(b[4:8], 1.0)
    assert np.all(np.abs(b[:4]) <= 0.5) and np.all(np.abs(b[8:]) <= 0.5)


def test_default_init_is_uniform_one_over_sqrt_hidden():
    cell = GRUCell(7, 16)
    for p in cell.parameters():
        assert np.all(np.abs(p.numpy()) <= 0.25 + 1e-7)
    assert cell.W.numpy().std() > 0.1  # not degenerate


def test_seed_reproduces_weights():
    tg.manual_seed(7)
    a = LSTM(3, 4).state_dict()
    tg.manual_seed(7)
    b = LSTM(3, 4).state_dict()
    for k in a:
        np.testing.assert_array_equal(a[k], b[k])


# ---------------------------------------------------------------------------
# textbook networks
# ---------------------------------------------------------------------------

def test_elman_parameters_are_named_and_shaped_like_the_textbook():
    model = ElmanRNN(3, 4, 5)
    shapes = {n: p.shape for n, p in model.named_parameters()}
    assert shapes == {"U": (4, 3), "W": (4, 4), "V": (5, 4), "b": (4,), "c": (5,)}


def test_elman_gradients_match_finite_differences(rng):
    model = ElmanRNN(D, H, 3).double()
    x, h0 = f64(rng, T, B, D), f64(rng, B, H)
    gradcheck_module(model, rng, [x, h0], lambda x, h0: list(model(x, h0)))


def test_elman_names_textbook_variables():
    model = ElmanRNN(D, H, 3)
    o, _ = model(tg.randn(T, B, D))
    nodes = tg.Graph.from_outputs(o).nodes
    named = {(n.name, n.timestep) for n in nodes if n.name in ("x", "a", "h", "o")}
    assert {(name, t) for name in ("x", "a", "h", "o") for t in range(T)} <= named
    assert all(n.scope == "ElmanRNN.cell" for n in nodes if n.name in ("a", "h", "o"))


@pytest.mark.parametrize("feedback", ["softmax", "logits"])
def test_jordan_gradients_match_finite_differences(feedback, rng):
    model = JordanRNN(D, H, 3, feedback=feedback).double()
    x, y0 = f64(rng, T, B, D), f64(rng, B, 3)
    gradcheck_module(model, rng, [x, y0], lambda x, y0: list(model(x, y0)))


def test_jordan_recurs_from_output_and_teacher_forcing_feeds_targets(rng):
    model = JordanRNN(D, H, 3, teacher_forcing=True).double()
    assert model.W.shape == (H, 3)
    x = tg.tensor(rng.standard_normal((T, B, D)))
    targets = np.array([[0, 1], [2, 2], [1, 0]])
    forced, last = model(x, targets=targets)
    # reference: step t sees one_hot(targets[t-1])
    U, W, V, b, c = (getattr(model, n).numpy() for n in "UWVbc")
    y = np.zeros((B, 3))
    for t in range(T):
        h = np.tanh(b + y @ W.T + x.numpy()[t] @ U.T)
        np.testing.assert_allclose(forced.numpy()[t], c + h @ V.T, atol=1e-12)
        y = np.eye(3)[targets[t]]
    np.testing.assert_array_equal(last.numpy(), y)
    model.eval()  # no teacher forcing at test time: feeds softmax(o(t-1))
    free, last = model(x, targets=targets)
    assert not np.allclose(free.numpy()[1:], forced.numpy()[1:])
    np.testing.assert_allclose(last.numpy().sum(axis=1), 1.0)


def test_elman_learns_a_delay_task_with_adam():
    """Predict the previous input symbol: needs the recurrence; loss must drop a lot."""
    rng = np.random.default_rng(0)
    model = ElmanRNN(3, 8, 3).double()
    opt = tg.optim.Adam(model.parameters(), lr=0.05)
    seq = rng.integers(0, 3, size=(6, 8))
    x = np.eye(3)[seq]
    y = np.concatenate([np.zeros((1, 8), dtype=int), seq[:-1]])
    losses = []
    for _ in range(60):
        opt.zero_grad()
        o, _ = model(tg.tensor(x))
        loss = tg.cross_entropy(o, y)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.3 * losses[0]


# ---------------------------------------------------------------------------
# heads
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn"])
def test_tagger_on_tokens_and_features(cell, rng):
    tagger = SequenceTagger(10, 4, cell=cell, hidden=5, embedding_dim=3, bidirectional=True)
    logits, state = tagger(rng.integers(0, 10, size=(T, B)), lengths=[T, 2])
    assert logits.shape == (T, B, 4)
    tagger2 = SequenceTagger(D, 4, cell=cell, hidden_size=5)
    logits2, _ = tagger2(tg.randn(T, B, D))
    assert logits2.shape == (T, B, 4)
    loss = tg.cross_entropy(logits, rng.integers(0, 4, size=(T, B)), mask=lengths_to_mask([T, 2], T))
    loss.backward()
    assert all(p.grad is not None for p in tagger.parameters())


def test_tagger_rejects_tokens_without_embedding():
    with pytest.raises(TypeError, match="embedding_dim"):
        SequenceTagger(D, 4)(np.zeros((T, B), dtype=np.int64))


def test_classifier_last_pooling_reads_each_sequence_end(rng):
    clf = SequenceClassifier(D, 3, cell="gru", hidden_size=H, bidirectional=True).double()
    x = rng.standard_normal((4, 2, D))
    logits = clf(tg.tensor(x), lengths=[4, 2])
    assert logits.shape == (2, 3)
    alone = clf(tg.tensor(x[:2, 1:2]))
    np.testing.assert_allclose(logits.numpy()[1], alone.numpy()[0], atol=1e-12)


def test_classifier_mean_pooling_over_valid_steps(rng):
    clf = SequenceClassifier(10, 3, embedding_dim=4, hidden_size=H, pooling="mean").double()
    tokens = rng.integers(0, 10, size=(4, 2))
    logits = clf(tokens, lengths=[4, 3])
    alone = clf(tokens[:3, 1:2])
    np.testing.assert_allclose(logits.numpy()[1], alone.numpy()[0], atol=1e-12)


def test_classifier_gradients_match_finite_differences(rng):
    clf = SequenceClassifier(D, 2, cell="lstm", hidden_size=H, pooling="mean").double()
    x = f64(rng, T, B, D)
    gradcheck_module(clf, rng, [x], lambda x: [clf(x, lengths=[T, 2])])


def test_language_model_shapes_state_and_sampling(rng):
    lm = LanguageModel(7, 4, 5, cell="gru", num_layers=2)
    tokens = rng.integers(0, 7, size=(T, B))
    logits, state = lm(tokens)
    assert logits.shape == (T, B, 7) and state.shape == (2, B, 5)
    a = lm.sample([1, 2], 6, rng=np.random.default_rng(3))
    b = lm.sample([1, 2], 6, rng=np.random.default_rng(3))
    assert a == b and len(a) == 6 and all(0 <= i < 7 for i in a)
    greedy = lm.sample([1, 2], 4, temperature=0)
    # greedy decoding equals argmax of running the model on its own output
    ids = [1, 2]
    for _ in range(4):
        out, _ = lm(np.array(ids)[:, None])
        ids.append(int(out.numpy()[-1, 0].argmax()))
    assert greedy == ids[2:]
    assert lm.training


def test_language_model_learns_a_cycle():
    lm = LanguageModel(4, 6, 12, cell="lstm")
    opt = tg.optim.Adam(lm.parameters(), lr=0.05)
    seq = np.array([0, 1, 2, 3] * 4)
    tokens, targets = seq[:-1, None], seq[1:, None]
    for _ in range(40):
        opt.zero_grad()
        logits, _ = lm(tokens)
        loss = tg.cross_entropy(logits, targets)
        loss.backward()
        opt.step()
    assert loss.item() < 0.3
    assert lm.sample([0], 6, temperature=0) == [1, 2, 3, 0, 1, 2]


def test_tied_weights_are_one_parameter():
    lm = LanguageModel(7, 5, 5, tie_weights=True)
    assert lm.decoder.weight is lm.embedding.weight
    names = [n for n, _ in lm.named_parameters()]
    assert "decoder.weight" not in names and "embedding.weight" in names


# ---------------------------------------------------------------------------
# fused LSTM cell (one primitive, closed-form VJP) vs the decomposed cell
# ---------------------------------------------------------------------------

def test_fused_lstm_cell_gradients_match_finite_differences(rng):
    cell = LSTMCell(D, H, fused=True).double()
    x, h, c = f64(rng, B, D), f64(rng, B, H), f64(rng, B, H)
    gradcheck_module(cell, rng, [x, h, c], lambda x, h, c: list(cell(x, (h, c))))


@pytest.mark.parametrize("bias", [True, False])
def test_fused_lstm_layer_agrees_with_decomposed(bias, rng):
    plain = LSTM(D, H, num_layers=2, bidirectional=True, bias=bias).double()
    fused = LSTM(D, H, num_layers=2, bidirectional=True, bias=bias, fused=True).double()
    fused.load_state_dict(plain.state_dict())
    x_np, w = rng.standard_normal((4, B, D)), rng.standard_normal((4, B, 2 * H))
    results = []
    for model in (plain, fused):
        x = tg.tensor(x_np, requires_grad=True)
        out, (h, c) = model(x, lengths=[4, 2])
        (tg.sum(out * w) + tg.sum(h * h) + tg.sum(c)).backward()
        results.append([out.numpy(), h.numpy(), c.numpy(), x.grad.numpy()]
                       + [p.grad.numpy() for p in model.parameters()])
    for a, b in zip(*results):
        np.testing.assert_allclose(b, a, rtol=1e-10, atol=1e-12)


def test_fused_cell_vjp_is_differentiable_again(rng):
    """create_graph=True runs the closed-form VJP on Tensors: second derivatives agree too."""
    second = []
    arrays = (rng.standard_normal((B, D)), rng.standard_normal((B, H)), rng.standard_normal((B, H)))
    for fused in (False, True):
        tg.manual_seed(5)
        cell = LSTMCell(D, H, fused=fused).double()
        x, h, c = (tg.tensor(a, requires_grad=True) for a in arrays)
        h2, c2 = cell(x, (h, c))
        loss = tg.sum(h2 * h2) + tg.sum(c2 * tg.tanh(c2))
        gx, gW = tg.grad(loss, [x, cell.W], create_graph=True)
        second.append([g.numpy() for g in tg.grad(tg.sum(gx * gx) + tg.sum(gW), [x, h, c, cell.U, cell.W])])
    for a, b in zip(*second):
        np.testing.assert_allclose(b, a, rtol=1e-10, atol=1e-12)


def test_fused_cell_records_one_node_per_step():
    # a layer with fused=True records one sequence kernel per direction, padded
    # batches included (tests/test_fused_sequence.py); a cell of its own records
    # one fused node per step
    model = LSTM(D, H, fused=True)
    out, _ = model(tg.randn(T, B, D, requires_grad=True), lengths=[T] * B)
    ops = [n.op for n in tg.Graph.from_outputs(out).nodes if not n.is_leaf]
    assert ops.count("lstm_sequence") == 1 and "lstm_cell" not in ops
    h, c = LSTMCell(D, H, fused=True)(tg.randn(B, D, requires_grad=True))
    ops = [n.op for n in tg.Graph.from_outputs(h).nodes if not n.is_leaf]
    assert ops.count("lstm_cell") == 1 and len(ops) < 6
    with pytest.raises(ValueError, match="layer norm"):
        LSTMCell(D, H, fused=True, layer_norm=True)


# -- per-step overhead: hoisted transposes, validation once per forward ---------------------------
@pytest.mark.parametrize("model_fn,params", [
    (lambda: LSTM(D, H, num_layers=2), ["U", "W"]),
    (lambda: GRU(D, H, bidirectional=True), ["U", "W"]),
    (lambda: ElmanRNN(D, H, 3), ["U", "W", "V"]),
    (lambda: JordanRNN(D, H, 3), ["U", "W", "V"]),
])
def test_parameter_transposes_are_recorded_once_per_forward(model_fn, params):
    steps = 6
    model = model_fn()
    out = model(tg.randn(steps, B, D))[0]
    graph = tg.Graph.from_outputs(out)
    consumers = graph.consumers()
    transposes = [n for n in graph.nodes if n.op == "transpose" and n.inputs[0].is_leaf]
    # one per parameter matrix per cell, not one per step
    cells = sum(1 for name, _ in model.named_parameters() if name.split(".")[-1] == params[0])
    assert len(transposes) == len(params) * cells
    assert all(n.timestep is None for n in transposes)
    # ... and each still feeds every step, so gradients reach the parameter from all of them
    for n in transposes:
        assert {c.timestep for c in consumers[n.id]} == set(range(steps))


def test_layers_validate_once_per_forward_not_every_step(monkeypatch):
    calls = []
    original = LSTMCell._check
    monkeypatch.setattr(LSTMCell, "_check", lambda self, x, h: calls.append(1) or original(self, x, h))
    model = LSTM(D, H)
    model(tg.randn(8, B, D))
    assert calls == []  # the layer checked x and the state once; its steps skip the checks
    with pytest.raises(ValueError, match="each state tensor must have shape"):
        model(tg.randn(T, B, D), (tg.zeros(1, B, H), tg.zeros(1, B + 1, H)))
    with pytest.raises(ValueError, match="state must be"):
        model.cell(0)(tg.randn(B, D), (tg.zeros(B, H), tg.zeros(B + 1, H)))  # a lone cell still checks


# -- dtypes: arrays follow the parameters, a mismatched Tensor is an error -----------------------
@pytest.mark.parametrize("model_fn", [
    lambda: RNN(D, H), lambda: LSTM(D, H), lambda: GRU(D, H), lambda: ElmanRNN(D, H, 3),
    lambda: JordanRNN(D, H, 3), lambda: RNNCell(D, H), lambda: LSTMCell(D, H),
])
def test_float64_arrays_are_cast_to_a_float32_models_dtype(model_fn):
    model = model_fn()
    assert all(p.dtype == np.float32 for p in model.parameters())
    shape = (B, D) if isinstance(model, (RNNCell, LSTMCell)) else (T, B, D)
    x = np.random.default_rng(0).standard_normal(shape)  # float64
    out = model(x)
    first = out if isinstance(out, tg.Tensor) else out[0]
    assert first.dtype == np.float32
    with pytest.raises(TypeError, match="float64.*float32"):
        model(tg.tensor(x, dtype="float64"))


def test_float64_state_array_is_cast_and_float64_state_tensor_rejected():
    model = GRU(D, H)
    h0 = np.zeros((1, B, H))
    assert model(np.zeros((T, B, D)), h0)[1].dtype == np.float32
    with pytest.raises(TypeError, match="float64.*float32"):
        model(np.zeros((T, B, D)), tg.tensor(h0, dtype="float64"))


def test_classifier_casts_float64_features():
    model = SequenceClassifier(D, 3, cell="gru", hidden_size=H)
    logits = model(np.random.default_rng(0).standard_normal((T, B, D)), [T, 1])
    assert logits.dtype == np.float32
    with pytest.raises(TypeError, match="integer input"):
        model(np.zeros((T, B, D), dtype=np.int64))


# -- RNN takes PyTorch's positional order ------------------------------------------------------
def test_rnn_accepts_pytorch_positional_order():
    relu = RNN(3, 4, 1, "relu")
    assert relu.nonlinearity == "relu" and relu.cell(0).nonlinearity == "relu"
    torch_order = RNN(3, 4, 2, "tanh", False, True, 0.0, True)
    assert (torch_order.bias, torch_order.batch_first, torch_order.bidirectional) == (False, True, True)
    shared_order = RNN(3, 4, 2, False, True, 0.0, True)  # bias fourth, as LSTM and GRU take it
    assert (shared_order.bias, shared_order.batch_first, shared_order.bidirectional) == (False, True, True)
    assert shared_order.nonlinearity == "tanh"
    with pytest.raises(TypeError, match="multiple values for argument 'bias'"):
        RNN(3, 4, 1, "relu", True, bias=False)
    with pytest.raises(ValueError, match="nonlinearity"):
        RNN(3, 4, 1, "sigmoid")


def test_layers_take_a_mask_as_well_as_lengths():
    """mask= (T, B) of valid steps gives exactly what lengths= gives."""
    from tinygraph.models import GRU, LSTM
    rng = np.random.default_rng(5)
    x = rng.standard_normal((5, 3, 2))
    lengths = np.array([5, 2, 3])
    mask = np.arange(5)[:, None] < lengths[None, :]
    for layer_cls in (GRU, LSTM):
        tg.manual_seed(0)
        layer = layer_cls(2, 4, bidirectional=True).double()
        by_lengths, _ = layer(x, lengths=lengths)
        by_mask, _ = layer(x, mask=mask)
        np.testing.assert_array_equal(by_lengths.numpy(), by_mask.numpy())
        assert np.all(by_mask.numpy()[3:, 1] == 0)  # sequence 1 ends after 2 steps
    with pytest.raises(ValueError, match="not both"):
        layer(x, lengths=lengths, mask=mask)


# -- found in review ------------------------------------------------------------------------
@pytest.mark.parametrize("layer", [RNN, ElmanRNN])
def test_fused_rnn_refuses_create_graph_with_the_documented_message(layer):
    model = layer(3, 4, fused=True, dtype="float64") if layer is RNN else layer(3, 4, 2, fused=True).double()
    x = tg.tensor(np.random.default_rng(0).standard_normal((5, 2, 3)), requires_grad=True)
    out = model(x)[0]
    with pytest.raises(RuntimeError, match="fused first-order kernel.*fused=False"):
        tg.grad((out * out).sum(), [x], create_graph=True)


def test_batch_first_language_model_samples_what_the_time_major_one_does():
    from tinygraph.models import LanguageModel
    tg.manual_seed(0)
    time_major = LanguageModel(11, 8, 8, cell="gru")
    batch_first = LanguageModel(11, 8, 8, cell="gru", batch_first=True)
    batch_first.load_state_dict(time_major.state_dict())
    prompt = [1, 2, 3, 4, 5]
    for n in (1, 6):
        assert batch_first.sample(prompt, n, temperature=0) == time_major.sample(prompt, n, temperature=0)
    # the whole prompt counts, not its last token alone: a different context gives other logits
    logits, _ = time_major(np.asarray(prompt)[:, None])
    alone, _ = time_major(np.asarray([5])[:, None])
    assert not np.allclose(logits.numpy()[-1], alone.numpy()[-1])


@pytest.mark.parametrize("batch_first", [False, True])
def test_mask_of_the_wrong_shape_names_the_expected_one(batch_first):
    layer = LSTM(2, 3, batch_first=batch_first)
    x = np.zeros((3, 5, 2)) if batch_first else np.zeros((5, 3, 2))
    with pytest.raises(ValueError, match=r"mask must be \(B, T\) = \(3, 5\)" if batch_first
                       else r"mask must be \(T, B\) = \(5, 3\)"):
        layer(x, mask=np.ones((7, 3), bool))
    good = np.ones((3, 5), bool) if batch_first else np.ones((5, 3), bool)
    np.testing.assert_allclose(layer(x, mask=good)[0].numpy(), layer(x)[0].numpy())


@pytest.mark.parametrize("bad", [-1, 3])
def test_jordan_teacher_forcing_refuses_class_ids_out_of_range(bad):
    model = JordanRNN(2, 4, 3, teacher_forcing=True)
    targets = np.zeros((4, 2), np.int64)
    targets[1, 0] = bad
    with pytest.raises(ValueError, match=r"JordanRNN: targets must be class ids in \[0, 3\)"):
        model(np.zeros((4, 2, 2)), targets=targets)


def test_empty_sizes_are_refused_by_name():
    with pytest.raises(ValueError, match="LSTMCell: input_size and hidden_size must be >= 1"):
        LSTM(4, 0)
    for fused in (False, True):
        with pytest.raises(ValueError, match=r"LSTM: the input has no time steps \(T = 0"):
            LSTM(4, 3, fused=fused)(np.zeros((0, 2, 4)))


def test_heads_build_every_part_in_the_dtype_asked_for():
    from tinygraph.models import LanguageModel, SequenceClassifier, SequenceTagger
    tokens = np.array([[1, 2], [3, 0], [4, 5]])
    heads = [SequenceClassifier(10, 2, embedding_dim=4, dtype=np.float64),
             SequenceTagger(10, 3, embedding_dim=4, dtype=np.float64),
             LanguageModel(10, 4, 4, dtype=np.float64)]
    for head in heads:
        assert {p.dtype for p in head.parameters()} == {np.dtype(np.float64)}, type(head).__name__
        out = head(tokens)
        assert (out[0] if isinstance(out, tuple) else out).dtype == np.float64


def test_fused_lstm_cell_refuses_a_broadcast_state_it_could_not_differentiate():
    from tinygraph.models.fused import lstm_cell
    rng = np.random.default_rng(0)
    x = tg.tensor(rng.standard_normal((3, 4)), requires_grad=True)
    h = c = tg.tensor(np.zeros((1, 2)))
    U, W = tg.tensor(rng.standard_normal((8, 4))), tg.tensor(rng.standard_normal((8, 2)))
    with pytest.raises(ValueError, match=r"lstm_cell: x must be \(B, D\) and h, c \(B, H\)"):
        lstm_cell(x, h, c, U, W)


def test_irnn_says_which_options_it_fixes():
    with pytest.raises(ValueError, match="IRNN: recurrent_init is fixed"):
        IRNN(2, 3, recurrent_init="orthogonal")
