"""Folding and unfolding a recorded graph (tinygraph.folding), checked on structure.

Expected counts come from the model equations (a = b + W h + U x, h = tanh a,
o = c + V h, one loss per step), not from the code's own output.
"""
import json

import networkx as nx
import pytest

import tinygraph as tg
from tinygraph import folding
from tinygraph.viz import diagrams as viz_diagrams
from tinygraph.viz import models_zoo

T = 4
PARAMS = ("U", "V", "W", "b", "c")


def _graph(example):
    return tg.Graph.from_outputs(example.loss)


@pytest.fixture(scope="module", params=["textbook", "ElmanRNN"])
def elman(request):
    if request.param == "textbook":
        return models_zoo.textbook_rnn(T)
    return models_zoo.build("elman", T)


def _by_name(view, name):
    return [v for v, a in view.nodes(data=True) if a["name"] == name]


def test_unfolded_variables_has_parameters_once_and_cell_variables_per_step(elman):
    view = folding.variables(_graph(elman))
    for p in PARAMS:
        (node,) = [v for v in _by_name(view, p) if view.nodes[v]["kind"] == "param"]
        steps = {view.nodes[s]["timestep"] for s in view.successors(node)}
        assert steps == set(range(T)), f"{p} must feed every step"
        assert all(view.edges[node, s]["params"] == (p,) for s in view.successors(node))
    for var in ("x", "a", "h", "o"):
        copies = _by_name(view, var)
        assert sorted(view.nodes[v]["timestep"] for v in copies) == list(range(T))
    assert nx.is_directed_acyclic_graph(view)


def test_textbook_edges_are_labelled_with_the_parameter_that_maps_them(elman):
    view = folding.variables(_graph(elman))
    labels = {}
    for u, v, e in view.edges(data=True):
        key = (view.nodes[u]["label"], view.nodes[v]["label"], e["delay"])
        labels.setdefault(key, set()).add(e["params"])
    assert labels[("h", "a", 1)] == {("W",)}   # h(t-1) -W-> a(t), through a delay
    assert labels[("x", "a", 0)] == {("U",)}
    assert labels[("h", "o", 0)] == {("V",)}
    assert labels[("a", "h", 0)] == {()}       # tanh: no parameter


def test_circuit_has_the_cell_once_and_one_delay_per_recurrent_edge(elman):
    graph = _graph(elman)
    unfolded = folding.unfolded(graph)
    circuit = folding.circuit(graph, detail="ops")
    at_step_1 = [v for v, a in unfolded.nodes(data=True) if a["timestep"] == 1]
    stepped = [k for k, a in circuit.nodes(data=True) if a.get("timesteps")]
    only_first = [k for k in stepped if circuit.nodes[k]["timesteps"] == (0,)]  # h0
    assert len(stepped) - len(only_first) == len(at_step_1)
    delays = [k for k, a in circuit.nodes(data=True) if a["kind"] == "delay"]
    assert len(delays) == 1  # only h(t-1) crosses steps in an Elman cell
    (delay,) = delays
    (src,) = circuit.predecessors(delay)
    assert circuit.nodes[src]["name"] == "h"
    assert not nx.is_directed_acyclic_graph(circuit)
    for k in stepped:
        if k not in only_first:
            assert sorted(circuit.nodes[k]["timesteps"]) == list(range(T))


def test_variables_circuit_is_the_textbook_loop(elman):
    circuit = folding.circuit(_graph(elman), detail="variables")
    names = sorted(a["label"] for _, a in circuit.nodes(data=True) if a["kind"] != "delay")
    for wanted in ("x", "a", "h", "o", "y", "U", "V", "W", "b", "c"):
        assert names.count(wanted) == 1, wanted
    delays = [k for k, a in circuit.nodes(data=True) if a["kind"] == "delay"]
    assert len(delays) == 1
    (target,) = circuit.successors(delays[0])
    assert circuit.nodes[target]["label"] == "a"
    assert circuit.edges[delays[0], target]["params"] == ("W",)


