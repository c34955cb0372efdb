"""Time one workload's fused sequence kernel alone: its forward and its VJP rule, on raw arrays.

This is how the per-change numbers in BENCHMARKS.md ("What changed in
session 3") were taken: no engine, no loss, just ``models.sequence``'s
``_*_forward`` and ``_*_vjp`` with every gradient requested except the
input's (as in a training step). Wall-clock best of several rounds.

To compare two versions of the code, point ``--root`` at another checkout
and alternate the two in separate processes, keeping the minimum of each
(one process per run: the BLAS threads and the allocator start fresh)::

    git worktree add /tmp/before HEAD~3
    for i in 1 2 3; do
        python benchmarks/kernel_times.py B --root /tmp/before
        python benchmarks/kernel_times.py B
    done
"""
from __future__ import annotations

import argparse
import importlib.util
import os
import sys
import time
from pathlib import Path

from _timing import best_of


def load_models(root):
    """Import ``tinygraph`` and its ``models`` package from the checkout at ``root``."""
    root = str(Path(root).resolve())
    sys.path.insert(0, root)
    import tinygraph
    if not tinygraph.__file__.startswith(root):
        raise SystemExit(f"--root {root}: imported tinygraph from {tinygraph.__file__}; "
                         "run from outside any other checkout")
    spec = importlib.util.spec_from_file_location("tinygraph.models", os.path.join(root, "models", "__init__.py"),
                                                  submodule_search_locations=[os.path.join(root, "models")])
    module = importlib.util.module_from_spec(spec)
    sys.modules["tinygraph.models"] = module
    spec.loader.exec_module(module)
    return sys.modules["tinygraph.models.sequence"]


SIZES = {  # the suite's workloads (benchmarks/workloads.py): kind, T, B, D, H
    "A": ("rnn", 50, 32, 65, 128),
    "B": ("lstm", 50, 32, 64, 256),
    "C": ("gru", 50, 32, 64, 256),
    "D": ("lstm", 20, 1, 16, 32),
    "E": ("lstm", 35, 64, 512, 1024),
}


def kernel_calls(S, kind, T, B, D, H, seed=0):
    """(forward(), vjp()) closures over seeded float32 arrays of the given sizes."""
    import numpy as np
    rng = np.random.default_rng(seed)
    f32 = np.float32
    gates = {"rnn": 1, "lstm": 4, "gru": 3}[kind]
    x = rng.standard_normal((T, B, D)).astype(f32)
    h0 = np.zeros((B, H), f32)
    U = (rng.standard_normal((gates * H, D)) * 0.1).astype(f32)
    W = (rng.standard_normal((gates * H, H)) * 0.1).astype(f32)
    b = np.zeros(gates * H, f32)
    if kind == "lstm":
        args, forward, vjp = (x, h0, h0.copy(), U, W, b), S._lstm_forward, S._lstm_vjp
        needs = (False, False, False, True, True, True)
    elif kind == "gru":
        args, forward, vjp = (x, h0, U, W, b, np.zeros(H, f32)), S._gru_forward, S._gru_vjp
        needs = (False, False, True, True, True, True)
    else:
        args, forward, vjp = (x, h0, U, W, b), S._rnn_forward, S._rnn_vjp
        needs = (False, False, True, True, True)
    result = forward(*args)
    out, residuals = result if isinstance(result, tuple) else (result, None)
    grad = np.ones_like(out)
    extra = {} if residuals is None else {"residuals": residuals}
    return (lambda: forward(*args)), (lambda: vjp(grad, out, needs, *args, **extra))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("workload", choices=sorted(SIZES), help="one of the suite's workloads")
    ap.add_argument("--root", default=str(Path(__file__).resolve().parent.parent),
                    help="the checkout whose kernels to time (default: this one)")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--calls", type=int, help="calls per round (default: about 0.2 s worth)")
    args = ap.parse_args(argv)
    S = load_models(args.root)
    kind, T, B, D, H = SIZES[args.workload]
    forward, vjp = kernel_calls(S, kind, T, B, D, H)
    calls = args.calls or {"A": 20, "B": 10, "C": 10, "D": 300, "E": 1}[args.workload]
    fwd, bwd = (1e3 * best_of(fn, args.rounds, calls, clock=time.perf_counter) for fn in (forward, vjp))
    print(f"{args.workload} ({kind} T={T} B={B} D={D} H={H}) at {args.root}: "
          f"forward {fwd:.3f} ms, vjp {bwd:.3f} ms (best of {args.rounds} rounds of {calls})")
    return fwd, bwd


if __name__ == "__main__":
    main()
