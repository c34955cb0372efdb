"""Traced BPTT windows (fit/backprop_through_time/StatefulBPTT with traced=True) against eager, in float64.

The eager driver is itself checked against hand-built Williams & Peng
references in test_bptt.py; here every traced run must give the same
parameters, losses and states as the eager one, and refuse what a trace
cannot replay.
"""
import numpy as np
import pytest

import tinygraph as tg
from tinygraph import bptt
from tinygraph.models import LSTM, ElmanRNN, JordanRNN, LanguageModel
from tinygraph.nn import Dropout, Module
from tinygraph.optim import Adam
from tinygraph.traced_windows import TracedWindows

V, T, B = 11, 23, 3


def mean_ce(outputs, targets):
    return tg.cross_entropy(outputs.reshape(-1, outputs.shape[-1]), targets.reshape(-1))


def token_batches(n, seed, steps=T):
    rng = np.random.default_rng(seed)
    return [(rng.integers(0, V, (steps, B)), rng.integers(0, V, (steps, B))) for _ in range(n)]


def language_model(cell, fused, seed=0):
    tg.manual_seed(seed)
    model = LanguageModel(V, 6, 8, cell=cell, fused=fused, num_layers=2)
    model.double()
    return model


def fit_twice(make_model, data, **options):
    """The same training run eagerly and traced: (models, histories)."""
    runs = []
    for traced in (False, True):
        model = make_model()
        opt = Adam(model.parameters(), lr=0.02)
        history = bptt.fit(model, data, mean_ce, opt, epochs=2, progress=False, traced=traced, **options)
        runs.append((model, history))
    return runs


def assert_same_parameters(model, reference, rtol=1e-9, atol=1e-11):
    for (name, p), (_, q) in zip(model.named_parameters(), reference.named_parameters()):
        np.testing.assert_allclose(p.numpy(), q.numpy(), rtol=rtol, atol=atol, err_msg=name)


@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn"])
@pytest.mark.parametrize("fused", [True, False], ids=["fused", "decomposed"])
@pytest.mark.parametrize("k1, k2, carry", [(None, None, False), (5, 5, True), (4, 9, True), (7, 10, False)])
def test_fit_traced_equals_eager(cell, fused, k1, k2, carry):
    (eager, h_eager), (traced, h_traced) = fit_twice(lambda: language_model(cell, fused), token_batches(3, 1),
                                                     k1=k1, k2=k2, carry_state=carry)
    assert_same_parameters(traced, eager)
    np.testing.assert_allclose(h_traced.step_loss, h_eager.step_loss, rtol=1e-10)
    np.testing.assert_allclose(h_traced.step_grad_norm, h_eager.step_grad_norm, rtol=1e-9)
    assert len(h_traced.step_loss) == len(h_eager.step_loss) == 2 * 3 * len(bptt.window_plan(T, *(
        bptt.resolve_window(k1, k2, T))))


def test_fit_traced_evaluates_with_a_forward_replay_as_eager_does():
    data, held_out = token_batches(2, 11), token_batches(2, 12, steps=17)
    (eager, h_eager), (traced, h_traced) = fit_twice(lambda: language_model("lstm", False), data, k1=6,
                                                     eval_data=held_out, carry_state=True)
    eager_eval = [e["eval_loss"] for e in h_eager.epochs]
    np.testing.assert_allclose([e["eval_loss"] for e in h_traced.epochs], eager_eval, rtol=1e-10)
    assert_same_parameters(traced, eager)
    traced.zero_grad()
    again = bptt.evaluate(traced, held_out, mean_ce, carry_state=True, traced=True)
    assert again == pytest.approx(bptt.evaluate(traced, held_out, mean_ce, carry_state=True), rel=1e-10)
    assert all(p.grad is None for p in traced.parameters()) and traced.training


