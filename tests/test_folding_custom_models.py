"""Folding user-written recurrences (tinygraph.folding), checked against hand counts.

Each expected count is derived from the model's equations and the definition
of the circuit (the quotient of the unfolded graph by time: one node per
(scope, position in the step), one delay per state and offset), not read off
the code under test.
"""
import collections
import functools
import operator
import warnings

import numpy as np
import pytest

import tinygraph as tg
from tinygraph import folding
from tinygraph.viz import models_zoo

B, H, D = 1, 3, 2


def _rng():
    return np.random.default_rng(0)


def _param(rng, shape, name):
    return tg.tensor(rng.normal(size=shape), requires_grad=True, name=name)


def _kinds(circuit):
    return dict(collections.Counter(a["kind"] for _, a in circuit.nodes(data=True)))


def _delays(circuit):
    return sorted(a["delay"] for _, a in circuit.nodes(data=True) if a["kind"] == "delay")


def _no_step_twice(circuit):
    """No circuit node holds two recorded nodes of one step."""
    for _, a in circuit.nodes(data=True):
        steps = a.get("timesteps", ())
        assert len(steps) == len(set(steps)), (a["label"], steps)


def _labels_of(circuit, nodes):
    return sorted(circuit.nodes[k]["label"] for k in nodes)


# -- 1. a constant made before the loop and read at every step -------------------

def _scaled_rnn(T=4):
    """h(t) = tanh((h(t-1) W) * scale); ``scale`` is one constant made outside the loop."""
    rng = _rng()
    W = _param(rng, (H, H), "W")
    scale = tg.tensor(np.full((1, H), 0.5), name="scale")
    h = tg.ones(B, H)
    for t in range(T):
        with tg.scope("cell"), tg.timestep(t):
            h = tg.tanh((h @ W) * scale)
            h.name = "h"
    return h.sum()


def test_constant_read_at_every_step_is_outside_the_steps_like_a_parameter():
    loss = _scaled_rnn(T=4)
    view = folding.unfolded(loss)
    (scale,) = [v for v, a in view.nodes(data=True) if a["name"] == "scale"]
    assert view.nodes[scale]["timestep"] is None and view.nodes[scale]["time_invariant"]
    # one edge into each step's mul, none crossing time
    assert [e["delay"] for _, _, e in view.out_edges(scale, data=True)] == [0] * 4
    # h0 (ones) is read at step 0 only: it stays an input of that step
    (h0,) = [v for v, a in view.nodes(data=True) if a["kind"] == "data" and v != scale]
    assert view.nodes[h0]["timestep"] == 0
    # W, scale, h0 + 4 steps x (matmul, mul, tanh) + sum
    assert view.number_of_nodes() == 3 + 4 * 3 + 1
    # per step: matmul<-h(t-1),W; mul<-matmul,scale; tanh<-mul; then sum<-h(3)
    assert view.number_of_edges() == 4 * 5 + 1
    assert sorted(e["delay"] for _, _, e in view.edges(data=True) if e["delay"]) == [1, 1, 1]


@pytest.mark.parametrize("detail,expected", [
    # h0, scale, W, h, sum + one delay
    ("variables", dict(data=2, param=1, op=2, delay=1)),
    # h0, scale, W, matmul, mul, tanh, sum + one delay
    ("ops", dict(data=2, param=1, op=4, delay=1)),
])
def test_constant_read_at_every_step_adds_no_delays(detail, expected):
    circuit = folding.circuit(_scaled_rnn(T=4), detail=detail)
    assert _kinds(circuit) == expected
    assert _delays(circuit) == [1]
    (scale,) = [k for k, a in circuit.nodes(data=True) if a["name"] == "scale"]
    assert circuit.nodes[scale]["timesteps"] == ()
    assert all(circuit.nodes[s]["kind"] != "delay" for s in circuit.successors(scale))


def test_constant_outside_the_steps_survives_elision_once():
    view = folding.unfolded(_scaled_rnn(T=6), steps=[0, 5])
    (scale,) = [v for v, a in view.nodes(data=True) if a["name"] == "scale"]
    # drawn once, feeding the two shown steps' mul only (nothing into the gap)
    assert _labels_of(view, view.successors(scale)) == ["mul", "mul"]


def test_constant_standing_for_h_minus_one_gives_only_the_recurrence_delays():
    # h(t) = tanh(h(t-1) W + h(t-2) W2 + x U); h(-2), h(-1) are two zeros made before
    # the loop, so h(-1) is read at step 0 (as h(t-1)) and at step 1 (as h(t-2))
    rng, T = _rng(), 5
    W, W2, U = _param(rng, (H, H), "W"), _param(rng, (H, H), "W2"), _param(rng, (D, H), "U")
    hist = [tg.zeros(B, H), tg.zeros(B, H)]
    for t in range(T):
        with tg.scope("cell"), tg.timestep(t):
            x = tg.tensor(rng.normal(size=(B, D)), name="x")
            h = tg.tanh(hist[-1] @ W + hist[-2] @ W2 + x @ U)
            h.name = "h"
            hist.append(h)
    circuit = folding.circuit(h.sum(), detail="ops")
    # W, W2, U; h(-2), h(-1), x; 3 matmuls, 2 adds, tanh; sum; one delay of 1 and one of 2
    assert _kinds(circuit) == dict(param=3, data=3, op=7, delay=2)
    assert _delays(circuit) == [1, 2]


