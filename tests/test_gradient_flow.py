"""Vanishing and exploding gradients as data, anomaly detection, and the plots that show them."""
import numpy as np
import pytest

import tinygraph as tg
from tinygraph import bptt
from tinygraph.models import LSTM, RNN, ElmanRNN
from tinygraph.nn import Module

D, H = 3, 16


class Layer(Module):
    """A recurrent layer under the ``model(x, state)`` contract."""

    def __init__(self, layer):
        super().__init__()
        self.layer = layer

    def forward(self, x, state=None):
        return self.layer(x, state)


def last_step_loss(outputs, target):
    """Loss on the last output only, so ∂L/∂h(t) measures pure distance from the loss."""
    return ((outputs[-1] - target) ** 2).sum()


def elman_reference_flow(model, xs, ys):
    """‖∂L/∂h(t)‖ from the closed-form BPTT recursion, L = Σ_t ‖o(t) - y(t)‖²."""
    U, W, V, b, c = (p.numpy() for p in (model.U, model.W, model.V, model.b, model.c))
    h, hs, os_ = np.zeros((xs.shape[1], W.shape[0])), [], []
    for x in xs:
        h = np.tanh(b + h @ W.T + x @ U.T)
        hs.append(h)
        os_.append(c + h @ V.T)
    norms, da_next = [], np.zeros_like(h)
    for t in reversed(range(len(xs))):
        dh = 2 * (os_[t] - ys[t]) @ V + da_next @ W
        norms.append(np.linalg.norm(dh))
        da_next = dh * (1 - hs[t] ** 2)
    return np.array(norms[::-1])


def test_gradient_flow_matches_closed_form_bptt():
    tg.manual_seed(0)
    model = ElmanRNN(D, 5, 4, dtype="float64")
    rng = np.random.default_rng(1)
    xs, ys = rng.standard_normal((9, 2, D)), rng.standard_normal((9, 2, 4))
    flow = bptt.gradient_flow(model, xs, ys, lambda o, y: tg.mse_loss(o, y, reduction="sum"))
    np.testing.assert_allclose(flow, elman_reference_flow(model, xs, ys), rtol=1e-10)
    assert all(p.grad is None for p in model.parameters())  # diagnostics leave .grad alone


def test_small_recurrent_weights_decay_with_distance_from_the_loss():
    tg.manual_seed(0)
    model = ElmanRNN(D, H, 2, dtype="float64")
    model.W.data *= 0.5
    rng = np.random.default_rng(0)
    xs, target = rng.standard_normal((20, 2, D)), rng.standard_normal((2, 2))
    flow = bptt.gradient_flow(model, xs, target, last_step_loss)
    assert flow.shape == (20,)
    assert np.all(np.diff(flow) > 0)  # every step further from the loss gets less
    assert flow[0] < 1e-3 * flow[-1]


def test_jacobian_norms_are_powers_of_W_in_the_linear_regime():
    # x = 0, b = 0, h0 = 0 keep h(t) = 0, so tanh' = 1 and ∂h(T)/∂h(t) = W^(T-1-t)
    tg.manual_seed(0)
    model = ElmanRNN(D, 4, 2, dtype="float64")
    model.b.data[:] = 0
    W = model.W.numpy()
    xs = np.zeros((6, 3, D))
    spectral = bptt.jacobian_norms(model, xs, ord=2)
    frobenius = bptt.jacobian_norms(model, xs)
    for t in range(6):
        power = np.linalg.matrix_power(W, 5 - t)
        assert spectral[t] == pytest.approx(np.linalg.norm(power, 2), rel=1e-10)
        assert frobenius[t] == pytest.approx(np.linalg.norm(power), rel=1e-10)
    assert frobenius[-1] == pytest.approx(2.0)  # ‖I_4‖_F


def test_lstm_flow_has_h_and_c_and_jacobians_for_both():
    tg.manual_seed(0)
    model = Layer(LSTM(D, 5, dtype="float64"))
    xs = np.random.default_rng(0).standard_normal((7, 2, D))
    h_flow, c_flow = bptt.gradient_flow(model, xs, np.zeros((2, 5)), last_step_loss, per_state=True)
    assert h_flow.shape == c_flow.shape == (7,)
    assert np.all(h_flow > 0) and np.all(c_flow > 0)
    h_jac, c_jac = bptt.jacobian_norms(model, xs), bptt.jacobian_norms(model, xs, state_index=1)
    assert h_jac.shape == c_jac.shape == (7,)
    assert h_jac[-1] == pytest.approx(np.sqrt(5)) and c_jac[-1] == pytest.approx(np.sqrt(5))


def story_curves(seed):
    """The textbook story: tanh RNN, LSTM, tanh RNN with recurrent weights scaled up."""
    T = 40
    rng = np.random.default_rng(seed)
    xs, target = rng.standard_normal((T, 4, D)), rng.standard_normal((4, H))
    tg.manual_seed(seed)
    rnn = Layer(RNN(D, H, dtype="float64"))
    lstm = Layer(LSTM(D, H, forget_bias=1.0, dtype="float64"))
    scaled = Layer(RNN(D, H, recurrent_init="orthogonal", dtype="float64"))
    scaled.layer.layer0.W.data *= 3.0
    return {
        "tanh RNN": bptt.gradient_flow(rnn, xs, target, last_step_loss),
        "LSTM": bptt.gradient_flow(lstm, xs, target, last_step_loss),
        "tanh RNN, W x 3": bptt.gradient_flow(scaled, xs * 0.01, target, last_step_loss),
    }


