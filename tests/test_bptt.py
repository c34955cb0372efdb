"""Full and truncated BPTT against hand-built references, state carry, streaming, memory."""
import tracemalloc

import numpy as np
import pytest

import tinygraph as tg
from tinygraph import bptt
from tinygraph.models import LSTM, ElmanRNN
from tinygraph.nn import Module
from tinygraph.optim import SGD

T, B, D, H, K = 13, 2, 3, 4, 5


class LSTMRegressor(Module):
    """An LSTM layer (state (h, c) carried) under the ``model(x, state)`` contract."""

    def __init__(self):
        super().__init__()
        self.rnn = LSTM(D, H, dtype="float64")

    def forward(self, x, state=None):
        return self.rnn(x, state)


def sum_ce(outputs, targets):
    return tg.cross_entropy(outputs, targets, reduction="sum")


def sum_mse(outputs, targets):
    return tg.mse_loss(outputs, targets, reduction="sum")


@pytest.fixture
def elman_case():
    tg.manual_seed(1)
    model = ElmanRNN(D, H, K, dtype="float64")
    rng = np.random.default_rng(2)
    xs = rng.standard_normal((T, B, D))
    ys = rng.integers(0, K, (T, B))
    return model, xs, ys, sum_ce


@pytest.fixture
def lstm_case():
    tg.manual_seed(3)
    model = LSTMRegressor()
    rng = np.random.default_rng(4)
    return model, rng.standard_normal((T, B, D)), rng.standard_normal((T, B, H)), sum_mse


def grads_of(model):
    return {n: p.grad.numpy().copy() for n, p in model.named_parameters()}


def assert_grads_close(got, want, rtol=1e-10, atol=1e-12):
    assert got.keys() == want.keys()
    for name in want:
        np.testing.assert_allclose(got[name], want[name], rtol=rtol, atol=atol, err_msg=name)


def states_before_each_step(model, xs):
    """states[t] = detached state before step t, from one no-grad pass one step at a time."""
    states, s = [None], None
    with tg.no_grad():
        for t in range(len(xs)):
            _, s = model(xs[t:t + 1], s)
            states.append(bptt.truncate(s))
    return states


def reference_tbptt(model, xs, ys, loss_fn, k1, k2):
    """Williams & Peng by hand: for every window end b, differentiate the loss of steps
    [a, b) = [b - k1, b) through the last k2 steps [b - k2, b), starting from the
    detached state stored before step b - k2."""
    params = [p for _, p in model.named_parameters()]
    total = {n: np.zeros(p.shape) for n, p in model.named_parameters()}
    states = states_before_each_step(model, xs)
    for a in range(0, len(xs), k1):
        b = min(a + k1, len(xs))
        r = max(0, b - k2)
        outputs, _ = model(xs[r:b], states[r])
        loss = loss_fn(outputs[a - r:], ys[a:b])
        for (n, _), g in zip(model.named_parameters(), tg.grad(loss, params)):
            total[n] += g.numpy()
    return total


def test_tbptt_k_k_equals_sum_of_independent_windows(elman_case):
    model, xs, ys, loss_fn = elman_case
    xs, ys, k = xs[:12], ys[:12], 4
    params = [p for _, p in model.named_parameters()]
    want = {n: np.zeros(p.shape) for n, p in model.named_parameters()}
    state, losses = None, []
    for a in range(0, 12, k):
        outputs, new_state = model(xs[a:a + k], state)
        loss = loss_fn(outputs, ys[a:a + k])
        losses.append(loss.item())
        for (n, _), g in zip(model.named_parameters(), tg.grad(loss, params)):
            want[n] += g.numpy()
        state = new_state.detach()

    result = bptt.backprop_through_time(model, xs, ys, loss_fn, k1=k, k2=k)
    assert_grads_close(grads_of(model), want)
    assert result.windows == [(0, 4, 0), (4, 8, 4), (8, 12, 8)]
    assert result.num_updates == 0 and len(result.update_grad_norms) == 1  # accumulated, one norm
    assert result.loss == pytest.approx(sum(losses), rel=1e-12)
    np.testing.assert_allclose(result.state.numpy(), state.numpy(), rtol=1e-12)
    assert result.state.is_leaf and not result.state.requires_grad


