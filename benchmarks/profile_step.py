"""Where one training step's time goes: cProfile of tinygraph's step on a workload.

    python -m benchmarks.profile_step B              # CPU, fused layer
    python -m benchmarks.profile_step B --decomposed # every gate an op
    python -m benchmarks.profile_step B --device cuda

Prints the functions with the most own time (``tottime``) over ``--steps``
steps after one warm-up step, and the wall time per step without the
profiler. On CUDA the profile is the host side (launch overhead); the step
ends with a device synchronisation so the wall time includes the GPU work.
"""
from __future__ import annotations

import argparse
import cProfile
import io
import pstats
import time

from .workloads import WORKLOADS, TinygraphRunner, make_data


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("workload", choices=sorted(WORKLOADS))
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--decomposed", action="store_true")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--top", type=int, default=20)
    args = parser.parse_args(argv)
    workload = WORKLOADS[args.workload]
    runner = TinygraphRunner(workload, make_data(workload), fused=not args.decomposed, device=args.device)
    if args.device != "cpu":
        import cupy

        def step():
            runner.step()
            cupy.cuda.Device().synchronize()
    else:
        step = runner.step
    step()
    start = time.perf_counter()
    for _ in range(args.steps):
        step()
    wall = (time.perf_counter() - start) / args.steps
    profile = cProfile.Profile()
    profile.enable()
    for _ in range(args.steps):
        step()
    profile.disable()
    out = io.StringIO()
    pstats.Stats(profile, stream=out).sort_stats("tottime").print_stats(args.top)
    print(f"{workload.key} on {args.device} ({runner.label}): {wall * 1e3:.2f} ms per step without the profiler")
    print(out.getvalue())


if __name__ == "__main__":
    main()
