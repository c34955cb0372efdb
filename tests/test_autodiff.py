"""Reverse-mode semantics: accumulation, deep graphs, retain_graph, grad modes,
grad(), recorded backward graphs, Graph views and anomaly detection."""
import sys
import weakref

import numpy as np
import pytest

import tinygraph as tg


def t64(array, requires_grad=True, name=None):
    return tg.tensor(np.asarray(array, dtype=np.float64), requires_grad=requires_grad, name=name)


# ---------------------------------------------------------------------------
# accumulation
# ---------------------------------------------------------------------------
def test_shared_weight_sums_contributions_from_every_step(rng):
    # h_t = h_{t-1} * w + x_t, loss = h_T: dh_T/dw by forward-mode recurrence in NumPy
    xs = rng.standard_normal((6, 3))
    w0 = rng.standard_normal(3) * 0.5
    h, dh = np.zeros(3), np.zeros(3)
    for x in xs:
        dh = dh * w0 + h  # d/dw of (h * w + x) with h depending on w too
        h = h * w0 + x
    w = t64(w0)
    state = tg.zeros(3, dtype="float64")
    for x in xs:
        state = state * w + tg.tensor(x)
    state.sum().backward()
    np.testing.assert_allclose(w.grad.numpy(), dh, rtol=1e-12)


def test_multiplicity_a_times_a():
    a = t64([1.5, -2.0])
    (a * a).sum().backward()
    np.testing.assert_allclose(a.grad.numpy(), [3.0, -4.0])
    b = t64([2.0])
    (b * b * b + b + b).sum().backward()
    np.testing.assert_allclose(b.grad.numpy(), [3 * 4.0 + 2.0])


def test_multiplicity_is_kept_in_the_graph():
    a = t64([1.0], name="a")
    y = a * a
    node = y.node
    assert node.inputs == (a.node, a.node)
    g = tg.Graph.from_outputs(y).to_networkx()
    assert g.edges[a.node.id, node.id]["positions"] == [0, 1]


def test_backward_accumulates_into_existing_grad():
    x = t64([1.0, 2.0])
    (x * 3.0).sum().backward()
    (x * x).sum().backward()
    np.testing.assert_allclose(x.grad.numpy(), [3.0 + 2.0, 3.0 + 4.0])


def test_leaf_grads_do_not_share_memory():
    a, b = t64(1.0), t64(2.0)
    (a + b).backward()  # add hands the same gradient array to both inputs
    assert not np.shares_memory(a.grad.data, b.grad.data)
    a.grad.data += 1.0  # what an in-place optimizer step does
    assert b.grad.item() == 1.0


def test_backward_does_not_alias_the_callers_gradient():
    x = t64([1.0, 2.0])
    seed = np.array([1.0, 1.0])
    (x + 0.0).backward(seed)
    x.grad.data *= 5
    np.testing.assert_array_equal(seed, [1.0, 1.0])


def test_gradient_has_the_inputs_dtype():
    x = tg.tensor([1.0, 2.0], dtype="float32", requires_grad=True)
    (x * np.array([0.5, 0.25], dtype=np.float64)).sum().backward()
    assert x.grad.dtype == np.float32
    np.testing.assert_allclose(x.grad.numpy(), [0.5, 0.25])


def test_non_scalar_backward_with_explicit_gradient(rng):
    a = rng.standard_normal((2, 3))
    v = rng.standard_normal((2, 3))
    x = t64(a)
    tg.tanh(x).backward(tg.tensor(v))
    np.testing.assert_allclose(x.grad.numpy(), v * (1 - np.tanh(a) ** 2))


def test_retain_grad_on_an_intermediate():
    x = t64([1.0, 2.0])
    y = x * 3.0
    y.retain_grad()
    (y * y).sum().backward()
    np.testing.assert_allclose(y.grad.numpy(), [6.0, 12.0])
    np.testing.assert_allclose(x.grad.numpy(), [18.0, 36.0])


