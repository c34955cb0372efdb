"""Eager vs traced replay for one LSTM step, forward + backward.

Prints the process CPU time per step of each (best of 5 rounds) and their
ratio, measured in the same run. Run with OPENBLAS_NUM_THREADS=1 for stable numbers.
    python benchmarks/replay_speed.py [--batch 8] [--hidden 32] [--repeat 300]
"""
import argparse

import numpy as np

import tinygraph as tg
from tinygraph.trace import trace

from _timing import best_of


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--input", type=int, default=16)
    ap.add_argument("--hidden", type=int, default=32)
    ap.add_argument("--repeat", type=int, default=300)
    args = ap.parse_args()
    tg.manual_seed(0)
    B, D, H = args.batch, args.input, args.hidden
    Wx = tg.randn(D, 4 * H, requires_grad=True)
    Wh = tg.randn(H, 4 * H, requires_grad=True)
    b = tg.zeros(4 * H, requires_grad=True)

    def step(x, h, c):
        z = x @ Wx + h @ Wh + b
        f, i, g, o = tg.split(z, 4, axis=1)
        c2 = tg.sigmoid(f) * c + tg.sigmoid(i) * tg.tanh(g)
        h2 = tg.sigmoid(o) * tg.tanh(c2)
        return (h2 * h2).sum() + c2.sum()

    arrays = [np.random.default_rng(1).standard_normal((B, n)).astype(np.float32) for n in (D, H, H)]
    tensors = [tg.tensor(a, requires_grad=True) for a in arrays]

    def eager():
        step(*tensors).backward()

    compiled = trace(step, *arrays, params=[Wx, Wh, b])
    one = np.ones((), np.float32)

    def replay():
        compiled(*arrays)
        compiled.backward(one)

    t_eager = best_of(eager, repeat=args.repeat)
    t_replay = best_of(replay, repeat=args.repeat)
    print(f"LSTM step B={B} D={D} H={H}, forward+backward, {len(compiled)} primitives")
    print(f"  eager   {t_eager * 1e6:9.1f} us/step   (baseline)")
    print(f"  replay  {t_replay * 1e6:9.1f} us/step   ratio {t_replay / t_eager:.2f}x of eager")


if __name__ == "__main__":
    main()