@pytest.mark.parametrize("seed", [0, 1])
def test_rnn_vanishes_lstm_keeps_scaled_rnn_explodes(seed):
    curves = story_curves(seed)
    ratio = {name: flow[0] / flow[-1] for name, flow in curves.items()}  # first step vs last
    assert ratio["tanh RNN"] < 1e-6
    assert ratio["LSTM"] > 1e3 * ratio["tanh RNN"]
    assert ratio["tanh RNN, W x 3"] > 100


class NaNAtStep(Module):
    """log of a negative input at step 3, inside scope "cell"."""

    def forward(self, xs):
        total = 0
        for t in range(len(xs)):
            with tg.timestep(t), tg.scope("cell"):
                total = total + tg.log(xs[t] * 1.0).sum() * 2.0
        return total


def test_anomaly_mode_names_the_forward_op_scope_and_step():
    xs = tg.tensor([1.0, 2.0, 3.0, -1.0, 5.0], dtype="float64", requires_grad=True)
    with np.errstate(invalid="ignore"):
        assert np.isnan(NaNAtStep()(xs).item())  # silent without anomaly mode
        with tg.detect_anomaly(), pytest.raises(tg.AnomalyError) as info:
            NaNAtStep()(xs)
    message = str(info.value)
    assert "forward" in message and "'log'" in message  # the first op to make a NaN, not mul/add after it
    assert "NaNAtStep.cell" in message and "time step 3" in message and "NaN" in message


def test_anomaly_mode_names_the_backward_op():
    x = tg.tensor([4.0, 0.0, 9.0], dtype="float64", requires_grad=True)
    with tg.timestep(7):
        y = tg.sqrt(x).sum()  # finite forward, infinite derivative at 0
    with np.errstate(divide="ignore"), tg.detect_anomaly(), pytest.raises(tg.AnomalyError) as info:
        y.backward()
    message = str(info.value)
    assert "backward" in message and "sqrt" in message and "time step 7" in message and "Inf" in message


def test_anomaly_mode_names_scope_and_step_even_when_nothing_is_recorded():
    with np.errstate(invalid="ignore"), tg.detect_anomaly(), tg.no_grad(), tg.scope("eval"), tg.timestep(4):
        with pytest.raises(tg.AnomalyError, match=r"'log' in scope 'eval', time step 4 produced NaN"):
            tg.log(tg.tensor([-1.0]))


def test_anomaly_mode_is_off_again_after_the_block():
    with tg.detect_anomaly():
        pass
    with np.errstate(invalid="ignore"):
        assert np.isnan(tg.log(tg.tensor([-1.0], requires_grad=True)).item())


# -- plots -----------------------------------------------------------------
def _open_png(path):
    from matplotlib import image
    pixels = image.imread(str(path))
    assert pixels.ndim == 3 and pixels.shape[0] > 50 and pixels.shape[1] > 50
    assert pixels.std() > 0  # not a blank canvas
    return pixels


def test_plot_gradient_flow_draws_all_models_on_a_log_axis(tmp_path):
    pytest.importorskip("matplotlib")
    from tinygraph.viz import plot_gradient_flow
    curves = story_curves(0)
    path = tmp_path / "flow.png"
    fig = plot_gradient_flow(curves, path=path)
    _open_png(path)
    ax = fig.axes[0]
    assert ax.get_yscale() == "log"
    assert [line.get_label() for line in ax.get_lines()] == list(curves)
    assert not list(tmp_path.glob(".tmp-*"))  # the atomic write left nothing behind


def test_plot_gradient_heatmap_and_loss_curve(tmp_path):
    pytest.importorskip("matplotlib")
    from tinygraph.viz import plot_gradient_heatmap, plot_loss_curve
    matrix = np.outer(np.linspace(1, 2, 6), np.logspace(-5, 0, 30))
    plot_gradient_heatmap(matrix, path=tmp_path / "heat.png")
    _open_png(tmp_path / "heat.png")
    plot_loss_curve(np.exp(-np.linspace(0, 3, 80)) + 0.1, path=tmp_path / "loss.png")
    _open_png(tmp_path / "loss.png")
    with pytest.raises(ValueError, match="2-D"):
        plot_gradient_heatmap(np.ones(5))


def test_per_step_diagnostics_refuse_bidirectional_models():
    model = RNN(2, 3, bidirectional=True, dtype="float64")
    xs = np.zeros((4, 1, 2))
    with pytest.raises(ValueError, match="gradient_flow.*unidirectional"):
        bptt.gradient_flow(model, xs, np.zeros((4, 1, 6)), lambda o, y: tg.sum(o * o))
    with pytest.raises(ValueError, match="jacobian_norms.*unidirectional"):
        bptt.jacobian_norms(model, xs)
