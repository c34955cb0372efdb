"""Three ways to run an LSTM layer, forward + backward over T steps.

* decomposed: the default cell, one primitive per gate op (what diagrams and
  the stepper show) — the baseline;
* fused: ``LSTM(..., fused=True)``, the whole sequence as one fused kernel with a
  closed-form VJP (tested against the decomposed cell);
* hand-written NumPy: the same forward and BPTT backward written by hand,
  the floor any Python engine is measured against.

Process CPU time, best of several rounds, ratios against the decomposed
layer measured in the same run. Run with OPENBLAS_NUM_THREADS=1.

    python benchmarks/lstm_paths.py [--steps 50] [--batch 16] [--hidden 64]
"""
import argparse

import numpy as np

import tinygraph as tg
from tinygraph.models import LSTM

from _timing import best_of


def numpy_lstm(x, U, W, b, H):
    """Forward and full BPTT of sum(h(t)) by hand, gates in PyTorch order i, f, g, o."""
    T, B, _ = x.shape
    sig = lambda z: 1 / (1 + np.exp(-z))  # noqa: E731
    h, c = np.zeros((B, H), x.dtype), np.zeros((B, H), x.dtype)
    cache = []
    for t in range(T):
        z = x[t] @ U.T + h @ W.T + b
        i, f, g, o = sig(z[:, :H]), sig(z[:, H:2 * H]), np.tanh(z[:, 2 * H:3 * H]), sig(z[:, 3 * H:])
        c_new = f * c + i * g
        tc = np.tanh(c_new)
        cache.append((h, c, i, f, g, o, tc))
        h, c = o * tc, c_new
    dU, dW, db = np.zeros_like(U), np.zeros_like(W), np.zeros_like(b)
    dh, dc = np.zeros((B, H), x.dtype), np.zeros((B, H), x.dtype)
    for t in reversed(range(T)):
        h_prev, c_prev, i, f, g, o, tc = cache[t]
        dh = dh + 1.0
        do = dh * tc
        dc = dc + dh * o * (1 - tc * tc)
        di, df, dg = dc * g, dc * c_prev, dc * i
        dz = np.concatenate([di * i * (1 - i), df * f * (1 - f), dg * (1 - g * g), do * o * (1 - o)], axis=1)
        dU += dz.T @ x[t]
        dW += dz.T @ h_prev
        db += dz.sum(0)
        dh = dz @ W
        dc = dc * f
    return dU, dW, db


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--input", type=int, default=16)
    ap.add_argument("--hidden", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=7)
    args = ap.parse_args()
    T, B, D, H = args.steps, args.batch, args.input, args.hidden
    x = np.random.default_rng(0).standard_normal((T, B, D)).astype(np.float32)

    def run_layer(fused):
        tg.manual_seed(0)
        layer = LSTM(D, H, fused=fused)

        def once():
            out, _ = layer(x)
            out.sum().backward()
        return layer, once

    decomposed, run_decomposed = run_layer(False)
    fused, run_fused = run_layer(True)
    U, W, b = (p.numpy() for p in decomposed.parameters())
    run_numpy = lambda: numpy_lstm(x, U, W, b, H)  # noqa: E731

    # the three paths compute the same gradients (fused and NumPy against decomposed)
    run_decomposed()
    reference = [p.grad.numpy() for p in decomposed.parameters()]
    run_fused()
    for a, r in zip([p.grad.numpy() for p in fused.parameters()], reference):
        assert np.allclose(a, r, atol=1e-3), "fused and decomposed gradients differ"
    for a, r in zip(numpy_lstm(x, U, W, b, H), reference):
        assert np.allclose(a, r, atol=1e-3), "hand-written and decomposed gradients differ"

    t_dec = best_of(run_decomposed, args.rounds)
    t_fused = best_of(run_fused, args.rounds)
    t_np = best_of(run_numpy, args.rounds)
    print(f"LSTM layer T={T} B={B} D={D} H={H}, float32, forward + backward, process CPU time")
    print(f"  decomposed (baseline) {t_dec * 1e3:8.2f} ms   1.00x")
    print(f"  fused kernel          {t_fused * 1e3:8.2f} ms   {t_fused / t_dec:.2f}x")
    print(f"  hand-written NumPy    {t_np * 1e3:8.2f} ms   {t_np / t_dec:.2f}x")


if __name__ == "__main__":
    main()
