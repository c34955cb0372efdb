"""Benchmark suite: ``python -m benchmarks`` times one training step of five workloads.

Implementations, timed in the same process and interleaved round by round:
tinygraph (fused layers), hand-written NumPy BPTT (``benchmarks.reference``),
PyTorch fused layers, a PyTorch per-step cell loop and JAX (``jit`` over
``lax.scan``); PyTorch and JAX only when they import. The LSTM workloads also
time their matrix products alone (``benchmarks.gemm_floor``): the least a
NumPy step can take, shown beside the baselines but not one of them. Before timing a
workload the suite checks that every implementation computes the same
gradients from the same weights and data, and stops if one does not.

Timing is wall clock (``time.perf_counter``) with every library using its
threads as it comes. Each round calls every implementation ``repeat`` times
and keeps the median; the reported time is the best of the rounds' medians,
which discounts rounds disturbed by other work on the machine.

    python -m benchmarks                   # A-E, tables on stdout
    python -m benchmarks --skip-large      # A-D (E takes ~0.5 s per step per implementation)
    python -m benchmarks --quick           # a few seconds: 2 rounds, 1 call, no E
    python -m benchmarks --quick --rounds 5   # --rounds/--repeat given explicitly win over --quick
    python -m benchmarks --workloads A,B --decomposed --json results.json
    python -m benchmarks --gpu-only        # B and E on CuPy vs torch CUDA (scripts/gpu_check.sh)

With ``--json -`` the JSON goes to stdout and the tables to stderr.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time

import numpy as np

import tinygraph as tg
from tinygraph.fileio import atomic_write_text

from .baselines import JaxRunner, TorchRunner, jax_modules, torch_cuda_available, torch_module
from .gemm_floor import LstmProducts
from .workloads import WORKLOADS, NumpyRunner, TinygraphRunner, TracedRunner, make_data

GRAD_RTOL = 2e-3          # float32, relative to the largest gradient entry of each parameter
GPU_TORCH_RTOL = 2e-3     # float32 on both sides (TorchRunner turns cuDNN's default TF32 off)
GPU_WORKLOADS = ("B", "E")
GOAL_BASELINES = ("numpy", "torch fused", "jax")
FLOOR = "products only"   # an LSTM step's BLAS calls alone (benchmarks/gemm_floor.py): no gradients to check
GPU_GOAL_VS_TORCH = 2.0   # tinygraph-GPU / torch-CUDA must be at most this
GPU_GOAL_VS_CPU = 10.0    # tinygraph-CPU / tinygraph-GPU must be at least this


class GradientMismatch(AssertionError):
    """Two implementations disagree on a workload's loss or gradients."""


def log(*parts):
    """Print a line of the human-readable report (stderr when the JSON takes stdout)."""
    print(*parts, file=_REPORT[0], flush=True)


_REPORT = [sys.stdout]


# -- environment ------------------------------------------------------------