def test_window_layouts_are_traced_once_and_decomposed_layers_replay_fused():
    model = language_model("lstm", fused=False)
    opt = Adam(model.parameters(), lr=0.01)
    tracer = TracedWindows(model, mean_ce)
    data = token_batches(2, 2)
    # T = 23, k1 = k2 = 5: four windows of 5 and one of 3; the first window starts from state None
    for xs, ys in data:
        bptt.backprop_through_time(model, xs, ys, mean_ce, k1=5, optimizer=opt, traced=tracer)
    assert tracer.traces == 3  # (None, 5 steps), (state, 5 steps), (state, 3 steps)
    for xs, ys in data:
        bptt.backprop_through_time(model, xs, ys, mean_ce, k1=5, optimizer=opt, traced=tracer)
    assert tracer.traces == 3
    assert tracer.fused == {"lstm_sweep": 6}  # two layers in each of the three schedules


def test_tbptt_k1_lt_k2_layouts_are_traced_once_each():
    model = ElmanRNN(4, 5, V, dtype="float64")
    rng = np.random.default_rng(3)
    xs, ys = rng.standard_normal((100, 2, 4)), rng.integers(0, V, (100, 2))
    tracer = TracedWindows(model, mean_ce)
    for _ in range(2):
        bptt.backprop_through_time(model, xs, ys, mean_ce, k1=10, k2=40, traced=tracer)
    # windows end at b = 10, 20, ..., 100 and reach back to r = max(0, b - 40): while r = 0 the
    # windows grow (10, 20, 30, 40 steps), then 40 steps storing the state at 10 (b = 40 ... 90),
    # and the last stores nothing (its state is the final one): six layouts
    assert tracer.traces == 6 and tracer.fused == {"elman_rnn": 6}


def test_gradients_accumulate_without_an_optimizer_and_the_final_state_matches():
    xs, ys = token_batches(1, 3)[0]
    results = []
    for traced in (False, True):
        model = language_model("gru", fused=False)
        result = bptt.backprop_through_time(model, xs, ys, mean_ce, k1=4, k2=6, traced=traced)
        results.append((model, result))
    (eager, r_eager), (traced, r_traced) = results
    for p, q in zip(traced.parameters(), eager.parameters()):
        np.testing.assert_allclose(p.grad.numpy(), q.grad.numpy(), rtol=1e-10, atol=1e-12)
    assert r_traced.windows == r_eager.windows
    np.testing.assert_allclose(r_traced.window_losses, r_eager.window_losses, rtol=1e-12)
    np.testing.assert_allclose(r_traced.update_grad_norms, r_eager.update_grad_norms, rtol=1e-10)
    for s, t in zip(bptt.state_tensors(r_traced.state), bptt.state_tensors(r_eager.state)):
        assert s._node is None or not s.requires_grad  # graph-free, ready to carry
        np.testing.assert_allclose(s.numpy(), t.numpy(), rtol=1e-12)


class Regressor(Module):
    """An LSTM whose state (h, c) is a tuple, under the model(x, state) contract."""

    def __init__(self, fused):
        super().__init__()
        self.rnn = LSTM(3, 5, fused=fused, dtype="float64")

    def forward(self, x, state=None):
        return self.rnn(x, state)


def test_stateful_bptt_traced_over_chunks_equals_eager():
    rng = np.random.default_rng(4)
    chunks = [(rng.standard_normal((12, 2, 3)), rng.standard_normal((12, 2, 5))) for _ in range(3)]
    finals = []
    for traced in (False, True):
        tg.manual_seed(9)
        model = Regressor(fused=False)
        trainer = bptt.StatefulBPTT(model, lambda o, y: tg.mse_loss(o, y), k1=4, k2=6,
                                    optimizer=Adam(model.parameters(), lr=0.05), traced=traced)
        losses = [trainer.step(x, y).loss for x, y in chunks]
        finals.append((model, losses, trainer.state))
    (eager, l_eager, s_eager), (traced, l_traced, s_traced) = finals
    assert_same_parameters(traced, eager)
    np.testing.assert_allclose(l_traced, l_eager, rtol=1e-10)
    for s, t in zip(s_traced, s_eager):
        np.testing.assert_allclose(s.numpy(), t.numpy(), rtol=1e-9)