# -- 2. re-entering tg.timestep(t) -------------------------------------------------

def _readout_rnn(T=3):
    """A cell pass, then a readout pass that enters timestep(t) again in the same scope."""
    rng = _rng()
    W, U, V = _param(rng, (H, H), "W"), _param(rng, (D, H), "U"), _param(rng, (H, 2), "V")
    h, hs = tg.zeros(B, H), []
    with tg.scope("rnn"):
        for t in range(T):
            with tg.timestep(t):
                x = tg.tensor(rng.normal(size=(B, D)), name="x")
                h = tg.tanh(h @ W + x @ U)
                h.name = "h"
                hs.append(h)
        outs = []
        for t in range(T):
            with tg.timestep(t):
                o = hs[t] @ V
                o.name = "o"
                outs.append(o)
    return tg.stack(outs).sum()


@pytest.mark.parametrize("detail,expected", [
    # W, U, V; h0, x; matmul(h,W), matmul(x,U), add, tanh, matmul(h,V); stack, sum; delay
    ("ops", dict(param=3, data=2, op=7, delay=1)),
    # W, U, V; h0, x; h, o, L; delay
    ("variables", dict(param=3, data=2, op=3, delay=1)),
])
def test_readout_pass_in_the_same_scope_keeps_its_own_nodes(detail, expected):
    circuit = folding.circuit(_readout_rnn(T=3), detail=detail)
    _no_step_twice(circuit)
    assert _kinds(circuit) == expected
    (o,) = [k for k, a in circuit.nodes(data=True) if a["name"] == "o"]
    assert circuit.nodes[o]["timesteps"] == (0, 1, 2)
    assert "V" in _labels_of(circuit, circuit.predecessors(o))
    assert "W" not in _labels_of(circuit, circuit.predecessors(o))


def _helper_twice(T=3):
    """Two stacked layers sharing one weight: a helper that opens timestep(t) itself.

    Both layers run the same ops on the same parameter in the same scope, so
    only the order within the step tells them apart.
    """
    rng = _rng()
    w = _param(rng, (H,), "w")

    def layer(h, inp, t):
        with tg.timestep(t):
            h = tg.tanh(h * w + inp)
            h.name = "h"
            return h

    h1 = h2 = tg.zeros(B, H)
    with tg.scope("stack"):
        for t in range(T):
            x = tg.tensor(rng.normal(size=(B, H)), name="x")
            h1 = layer(h1, x, t)
            h2 = layer(h2, h1, t)
    return h2.sum()


def test_helper_entering_the_step_twice_folds_two_layers_not_one():
    circuit = folding.circuit(_helper_twice(T=3), detail="ops")
    _no_step_twice(circuit)
    # w; x, h0 (one zeros for both layers); 2 layers x (mul, add, tanh); sum; a delay per layer
    assert _kinds(circuit) == dict(param=1, data=2, op=7, delay=2)
    assert _delays(circuit) == [1, 1]
    for delay in (k for k, a in circuit.nodes(data=True) if a["kind"] == "delay"):
        (state,) = circuit.predecessors(delay)
        (target,) = circuit.successors(delay)
        assert circuit.nodes[target]["op"] == "mul"
        # each layer loops onto itself: its own mul -> add -> tanh, back through the delay
        (add,) = circuit.successors(target)
        assert state in circuit.successors(add)


# -- 3. a cell whose first step differs --------------------------------------------

def _first_step_differs(T=4):
    """a = x U + b at t=0 (no state yet), a = h W + x U + b later; h = tanh(a)."""
    rng = _rng()
    W, U, b = _param(rng, (H, H), "W"), _param(rng, (D, H), "U"), _param(rng, (H,), "b")
    h = None
    with tg.scope("first"):
        for t in range(T):
            with tg.timestep(t):
                x = tg.tensor(rng.normal(size=(B, D)), name="x")
                a = x @ U + b if h is None else h @ W + x @ U + b
                a.name = "a"
                h = tg.tanh(a)
                h.name = "h"
    return h.sum()


def test_first_step_matmul_never_folds_with_the_recurrent_one():
    circuit = folding.circuit(_first_step_differs(T=4), detail="ops")
    _no_step_twice(circuit)
    matmuls = {k: _labels_of(circuit, circuit.predecessors(k))
               for k, a in circuit.nodes(data=True) if a["op"] == "matmul"}
    assert not any("W" in ins and "U" in ins for ins in matmuls.values())
    steps = sorted((circuit.nodes[k]["timesteps"], tuple(p for p in ins if p in ("U", "W")))
                   for k, ins in matmuls.items())
    assert steps == [((0,), ("U",)), ((1, 2, 3), ("U",)), ((1, 2, 3), ("W",))]
    # W, U, b; x at t=0 and x later; t=0: matmul, add, tanh; later: 2 matmuls, 2 adds,
    # tanh; sum; delays from t=0's h and from later h into h W
    assert _kinds(circuit) == dict(param=3, data=2, op=9, delay=2)


