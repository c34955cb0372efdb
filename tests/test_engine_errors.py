"""Bad input gets an error that names the op, the shapes/dtypes/devices and what to do."""
import numpy as np
import pytest

import tinygraph as tg
from tinygraph import backend, ops


def t64(array, requires_grad=True, name=None):
    return tg.tensor(np.asarray(array, dtype=np.float64), requires_grad=requires_grad, name=name)


def test_matmul_shape_mismatch_names_shapes_and_fix():
    a, b = tg.zeros(2, 3), tg.zeros(4, 5)
    with pytest.raises(ValueError) as info:
        a @ b
    text = str(info.value)
    assert text.startswith("matmul:")
    assert "(2, 3)" in text and "(4, 5)" in text
    assert "transpose" in text


def test_matmul_rejects_scalars():
    with pytest.raises(ValueError, match=r"matmul: .*at least one dimension.*use \*"):
        tg.matmul(tg.tensor(2.0), tg.zeros(2, 2))


def test_broadcast_mismatch_names_the_op_and_shapes():
    with pytest.raises(ValueError) as info:
        tg.zeros(2, 3, requires_grad=True) * tg.zeros(4)
    text = str(info.value)
    assert text.startswith("mul:")
    assert "Tensor(2, 3)" in text and "Tensor(4,)" in text
    assert "broadcast" in text


def test_getitem_out_of_range_names_the_op():
    with pytest.raises(IndexError, match=r"getitem: .*Tensor\(3,\)"):
        tg.zeros(3)[5]


def test_missing_cupy_says_how_to_install_the_gpu_extra(monkeypatch):
    # simulate a machine without CuPy, whether or not this one has it
    monkeypatch.setattr(backend, "_cupy", None)
    monkeypatch.setattr(backend, "_cupy_import_error", ImportError("No module named 'cupy'"))
    assert tg.cuda_available() is False
    for make in (lambda: tg.tensor([1.0], device="cuda"),
                 lambda: tg.zeros(2, device="cuda:0"),
                 lambda: tg.ones(2).to("cuda")):
        with pytest.raises(RuntimeError) as info:
            make()
        text = str(info.value)
        assert "CuPy" in text and 'pip install "tinygraph[gpu]"' in text


@pytest.mark.parametrize("device", ["tpu", "cuda:x", "cuda0", ""])
def test_bad_device_string(device):
    with pytest.raises(ValueError, match=r"unknown device .*'cpu', 'cuda' or 'cuda:N'"):
        tg.zeros(2, device=device)


def test_backward_on_non_scalar_without_grad():
    y = tg.zeros(2, 3, requires_grad=True) * 2.0
    with pytest.raises(RuntimeError) as info:
        y.backward()
    text = str(info.value)
    assert "(2, 3)" in text and "scalar" in text and "grad=" in text


def test_backward_with_wrong_gradient_shape():
    y = tg.zeros(2, 3, requires_grad=True) * 2.0
    with pytest.raises(ValueError, match=r"grad has shape \(3,\) but the output has shape \(2, 3\)"):
        y.backward(tg.ones(3))


def test_backward_on_a_tensor_without_graph():
    with pytest.raises(RuntimeError, match="requires_grad=True"):
        (tg.ones(2) * 2.0).sum().backward()


@pytest.mark.parametrize("make", [
    lambda: tg.tensor([1, 2, 3], requires_grad=True),
    lambda: tg.arange(4, requires_grad=True),
    lambda: tg.tensor([1, 2]).requires_grad_(),
])
def test_integer_tensor_cannot_require_grad(make):
    with pytest.raises(TypeError) as info:
        make()
    text = str(info.value)
    assert "int64" in text and "floating-point" in text and "dtype='float32'" in text


def test_requires_grad_on_a_non_leaf():
    y = tg.ones(2, requires_grad=True) * 2.0
    with pytest.raises(RuntimeError, match=r"leaf tensors.*detach"):
        y.requires_grad_()


def test_grad_input_that_does_not_require_grad():
    x, c = tg.ones(2, requires_grad=True), tg.ones(2)
    with pytest.raises(RuntimeError, match=r"input 1 does not require grad"):
        tg.grad((x * c).sum(), [x, c])