def independent_chunks(model, xs, ys, loss_fn, k):
    """Gradients and final state of plain chunking: each chunk of k steps (the last may be
    shorter) differentiated through itself only, starting from the previous chunk's state
    detached."""
    params = [p for _, p in model.named_parameters()]
    want = {n: np.zeros(p.shape) for n, p in model.named_parameters()}
    state = None
    for a in range(0, len(xs), k):
        outputs, new_state = model(xs[a:a + k], state)
        for (n, _), g in zip(model.named_parameters(), tg.grad(loss_fn(outputs, ys[a:a + k]), params)):
            want[n] += g.numpy()
        state = bptt.truncate(new_state)
    return want, state


@pytest.mark.parametrize("case", ["elman_case", "lstm_case"])
def test_tbptt_k_k_is_plain_chunking_when_T_is_not_a_multiple_of_k(case, request):
    model, xs, ys, loss_fn = request.getfixturevalue(case)
    assert len(xs) == 13
    want, state = independent_chunks(model, xs, ys, loss_fn, 4)
    result = bptt.backprop_through_time(model, xs, ys, loss_fn, k1=4, k2=4)
    assert_grads_close(grads_of(model), want)
    # the short last window (step 12) backpropagates through itself, not steps 9..12
    assert result.windows == [(0, 4, 0), (4, 8, 4), (8, 12, 8), (12, 13, 12)]
    for got, ref in zip(bptt.state_tensors(result.state), bptt.state_tensors(state)):
        np.testing.assert_allclose(got.numpy(), ref.numpy(), rtol=1e-12)


def test_window_plan_k1_lt_k2_still_looks_k2_steps_back():
    assert bptt.window_plan(13, 3, 5) == [(0, 3, 0), (3, 6, 1), (6, 9, 4), (9, 12, 7), (12, 13, 8)]
    assert bptt.window_plan(13, 3, 13) == [(a, min(a + 3, 13), 0) for a in range(0, 13, 3)]
    assert bptt.window_plan(10, 2, 5) == [(0, 2, 0), (2, 4, 0), (4, 6, 1), (6, 8, 3), (8, 10, 5)]
    assert bptt.window_plan(13, 13, 13) == bptt.window_plan(13, 20, 20) == [(0, 13, 0)]


@pytest.mark.parametrize("k1,k2", [(2, 5), (3, 4), (1, 3), (4, 9)])
def test_tbptt_k1_lt_k2_matches_hand_reference_rnn(elman_case, k1, k2):
    model, xs, ys, loss_fn = elman_case
    want = reference_tbptt(model, xs, ys, loss_fn, k1, k2)
    bptt.backprop_through_time(model, xs, ys, loss_fn, k1=k1, k2=k2)
    assert_grads_close(grads_of(model), want)


@pytest.mark.parametrize("k1,k2", [(2, 5), (3, 7)])
def test_tbptt_k1_lt_k2_matches_hand_reference_lstm(lstm_case, k1, k2):
    model, xs, ys, loss_fn = lstm_case
    want = reference_tbptt(model, xs, ys, loss_fn, k1, k2)
    result = bptt.backprop_through_time(model, xs, ys, loss_fn, k1=k1, k2=k2)
    assert_grads_close(grads_of(model), want)
    h, c = result.state  # both carried, both detached
    _, (h_ref, c_ref) = model(xs, None)
    np.testing.assert_allclose(h.numpy(), h_ref.numpy(), rtol=1e-12)
    np.testing.assert_allclose(c.numpy(), c_ref.numpy(), rtol=1e-12)
    assert h.is_leaf and c.is_leaf


@pytest.mark.parametrize("case", ["elman_case", "lstm_case"])
def test_k2_at_least_T_equals_full_bptt(case, request):
    model, xs, ys, loss_fn = request.getfixturevalue(case)
    outputs, _ = model(xs, None)
    loss_fn(outputs, ys).backward()  # plain backward over the unrolled graph
    want = grads_of(model)
    for k1, k2 in [(3, T), (5, 100), (None, None)]:
        model.zero_grad()
        result = bptt.backprop_through_time(model, xs, ys, loss_fn, k1=k1, k2=k2)
        assert_grads_close(grads_of(model), want)
        assert result.loss == pytest.approx(loss_fn(model(xs, None)[0], ys).item(), rel=1e-12)


