"""The benchmark suite (``python -m benchmarks``) measures what it claims to.

Its hand-written NumPy reference must be right (finite differences) and
must compute tinygraph's gradients -- decomposed and fused layers alike --
so the timed implementations all do the same work; the command itself must
run and print valid JSON.
"""
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from benchmarks.__main__ import GradientMismatch, check_gradients
from benchmarks.baselines import TorchRunner
from benchmarks.reference import STEPS
from benchmarks.workloads import NumpyRunner, TinygraphRunner, TracedRunner, Workload, make_data, param_names

ROOT = Path(__file__).resolve().parents[1]
KINDS = ("rnn_char", "lstm", "gru")
TIGHT = 1e-9  # float64: every implementation does the same arithmetic up to rounding


def small(kind):
    """T=5, B=3, D=4 (the vocabulary for rnn_char), H=6."""
    return Workload("test", kind, kind, T=5, B=3, D=4, H=6)


def max_rel_error(grads, reference):
    return max(np.abs(grads[n] - reference[n]).max() / np.abs(reference[n]).max() for n in reference)


def reference_after_step(workload, data, weights):
    runner = NumpyRunner(workload, data, weights)
    runner.step()
    return runner


def tinygraph_float64(workload, data, fused):
    """A float64 tinygraph runner after one step."""
    runner = TinygraphRunner(workload, data, fused=fused, dtype="float64", seed=1)
    assert runner.fused == fused
    assert all(p.dtype == np.float64 for p in runner.params().values())
    runner.step()
    return runner


@pytest.mark.parametrize("fused", [False, True], ids=["decomposed", "fused"])
@pytest.mark.parametrize("kind", KINDS)
def test_reference_matches_tinygraph_float64(kind, fused):
    w = small(kind)
    data = make_data(w, dtype="float64", seed=2)
    ours = tinygraph_float64(w, data, fused)
    ref = reference_after_step(w, data, ours.weights())
    assert ref.grads()["U"].dtype == np.float64
    assert abs(ours.loss() - ref.loss()) <= TIGHT * abs(ref.loss())
    assert max_rel_error(ours.grads(), ref.grads()) <= TIGHT


@pytest.mark.parametrize("kind", KINDS)
def test_reference_passes_finite_differences(kind):
    """Central differences at a few random coordinates of every parameter (float64)."""
    w = small(kind)
    data = make_data(w, dtype="float64", seed=3)
    rng = np.random.default_rng(4)
    params = {name: rng.uniform(-0.5, 0.5, size=shape) for name, shape in _shapes(w).items()}
    step = STEPS[kind]
    _, grads = step(params, data.x, data.targets)
    eps = 1e-6
    for name, value in params.items():
        for _ in range(4):
            index = tuple(int(rng.integers(0, n)) for n in value.shape)
            original = value[index]
            value[index] = original + eps
            plus, _ = step(params, data.x, data.targets)
            value[index] = original - eps
            minus, _ = step(params, data.x, data.targets)
            value[index] = original
            numeric = (plus - minus) / (2 * eps)
            assert numeric == pytest.approx(grads[name][index], rel=1e-6, abs=1e-7), (name, index)


def _shapes(w):
    """Parameter shapes of a small workload, keyed like the reference."""
    G = {"rnn_char": 1, "lstm": 4, "gru": 3}[w.kind]
    shapes = {"U": (G * w.H, w.D), "W": (G * w.H, w.H), "b": (G * w.H,)}
    if w.kind == "gru":
        shapes["b_hn"] = (w.H,)
    if w.kind == "rnn_char":
        shapes.update(V=(w.D, w.H), c=(w.D,))
    assert tuple(shapes) == param_names(w.kind)
    return shapes


def test_reference_float32_stays_float32():
    w = small("lstm")
    data = make_data(w, dtype="float32")
    weights = {n: v.astype(np.float32) for n, v in
               TinygraphRunner(w, data, fused=False).weights().items()}
    grads = reference_after_step(w, data, weights).grads()
    assert all(g.dtype == np.float32 for g in grads.values())


