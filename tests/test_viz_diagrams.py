"""draw_graph / draw_unfolded / draw_circuit: the DOT they produce, checked on structure.

Counts come from the textbook equations over T = 4 steps: per step the
variables x, a, h, o plus the loss pieces y, L(t); five parameters; the
initial state h0; the total loss L.
"""
import re
import time

import numpy as np
import pytest

import tinygraph as tg
from tinygraph.viz import diagrams, models_zoo

T = 4
PER_STEP = ("x", "a", "h", "o", "y", "L")


def _nodes(source):
    """{dot name: attribute text} for node statements (not edges, not graph attributes)."""
    found = {}
    for line in source.splitlines():
        m = re.match(r"\s*(n\d+|legend\d+\w*)\s+\[(.*)\]\s*$", line)
        if m:
            found[m.group(1)] = m.group(2)
    return found


def _label(attrs):
    m = re.search(r'label="((?:[^"\\]|\\.)*)"', attrs)
    return m.group(1) if m else ""


def _edges(source):
    return re.findall(r"^\s*(n\d+) -> (n\d+)(?: \[(.*)\])?\s*$", source, flags=re.M)


def _clusters(source):
    return re.findall(r"subgraph (cluster_t\d+)", source)


@pytest.fixture(scope="module", params=["textbook", "ElmanRNN"])
def elman(request):
    if request.param == "textbook":
        return models_zoo.textbook_rnn(T)
    return models_zoo.build("elman", T)


def test_unfolded_variables_has_step_clusters_parameters_once_and_copies(elman):
    source = diagrams.draw_unfolded(elman.loss).source
    assert _clusters(source) == [f"cluster_t{t}" for t in range(T)]
    nodes = _nodes(source)
    titles = {name: _label(a).split("\\n")[0] for name, a in nodes.items()}
    for p in ("U", "V", "W", "b", "c"):
        (param,) = [n for n, t in titles.items() if t == p]
        targets = {titles[v] for u, v, _ in _edges(source) if u == param}
        steps = {int(re.search(r"\((\d+)\)", t).group(1)) for t in targets}
        assert steps == set(range(T)), f"{p} feeds every step"
        assert 'fillcolor="#ffd8a8"' in nodes[param]  # parameters are drawn distinctly
    for var in PER_STEP:
        copies = sorted(t for t in titles.values() if re.fullmatch(rf"{var}\(\d+\)", t))
        assert copies == [f"{var}({t})" for t in range(T)]
    assert len(nodes) == 5 + len(PER_STEP) * T + 2  # + h0 + total L


def test_unfolded_state_edges_run_from_t_minus_1_to_t(elman):
    source = diagrams.draw_unfolded(elman.loss).source
    titles = {n: _label(a).split("\\n")[0] for n, a in _nodes(source).items()}
    state = [(titles[u], titles[v], attrs) for u, v, attrs in _edges(source)
             if titles[u].startswith("h(") and titles[v].startswith("a(")]
    assert sorted((u, v) for u, v, _ in state) == [(f"h({t - 1})", f"a({t})") for t in range(1, T)]
    assert all('label=W' in attrs for _, _, attrs in state)


def test_circuit_draws_the_cell_once_and_delay_squares(elman):
    source = diagrams.draw_circuit(elman.loss).source
    nodes = _nodes(source)
    delays = [n for n, a in nodes.items() if "shape=square" in a]
    assert len(delays) == 1
    assert 'tooltip="delay of one time step"' in nodes[delays[0]]
    assert 'fillcolor=black' in nodes[delays[0]]
    titles = [_label(a).split("\\n")[0] for n, a in nodes.items() if n not in delays]
    for var in ("x", "a", "h", "o", "U", "V", "W", "b", "c"):
        assert titles.count(var) == 1
    assert len(nodes) == 5 + len(PER_STEP) + 2 + 1  # params, cell, h0 + L, one delay


def test_ops_detail_shows_every_primitive():
    example = models_zoo.textbook_rnn(T)
    source = diagrams.draw_unfolded(example.loss, detail="ops").source
    labels = [_label(a) for a in _nodes(source).values()]
    assert sum("tanh" in lab for lab in labels) == T
    assert sum(lab.startswith("matmul") for lab in labels) == 3 * T  # W h, U x, V h


