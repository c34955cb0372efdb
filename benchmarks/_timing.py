"""Timing shared by the benchmarks: process CPU time, best of several rounds.

CPU time rather than wall time because these machines are shared: other jobs
stretch wall time, not the CPU time this process spends.
"""
import time


def best_of(fn, rounds=5, repeat=1, clock=time.process_time):
    """Seconds per call of ``fn``: the best of ``rounds`` rounds of ``repeat`` calls.

    ``clock=time.perf_counter`` for wall time, where the work is spread over
    BLAS threads (process time would add the threads up).
    """
    best = float("inf")
    for _ in range(rounds):
        t0 = clock()
        for _ in range(repeat):
            fn()
        best = min(best, (clock() - t0) / repeat)
    return best
