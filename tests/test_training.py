"""fit(): history, clipping, evaluation, progress, checkpoints that resume bit-for-bit."""
import io
import os
import signal

import numpy as np
import pytest

import tinygraph as tg
from tinygraph import bptt
from tinygraph.models import ElmanRNN
from tinygraph.nn import Module, Parameter
from tinygraph.optim import SGD, Adam
from tinygraph.progress import ProgressBar

V, T, B = 4, 12, 3


def echo_batches(n, seed):
    """Predict the previous token: needs one step of memory."""
    rng = np.random.default_rng(seed)
    batches = []
    for _ in range(n):
        tokens = rng.integers(0, V, (T, B))
        xs = np.eye(V)[tokens]
        ys = np.concatenate([np.zeros((1, B), dtype=np.int64), tokens[:-1]], axis=0)
        batches.append((xs, ys))
    return batches


def mean_ce(outputs, targets):
    return tg.cross_entropy(outputs, targets)


BATCHES = echo_batches(4, seed=0)


def shuffled(epoch):
    """A fresh, shuffled epoch drawn from tinygraph's global generator (so resume must restore it)."""
    order = tg.generator().permutation(len(BATCHES))
    return [BATCHES[i] for i in order]


def new_run(seed=5):
    tg.manual_seed(seed)
    model = ElmanRNN(V, 8, V, dtype="float64")
    return model, Adam(model.parameters(), lr=0.05)


def params_of(model):
    return {n: p.numpy().copy() for n, p in model.named_parameters()}


def assert_same_run(model, history, ref_model, ref_history):
    for name, value in params_of(ref_model).items():
        np.testing.assert_array_equal(params_of(model)[name], value, err_msg=name)  # bit for bit
    assert history.step_loss == ref_history.step_loss
    assert history.step_grad_norm == ref_history.step_grad_norm
    assert history.step_epoch == ref_history.step_epoch
    strip = [{k: v for k, v in e.items() if k != "seconds"} for e in ref_history.epochs]
    assert [{k: v for k, v in e.items() if k != "seconds"} for e in history.epochs] == strip


@pytest.fixture(scope="module")
def reference():
    """Three uninterrupted epochs: what every resumed run must reproduce exactly."""
    model, opt = new_run()
    history = bptt.fit(model, shuffled, mean_ce, opt, epochs=3, k1=4, eval_data=BATCHES[:2],
                       progress=False)
    return model, history


def test_fit_learns_and_records_history_as_data(reference):
    model, history = reference
    assert len(history.step_loss) == 3 * 4 * 3  # epochs x batches x windows of 4 steps
    assert history.step_epoch[:12] == [1] * 12 and history.step_epoch[-1] == 3
    assert len(history.epochs) == 3 and not history.interrupted
    train = history.metric("train_loss")
    assert train[-1] < 0.8 * train[0]
    assert train[0] == pytest.approx(np.mean(history.step_loss[:12]))
    assert history.epochs[0]["train_perplexity"] == pytest.approx(np.exp(train[0]))
    assert history.epochs[-1]["eval_loss"] == pytest.approx(
        bptt.evaluate(model, BATCHES[:2], mean_ce), rel=1e-12)
    arrays = history.arrays()
    assert arrays["loss"].shape == arrays["grad_norm"].shape == arrays["clipped"].shape == (36,)
    assert not arrays["clipped"].any() and np.all(arrays["grad_norm"] > 0)


class StopAfter:
    """A callback that raises KeyboardInterrupt at a batch boundary, like a user pressing Ctrl-C."""

    def __init__(self, batches):
        self.batches = batches

    def on_batch_end(self, info):
        if info["batches_done"] == self.batches:
            raise KeyboardInterrupt


def test_resume_after_interrupt_continues_bit_for_bit(reference, tmp_path):
    path = tmp_path / "run.npz"
    model, opt = new_run()
    stopped = bptt.fit(model, shuffled, mean_ce, opt, epochs=3, k1=4, eval_data=BATCHES[:2],
                       checkpoint=path, callbacks=[StopAfter(6)], progress=False)
    assert stopped.interrupted and len(stopped.step_loss) == 6 * 3  # 6 batches, mid-epoch 2
    assert path.exists() and not list(tmp_path.glob(".tmp-*"))

    tg.manual_seed(999)  # a different global generator and different initial weights...
    model, opt = new_run(seed=123)
    resumed = bptt.fit(model, shuffled, mean_ce, opt, epochs=3, k1=4, eval_data=BATCHES[:2],
                       checkpoint=path, resume=True, progress=False)
    assert_same_run(model, resumed, *reference)  # ...and still the same run
    assert not resumed.interrupted