def test_ten_thousand_steps_are_elided_in_seconds():
    example = models_zoo.textbook_rnn(10_000)
    start = time.perf_counter()
    diagram = diagrams.draw_unfolded(example.loss)
    ops = diagrams.draw_unfolded(example.loss, detail="ops", steps=4)
    elapsed = time.perf_counter() - start
    assert elapsed < 30, f"took {elapsed:.1f} s"  # ~4 s on an idle core
    for d in (diagram, ops):
        nodes = _nodes(d.source)
        assert len(nodes) <= diagrams.DEFAULT_MAX_NODES
        assert re.search(r"\.\.\. \d+ steps \.\.\.", d.source)
        assert "of 10000 time steps" in d.source
    assert _clusters(ops.source) == ["cluster_t0", "cluster_t1", "cluster_t9998", "cluster_t9999"]


def test_collapse_folds_scopes_into_boxes():
    example = models_zoo.build("lstm", 3)
    source = diagrams.draw_unfolded(example.loss, detail="ops", collapse="LSTM.layer0").source
    boxes = [a for a in _nodes(source).values() if "shape=box3d" in a]
    assert len(boxes) == 3 + 1  # one per step + the layer's stack outside the steps
    circuit = diagrams.draw_circuit(example.loss, detail="ops", collapse=1).source
    assert sum("shape=box3d" in a for a in _nodes(circuit).values()) >= 1


def _fresh_rnn():
    return models_zoo.textbook_rnn(3)


def test_gradients_are_labelled_not_computed_until_backward():
    example = _fresh_rnn()
    before = diagrams.draw_graph(example.loss, show_grads=True).source
    assert "grad: not computed" in before
    assert "grad: |g| 0\\n" not in before
    example.loss.backward()
    after = diagrams.draw_graph(example.loss, show_grads=True, show_values=True).source
    W = next(a for a in _nodes(after).values() if _label(a).startswith("W\\n"))
    assert "grad: |g|" in W and "value:" in W


def test_grads_argument_and_highlight_map_onto_drawn_nodes():
    example = _fresh_rnn()
    graph = tg.Graph.from_outputs(example.loss)
    h1 = next(n for n in graph.nodes if n.name == "h" and n.timestep == 1)
    done = [n.id for n in graph.nodes if n.name == "o"]
    for draw in (diagrams.draw_unfolded, diagrams.draw_circuit, diagrams.draw_graph):
        source = draw(example.loss, highlight=[h1.id], processed=done, show_grads=True,
                      grads={h1.id: np.full((1, 3), 0.5)}).source
        nodes = _nodes(source)
        current = [a for a in nodes.values() if "penwidth=3" in a]
        assert len(current) == 1 and _label(current[0]).startswith("h")
        assert "grad" in _label(current[0]) and "not computed" not in _label(current[0])
        assert sum('fillcolor="#b2f2bb"' in a for a in nodes.values()) >= 1


def test_backward_draws_the_create_graph_nodes():
    example = _fresh_rnn()
    forward = _nodes(diagrams.draw_graph(example.loss).source)
    example.loss.backward(create_graph=True)
    source = diagrams.draw_graph(example.loss, backward=True).source
    nodes = _nodes(source)
    backward_nodes = [a for a in nodes.values() if 'fillcolor="#e5dbff"' in a]
    assert len(backward_nodes) > 0
    assert len(nodes) > len(forward)
    titles = {_label(a).split("\\n")[0] for a in nodes.values()}
    assert {"dL/dU", "dL/dW", "dL/dV"} <= titles
    circuit = diagrams.draw_circuit(example.loss, backward=True, detail="ops").source
    assert any('fillcolor="#e5dbff"' in a for a in _nodes(circuit).values())


def test_backward_records_the_vjp_graph_when_not_yet_recorded():
    example = _fresh_rnn()
    source = diagrams.draw_unfolded(example.loss, backward=True, detail="ops").source
    assert any('fillcolor="#e5dbff"' in a for a in _nodes(source).values())