# ---------------------------------------------------------------------------
# deep graphs: iterative walks
# ---------------------------------------------------------------------------
def test_backward_through_20000_step_recurrence_without_recursion():
    steps, w0, x0 = 20_000, 0.9, 0.05
    w = t64(w0)
    x = tg.tensor(x0, dtype="float64")
    h = tg.tensor(0.0, dtype="float64")
    old_limit = sys.getrecursionlimit()
    sys.setrecursionlimit(1000)  # a recursive walk would certainly fail now
    try:
        for _ in range(steps):
            h = tg.tanh(h * w + x)
        assert len(tg.Graph.from_outputs(h)) > 3 * steps
        h.backward()
    finally:
        sys.setrecursionlimit(old_limit)
    # reference: the same recurrence and its BPTT by hand
    hs = [0.0]
    for _ in range(steps):
        hs.append(np.tanh(hs[-1] * w0 + x0))
    dw, dh = 0.0, 1.0
    for t in range(steps, 0, -1):
        da = dh * (1 - hs[t] ** 2)
        dw += da * hs[t - 1]
        dh = da * w0
    np.testing.assert_allclose(w.grad.item(), dw, rtol=1e-10)


def test_building_and_freeing_a_long_chain_does_not_crash():
    w = tg.tensor(0.5, requires_grad=True)
    h = tg.tensor(0.0)
    for _ in range(50_000):
        h = tg.tanh(h * w + 0.1)
    probe = weakref.ref(h)
    del h  # deallocates 150,000 nodes and tensors in a chain
    assert probe() is None
    assert w.grad is None


# ---------------------------------------------------------------------------
# retain_graph and buffer release
# ---------------------------------------------------------------------------
def test_second_backward_without_retain_graph_raises():
    x = t64([1.0, 2.0])
    y = tg.tanh(x * 2.0).sum()
    y.backward()
    with pytest.raises(RuntimeError, match=r"retain_graph=True"):
        y.backward()


def test_retain_graph_allows_a_second_backward_and_doubles_grad():
    x = t64([0.3, -0.7])
    y = tg.tanh(x * 2.0).sum()
    y.backward(retain_graph=True)
    first = x.grad.numpy().copy()
    y.backward()
    np.testing.assert_allclose(x.grad.numpy(), 2 * first)
    np.testing.assert_allclose(first, 2 * (1 - np.tanh(2 * np.array([0.3, -0.7])) ** 2))


def test_backward_releases_intermediate_buffers():
    x, w = t64([0.3, -0.7]), t64([1.0, 2.0])
    loss = (tg.tanh(x) * w).sum()
    graph = tg.Graph.from_outputs(loss)
    intermediate = [n for n in graph.nodes if n.op == "tanh"][0]
    probe = weakref.ref(intermediate.tensor)
    del graph
    loss.backward()
    assert intermediate.freed
    assert probe() is None, "the tanh output should be released after backward"


# ---------------------------------------------------------------------------
# grad modes and detach
# ---------------------------------------------------------------------------
def test_no_grad_records_nothing_and_enable_grad_turns_it_back_on():
    x = t64([1.0])
    with tg.no_grad():
        y = x * 2.0
        assert not tg.is_grad_enabled()
        with tg.enable_grad():
            z = x * 3.0
    assert tg.is_grad_enabled()
    assert not y.requires_grad and y.node.is_leaf
    assert z.requires_grad and z.node.op == "mul"


def test_no_grad_as_decorator():
    @tg.no_grad()
    def double(t):
        return t * 2.0
    assert not double(t64([1.0])).requires_grad
    assert tg.is_grad_enabled()


def test_no_grad_restores_mode_after_an_exception():
    with pytest.raises(ZeroDivisionError):
        with tg.no_grad():
            1 / 0
    assert tg.is_grad_enabled()