def test_optimizer_steps_after_every_window(elman_case):
    model, xs, ys, loss_fn = elman_case
    twin = ElmanRNN(D, H, K, dtype="float64")
    twin.load_state_dict(model.state_dict())
    xs, ys, k, lr = xs[:10], ys[:10], 5, 0.05
    state = None
    for a in range(0, 10, k):  # the same updates, written by hand
        twin.zero_grad()
        outputs, state = twin(xs[a:a + k], state)
        loss_fn(outputs, ys[a:a + k]).backward()
        for p in twin.parameters():
            p.data -= lr * p.grad.data
        state = state.detach()
    opt = SGD(model.parameters(), lr=lr)
    result = bptt.backprop_through_time(model, xs, ys, loss_fn, k1=k, optimizer=opt)
    assert result.num_updates == 2
    for (n, p), (_, q) in zip(model.named_parameters(), twin.named_parameters()):
        np.testing.assert_allclose(p.numpy(), q.numpy(), rtol=1e-12, err_msg=n)


def test_clip_norm_with_optimizer_records_pre_clip_norm(elman_case):
    model, xs, ys, loss_fn = elman_case
    opt = SGD(model.parameters(), lr=0.0)
    result = bptt.backprop_through_time(model, xs, ys, loss_fn, k1=5, optimizer=opt, clip_norm=1e-3)
    assert all(result.clipped) and len(result.clipped) == 3
    assert min(result.update_grad_norms) > 1e-3
    assert bptt.grad_norm(model.parameters()) == pytest.approx(1e-3, rel=1e-3)  # last window, clipped


def test_grad_norms_full_bptt_match_gradient_flow(elman_case):
    model, xs, ys, loss_fn = elman_case
    result = bptt.backprop_through_time(model, xs, ys, loss_fn, track_grad_norms=True)
    np.testing.assert_allclose(result.grad_norms, bptt.gradient_flow(model, xs, ys, loss_fn), rtol=1e-10)
    untracked = bptt.backprop_through_time(model, xs, ys, loss_fn)
    assert untracked.grad_norms.shape == (T,) and np.isnan(untracked.grad_norms).all()


def test_grad_norms_tbptt_are_the_truncated_gradients(lstm_case):
    model, xs, ys, loss_fn = lstm_case
    xs, ys, k = xs[:12], ys[:12], 4
    result = bptt.backprop_through_time(model, xs, ys, loss_fn, k1=k, track_grad_norms=True)
    states = states_before_each_step(model, xs)
    for a in range(0, 12, k):
        h_flow, c_flow = bptt.gradient_flow(model, xs[a:a + k], ys[a:a + k], loss_fn, state=states[a],
                                            per_state=True)
        np.testing.assert_allclose(result.grad_norms[a:a + k], h_flow, rtol=1e-10)
        np.testing.assert_allclose(result.state_grad_norms[1][a:a + k], c_flow, rtol=1e-10)


def test_truncate_keeps_value_and_stops_gradient():
    x = tg.tensor([[0.5, -1.0]], dtype="float64", requires_grad=True)
    W = tg.tensor([[1.0, 2.0], [3.0, 4.0]], dtype="float64", requires_grad=True)
    h = tg.tanh(x @ W)
    c = h * 2.0
    h_cut, c_cut = bptt.truncate((h, c))
    np.testing.assert_array_equal(h_cut.numpy(), h.numpy())
    np.testing.assert_array_equal(c_cut.numpy(), c.numpy())
    V = tg.tensor([[1.0], [1.0]], dtype="float64", requires_grad=True)
    loss = ((h_cut + c_cut) @ V).sum()
    loss.backward()
    assert x.grad is None and W.grad is None  # nothing flowed past the cut
    np.testing.assert_allclose(V.grad.numpy()[:, 0], (h.numpy() + c.numpy())[0])
    with pytest.raises(RuntimeError, match="does not require grad"):
        tg.grad(((h_cut @ V).sum()), [h_cut])


def test_truncate_accepts_none_and_rejects_other_things():
    assert bptt.truncate(None) is None
    with pytest.raises(TypeError, match="Tensor or a tuple"):
        bptt.truncate([np.zeros(2)])


