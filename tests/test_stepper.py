"""The stepper walks backward node by node and ends exactly where backward() ends."""
import numpy as np
import pytest

import tinygraph as tg
from tinygraph.graph import Graph
from tinygraph.stepper import Stepper
from tinygraph.viz import models_zoo

MODELS = ["rnn", "elman", "lstm", "gru", "birnn"]


def build(name, steps=3, seed=0):
    return models_zoo.build(name, steps=steps, seed=seed)


def leaf_params(loss):
    return [n.tensor for n in Graph.from_outputs(loss).leaves
            if n.requires_grad and n.tensor is not None]


def backward_op_nodes(loss):
    """Op nodes the backward pass visits: those with a differentiable leaf upstream."""
    reaches_param = {}
    for node in Graph.from_outputs(loss).nodes:
        reaches_param[node.id] = (node.is_leaf and node.requires_grad) or any(
            reaches_param[i.id] for i in node.inputs)
    return {nid for nid, hit in reaches_param.items() if hit} - {
        n.id for n in Graph.from_outputs(loss).leaves}


@pytest.mark.parametrize("name", MODELS)
def test_final_grads_equal_backward_exactly(name):
    loss = build(name).loss
    params = leaf_params(loss)  # before backward frees the graph that keeps them alive
    stepper = Stepper(loss)
    stepper.run()
    assert stepper.done
    stepped = {node.id: g for node, g in stepper.grads.items()}
    loss.backward()
    assert params and set(stepped) == {p._node.id for p in params}
    for p in params:
        assert np.array_equal(stepped[p._node.id], p.grad.data), p.name


@pytest.mark.parametrize("name", MODELS)
def test_one_step_per_backward_node(name):
    loss = build(name).loss
    stepper = Stepper(loss)
    events = list(stepper)
    assert len(events) == len(stepper) == len(backward_op_nodes(loss))
    assert {e.node.id for e in events} == backward_op_nodes(loss)
    # reverse topological: every consumer is processed before what it consumes
    seen = set()
    for e in events:
        assert not any(i.id in seen for i in e.node.inputs)
        seen.add(e.node.id)


@pytest.mark.parametrize("name", ["rnn", "lstm"])
def test_back_then_step_returns_the_same_event(name):
    stepper = Stepper(build(name).loss)
    for _ in range(7):
        stepper.step()
    event = stepper.step()
    previous = stepper.back()
    assert previous.index == event.index - 1
    again = stepper.step()
    assert again == event and again.node is event.node
    assert np.array_equal(again.upstream, event.upstream)
    assert stepper.back() is previous
    stepper.reset()
    assert stepper.position == 0 and stepper.current is None
    assert stepper.back() is None


def test_grads_grow_as_the_walk_goes():
    example = build("elman")
    model = example.model
    stepper = Stepper(example.loss)
    assert stepper.grads == {}
    o_last = stepper.run_to(name="o", timestep=2)
    stepper.run_to(name="h", timestep=2)
    partial = {n.name: g for n, g in stepper.grads.items()}
    # c is added at every step; so far only o(2) has sent it its share (summed over the batch)
    assert np.allclose(partial["c"], o_last.upstream.sum(axis=0))
    assert "U" not in partial  # the input weights are reached last
    stepper.run()
    assert {n.name for n in stepper.grads} == {"U", "W", "V", "b", "c"}
    assert stepper.grad(model.c) is not None and not np.allclose(stepper.grad(model.c), partial["c"])


def test_run_to_stops_where_asked():
    stepper = Stepper(build("elman").loss)
    event = stepper.run_to(name="h", timestep=1)
    assert (event.name, event.timestep, event.op) == ("h", 1, "tanh")
    assert stepper.current is event
    skipped = stepper.events[:event.index]
    assert not any(e.name == "h" and e.timestep == 1 for e in skipped)
    assert stepper.run_to(op="matmul", scope="cell").op == "matmul"