def test_detach_stops_gradient_and_shares_values():
    x = t64([1.0, 2.0])
    y = x * 3.0
    d = y.detach()
    assert not d.requires_grad
    np.testing.assert_array_equal(d.numpy(), y.numpy())
    (y * d).sum().backward()  # d is a constant: dy/dx * d only
    np.testing.assert_allclose(x.grad.numpy(), 3.0 * np.array([3.0, 6.0]))


# ---------------------------------------------------------------------------
# grad()
# ---------------------------------------------------------------------------
def test_grad_returns_a_tuple_and_does_not_touch_dot_grad():
    x, y = t64([1.0, 2.0]), t64([3.0])
    gx, gy = tg.grad((x * y).sum(), [x, y])
    assert isinstance(gx, tg.Tensor) and isinstance(gy, tg.Tensor)
    np.testing.assert_allclose(gx.numpy(), [3.0, 3.0])
    np.testing.assert_allclose(gy.numpy(), [3.0])
    assert x.grad is None and y.grad is None
    single = tg.grad((x * x).sum(), x)
    assert isinstance(single, tuple) and len(single) == 1


def test_grad_allow_unused():
    x, unused = t64([1.0]), t64([2.0])
    with pytest.raises(RuntimeError, match="allow_unused=True"):
        tg.grad((x * 2.0).sum(), [x, unused])
    gx, gu = tg.grad((x * 2.0).sum(), [x, unused], allow_unused=True)
    assert gu is None
    np.testing.assert_allclose(gx.numpy(), [2.0])


def test_grad_with_respect_to_an_intermediate():
    x = t64([1.0, 2.0])
    h = x * 3.0
    gh, = tg.grad((h * h).sum(), [h])
    np.testing.assert_allclose(gh.numpy(), [6.0, 12.0])


def test_grad_with_grad_outputs(rng):
    a, v = rng.standard_normal(3), rng.standard_normal(3)
    x = t64(a)
    g, = tg.grad(tg.exp(x), [x], grad_outputs=tg.tensor(v))
    np.testing.assert_allclose(g.numpy(), v * np.exp(a))


def test_create_graph_records_the_backward_pass():
    x = t64([0.5, -1.0], name="x")
    with tg.scope("net"):
        y = tg.tanh(x * x).sum()
    g, = tg.grad(y, [x], create_graph=True)
    assert g.requires_grad
    graph = tg.Graph.from_outputs(g)
    backward_nodes = [n for n in graph.nodes if n.scope.startswith("backward")]
    assert backward_nodes, graph.dump()
    assert any(n.scope == "backward(net)" for n in backward_nodes)
    # the gradient graph reaches back into the forward graph (through tanh's output)
    assert any(n.op == "tanh" for n in graph.nodes)
    # and is differentiable: d/dx sum(2x(1 - tanh(x^2)^2))
    h, = tg.grad(g.sum(), [x])
    a = np.array([0.5, -1.0])
    th = np.tanh(a * a)
    expected = 2 * (1 - th ** 2) + 2 * a * (-2 * th * (1 - th ** 2) * 2 * a)
    np.testing.assert_allclose(h.numpy(), expected, rtol=1e-12)


def test_backward_with_create_graph_gives_differentiable_dot_grad():
    x = t64([2.0])
    (x ** 3).sum().backward(create_graph=True)
    assert x.grad.requires_grad
    np.testing.assert_allclose(x.grad.numpy(), [12.0])
    second, = tg.grad(x.grad.sum(), [x])
    np.testing.assert_allclose(second.numpy(), [12.0])  # d(3x^2)/dx = 6x


# ---------------------------------------------------------------------------
# Graph: dump, networkx, scope, timestep, ordinal
# ---------------------------------------------------------------------------
def test_graph_nodes_are_topologically_ordered_with_metadata():
    x = t64([[1.0, 2.0]], name="x")
    W = t64(np.ones((2, 3)), name="W")
    with tg.scope("layer"):
        y = tg.tanh(x @ W)
    graph = tg.Graph.from_outputs(y)
    position = {n.id: k for k, n in enumerate(graph.nodes)}
    for n in graph.nodes:
        assert all(position[i.id] < position[n.id] for i in n.inputs)
    ops = [n.op for n in graph.nodes]
    assert ops.count("matmul") == 1 and ops[-1] == "tanh"
    top = graph.nodes[-1]
    assert top.shape == (1, 3) and top.dtype == np.float64 and top.scope == "layer"
    assert {n.name for n in graph.leaves} == {"x", "W"}


