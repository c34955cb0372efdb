"""Peak memory of full BPTT vs truncated BPTT as the sequence grows.

Full BPTT keeps the whole unrolled graph alive until backward, so its peak
memory grows linearly with the sequence length T. TBPTT(k, k) backpropagates
every k steps and cuts the graph at the window edge, so its peak stays at
one window's graph: O(k), whatever T is. Peak memory is measured with
``tracemalloc`` (Python allocations, which include NumPy's buffers), one run
per setting; time is the process CPU time (``time.process_time``) of a
separate run without tracemalloc: on a shared machine wall-clock time mostly
measures the neighbours.

    python benchmarks/tbptt_memory.py            # T = 1,000 ... 20,000
    python benchmarks/tbptt_memory.py --quick    # T = 500 ... 2,000
    python benchmarks/tbptt_memory.py --full-max 5000   # skip full BPTT above T = 5,000
"""
from __future__ import annotations

import argparse
import platform
import time
import tracemalloc

import numpy as np

import tinygraph as tg
from tinygraph import bptt
from tinygraph.models import ElmanRNN


def make_problem(T, batch, inputs, classes, seed=0):
    rng = np.random.default_rng(seed)
    xs = rng.standard_normal((T, batch, inputs)).astype(np.float32)
    ys = rng.integers(0, classes, (T, batch))
    return xs, ys


def run_once(T, k, args, measure_memory):
    """(peak bytes or None, CPU seconds) of one backprop_through_time call."""
    xs, ys = make_problem(T, args.batch, args.inputs, args.classes)
    tg.manual_seed(0)
    model = ElmanRNN(args.inputs, args.hidden, args.classes)

    def loss_fn(outputs, targets):
        return tg.cross_entropy(outputs, targets, reduction="sum")

    if measure_memory:
        tracemalloc.start()
    start = time.process_time()
    try:
        bptt.backprop_through_time(model, xs, ys, loss_fn, k1=k, k2=k)
        seconds = time.process_time() - start
        peak = tracemalloc.get_traced_memory()[1] if measure_memory else None
    finally:
        if measure_memory:
            tracemalloc.stop()
    return peak, seconds


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="T = 500, 1000, 2000 only")
    parser.add_argument("--k", type=int, default=50, help="TBPTT window, k1 = k2 (default 50)")
    parser.add_argument("--full-max", type=int, default=20000, help="largest T to run full BPTT on")
    parser.add_argument("--hidden", type=int, default=32)
    parser.add_argument("--inputs", type=int, default=8)
    parser.add_argument("--classes", type=int, default=8)
    parser.add_argument("--batch", type=int, default=8)
    args = parser.parse_args(argv)

    lengths = [500, 1000, 2000] if args.quick else [1000, 2000, 5000, 10000, 20000]
    print(f"# TBPTT memory: ElmanRNN(D={args.inputs}, H={args.hidden}, K={args.classes}), "
          f"batch {args.batch}, float32, k = {args.k}")
    print(f"# python {platform.python_version()}, numpy {np.__version__}, {platform.machine()}\n")
    print("| T | full BPTT peak (MiB) | full CPU time (s) | TBPTT(k,k) peak (MiB) | TBPTT CPU time (s) "
          "| full / TBPTT |")
    print("|---:|---:|---:|---:|---:|---:|")
    for T in lengths:
        cells = [f"{T:,}"]
        full_peak = None
        if T <= args.full_max:
            full_peak, _ = run_once(T, None, args, measure_memory=True)
            _, full_time = run_once(T, None, args, measure_memory=False)
            cells += [f"{full_peak / 2**20:.2f}", f"{full_time:.2f}"]
        else:
            cells += ["skipped", "-"]
        trunc_peak, _ = run_once(T, args.k, args, measure_memory=True)
        _, trunc_time = run_once(T, args.k, args, measure_memory=False)
        cells += [f"{trunc_peak / 2**20:.2f}", f"{trunc_time:.2f}"]
        cells.append(f"{full_peak / trunc_peak:.1f}x" if full_peak else "-")
        print("| " + " | ".join(cells) + " |", flush=True)


if __name__ == "__main__":
    main()