def test_item_and_truth_value_of_a_vector():
    v = tg.ones(3)
    with pytest.raises(ValueError, match=r"item\(\) needs a tensor with one element, got shape \(3,\)"):
        v.item()
    with pytest.raises(ValueError, match=r"truth value of a Tensor of shape \(3,\) is ambiguous"):
        bool(v > 0)
    assert bool(tg.tensor(2.0) > 1.0)


def test_split_into_unequal_sections():
    with pytest.raises(ValueError, match=r"split: axis 0 of length 5 cannot be split into 2"):
        tg.split(tg.zeros(5), 2)


def test_loss_argument_errors():
    logits = tg.zeros(4, 3, requires_grad=True)
    with pytest.raises(ValueError, match=r"targets must have shape \(4,\).*got \(3,\)"):
        tg.cross_entropy(logits, np.array([0, 1, 2]))
    with pytest.raises(TypeError, match=r"integer class indices, got dtype float"):
        tg.cross_entropy(logits, np.zeros(4))
    with pytest.raises(ValueError, match=r"lie in \[0, 3\), got min 0, max 3"):
        tg.cross_entropy(logits, np.array([0, 1, 2, 3]))
    with pytest.raises(ValueError, match=r"reduction must be one of"):
        tg.cross_entropy(logits, np.array([0, 1, 2, 0]), reduction="avg")
    with pytest.raises(ValueError, match=r"mse_loss: prediction shape \(4, 3\) differs from target shape \(3,\)"):
        tg.mse_loss(logits, tg.zeros(3))


# ---------------------------------------------------------------------------
# gradcheck's own failure message
# ---------------------------------------------------------------------------
# a deliberately wrong rule: d(x*x)/dx is 2x, this says x (not registered, so
# the table of primitives that other tests check stays the library's own)
WRONG_SQUARE = ops.Primitive("test_wrong_square", lambda x: x * x,
                             lambda g, out, needs, x: (g * x,))


def test_gradcheck_failure_names_input_element_and_both_values():
    x = t64([1.0, 2.0, 3.0], name="x")
    with pytest.raises(tg.GradcheckError) as info:
        tg.gradcheck(lambda v: ops.apply(WRONG_SQUARE, v), [x])
    text = str(info.value)
    assert "input 0 (x)" in text and "shape (3,)" in text
    # gradcheck weights the outputs by r (uniform in [0.5, 1.5), seed 0): the rule gives r x, the
    # differences 2 r x, so the worst element is where r x is largest
    r = np.random.default_rng(0).uniform(0.5, 1.5, size=3)
    worst = int(np.argmax(r * np.array([1.0, 2.0, 3.0])))
    assert f"element ({worst},)" in text
    analytic = float(text.split("analytic=")[1].split()[0])
    numerical = float(text.split("numerical=")[1].split()[0])
    assert analytic == pytest.approx(r[worst] * (worst + 1), rel=1e-6)
    assert numerical == pytest.approx(2 * r[worst] * (worst + 1), rel=1e-6)


def test_gradcheck_passes_a_correct_function_and_needs_an_input():
    assert tg.gradcheck(lambda v: v * v, [t64([1.0, 2.0])]) is True
    with pytest.raises(ValueError, match="no input requires grad"):
        tg.gradcheck(lambda v: v * v, [t64([1.0], requires_grad=False)])


def test_seed_gradient_count_must_match_outputs():
    x = tg.ones(2, requires_grad=True)
    a, b = x * 2.0, x * 3.0
    with pytest.raises(ValueError, match=r"backward: got 1 seed gradient\(s\) for 2 output\(s\)"):
        tg.backward([a, b], tg.ones(2))
    with pytest.raises(ValueError, match=r"grad: got 3 seed gradient\(s\) for 1 output\(s\)"):
        tg.grad(a, [x], grad_outputs=[None, None, None])


def test_len_of_a_scalar_tensor():
    with pytest.raises(TypeError, match=r"len\(\) of a 0-d tensor"):
        len(tg.tensor(1.0))


@pytest.mark.parametrize("op", [tg.stack, tg.concat])
def test_stack_and_concat_of_nothing_say_so(op):
    # a recurrence over T=0 steps ends in stack([]): say that, not NumPy's message
    name = op.__name__
    with pytest.raises(ValueError, match=rf"^{name}: needs at least one tensor.*T=0"):
        op([])
    with pytest.raises(ValueError, match=rf"^{name}: needs at least one tensor"):
        op(iter(()))


