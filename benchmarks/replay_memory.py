"""Peak memory of one training step: eager graph against traced replay, fused and decomposed.

An LSTM layer over T steps with a summed cross-entropy, forward + backward,
measured with ``tracemalloc`` (NumPy reports its buffers to it) after one
warm-up call. The replay should hold what the backward needs and no more,
as the eager graph does:

    python benchmarks/replay_memory.py [--steps 50] [--batch 16] [--input 32] [--hidden 64]
"""
from __future__ import annotations

import argparse
import tracemalloc

import numpy as np

import tinygraph as tg
from tinygraph.models import LSTM


def peak_mb(fn):
    fn()
    tracemalloc.start()
    try:
        fn()
        return tracemalloc.get_traced_memory()[1] / 1e6
    finally:
        tracemalloc.stop()


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--input", type=int, default=32)
    ap.add_argument("--hidden", type=int, default=64)
    args = ap.parse_args(argv)
    T, B, D, H = args.steps, args.batch, args.input, args.hidden
    rng = np.random.default_rng(0)
    x, y = rng.standard_normal((T, B, D)).astype("float32"), rng.integers(0, H, T * B)
    print(f"LSTM T={T} B={B} D={D} H={H}: peak MB of one training step")
    for fused in (True, False):
        tg.manual_seed(0)
        model = LSTM(D, H, fused=fused)

        def loss_fn(x, y):
            return tg.cross_entropy(model(x)[0].reshape(-1, H), y, reduction="sum")

        def eager():
            model.zero_grad()
            loss_fn(tg.tensor(x), y).backward()

        rows = {"eager": peak_mb(eager)}
        for fuse in (True, False):
            step = tg.traced_step(loss_fn, model.parameters(), fuse=fuse)
            rows[f"traced, fuse={fuse}"] = peak_mb(lambda: (model.zero_grad(), step(x, y)))
        kind = "fused" if fused else "decomposed"
        for name, mb in rows.items():
            print(f"  {kind:<11}{name:<20}{mb:8.2f} MB {mb / rows['eager']:6.2f}x eager")


if __name__ == "__main__":
    main()
