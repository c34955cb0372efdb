"""Folding and unfolding a recorded graph (tinygraph.folding), checked on structure.

Expected counts come from the model equations (a = b + W h + U x, h = tanh a,
o = c + V h, one loss per step), not from the code's own output.
"""
import json

import networkx as nx
import pytest

import tinygraph as tg
from tinygraph import folding
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


def _signature(g):
    """Node and edge sets by stable content (keys are the fold keys)."""
    nodes = {k: (a["kind"], a["label"], tuple(sorted(a.get("timesteps", ())))) for k, a in g.nodes(data=True)}
    edges = {(u, v): (e["delay"], tuple(e.get("params", ()))) for u, v, e in g.edges(data=True)}
    return nodes, edges


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
        return ("delay", _content_key(g, k[1]), _content_key(g, k[2]), k[3])
    return k


def _content_key_op(k):
    return k if k[0] != "node" else ("node",)


MODELS = [("rnn", 1), ("elman", 1), ("lstm", 1), ("gru", 1), ("birnn", 1), ("lstm", 2), ("rnn", 2)]


@pytest.mark.parametrize("name,layers", MODELS)
@pytest.mark.parametrize("detail", ["ops", "variables"])
def test_fold_of_exported_unfolded_graph_reproduces_the_circuit(name, layers, detail):
    example = models_zoo.build(name, 3, num_layers=layers)
    graph = _graph(example)
    circuit = folding.circuit(graph, detail=detail)
    exported = _json_round_trip(folding.view_of(graph, detail))
    refolded = folding.fold(exported)
    assert _signature(refolded) == _signature(circuit)
    assert not nx.is_directed_acyclic_graph(circuit)


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