@pytest.mark.parametrize("loop", [False, True], ids=["torch fused", "torch loop"])
@pytest.mark.parametrize("kind", KINDS)
def test_torch_baselines_match_reference(kind, loop):
    pytest.importorskip("torch")
    w = small(kind)
    data = make_data(w, dtype="float64", seed=5)
    ours = TinygraphRunner(w, data, fused=False, dtype="float64", seed=6)
    ref = reference_after_step(w, data, ours.weights())
    torch_runner = TorchRunner(w, data, *ours.torch_state(), loop=loop)
    torch_runner.step()
    assert abs(torch_runner.loss() - ref.loss()) <= TIGHT * abs(ref.loss())
    assert max_rel_error(torch_runner.grads(), ref.grads()) <= TIGHT


@pytest.mark.parametrize("kind", KINDS)
def test_jax_baseline_matches_reference(kind):
    pytest.importorskip("jax")
    from benchmarks.baselines import JaxRunner
    w = small(kind)
    data = make_data(w, dtype="float32", seed=7)  # JAX computes in float32 unless x64 is enabled
    weights = TinygraphRunner(w, data, fused=False, seed=8).weights()
    ref = reference_after_step(w, data, weights)
    jax_runner = JaxRunner(w, data, weights)
    jax_runner.step()
    assert max_rel_error(jax_runner.grads(), ref.grads()) <= 2e-3


@pytest.mark.parametrize("fused", [False, True], ids=["decomposed", "fused"])
def test_traced_runner_matches_reference(fused):
    w = small("lstm")
    data = make_data(w, dtype="float64", seed=7)
    traced = TracedRunner(w, data, fused=fused, dtype="float64", seed=8)
    traced.step()
    ref = reference_after_step(w, data, traced.weights())
    assert abs(traced.loss() - ref.loss()) <= TIGHT * abs(ref.loss())
    assert max_rel_error(traced.grads(), ref.grads()) <= TIGHT


def test_decomposed_rows_report_both_ratios():
    proc = subprocess.run([sys.executable, "-m", "benchmarks", "--quick", "--workloads", "D", "--decomposed",
                           "--json", "-"], cwd=ROOT, capture_output=True, text=True, timeout=120,
                          env=dict(os.environ))
    assert proc.returncode == 0, proc.stderr
    record = json.loads(proc.stdout)["workloads"]["D"]
    results = record["results"]
    assert {"tinygraph decomposed", "decomposed traced", "decomposed replay"} <= set(results)
    assert record["decomposed_over_fused"] == pytest.approx(results["tinygraph decomposed"] / results["tinygraph"])
    assert record["decomposed_traced_over_fused_traced"] == pytest.approx(
        results["decomposed traced"] / results["tinygraph traced"])
    assert record["decomposed_traced_over_fused"] == pytest.approx(
        results["decomposed traced"] / results["tinygraph"])
    assert record["decomposed_replay_over_fused_traced"] == pytest.approx(
        results["decomposed replay"] / results["tinygraph traced"])


def test_gradient_check_fails_loudly():
    """A runner whose gradients are off stops the suite instead of being timed."""
    w = small("gru")
    data = make_data(w, dtype="float64")
    ours = tinygraph_float64(w, data, fused=False)
    ref = reference_after_step(w, data, ours.weights())
    assert check_gradients("test", "numpy", ref, {"tinygraph": ours}, 1e-9) <= 1e-9
    wrong = reference_after_step(w, data, ours.weights())
    wrong.grads()["W"][0, 0] += 1.0
    with pytest.raises(GradientMismatch, match="disagrees"):
        check_gradients("test", "numpy", ref, {"wrong": wrong}, 2e-3)


