"""`tinygraph demo`: train a character-level LSTM on text that ships with Python, then draw it.

The corpus is Python's own documentation (``pydoc_data/topics.py``), so the
demo needs no download; its sha256 is printed and saved because the text
changes between Python versions. The run:

1. builds a character vocabulary, splits 90 % train / 10 % validation, and
   measures the unigram baseline (bits/char knowing only letter frequencies);
2. samples from the untrained model, trains it with truncated BPTT for about
   a minute or two (progress bar), samples again and reports validation
   bits/char against the baseline;
3. writes the pictures: the folded circuit and the unfolded graph of the
   trained model (SVG), the gradient-flow plot RNN vs LSTM (PNG), the loss
   curve (PNG) and a backprop walk-through of a 3-step RNN (HTML).

``--quick`` runs the same pipeline on a small slice in seconds.
"""
from __future__ import annotations

import json
import math
import sys
import time
from pathlib import Path

import numpy as np

from tinygraph.backend import limit_blas_threads
from tinygraph.fileio import atomic_write_text
from tinygraph.progress import ProgressBar
from tinygraph.training import History

# flow_steps: length T of the gradient-flow probe. flow_forget_bias: forget-gate bias of the untrained
# LSTM drawn next to the untrained tanh RNN (1.0, the usual init, starts the cell state remembering).
# With PyTorch's default init (bias ~ 0, forget gate ~ 0.5) a small untrained LSTM's gradient decays
# about as fast as the RNN's over a short probe, and in --quick the RNN could even come out on top.
# The trained model keeps the default init: in a full run a forget bias of 1 did not help it
# (docs/RESULTS.md).
FULL = dict(chars=None, embedding=32, hidden=128, batch=32, window=64, lr=3e-3, minutes=1.5,
            sample_chars=240, flow_steps=60, flow_forget_bias=1.0)
QUICK = dict(chars=12_000, embedding=8, hidden=24, batch=8, window=16, lr=1e-2, minutes=None, epochs=1.0,
             sample_chars=60, flow_steps=32, flow_forget_bias=1.0)


def configure(parser):
    parser.add_argument("-o", "--out", default="tinygraph-demo",
                        help="output folder for pictures and summary (default: ./tinygraph-demo)")
    parser.add_argument("--quick", action="store_true", help="same pipeline on a small slice, in seconds")
    parser.add_argument("--seed", type=int, default=0, help="random seed")
    parser.add_argument("--epochs", type=float, default=None,
                        help="passes over the training text, a number above 0 (default: as many as fit "
                             "in --minutes)")
    parser.add_argument("--minutes", type=float, default=None,
                        help="training time budget, a number above 0 (default 1.5; --quick trains one pass "
                             "over its slice)")
    parser.add_argument("--cell", choices=("lstm", "gru", "rnn"), default="lstm", help="recurrent cell")


# ---------------------------------------------------------------------------
# small helpers
# ---------------------------------------------------------------------------
def _budget_error(args):
    """Why ``--epochs``/``--minutes`` cannot bound a training run, or None when they can.

    Zero, negative, nan or infinite values would train nothing or forever.
    """
    for option, value in (("--epochs", args.epochs), ("--minutes", args.minutes)):
        if value is not None and not (math.isfinite(value) and value > 0):
            return f"{option} {value:g}: must be a number above 0"
    return None


def _printable(text):
    return text.replace("\n", "⏎ ").replace("\t", "→")


def _sample_text(model, vocab, prompt, n, temperature, seed):
    import tinygraph as tg
    tg.manual_seed(seed)
    prompt_ids = vocab.encode(list(prompt))
    with tg.no_grad():
        generated = model.sample(prompt_ids, n, temperature=temperature)  # the new ids only
    return prompt + vocab.decode(generated)


