"""The adding problem: a long-range dependency a tanh RNN cannot learn and an LSTM/GRU can.

Each sequence has T steps of two channels: a value in U[0, 1] and a marker;
one marker falls in each half, and the target is the sum of the two marked
values (Arjovsky, Shah & Bengio 2016). Predicting the mean scores MSE 1/6,
the baseline. The gradient-flow plot shows why: the RNN's ‖∂L/∂h(t)‖ dies
away from the last step, the gated cells' does not.

    python examples/adding_problem.py --T 50 --steps 1500
    python examples/adding_problem.py --T 100 --cells gru
    python examples/adding_problem.py --traced     # the same training through tg.traced_step
    python examples/adding_problem.py --traced --decomposed   # gate-by-gate layers, fused when traced

Every batch has the same shape, so ``--traced`` records the loss once per
model and replays it (``tg.traced_step``): the same updates, less Python.
``--decomposed`` builds the layers with every gate recorded (``fused=False``);
traced, each sweep still replays as the fused kernel (``tinygraph.fusion``),
and the script prints what the trace fused.
"""
from __future__ import annotations

import time

import _common
import tinygraph as tg
from tinygraph import data, nn, optim
from tinygraph.models import GRU, LSTM, RNN

LAYERS = {"rnn": RNN, "lstm": LSTM, "gru": GRU}
# --quick: the defaults of a seconds-long run; options given explicitly still win
QUICK = dict(T=10, steps=40, hidden=16, batch=20, eval_size=200, lr=1e-2)


class AddingModel(nn.Module):
    """A recurrent layer read out by a linear map at every step (the last one is scored)."""

    def __init__(self, cell, hidden_size, forget_bias=None, fused=True):
        super().__init__()
        options = {"forget_bias": forget_bias} if cell == "lstm" and forget_bias is not None else {}
        self.rnn = LAYERS[cell](2, hidden_size, fused=fused, **options)  # fused: one kernel per sweep
        self.head = nn.Linear(hidden_size, 1)

    def forward(self, x, state=None):
        out, state = self.rnn(x, state)
        return self.head(out), state


def name(cell):
    return "RNN (tanh)" if cell == "rnn" else cell.upper()


def last_step_mse(outputs, targets):
    return tg.mse_loss(outputs[-1], targets)


def build_parser():
    p = _common.make_parser(__doc__.splitlines()[0], script=__file__)
    p.add_argument("--T", type=int, default=50, help="sequence length")
    p.add_argument("--steps", type=_common.positive_int, default=1500, help="training steps per model")
    p.add_argument("--batch", type=int, default=50)
    p.add_argument("--hidden", type=int, default=128)
    p.add_argument("--lr", type=float, default=1e-3, help="RMSprop learning rate")
    p.add_argument("--clip", type=float, default=1.0, help="gradient-norm clip")
    p.add_argument("--cells", type=_common.name_list(tuple(LAYERS), "cell"), default="rnn,lstm,gru",
                   help="comma-separated: rnn, lstm, gru")
    p.add_argument("--eval-size", type=int, default=1000)
    p.add_argument("--forget-bias", type=float, default=None,
                   help="LSTM forget-gate bias at initialisation (1.0 is the usual remedy)")
    p.add_argument("--traced", action="store_true",
                   help="train through tg.traced_step (trace the loss once, replay it)")
    p.add_argument("--decomposed", action="store_true",
                   help="layers with every gate recorded (fused=False); with --traced they replay fused")
    return p