def test_bidirectional_draws_x_once_per_step_h_and_g_chains_and_qualified_weights():
    # h(t) = tanh(b + W h(t-1) + U x(t)) forward, g(t) = tanh(b' + W' g(t+1) + U' x(t))
    # backward; both read the one input x(t), each direction has its own b, W, U
    steps = 3
    example = models_zoo.build("birnn", steps)
    unfolded = _nodes(diagrams.draw_unfolded(example.loss).source)
    titles = [_label(a).split("\\n")[0] for a in unfolded.values()]
    assert sorted(t for t in titles if t.startswith("x")) == [f"x({t})" for t in range(steps)]
    assert sorted(t for t in titles if re.fullmatch(r"h\(\d\)", t)) == [f"h({t})" for t in range(steps)]
    assert sorted(t for t in titles if re.fullmatch(r"g\(\d\)", t)) == [f"g({t})" for t in range(steps)]
    for p in ("b", "W", "U"):
        assert titles.count(f"{p} [forward]") == 1 and titles.count(f"{p} [backward]") == 1, p
        assert p not in titles  # no unqualified twin
    by_title = {t: n for n, t in zip(unfolded, titles)}
    edges = _edges(diagrams.draw_unfolded(example.loss).source)
    for t in range(steps):  # x(t) feeds both directions' pre-activations at step t
        fed = {re.sub(r"\(\d\)", "", _label(unfolded[v]).split("\\n")[0])
               for u, v, attrs in edges if u == by_title[f"x({t})"] and "invis" not in (attrs or "")}
        assert fed == {"a [forward]", "a [backward]"}
    circuit = [_label(a).split("\\n")[0] for a in _nodes(diagrams.draw_circuit(example.loss).source).values()]
    assert circuit.count("x") == 1 and circuit.count("h") == 1 and circuit.count("g") == 1


def test_lstm_keeps_its_gate_g_and_does_not_rename_h():
    example = models_zoo.build("lstm", 2)
    titles = [_label(a).split("\\n")[0] for a in _nodes(diagrams.draw_circuit(example.loss).source).values()]
    assert titles.count("g") == 1 and titles.count("h") == 1  # gate g, state h


def test_same_recording_gives_the_same_dot():
    a = models_zoo.textbook_rnn(3, seed=1)
    b = models_zoo.textbook_rnn(3, seed=1)
    for draw in (diagrams.draw_unfolded, diagrams.draw_circuit, diagrams.draw_graph):
        assert draw(a.loss).source == draw(b.loss).source


def test_networkx_exports():
    import networkx as nx
    example = models_zoo.textbook_rnn(3)
    unfolded = diagrams.unfolded_networkx(example.loss)
    folded = diagrams.folded_networkx(example.loss)
    assert nx.is_directed_acyclic_graph(unfolded)
    assert not nx.is_directed_acyclic_graph(folded)
    assert any(a["kind"] == "delay" for _, a in folded.nodes(data=True))


def test_max_nodes_caps_draw_graph_and_says_so():
    example = models_zoo.textbook_rnn(40)
    source = diagrams.draw_graph(example.loss, max_nodes=60).source
    assert len(_nodes(source)) <= 60
    assert "elided" in source or "not drawn" in source or "collapsed" in source


@pytest.mark.parametrize("collapse", ["nonexistent", "Elman", 7, ["ElmanRNN", "nope"]])
def test_collapse_that_matches_nothing_names_the_scopes(collapse):
    example = models_zoo.build("elman", 3)  # scopes: ElmanRNN.cell (depth 2) and loss
    for draw in (diagrams.draw_unfolded, diagrams.draw_circuit, diagrams.draw_graph):
        with pytest.raises(ValueError, match=r"'ElmanRNN\.cell'.*depth from 1 to 2"):
            draw(example.loss, detail="ops", collapse=collapse)


def test_collapse_prefixes_and_depths_that_exist_still_work():
    example = models_zoo.build("elman", 3)
    for collapse in ("ElmanRNN", "ElmanRNN.cell", 1, 2, ["loss", "ElmanRNN"]):
        source = diagrams.draw_unfolded(example.loss, detail="ops", collapse=collapse).source
        assert "shape=box3d" in source


