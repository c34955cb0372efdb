"""The copy task: remember 10 symbols across T blank steps, then write them out.

Inputs: 10 symbols from an alphabet of 8, T-1 blanks, a delimiter, 10 blanks.
Targets: T+10 blanks, then the 10 symbols. The loss is the mean cross-entropy
over all T+20 steps; a memoryless model that outputs blanks and then guesses
scores 10 ln 8 / (T+20) (Arjovsky, Shah & Bengio 2016).

    python examples/copy_task.py --T 20 --steps 4000
"""
from __future__ import annotations

import time

import numpy as np

import _common
import tinygraph as tg
from tinygraph import data, nn, optim
from tinygraph.models import GRU, LSTM, RNN

LAYERS = {"rnn": RNN, "lstm": LSTM, "gru": GRU}
N_SYMBOLS, COPY_LEN = 8, 10
N_CLASSES = N_SYMBOLS + 2  # blank, 8 symbols, delimiter
# --quick: the defaults of a seconds-long run; options given explicitly still win
QUICK = dict(T=5, steps=40, hidden=16, batch=16, lr=1e-2)


class CopyModel(nn.Module):
    """Embed each input symbol, run the recurrence, classify every step."""

    def __init__(self, cell, hidden_size, embedding_dim=16):
        super().__init__()
        self.embed = nn.Embedding(N_CLASSES, embedding_dim)
        self.rnn = LAYERS[cell](embedding_dim, hidden_size, fused=True)  # training speed: fused kernels
        self.head = nn.Linear(hidden_size, N_CLASSES)

    def forward(self, tokens, state=None):
        out, state = self.rnn(self.embed(tokens), state)
        return self.head(out), state


def mean_cross_entropy(logits, targets):
    return tg.cross_entropy(logits, targets)


def recall_accuracy(logits, targets):
    """Fraction of the 10 symbols copied correctly (the steps that need memory)."""
    pred = np.asarray(logits.data).argmax(-1)
    return float((pred[-COPY_LEN:] == np.asarray(targets)[-COPY_LEN:]).mean())


def build_parser():
    p = _common.make_parser(__doc__.splitlines()[0], script=__file__)
    p.add_argument("--T", type=int, default=20, help="number of blank steps to remember across")
    p.add_argument("--steps", type=_common.positive_int, default=4000, help="training steps per model")
    p.add_argument("--batch", type=int, default=50)
    p.add_argument("--hidden", type=int, default=64)
    p.add_argument("--lr", type=float, default=1e-3, help="RMSprop learning rate")
    p.add_argument("--clip", type=float, default=1.0)
    p.add_argument("--cells", type=_common.name_list(tuple(LAYERS), "cell"), default="rnn,lstm,gru",
                   help="comma-separated: rnn, lstm, gru")
    return p


def recall_loss(logits, targets):
    """The loss on the last COPY_LEN steps only: where the model must write what it saw first."""
    return tg.cross_entropy(logits[-COPY_LEN:], targets[-COPY_LEN:])


def train_one(cell, args, rng):
    model = CopyModel(cell, args.hidden)
    opt = optim.RMSprop(model.parameters(), lr=args.lr)
    x_eval, y_eval = data.copy_task(500, args.T, seed=args.seed + 1)
    eval_every = max(args.steps // 20, 1)
    history = {"step": [], "train_loss": [], "eval_loss": [], "recall": []}
    with _common.Progress(args.steps, desc=f"{cell:>4}") as bar:
        for step in range(1, args.steps + 1):
            x, y = data.copy_task(args.batch, args.T, rng=rng)
            opt.zero_grad()
            logits, _ = model(x)
            loss = mean_cross_entropy(logits, y)
            loss.backward()
            optim.clip_grad_norm(model.parameters(), args.clip)
            opt.step()
            if step % eval_every == 0 or step in (1, args.steps):
                with tg.no_grad():
                    ev_logits, _ = model(x_eval)
                    history["eval_loss"].append(_common.scalar(mean_cross_entropy(ev_logits, y_eval)))
                history["step"].append(step)
                history["train_loss"].append(_common.scalar(loss))
                history["recall"].append(recall_accuracy(ev_logits, y_eval))
            bar.update(loss=_common.scalar(loss), eval=history["eval_loss"][-1])
    return model, history


def main(argv=None):
    args = _common.parse_args(build_parser(), argv, QUICK)
    rng, out = _common.setup(args)
    baseline = data.copy_task_baseline(args.T)
    print(f"copy task: T={args.T} ({args.T + 20} steps), hidden={args.hidden}, {args.steps} steps of batch "
          f"{args.batch}; memoryless baseline = 10 ln 8 / (T+20) = {baseline:.4f}")
    start = time.perf_counter()
    histories, models = {}, {}
    for cell in args.cells:
        tg.manual_seed(args.seed)
        models[cell], histories[cell] = train_one(cell, args, rng)
        h = histories[cell]
        print(f"{cell}: eval loss {h['eval_loss'][-1]:.4f}, symbols recalled {100 * h['recall'][-1]:.1f}%")
    elapsed = time.perf_counter() - start

    pictures = [_common.plot_lines(
        {c: (h["step"], h["eval_loss"]) for c, h in histories.items()}, out / "copy_loss.png",
        title=f"Copy task, T={args.T}", xlabel="training step", ylabel="eval cross-entropy per step",
        hlines={"memoryless baseline": baseline}, logy=True)]
    flow_models = {f"{c.upper()}, trained": m for c, m in models.items()}
    for cell in LAYERS:  # untrained models of every kind, for reference
        tg.manual_seed(args.seed)
        flow_models[f"{cell.upper()}, untrained"] = CopyModel(cell, args.hidden)
    gf_path, curves = _common.gradient_flow_picture(
        flow_models, lambda: data.copy_task(args.batch, args.T, seed=args.seed + 2), recall_loss,
        out / "copy_gradient_flow.png", title="‖∂L/∂h(t)‖ with the loss on the recall steps")
    pictures.append(gf_path)
    final = {c: h["eval_loss"][-1] for c, h in histories.items()}
    best = min(final, key=final.get)
    summary = _common.finish(out, {
        "task": "copy_task", "T": args.T, "steps": args.steps, "seconds": elapsed, "baseline": baseline,
        "eval_loss": final, "recall": {c: h["recall"][-1] for c, h in histories.items()},
        "loss_history": {c: h["train_loss"] for c, h in histories.items()}, "eval_history": histories,
        "gradient_flow": {k: v.tolist() for k, v in curves.items()},
    }, pictures)
    _common.result(f"{best} eval cross-entropy (T={args.T})", final[best], "memoryless baseline", baseline,
                   extra=", ".join(f"{c} {v:.4f}" for c, v in final.items()) + f"; {elapsed:.0f}s")
    return summary


if __name__ == "__main__":
    main()
