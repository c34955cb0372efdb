"""Per-op overhead of tinygraph against the raw NumPy (or CuPy) call, in one run.

For each op and array size it times the bare array-module call, the same op
on Tensors that need no gradient, and on Tensors that record a graph node
(requires_grad=True). It also times one forward+backward of a small MLP and
of one RNN step against hand-written NumPy/CuPy forward+backward code.
Everything is reported as a ratio to the baseline measured in the same run,
best of several repeats (timeit), so numbers from different machines compare.

    python benchmarks/op_overhead.py            # CPU, full
    python benchmarks/op_overhead.py --quick    # fewer repeats
    python benchmarks/op_overhead.py --device cuda --quick
"""
from __future__ import annotations

import os

# One BLAS thread: spinning helper threads make CPU-time measurements of large
# matmuls on a shared machine meaningless; overhead is what is measured here.
# Set OPENBLAS_NUM_THREADS yourself to override.
for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import argparse  # noqa: E402
import platform  # noqa: E402
import time  # noqa: E402
import timeit  # noqa: E402

import numpy as np  # noqa: E402

import tinygraph as tg  # noqa: E402
from tinygraph import backend  # noqa: E402


def _timer(xp):
    """Returns best_seconds_per_call(fn).

    On the CPU it counts process CPU time, which other busy processes on a
    shared machine disturb far less than wall time; on the GPU it must be wall
    time, with a synchronisation at the end of each repeat.
    """
    if xp is np:
        sync, clock = (lambda: None), time.process_time
    else:
        sync, clock = (lambda: xp.cuda.Device().synchronize()), time.perf_counter

    def best_per_call(fn, number, repeat):
        def run():
            for _ in range(number):
                fn()
            sync()
        fn()  # warm-up (CuPy compiles kernels on first use)
        sync()
        return min(timeit.repeat(run, number=1, repeat=repeat, timer=clock)) / number

    return best_per_call


def op_cases(xp, n):
    """(name, baseline(a, b), tinygraph op(x, y)) for n x n arrays."""
    index = slice(1, n - 1)
    return [
        ("add", lambda a, b: a + b, lambda x, y: x + y),
        ("mul", lambda a, b: a * b, lambda x, y: x * y),
        ("matmul", lambda a, b: a @ b, lambda x, y: x @ y),
        ("tanh", lambda a, b: xp.tanh(a), lambda x, y: tg.tanh(x)),
        ("sum", lambda a, b: a.sum(), lambda x, y: x.sum()),
        ("getitem", lambda a, b: a[index], lambda x, y: x[index]),
    ]


