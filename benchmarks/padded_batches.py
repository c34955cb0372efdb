"""Training steps on padded batches (``lengths=``): the fused kernels against the step-by-step recording.

A padded batch (sentences of different lengths, padded to the longest) runs
through ``RNN/LSTM/GRU(..., fused=True)`` as one fused kernel per direction
on the CPU: the final state is taken at each row's own last step, and the
backward direction runs on each row's reversed prefix. This script times one
training step (forward, summed cross-entropy over the valid steps, backward)
of that path, and in the same process the step-by-step recording of the same
model on the same batch (``tg.decomposed()``), and prints the ratio:

    python benchmarks/padded_batches.py                      # LSTM, GRU, RNN; one and two directions
    python benchmarks/padded_batches.py --root /tmp/before   # another checkout's tinygraph (A/B of a change)
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", default=str(Path(__file__).resolve().parent.parent),
                        help="the checkout whose tinygraph to time (default: this one)")
    parser.add_argument("--steps", type=int, default=40, help="padded length T")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--input", type=int, default=64)
    parser.add_argument("--hidden", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args(argv)
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from _timing import best_of
    from kernel_times import load_models
    load_models(args.root)   # tinygraph and its models package from that checkout
    import numpy as np

    import tinygraph as tg
    from tinygraph.models import GRU, LSTM, RNN, decomposed

    rng = np.random.default_rng(0)
    T, B = args.steps, args.batch
    x = rng.standard_normal((T, B, args.input)).astype(np.float32)
    lengths = rng.integers(max(1, T // 4), T + 1, size=B)
    lengths[0] = T
    mask = np.arange(T)[:, None] < lengths[None, :]
    targets = rng.integers(0, args.hidden, size=(T, B))
    print(f"padded batch T={T} B={B} D={args.input} H={args.hidden}, lengths {lengths.min()}-{lengths.max()} "
          f"(mean {lengths.mean():.1f}); tinygraph from {Path(tg.__file__).resolve().parent.parent}")
    for layer in (LSTM, GRU, RNN):
        for bidirectional in (False, True):
            model = layer(args.input, args.hidden, bidirectional=bidirectional, fused=True)

            def step():
                for p in model.parameters():
                    p.grad = None
                out, _ = model(tg.tensor(x), lengths=lengths)
                logits = out[..., :args.hidden]
                tg.cross_entropy(logits, targets, mask=mask, reduction="sum").backward()

            def step_by_step():
                with decomposed():
                    step()

            times = {"fused": float("inf"), "step by step": float("inf")}
            for _ in range(args.rounds):   # alternate, so a drift of the machine hits both
                times["fused"] = min(times["fused"], best_of(step, 1, 3, time.perf_counter))
                times["step by step"] = min(times["step by step"], best_of(step_by_step, 1, 1, time.perf_counter))
            name = layer.__name__ + (" bidirectional" if bidirectional else "")
            ratio = times["step by step"] / times["fused"]
            print(f"  {name:18s} fused {times['fused'] * 1e3:8.2f} ms   step by step "
                  f"{times['step by step'] * 1e3:8.2f} ms   step-by-step/fused {ratio:5.2f}")


if __name__ == "__main__":
    main()
