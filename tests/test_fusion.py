"""Trace-time fusion (tinygraph.fusion): replayed schedules equal eager, and fuse only what they may."""
import numpy as np
import pytest

import tinygraph as tg
from tinygraph import fusion
from tinygraph.models import GRU, LSTM, RNN, ElmanRNN
from tinygraph.trace import trace


def _eager_grads(fn, params, inputs):
    for p in params:
        p.grad = None
    loss = fn(*[tg.tensor(a) for a in inputs])
    loss.backward()
    return loss.item(), [p.grad.numpy().copy() for p in params]


def _assert_replay_equals_eager(compiled, fn, params, inputs, rtol=1e-10):
    """The compiled replay's loss and parameter gradients against an eager run of ``fn``."""
    value = float(compiled(*inputs))
    _, grads = compiled.backward(np.ones(()))
    ref_value, ref_grads = _eager_grads(fn, params, inputs)
    assert value == pytest.approx(ref_value, rel=1e-12)
    for got, want in zip(grads, ref_grads):
        np.testing.assert_allclose(got, want, rtol=rtol, atol=1e-12)


LAYERS = [
    (LSTM, {}, "lstm_sweep"),
    (GRU, {}, "gru_sweep"),
    (RNN, {"nonlinearity": "tanh"}, "rnn_tanh_sweep"),
    (RNN, {"nonlinearity": "relu"}, "rnn_relu_sweep"),
]


@pytest.mark.parametrize("layer_class, options, name", LAYERS)
@pytest.mark.parametrize("bidirectional", [False, True])
def test_decomposed_layer_traces_to_its_fused_kernel(layer_class, options, name, bidirectional):
    """Every direction of every layer becomes one fused node; loss and gradients equal eager."""
    tg.manual_seed(0)
    model = layer_class(3, 5, num_layers=2, bidirectional=bidirectional, dtype="float64", **options)
    params = model.parameters()
    rng = np.random.default_rng(1)
    x, target = rng.standard_normal((6, 2, 3)), rng.standard_normal((6, 2, 5 * (1 + bidirectional)))

    def loss_fn(x):
        out, state = model(x)
        h_n = state[0] if layer_class is LSTM else state
        return ((out - tg.tensor(target)) ** 2).sum() + (h_n * h_n).sum()

    compiled = trace(loss_fn, x, params=params)
    directions = 2 * (1 + bidirectional)  # 2 layers
    expected = {name: 2} if not bidirectional else {name: 2, name + "_reverse": 2}
    assert compiled.fused == expected and sum(compiled.fused.values()) == directions
    _assert_replay_equals_eager(compiled, loss_fn, params, [rng.standard_normal(x.shape)], rtol=1e-9)


def test_the_textbook_elman_network_traces_to_the_fused_kernel():
    """ElmanRNN (U, V, W, b, c; decomposed by default) replays rnn_sequence + one readout GEMM."""
    tg.manual_seed(1)
    model = ElmanRNN(3, 5, 4, dtype="float64")
    rng = np.random.default_rng(2)
    x, y = rng.standard_normal((6, 2, 3)), rng.integers(0, 4, 12)

    def loss_fn(x):
        o, h_n = model(x)
        return tg.cross_entropy(o.reshape(-1, 4), tg.tensor(y), reduction="sum") + (h_n * h_n).sum()

    compiled = trace(loss_fn, x, params=model.parameters())
    assert compiled.fused == {"elman_rnn": 1}
    _assert_replay_equals_eager(compiled, loss_fn, model.parameters(), [rng.standard_normal(x.shape)])


def test_fusion_shortens_the_schedule_and_can_be_turned_off():
    tg.manual_seed(0)
    model = LSTM(3, 4, dtype="float64")
    x = np.random.default_rng(2).standard_normal((8, 2, 3))

    def loss_fn(x):
        return model(x)[0].sum()

    fused = trace(loss_fn, x, params=model.parameters())
    plain = trace(loss_fn, x, params=model.parameters(), fuse=False)
    assert plain.fused == {} and fused.fused == {"lstm_sweep": 1}
    assert len(fused) < 10 < 8 * 15 < len(plain)  # one kernel against every gate of 8 steps
    np.testing.assert_allclose(fused(x), plain(x), rtol=1e-12)