def test_run_to_without_a_match_raises_and_keeps_the_cursor():
    stepper = Stepper(build("elman").loss)
    stepper.run_to(name="h", timestep=1)
    where = stepper.position
    with pytest.raises(ValueError, match=r"no node matches name='nope'") as info:
        stepper.run_to(name="nope")
    assert stepper.position == where and not stepper.done
    message = str(info.value)
    assert "h" in message.split("names:")[1] and "time steps: 0, 1, 2" in message
    # something that exists, but only behind the cursor: said so, cursor kept
    with pytest.raises(ValueError, match="earlier matches"):
        stepper.run_to(name="h", timestep=2)
    assert stepper.position == where
    assert stepper.run_to(name="h", timestep=0).timestep == 0


def test_breakpoints_stop_run():
    stepper = Stepper(build("rnn", steps=3).loss)
    stepper.break_at(op="tanh")
    stops = []
    while not stepper.done:
        event = stepper.run()
        if event.op == "tanh":
            stops.append(event.timestep)
    assert stops == [2, 1, 0]  # the gradient reaches the last time step first
    with pytest.raises(TypeError):
        stepper.break_at(colour="red")


def _elman():
    models = pytest.importorskip("tinygraph.models")
    if not hasattr(models, "ElmanRNN"):
        pytest.skip("tinygraph.models.ElmanRNN is not available yet")
    tg.manual_seed(1)
    rng = np.random.default_rng(1)
    T, B, D, H, K = 3, 1, 2, 3, 2
    model = models.ElmanRNN(D, H, K).double()
    x = tg.tensor(rng.normal(size=(T, B, D)))
    o, _ = model(x)
    loss = tg.cross_entropy(o, rng.integers(0, K, size=(T, B)), reduction="sum")
    return model, loss, (T, K)


def _matrix_for_rows(param, out_features):
    """The matrix M with (row gradient) @ M = gradient through ``param`` in either layout."""
    p = param.data
    return p if p.shape[0] == out_features else p.T


def test_elman_hidden_gradient_is_the_textbook_sum():
    model, loss, (T, K) = _elman()
    stepper = Stepper(loss)
    events = {(e.name, e.timestep): e for e in stepper.events if e.name}
    H = model.hidden_size
    for t in range(T):
        h_event = events[("h", t)]
        terms = {c.source: c for c in h_event.contributions}
        expected = {f"o({t})"} | ({f"a({t + 1})"} if t + 1 < T else set())
        assert set(terms) == expected
        # through V from o(t):  ∂L/∂o(t) V
        from_o = events[("o", t)].upstream @ _matrix_for_rows(model.V, K)
        assert np.allclose(terms[f"o({t})"].value, from_o)
        total = from_o
        if t + 1 < T:  # through W from h(t+1):  ∂L/∂a(t+1) W
            from_next = events[("a", t + 1)].upstream @ _matrix_for_rows(model.W, H)
            assert np.allclose(terms[f"a({t + 1})"].value, from_next)
            total = total + from_next
            assert " + " in h_event.gradient_in()
        assert np.allclose(h_event.upstream, total)
        # the local rule of h = tanh(a): ∂L/∂a = ∂L/∂h ⊙ (1 − h²)
        h_value = h_event.node.tensor.data
        assert "(1 − h" in h_event.sent[0].rule
        assert np.allclose(h_event.sent[0].value, h_event.upstream * (1 - h_value ** 2))


def test_elman_parameter_gradients_are_sums_over_time():
    model, loss, (T, K) = _elman()
    stepper = Stepper(loss)
    stepper.run()
    sums = {s.label: s for s in stepper.leaf_sums()}
    assert set(sums) == {"U", "V", "W", "b", "c"}
    for label in ("U", "V", "b", "c"):
        assert sorted(c.timestep for c in sums[label].contributions) == list(range(T))
    # h(-1) is the zero state here, so W gets a share from every step that has a real h(t-1)
    assert len(sums["W"].contributions) >= T - 1
    loss.backward()
    for label, s in sums.items():
        param = getattr(model, label)
        assert np.allclose(sum(c.value for c in s.contributions), param.grad.data)
        assert s.formula().startswith(f"∇{label} = ")
        assert s.formula().count("from ") == len(s.contributions)