def test_quick_run_prints_json():
    proc = subprocess.run([sys.executable, "-m", "benchmarks", "--quick", "--json", "-"], cwd=ROOT,
                          capture_output=True, text=True, timeout=120, env=dict(os.environ))
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert {"cpu", "cores", "python", "numpy", "torch", "jax"} <= set(result["machine"])
    assert set(result["workloads"]) == {"A", "B", "C", "D"}  # --quick leaves out E
    for record in result["workloads"].values():
        assert record["results"]["tinygraph"] > 0 and record["results"]["numpy"] > 0
        assert record["gradients_agree"]
        assert record["ratios"]["tinygraph"] == pytest.approx(1.0)
    assert "goal: tinygraph <= min(" in proc.stderr  # the tables went to stderr
    summary = proc.stderr.split("summary: tinygraph / best baseline")[1].splitlines()
    rows = {line.split()[0]: line for line in summary[2:6]}
    assert set(rows) == {"A", "B", "C", "D"}
    for key, record in result["workloads"].items():  # the summary's eager ratio is the JSON's
        ratio = record["results"]["tinygraph"] / record["goal"]["best_baseline_ms"]
        assert f"{ratio:.2f}" in rows[key]
    # the LSTM workloads also time their matrix products alone, which are not a baseline of the goal
    for key, record in result["workloads"].items():
        floor = record["results"].get("products only")
        assert (floor is not None) == (key in ("B", "D"))
        assert record["goal"]["best_baseline"] != "products only"
        if floor is not None:
            assert rows[key].split()[-1] == f"{floor / record['goal']['best_baseline_ms']:.2f}"
        else:
            assert rows[key].split()[-1] == "-"