def test_the_lstm_final_state_and_the_state_carried_between_layers_are_rewired():
    """h_n and c_n (outputs of the fused-away sweep) are read by the loss: they come from the kernel."""
    tg.manual_seed(3)
    model = LSTM(2, 3, num_layers=2, dtype="float64")
    rng = np.random.default_rng(4)
    x, h0, c0 = rng.standard_normal((5, 2, 2)), rng.standard_normal((2, 2, 3)), rng.standard_normal((2, 2, 3))

    def loss_fn(x, h0, c0):
        out, (h_n, c_n) = model(x, (h0, c0))
        return (out * out).sum() + (h_n * c_n).sum() + c_n.sum()

    compiled = trace(loss_fn, x, h0, c0, params=model.parameters())
    assert compiled.fused == {"lstm_sweep": 2}
    value = compiled(x, h0, c0)
    input_grads, param_grads = compiled.backward(np.ones(()))
    xs = [tg.tensor(a, requires_grad=True) for a in (x, h0, c0)]
    for p in model.parameters():
        p.grad = None
    ref = loss_fn(*xs)
    ref.backward()
    assert float(value) == pytest.approx(ref.item(), rel=1e-12)
    for got, want in zip(input_grads + param_grads, [t.grad for t in xs] + [p.grad for p in model.parameters()]):
        np.testing.assert_allclose(got, want.numpy(), rtol=1e-9, atol=1e-12)


def test_sweeps_it_cannot_replace_stay_decomposed_and_correct():
    """Layer norm and padded batches record other ops: no match, the same numbers as eager."""
    tg.manual_seed(5)
    normed = LSTM(3, 4, layer_norm=True, dtype="float64")
    padded = GRU(3, 4, dtype="float64")
    rng = np.random.default_rng(6)
    x = rng.standard_normal((5, 3, 3))
    lengths = np.array([5, 2, 4])

    def loss_fn(x):
        return (normed(x)[0] ** 2).sum() + (padded(x, lengths=lengths)[0] ** 2).sum()

    params = normed.parameters() + padded.parameters()
    compiled = trace(loss_fn, x, params=params)
    assert compiled.fused == {}
    _assert_replay_equals_eager(compiled, loss_fn, params, [x])


def test_an_inner_value_read_elsewhere_keeps_the_recorded_ops():
    """If a step's hidden state is also read outside the sweep's output, the sweep is not fused."""
    tg.manual_seed(7)
    cell_layer = RNN(2, 3, dtype="float64")
    x = np.random.default_rng(8).standard_normal((4, 2, 2))
    seen = []

    def loss_fn(x):
        out, _ = cell_layer(x)
        # the stack's second input is the step-1 state: reading it from the graph, not the stack
        step_one = tg.graph.Graph.from_outputs(out).outputs[0].inputs[1].tensor
        seen.append(step_one is not None)
        return out.sum() + (step_one * step_one).sum()

    compiled = trace(loss_fn, x, params=cell_layer.parameters())
    assert seen == [True] and compiled.fused == {}
    _assert_replay_equals_eager(compiled, loss_fn, cell_layer.parameters(), [x])


# -- the mechanism, on a toy rewrite ------------------------------------------------------

@pytest.fixture
def toy_fusion():
    """pattern (a, b) -> (tanh(a * b) + a, exp(a * b) * b), replacement: the same through one product."""
    def pattern(a, b):
        ab = a * b
        return tg.tanh(ab) + a, tg.exp(ab) * b

    def replacement(a, b):
        ab = b * a  # the operands swapped: another graph, the same numbers
        return a + tg.tanh(ab), b * tg.exp(ab)

    fusion.register_fusion("toy", pattern, replacement, [np.zeros(3), np.zeros(3)])
    yield pattern
    del fusion._FUSIONS["toy"]


