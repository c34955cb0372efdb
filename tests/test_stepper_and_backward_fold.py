"""Recording the backward graph again, gradient names in the backward circuit,
and the stepper's sums and names once loss.backward() has freed the graph."""
import numpy as np
import pytest

import tinygraph as tg
from tinygraph import folding
from tinygraph.graph import Graph
from tinygraph.stepper import Stepper
from tinygraph.viz import draw_circuit, draw_unfolded, folded_networkx, models_zoo


def build(name="elman", steps=3):
    return models_zoo.build(name, steps=steps)


def parameters(example):
    models = example.model if isinstance(example.model, tuple) else (example.model,)
    return [p for m in models for p in m.parameters()]


# -- every recording of the backward graph numbers its steps alike -------------

def _backward_ordinals(grads):
    """(scope, is_leaf) -> {step: sorted ordinals} of the backward nodes behind ``grads``."""
    found = {}
    for n in Graph.from_outputs(*grads).nodes:
        if n.scope.startswith("backward") and n.timestep is not None:
            steps = found.setdefault((n.scope, n.is_leaf), {})
            steps.setdefault(n.timestep, []).append(n.ordinal)
    return {key: {t: sorted(o) for t, o in steps.items()} for key, steps in found.items()}


def _record(loss, params):
    return tg.grad(loss, params, create_graph=True)


def test_each_recording_starts_every_step_of_a_scope_at_one_ordinal():
    example = build(steps=4)
    params = parameters(example)
    first = _backward_ordinals(_record(example.loss, params))
    second = _backward_ordinals(_record(example.loss, params))
    assert first.keys() == second.keys()
    stepped = [key for key, steps in first.items() if len(steps) > 1]
    assert stepped, "the cell's backward nodes are recorded at every time step"
    for key in stepped:
        for recording in (first, second):
            # the same base at every step: node k of step t folds with node k of step t-1
            assert len({ordinals[0] for ordinals in recording[key].values()}) == 1, key
        # the second recording is the first one moved by one offset, the same at every step
        shifts = {t: np.array(second[key][t]) - np.array(first[key][t]) for t in first[key]}
        offsets = {int(s[0]) for s in shifts.values()}
        assert len(offsets) == 1 and all((s == s[0]).all() for s in shifts.values()), key
        # ... and never onto the first's identities, which are still alive in the same graph
        for t in first[key]:
            assert not set(first[key][t]) & set(second[key][t]), (key, t)


@pytest.mark.parametrize("draw, detail", [(draw_circuit, "ops"), (draw_circuit, "variables"),
                                          (draw_unfolded, "ops")])
def test_drawing_the_backward_graph_again_draws_the_same_picture(draw, detail):
    loss = build().loss
    sources = [draw(loss, detail=detail, backward=True).source for _ in range(3)]
    assert sources[0] == sources[1] == sources[2]
    fresh = draw(build().loss, detail=detail, backward=True).source
    assert fresh == sources[0]


def test_a_grad_mode_block_between_recordings_changes_nothing():
    example = build()
    drawn = draw_circuit(example.loss, detail="ops", backward=True).source
    with tg.no_grad():
        pass
    with tg.enable_grad():
        pass
    assert draw_circuit(example.loss, detail="ops", backward=True).source == drawn


# -- the backward circuit names every parameter's gradient ------------------------

@pytest.mark.parametrize("steps", [2, 3, 5])
@pytest.mark.parametrize("detail", ["ops", "variables"])
def test_backward_circuit_names_every_parameter_gradient(steps, detail):
    example = build(steps=steps)
    wanted = sorted(f"dL/d{p.name}" for p in parameters(example))
    assert wanted == ["dL/dU", "dL/dV", "dL/dW", "dL/db", "dL/dc"]  # the textbook's parameters
    circuit = folded_networkx(example.loss, detail=detail, backward=True)
    labels = [a["label"] for _, a in circuit.nodes(data=True)]
    for label in wanted:
        assert labels.count(label) == 1, (label, steps, detail)