def _json_round_trip(view):
    """Export the unfolded view and read it back, as another tool would."""
    data = nx.node_link_data(view, edges="links")
    text = json.dumps(data, default=list)
    back = nx.node_link_graph(json.loads(text), edges="links")
    for _, a in back.nodes(data=True):
        a["members"] = tuple(a["members"])
        a["shape"] = tuple(a["shape"])
    for _, _, e in back.edges(data=True):
        e["positions"] = tuple(e["positions"])
        e["params"] = tuple(e["params"])
    return back


def _relabel_by_content(g):
    """Fold keys mention recorded node ids for parameters; compare by label instead."""
    return nx.relabel_nodes(g, {k: repr(_content_key(g, k)) for k in g})


def _content_key(g, k):
    if k[0] == "node":
        return ("node", g.nodes[k]["label"], g.nodes[k]["kind"])
    if k[0] == "input":
        return ("input", _content_key_op(k[1]), k[2])
    if k[0] == "delay":
        return ("delay", _content_key(g, k[1]), k[2])
    return k


def _content_key_op(k):
    return k if k[0] != "node" else ("node",)


MODELS = [("rnn", 1), ("elman", 1), ("lstm", 1), ("gru", 1), ("birnn", 1), ("lstm", 2), ("rnn", 2)]


# Hand-derived textbook circuits (detail="variables"), from each cell's equations.
# Every layer model ends in the same head and loss: L(t) = CE(weight h(t) + bias, y(t)),
# L = sum_t L(t). A cell's input edges: the bias, U x(t), W s(t-1) where s(t-1) is the
# state through its delay (or the initial state s0 at the first step).
def _affine(x="x", state="h", init="h0", q=""):
    """Sources of a pre-activation b + W s(t-1) + U x(t): (source, params on the edge)."""
    return {(f"b{q}", ("b",)), (f"W{q}", ("W",)), (f"U{q}", ("U",)), (x, ("U",)),
            (f"delay({state})", ("W",)), (init, ("W",))}


def _loss(*outputs):
    return {("weight", ("weight",)), ("bias", ("bias",)), ("y", ()), ("L", ())} | \
        {(h, ("weight",)) for h in outputs}


def _rnn():
    # a = b + W h(t-1) + U x; h = tanh(a)
    return dict(kinds=dict(param=5, data=3, op=4), delays={("h", 1)},
                edges={"a": _affine(), "h": {("a", ())}, "L": _loss("h")})


def _lstm():
    # f, i, g, o = act(b + W h(t-1) + U x); c = f c(t-1) + i g; h = o tanh(c)
    gates = {gate: _affine() for gate in "figo"}
    return dict(kinds=dict(param=5, data=4, op=8), delays={("h", 1), ("c", 1)},
                edges=dict(gates, c={("f", ()), ("i", ()), ("g", ()), ("delay(c)", ()), ("c0", ())},
                           h={("o", ()), ("c", ())}, L=_loss("h")))


def _gru():
    # r, z = sigmoid(b + W h(t-1) + U x); n = tanh(U_n x + b_n + r (W_n h(t-1) + b_hn));
    # h = (1 - z) n + z h(t-1)
    return dict(kinds=dict(param=6, data=3, op=6), delays={("h", 1)},
                edges=dict(r=_affine(), z=_affine(),
                           n=_affine() | {("r", ()), ("b_hn", ("b_hn",))},
                           h={("z", ()), ("n", ()), ("delay(h)", ()), ("h0", ())}, L=_loss("h")))


def _birnn():
    # h(t) = tanh(b + W h(t-1) + U x(t)); g(t) = tanh(b' + W' g(t+1) + U' x(t)); one x(t)
    return dict(kinds=dict(param=8, data=4, op=6), delays={("h", 1), ("g", -1)},
                edges={"a [forward]": _affine(q=" [forward]"),
                       "a [backward]": _affine(state="g", init="g0", q=" [backward]"),
                       "h": {("a [forward]", ())}, "g": {("a [backward]", ())},
                       "L": _loss("h", "g")})