def test_traced_run_resumes_bit_for_bit_and_matches_the_eager_run(reference, tmp_path):
    """fit(traced=True) interrupted and resumed (with a fresh tracer) is the uninterrupted traced run
    bit for bit, and that run is the eager one to float tolerance."""
    options = dict(epochs=3, k1=4, eval_data=BATCHES[:2], progress=False, traced=True)
    model, opt = new_run()
    whole = bptt.fit(model, shuffled, mean_ce, opt, **options)
    whole_params = params_of(model)
    reference_model, reference_history = reference
    for name, value in params_of(reference_model).items():
        np.testing.assert_allclose(whole_params[name], value, rtol=1e-9, atol=1e-12, err_msg=name)
    np.testing.assert_allclose(whole.step_loss, reference_history.step_loss, rtol=1e-10)

    path = tmp_path / "traced.npz"
    model, opt = new_run()
    stopped = bptt.fit(model, shuffled, mean_ce, opt, checkpoint=path, callbacks=[StopAfter(5)], **options)
    assert stopped.interrupted
    tg.manual_seed(999)
    model, opt = new_run(seed=123)
    resumed = bptt.fit(model, shuffled, mean_ce, opt, checkpoint=path, resume=True, **options)
    for name, value in whole_params.items():
        np.testing.assert_array_equal(params_of(model)[name], value, err_msg=name)
    assert resumed.step_loss == whole.step_loss and not resumed.interrupted


def test_sigint_stops_after_the_current_batch_and_saves(reference, tmp_path):
    path = tmp_path / "run.npz"
    calls = {"n": 0}

    def interrupting_loss(outputs, targets):
        calls["n"] += 1
        if calls["n"] == 14 + 6 + 2:  # epoch 1 (12 windows + 2 eval batches), then mid-batch 7
            os.kill(os.getpid(), signal.SIGINT)
        return mean_ce(outputs, targets)

    model, opt = new_run()
    stopped = bptt.fit(model, shuffled, interrupting_loss, opt, epochs=3, k1=4, eval_data=BATCHES[:2],
                       checkpoint=path, progress=False)
    assert stopped.interrupted and len(stopped.step_loss) == 7 * 3  # batch 7 was finished
    model, opt = new_run(seed=1)
    resumed = bptt.fit(model, shuffled, mean_ce, opt, epochs=3, k1=4, eval_data=BATCHES[:2],
                       checkpoint=path, resume=True, progress=False)
    assert_same_run(model, resumed, *reference)


def test_interrupt_inside_a_batch_keeps_the_last_good_checkpoint(reference, tmp_path):
    path = tmp_path / "run.npz"
    calls = {"n": 0}

    def exploding_loss(outputs, targets):
        calls["n"] += 1
        if calls["n"] == 14 + 3 + 2:  # second Ctrl-C: KeyboardInterrupt in the middle of batch 6
            raise KeyboardInterrupt
        return mean_ce(outputs, targets)

    model, opt = new_run()
    stopped = bptt.fit(model, shuffled, exploding_loss, opt, epochs=3, k1=4, eval_data=BATCHES[:2],
                       checkpoint=path, progress=False)
    assert stopped.interrupted
    model, opt = new_run(seed=2)
    resumed = bptt.fit(model, shuffled, mean_ce, opt, epochs=3, k1=4, eval_data=BATCHES[:2],
                       checkpoint=path, resume=True, progress=False)  # from the end of epoch 1
    assert_same_run(model, resumed, *reference)


def test_resume_with_a_carried_state(tmp_path):
    def run(**kwargs):
        return bptt.fit(model, BATCHES, mean_ce, opt, epochs=2, k1=4, k2=6, carry_state=True,
                        progress=False, **kwargs)

    model, opt = new_run()
    ref_model, ref_history = model, run()
    path = tmp_path / "carry.npz"
    model, opt = new_run()
    assert run(checkpoint=path, callbacks=[StopAfter(3)]).interrupted
    with np.load(path, allow_pickle=False) as saved:
        assert "carry/0" in saved.files  # the state batch 4 must start from
    model, opt = new_run(seed=3)
    assert_same_run(model, run(checkpoint=path, resume=True), ref_model, ref_history)