def cpu_model():
    """The CPU's marketing name from /proc/cpuinfo (Linux), else what platform knows."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_info():
    """CPU, core count and library versions (None for a library that does not import)."""
    torch, jax = torch_module(), jax_modules()
    return {
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "tinygraph": tg.__version__,
        "torch": torch.__version__ if torch else None,
        "jax": jax[0].__version__ if jax else None,
    }


def machine_line(info):
    libs = ", ".join(f"{name} {info[name] or 'not installed'}"
                     for name in ("python", "numpy", "tinygraph", "torch", "jax"))
    return f"machine: {info['cpu']}, {info['cores']} cores; {libs}"


# -- timing -------------------------------------------------------------------

def best_of_rounds(steps, rounds, repeat, warmup=True):
    """Milliseconds per call for each of ``steps`` (name -> callable): best over rounds of the round's median.

    Implementations are interleaved within every round, so a slow patch of
    the machine hits all of them rather than one. Each implementation's turn
    starts with one untimed call: the previous library's worker threads
    (OpenBLAS, OpenMP) keep spinning for a while after its last call, and on a
    2-core machine they would be billed to whoever runs next.
    """
    if warmup:
        for step in steps.values():
            step()
    best = {name: float("inf") for name in steps}
    for _ in range(rounds):
        for name, step in steps.items():
            step()  # untimed: lets the other library's threads go idle (see above)
            times = []
            for _ in range(repeat):
                start = time.perf_counter()
                step()
                times.append(time.perf_counter() - start)
            best[name] = min(best[name], statistics.median(times))
    return {name: seconds * 1e3 for name, seconds in best.items()}


# -- gradient agreement ---------------------------------------------------------

def max_relative_error(grads, reference):
    """Largest over parameters of max|a - r| / max|r| (the scale of each parameter's gradient)."""
    worst = 0.0
    for name, ref in reference.items():
        ref = np.asarray(ref, dtype=np.float64)
        diff = np.abs(np.asarray(grads[name], dtype=np.float64) - ref).max()
        worst = max(worst, diff / max(np.abs(ref).max(), 1e-30))
    return worst


def check_gradients(label, reference_name, reference, others, rtol):
    """Raise GradientMismatch unless every runner in ``others`` matches ``reference`` (runners after a step).

    Returns the worst relative error seen, for the report.
    """
    ref_loss, ref_grads = reference.loss(), reference.grads()
    worst = 0.0
    for name, runner in others.items():
        loss_error = abs(runner.loss() - ref_loss) / max(abs(ref_loss), 1e-30)
        grad_error = max_relative_error(runner.grads(), ref_grads)
        if loss_error > rtol or grad_error > rtol:
            raise GradientMismatch(
                f"{label}: {name} disagrees with {reference_name}: loss {runner.loss():.6g} vs "
                f"{ref_loss:.6g}, max relative gradient error {grad_error:.3g} (tolerance {rtol:g})")
        worst = max(worst, grad_error)
    return worst


# -- CPU workloads ---------------------------------------------------------------

def build_cpu_runners(workload, data, decomposed):
    """Name -> runner for every implementation available here, plus notes for the report."""
    notes = []
    main = TinygraphRunner(workload, data, fused=True)
    weights = main.weights()
    runners = {"tinygraph": main, "tinygraph traced": TracedRunner(workload, data)}
    runners["tinygraph traced"].set_weights(weights)
    if decomposed:
        runners["tinygraph decomposed"] = TinygraphRunner(workload, data, fused=False)
        runners["decomposed traced"] = TracedRunner(workload, data, fused=False)
        # the same replay without trace-time fusion: every gate op of every step
        runners["decomposed replay"] = TracedRunner(workload, data, fused=False, fuse=False)
        for name in ("tinygraph decomposed", "decomposed traced", "decomposed replay"):
            runners[name].set_weights(weights)
    runners["numpy"] = NumpyRunner(workload, data, weights)
    if workload.kind == "lstm":
        runners[FLOOR] = LstmProducts(workload)
    if torch_module() is not None:
        layer_state, readout_state = main.torch_state()
        runners["torch fused"] = TorchRunner(workload, data, layer_state, readout_state)
        runners["torch loop"] = TorchRunner(workload, data, layer_state, readout_state, loop=True)
    else:
        notes.append("torch not installed: no torch rows")
    if jax_modules() is not None:
        runners["jax"] = JaxRunner(workload, data, weights)
    else:
        notes.append("jax not installed: no jax row")
    return runners, notes


def goal(results, main="tinygraph", baselines=GOAL_BASELINES):
    """Whether ``main`` (eager) is at least as fast as the fastest available baseline; also for the traced replay."""
    present = {name: results[name] for name in baselines if name in results}
    best = min(present, key=present.get)
    record = {"met": results[main] <= present[best], "best_baseline": best, "best_baseline_ms": present[best],
              "compared_with": sorted(present)}
    if "tinygraph traced" in results:
        record["met_traced"] = results["tinygraph traced"] <= present[best]
    return record


def run_cpu_workload(workload, rounds, repeat, decomposed):
    """Check gradients, then time every implementation of ``workload``; returns its JSON record."""
    data = make_data(workload)
    runners, notes = build_cpu_runners(workload, data, decomposed)
    for runner in runners.values():
        runner.step()  # the check's step doubles as each implementation's warm-up (and JAX's compile)
    others = {name: r for name, r in runners.items() if name not in ("numpy", FLOOR)}
    worst = check_gradients(workload.key, "numpy", runners["numpy"], others, GRAD_RTOL)
    results = best_of_rounds({name: r.step for name, r in runners.items()}, rounds, repeat, warmup=False)
    record = dict(workload.shape(), title=workload.title, dtype="float32", rounds=rounds, repeat=repeat,
                  tinygraph_path=runners["tinygraph"].label, results=results,
                  ratios={name: results["tinygraph"] / ms for name, ms in results.items()},
                  gradients_agree=True, max_gradient_error=worst, checked_against="numpy",
                  goal=goal(results), notes=notes)
    if "tinygraph decomposed" in results:
        record["decomposed_over_fused"] = results["tinygraph decomposed"] / results["tinygraph"]
        record["decomposed_traced_over_fused_traced"] = results["decomposed traced"] / results["tinygraph traced"]
        record["decomposed_traced_over_fused"] = results["decomposed traced"] / results["tinygraph"]
        record["decomposed_replay_over_fused_traced"] = results["decomposed replay"] / results["tinygraph traced"]
    return record


def print_cpu_table(workload, record):
    log()
    log(f"{workload.describe()}  (float32 training step; best of {record['rounds']} rounds, "
        f"median of {record['repeat']} call{'s' if record['repeat'] > 1 else ''} each)")
    for note in record["notes"]:
        log(f"  note: {note}")
    checked = ", ".join(name for name in record["results"] if name not in ("numpy", FLOOR))
    log(f"  gradients agree ({checked} vs numpy; max relative error {record['max_gradient_error']:.1e})")
    log(f"  {'implementation':<22}{'median ms':>10}{'tinygraph/impl':>16}")
    for name, ms in record["results"].items():
        shown = f"tinygraph ({record['tinygraph_path']})" if name == "tinygraph" else name
        extra = ""
        if name == "tinygraph decomposed":
            extra = f"   decomposed/fused {record['decomposed_over_fused']:.2f}"
        elif name == "decomposed traced":
            extra = (f"   /tinygraph traced {record['decomposed_traced_over_fused_traced']:.2f}"
                     f"   /tinygraph {record['decomposed_traced_over_fused']:.2f} (fused at trace time)")
        elif name == "decomposed replay":
            extra = f"   /tinygraph traced {record['decomposed_replay_over_fused_traced']:.2f} (no fusion)"
        elif name == FLOOR:
            extra = "   (the step's matrix products alone: no gate math, loss or engine)"
        log(f"  {shown:<22}{ms:>10.2f}{record['ratios'][name]:>16.2f}{extra}")
    g = record["goal"]
    verdict = "met" if g["met"] else "not met"
    log(f"  goal: tinygraph <= min({', '.join(GOAL_BASELINES)}): {verdict} "
        f"(tinygraph {record['results']['tinygraph']:.2f} ms, best baseline {g['best_baseline']} "
        f"{g['best_baseline_ms']:.2f} ms)")
    if "met_traced" in g:
        log(f"        traced replay: {'met' if g['met_traced'] else 'not met'} "
            f"(tinygraph traced {record['results']['tinygraph traced']:.2f} ms)")
    if FLOOR in record["results"]:
        log(f"        the matrix products alone take {record['results'][FLOOR] / g['best_baseline_ms']:.2f}x "
            f"the best baseline's whole step")


def print_summary(records):
    """One line per workload: eager and traced against the best baseline, and decomposed/fused."""
    log()
    log("summary: tinygraph / best baseline in this run (goal: at most 1.00)")
    decomposed = any("decomposed_over_fused" in r for r in records.values())
    log(f"  {'workload':<10}{'best baseline':>22}{'eager':>8}{'traced':>8}{'products':>10}"
        + (f"{'decomposed/fused':>18}{'dec. traced/fused':>19}" if decomposed else ""))
    for key, record in records.items():
        g, results = record["goal"], record["results"]
        best = f"{g['best_baseline']} {g['best_baseline_ms']:.2f} ms"
        line = (f"  {key:<10}{best:>22}{results['tinygraph'] / g['best_baseline_ms']:>8.2f}"
                f"{results['tinygraph traced'] / g['best_baseline_ms']:>8.2f}")
        line += f"{results[FLOOR] / g['best_baseline_ms']:>10.2f}" if FLOOR in results else f"{'-':>10}"
        if decomposed:
            line += (f"{record.get('decomposed_over_fused', float('nan')):>18.2f}"
                     f"{record.get('decomposed_traced_over_fused', float('nan')):>19.2f}")
        log(line)


# -- GPU -------------------------------------------------------------------------

def gpu_unavailable_reason():
    """None when tinygraph can run on a CUDA device, else why not."""
    if not tg.cuda_available():
        from tinygraph import backend
        error = backend._cupy_import_error
        return f"CuPy import failed ({error!r})" if error is not None else "no CUDA device"
    return None


def gpu_name():
    import cupy
    name = cupy.cuda.runtime.getDeviceProperties(cupy.cuda.Device().id)["name"]
    return name.decode() if isinstance(name, bytes) else name


def synchronized(step):
    """``step`` followed by a device synchronisation, so the clock stops when the GPU is done."""
    import cupy

    def run():
        step()
        cupy.cuda.Device().synchronize()
    return run


def run_gpu_workload(workload, rounds, repeat, cpu_ms=None):
    """tinygraph on CuPy vs torch CUDA for ``workload``; ``cpu_ms`` is tinygraph's CPU time from this run.

    Without ``cpu_ms`` (``--gpu-only``) the CPU step is timed here, one round
    of one call: it only feeds the CPU/GPU ratio.
    """
    data = make_data(workload)
    cpu = TinygraphRunner(workload, data, fused=True)
    gpu = TinygraphRunner(workload, data, fused=True, device="cuda")
    gpu.set_weights(cpu.weights())
    runners = {"tinygraph cuda": gpu}
    if torch_cuda_available():
        layer_state, readout_state = cpu.torch_state()
        runners["torch cuda"] = TorchRunner(workload, data, layer_state, readout_state, device="cuda")
    steps = {name: synchronized(r.step) if name == "tinygraph cuda" else r.step for name, r in runners.items()}
    cpu.step()
    for step in steps.values():
        step()
    notes = []
    worst = check_gradients(f"{workload.key} (GPU)", "tinygraph cpu", cpu, {"tinygraph cuda": gpu}, GRAD_RTOL)
    if "torch cuda" in runners:
        worst = max(worst, check_gradients(f"{workload.key} (GPU)", "tinygraph cpu", cpu,
                                           {"torch cuda": runners["torch cuda"]}, GPU_TORCH_RTOL))
    else:
        notes.append("torch CUDA not available: no torch cuda row")
    results = best_of_rounds(steps, rounds, repeat, warmup=False)
    if cpu_ms is None:
        cpu_ms = best_of_rounds({"cpu": cpu.step}, 1, 1, warmup=False)["cpu"]
        notes.append("tinygraph cpu timed here with 1 round of 1 call")
    results["tinygraph cpu"] = cpu_ms
    ratios = {"tinygraph-CPU/tinygraph-GPU": cpu_ms / results["tinygraph cuda"]}
    goals = {"cpu_over_gpu": {"goal": f">= {GPU_GOAL_VS_CPU:g}",
                              "met": ratios["tinygraph-CPU/tinygraph-GPU"] >= GPU_GOAL_VS_CPU}}
    if "torch cuda" in results:
        ratios["tinygraph-GPU/torch-CUDA"] = results["tinygraph cuda"] / results["torch cuda"]
        goals["gpu_over_torch"] = {"goal": f"<= {GPU_GOAL_VS_TORCH:g}",
                                   "met": ratios["tinygraph-GPU/torch-CUDA"] <= GPU_GOAL_VS_TORCH}
    return dict(workload.shape(), title=workload.title, dtype="float32", rounds=rounds, repeat=repeat,
                results=results, ratios=ratios, goals=goals, gradients_agree=True,
                max_gradient_error=worst, checked_against="tinygraph cpu", notes=notes)


def print_gpu_table(workload, record):
    log()
    log(f"{workload.describe()} on the GPU  (best of {record['rounds']} rounds, median of {record['repeat']})")
    for note in record["notes"]:
        log(f"  note: {note}")
    checked = ", ".join(name for name in record["results"] if name != "tinygraph cpu")
    log(f"  gradients agree ({checked} vs tinygraph cpu; max relative error {record['max_gradient_error']:.1e})")
    for name, ms in record["results"].items():
        log(f"  {name:<22}{ms:>10.2f} ms")
    labels = {"gpu_over_torch": "tinygraph-GPU/torch-CUDA", "cpu_over_gpu": "tinygraph-CPU/tinygraph-GPU"}
    for key, label in labels.items():
        if key in record["goals"]:
            g = record["goals"][key]
            log(f"  {label} = {record['ratios'][label]:.2f}  (goal {g['goal']}: {'met' if g['met'] else 'not met'})")


def run_gpu(selected, settings, cpu_records):
    """The GPU part for the selected workloads among B and E; returns its JSON record."""
    keys = [k for k in selected if k in GPU_WORKLOADS]
    reason = gpu_unavailable_reason()
    if reason or not keys:
        reason = reason or f"none of {', '.join(GPU_WORKLOADS)} selected"
        log()
        log(f"GPU: skipped ({reason})")
        return {"skipped": reason}
    log()
    log(f"GPU: {gpu_name()}; torch CUDA {'available' if torch_cuda_available() else 'not available'}")
    record = {"device": gpu_name(), "workloads": {}}
    for key in keys:
        workload = WORKLOADS[key]
        rounds, repeat = settings(workload)
        cpu_ms = cpu_records[key]["results"]["tinygraph"] if key in cpu_records else None
        record["workloads"][key] = result = run_gpu_workload(workload, rounds, repeat, cpu_ms)
        print_gpu_table(workload, result)
    return record


# -- command line ------------------------------------------------------------------

def _positive_int(text):
    """argparse type for --rounds/--repeat: 0 would time nothing, a negative count breaks the statistics."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid int value: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _check_json_path(ap, path):
    """Refuse a --json PATH whose folder is missing now, not after minutes of timing."""
    if path in (None, "-"):
        return
    if os.path.isdir(path):
        ap.error(f"--json {path}: that is a folder; give a file name in it")
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        ap.error(f"--json {path}: the folder {folder} does not exist")


def parse_args(argv, prog="python -m benchmarks"):
    ap = argparse.ArgumentParser(prog=prog, description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workloads", default=",".join(WORKLOADS),
                    help="comma-separated keys among %(default)s")
    ap.add_argument("--quick", action="store_true",
                    help="2 rounds of 1 call, no E: a few seconds (an explicit --rounds/--repeat wins)")
    ap.add_argument("--skip-large", action="store_true", help="leave out workload E")
    ap.add_argument("--decomposed", action="store_true",
                    help="also time tinygraph's decomposed layers (fused=False), eager and traced, "
                         "and report decomposed/fused")
    ap.add_argument("--gpu-only", action="store_true", help="only the GPU part (B and E)")
    ap.add_argument("--rounds", type=_positive_int, help="rounds per workload, at least 1 (default 7, 3 for E)")
    ap.add_argument("--repeat", type=_positive_int, help="calls per round, at least 1 (default 3, 1 for E)")
    ap.add_argument("--json", metavar="PATH", help="write the results as JSON to PATH ('-' for stdout)")
    args = ap.parse_args(argv)
    selected = [k.strip().upper() for k in args.workloads.split(",") if k.strip()]
    unknown = [k for k in selected if k not in WORKLOADS]
    if unknown:
        ap.error(f"unknown workloads {unknown}; choose among {', '.join(WORKLOADS)}")
    if args.quick or args.skip_large:
        dropped = [k for k in selected if WORKLOADS[k].large]
        selected = [k for k in selected if not WORKLOADS[k].large]
        if dropped and not selected:  # otherwise the run would time nothing and still succeed
            flag = "--quick" if args.quick else "--skip-large"
            ap.error(f"{flag} leaves out the large workload {', '.join(dropped)}, and nothing else was "
                     f"selected; drop {flag} or choose other workloads")
    if args.gpu_only:
        selected = [k for k in selected if k in GPU_WORKLOADS]
    if not selected:   # whatever emptied it: a run that times nothing must not look like a success
        ap.error("no workload selected" + (f"; --gpu-only runs {', '.join(GPU_WORKLOADS)}" if args.gpu_only else
                                            f"; choose among {', '.join(WORKLOADS)}"))
    _check_json_path(ap, args.json)
    args.selected = selected
    return args


def settings_for(args):
    """workload -> (rounds, repeat) under the command-line options."""
    def settings(workload):
        if args.quick:
            rounds, repeat = 2, 1
        else:
            rounds, repeat = (3, 1) if workload.large else (7, 3)
        # what the user typed wins over both the defaults and --quick
        return (args.rounds if args.rounds is not None else rounds,
                args.repeat if args.repeat is not None else repeat)
    return settings


def main(argv=None, prog="python -m benchmarks"):
    args = parse_args(argv, prog)
    _REPORT[0] = sys.stderr if args.json == "-" else sys.stdout
    info = machine_info()
    log(machine_line(info))
    settings = settings_for(args)
    output = {"machine": info, "settings": {"quick": args.quick, "timer": "wall clock (time.perf_counter)",
                                            "statistic": "best over rounds of the per-round median"},
              "workloads": {}}
    if not args.gpu_only:
        for key in args.selected:
            workload = WORKLOADS[key]
            rounds, repeat = settings(workload)
            record = run_cpu_workload(workload, rounds, repeat, args.decomposed)
            output["workloads"][key] = record
            print_cpu_table(workload, record)
        if len(output["workloads"]) > 1:
            print_summary(output["workloads"])
    output["gpu"] = run_gpu(args.selected, settings, output["workloads"])
    if args.json:
        text = json.dumps(output, indent=2)
        if args.json == "-":
            print(text)
        else:
            atomic_write_text(args.json, text + "\n")
            log(f"\nwrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