def test_node_whose_steps_are_fed_differently_is_flagged():
    # h = tanh(x U) at t=0, h = tanh(h W) later: tanh is one node fed by two matmuls
    rng, T = _rng(), 3
    U, W = _param(rng, (D, H), "U"), _param(rng, (H, H), "W")
    h = None
    with tg.scope("cell"):
        for t in range(T):
            with tg.timestep(t):
                z = tg.tensor(rng.normal(size=(B, D)), name="x") @ U if h is None else h @ W
                h = tg.tanh(z)
                h.name = "h"
    with pytest.warns(UserWarning, match="inputs differ: 'h' in cell"):
        circuit = folding.circuit(h.sum(), detail="ops")
    # U, W; x; matmul(x,U), matmul(h,W), tanh; sum; delay
    assert _kinds(circuit) == dict(param=2, data=1, op=4, delay=1)
    flagged = {a["label"]: a["mixed_inputs"] for _, a in circuit.nodes(data=True)
               if a.get("mixed_inputs")}
    assert flagged == {"h": [[0], [1, 2]]}
    assert circuit.graph["notes"]


def test_built_in_models_fold_without_mixed_inputs():
    for name, layers in [("rnn", 1), ("lstm", 1), ("gru", 1), ("birnn", 1), ("rnn", 2)]:
        loss = models_zoo.build(name, 3, num_layers=layers).loss
        for detail in ("ops", "variables"):
            with warnings.catch_warnings():
                warnings.simplefilter("error")
                circuit = folding.circuit(loss, detail=detail)
            _no_step_twice(circuit)
            assert not any(a.get("mixed_inputs") for _, a in circuit.nodes(data=True))


# -- 4. one input leaf read by two directions ----------------------------------------

def _bidirectional(T=4, backward_first=False):
    """h(t) = tanh(h(t-1) Wf + x(t) Uf), g(t) = tanh(g(t+1) Wb + x(t) Ub), one x(t) leaf."""
    rng = np.random.default_rng(2)
    Wf, Uf = _param(rng, (H, H), "Wf"), _param(rng, (D, H), "Uf")
    Wb, Ub = _param(rng, (H, H), "Wb"), _param(rng, (D, H), "Ub")
    X = [tg.tensor(rng.normal(size=(B, D)), name="x") for _ in range(T)]
    hf, hb = [None] * T, [None] * T
    h = tg.zeros(B, H)
    for t in range(T):
        with tg.scope("fwd"), tg.timestep(t):
            h = hf[t] = tg.tanh(h @ Wf + X[t] @ Uf)
            h.name = "h"
    g = tg.zeros(B, H)
    for t in reversed(range(T)):
        with tg.scope("bwd"), tg.timestep(t):
            g = hb[t] = tg.tanh(g @ Wb + X[t] @ Ub)
            g.name = "g"
    pairs = [hb[t] * hf[t] if backward_first else hf[t] * hb[t] for t in range(T)]
    return functools.reduce(operator.add, [p.sum() for p in pairs])


@pytest.mark.parametrize("backward_first", [False, True])
def test_input_read_by_both_directions_folds_into_one_node(backward_first):
    circuit = folding.circuit(_bidirectional(T=4, backward_first=backward_first),
                              detail="variables")
    xs = [k for k, a in circuit.nodes(data=True) if a["name"] == "x"]
    assert len(xs) == 1
    assert sorted(circuit.nodes[xs[0]]["timesteps"]) == [0, 1, 2, 3]
    assert {circuit.nodes[k]["scope"] for k in circuit.successors(xs[0])} == {"fwd", "bwd"}
    # Wf, Uf, Wb, Ub; h0, g0, x; h, g, L; delay(h, +1), delay(g, -1)
    assert _kinds(circuit) == dict(param=4, data=3, op=3, delay=2)
    assert _delays(circuit) == [-1, 1]


def test_a_learned_initial_state_folds_like_a_constant_one():
    """A Parameter h0 read at step 0 only is state, not a weight: h0 @ W at step 0 and h(t-1) @ W
    later are one circuit node, with no mixed-inputs warning."""
    import warnings
    from tinygraph import folding
    rng = np.random.default_rng(0)
    U = tg.nn.Parameter(rng.standard_normal((3, 4)))
    W = tg.nn.Parameter(rng.standard_normal((4, 4)))
    h = tg.nn.Parameter(np.zeros((2, 4)))
    xs = rng.standard_normal((4, 2, 3))
    with tg.scope("cell"):
        for t in range(4):
            with tg.timestep(t):
                h = tg.tanh(tg.matmul(xs[t], U) + tg.matmul(h, W))
                h.name = "h"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        circuit = folding.circuit(h.sum())
    matmuls = [a for _, a in circuit.nodes(data=True) if a["kind"] == "op" and a["op"] == "matmul"]
    assert len(matmuls) == 2 and all(sorted(a["timesteps"]) == [0, 1, 2, 3] for a in matmuls)
    assert sum(a["kind"] == "delay" for _, a in circuit.nodes(data=True)) == 1