def test_checkpoint_is_a_plain_npz(tmp_path):
    path = tmp_path / "run.npz"
    model, opt = new_run()
    bptt.fit(model, BATCHES, mean_ce, opt, epochs=1, k1=6, checkpoint=path, progress=False)
    with np.load(path, allow_pickle=False) as data:
        assert {"meta", "model/U", "model/W", "optim/type"} <= set(data.files)
        np.testing.assert_array_equal(data["model/W"], model.W.numpy())


def test_resume_without_a_checkpoint_starts_fresh(tmp_path):
    model, opt = new_run()
    history = bptt.fit(model, BATCHES, mean_ce, opt, epochs=1, checkpoint=tmp_path / "none.npz",
                       resume=True, progress=False)
    assert len(history.epochs) == 1 and (tmp_path / "none.npz").exists()


def test_clipping_by_norm_and_value_is_recorded():
    model, _ = new_run()
    history = bptt.fit(model, BATCHES, mean_ce, SGD(model.parameters(), lr=0.1), epochs=1, k1=6,
                       clip_norm=1e-3, progress=False)
    assert all(history.step_clipped) and min(history.step_grad_norm) > 1e-3
    history = bptt.fit(model, BATCHES, mean_ce, SGD(model.parameters(), lr=0.1), epochs=1, k1=6,
                       clip_value=1e9, progress=False)
    assert not any(history.step_clipped)


class Scale(Module):
    """outputs = w * x, no recurrence: makes gradient sizes easy to control."""

    def __init__(self):
        super().__init__()
        self.w = Parameter(np.ones(1))

    def forward(self, x, state=None):
        return tg.tensor(x) * self.w, state


def test_exploding_gradient_jump_warns_and_suggests_clipping():
    ones = np.ones((4, 2, 1))
    data = [(ones, 2 * ones)] * 6 + [(1e4 * ones, 2 * ones)]
    model = Scale()
    with pytest.warns(bptt.ExplodingGradientWarning, match="clip_norm"):
        history = bptt.fit(model, data, tg.mse_loss, SGD(model.parameters(), lr=1e-12), epochs=1,
                           progress=False)
    assert len(history.warnings) == 1 and "jumped" in history.warnings[0]


def test_carry_state_passes_each_batch_state_to_the_next():
    model, opt = new_run()
    twin, twin_opt = new_run()
    bptt.fit(model, BATCHES, mean_ce, opt, epochs=1, k1=4, carry_state=True, progress=False)
    state = None
    for xs, ys in BATCHES:
        state = bptt.backprop_through_time(twin, xs, ys, mean_ce, state=state, k1=4, optimizer=twin_opt).state
    for name, value in params_of(twin).items():
        np.testing.assert_array_equal(params_of(model)[name], value)


def test_one_shot_iterator_is_rejected_for_several_epochs():
    model, opt = new_run()
    with pytest.raises(TypeError, match="callable"):
        bptt.fit(model, iter(BATCHES), mean_ce, opt, epochs=2, progress=False)


def test_progress_bar_shows_loss_perplexity_and_grad_norm(capsys):
    model, opt = new_run()
    bptt.fit(model, BATCHES, mean_ce, opt, epochs=1, k1=6, progress=True)
    err = capsys.readouterr().err
    assert "epoch 1/1" in err and "4/4" in err
    assert "loss=" in err and "ppl=" in err and "gnorm=" in err


def test_progress_bar_renders_counts_and_stats():
    stream = io.StringIO()
    bar = ProgressBar(10, desc="demo", stream=stream)
    bar.update(3, loss=1.5, skipped=None)
    assert "demo" in bar.render() and "3/10" in bar.render() and "loss=1.5" in bar.render()
    assert stream.getvalue() == ""  # not a terminal: quiet until close
    bar.close()
    assert stream.getvalue().count("\n") == 1


