"""The textbook's unfolding example, built with the graph API and drawn folded and unfolded.

1. A classical dynamical system s(t) = f(s(t-1); θ): a damped rotation of a
   2-D state, f(s) = A s. Unfolding it for τ steps is just running f τ times;
   every step is recorded under ``tg.scope("f")`` and ``tg.timestep(t)``, which
   is all the diagrams need to draw it unfolded (one box per step, A drawn
   once) or folded back into a circuit (f once, with a delay loop).
2. A system driven by an input, s(t) = f(s(t-1), x(t); θ) = tanh(W s + U x + b):
   we observe a trajectory made with hidden parameters θ*, then recover θ by
   gradient descent through the unrolled graph (full BPTT = plain backward).

    python examples/dynamical_system.py --steps 30
"""
from __future__ import annotations

import time

import numpy as np

import _common
import tinygraph as tg
from tinygraph import nn, optim


# --quick: the defaults of a seconds-long run; options given explicitly still win
QUICK = dict(steps=12, iters=60)


def autonomous(s0, A, steps):
    """s(t) = A s(t-1): returns [s(0), s(1), ..., s(steps)]."""
    states = [s0]
    for t in range(1, steps + 1):
        with tg.scope("f"), tg.timestep(t):
            s = tg.matmul(states[-1], tg.transpose(A))
            s.name = "s"
        states.append(s)
    return states


class DrivenSystem(nn.Module):
    """s(t) = tanh(W s(t-1) + U x(t) + b), with θ = (W, U, b) as parameters."""

    def __init__(self, state_size, input_size, scale=0.5, rng=None):
        super().__init__()
        rng = rng or np.random.default_rng(0)
        self.W = nn.Parameter(scale * rng.standard_normal((state_size, state_size)).astype(np.float32))
        self.U = nn.Parameter(scale * rng.standard_normal((state_size, input_size)).astype(np.float32))
        self.b = nn.Parameter(0.1 * rng.standard_normal(state_size).astype(np.float32))

    def forward(self, xs, s0):
        s, states = s0, []
        for t in range(xs.shape[0]):
            with tg.scope("f"), tg.timestep(t + 1):
                x = xs[t]
                x.name = "x"
                s = tg.tanh(tg.matmul(s, tg.transpose(self.W)) + tg.matmul(x, tg.transpose(self.U)) + self.b)
                s.name = "s"
            states.append(s)
        return tg.stack(states, axis=0)


def draw_both(tensor, out, stem):
    """Folded circuit and unfolded graph of whatever produced ``tensor``; returns the paths written."""
    try:
        from tinygraph import viz
        paths = []
        for view, draw in (("circuit", viz.draw_circuit), ("unfolded", viz.draw_unfolded)):
            path = out / f"{stem}_{view}.svg"
            viz.save(draw(tensor, detail="variables"), path)
            paths.append(path)
        return paths
    except (ImportError, AttributeError, RuntimeError, OSError) as err:
        print(f"note: diagrams of {stem} skipped ({type(err).__name__}: {err})")
        return []


def build_parser():
    p = _common.make_parser(__doc__.splitlines()[0], script=__file__)
    p.add_argument("--steps", type=_common.positive_int, default=30, help="time steps of the driven system")
    p.add_argument("--state", type=int, default=3, help="size of the driven system's state")
    p.add_argument("--iters", type=_common.positive_int, default=400, help="gradient steps to recover θ")
    p.add_argument("--lr", type=float, default=0.03, help="Adam learning rate")
    p.add_argument("--draw-steps", type=int, default=4, help="time steps shown in the diagrams")
    return p


def main(argv=None):
    args = _common.parse_args(build_parser(), argv, QUICK)
    rng, out = _common.setup(args)
    start = time.perf_counter()

    # 1. s(t) = f(s(t-1); θ), unfolded by running it, then drawn both ways
    angle, radius = 0.3, 0.95
    A = tg.tensor(radius * np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]]),
                  requires_grad=True, name="A")
    s0 = tg.tensor([[1.0, 0.0]], name="s")
    short = autonomous(s0, A, args.draw_steps)
    pictures = draw_both(short[-1], out, "autonomous")
    spiral = np.array([s.data[0] for s in autonomous(s0, A, 60)])
    print(f"autonomous system: |s(60)| = {np.linalg.norm(spiral[-1]):.4f} = 0.95^60 · |s(0)| "
          f"({radius ** 60:.4f}); the unfolded graph has one node per step, A shared by all")

    # 2. s(t) = f(s(t-1), x(t); θ): observe a trajectory, recover θ by BPTT
    T, S = args.steps, args.state
    true_system = DrivenSystem(S, 1, scale=0.8, rng=np.random.default_rng(args.seed + 100))
    xs = tg.tensor(np.sin(np.linspace(0, 4 * np.pi, T))[:, None, None].astype(np.float32))
    s_init = tg.zeros(1, S)
    with tg.no_grad():
        observed = true_system(xs, s_init).data
    model = DrivenSystem(S, 1, scale=0.3, rng=rng)
    opt = optim.Adam(model.parameters(), lr=args.lr)
    baseline = float(np.mean(observed ** 2))  # predicting s(t) = 0 for every t
    losses = []
    with _common.Progress(args.iters, desc="fit θ") as bar:
        for _ in range(args.iters):
            opt.zero_grad()
            loss = tg.mse_loss(model(xs, s_init), tg.tensor(observed))
            loss.backward()
            opt.step()
            losses.append(_common.scalar(loss))
            bar.update(mse=losses[-1])
    with tg.no_grad():
        fitted = model(xs, s_init).data
    final = float(np.mean((fitted - observed) ** 2))

    unrolled = model(xs[: args.draw_steps], s_init)
    pictures += draw_both(tg.mse_loss(unrolled, tg.tensor(observed[: args.draw_steps])), out, "driven")
    pictures.append(_common.plot_lines(
        {f"observed s{i}": (np.arange(T), observed[:, 0, i]) for i in range(S)}
        | {f"fitted s{i}": (np.arange(T), fitted[:, 0, i]) for i in range(S)},
        out / "driven_trajectory.png", title="s(t) = tanh(W s(t-1) + U x(t) + b)", xlabel="t", ylabel="state"))
    pictures.append(_common.plot_lines({"trajectory MSE": (np.arange(1, len(losses) + 1), losses)},
                                       out / "driven_loss.png", title="Recovering θ by BPTT",
                                       xlabel="gradient step", ylabel="MSE", logy=True,
                                       hlines={"predict 0": baseline}))
    elapsed = time.perf_counter() - start
    summary = _common.finish(out, {"task": "dynamical_system", "steps": T, "iters": args.iters, "seconds": elapsed,
                                   "baseline_mse": baseline, "final_mse": final, "loss_history": losses},
                             pictures)
    _common.result("trajectory MSE after fitting θ", final, "predict-zero baseline", baseline,
                   extra=f"initial MSE {losses[0]:.4f}; {elapsed:.0f}s")
    return summary


if __name__ == "__main__":
    main()