def test_stream_state_says_to_truncate_a_freed_state(elman_case):
    model, xs, ys, loss_fn = elman_case
    stream = bptt.StreamState()
    outputs, h = model(xs[:4], stream.value)
    stream.update(h)
    loss_fn(outputs, ys[:4]).backward()
    with pytest.raises(bptt.FreedStateError, match="truncate"):
        stream.value  # forgot stream.truncate()
    value = h.numpy().copy()
    stream.truncate()
    np.testing.assert_array_equal(stream.value.numpy(), value)
    outputs, h = model(xs[4:8], stream.value)  # fine again
    loss_fn(outputs, ys[4:8]).backward()
    assert stream.reset() is None


def test_engine_error_on_reusing_a_freed_state_mentions_truncation(elman_case):
    model, xs, ys, loss_fn = elman_case
    outputs, h = model(xs[:3], None)
    loss_fn(outputs, ys[:3]).backward()
    outputs, _ = model(xs[3:6], h)
    with pytest.raises(RuntimeError, match="truncate"):
        loss_fn(outputs, ys[3:6]).backward()


def test_stateful_bptt_over_chunks_equals_one_long_call(lstm_case):
    model, xs, ys, loss_fn = lstm_case
    k = 3
    twin = LSTMRegressor()
    twin.load_state_dict(model.state_dict())
    whole = bptt.backprop_through_time(twin, xs[:12], ys[:12], loss_fn, k1=k)
    stream = bptt.StatefulBPTT(model, loss_fn, k1=k)
    losses = [stream.step(xs[a:a + 6], ys[a:a + 6]).loss for a in (0, 6)]
    assert sum(losses) == pytest.approx(whole.loss, rel=1e-12)
    assert_grads_close(grads_of(model), grads_of(twin))
    np.testing.assert_allclose(stream.state[1].numpy(), whole.state[1].numpy(), rtol=1e-12)
    assert stream.reset() is None and stream.state is None


@pytest.mark.parametrize("k1,k2,message", [(0, None, "positive"), (5, 3, "k2"), (2.5, None, "integers")])
def test_bad_windows_are_rejected(elman_case, k1, k2, message):
    model, xs, ys, loss_fn = elman_case
    with pytest.raises(ValueError, match=message):
        bptt.backprop_through_time(model, xs, ys, loss_fn, k1=k1, k2=k2)


def test_mismatched_targets_are_rejected(elman_case):
    model, xs, ys, loss_fn = elman_case
    with pytest.raises(ValueError, match="targets"):
        bptt.backprop_through_time(model, xs, ys[:-1], loss_fn, k1=3)


def _peak_bytes(T_steps, k):
    rng = np.random.default_rng(0)
    xs = rng.standard_normal((T_steps, 2, 3))
    ys = rng.integers(0, 4, (T_steps, 2))
    tg.manual_seed(0)
    model = ElmanRNN(3, 8, 4)
    tracemalloc.start()
    try:
        bptt.backprop_through_time(model, xs, ys, sum_ce, k1=k, k2=k)
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_truncated_memory_does_not_grow_with_sequence_length():
    short, long = _peak_bytes(200, 50), _peak_bytes(2000, 50)
    assert long <= 1.5 * short, (short, long)
    full_short, full_long = _peak_bytes(200, None), _peak_bytes(600, None)
    assert full_long > 2.5 * full_short  # the unrolled graph does grow: the test measures something


def test_clip_value_then_norm_reports_pre_clip_norm_and_clips_to_both(elman_case):
    model, xs, ys, loss_fn = elman_case
    opt = SGD(model.parameters(), 0.0)
    result = bptt.backprop_through_time(model, xs, ys, loss_fn, optimizer=opt, clip_value=1e-3,
                                        clip_norm=1e-3)
    clipped = [p.grad.numpy() for p in model.parameters()]
    assert max(np.abs(g).max() for g in clipped) <= 1e-3
    assert np.sqrt(sum((g ** 2).sum() for g in clipped)) <= 1e-3
    model.zero_grad()
    bptt.backprop_through_time(model, xs, ys, loss_fn)  # unclipped gradients of the same (lr 0) model
    assert result.update_grad_norms[0] == pytest.approx(bptt.grad_norm(model.parameters()), rel=1e-12)
    assert result.clipped == [True]