def test_dump_shows_ops_names_scopes_and_scalar_arguments():
    x = t64([1.0, 2.0], name="x")
    with tg.scope("outer"):
        with tg.scope("inner"):
            y = (x * 2.0 + 1).sum(axis=0)
    text = tg.Graph.from_outputs(y).dump()
    lines = text.splitlines()
    assert lines[0] == "%0: 2 = leaf  # name=x"
    assert lines[1] == "%1: 2 = mul(%0, 2.0)  # scope=outer.inner"
    assert lines[2] == "%2: 2 = add(%1, 1)  # scope=outer.inner"
    assert lines[3] == "%3: scalar = sum(%2, axis=0, keepdims=False)  # scope=outer.inner"
    y.backward()  # scalar arguments survive the release of saved buffers
    assert tg.Graph.from_outputs(y).dump() == text


def test_dump_shows_a_scalar_first_argument():
    x = t64([1.0], name="x")
    text = tg.Graph.from_outputs(2.0 - x).dump()
    assert "sub(2.0, %0)" in text


def test_to_networkx_carries_node_attributes():
    x = t64([1.0, 2.0], name="x")
    with tg.scope("m"), tg.timestep(4):
        y = tg.exp(x)
    g = tg.Graph.from_outputs(y).to_networkx()
    attrs = g.nodes[y.node.id]
    assert attrs["op"] == "exp" and attrs["scope"] == "m" and attrs["timestep"] == 4
    assert attrs["shape"] == (2,) and attrs["dtype"] == "float64" and attrs["is_leaf"] is False
    assert attrs["literals"] == {}
    scaled = 2.0 * x
    assert tg.Graph.from_outputs(scaled).to_networkx().nodes[scaled.node.id]["literals"] == {0: 2.0}
    assert g.nodes[x.node.id]["name"] == "x"
    assert list(g.edges) == [(x.node.id, y.node.id)]


def test_ordinals_match_across_time_steps():
    rng = np.random.default_rng(0)
    W = t64(rng.standard_normal((3, 3)), name="W")
    xs = t64(rng.standard_normal((4, 2, 3)), name="xs")
    h = tg.zeros(2, 3, dtype="float64")
    with tg.scope("rnn"):
        for t in range(4):
            with tg.timestep(t):
                h = tg.tanh(xs[t] + h @ W)
    graph = tg.Graph.from_outputs(h)
    per_step = {}
    for n in graph.nodes:
        if n.timestep is not None and not n.is_leaf:
            per_step.setdefault(n.timestep, []).append((n.scope, n.ordinal, n.op))
    assert sorted(per_step) == [0, 1, 2, 3] == graph.timesteps
    first = sorted(per_step[0])
    assert [op for _, _, op in first] == ["getitem", "matmul", "add", "tanh"]
    for t in range(1, 4):
        assert sorted(per_step[t]) == first
    assert W.node.timestep is None


def test_from_outputs_accepts_several_outputs_and_shares_nodes():
    x = t64([1.0])
    a, b = x * 2.0, x * 3.0
    graph = tg.Graph.from_outputs(a, b)
    assert len(graph.nodes) == 3 and len(graph.outputs) == 2


# ---------------------------------------------------------------------------
# anomaly detection
# ---------------------------------------------------------------------------
@pytest.mark.filterwarnings("ignore:divide by zero")
def test_detect_anomaly_names_the_op_in_forward():
    x = t64([1.0, 0.0])
    with tg.detect_anomaly():
        with tg.scope("model"), tg.timestep(3):
            with pytest.raises(tg.AnomalyError, match=r"forward pass: op 'log'.*'model'.*time step 3"):
                tg.log(x)
    tg.log(x)  # outside the context: no error, -inf allowed