def _rnn_stack():
    # layer 1 reads layer 0's h(t) as its input x(t)
    q0, q1 = " [layer0]", " [layer1]"
    return dict(kinds=dict(param=8, data=4, op=7), delays={("h" + q0, 1), ("h" + q1, 1)},
                edges={"a" + q0: _affine("x" + q0, "h" + q0, "h0" + q0, q0),
                       "h" + q0: {("a" + q0, ())}, "x" + q1: {("h" + q0, ())},
                       "a" + q1: _affine("x" + q1, "h" + q1, "h0" + q1, q1),
                       "h" + q1: {("a" + q1, ())}, "L": _loss("h" + q1)})


def _lstm_stack():
    return dict(kinds=dict(param=8, data=6, op=15),
                delays={(s + q, 1) for s in "hc" for q in (" [layer0]", " [layer1]")})


HAND_DERIVED = {("rnn", 1): _rnn, ("lstm", 1): _lstm, ("gru", 1): _gru, ("birnn", 1): _birnn,
                ("rnn", 2): _rnn_stack, ("lstm", 2): _lstm_stack}


def _title(a):
    return a["label"] + (f" [{a['qualifier']}]" if a.get("qualifier") else "")


def _structure(circuit):
    """(kind counts, {(state, offset)}, {target: {(source, params)}}) by drawn titles."""
    kinds, delays, edges = {}, set(), {}
    for k, a in circuit.nodes(data=True):
        kinds[a["kind"]] = kinds.get(a["kind"], 0) + 1
        if a["kind"] == "delay":
            (src,) = circuit.predecessors(k)
            delays.add((_title(circuit.nodes[src]), a["delay"]))
    for u, v, e in circuit.edges(data=True):
        a, b = circuit.nodes[u], circuit.nodes[v]
        if b["kind"] == "delay":
            continue
        source = f"delay({_title(circuit.nodes[next(iter(circuit.predecessors(u)))])})" \
            if a["kind"] == "delay" else _title(a)
        edges.setdefault(_title(b), set()).add((source, tuple(e["params"])))
    return kinds, delays, edges


def _exported_and_folded(loss):
    """The unfolded view exported as JSON, read back and folded, as another tool would."""
    return folding.fold(_json_round_trip(viz_diagrams.unfolded_networkx(loss, detail="variables")))


@pytest.mark.parametrize("name,layers", sorted(HAND_DERIVED))
@pytest.mark.parametrize("how", ["folded", "fold(exported unfolded)"])
def test_circuit_matches_the_hand_derived_textbook_circuit(name, layers, how):
    expected = HAND_DERIVED[(name, layers)]()
    loss = models_zoo.build(name, 3, num_layers=layers).loss
    circuit = viz_diagrams.folded_networkx(loss, detail="variables") if how == "folded" \
        else _exported_and_folded(loss)
    kinds, delays, edges = _structure(circuit)
    assert kinds == dict(expected["kinds"], delay=len(expected["delays"]))
    assert delays == expected["delays"]
    for target, sources in expected.get("edges", {}).items():
        assert edges[target] == sources, target
    assert not nx.is_directed_acyclic_graph(circuit)


@pytest.mark.parametrize("name,layers", sorted(HAND_DERIVED))
def test_ops_circuit_has_one_delay_per_recurrent_state(name, layers):
    expected = HAND_DERIVED[(name, layers)]()
    circuit = folding.circuit(_graph(models_zoo.build(name, 3, num_layers=layers)), detail="ops")
    offsets = sorted(a["delay"] for _, a in circuit.nodes(data=True) if a["kind"] == "delay")
    assert offsets == sorted(d for _, d in expected["delays"])
    looped = sorted(circuit.nodes[next(iter(circuit.predecessors(k)))]["name"]
                    for k, a in circuit.nodes(data=True) if a["kind"] == "delay")
    assert looped == sorted(state.split(" ")[0].replace("g", "h") for state, _ in expected["delays"])


