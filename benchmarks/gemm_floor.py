"""The floor of a NumPy LSTM step: its matrix products alone, against PyTorch's whole step.

tinygraph's fused LSTM kernel makes, per training step, the products any
BPTT must make: the input projection of all T steps, one product ``W h``
per step forward and one ``Wᵀ dz`` per step backward, and the weight
gradients after the loop. This script times exactly those BLAS calls, in
the kernel's layouts and nothing else: no gate math, no loss, no engine.
That is the least a step can take through NumPy's BLAS. It is set against
tinygraph's whole eager step and PyTorch's whole ``nn.LSTM`` step
(forward, summed cross-entropy, backward), round by round in one process.

    python benchmarks/gemm_floor.py [B E] [--rounds 7]

When ``products / torch`` is near 1 or above it, no rewrite of the
elementwise work or the engine brings tinygraph's step below PyTorch's on
this machine: only faster matrix products would (see BENCHMARKS.md).
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.baselines import TorchRunner, torch_module  # noqa: E402
from benchmarks.workloads import WORKLOADS, TinygraphRunner, make_data  # noqa: E402


class LstmProducts:
    """The BLAS calls of one fused LSTM training step (``models.sequence``), on preallocated arrays."""

    def __init__(self, workload, seed=0):
        w = workload
        rng = np.random.default_rng(seed)
        G, f32 = 4 * w.H, np.float32
        self.T, self.B = w.T, w.B
        self.U = rng.standard_normal((G, w.D)).astype(f32) * 0.1
        self.W = rng.standard_normal((G, w.H)).astype(f32) * 0.1
        self.WT = np.ascontiguousarray(self.W.T)
        self.xT = rng.standard_normal((w.T, w.D, w.B)).astype(f32)          # feature-major input
        self.x2 = rng.standard_normal((w.T * w.B, w.D)).astype(f32)         # batch-major rows
        self.gates = np.empty((w.T, G, w.B), f32)
        self.h = rng.standard_normal((w.H, w.B)).astype(f32)
        self.zh = np.empty((G, w.B), f32)
        self.dZ = rng.standard_normal((w.T, G, w.B)).astype(f32)
        self.Z2 = rng.standard_normal((G, w.T * w.B)).astype(f32)
        self.hs = rng.standard_normal((w.T * w.B, w.H)).astype(f32)
        self.carry = np.empty((w.H, w.B), f32)

    def step(self):
        """Forward: the projection and T step products; backward: T step products and dU, dW."""
        if self.B == 1:
            np.matmul(self.x2, self.U.T, out=self.gates.reshape(self.T, -1))
        else:
            np.matmul(self.U, self.xT, out=self.gates)
        for _ in range(self.T):
            np.dot(self.W, self.h, self.zh)
        for t in range(self.T):
            np.dot(self.WT, self.dZ[t], self.carry)
        B = self.B
        np.matmul(self.Z2, self.x2)                                                # dU
        np.matmul(self.Z2[:, B:], self.hs[B:]) + np.matmul(self.Z2[:, :B], self.hs[:B])  # dW, h0's step apart

    @property
    def gflop(self):
        T, B = self.T, self.B
        G, H = self.W.shape
        D = self.U.shape[1]
        return 2 * (2 * G * D * T * B + 3 * G * H * T * B) / 1e9


def run(key, rounds):
    w = WORKLOADS[key]
    if w.kind != "lstm":
        raise SystemExit(f"gemm_floor: {key} is not an LSTM workload (B, D and E are)")
    data = make_data(w)
    products = LstmProducts(w)
    tiny = TinygraphRunner(w, data, fused=True)
    layer_state, _ = tiny.torch_state()
    contenders = {"products": products.step, "tinygraph": tiny.step}
    if torch_module() is not None:
        contenders["torch fused"] = TorchRunner(w, data, layer_state).step
    best = {name: float("inf") for name in contenders}
    for _ in range(rounds):
        for name, fn in contenders.items():
            fn()   # untimed: the previous contender's spinning BLAS threads are not billed here
            times = []
            for _ in range(3):
                t0 = time.perf_counter()
                fn()
                times.append(time.perf_counter() - t0)
            best[name] = min(best[name], sorted(times)[1])
    print(f"{w.describe()}: {products.gflop:.2f} GFLOP of matrix products per step; "
          f"best of {rounds} rounds of the median of 3, wall ms")
    base = best.get("torch fused")
    for name, seconds in best.items():
        ratio = f"  ({seconds / base:.2f}x torch fused)" if base else ""
        rate = f", {products.gflop / seconds:.0f} GFLOP/s" if name == "products" else ""
        print(f"  {name:<12} {seconds * 1e3:9.2f} ms{rate}{ratio}")
    print(f"  tinygraph / products: {best['tinygraph'] / best['products']:.2f}")
    return best


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("workloads", nargs="*", default=["B", "E"])
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args(argv)
    if args.rounds < 1:
        parser.error(f"--rounds must be at least 1, got {args.rounds}")
    unknown = [k for k in args.workloads if k.upper() not in WORKLOADS]
    if unknown:
        parser.error(f"unknown workloads {unknown}; the LSTM ones are B, D and E")
    for key in args.workloads:
        run(key.upper(), args.rounds)


if __name__ == "__main__":
    main()