@pytest.mark.filterwarnings("ignore:divide by zero")
def test_detect_anomaly_names_the_op_in_backward():
    x = t64([4.0, 0.0])
    y = tg.sqrt(x).sum()  # finite forward, infinite derivative at 0
    with tg.detect_anomaly():
        with pytest.raises(tg.AnomalyError, match=r"backward pass: op 'backward of sqrt'"):
            y.backward()


# ---------------------------------------------------------------------------
# seed gradients
# ---------------------------------------------------------------------------
def test_backward_with_a_python_scalar_seed():
    x = t64([1.0, 2.0])
    (x * x).sum().backward(3.0)
    np.testing.assert_allclose(x.grad.numpy(), [6.0, 12.0])


def test_backward_and_grad_with_several_outputs():
    x = t64([1.0, 2.0])
    a, b = (x * x).sum(), x * 3.0
    tg.backward([a, b], [None, tg.tensor([1.0, 10.0], dtype="float64")])
    np.testing.assert_allclose(x.grad.numpy(), [2.0 + 3.0, 4.0 + 30.0])
    y = t64([0.5])
    ga, = tg.grad([y.sum(), (y * y).sum()], [y])
    np.testing.assert_allclose(ga.numpy(), [1.0 + 1.0])


def test_numpy_array_on_the_left_gives_a_tensor():
    x = t64([1.0, 2.0])
    y = np.array([3.0, 4.0]) * x + np.array([1.0, 1.0])
    assert isinstance(y, tg.Tensor)
    y.sum().backward()
    np.testing.assert_allclose(x.grad.numpy(), [3.0, 4.0])


def test_boolean_tensor_mask_index():
    x = t64([-1.0, 2.0, -3.0, 4.0])
    picked = x[x > 0]
    np.testing.assert_array_equal(picked.numpy(), [2.0, 4.0])
    (picked * picked).sum().backward()
    np.testing.assert_allclose(x.grad.numpy(), [0.0, 4.0, 0.0, 8.0])


# ---------------------------------------------------------------------------
# per-step indexing: sparse getitem gradients in the raw walk
# ---------------------------------------------------------------------------
def _per_step_loss(x, w, read):
    """An Elman-style loop that reads its input one step at a time."""
    h = tg.zeros(x.shape[1], w.shape[1], dtype=x.dtype)
    for t in range(x.shape[0]):
        h = tg.tanh(read(x, t) @ w + h)
    return (h * h).sum()


READS = {
    "x[t]": lambda x, t: x[t],
    "split": lambda x, t: tg.concat([p * (k + 1.0) for k, p in enumerate(tg.split(x[t], [1], axis=1))], axis=1),
    "take": lambda x, t: tg.take(x, [t, t], axis=0).sum(axis=0),
    "repeated rows": lambda x, t: x[t][np.array([0, 2, 0])],
    "x[t] and dense": lambda x, t: x[t] + x.mean(axis=0),
}


@pytest.mark.parametrize("name", list(READS))
def test_per_step_indexing_gradients_match_the_dense_recorded_path(name, rng):
    T, B, D, H = 7, 3, 4, 5
    xs, w0 = rng.standard_normal((T, B, D)), rng.standard_normal((D, H)) * 0.5
    read = READS[name]
    x, w = t64(xs), t64(w0)
    raw_x, raw_w = tg.grad(_per_step_loss(x, w, read), [x, w])  # raw walk: sparse getitem grads
    x2, w2 = t64(xs), t64(w0)
    dense_x, dense_w = tg.grad(_per_step_loss(x2, w2, read), [x2, w2], create_graph=True)
    np.testing.assert_allclose(raw_x.numpy(), dense_x.numpy(), rtol=1e-13, atol=1e-14)
    np.testing.assert_allclose(raw_w.numpy(), dense_w.numpy(), rtol=1e-13, atol=1e-14)
    # and both are the true derivative
    assert tg.gradcheck(lambda a, b: _per_step_loss(a, b, read), [t64(xs[:3]), t64(w0)])


