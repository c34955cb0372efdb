"""Would the fused LSTM's CPU time loop gain from splitting the batch over Python threads?

Batch rows never meet inside a recurrent layer, so each half of the batch
could run the whole T-step loop on its own thread (NumPy's ufuncs and BLAS
release the GIL), with OpenBLAS held to one thread per caller. This script
measures that idea against what ``models.sequence`` does (the full batch on
one thread, OpenBLAS using its own threads for the step GEMM), in one
process, alternating the two, on the forward loop of ``models.kernels``:

    python benchmarks/batch_threads.py                 # B and E sizes
    python benchmarks/batch_threads.py --hidden 256 --batch 32

It also times a control: two threads each running a long ``np.tanh`` (one
call of ~100 ms work), which shows whether the machine's cores run two
threads at once at all. Session 4 found the split 1.4-1.7x faster in one
hour and 0.6-0.9x in the next on the same 2-core machine (BENCHMARKS.md,
"Tried and dropped"): each short NumPy call hands the GIL over, and how much
a hand-over costs depends on how fast the hypervisor wakes the other vCPU.
That is why the library does not split.
"""
from __future__ import annotations

import argparse
import ctypes
import os
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from models.kernels import NumpyKernels, per_step  # noqa: E402  (the checkout's kernels, installed or not)

from _timing import best_of  # noqa: E402


def openblas_local_setter():
    """``openblas_set_num_threads_local`` of the OpenBLAS that NumPy loaded (OpenBLAS 0.3.27+), or None."""
    from tinygraph.backend import openblas_libraries
    for path in openblas_libraries():
        try:
            setter = ctypes.CDLL(path).openblas_set_num_threads_local
        except (OSError, AttributeError):
            continue
        setter.argtypes, setter.restype = [ctypes.c_int], ctypes.c_int
        return setter
    return None


def forward_loop(W, pre, hidden):
    """The fused LSTM's CPU forward loop (feature-major) over pre-activations ``pre`` (T, 4H, B)."""
    T, _, B = pre.shape
    gates = pre.copy()
    cs, tcs, hs = (np.empty((T, hidden, B), pre.dtype) for _ in range(3))
    ws = NumpyKernels.lstm_workspace(B, hidden, pre.dtype)
    zh = np.empty((4 * hidden, B), pre.dtype)
    h, c = np.zeros((hidden, B), pre.dtype), np.zeros((hidden, B), pre.dtype)
    for a_t, c_t, tc_t, h_t in per_step(range(T), gates, cs, tcs, hs):
        np.dot(W, h, zh)
        NumpyKernels.lstm_forward(a_t, zh, c, c_t, tc_t, h_t, ws)
        h, c = h_t, c_t
    return hs


def compare(hidden, batch, steps, rounds, setter, pool):
    """(full-batch ms, split ms): best-of-rounds wall time of the forward loop, alternating the two."""
    rng = np.random.default_rng(0)
    W = (rng.standard_normal((4 * hidden, hidden)) * 0.05).astype(np.float32)
    pre = (rng.standard_normal((steps, 4 * hidden, batch)) * 0.5).astype(np.float32)
    half = batch // 2
    halves = [np.ascontiguousarray(pre[:, :, :half]), np.ascontiguousarray(pre[:, :, half:])]

    def split():
        other = pool.submit(forward_loop, W, halves[1], hidden)
        setter(1)
        try:
            mine = forward_loop(W, halves[0], hidden)
        finally:
            setter(0)   # back to OpenBLAS's process-wide count
        return mine, other.result()

    mine, theirs = split()
    reference = forward_loop(W, pre, hidden)
    assert np.allclose(np.concatenate([mine, theirs], axis=2), reference, atol=1e-5), "split and full disagree"
    best = {"full": float("inf"), "split": float("inf")}
    for _ in range(rounds):   # alternate, so a drift of the machine hits both sides
        best["full"] = min(best["full"], best_of(lambda: forward_loop(W, pre, hidden), 1, 3, time.perf_counter))
        best["split"] = min(best["split"], best_of(split, 1, 3, time.perf_counter))
    return best["full"] * 1e3, best["split"] * 1e3


def control_tanh():
    """Speed-up of two threads each running one long ufunc over one thread running both (2.0 = two real cores)."""
    a, b = np.random.rand(2, 4_000_000).astype(np.float32)
    out_a, out_b = np.empty_like(a), np.empty_like(b)
    serial = best_of(lambda: (np.tanh(a, out_a), np.tanh(b, out_b)), 3, 1, time.perf_counter)

    def both():
        other = threading.Thread(target=np.tanh, args=(b, out_b))
        other.start()
        np.tanh(a, out_a)
        other.join()

    return serial / best_of(both, 3, 1, time.perf_counter)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hidden", type=int, action="append", help="hidden size (repeatable; default: B's and E's)")
    parser.add_argument("--batch", type=int, action="append", help="batch size, one per --hidden")
    parser.add_argument("--steps", type=int, default=None, help="time steps (default: the workload's T)")
    parser.add_argument("--rounds", type=int, default=4)
    args = parser.parse_args(argv)
    sizes = list(zip(args.hidden, args.batch)) if args.hidden else [(256, 32), (1024, 64)]
    if args.hidden and len(args.hidden) != len(args.batch or ()):
        parser.error("give one --batch per --hidden")
    setter = openblas_local_setter()
    if setter is None:
        raise SystemExit("this NumPy's BLAS has no openblas_set_num_threads_local (OpenBLAS 0.3.27+): "
                         "nothing to compare")
    print(f"cores usable: {len(os.sched_getaffinity(0))}; control (two long tanh calls on two threads): "
          f"{control_tanh():.2f}x the serial speed")
    with ThreadPoolExecutor(1, initializer=lambda: setter(1)) as pool:
        for hidden, batch in sizes:
            steps = args.steps or (50 if hidden <= 256 else 35)
            full, split = compare(hidden, batch, steps, args.rounds, setter, pool)
            print(f"LSTM forward loop H={hidden} B={batch} T={steps}: full batch {full:.2f} ms, "
                  f"split over 2 threads {split:.2f} ms, full/split {full / split:.2f}")


if __name__ == "__main__":
    main()