@pytest.mark.parametrize("make", [
    lambda: ElmanRNN(4, 7, V, dtype="float64"),
    lambda: JordanRNN(4, 7, V, teacher_forcing=True, dtype="float64"),
], ids=["elman", "jordan_teacher_forcing"])
def test_textbook_models_train_traced_as_eagerly(make):
    rng = np.random.default_rng(5)
    data = [(rng.standard_normal((T, B, 4)), rng.integers(0, V, (T, B))) for _ in range(2)]

    def model():
        tg.manual_seed(6)
        return make()

    (eager, h_eager), (traced, h_traced) = fit_twice(model, data, k1=6, k2=8)
    assert_same_parameters(traced, eager)
    np.testing.assert_allclose(h_traced.step_loss, h_eager.step_loss, rtol=1e-10)


def test_teacher_forced_targets_are_read_at_every_replay_not_keyed():
    model = JordanRNN(4, 7, V, teacher_forcing=True, dtype="float64")
    tracer = TracedWindows(model, mean_ce)
    rng = np.random.default_rng(4)
    for _ in range(3):  # new targets every call: the one-hots are an op on them, not a constant
        xs, ys = rng.standard_normal((12, 2, 4)), rng.integers(0, V, (12, 2))
        bptt.backprop_through_time(model, xs, ys, mean_ce, k1=6, traced=tracer)
    assert tracer.traces == 2  # (state None, 6 steps) and (state, 6 steps)
    model.eval()  # no teacher forcing in eval mode: a schedule of its own, equal to eager
    result = bptt.backprop_through_time(model, xs, ys, mean_ce, k1=6, traced=tracer)
    assert tracer.traces == 4
    eager = bptt.backprop_through_time(model, xs, ys, mean_ce, k1=6)
    assert result.window_losses == pytest.approx(eager.window_losses, rel=1e-12)


def test_bidirectional_full_bptt_traced():
    rng = np.random.default_rng(7)
    xs, ys = rng.standard_normal((9, 2, 3)), rng.standard_normal((9, 2, 10))
    grads = []
    for traced in (False, True):
        tg.manual_seed(8)
        model = LSTM(3, 5, bidirectional=True, fused=False, dtype="float64")
        bptt.backprop_through_time(model, xs, ys, lambda o, y: tg.mse_loss(o, y), traced=traced)
        grads.append([p.grad.numpy() for p in model.parameters()])
    for g, want in zip(*grads):
        np.testing.assert_allclose(g, want, rtol=1e-10, atol=1e-12)


def test_traced_bptt_refuses_what_a_trace_cannot_replay():
    xs, ys = token_batches(1, 8)[0]
    tg.manual_seed(0)
    dropping = LanguageModel(V, 6, 8, dropout=0.3)
    with pytest.raises(ValueError, match="Dropout.*training mode"):
        bptt.backprop_through_time(dropping, xs, ys, mean_ce, traced=True)
    dropping.eval()  # no draws in eval mode: traced is fine
    assert np.isfinite(bptt.backprop_through_time(dropping, xs, ys, mean_ce, traced=True).loss)

    model = language_model("lstm", fused=True)
    with pytest.raises(ValueError, match="track_grad_norms"):
        bptt.backprop_through_time(model, xs, ys, mean_ce, traced=True, track_grad_norms=True)
    with pytest.raises(ValueError, match="another model"):
        bptt.backprop_through_time(model, xs, ys, mean_ce, traced=TracedWindows(dropping, mean_ce))
    with pytest.raises(TypeError, match="traced must be"):
        bptt.backprop_through_time(model, xs, ys, mean_ce, traced="yes")
    floats = tg.tensor(np.random.default_rng(0).standard_normal((T, B, 3)), requires_grad=True)
    with pytest.raises(ValueError, match="require a gradient"):
        bptt.backprop_through_time(Regressor(True), floats, np.zeros((T, B, 5)),
                                   lambda o, y: tg.mse_loss(o, y), traced=True)