# ---------------------------------------------------------------------------
# the pipeline
# ---------------------------------------------------------------------------
def _evaluate_bits(model, streams, window):
    """Validation bits/char: carry the state across windows, no graph recorded."""
    import tinygraph as tg
    from tinygraph import data
    total, count, state = 0.0, 0, None
    with tg.no_grad():
        for x, y in data.tbptt_windows(streams, window):
            logits, state = model(x, state)
            total += float(tg.cross_entropy(logits, y, reduction="sum").item())
            count += y.size
    return total / max(count, 1) / math.log(2)


def _train(model, train_streams, val_streams, cfg, args):
    """Truncated BPTT (k1 = k2 = window): the state carries across windows, the graph is cut."""
    import tinygraph as tg
    from tinygraph import bptt, data, optim
    opt = optim.Adam(model.parameters(), lr=cfg["lr"])
    trainer = bptt.StatefulBPTT(model, tg.cross_entropy, k1=cfg["window"], optimizer=opt, clip_norm=1.0)
    windows_per_epoch = (len(train_streams) - 1 + cfg["window"] - 1) // cfg["window"]
    epochs = args.epochs if args.epochs is not None else cfg.get("epochs")
    minutes = args.minutes if args.minutes is not None else cfg["minutes"]
    if epochs is not None and args.minutes is None:
        max_windows = max(1, int(round(epochs * windows_per_epoch)))
        budget = float("inf")
    else:
        max_windows = 10 ** 9 if epochs is None else max(1, int(round(epochs * windows_per_epoch)))
        budget = 60.0 * minutes
    history = History()  # losses in bits/char, so the curve reads against the baseline
    # a time-bounded run learns its bar's total from the speed of its first windows
    bar = ProgressBar(max_windows if budget == float("inf") else None, desc="training")
    start = time.perf_counter()
    step, epoch = 0, 0
    # the first pass always starts: a budget that runs out before one window still trains one
    while epoch == 0 or (step < max_windows and time.perf_counter() - start < budget):
        trainer.reset()  # a new epoch starts every stream at its beginning
        for x, y in data.tbptt_windows(train_streams, cfg["window"]):
            result = trainer.step(x, y)
            step += 1
            bits = result.loss / math.log(2)
            norm = result.update_grad_norms[-1]
            history.step_loss.append(bits)
            history.step_grad_norm.append(float(norm))
            history.step_clipped.append(bool(result.clipped[-1]))
            history.step_epoch.append(epoch + 1)
            if bar.total is None and step == 5:
                bar.total = max(step, int(budget / ((time.perf_counter() - start) / step)))
            bar.update(epoch=epoch + 1, bits_per_char=bits, grad_norm=float(norm))
            if step >= max_windows or time.perf_counter() - start >= budget:
                break
        epoch += 1
        losses = [b for b, e in zip(history.step_loss, history.step_epoch) if e == epoch]
        history.epochs.append({"epoch": epoch, "train_loss": sum(losses) / max(len(losses), 1),
                               "eval_loss": _evaluate_bits(model, val_streams, cfg["window"]),
                               "updates": len(losses), "seconds": time.perf_counter() - start})
    bar.total = step
    bar.close(val_bits_per_char=history.epochs[-1]["eval_loss"])
    return history, time.perf_counter() - start


def _save_diagram(diagram, path):
    from tinygraph import viz
    written = viz.save(diagram, path)
    return Path(written) if written else Path(path)


def _draw_model(model, vocab, prompt, out, cell):
    """Folded circuit and unfolded graph of the trained model on a 3-character input."""
    import tinygraph as tg
    from tinygraph import viz
    from tinygraph.models import decomposed
    ids = vocab.encode(list(prompt[:4]))
    x, y = ids[:-1, None], ids[1:, None]
    with decomposed():  # the model trains on fused kernels; the pictures show every gate
        logits, _ = model(x)
    loss = tg.cross_entropy(logits, y, reduction="sum")
    circuit = _save_diagram(viz.draw_circuit(loss, detail="variables"), out / f"{cell}_circuit.svg")
    unfolded = _save_diagram(viz.draw_unfolded(loss, detail="variables"), out / f"{cell}_unfolded.svg")
    return [circuit, unfolded]