def test_explain_plugs_in_numbers():
    stepper = Stepper(build("rnn", steps=2).loss)
    event = stepper.run_to(name="h", timestep=0)
    text = event.explain()
    assert "∂L/∂a(0) = ∂L/∂h(0) ⊙ (1 − h(0)²)" in text
    upstream = np.round(event.upstream.ravel()[0], 3)
    assert f"{upstream:.3f}".rstrip("0").rstrip(".") in text.replace(" ", "")
    whole = stepper.explain()
    assert whole.count("step ") >= len(stepper) and "∇W = " in whole


def test_explain_writes_slices_in_index_notation():
    stepper = Stepper(build("lstm", steps=2).loss)
    text = stepper.explain()
    assert "slice(" not in text
    sliced = next(e for e in stepper.events if e.op == "getitem" and e.scope.endswith("forward"))
    numbers = sliced.sent[0].numbers
    assert "placed at [:, " in numbers and numbers.split("placed at")[1] in sliced.sent[0].rule


def test_truncation_cut_event_shows_the_dropped_gradient():
    rng = np.random.default_rng(0)
    example = build("elman", steps=2)
    model = example.model
    x = tg.tensor(rng.normal(size=(2, 1, 2)))

    def second_window(h_start):
        o, _ = model(x, h_start)
        return models_zoo.sequence_loss(o, np.array([[0], [1]]))

    _, h_edge = model(x, tg.tensor(np.zeros((1, 3))))
    carried = h_edge.detach()
    stepper = Stepper(second_window(carried), cuts=carried)
    cuts = [e for e in stepper.events if e.kind == "cut"]
    assert len(cuts) == 1 and cuts[0].node is carried._node
    assert cuts[0].label == "h(-1)"  # the state entering step 0 of the window
    # what would have flowed on: the gradient w.r.t. the same state made differentiable
    h_leaf = tg.tensor(carried.data, requires_grad=True)
    second_window(h_leaf).backward()
    assert np.allclose(cuts[0].upstream, h_leaf.grad.data)
    assert "✂" in str(cuts[0])
    node_steps = [e for e in stepper.events if e.kind == "node"]
    assert cuts[0].index > max(e.index for e in node_steps if carried._node in e.node.inputs)


def test_clip_event_reports_norm_before_and_after():
    loss = build("rnn").loss
    params = leaf_params(loss)
    stepper = Stepper(loss)
    nodes = len(stepper)
    clip = stepper.record_clip(0.1)
    assert clip.kind == "clip" and len(stepper) == nodes + 1
    stepper.run()
    loss.backward()
    norm = float(np.sqrt(sum((p.grad.data ** 2).sum() for p in params)))
    assert clip.detail["norm_before"] == pytest.approx(norm)
    assert clip.detail["norm_after"] == pytest.approx(0.1, rel=1e-4)
    clipped = np.sqrt(sum((g ** 2).sum() for g in stepper.grads.values()))
    assert clipped == pytest.approx(0.1, rel=1e-4)


def test_inputs_restrict_the_walk():
    example = build("elman")
    model = example.model
    full = Stepper(example.loss)
    only_v = Stepper(example.loss, inputs=[model.V])
    only_v.run()
    assert [n.name for n in only_v.grads] == ["V"]
    assert len(only_v) < len(full)