def test_bidirectional_models_refuse_tbptt_windows_and_per_step_tracking():
    model = LSTM(D, H, bidirectional=True, dtype="float64")
    xs, ys = np.zeros((T, B, D)), np.zeros((T, B, 2 * H))
    with pytest.raises(ValueError, match="bidirectional.*full BPTT"):
        bptt.backprop_through_time(model, xs, ys, sum_mse, k1=4, k2=4)
    with pytest.raises(ValueError, match="per-step diagnostics need a unidirectional model"):
        bptt.backprop_through_time(model, xs, ys, sum_mse, track_grad_norms=True)
    result = bptt.backprop_through_time(model, xs, ys, sum_mse)  # full BPTT is fine
    assert result.windows == [(0, T, 0)]


def test_teacher_forcing_reaches_the_model_through_bptt():
    from tinygraph.models import JordanRNN
    tg.manual_seed(5)
    model = JordanRNN(D, H, K, teacher_forcing=True, dtype="float64")
    rng = np.random.default_rng(6)
    xs, ys = rng.standard_normal((T, B, D)), rng.integers(0, K, (T, B))
    params = model.parameters()
    forced = tg.grad(sum_ce(model(xs, targets=ys)[0], ys), params)
    free = tg.grad(sum_ce(model(xs)[0], ys), params)
    assert not np.allclose(forced[1].numpy(), free[1].numpy())  # W sees one-hot targets, not softmax
    bptt.backprop_through_time(model, xs, ys, sum_ce)
    for p, want in zip(params, forced):
        np.testing.assert_allclose(p.grad.numpy(), want.numpy(), rtol=1e-10, atol=1e-12)


def test_float64_arrays_drive_a_float32_model():
    tg.manual_seed(7)
    model = ElmanRNN(D, H, K)  # float32
    rng = np.random.default_rng(8)
    xs, ys = rng.standard_normal((T, B, D)), rng.integers(0, K, (T, B))
    result = bptt.backprop_through_time(model, xs, ys, sum_ce, k1=4)
    assert np.isfinite(result.loss) and all(p.grad.dtype == np.float32 for p in model.parameters())
    assert np.isfinite(bptt.gradient_flow(model, xs, ys, sum_ce)).all()