def _chain(steps):
    """s(t) = tanh(s(t-1) A) in scope "f": one op per step, all with one fold key."""
    A = tg.tensor(np.eye(2) * 0.5, requires_grad=True, name="A")
    s = tg.tensor(np.ones((1, 2)), name="s0")
    for t in range(steps):
        with tg.scope("f"), tg.timestep(t):
            s = tg.tanh(tg.matmul(s, A))
    return s


@pytest.mark.parametrize("which", [0, -1])
def test_fold_keeps_the_label_a_caller_gave_any_member(which):
    view = folding.unfolded(_chain(3))
    tanhs = [v for v, a in view.nodes(data=True) if a["op"] == "tanh"]
    assert len(tanhs) == 3
    view.nodes[tanhs[which]]["label"] = "total"
    circuit = folding.fold(view)
    (node,) = [a for _, a in circuit.nodes(data=True) if a["op"] == "tanh"]
    assert node["timesteps"] == (0, 1, 2)  # the three steps did fold into one node
    assert node["label"] == "total"


# -- the stepper after loss.backward() ----------------------------------------------

def _sums(walk):
    return [(s.label, s.wrapper, s.formula(), [c.value for c in s.contributions], s.total)
            for s in walk.leaf_sums()]


@pytest.mark.parametrize("name", ["elman", "lstm", "birnn"])
def test_summary_and_leaf_sums_are_the_same_after_loss_backward(name):
    example = build(name)
    walk = Stepper(example.loss)
    walk.run()
    before = _sums(walk), walk.summary(), walk.summary(numbers=True)
    example.loss.backward()
    assert example.loss._node.freed  # backward did release what the walk read
    after = _sums(walk), walk.summary(), walk.summary(numbers=True)
    assert after[1:] == before[1:]
    assert len(after[0]) == len(before[0])
    for (label, wrapper, formula, values, total), old in zip(after[0], before[0]):
        assert (label, wrapper, formula) == old[:3]
        assert all(np.array_equal(v, w) for v, w in zip(values, old[3]))
        assert np.array_equal(total, old[4])
    # each sum's terms still add up to the gradient backward() put in .grad
    for s in walk.leaf_sums():
        assert np.allclose(sum(c.value for c in s.contributions), s.node.tensor.grad.data)


def test_elman_sums_look_through_the_transpose_after_backward():
    example = build("elman")
    walk = Stepper(example.loss)
    walk.run()
    example.loss.backward()
    transposed = [s for s in walk.leaf_sums() if s.wrapper != "{g}"]
    # ElmanRNN computes Vᵀ and Wᵀ once, outside the steps: one share per step behind each
    assert {s.label for s in transposed} >= {"V", "W"}
    assert all(len(s.contributions) == example.steps for s in transposed)


# -- named_grads names clashing parameters as leaf_sums does -----------------------

def _birnn_walk():
    example = build("birnn", steps=2)
    walk = Stepper(example.loss)
    walk.run()
    return example, walk


def test_named_grads_say_which_direction_and_match_backward():
    example, walk = _birnn_walk()
    named = walk.named_grads()
    assert set(named) == {s.label for s in walk.leaf_sums()}
    layer, head = example.model
    by_path = dict(layer.named_parameters())
    example.loss.backward()
    for name in ("U", "W", "b"):
        # the model's own names: layer0 runs forward in time, layer0_reverse backward
        assert np.array_equal(named[f"{name} [forward]"], by_path[f"layer0.{name}"].grad.data)
        assert np.array_equal(named[f"{name} [backward]"], by_path[f"layer0_reverse.{name}"].grad.data)
    for name, p in head.named_parameters():
        assert np.array_equal(named[name], p.grad.data)


def test_named_grads_keys_do_not_depend_on_what_was_recorded_before():
    _, walk = _birnn_walk()
    # recorded nodes in between move every node id of the next model
    unrelated = tg.tensor(np.ones(3), requires_grad=True)
    for _ in range(7):
        unrelated = unrelated * 2
    _, again = _birnn_walk()
    assert sorted(walk.named_grads()) == sorted(again.named_grads())


def test_named_grads_keys_do_not_change_as_the_cursor_moves():
    _, walk = _birnn_walk()
    final = set(walk.named_grads())
    walk.reset()
    seen = set()
    while walk.step() is not None:
        keys = set(walk.named_grads())
        assert keys <= final
        seen |= keys
    assert seen == final
