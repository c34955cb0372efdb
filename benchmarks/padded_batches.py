"""Training steps on padded batches (``lengths=``): the fused kernels against the step-by-step recording.

A padded batch (sentences of different lengths, padded to the longest) runs
through ``RNN/LSTM/GRU(..., fused=True)`` as one fused kernel per direction
on the CPU: the final state is taken at each row's own last step, and the
backward direction runs on each row's reversed prefix. This script times one
training step (forward, summed cross-entropy over the valid steps, backward)
of that path, and in the same process the step-by-step recording of the same
model on the same batch (``tg.decomposed()``), and prints the ratio. When
PyTorch is installed it also times the same model, weights and batch as a
``torch.nn`` layer on ``pack_padded_sequence``, after checking that its loss
equals tinygraph's:

    python benchmarks/padded_batches.py                      # LSTM, GRU, RNN; one and two directions
    python benchmarks/padded_batches.py --root /tmp/before   # another checkout's tinygraph (A/B of a change)
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", default=str(Path(__file__).resolve().parent.parent),
                        help="the checkout whose tinygraph to time (default: this one)")
    parser.add_argument("--steps", type=int, default=40, help="padded length T")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--input", type=int, default=64)
    parser.add_argument("--hidden", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args(argv)
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from _timing import best_of
    from kernel_times import load_models
    load_models(args.root)   # tinygraph and its models package from that checkout
    import numpy as np

    import tinygraph as tg
    from tinygraph.models import GRU, LSTM, RNN, decomposed

    rng = np.random.default_rng(0)
    T, B = args.steps, args.batch
    x = rng.standard_normal((T, B, args.input)).astype(np.float32)
    lengths = rng.integers(max(1, T // 4), T + 1, size=B)
    lengths[0] = T
    mask = np.arange(T)[:, None] < lengths[None, :]
    targets = rng.integers(0, args.hidden, size=(T, B))
    print(f"padded batch T={T} B={B} D={args.input} H={args.hidden}, lengths {lengths.min()}-{lengths.max()} "
          f"(mean {lengths.mean():.1f}); tinygraph from {Path(tg.__file__).resolve().parent.parent}")
    sys.path.append(str(Path(__file__).resolve().parent.parent))   # the benchmarks package, for its baselines
    from benchmarks.baselines import torch_module
    torch = torch_module()
    for layer in (LSTM, GRU, RNN):
        for bidirectional in (False, True):
            model = layer(args.input, args.hidden, bidirectional=bidirectional, fused=True)

            def step():
                for p in model.parameters():
                    p.grad = None
                out, _ = model(tg.tensor(x), lengths=lengths)
                loss = tg.cross_entropy(out[..., :args.hidden], targets, mask=mask, reduction="sum")
                loss.backward()
                return loss.item()

            def step_by_step():
                with decomposed():
                    step()

            runners = {"fused": step, "step by step": step_by_step}
            if torch is not None:
                runners["torch packed"] = _torch_step(torch, layer.__name__, model, x, lengths, mask, targets,
                                                      args.hidden, expected_loss=step())
            times = {name: float("inf") for name in runners}
            for _ in range(args.rounds):   # alternate, so a drift of the machine hits every runner
                for name, run in runners.items():
                    run()   # untimed: the previous runner's spinning BLAS/OpenMP threads settle first
                    times[name] = min(times[name], best_of(run, 1, 1 if name == "step by step" else 3,
                                                           time.perf_counter))
            name = layer.__name__ + (" bidirectional" if bidirectional else "")
            ratio = times["step by step"] / times["fused"]
            line = (f"  {name:18s} fused {times['fused'] * 1e3:8.2f} ms   step by step "
                    f"{times['step by step'] * 1e3:8.2f} ms   step-by-step/fused {ratio:5.2f}")
            if "torch packed" in times:
                line += (f"   torch packed {times['torch packed'] * 1e3:8.2f} ms   "
                         f"fused/torch {times['fused'] / times['torch packed']:5.2f}")
            print(line)


def _torch_step(torch, kind, model, x, lengths, mask, targets, hidden, expected_loss):
    """The same step in PyTorch on packed sequences (same weights), checked against tinygraph's loss."""
    from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence
    layer = getattr(torch.nn, kind)(x.shape[2], hidden, bidirectional=model.bidirectional)
    layer.load_state_dict({k: torch.from_numpy(v.copy()) for k, v in model.torch_state_dict().items()})
    xt, keep = torch.from_numpy(x), torch.from_numpy(mask)
    tt, lt = torch.from_numpy(targets), torch.from_numpy(lengths.astype("int64"))

    def step():
        layer.zero_grad(set_to_none=True)
        out, _ = layer(pack_padded_sequence(xt, lt, enforce_sorted=False))
        out, _ = pad_packed_sequence(out, total_length=x.shape[0])
        loss = torch.nn.functional.cross_entropy(out[..., :hidden][keep], tt[keep], reduction="sum")
        loss.backward()
        return loss.item()

    got = step()
    if abs(got - expected_loss) > 1e-3 * max(1.0, abs(expected_loss)):
        raise SystemExit(f"{kind}: PyTorch's packed loss {got} differs from tinygraph's {expected_loss}")
    return step


if __name__ == "__main__":
    main()