@pytest.mark.parametrize("name,layers", MODELS)
def test_circuit_does_not_depend_on_sequence_length(name, layers):
    short = folding.circuit(_graph(models_zoo.build(name, 3, num_layers=layers)), detail="ops")
    long = folding.circuit(_graph(models_zoo.build(name, 5, num_layers=layers)), detail="ops")
    a, b = _relabel_by_content(short), _relabel_by_content(long)
    assert a.number_of_nodes() == b.number_of_nodes()
    assert a.number_of_edges() == b.number_of_edges()
    assert sorted(d["label"] for _, d in a.nodes(data=True)) == \
        sorted(d["label"] for _, d in b.nodes(data=True))


def test_lstm_circuit_loops_both_h_and_c():
    circuit = folding.circuit(_graph(models_zoo.build("lstm", 3)), detail="ops")
    looped = {circuit.nodes[next(iter(circuit.predecessors(k)))]["name"]
              for k, a in circuit.nodes(data=True) if a["kind"] == "delay"}
    assert looped == {"h", "c"}


def test_bidirectional_has_a_forward_and_a_backward_delay():
    circuit = folding.circuit(_graph(models_zoo.build("birnn", 3)), detail="variables")
    delays = sorted(a["delay"] for _, a in circuit.nodes(data=True) if a["kind"] == "delay")
    assert delays == [-1, 1]


def test_two_layer_stack_keeps_layers_apart_and_steps_aligned():
    view = folding.variables(_graph(models_zoo.build("rnn", 3, num_layers=2)))
    # layer 1 at step t reads layer 0 at the same step only (stack then index is seen through)
    for u, v, e in view.edges(data=True):
        a, b = view.nodes[u], view.nodes[v]
        if a["name"] == "h" and b["name"] == "x":
            assert a["timestep"] == b["timestep"]
    circuit = folding.fold(view)
    assert sum(1 for _, a in circuit.nodes(data=True) if a["kind"] == "delay") == 2


def test_elision_keeps_first_and_last_steps_and_counts_the_gap():
    graph = _graph(models_zoo.textbook_rnn(12))
    shown = folding.choose_steps(graph.timesteps, 4)
    assert shown == [0, 1, 10, 11]
    for detail in ("ops", "variables"):
        view = folding.view_of(graph, detail, steps=shown)
        gaps = [a for _, a in view.nodes(data=True) if a["kind"] == "elided"]
        assert [g["elided"] for g in gaps] == [(2, 9)]
        assert {a["timestep"] for _, a in view.nodes(data=True)} == {None, 0, 1, 10, 11}
        full = folding.view_of(graph, detail)
        assert folding.elide_steps(full, shown).number_of_nodes() == view.number_of_nodes()


def test_collapse_scopes_makes_one_box_per_step():
    graph = _graph(models_zoo.textbook_rnn(T))
    view = folding.collapse_scopes(folding.unfolded(graph), "TextbookRNN")
    groups = [a for _, a in view.nodes(data=True) if a["kind"] == "group"]
    assert sorted(g["timestep"] for g in groups if g["timestep"] is not None) == list(range(T))
    circuit = folding.collapse_scopes(folding.fold(folding.unfolded(graph)), 1)
    boxes = [k for k, a in circuit.nodes(data=True) if a["kind"] == "group"]
    assert {circuit.nodes[k]["scope"] for k in boxes} == {"TextbookRNN", "loss"}
    delay = next(k for k, a in circuit.nodes(data=True) if a["kind"] == "delay")
    (box,) = circuit.predecessors(delay)
    assert list(circuit.successors(delay)) == [box]  # the cell loops onto itself