def test_traced_step_has_aux_returns_the_structure_graph_free():
    tg.manual_seed(1)
    model = Regressor(fused=False)
    rng = np.random.default_rng(2)
    x, y = rng.standard_normal((6, 2, 3)), rng.standard_normal((6, 2, 5))

    def loss_fn(x, y):
        out, (h, c) = model(x)
        return tg.mse_loss(out, y), [h, (c, None)]

    step = tg.traced_step(loss_fn, model.parameters(), has_aux=True)
    for _ in range(2):  # the trace, then a replay
        model.zero_grad()
        loss, aux = step(x, y)
    want_loss, [want_h, (want_c, _)] = loss_fn(tg.tensor(x), tg.tensor(y))
    want_loss.backward()  # into .grad: compare with a fresh eager run below
    assert isinstance(aux, list) and isinstance(aux[1], tuple) and aux[1][1] is None
    np.testing.assert_allclose(loss.item(), want_loss.item(), rtol=1e-12)
    np.testing.assert_allclose(aux[0].numpy(), want_h.numpy(), rtol=1e-12)
    np.testing.assert_allclose(aux[1][0].numpy(), want_c.numpy(), rtol=1e-12)
    assert not aux[0].requires_grad and step.traces == 1


def test_traced_step_has_aux_checks_the_return_and_refuses_random_draws():
    w = tg.tensor(np.ones(3), requires_grad=True)
    with pytest.raises(ValueError, match=r"\(loss, aux\)"):
        tg.traced_step(lambda x: (x * w).sum(), [w], has_aux=True)(np.ones(3))
    with pytest.raises(TypeError, match="aux must be"):
        tg.traced_step(lambda x: ((x * w).sum(), "state"), [w], has_aux=True)(np.ones(3))
    drop = Dropout(0.5)
    with pytest.raises(ValueError, match="random numbers"):
        tg.traced_step(lambda x: drop(x * w).sum(), [w])(np.ones(3))


def _eager_and_traced(make_model, xs, ys, loss_fn, calls=2, **options):
    """backprop_through_time with an SGD step per window, eager then traced (one tracer for all calls)."""
    from tinygraph.optim import SGD
    runs = []
    for traced in (False, True):
        model = make_model()
        tracer = TracedWindows(model, loss_fn) if traced else False
        opt = SGD(model.parameters(), lr=0.1)
        results = [bptt.backprop_through_time(model, xs, ys, loss_fn, optimizer=opt, traced=tracer, **options)
                   for _ in range(calls)]
        runs.append((model, results, tracer))
    return runs


def test_a_frozen_parameter_stays_frozen_and_is_read_live():
    xs, ys = token_batches(1, 13)[0]

    def make():
        model = language_model("lstm", fused=False)
        model.embedding.weight.requires_grad_(False)
        return model

    (eager, r_eager, _), (traced, r_traced, tracer) = _eager_and_traced(make, xs, ys, mean_ce, k1=6)
    assert traced.embedding.weight.grad is None
    np.testing.assert_array_equal(traced.embedding.weight.numpy(), make().embedding.weight.numpy())
    assert_same_parameters(traced, eager)
    traced.embedding.weight.data = traced.embedding.weight.data * 2  # a new array: read at the next replay
    eager.embedding.weight.data = eager.embedding.weight.data * 2
    again = [bptt.backprop_through_time(m, xs, ys, mean_ce, k1=6, traced=t).window_losses
             for m, t in ((eager, False), (traced, tracer))]
    np.testing.assert_allclose(again[1], again[0], rtol=1e-10)


