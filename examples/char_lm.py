"""Character-level language model trained with truncated BPTT over a text stream.

The text is laid out as B parallel streams; each update runs a window of k
characters per stream, carries the hidden state into the next window and cuts
the graph at the window edge (TBPTT with k1 = k2 = k). Default data:
tinyshakespeare (first 90 % train, the next 100,000 characters validate, as
in the data README); any UTF-8 text file works with ``--data`` (a path that
does not exist is an error); without the shared data at the default path it
falls back on Python's own pydoc text.

Baselines on tinyshakespeare (data README): unigram 4.82 bits/char,
Witten-Bell 3-gram 2.91, 5-gram 2.34; a PyTorch LSTM (embedding 32,
hidden 128, TBPTT 64, batch 32, Adam 3e-3, 1,500 steps) about 2.45.

    python examples/char_lm.py --cell lstm --steps 4500
    python examples/char_lm.py --compare-bptt      # full vs truncated BPTT
    python examples/char_lm.py --decomposed --traced   # every gate recorded, trained at fused speed

``--decomposed`` builds the layer gate by gate (``fused=False``: what the
diagrams and the stepper show); ``--traced`` traces each TBPTT window once
and replays it (``StatefulBPTT(traced=True)``, and the validation windows
with ``TracedWindows.evaluate``), which runs a decomposed layer's fused
kernel and gives the same updates as eager training.
"""
from __future__ import annotations

import math
import time
from pathlib import Path

import _common
import tinygraph as tg
from tinygraph import bptt, data, optim
from tinygraph.models import LanguageModel
from tinygraph.traced_windows import TracedWindows

SHAKESPEARE_CHARS = 1_115_394
SHAKESPEARE_BASELINES = {"unigram": 4.82, "Witten-Bell 3-gram": 2.91, "5-gram": 2.34}
PUBLISHED_LSTM_BITS = 1.70 / math.log(2)


def build_parser():
    p = _common.make_parser(__doc__.splitlines()[0], script=__file__, data_name="tinyshakespeare.txt")
    p.add_argument("--cell", choices=("rnn", "lstm", "gru"), default="lstm")
    p.add_argument("--embedding", type=int, default=32)
    p.add_argument("--hidden", type=int, default=128)
    p.add_argument("--window", type=int, default=64, help="TBPTT window k (k1 = k2 = k)")
    p.add_argument("--batch", type=int, default=32, help="parallel streams")
    p.add_argument("--lr", type=float, default=3e-3, help="Adam learning rate")
    p.add_argument("--clip", type=float, default=1.0, help="gradient-norm clip")
    p.add_argument("--steps", type=_common.positive_int, default=4500,
                   help="optimizer updates (windows); the README's PyTorch figure uses 1500")
    p.add_argument("--val-chars", type=int, default=100_000, help="validation characters after the training 90 %%")
    p.add_argument("--temperature", type=float, default=0.8, help="sampling temperature")
    p.add_argument("--sample-chars", type=int, default=300)
    p.add_argument("--decomposed", action="store_true",
                   help="record every gate (fused=False) instead of the fused layer")
    p.add_argument("--traced", action="store_true",
                   help="trace each TBPTT window once and replay it (same updates, less Python)")
    p.add_argument("--compare-bptt", action="store_true",
                   help="also train with full BPTT over chunks of 4 windows, same data, and compare")
    return p


def load_text(args, default_path):
    """The text of ``--data``; Python's pydoc text when the *default* file is absent.

    A path the user names must exist: a typo should not silently train on
    other text.
    """
    path = Path(args.data)
    if path.is_file():
        with _common.data_errors(f"--data {path}"):  # e.g. no permission to read it
            text = path.read_text(encoding="utf-8", errors="replace")
        return text, str(path), len(text) == SHAKESPEARE_CHARS
    if args.data != default_path:
        if path.is_dir():
            _common.fail(f"--data {path} is a folder; pass a text file")
        _common.need_data(path, "text file")
    print(f"note: {path} not found; using Python's pydoc_data/topics.py text instead")
    text, info = data.pydoc_corpus()
    return text, f"pydoc_data/topics.py (sha256 {info['sha256'][:12]}...)", False


def summed_ce(logits, y):
    return tg.cross_entropy(logits, y, reduction="sum")


def bits_per_char(model, streams, window, evaluator=None):
    """Validation cross-entropy in bits/char, state carried across windows.

    ``evaluator`` (a ``TracedWindows`` of the model and ``summed_ce``) replays
    each window's forward instead of recording it (``--traced``).
    """
    total, count, state = 0.0, 0, None
    with tg.no_grad():
        for x, y in data.tbptt_windows(streams, window):
            if evaluator is not None:
                loss, state = evaluator.evaluate(tg.tensor(x), y, state)
            else:
                logits, state = model(x, state)
                loss = summed_ce(logits, y)
            total += _common.scalar(loss)
            count += y.size
    return total / count / math.log(2)