def test_a_broadcast_loss_mask_counts_the_kept_positions_and_others_are_refused():
    logits, targets = tg.zeros(2, 3, 4, requires_grad=True), np.zeros((2, 3), np.int64)
    mean = tg.cross_entropy(logits, targets, mask=np.array([1, 1, 0]), reduction="mean")
    assert mean.item() == pytest.approx(np.log(4))      # 4 kept positions of log 4 each, not 2
    total = tg.cross_entropy(logits, targets, mask=np.array([[1], [0]]), reduction="sum")
    assert total.item() == pytest.approx(3 * np.log(4))
    with pytest.raises(ValueError, match=r"cross_entropy: mask must have the targets' shape \(2, 3\)"):
        tg.cross_entropy(logits, targets, mask=np.array([1, 0]), reduction="mean")


def test_default_dtype_must_be_a_float_dtype():
    before = tg.get_default_dtype()
    with pytest.raises(TypeError, match="float dtype"):
        tg.set_default_dtype(np.int32)
    assert tg.get_default_dtype() == before


@pytest.mark.parametrize("left,right", [((3,), (2, 4)), ((2, 4), (3,)), ((3,), (4,))])
def test_matmul_mismatch_with_a_vector_names_the_shapes_as_given(left, right):
    with pytest.raises(ValueError, match=rf"matmul: shape mismatch \({left[0]},?.*\) @ \({right[0]},?"):
        tg.ones(*left) @ tg.ones(*right)


def test_matmul_and_sizes_take_what_numpy_takes():
    x = t64(np.arange(6.0).reshape(2, 3))
    np.testing.assert_allclose((x @ [1.0, 2.0, 3.0]).numpy(), np.arange(6.0).reshape(2, 3) @ [1, 2, 3])
    np.testing.assert_allclose(([1.0, 1.0] @ x).numpy(), [3.0, 5.0, 7.0])
    assert len(tg.split(tg.ones(6), np.int64(3))) == 3
    assert tg.full(np.int64(3), 1.0).shape == (3,)


def test_one_outputs_seed_may_be_a_list_of_numbers():
    x = t64(np.ones((2, 3)))
    x.sum(axis=0).backward([1.0, 2.0, 3.0])
    np.testing.assert_array_equal(x.grad.numpy(), [[1, 2, 3], [1, 2, 3]])


def test_gradcheck_catches_rules_that_only_work_for_an_all_ones_gradient():
    ignores_g = ops.register("test_ignores_g", lambda a: a * 2.0, lambda g, out, needs, a: (ops.raw(a) * 0 + 2.0,))
    unreversed = ops.register("test_flip", lambda a: a[::-1], lambda g, out, needs, a: (g,))
    nan_rule = ops.register("test_nan_rule", lambda a: a * 1.0, lambda g, out, needs, a: (g * np.nan,))
    try:
        for prim in (ignores_g, unreversed, nan_rule):
            with pytest.raises(tg.GradcheckError):
                tg.gradcheck(lambda v, prim=prim: ops.apply(prim, v), [t64([1.0, 2.0, 3.0])])
    finally:
        for name in ("test_ignores_g", "test_flip", "test_nan_rule"):
            ops.PRIMITIVES.pop(name, None)


def test_gradcheck_asks_for_float64():
    with pytest.raises(ValueError, match="float64"):
        tg.gradcheck(lambda v: v * v, [tg.tensor([1.0, 2.0], dtype="float32", requires_grad=True)])


def test_creation_refuses_fractional_sizes_and_integer_samples():
    with pytest.raises(TypeError, match="sizes must be integers"):
        tg.zeros(2.5)
    with pytest.raises(TypeError, match="rand: samples need a float dtype"):
        tg.rand(3, dtype=np.int64)
    with pytest.raises(TypeError, match="randn: samples need a float dtype"):
        tg.randn(3, dtype=np.int32)


def test_mse_against_a_float64_numpy_target_keeps_a_float32_backward():
    w = tg.tensor(np.ones((3, 2), np.float32), requires_grad=True)
    pred = tg.tensor(np.ones((4, 3), np.float32)) @ w
    seen = []
    pred.register_hook(lambda g: seen.append(g.dtype))
    loss = tg.mse_loss(pred, np.random.default_rng(0).standard_normal((4, 2)))
    assert loss.dtype == np.float32
    loss.backward()
    assert seen == [np.float32] and w.grad.dtype == np.float32