def test_inputs_may_be_one_tensor():
    example = build("elman")
    x = tg.tensor(np.ones((3, 2)), requires_grad=True)
    loss = (x * x).sum()
    alone, listed = Stepper(loss, inputs=x), Stepper(loss, inputs=[x])
    assert len(alone) == len(listed) == 2  # not x's rows, one by one
    alone.run()
    assert np.array_equal(alone.grad(x), 2 * np.ones((3, 2)))
    one_param = Stepper(example.loss, inputs=example.model.V)
    one_param.run()
    assert [n.name for n in one_param.grads] == ["V"]


def test_inputs_outside_the_graph_are_refused():
    loss = build("elman").loss
    stranger = tg.tensor(np.ones(3), requires_grad=True) * 2
    with pytest.raises(ValueError, match="none of the tensors in inputs="):
        Stepper(loss, inputs=[stranger])
    with pytest.raises(ValueError, match="none of the tensors in inputs="):
        Stepper(loss, inputs=stranger)


def test_bidirectional_summary_says_which_direction():
    stepper = Stepper(build("birnn", steps=2).loss)
    stepper.run()
    labels = [s.label for s in stepper.leaf_sums()]
    assert len(labels) == len(set(labels))
    for name in ("U", "W", "b"):
        assert f"{name} [forward]" in labels and f"{name} [backward]" in labels
        assert name not in labels
    summary = stepper.summary()
    assert "∇W [forward] = " in summary and "∇W [backward] = " in summary
    # the two W are different tensors, with their own sums
    sums = {s.label: s for s in stepper.leaf_sums()}
    assert sums["W [forward]"].node is not sums["W [backward]"].node


@pytest.mark.parametrize("name, states", [("elman", {"h0"}), ("rnn", {"h0"}),
                                          ("lstm", {"h0", "c0"}), ("gru", {"h0"})])
def test_initial_state_is_named_like_the_diagrams(name, states):
    stepper = Stepper(build(name).loss)
    text = stepper.walkthrough()
    assert "const[" not in text
    initial = {stepper.labels[n.id] for n in stepper.order
               if n.is_leaf and not n.requires_grad and not n.name}
    assert states <= initial
    for state in states:
        assert f"{state}ᵀ" in text or f"⊙ {state}" in text


def test_initial_state_name_matches_the_unfolded_diagram():
    pytest.importorskip("networkx")
    from tinygraph.viz.diagrams import unfolded_networkx

    example = build("lstm", steps=2)
    stepper = Stepper(example.loss)
    view = unfolded_networkx(example.loss, detail="ops")
    drawn = {v: a["label"] for v, a in view.nodes(data=True) if a.get("initial_of") is not None}
    assert drawn and all(stepper.labels[v] == label for v, label in drawn.items())


def test_lstm_shares_read_like_the_textbook():
    stepper = Stepper(build("lstm", steps=3).loss)
    text = stepper.walkthrough()
    assert " Wᵀ at t=" not in text  # no "from h(1) Wᵀ at t=2 via h(1)ᵀ"
    h1 = next(e for e in stepper.events if e.name == "h" and e.timestep == 1)
    gates = {c.source for c in h1.contributions} - {c.source for c in h1.contributions
                                                      if c.source.startswith("stack")}
    assert len(gates) == 1
    gates = gates.pop()  # the gates at t=2, all four: ∂L/∂h(1) gets δz(2) W
    assert gates.endswith("(2)") and set(gates[:-3].split(",")) == {"i", "f", "g", "o"}
    w_sum = next(s for s in stepper.leaf_sums() if s.label == "W")
    assert [c.source for c in w_sum.contributions] == [gates.replace("(2)", f"({t})")
                                                       for t in (2, 1, 0)]
    assert f"from {gates} via h(1)ᵀ" in w_sum.formula()
    assert "via h0ᵀ" in w_sum.formula()
    # the values are the engine's: the shares still add up to the total
    assert np.allclose(sum(c.value for c in h1.contributions), h1.upstream)


def test_stepper_needs_a_recorded_graph():
    with pytest.raises(RuntimeError, match="recorded graph"):
        Stepper(tg.tensor(1.0))