def test_kernel_times_script_runs():
    """benchmarks/kernel_times.py (the per-change A/B tool) times a kernel from a given checkout."""
    proc = subprocess.run([sys.executable, "benchmarks/kernel_times.py", "C", "--rounds", "1", "--calls", "1",
                           "--root", str(ROOT)], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("C (gru T=50 B=32 D=64 H=256)") and "vjp" in proc.stdout


def test_batch_threads_script_compares_the_split_with_the_full_batch():
    """benchmarks/batch_threads.py (why the fused layers do not split the batch over threads) runs and checks itself."""
    proc = subprocess.run([sys.executable, "benchmarks/batch_threads.py", "--hidden", "32", "--batch", "8",
                           "--steps", "3", "--rounds", "1"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    if "openblas_set_num_threads_local" in proc.stderr:
        pytest.skip("this NumPy's BLAS cannot be told a thread count per thread")
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0].startswith("cores usable:") and "control" in lines[0]
    assert lines[1].startswith("LSTM forward loop H=32 B=8 T=3: full batch ") and "full/split" in lines[1]


def test_tinygraph_bench_runs_the_suite_from_the_command(tmp_path):
    """`tinygraph bench ARGS` is `python -m benchmarks ARGS` (the suite's options pass through)."""
    from tinygraph import cli

    out = tmp_path / "bench.json"
    assert cli.main(["bench", "--quick", "--workloads", "D", "--json", str(out)]) == 0
    record = json.loads(out.read_text())
    assert record["settings"]["quick"] is True
    assert list(record["workloads"]) == ["D"]


def test_tinygraph_bench_without_a_checkout_says_where_the_suite_is(monkeypatch, capsys):
    from tinygraph.apps import bench

    monkeypatch.setattr(bench, "checkout_root", lambda: None)
    assert bench.run_argv(["--quick"]) == 2
    assert "source checkout" in capsys.readouterr().err


def _script_lines(script, *args):
    """Run ``benchmarks/<script>`` with ``args``; its stdout lines (it must exit 0)."""
    proc = subprocess.run([sys.executable, f"benchmarks/{script}", *args],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.splitlines()


def test_padded_batches_script_times_the_fused_and_step_by_step_paths():
    lines = _script_lines("padded_batches.py", "--steps", "4", "--batch", "3", "--input", "2", "--hidden", "3",
                          "--rounds", "1")
    assert lines[0].startswith("padded batch T=4 B=3 D=2 H=3") and len(lines) == 7
    assert all("fused" in line and "step-by-step/fused" in line for line in lines[1:])


def test_mkl_packed_gemm_script_says_when_mkl_is_missing(tmp_path):
    """benchmarks/mkl_packed_gemm.py (why the kernels stay on OpenBLAS) runs with or without MKL."""
    lines = _script_lines("mkl_packed_gemm.py", "--mkl-lib", str(tmp_path), "--repeat", "1")
    assert lines[0].startswith("MKL not found")


def test_trace_fusion_script_times_the_elman_network_five_ways():
    lines = _script_lines("trace_fusion.py", "--steps", "4", "--batch", "2", "--vocab", "5", "--hidden", "3",
                          "--repeat", "1")
    assert lines[0].endswith("fused at trace time: {'elman_rnn': 1}") and len(lines) == 6
    assert all("x fused eager" in line for line in lines[1:])


def test_traced_fit_script_trains_both_ways_and_prints_the_ratio():
    lines = _script_lines("traced_fit.py", "--rounds", "1", "--batches", "1",
                          "--only", "LSTM decomposed, H 32, B 1")
    assert lines[0].split() == ["workload", "eager", "ms/window", "traced", "ms/window", "traced/eager"]
    name, numbers = lines[1][:40].strip(), [float(v) for v in lines[1][40:].split()]
    assert name == "LSTM decomposed, H 32, B 1" and len(numbers) == 3
    assert numbers[2] == pytest.approx(numbers[1] / numbers[0], rel=0.02, abs=0.015)  # printed rounded


def test_replay_memory_script_reports_six_peaks_against_eager():
    lines = _script_lines("replay_memory.py", "--steps", "3", "--batch", "2", "--input", "2", "--hidden", "3")
    assert lines[0].startswith("LSTM T=3 B=2 D=2 H=3") and len(lines) == 7
    assert sum("1.00x eager" in line for line in lines[1:]) >= 2  # each eager row is its own baseline
    assert all(line.rstrip().endswith("x eager") for line in lines[1:])


def test_gemm_floor_script_sets_the_products_against_the_whole_steps():
    lines = _script_lines("gemm_floor.py", "D", "--rounds", "1")
    assert lines[0].startswith("D: LSTM latency") and "GFLOP of matrix products" in lines[0]
    names = [line.split()[0] for line in lines[1:-1]]
    assert names[:2] == ["products", "tinygraph"]
    assert names[2:] == (["torch"] if importlib.util.find_spec("torch") else [])
    assert lines[-1].strip().startswith("tinygraph / products:")
    assert float(lines[-1].split(":")[1]) > 0


def test_gemm_floor_counts_the_flops_its_step_runs(monkeypatch):
    """The printed GFLOP figure is what ``step()`` multiplies, and it is the kernel's product list:
    a projection and T step products forward, T step products, dU and dW backward."""
    from benchmarks import gemm_floor
    from benchmarks.workloads import WORKLOADS
    flops = []

    class Counting:
        def __getattr__(self, name):
            return getattr(np, name)

        @staticmethod
        def dot(a, b, out=None):
            flops.append(2 * a.shape[0] * a.shape[1] * b.shape[-1])
            return np.dot(a, b, out)

        @staticmethod
        def matmul(a, b, out=None):
            batch = b.shape[0] if b.ndim == 3 else 1   # U @ x(t) for every t at once
            flops.append(2 * int(np.prod(a.shape[:-1])) * a.shape[-1] * b.shape[-1] * batch)
            return np.matmul(a, b, out=out)

    w = WORKLOADS["B"]
    products = gemm_floor.LstmProducts(w)
    monkeypatch.setattr(gemm_floor, "np", Counting())
    products.step()
    assert len(flops) == 1 + 2 * w.T + 3
    G = 4 * w.H
    assert sum(flops) == 2 * G * (2 * w.D + 3 * w.H) * w.T * w.B
    assert products.gflop == pytest.approx(sum(flops) / 1e9)