def test_sparse_and_dense_contributions_mix_dtypes_like_the_dense_path():
    # float32 x read by slices that meet float64 constants: the gradient is float32
    x = tg.tensor(np.arange(6.0).reshape(3, 2), dtype="float32", requires_grad=True)
    scale = np.array([1.5, -2.0])  # float64
    loss = (x[0] * scale).sum() + (x[2] * scale).sum() + (x * x).sum() + (x[0] * scale).sum()
    loss.backward()
    expected = 2 * np.arange(6.0).reshape(3, 2)
    expected[0] += 2 * scale
    expected[2] += scale
    assert x.grad.dtype == np.float32
    np.testing.assert_allclose(x.grad.numpy(), expected, rtol=1e-6)


def test_per_step_indexing_backward_allocates_o_of_x_not_o_of_t_times_x(monkeypatch):
    # reading x[t] at T steps: the old rule built a zero array of x's shape per step
    # (T * x.nbytes in all); now one buffer of x's shape collects every slice
    T, B, D = 60, 4, 8
    x = tg.randn(T, B, D, dtype="float64", requires_grad=True)
    w = tg.randn(D, D, dtype="float64", requires_grad=True)
    h = tg.zeros(B, D, dtype="float64")
    for t in range(T):
        h = tg.tanh(x[t] @ w + h)
    loss = h.sum()
    zero_filled = []
    real_zeros = np.zeros

    def counting_zeros(shape, *args, **kwargs):
        out = real_zeros(shape, *args, **kwargs)
        zero_filled.append(out.nbytes)
        return out

    monkeypatch.setattr(np, "zeros", counting_zeros)
    loss.backward()
    monkeypatch.undo()
    assert sum(zero_filled) <= 2 * x.data.nbytes, (sum(zero_filled), x.data.nbytes)
    # the gradient itself is still right: compare with the recorded dense walk
    x2 = tg.tensor(x.data, requires_grad=True)
    h = tg.zeros(B, D, dtype="float64")
    for t in range(T):
        h = tg.tanh(x2[t] @ w + h)
    dense, = tg.grad(h.sum(), [x2], create_graph=True)
    np.testing.assert_allclose(x.grad.numpy(), dense.numpy(), rtol=1e-12, atol=1e-15)


# ---------------------------------------------------------------------------
# retain_grad accumulates; buffers are released node by node
# ---------------------------------------------------------------------------
def test_retain_grad_accumulates_across_backward_calls_like_a_leaf():
    x = t64([1.0, 2.0])
    y = x * 1.0
    y.retain_grad()
    z = y.sum()
    z.backward(retain_graph=True)
    z.backward()
    np.testing.assert_array_equal(y.grad.numpy(), [2.0, 2.0])  # PyTorch gives [2, 2] too
    np.testing.assert_array_equal(x.grad.numpy(), [2.0, 2.0])


def test_a_producer_still_has_its_output_after_its_consumer_was_freed():
    # mul frees its saved inputs before tanh runs; tanh's rule needs its own output
    a = np.array([0.3, -1.2, 2.0])
    x = t64(a)
    loss = (tg.tanh(x) * 3.0).sum()  # the tanh output Tensor is referenced only by mul
    loss.backward()
    np.testing.assert_allclose(x.grad.numpy(), 3.0 * (1 - np.tanh(a) ** 2), rtol=1e-14)


def test_each_node_is_released_right_after_it_is_processed():
    x = t64(np.linspace(-1.0, 1.0, 4))
    h = x
    for _ in range(5):
        h = tg.tanh(h * 1.5)
    loss = h.sum()
    processed, still_held = [], []

    def on_node(node, g, in_grads):
        still_held.extend(n for n in processed if n.saved is not None or n.value is not None)
        processed.append(node)

    from tinygraph.autodiff import run_backward
    run_backward([loss], [np.ones(())], retain_graph=False, create_graph=False, on_node=on_node)
    assert len(processed) == 11 and not still_held
    assert all(n.saved is None and n.value is None for n in processed)