def train(model, train_streams, val_streams, args, *, chunk, k, desc):
    """TBPTT(k, k) over chunks of ``chunk`` steps (k = None: full BPTT over each chunk)."""
    opt = optim.Adam(model.parameters(), lr=args.lr)
    trainer = bptt.StatefulBPTT(model, tg.cross_entropy, k1=k or chunk, optimizer=opt, clip_norm=args.clip,
                                traced=args.traced)
    evaluator = TracedWindows(model, summed_ce) if args.traced else None
    n_chunks = max(1, args.steps * args.window // chunk)  # every run reads the same characters
    history = {"update": [], "train_bits": [], "val_update": [], "val_bits": []}
    eval_every = max(n_chunks // 8, 1)
    updates, position = 0, 0
    start = time.perf_counter()
    with _common.Progress(n_chunks, desc=desc) as bar:
        for i in range(1, n_chunks + 1):
            if position + chunk + 1 > len(train_streams):  # end of the text: start the streams again
                position = 0
                trainer.reset()
            x = train_streams[position:position + chunk]
            y = train_streams[position + 1:position + chunk + 1]
            position += chunk
            result = trainer.step(x, y)
            updates += result.num_updates
            history["update"].append(updates)
            history["train_bits"].append(result.loss / len(result.window_losses) / math.log(2))
            if i % eval_every == 0 or i == n_chunks:
                history["val_update"].append(updates)
                history["val_bits"].append(bits_per_char(model, val_streams, args.window, evaluator))
            bar.update(bits=history["train_bits"][-1], val=history["val_bits"][-1] if history["val_bits"] else None)
    history["seconds"] = time.perf_counter() - start
    return history


def sample(model, vocab, prompt, args):
    ids = model.sample(vocab.encode(list(prompt)), args.sample_chars, temperature=args.temperature)
    return prompt + vocab.decode(ids)


# --quick: the defaults of a seconds-long run; options given explicitly still win
QUICK = dict(embedding=8, hidden=32, window=16, batch=8, steps=40, lr=1e-2, val_chars=2_000, sample_chars=60)


def main(argv=None):
    parser = build_parser()
    args = _common.parse_args(parser, argv, QUICK)
    text, source, is_shakespeare = load_text(args, parser.get_default("data"))  # a bad --data stops here
    rng, out = _common.setup(args)
    if args.quick:   # a slice of the text, but never less than an explicit --val-chars needs
        text = text[:max(24_000, 2 * args.val_chars)]
    vocab = data.Vocab.build([text], unk="<unk>")
    ids = vocab.encode(list(text))
    train_ids, val_ids = data.split_train_val(ids, 0.1, val_size=args.val_chars)
    unigram = data.unigram_bits_per_symbol(train_ids, val_ids, len(vocab))
    train_streams = data.stream_batches(train_ids, args.batch)
    val_streams = data.stream_batches(val_ids, args.batch)
    print(f"char LM on {source}: {len(train_ids):,} train / {len(val_ids):,} val chars, {len(vocab)} symbols; "
          f"unigram baseline {unigram:.3f} bits/char")

    runs = {f"TBPTT k={args.window}": (args.window, args.window)}
    if args.compare_bptt:
        runs[f"full BPTT over {4 * args.window}"] = (4 * args.window, None)
    histories, final = {}, {}
    for label, (chunk, k) in runs.items():
        tg.manual_seed(args.seed)
        model = LanguageModel(len(vocab), args.embedding, args.hidden, cell=args.cell, fused=not args.decomposed)
        if not histories:
            print(f"{args.cell.upper()}: {model.num_parameters():,} parameters. Sample before training:\n"
                  f"  {sample(model, vocab, 'The ', args)!r}")
        histories[label] = train(model, train_streams, val_streams, args, chunk=chunk, k=k, desc=label)
        final[label] = histories[label]["val_bits"][-1]
        print(f"{label}: validation {final[label]:.3f} bits/char after {histories[label]['update'][-1]} updates "
              f"in {histories[label]['seconds']:.0f}s")
        if len(histories) == 1:
            trained_text = sample(model, vocab, "The ", args)
            print(f"sample after training (temperature {args.temperature}):\n{trained_text}\n")

    pictures = [_common.plot_lines(
        {f"{lbl} val": (h["val_update"], h["val_bits"]) for lbl, h in histories.items()}
        | {f"{lbl} train": (h["update"], h["train_bits"]) for lbl, h in histories.items()},
        out / "char_lm_loss.png", title=f"{args.cell.upper()} character LM", xlabel="update",
        ylabel="bits/char", hlines={"unigram": unigram} | (
            {f"5-gram {SHAKESPEARE_BASELINES['5-gram']}": SHAKESPEARE_BASELINES["5-gram"]} if is_shakespeare else {}))]
    main_label = next(iter(runs))
    elapsed = sum(h["seconds"] for h in histories.values())
    summary = _common.finish(out, {
        "task": "char_lm", "source": source, "cell": args.cell, "steps": args.steps, "seconds": elapsed,
        "decomposed": args.decomposed, "traced": args.traced,
        "val_bits_per_char": final, "unigram_bits_per_char": unigram, "sample": trained_text,
        "readme_baselines": SHAKESPEARE_BASELINES if is_shakespeare else None,
        "loss_history": {lbl: h["train_bits"] for lbl, h in histories.items()}, "histories": histories,
    }, pictures)
    if is_shakespeare:
        _common.result(f"{args.cell} validation bits/char", final[main_label], "5-gram baseline",
                       SHAKESPEARE_BASELINES["5-gram"],
                       extra=f"unigram {unigram:.2f}, 3-gram 2.91, PyTorch LSTM ~{PUBLISHED_LSTM_BITS:.2f}; "
                             + ", ".join(f"{lbl} {v:.3f}" for lbl, v in final.items()) + f"; {elapsed:.0f}s")
    else:
        _common.result(f"{args.cell} validation bits/char", final[main_label], "unigram baseline", unigram,
                       extra=", ".join(f"{lbl} {v:.3f}" for lbl, v in final.items()) + f"; {elapsed:.0f}s")
    return summary


if __name__ == "__main__":
    main()
