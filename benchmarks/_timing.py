"""Timing shared by the benchmarks: process CPU time, best of several rounds.

CPU time rather than wall time because these machines are shared: other jobs
stretch wall time, not the CPU time this process spends.
"""
import time


def best_of(fn, rounds=5, repeat=1):
    """Seconds per call of ``fn``: the best of ``rounds`` rounds of ``repeat`` calls."""
    best = float("inf")
    for _ in range(rounds):
        t0 = time.process_time()
        for _ in range(repeat):
            fn()
        best = min(best, (time.process_time() - t0) / repeat)
    return best
