"""The textbook ElmanRNN, decomposed (its default) and fused, eager and traced.

A decomposed model records every a, h, o of every step; traced, trace-time
fusion (``tinygraph.fusion``) replays it as the fused kernel. This times
one training step (forward, summed cross-entropy, backward) five ways in one
run, as ratios to the fused model's eager step:

    python benchmarks/trace_fusion.py [--steps 50] [--batch 32] [--vocab 65] [--hidden 128]

Wall time, best of 5 rounds; the machine's other work moves absolute times.
"""
from __future__ import annotations

import argparse
import time

import numpy as np

import tinygraph as tg
from tinygraph.models import ElmanRNN

from _timing import best_of


def runners(T, B, K, H, seed=0):
    """Name -> one training step, plus the decomposed model's traced step (for its ``fused`` report)."""
    tg.manual_seed(seed)
    rng = np.random.default_rng(seed)
    x = tg.tensor(np.eye(K, dtype=np.float32)[rng.integers(0, K, (T, B))])
    y = rng.integers(0, K, T * B)
    decomposed, fused = ElmanRNN(K, H, K, dtype="float32"), ElmanRNN(K, H, K, fused=True, dtype="float32")
    fused.load_state_dict(decomposed.state_dict())

    def loss_of(model):
        return lambda x, y: tg.cross_entropy(model(x)[0].reshape(-1, K), y, reduction="sum")

    def eager(model):
        def run():
            model.zero_grad()
            loss_of(model)(x, y).backward()
        return run

    def traced(model, fuse=True):
        step = tg.traced_step(loss_of(model), model.parameters(), fuse=fuse)

        def run():
            model.zero_grad()
            step(x, y)
        run()  # the trace itself is not timed
        return run, step

    dec_traced, step = traced(decomposed)
    return {"fused eager": eager(fused), "fused traced": traced(fused)[0],
            "decomposed eager": eager(decomposed), "decomposed traced": dec_traced,
            "decomposed replay (fuse=False)": traced(decomposed, fuse=False)[0]}, step


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--vocab", type=int, default=65)
    ap.add_argument("--hidden", type=int, default=128)
    ap.add_argument("--repeat", type=int, default=20)
    args = ap.parse_args(argv)
    steps, step = runners(args.steps, args.batch, args.vocab, args.hidden)
    times = {name: best_of(run, repeat=args.repeat, clock=time.perf_counter) * 1e3 for name, run in steps.items()}
    base = times["fused eager"]
    print(f"ElmanRNN({args.vocab}, {args.hidden}, {args.vocab}) T={args.steps} B={args.batch}; "
          f"fused at trace time: {step.fused}")
    for name, ms in times.items():
        print(f"  {name:<32}{ms:9.2f} ms {ms / base:6.2f}x fused eager")


if __name__ == "__main__":
    main()