def _flow_curves(trained, cell_name, streams, cfg, seed):
    """‖∂L/∂h(t)‖ of the last step's loss: fresh tanh RNN and LSTM of the same size, and the trained model.

    The loss sits on the last step only, so the curve shows how much of it
    reaches each earlier step: the distance over which the model can learn.
    Returns ``{label: array of T norms}``.
    """
    import tinygraph as tg
    from tinygraph import bptt
    from tinygraph.models import LanguageModel
    T = cfg["flow_steps"]
    x, y = streams[:T, :4], streams[1:T + 1, :4]

    def last_step_loss(logits, targets):
        return tg.cross_entropy(logits[-1], targets[-1])

    models = {}
    bias = cfg.get("flow_forget_bias")
    lstm = ("LSTM, untrained", "lstm", {}) if bias is None else (
        f"LSTM (forget bias {bias:g}), untrained", "lstm", {"forget_bias": bias})
    for label, cell, options in (("RNN (tanh), untrained", "rnn", {}), lstm):
        tg.manual_seed(seed)
        models[label] = LanguageModel(trained.vocab_size, cfg["embedding"], cfg["hidden"], cell=cell, **options)
    models[f"{cell_name.upper()}, trained"] = trained
    return {label: np.asarray(bptt.gradient_flow(m, x, y, last_step_loss), dtype=float)
            for label, m in models.items()}


def _gradient_flow(curves, out):
    """Draw the curves of :func:`_flow_curves` into gradient_flow.png."""
    from tinygraph import viz
    path = out / "gradient_flow.png"
    viz.plot_gradient_flow(curves, path, title="‖∂L(T)/∂h(t)‖: how far back the last step's loss reaches")
    return path


def _walkthrough(out, seed):
    """Backprop walk-through of a 3-step Elman RNN as a self-contained HTML player."""
    import tinygraph as tg
    from tinygraph import viz
    from tinygraph.models import ElmanRNN
    from tinygraph.stepper import Stepper
    tg.manual_seed(seed)
    model = ElmanRNN(3, 4, 3)
    x = np.eye(3, dtype=np.float32)[[0, 2, 1]][:, None, :]  # (T=3, B=1, D=3) one-hot
    y = np.array([[2], [1], [0]])
    o, _ = model(tg.tensor(x))
    loss = tg.cross_entropy(o, y, reduction="sum")
    path = out / "backprop_rnn_3steps.html"
    viz.stepper_html(Stepper(loss), path)
    return path


def _loss_curve(history, out):
    from tinygraph import viz
    path = out / "loss_curve.png"
    viz.plot_loss_curve(history, path, title="Character LSTM on pydoc text: bits/char")
    return path


def _attempt(label, fn, *a, **kw):
    """Run one picture step; a missing extra (matplotlib, a Graphviz renderer) is reported, not fatal."""
    try:
        return fn(*a, **kw)
    except (ImportError, RuntimeError) as err:  # viz raises RenderError (a RuntimeError) without Graphviz
        print(f"  skipped {label}: {type(err).__name__}: {err}")
        return None