def train_one(cell, args, rng):
    model = AddingModel(cell, args.hidden, args.forget_bias, fused=not args.decomposed)
    opt = optim.RMSprop(model.parameters(), lr=args.lr)
    x_eval, y_eval = data.adding_problem(args.eval_size, args.T, seed=args.seed + 1)
    eval_every = max(args.steps // 20, 1)
    history = {"step": [], "train_mse": [], "eval_mse": []}
    traced = tg.traced_step(lambda x, y: last_step_mse(model(x)[0], y), model.parameters()) if args.traced else None
    with _common.Progress(args.steps, desc=f"{cell:>4}") as bar:
        for step in range(1, args.steps + 1):
            x, y = data.adding_problem(args.batch, args.T, rng=rng)
            opt.zero_grad()
            if traced is not None:
                loss = traced(x, y)  # forward + backward into every .grad, like loss.backward()
            else:
                out, _ = model(tg.tensor(x))
                loss = last_step_mse(out, tg.tensor(y))
                loss.backward()
            optim.clip_grad_norm(model.parameters(), args.clip)
            opt.step()
            if step % eval_every == 0 or step == args.steps or step == 1:
                with tg.no_grad():
                    ev = _common.scalar(last_step_mse(model(tg.tensor(x_eval))[0], tg.tensor(y_eval)))
                history["step"].append(step)
                history["train_mse"].append(_common.scalar(loss))
                history["eval_mse"].append(ev)
            bar.update(loss=_common.scalar(loss), eval=history["eval_mse"][-1])
    if traced is not None:
        compiled = next(iter(traced.compiled.values()))
        print(f"{cell}: traced step of {len(compiled)} primitives; fused at trace time: "
              f"{traced.fused or 'nothing'}")
    return model, history


def main(argv=None):
    args = _common.parse_args(build_parser(), argv, QUICK)
    rng, out = _common.setup(args)
    baseline = data.adding_problem_baseline()
    print(f"adding problem: T={args.T}, hidden={args.hidden}, RMSprop lr={args.lr}, clip={args.clip}, "
          f"{args.steps} steps of batch {args.batch}; baseline MSE (predict the mean) = {baseline:.4f}")
    cells = args.cells
    start = time.perf_counter()
    results, histories, models = {}, {}, {}
    for cell in cells:
        tg.manual_seed(args.seed)
        models[cell], histories[cell] = train_one(cell, args, rng)
        results[cell] = histories[cell]["eval_mse"][-1]
        print(f"{cell}: eval MSE {results[cell]:.4f} (baseline {baseline:.4f})")

    pictures = [_common.plot_lines(
        {c: (h["step"], h["eval_mse"]) for c, h in histories.items()}, out / "adding_mse.png",
        title=f"Adding problem, T={args.T}", xlabel="training step", ylabel="eval MSE",
        hlines={"baseline 1/6": baseline})]
    flow_models = {f"{name(cell)}, trained": models[cell] for cell in cells}
    for cell in LAYERS:  # untrained models of every kind: what the architecture alone lets through
        tg.manual_seed(args.seed)
        flow_models[f"{name(cell)}, untrained"] = AddingModel(cell, args.hidden, args.forget_bias)
    gf_path, curves = _common.gradient_flow_picture(
        flow_models, lambda: tuple(tg.tensor(a) for a in data.adding_problem(args.batch, args.T, seed=args.seed + 2)),
        last_step_mse, out / "adding_gradient_flow.png", title="‖∂L/∂h(t)‖ with the loss on the last step")
    pictures.append(gf_path)
    elapsed = time.perf_counter() - start

    best = min(results, key=results.get)
    summary = _common.finish(out, {
        "task": "adding_problem", "T": args.T, "steps": args.steps, "seconds": elapsed,
        "baseline_mse": baseline, "eval_mse": results,
        "loss_history": {c: h["train_mse"] for c, h in histories.items()},
        "eval_history": histories, "gradient_flow": {k: v.tolist() for k, v in curves.items()},
    }, pictures)
    _common.result(f"{best} eval MSE (T={args.T})", results[best], "mean-prediction baseline", baseline,
                   extra=", ".join(f"{c} {v:.4f}" for c, v in results.items()) + f"; {elapsed:.0f}s")
    return summary


if __name__ == "__main__":
    main()