def test_backward_peak_memory_does_not_hold_every_activation_until_the_end():
    import gc
    import tracemalloc

    # one weight per step: every weight's gradient (n floats) stays until the end,
    # so the old walk (all activations freed after it) peaked at activations + grads
    T, n = 40, 20_000
    ws = [tg.tensor(np.full(n, 0.5), requires_grad=True) for _ in range(T)]
    gc.collect()
    tracemalloc.start()
    try:
        h = tg.tensor(np.linspace(-1.0, 1.0, n))
        for w in ws:
            h = tg.tanh(h * w)
        loss = h.sum()
        del h
        before = tracemalloc.get_traced_memory()[0]
        tracemalloc.reset_peak()
        loss.backward()
        extra = tracemalloc.get_traced_memory()[1] - before
    finally:
        tracemalloc.stop()
    grads = T * n * 8
    # activations are freed as the walk goes, so the weights' gradients fit in their space
    assert extra < 0.3 * grads, (extra, grads)
    assert all(w.grad is not None for w in ws)


# ---------------------------------------------------------------------------
# 0-d values, re-marking leaves, retained gradients (from a review of the engine)
# ---------------------------------------------------------------------------
def test_zero_d_tensor_read_densely_and_by_index_accumulates():
    # x[None] scatters a sparse gradient into the dense one of -x: a 0-d array, not a NumPy scalar
    x = t64(2.0)
    (x[None].sum() * 3.0 + (-x) * 1.0).backward()
    assert isinstance(x.grad.data, np.ndarray) and x.grad.shape == ()
    assert float(x.grad.data) == 2.0


def test_zero_d_leaf_gradient_is_an_array_and_accumulates_in_place():
    x = t64(1.5)
    (-x).backward()
    (x * 4.0).backward()
    assert isinstance(x.grad.data, np.ndarray) and x.grad.shape == ()
    assert float(x.grad.data) == 3.0


def test_requires_grad_again_on_a_recorded_leaf_keeps_its_gradient():
    x = t64([1.0, 2.0])
    y = (x * 3.0).sum()
    assert x.requires_grad_() is x
    y.backward()
    np.testing.assert_array_equal(x.grad.data, [3.0, 3.0])


def test_module_cast_still_gives_the_parameter_a_fresh_leaf():
    lin = tg.nn.Linear(2, 3, dtype="float32")
    lin.double()
    out = lin(tg.tensor(np.ones((1, 2))))
    out.sum().backward()
    assert lin.weight.grad.dtype == np.float64 and lin.weight.grad.shape == lin.weight.shape


def test_retained_gradient_has_the_tensors_dtype():
    x = tg.tensor(np.ones(3, np.float32), requires_grad=True)
    y = x * 2.0
    y.retain_grad()
    (y * np.full(3, 0.5)).sum().backward()      # a float64 constant makes the incoming gradient float64
    assert y.grad.dtype == np.float32 and x.grad.dtype == np.float32
    np.testing.assert_allclose(y.grad.data, 0.5)


# ---------------------------------------------------------------------------
# gradient hooks (Tensor.register_hook)
# ---------------------------------------------------------------------------
def test_leaf_hooks_run_in_order_before_accumulation_and_can_be_removed():
    x = t64([1.0, 2.0])
    seen = []
    first = x.register_hook(lambda g: seen.append(g.numpy().copy()) or g * 10.0)
    x.register_hook(lambda g: g + 1.0)
    (x * 3.0).sum().backward()
    np.testing.assert_array_equal(seen[0], [3.0, 3.0])          # the complete gradient, unhooked
    np.testing.assert_array_equal(x.grad.numpy(), [31.0, 31.0])  # (3 * 10) + 1
    first.remove()
    x.grad = None
    (x * 3.0).sum().backward()
    np.testing.assert_array_equal(x.grad.numpy(), [4.0, 4.0])