@pytest.mark.parametrize("steps,pattern", [([7], r"\[7\].*0\.\.3"), ([0, 9], r"\[9\].*0\.\.3"),
                                           (0, r"at least 1"), (-2, r"at least 1")])
def test_steps_outside_the_recording_are_an_error_naming_the_valid_ones(steps, pattern):
    example = models_zoo.textbook_rnn(4)
    with pytest.raises(ValueError, match=pattern):
        diagrams.draw_unfolded(example.loss, steps=steps)


def test_to_networkx_unfolded_and_folded_views():
    import networkx as nx
    # textbook RNN over T = 3: cell variables x a h o y L(t) per step, 5 parameters, h0, L
    example = models_zoo.textbook_rnn(3)
    unfolded = diagrams.to_networkx(example.loss, view="unfolded", detail="variables")
    folded = diagrams.to_networkx(example.loss, view="folded", detail="variables")
    assert nx.is_directed_acyclic_graph(unfolded)
    assert unfolded.number_of_nodes() == 6 * 3 + 5 + 2
    assert not nx.is_directed_acyclic_graph(folded)
    assert folded.number_of_nodes() == 6 + 5 + 2 + 1  # the cell once, one delay (h)
    (delay,) = [k for k, a in folded.nodes(data=True) if a["kind"] == "delay"]
    assert folded.nodes[delay]["delay"] == 1
    ops = diagrams.to_networkx(example.loss)  # defaults: unfolded, every primitive
    assert sum(a["op"] == "tanh" for _, a in ops.nodes(data=True)) == 3
    with pytest.raises(ValueError, match="'unfolded' or 'folded'"):
        diagrams.to_networkx(example.loss, view="sideways")


def test_backward_textbook_circuit_sums_gradients_without_long_delays():
    # dL/dW = sum_t dL/dW(t): a sum over the steps (like L = sum_t L(t)), not a chain of
    # delays -1, -2, ... from every later step; the only recurrence left is h(t-1) -> h(t)
    example = models_zoo.build("elman", 4)
    circuit = diagrams.folded_networkx(example.loss, detail="variables", backward=True)
    delays = [a["delay"] for _, a in circuit.nodes(data=True) if a["kind"] == "delay"]
    assert delays == [1]
    grads = {a["label"] for _, a in circuit.nodes(data=True) if a["label"].startswith("dL/d")}
    assert grads == {f"dL/d{p}" for p in ("U", "V", "W", "b", "c")}
    labels = {a["label"] for _, a in circuit.nodes(data=True)}
    assert not any(lab.startswith("const") and lab != "const" for lab in labels)  # no "const0"


def test_bidirectional_x_is_drawn_once_per_step_after_backward_freed_the_arrays():
    import gc
    example = models_zoo.build("birnn", 3)
    example.loss.backward()  # frees the saved arrays: x(t) is matched by name, step, scope
    gc.collect()
    view = diagrams.unfolded_networkx(example.loss, detail="variables")
    assert sorted(a["timestep"] for _, a in view.nodes(data=True) if a["label"] == "x") == [0, 1, 2]


@pytest.mark.parametrize("layer", ["LSTM", "RNN"])
def test_backward_drawing_of_a_fused_layer_says_it_is_fused_not_freed(layer):
    from tinygraph import models
    x = tg.tensor(np.random.default_rng(0).standard_normal((3, 2, 2)), requires_grad=True)
    out, _ = getattr(models, layer)(2, 3, fused=True, dtype="float64")(x)
    with pytest.raises(RuntimeError) as info:
        diagrams.draw_graph(tg.sum(out * out), backward=True)
    assert "fused first-order kernel" in str(info.value) and "freed" not in str(info.value)


def test_a_bidirectional_layers_gradients_say_which_direction():
    from tinygraph.models import RNN
    tg.manual_seed(0)
    out, _ = RNN(2, 3, bidirectional=True)(tg.tensor(np.ones((3, 1, 2), np.float32)))
    source = diagrams.draw_circuit(out.sum(), detail="variables", backward=True).source
    labels = sorted(re.findall(r'label="?(dL/d[^"\\]*)', source))
    assert labels == sorted(f"dL/d{p} [{d}]" for p in "UWb" for d in ("forward", "backward"))