def run(args):
    import tinygraph as tg
    from tinygraph import data
    from tinygraph.models import LanguageModel

    cfg = dict(QUICK if args.quick else FULL)
    problem = _budget_error(args)
    if problem:  # checked before the output folder is made: a refused run leaves nothing behind
        print(f"tinygraph demo: error: {problem}", file=sys.stderr)
        return 2
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        print(f"tinygraph demo: error: -o {out}: exists and is not a folder", file=sys.stderr)
        return 2
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as err:  # a parent is a file, no permission, read-only disk ...
        print(f"tinygraph demo: error: -o {out}: cannot make the folder ({err.strerror or err})", file=sys.stderr)
        return 2
    limit_blas_threads()
    tg.manual_seed(args.seed)

    text, corpus = data.pydoc_corpus()
    if cfg["chars"]:
        text = text[: cfg["chars"]]
    print(f"corpus: Python {corpus['python']} pydoc_data/topics.py, sha256 {corpus['sha256']}")
    print(f"        {len(text):,} characters used ({corpus['chars']:,} available) from {corpus['path']}")
    vocab = data.Vocab.build([text], unk="<unk>")
    ids = vocab.encode(list(text))
    train_ids, val_ids = data.split_train_val(ids, 0.1)
    unigram = data.unigram_bits_per_symbol(train_ids, val_ids, len(vocab))
    train_streams = data.stream_batches(train_ids, cfg["batch"])
    val_streams = data.stream_batches(val_ids, min(cfg["batch"], max(1, len(val_ids) // (4 * cfg["window"]))))
    print(f"vocabulary: {len(vocab)} symbols; train {len(train_ids):,} chars, validation {len(val_ids):,}; "
          f"unigram baseline {unigram:.3f} bits/char")

    model = LanguageModel(len(vocab), cfg["embedding"], cfg["hidden"], cell=args.cell, fused=True)
    print(f"model: {args.cell.upper()} language model (fused kernels), embedding {cfg['embedding']}, "
          f"hidden {cfg['hidden']}, {model.num_parameters():,} parameters; TBPTT window {cfg['window']}, {cfg['batch']} streams, "
          f"Adam lr {cfg['lr']}, clip 1.0")

    prompt = "The "
    before = _sample_text(model, vocab, prompt, cfg["sample_chars"], 0.8, args.seed)
    print(f"\nsample before training:\n  {_printable(before)}\n")
    bits_before = _evaluate_bits(model, val_streams, cfg["window"])

    history, seconds = _train(model, train_streams, val_streams, cfg, args)
    val_bits = history.epochs[-1]["eval_loss"]
    after = _sample_text(model, vocab, prompt, cfg["sample_chars"], 0.8, args.seed)
    print(f"\nsample after training ({len(history.step_loss)} windows, {len(history.epochs)} epoch(s), "
          f"{seconds:.0f}s):\n  {_printable(after)}\n")
    verdict = "beats" if val_bits < unigram else "does not beat yet"
    print(f"validation: {val_bits:.3f} bits/char (untrained {bits_before:.3f}); "
          f"unigram baseline {unigram:.3f} -> {verdict} the baseline")

    flow_curves = _flow_curves(model, args.cell, val_streams, cfg, args.seed)

    print("\nwriting pictures:")
    written = []
    for label, fn, fargs in (
        ("circuit and unfolded graph", _draw_model, (model, vocab, prompt, out, args.cell)),
        ("gradient-flow plot", _gradient_flow, (flow_curves, out)),
        ("loss curve", _loss_curve, (history, out)),
        ("backprop walk-through", _walkthrough, (out, args.seed)),
    ):
        result = _attempt(label, fn, *fargs)
        if result is not None:
            written += result if isinstance(result, list) else [result]

    summary = {
        "corpus": corpus, "chars_used": len(text), "vocab_size": len(vocab), "cell": args.cell,
        "config": cfg, "seed": args.seed, "unigram_bits_per_char": unigram,
        "val_bits_per_char_before": bits_before, "val_bits_per_char": val_bits,
        "train_seconds": seconds, "updates": len(history.step_loss),
        "epochs": history.epochs, "step_bits_per_char": history.step_loss,
        "sample_before": before, "sample_after": after,
        # ‖∂L(T)/∂h(t)‖ for t = 0..T-1, per model, as drawn in gradient_flow.png
        "gradient_flow": {label: [float(v) for v in curve] for label, curve in flow_curves.items()},
        "files": [str(p) for p in written],
    }
    atomic_write_text(out / "summary.json", json.dumps(summary, indent=2))
    for p in written + [out / "summary.json"]:
        print(f"  {p}")
    return 0