def test_gradient_flow_recorder_feeds_the_heatmap_and_loss_plot(tmp_path):
    pytest.importorskip("matplotlib")
    from matplotlib import image

    from tinygraph.viz import plot_gradient_heatmap, plot_loss_curve
    xs, ys = BATCHES[0]
    recorder = bptt.GradientFlowRecorder(xs, ys, mean_ce)
    model, opt = new_run()
    history = bptt.fit(model, BATCHES, mean_ce, opt, epochs=2, k1=4, callbacks=[recorder], progress=False)
    assert recorder.matrix.shape == (2, T) and np.all(recorder.matrix > 0)
    plot_gradient_heatmap(recorder.matrix, path=tmp_path / "heat.png", ylabel="epoch")
    plot_loss_curve(history, path=tmp_path / "loss.png")
    for name in ("heat.png", "loss.png"):
        assert image.imread(str(tmp_path / name)).shape[0] > 50


def test_checkpoint_load_is_all_or_nothing(tmp_path):
    """A checkpoint whose optimizer part does not fit leaves the model as it was, and one whose
    model part does not fit leaves the optimizer as it was."""
    from tinygraph.training import load_checkpoint, save_checkpoint
    tg.manual_seed(0)
    model = ElmanRNN(3, 4, 2)
    opt = Adam(model.parameters(), lr=0.1)
    for p in model.parameters():
        p.grad = tg.Tensor(np.ones(p.shape, p.dtype))
    opt.step()
    save_checkpoint(tmp_path / "adam.npz", model, opt, {"epoch": 1})
    other = ElmanRNN(3, 4, 2)
    before = {k: v.copy() for k, v in other.state_dict().items()}
    with pytest.raises(ValueError, match="Adam"):
        load_checkpoint(tmp_path / "adam.npz", other, SGD(other.parameters(), lr=0.1, momentum=0.9))
    for k, v in other.state_dict().items():
        np.testing.assert_array_equal(v, before[k])
    # plain SGD keeps no buffers, so its part loads into any model: the model's part then refuses
    save_checkpoint(tmp_path / "sgd.npz", model, SGD(model.parameters(), lr=0.5), {"epoch": 1})
    wider = ElmanRNN(3, 5, 2)
    wider_opt = SGD(wider.parameters(), lr=0.1)
    with pytest.raises(ValueError, match="shape"):
        load_checkpoint(tmp_path / "sgd.npz", wider, wider_opt)
    assert wider_opt.lr == 0.1


def test_checkpoint_with_a_broken_meta_entry_says_so(tmp_path):
    from tinygraph.training import load_checkpoint
    tg.save({"meta": "{not json"}, tmp_path / "bad.npz")
    with pytest.raises(ValueError, match="bad.npz.*not JSON"):
        load_checkpoint(tmp_path / "bad.npz", ElmanRNN(3, 4, 2), None)


def test_a_stop_at_an_epoch_end_says_after_which_epoch(capsys):
    class StopAtEpochEnd:
        def on_epoch_end(self, info):
            return info["epoch"] == 1

    model, opt = new_run()
    history = bptt.fit(model, shuffled, mean_ce, opt, epochs=3, k1=4, callbacks=[StopAtEpochEnd()],
                       progress=False)
    assert history.interrupted and len(history.epochs) == 1
    assert "stopped after epoch 1" in capsys.readouterr().err


def test_progress_bar_past_its_total_and_numpy_floats_read_well():
    from tinygraph.progress import format_stats
    stream = io.StringIO()
    stream.isatty = lambda: True
    bar = ProgressBar(10, stream=stream, min_interval=0.0)
    for _ in range(20):
        bar.update()
    assert "<-" not in stream.getvalue()        # no negative time left
    assert format_stats({"loss": np.float32(2.3456788)}) == format_stats({"loss": 2.3456788}) == "loss=2.3457"


def test_carry_state_with_a_stateless_model():
    class Stateless(Module):
        def __init__(self):
            super().__init__()
            self.w = Parameter(np.ones((1, 2)))

        def forward(self, x, state=None):
            return x @ self.w, ()

    rng = np.random.default_rng(5)
    batches = [(rng.standard_normal((4, 3, 1)), rng.integers(0, 2, (4, 3))) for _ in range(2)]
    model = Stateless()
    history = bptt.fit(model, batches, tg.cross_entropy, SGD(model.parameters(), lr=0.1), epochs=1,
                       carry_state=True, progress=False)
    assert len(history.step_loss) == 2