def test_toy_fusion_matches_at_any_shape_and_equals_eager(toy_fusion):
    rng = np.random.default_rng(9)
    x, y = rng.standard_normal((4, 5)), rng.standard_normal((4, 5))

    def fn(x, y):
        ab = x * y
        first = tg.tanh(ab) + x
        early = first * 3.0  # reads an output before the pattern's last op is recorded
        second = tg.exp(ab) * y
        again, other = toy_fusion(second, x)  # a second match, at the same shapes
        return (early * second).sum() + (again * other).sum()

    compiled = trace(fn, x, y)
    assert compiled.fused == {"toy": 2}
    value = compiled(x, y)
    input_grads, _ = compiled.backward(np.ones(()))
    tx, ty = tg.tensor(x, requires_grad=True), tg.tensor(y, requires_grad=True)
    ref = fn(tx, ty)
    ref.backward()
    assert float(value) == pytest.approx(ref.item(), rel=1e-12)
    np.testing.assert_allclose(input_grads[0], tx.grad.numpy(), rtol=1e-12)
    np.testing.assert_allclose(input_grads[1], ty.grad.numpy(), rtol=1e-12)


def test_toy_fusion_needs_exact_literals_and_attributes(toy_fusion):
    """The same wiring with another literal (a * b * 2 is not a * b) or other inputs is no match."""
    x = np.ones((2, 3))

    def other(a, b):
        ab = a * b * 2.0
        return (tg.tanh(ab) + a).sum() + (tg.exp(ab) * b).sum()

    def swapped(a, b):
        ab = a * b
        return (tg.tanh(ab) + b).sum() + (tg.exp(ab) * b).sum()

    assert trace(other, x, x).fused == {}
    assert trace(swapped, x, x).fused == {}


def test_a_match_whose_input_comes_from_its_own_output_is_not_fused():
    """Output 1 does not depend on input b; when b is computed from output 1, one fused node
    would close a cycle, so the ops stay; when b is independent, the match is fused."""
    def pattern(a, b):
        return tg.tanh(a), tg.exp(a) * b

    fusion.register_fusion("one_sided", pattern, lambda a, b: (tg.tanh(a), b * tg.exp(a)),
                           [np.zeros(2), np.zeros(2)])
    try:
        x = np.random.default_rng(13).standard_normal((3, 2))

        def independent(x):
            first, second = pattern(x, x * 2.0)
            return (first + second).sum()

        def looped(x):
            first = tg.tanh(x)
            second = tg.exp(x) * (first * 2.0)  # b is computed from the first output: not fused
            return (first + second).sum() + independent(x + 1.0)  # this one is

        assert trace(looped, x).fused == {"one_sided": 1} and trace(independent, x).fused == {"one_sided": 1}
        for fn in (looped, independent):
            compiled = trace(fn, x)
            value = compiled(x)
            (gx,), _ = compiled.backward(np.ones(()))
            tx = tg.tensor(x, requires_grad=True)
            ref = fn(tx)
            ref.backward()
            assert float(value) == pytest.approx(ref.item(), rel=1e-12)
            np.testing.assert_allclose(gx, tx.grad.numpy(), rtol=1e-12)
    finally:
        del fusion._FUSIONS["one_sided"]


def test_register_fusion_rejects_a_replacement_with_other_outputs():
    with pytest.raises(ValueError, match="outputs"):
        fusion.register_fusion("bad", lambda a: (tg.tanh(a), tg.exp(a)), lambda a: tg.tanh(a), [np.zeros(2)])
    with pytest.raises(ValueError, match="constants"):
        fusion.register_fusion("bad", lambda a: tg.tanh(a) * tg.tensor(np.ones(2)), lambda a: tg.tanh(a),
                               [np.zeros(2)])
    assert "bad" not in fusion.fusions()