@pytest.mark.parametrize("traced", [False, True])
def test_optimizer_over_some_parameters_clips_and_reports_only_theirs(traced):
    """Training only the readout (V, c): each window's norm is the readout's gradient of that
    window, the clipped update matches a hand-written loop, and U's gradient does not pile up."""
    from tinygraph import optim
    rng = np.random.default_rng(0)
    xs, ys = rng.standard_normal((12, 4, 3)), rng.integers(0, 5, (12, 4))
    tg.manual_seed(0)
    model = ElmanRNN(3, 6, 5).double()
    result = bptt.backprop_through_time(model, xs, ys, tg.cross_entropy, k1=3, clip_norm=0.3, traced=traced,
                                        optimizer=optim.SGD([model.V, model.c], lr=0.1))
    tg.manual_seed(0)
    ref = ElmanRNN(3, 6, 5).double()
    head, norms, state = [ref.V, ref.c], [], None
    for a in range(0, 12, 3):
        out, state = ref(xs[a:a + 3], state)
        *grads, grad_U = tg.grad(tg.cross_entropy(out, ys[a:a + 3]), head + [ref.U])
        for p, g in zip(head, grads):
            p.grad = g
        norms.append(optim.clip_grad_norm(head, 0.3))
        optim.SGD(head, lr=0.1).step()
        state = bptt.truncate(state)
    np.testing.assert_allclose(result.update_grad_norms, norms, rtol=1e-10)
    for p, q in zip([model.V, model.c, model.U], head + [ref.U]):
        np.testing.assert_allclose(p.numpy(), q.numpy(), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(model.U.grad.numpy(), grad_U.numpy(), rtol=1e-10)   # the last window's only


# -- what the drivers refuse, and how they say it (a new user's report) ---------------------
def test_drivers_refuse_batch_first_layers_and_targets_that_are_not_per_step():
    from tinygraph.models import LSTM
    rng = np.random.default_rng(0)
    xs, ys = rng.standard_normal((6, 4, 3)), rng.integers(0, 2, (6, 4))

    class Tagger(Module):
        def __init__(self, **options):
            super().__init__()
            self.rnn = LSTM(3, 2, **options)

        def forward(self, x, state=None):
            return self.rnn(x, state)

    with pytest.raises(ValueError, match="batch_first=True layer"):
        bptt.backprop_through_time(Tagger(batch_first=True), xs, ys, tg.cross_entropy, k1=2)
    with pytest.raises(ValueError, match="batch_first=True"):
        bptt.gradient_flow(Tagger(batch_first=True), xs, ys, tg.cross_entropy)
    square = rng.standard_normal((4, 4, 3))               # T == B: a (B,) label vector passes shape[0]
    with pytest.raises(ValueError, match="not per step and per sequence.*many-to-one"):
        bptt.backprop_through_time(Tagger(), square, rng.integers(0, 2, 4), tg.cross_entropy, k1=2)
    with pytest.raises(ValueError, match="many-to-one"):
        bptt.backprop_through_time(Tagger(), xs, rng.integers(0, 2, 4), tg.cross_entropy)


def test_a_model_that_does_not_return_outputs_and_state_is_named():
    class OutputsOnly(Module):
        def __init__(self):
            super().__init__()
            self.rnn = ElmanRNN(3, 4, 2)

        def forward(self, x, state=None):
            return self.rnn(x, state)[0]

    rng = np.random.default_rng(1)
    xs, ys = rng.standard_normal((4, 2, 3)), rng.integers(0, 2, (4, 2))
    with pytest.raises(TypeError, match=r"must return \(outputs, state\); got a Tensor of shape \(2, 2, 2\)"):
        bptt.backprop_through_time(OutputsOnly(), xs, ys, tg.cross_entropy, k1=2)


def test_fit_refuses_padded_batches_and_uneven_carried_batches():
    from tinygraph import data
    from tinygraph.optim import SGD
    model = ElmanRNN(1, 3, 2)
    batches = data.make_batches([[1, 0, 1], [1, 1]], [[0, 1, 0], [1, 0]], batch_size=2)
    with pytest.raises(TypeError, match="padded Batch.*lengths=b.lengths"):
        bptt.fit(model, batches, tg.cross_entropy, SGD(model.parameters(), lr=0.1), epochs=1, progress=False)
    rng = np.random.default_rng(2)
    uneven = [(rng.standard_normal((4, 3, 1)), rng.integers(0, 2, (4, 3))),
              (rng.standard_normal((4, 2, 1)), rng.integers(0, 2, (4, 2)))]
    with pytest.raises(ValueError, match="carry_state needs the same batch size"):
        bptt.fit(model, uneven, tg.cross_entropy, SGD(model.parameters(), lr=0.1), epochs=1,
                 carry_state=True, progress=False)


def test_a_model_returning_a_list_of_outputs_and_state_still_trains():
    class ListModel(Module):
        def __init__(self):
            super().__init__()
            self.rnn = ElmanRNN(3, 4, 2)

        def forward(self, x, state=None):
            return list(self.rnn(x, state))

    rng = np.random.default_rng(3)
    result = bptt.backprop_through_time(ListModel(), rng.standard_normal((4, 2, 3)),
                                        rng.integers(0, 2, (4, 2)), tg.cross_entropy, k1=2)
    assert np.isfinite(result.loss)


def test_an_unbatched_sequence_of_a_users_model_still_trains():
    rng = np.random.default_rng(4)
    U = tg.tensor(rng.standard_normal((3, 4)) * 0.3, requires_grad=True)
    W = tg.tensor(rng.standard_normal((4, 4)) * 0.3, requires_grad=True)

    def model(x, state=None):                   # x (T, 3), state (4,): one sequence, no batch axis
        h = tg.zeros(4, dtype="float64") if state is None else state
        outs = []
        for t in range(x.shape[0]):
            h = tg.tanh(x[t] @ U + h @ W)
            outs.append(h)
        return tg.stack(outs), h

    model.parameters = lambda: [U, W]
    xs = rng.standard_normal((6, 3))
    for targets, loss in ((rng.integers(0, 4, 6), tg.cross_entropy), (rng.standard_normal((6, 4)), tg.mse_loss)):
        U.grad = W.grad = None
        result = bptt.backprop_through_time(model, xs, targets, loss, k1=3)
        assert np.isfinite(result.loss) and U.grad is not None and np.abs(U.grad.numpy()).sum() > 0