def test_windows_of_truncated_bptt_add_up_to_bptt():
    bptt = pytest.importorskip("tinygraph.bptt")
    model, _, _ = _elman()
    rng = np.random.default_rng(3)
    T, K = 5, model.output_size
    xs = tg.tensor(rng.normal(size=(T, 1, model.input_size)))
    targets = rng.integers(0, K, size=(T, 1))

    def loss_fn(outputs, y):
        return tg.cross_entropy(outputs, y, reduction="sum")

    walks = [Stepper.for_window(model, xs, targets, loss_fn, k1=2, k2=3, window=w)
             for w in range(3)]
    assert [w.window for w in walks] == [(0, 2, 0), (2, 4, 1), (4, 5, 2)]
    # window 0 starts from the initial state: nothing is cut; later ones cut the carried h
    assert [sum(e.kind == "cut" for e in w.events) for w in walks] == [0, 1, 1]
    cut = next(e for e in walks[1].events if e.kind == "cut")
    assert cut.upstream.shape == (1, model.hidden_size) and cut.detail["norm"] > 0
    model.zero_grad()
    bptt.backprop_through_time(model, xs, targets, loss_fn, k1=2, k2=3)
    for walk in walks:
        walk.run()
    for name, param in model.named_parameters():
        total = sum(walk.grad(param) for walk in walks)
        assert np.allclose(total, param.grad.data), name


def test_event_diagram_highlights_the_current_node():
    import tinygraph.viz  # noqa: F401  (installs the renderer)
    from tinygraph.viz.labels import HIGHLIGHT

    stepper = Stepper(build("elman", steps=2).loss)
    first = stepper.step()
    second = stepper.run_to(name="h", timestep=1)
    marker = f'penwidth={HIGHLIGHT["penwidth"]}'
    for event in (first, second):
        source = event.diagram(view="ops").source
        assert source.count(marker) == 1
    assert first.diagram(view="ops").source != second.diagram(view="ops").source
    assert "<svg" in second._repr_html_() and "∂L/∂h(1)" in second._repr_html_()