def test_targets_none_lists_and_k1_much_smaller_than_k2():
    rng = np.random.default_rng(14)
    xs = rng.standard_normal((60, 2, 3)).tolist()  # a nested list, cast to the model's float32

    def make():
        tg.manual_seed(15)
        return Regressor(fused=False).to("cpu")

    def last_step(outputs, targets):  # ignores the targets (None)
        return (outputs[-1] ** 2).sum()

    (eager, r_eager, _), (traced, r_traced, tracer) = _eager_and_traced(make, xs, None, last_step, k1=2, k2=40)
    assert_same_parameters(traced, eager)
    np.testing.assert_allclose([r.loss for r in r_traced], [r.loss for r in r_eager], rtol=1e-10)
    # 30 windows: b = 2, 4, ..., 40 reach back to r = 0 and start from state None (twenty layouts:
    # lengths 2 ... 40, the last storing the state at step 2), more than traced_step's default 16;
    # b = 42 ... 58 share one layout and b = 60 has its own. Each is traced once over the two calls.
    assert tracer.traces == 22


def test_a_state_cut_inside_the_model_replays_like_eager():
    """A model that detaches the state it returns (PyTorch's repackage_hidden idiom): inside a
    trace the cut is a recorded op, so each window replays from its own state, not the traced one."""
    class Detaching(Module):
        def __init__(self):
            super().__init__()
            tg.manual_seed(3)
            self.rnn = ElmanRNN(3, 4, V, dtype="float64")

        def forward(self, x, state=None):
            out, h = self.rnn(x, state)
            return out, h.detach()

    rng = np.random.default_rng(16)
    xs, ys = rng.standard_normal((10, 2, 3)), rng.integers(0, V, (10, 2))
    (eager, r_eager, _), (traced, r_traced, tracer) = _eager_and_traced(Detaching, xs, ys, mean_ce, k1=2)
    assert_same_parameters(traced, eager)
    np.testing.assert_allclose([r.window_losses for r in r_traced], [r.window_losses for r in r_eager], rtol=1e-10)
    assert tracer.traces >= 1


def test_traced_evaluate_calls_the_model_without_targets_like_eager():
    class PeeksAtTargets(Module):
        def __init__(self):
            super().__init__()
            self.rnn = ElmanRNN(3, 4, V, dtype="float64")

        def forward(self, x, state=None, targets=None):
            out, h = self.rnn(x, state)
            return (out if targets is None else out * 2.0), h

    tg.manual_seed(17)
    model = PeeksAtTargets()
    rng = np.random.default_rng(18)
    batches = [(rng.standard_normal((8, 2, 3)), rng.integers(0, V, (8, 2)))]
    eager = bptt.evaluate(model, batches, mean_ce)
    assert bptt.evaluate(model, batches, mean_ce, traced=True) == pytest.approx(eager, rel=1e-12)


def test_a_new_parameter_dtype_traces_again():
    xs, ys = token_batches(1, 19)[0]
    tg.manual_seed(0)
    model = LanguageModel(V, 6, 8, cell="gru")
    tracer = TracedWindows(model, mean_ce)
    bptt.backprop_through_time(model, xs, ys, mean_ce, k1=8, traced=tracer)
    model.double()
    model.zero_grad()
    traced = bptt.backprop_through_time(model, xs, ys, mean_ce, k1=8, traced=tracer)
    grads = [p.grad.numpy() for p in model.parameters()]
    model.zero_grad()
    eager = bptt.backprop_through_time(model, xs, ys, mean_ce, k1=8)
    np.testing.assert_allclose(traced.window_losses, eager.window_losses, rtol=1e-12)
    for g, p in zip(grads, model.parameters()):
        assert g.dtype == np.float64
        np.testing.assert_allclose(g, p.grad.numpy(), rtol=1e-10, atol=1e-12)
