"""``fit(..., traced=True)`` against eager ``fit`` on the same model, data and windows.

Each workload trains two copies of one model (same weights) with Adam and
truncated BPTT. One warm-up epoch each (the traced copy records its window
layouts there), then the two alternate, one timed epoch at a time; the
table gives the best epoch's time per window and the ratio traced / eager:

    python benchmarks/traced_fit.py [--rounds 5] [--batches 4] [--only NAME]

Wall time. After the warm-up both copies must have the same losses (float32
tolerance), or the script stops: the speed-up is only worth having if the
updates are the same.
"""
from __future__ import annotations

import argparse
import time

import numpy as np

import tinygraph as tg
from tinygraph import bptt
from tinygraph.models import ElmanRNN, LanguageModel
from tinygraph.optim import Adam

# name -> (model factory, one-hot inputs?, vocab, T, B, k1)
WORKLOADS = {
    "LSTM decomposed, H 32, B 1": (lambda: LanguageModel(65, 16, 32, cell="lstm", fused=False), False, 65, 100, 1, 20),
    "GRU decomposed, H 64, B 16": (lambda: LanguageModel(65, 16, 64, cell="gru", fused=False), False, 65, 100, 16, 25),
    "ElmanRNN (decomposed), H 128, B 32": (lambda: ElmanRNN(65, 128, 65, dtype="float32"), True, 65, 100, 32, 50),
    "LSTM decomposed, H 128, B 32": (lambda: LanguageModel(65, 32, 128, cell="lstm"), False, 65, 128, 32, 64),
    "LSTM fused, H 128, B 32 (the demo's)":
        (lambda: LanguageModel(65, 32, 128, cell="lstm", fused=True), False, 65, 128, 32, 64),
}


def mean_ce(outputs, targets):
    return tg.cross_entropy(outputs.reshape(-1, outputs.shape[-1]), targets.reshape(-1))


def make_data(one_hot, vocab, T, B, batches, seed=0):
    rng = np.random.default_rng(seed)
    data = []
    for _ in range(batches):
        tokens = rng.integers(0, vocab, (T + 1, B))
        xs = np.eye(vocab, dtype=np.float32)[tokens[:-1]] if one_hot else tokens[:-1]
        data.append((xs, tokens[1:]))
    return data


def run_workload(name, batches, rounds, seed=0):
    factory, one_hot, vocab, T, B, k1 = WORKLOADS[name]
    data = make_data(one_hot, vocab, T, B, batches, seed)
    runs = {}
    for traced in (False, True):
        tg.manual_seed(seed)
        model = factory()
        runs[traced] = (model, Adam(model.parameters(), lr=1e-3))

    def epoch(traced):
        model, opt = runs[traced]
        return bptt.fit(model, data, mean_ce, opt, epochs=1, k1=k1, progress=False, traced=traced)

    warm = {traced: epoch(traced).step_loss for traced in (False, True)}
    if not np.allclose(warm[True], warm[False], rtol=1e-4, atol=1e-5):
        raise SystemExit(f"{name}: traced and eager losses differ: {warm[True][:3]} vs {warm[False][:3]}")
    best = {False: float("inf"), True: float("inf")}
    for _ in range(rounds):
        for traced in (False, True):
            t0 = time.perf_counter()
            epoch(traced)
            best[traced] = min(best[traced], time.perf_counter() - t0)
    windows = batches * len(bptt.window_plan(T, k1, k1))
    return best[False] / windows * 1e3, best[True] / windows * 1e3


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--batches", type=int, default=4)
    ap.add_argument("--only", choices=sorted(WORKLOADS), help="run one workload")
    args = ap.parse_args(argv)
    print(f"{'workload':<40}{'eager ms/window':>16}{'traced ms/window':>17}{'traced/eager':>14}")
    for name in [args.only] if args.only else WORKLOADS:
        eager, traced = run_workload(name, args.batches, args.rounds)
        print(f"{name:<40}{eager:16.2f}{traced:17.2f}{traced / eager:14.2f}")


if __name__ == "__main__":
    main()