def test_a_hook_on_an_intermediate_gets_its_summed_gradient_and_changes_what_flows_on():
    x = t64([0.5, -1.0])
    h = tg.tanh(x)
    seen = []
    h.register_hook(lambda g: seen.append(g.numpy().copy()) or g * 0.5)
    loss = (h * 2.0).sum() + (h * h).sum()      # h is used twice: the hook sees the sum
    loss.backward()
    hv = np.tanh([0.5, -1.0])
    np.testing.assert_allclose(seen[0], 2.0 + 2.0 * hv)
    np.testing.assert_allclose(x.grad.numpy(), 0.5 * (2.0 + 2.0 * hv) * (1 - hv ** 2))


def test_hooks_run_in_grad_and_record_under_create_graph():
    x = t64([1.5])
    x.register_hook(lambda g: g * x)            # a recorded product: d/dx (x * dL/dx)
    g, = tg.grad((x ** 3).sum(), [x], create_graph=True)
    np.testing.assert_allclose(g.numpy(), [3 * 1.5 ** 2 * 1.5])
    h, = tg.grad(g.sum(), [x])                  # d/dx 3 x^3 = 9 x^2 ... hooked again: times x
    np.testing.assert_allclose(h.numpy(), [9 * 1.5 ** 2 * 1.5])


def test_hook_errors_are_clear():
    x = t64([1.0, 2.0])
    x.register_hook(lambda g: g.sum())
    with pytest.raises(ValueError, match=r"gradient hook .* returned shape \(\), the gradient has shape \(2,\)"):
        (x * 2.0).sum().backward()
    with pytest.raises(RuntimeError, match="does not require grad"):
        t64([1.0], requires_grad=False).register_hook(lambda g: g)


def test_a_parameters_hook_survives_a_cast_and_runs_in_a_traced_step():
    lin = tg.nn.Linear(3, 2, dtype="float32")
    lin.weight.register_hook(lambda g: g * 0.0)  # freeze the weight through its gradient
    lin.double()
    x = np.random.default_rng(0).standard_normal((4, 3))
    (lin(tg.tensor(x)) ** 2).sum().backward()
    assert not lin.weight.grad.numpy().any() and lin.bias.grad.numpy().any()
    eager_bias = lin.bias.grad.numpy().copy()
    lin.zero_grad()
    step = tg.traced_step(lambda x: (lin(x) ** 2).sum(), list(lin.parameters()))
    step(x)
    assert not lin.weight.grad.numpy().any()
    np.testing.assert_allclose(lin.bias.grad.numpy(), eager_bias, rtol=1e-12)


def test_trace_refuses_a_hook_on_an_intermediate_tensor():
    w = t64([1.0, 2.0])

    def loss(x):
        h = x * w
        h.register_hook(lambda g: g)
        return h.sum()

    with pytest.raises(ValueError, match="gradient hook is registered on an intermediate tensor"):
        tg.traced_step(loss, [w])(np.ones(2))


def test_hooks_survive_freezing_and_accept_a_parameter_given_new_data():
    p = tg.nn.Parameter(np.ones(3))
    calls = []
    p.register_hook(lambda g: calls.append(g.shape) or g)
    p.requires_grad_(False)
    p.requires_grad_(True)
    (p * 2.0).sum().backward()
    assert calls == [(3,)]
    p.data = np.ones(5)                      # a grown embedding: the hook sees the new gradient's shape
    p.grad = None
    (p * 2.0).sum().backward()
    assert calls[-1] == (5,) and p.grad.shape == (5,)


def test_to_none_changes_nothing_and_to_takes_dtype_by_keyword():
    t = tg.tensor(np.ones(2, np.float32))
    assert t.to(None).dtype == np.float32
    assert t.to(dtype="float64").dtype == np.float64 and t.to("cpu", dtype=np.float64).dtype == np.float64
