"""Output-to-hidden recurrence (Jordan network) trained with teacher forcing vs free running.

The only recurrence is from the output o(t-1) back into the hidden state, so
what the network "remembers" is what it said. Task: count in steps of k
modulo K, y(t) = (y(t-1) + k) mod K, from a start symbol given at t = 0 and
the step k given at every step. The next output depends only on the last
one, exactly what the output recurrence carries.

- Teacher forcing: during training step t receives the true y(t-1) (one-hot),
  so every step's loss decouples from the others and training is fast.
- Free running: step t receives the model's own softmax output, as at test
  time; gradients flow back through the fed-back outputs.

Both are evaluated free running (as they will be used): per-step accuracy of
generated sequences, against always predicting the most frequent symbol.

    python examples/jordan_teacher_forcing.py --iters 600
"""
from __future__ import annotations

import time

import numpy as np

import _common
import tinygraph as tg
from tinygraph import optim
from tinygraph.models import JordanRNN


# --quick: the defaults of a seconds-long run; options given explicitly still win
QUICK = dict(T=6, iters=40, hidden=16)


def counting_task(n, T, K, strides, rng):
    """Inputs (T, n, len(strides) + K) and targets (T, n): count from a start symbol in steps of k."""
    start = rng.integers(0, K, size=n)
    which = rng.integers(0, len(strides), size=n)
    k = np.asarray(strides)[which]
    targets = (start[None, :] + k[None, :] * np.arange(T)[:, None]) % K
    x = np.zeros((T, n, len(strides) + K), dtype=np.float32)
    x[:, np.arange(n), which] = 1.0               # the step size, at every step
    x[0, np.arange(n), len(strides) + start] = 1.0  # the start symbol, at t = 0 only
    return x, targets.astype(np.int64)


def free_running_accuracy(model, x, y):
    model.eval()
    with tg.no_grad():
        logits, _ = model(x)
    model.train()
    return float((np.asarray(logits.data).argmax(-1) == y).mean())


def build_parser():
    p = _common.make_parser(__doc__.splitlines()[0], script=__file__)
    p.add_argument("--T", type=int, default=12, help="sequence length")
    p.add_argument("--K", type=int, default=7, help="number of symbols")
    p.add_argument("--hidden", type=int, default=32)
    p.add_argument("--iters", type=_common.positive_int, default=600, help="training steps per mode")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--lr", type=float, default=1e-2, help="Adam learning rate")
    return p


def main(argv=None):
    args = _common.parse_args(build_parser(), argv, QUICK)
    rng, out = _common.setup(args)
    strides = (1, 2, 3)
    x_test, y_test = counting_task(500, args.T, args.K, strides, np.random.default_rng(args.seed + 1))
    baseline = float(np.max(np.bincount(y_test.ravel())) / y_test.size)
    print(f"Jordan network, counting task: T={args.T}, K={args.K}, steps k in {strides}, hidden {args.hidden}, "
          f"{args.iters} steps of batch {args.batch}; most-frequent-symbol baseline {100 * baseline:.1f}%")
    start = time.perf_counter()
    histories, accuracy = {}, {}
    for mode in ("teacher forcing", "free running"):
        tg.manual_seed(args.seed)
        model = JordanRNN(len(strides) + args.K, args.hidden, args.K, teacher_forcing=mode == "teacher forcing")
        opt = optim.Adam(model.parameters(), lr=args.lr)
        data_rng = np.random.default_rng(args.seed)
        eval_every = max(args.iters // 20, 1)
        h = {"step": [], "train_loss": [], "free_running_acc": []}
        with _common.Progress(args.iters, desc=mode) as bar:
            for step in range(1, args.iters + 1):
                x, y = counting_task(args.batch, args.T, args.K, strides, data_rng)
                opt.zero_grad()
                logits, _ = model(x, targets=y)
                loss = tg.cross_entropy(logits, y)
                loss.backward()
                optim.clip_grad_norm(model.parameters(), 5.0)
                opt.step()
                if step % eval_every == 0 or step in (1, args.iters):
                    h["step"].append(step)
                    h["train_loss"].append(_common.scalar(loss))
                    h["free_running_acc"].append(free_running_accuracy(model, x_test, y_test))
                bar.update(loss=_common.scalar(loss), acc=h["free_running_acc"][-1])
        histories[mode], accuracy[mode] = h, h["free_running_acc"][-1]
        reached = next((s for s, a in zip(h["step"], h["free_running_acc"]) if a >= 0.95), None)
        h["steps_to_95"] = reached
        print(f"{mode}: final training loss {h['train_loss'][-1]:.4f}, "
              f"free-running test accuracy {100 * accuracy[mode]:.1f}%, "
              + (f"95% reached after {reached} steps" if reached else "95% not reached"))
    elapsed = time.perf_counter() - start

    pictures = [
        _common.plot_lines({m: (h["step"], h["train_loss"]) for m, h in histories.items()},
                           out / "jordan_train_loss.png", title="Training loss (as each mode trains)",
                           xlabel="training step", ylabel="cross-entropy", logy=True),
        _common.plot_lines({m: (h["step"], [100 * a for a in h["free_running_acc"]]) for m, h in histories.items()},
                           out / "jordan_free_running_accuracy.png", title="Test accuracy, free running",
                           xlabel="training step", ylabel="accuracy (%)",
                           hlines={"most frequent symbol": 100 * baseline}),
    ]
    best = max(accuracy, key=accuracy.get)
    summary = _common.finish(out, {
        "task": "jordan_teacher_forcing", "T": args.T, "K": args.K, "iters": args.iters, "seconds": elapsed,
        "baseline_accuracy": baseline, "free_running_accuracy": accuracy,
        "loss_history": {m: h["train_loss"] for m, h in histories.items()}, "histories": histories,
    }, pictures)
    _common.result(f"free-running accuracy ({best})", 100 * accuracy[best], "most-frequent-symbol baseline",
                   100 * baseline, better="higher", unit="%",
                   extra=", ".join(f"{m} {100 * a:.1f}% (95% after {histories[m]['steps_to_95']} steps)"
                                   for m, a in accuracy.items()) + f"; {elapsed:.0f}s")
    return summary


if __name__ == "__main__":
    main()