def test_recording_a_pattern_leaves_the_callers_recording_context_alone():
    """Patterns are recorded while the caller may be inside a scope and a time step (folding keys)."""
    with tg.scope("outer"), tg.timestep(2):
        before = tg.tensor(np.ones(2), requires_grad=True) * 2.0
        counters = {step: dict(c) for step, c in tg.graph.STATE.counters.items()}
        fusion._Recording(lambda a, b: (tg.tanh(a * b),), [np.ones(2), np.ones(2)])
        assert {step: dict(c) for step, c in tg.graph.STATE.counters.items()} == counters
        after = before * 3.0
    assert (after._node.scope, after._node.timestep) == ("outer", 2)
    assert after._node.ordinal == before._node.ordinal + 1


def test_a_replacement_that_cannot_take_the_matched_shapes_leaves_the_ops_alone():
    """The pattern broadcasts (4, 5) * (5,); the replacement insists on equal shapes: no fusion, no error."""
    def pattern(a, b):
        ab = a * b
        return tg.tanh(ab) + a, tg.exp(ab) * b

    def replacement(a, b):
        if a.shape != b.shape:
            raise ValueError("equal shapes only")
        return pattern(a, b)

    fusion.register_fusion("picky", pattern, replacement, [np.zeros(3), np.zeros(3)])
    try:
        rng = np.random.default_rng(10)
        x, y = rng.standard_normal((4, 5)), rng.standard_normal(5)

        def fn(x, y):
            first, second = pattern(x, y)
            return (first * second).sum()

        broadcast = trace(fn, x, y)
        same = trace(fn, x, rng.standard_normal((4, 5)))
        assert broadcast.fused == {} and same.fused == {"picky": 1}
        value = broadcast(x, y)
        (gx, gy), _ = broadcast.backward(np.ones(()))
        tx, ty = tg.tensor(x, requires_grad=True), tg.tensor(y, requires_grad=True)
        ref = fn(tx, ty)
        ref.backward()
        assert float(value) == pytest.approx(ref.item(), rel=1e-12)
        np.testing.assert_allclose(gx, tx.grad.numpy(), rtol=1e-12)
        np.testing.assert_allclose(gy, ty.grad.numpy(), rtol=1e-12)
    finally:
        del fusion._FUSIONS["picky"]


def test_traced_step_reports_and_can_skip_fusion():
    tg.manual_seed(11)
    model = GRU(2, 3, dtype="float64")
    x = np.random.default_rng(12).standard_normal((4, 2, 2))

    def loss_fn(x):
        return (model(x)[0] ** 2).sum()

    grads = {}
    for fuse in (True, False):
        step = tg.traced_step(loss_fn, model.parameters(), fuse=fuse)
        model.zero_grad()
        step(x)
        assert step.fused == ({"gru_sweep": 1} if fuse else {})
        grads[fuse] = [p.grad.numpy().copy() for p in model.parameters()]
    for a, b in zip(grads[True], grads[False]):
        np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-12)


def test_the_documented_user_fusion_replaces_three_ops_by_a_custom_primitive():
    """docs/performance.md: softplus recorded as log(1 + exp(x)) replays as one registered primitive."""
    from tinygraph import ops

    softplus = ops.register("test_softplus", lambda x: np.logaddexp(0, x),
                            lambda g, out, needs, x: (g * ops.sigmoid(x),))

    def softplus_ops(x):
        return tg.log(1 + tg.exp(x))

    fusion.register_fusion("test_softplus", softplus_ops, lambda x: ops.apply(softplus, x), [np.zeros(3)])
    try:
        x = np.linspace(-3, 3, 8)
        compiled = trace(lambda x: (softplus_ops(x) ** 2).sum(), x)
        assert compiled.fused == {"test_softplus": 1} and len(compiled) == 3
        assert [entry[0].name for entry in compiled.schedule][0] == "test_softplus"
        value = compiled(x)
        (gx,), _ = compiled.backward(np.ones(()))
        np.testing.assert_allclose(value, (np.logaddexp(0, x) ** 2).sum(), rtol=1e-14)
        np.testing.assert_allclose(gx, 2 * np.logaddexp(0, x) / (1 + np.exp(-x)), rtol=1e-13)
    finally:
        del fusion._FUSIONS["test_softplus"]
        del ops.PRIMITIVES["test_softplus"]