def test_engine_stepper_does_not_import_viz():
    import subprocess
    import sys
    code = ("import sys, tinygraph.stepper; "
            "assert 'tinygraph.viz' not in sys.modules and 'tinygraph.models' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


@pytest.mark.gpu
@pytest.mark.skipif(not tg.cuda_available(), reason="needs CuPy and a CUDA device")
def test_stepper_on_gpu_matches_backward():
    models = pytest.importorskip("tinygraph.models")
    model = models.ElmanRNN(2, 3, 2).double().to("cuda")
    x = tg.tensor(np.random.default_rng(0).normal(size=(3, 1, 2))).to("cuda")
    o, _ = model(x)
    loss = (o * o).sum()
    stepper = Stepper(loss)
    stepper.run()
    assert "∂L/∂h(1)" in stepper.explain()
    loss.backward()
    for name, param in model.named_parameters():
        assert np.array_equal(param.grad.numpy(), tg.backend.as_host(stepper.grad(param))), name


def test_reached_time_steps_grow_backwards_in_time():
    stepper = Stepper(build("elman", steps=3).loss)
    assert stepper.timesteps() == [0, 1, 2]
    seen = []
    for event in stepper:
        reached = stepper.reached_timesteps()
        if not seen or reached != seen[-1]:
            seen.append(reached)
    # the per-step losses do not count; the cell is reached at t=2 first, then 1, then 0
    assert seen == [[], [2], [1, 2], [0, 1, 2]]


def test_every_primitive_has_a_readable_formula():
    import tinygraph.models  # noqa: F401  (registers the fused cells)
    from tinygraph.formulas import FORMULAS
    from tinygraph.ops import PRIMITIVES

    missing = sorted(set(PRIMITIVES) - set(FORMULAS))
    assert not missing, f"add these to tinygraph/formulas.py: {missing}"
    for name in PRIMITIVES:
        entry = FORMULAS[name]
        assert entry.rules and entry.via and entry.forward


# -- what a student is shown must be right (found in review) --------------------------------
def _sent_rules(walk, op):
    event = [e for e in walk.events if e.op == op][0]
    return event, [(s.rule, s.numbers, s.value) for s in event.sent]


def test_rules_name_the_axis_and_the_sum_they_show():
    rng = np.random.default_rng(0)
    a = tg.tensor(rng.standard_normal((2, 3)), requires_grad=True, name="a")
    p = tg.tensor(rng.standard_normal((2, 3)), requires_grad=True, name="p")
    walk = Stepper(tg.sum(tg.take(a, np.array([2, 0, 2]), axis=1) * tg.stack([a, p], axis=1)[:, :, :3].sum()))
    _, take = _sent_rules(walk, "take")
    assert "along axis 1" in take[0][0] and "rows" not in take[0][0]
    _, stack = _sent_rules(walk, "stack")
    assert all("along axis 1" in rule for rule, _, _ in stack)


def test_batched_matmul_numbers_are_the_matrix_transpose():
    rng = np.random.default_rng(0)
    X = tg.tensor(rng.standard_normal((2, 2, 3)), requires_grad=True, name="X")
    Y = tg.tensor(rng.standard_normal((2, 3, 1)), requires_grad=True, name="Y")
    _, sent = _sent_rules(Stepper(tg.sum(tg.matmul(X, Y))), "matmul")
    to_Y = [numbers for rule, numbers, _ in sent if rule.startswith("∂L/∂Y")][0]
    assert "2×3×2" in to_Y                      # Xᵀ of a (2, 2, 3) batch is (2, 3, 2), not (3, 2, 2)


def test_fused_sweep_rules_follow_the_sweep_direction_and_the_gru_state_rule():
    from tinygraph.models.sequence import gru_sequence, lstm_sequence
    rng = np.random.default_rng(1)
    x = tg.tensor(rng.standard_normal((3, 2, 2)), name="x")
    h0 = tg.tensor(np.zeros((2, 4)), requires_grad=True, name="h0")
    U, W = (tg.tensor(rng.standard_normal(s) * 0.3, requires_grad=True, name=n)
            for s, n in (((16, 2), "U"), ((16, 4), "W")))
    for reverse, prev in ((False, "h(t−1)"), (True, "h(t+1)")):
        out, _, _ = lstm_sequence(x, h0, h0, U, W, reverse=reverse)
        _, sent = _sent_rules(Stepper(tg.sum(out)), "lstm_sequence")
        assert any(f"dZ(t)ᵀ {prev}" in rule for rule, _, _ in sent)
    Ug, Wg = (tg.tensor(rng.standard_normal(s) * 0.3, requires_grad=True) for s in ((12, 2), (12, 4)))
    hs = gru_sequence(x, h0, Ug, Wg)
    _, sent = _sent_rules(Stepper(tg.sum(hs * hs)), "gru_sequence")
    assert any("dZ_h(first step)" in rule for rule, _, _ in sent)


def test_a_cut_state_reads_as_the_step_before_in_every_expression():
    rng = np.random.default_rng(2)
    tg.manual_seed(0)
    from tinygraph.models import ElmanRNN
    model = ElmanRNN(2, 3, 2).double()
    xs, ys = rng.standard_normal((4, 1, 2)), rng.integers(0, 2, (4, 1))
    walk = Stepper.for_window(model, xs, ys, lambda o, t: tg.cross_entropy(o, t, reduction="sum"),
                              k1=2, k2=2, window=1)
    labels = list(walk.labels.values())
    # the window runs its steps as 0, 1 from the carried state: that state is h(-1), and the first
    # step's pre-activation reads it (before the fix it read h(0), as if a(0) depended on itself)
    assert "h(-1)" in labels and "b + (h(-1) Wᵀ)" in labels and "b + (h(0) Wᵀ)" in labels