def bench_ops(xp, device, sizes, number, repeat):
    best = _timer(xp)
    rows = []
    for n in sizes:
        rng = np.random.default_rng(0)
        a = xp.asarray(rng.standard_normal((n, n)).astype(np.float32))
        b = xp.asarray(rng.standard_normal((n, n)).astype(np.float32))
        x, y = tg.tensor(a, device=device), tg.tensor(b, device=device)
        xg = tg.tensor(a, device=device, requires_grad=True)
        yg = tg.tensor(b, device=device, requires_grad=True)
        reps = number if n <= 64 else max(3, number // 50)
        for name, base, op in op_cases(xp, n):
            t_np = best(lambda: base(a, b), reps, repeat)
            t_plain = best(lambda: op(x, y), reps, repeat)
            t_grad = best(lambda: op(xg, yg), reps, repeat)
            rows.append((name, f"{n}x{n}", t_np, t_plain, t_grad))
    return rows


def _mlp(xp, device, batch, dims):
    """Two-layer tanh MLP with MSE loss: hand-written vs tinygraph forward+backward."""
    rng = np.random.default_rng(1)
    d_in, d_hid, d_out = dims
    arr = lambda *s: xp.asarray(rng.standard_normal(s).astype(np.float32) * 0.3)  # noqa: E731
    X, Y, W1, b1, W2 = arr(batch, d_in), arr(batch, d_out), arr(d_in, d_hid), arr(d_hid), arr(d_hid, d_out)

    def by_hand():
        h = xp.tanh(X @ W1 + b1)
        diff = h @ W2 - Y
        loss = (diff * diff).mean()
        g_out = 2.0 * diff / diff.size
        gW2 = h.T @ g_out
        g_a = (g_out @ W2.T) * (1 - h * h)
        return loss, X.T @ g_a, g_a.sum(axis=0), gW2

    params = [tg.tensor(p, device=device, requires_grad=True) for p in (W1, b1, W2)]
    x, y = tg.tensor(X, device=device), tg.tensor(Y, device=device)

    def with_tinygraph():
        w1, c1, w2 = params
        for p in params:
            p.grad = None
        loss = tg.mse_loss(tg.tanh(x @ w1 + c1) @ w2, y)
        loss.backward()
        return loss

    return by_hand, with_tinygraph


def _rnn_step(xp, device, batch, d_in, d_hid):
    """One vanilla RNN step h = tanh(x U + h W + b) and loss sum(h): forward+backward."""
    rng = np.random.default_rng(2)
    arr = lambda *s: xp.asarray(rng.standard_normal(s).astype(np.float32) * 0.3)  # noqa: E731
    X, H, U, W, b = arr(batch, d_in), arr(batch, d_hid), arr(d_in, d_hid), arr(d_hid, d_hid), arr(d_hid)

    def by_hand():
        h = xp.tanh(X @ U + H @ W + b)
        g_a = 1 - h * h  # d sum(h) / d a
        return h.sum(), X.T @ g_a, H.T @ g_a, g_a.sum(axis=0), g_a @ W.T

    params = [tg.tensor(p, device=device, requires_grad=True) for p in (U, W, b)]
    x = tg.tensor(X, device=device)
    h0 = tg.tensor(H, device=device, requires_grad=True)

    def with_tinygraph():
        u, w, c = params
        for p in (u, w, c, h0):
            p.grad = None
        loss = tg.tanh(x @ u + h0 @ w + c).sum()
        loss.backward()
        return loss

    return by_hand, with_tinygraph


def bench_models(xp, device, number, repeat):
    best = _timer(xp)
    rows = []
    small, large = max(3, number // 4), max(3, number // 100)
    cases = [  # (name, size label, calls per repeat, (baseline, tinygraph))
        ("MLP fwd+bwd", "16x32x32x8", small, _mlp(xp, device, 16, (32, 32, 8))),
        ("MLP fwd+bwd", "256x512x512x64", large, _mlp(xp, device, 256, (512, 512, 64))),
        ("RNN step fwd+bwd", "B16 D32 H64", small, _rnn_step(xp, device, 16, 32, 64)),
        ("RNN step fwd+bwd", "B256 D256 H512", large, _rnn_step(xp, device, 256, 256, 512)),
    ]
    for name, size, reps, (base, ours) in cases:
        t_np = best(base, reps, repeat)
        t_tg = best(ours, reps, repeat)
        rows.append((name, size, t_np, t_tg))
    return rows


def _us(seconds):
    return f"{seconds * 1e6:9.1f}"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu", help="'cpu' (NumPy baseline) or 'cuda' (CuPy baseline)")
    parser.add_argument("--quick", action="store_true", help="fewer calls and repeats (a few seconds)")
    args = parser.parse_args(argv)

    xp = backend.module_for_device(args.device)
    number, repeat = (200, 3) if args.quick else (1000, 7)
    base_name = "numpy" if xp is np else "cupy"
    print(f"# tinygraph op overhead on {args.device} ({platform.processor() or platform.machine()}, "
          f"python {platform.python_version()}, numpy {np.__version__}); best of {repeat}")
    clock = "process CPU time" if xp is np else "wall time, GPU synchronised"
    print(f"# ratios are tinygraph time / raw {base_name} time, measured in this run ({clock})")
    print()
    print(f"| op | size | {base_name} us | no-grad us | no-grad ratio | recording us | recording ratio |")
    print("|---|---|---:|---:|---:|---:|---:|")
    for name, size, t_np, t_plain, t_grad in bench_ops(xp, args.device, (8, 512), number, repeat):
        print(f"| {name} | {size} | {_us(t_np)} | {_us(t_plain)} | {t_plain / t_np:6.1f}x "
              f"| {_us(t_grad)} | {t_grad / t_np:6.1f}x |")
    print()
    print(f"| forward+backward | size | hand-written {base_name} us | tinygraph us | ratio |")
    print("|---|---|---:|---:|---:|")
    for name, size, t_np, t_tg in bench_models(xp, args.device, number, repeat):
        print(f"| {name} | {size} | {_us(t_np)} | {_us(t_tg)} | {t_tg / t_np:6.1f}x |")


if __name__ == "__main__":
    main()
