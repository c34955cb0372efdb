"""Speech as a sequence of frames: spoken digits classified from log-mel (or MFCC) features.

Reads the Free Spoken Digit Dataset WAV files (8 kHz), computes log-mel or
MFCC features per 32 ms frame in NumPy (hop 16 ms), standardises them with
training statistics, and runs a recurrent layer over the frames.

- ``--task classify`` (default): one label per recording, read from the
  final hidden state at each recording's own last frame (``lengths=``).
- ``--task frames``: one label per frame: the digit where the frame carries
  speech, ``silence`` where its energy is 35 dB below the loudest frame; a
  bidirectional layer tags every frame.

Split: recordings with index 5-9 validate (mirroring the official index-based
test split, which is not in the shared data), or ``--holdout-speaker NAME``
holds out one voice. Baseline: the majority class.

    python examples/spoken_digits.py --epochs 8
    python examples/spoken_digits.py --task frames --epochs 6
"""
from __future__ import annotations

import time
import wave
from collections import Counter

import numpy as np

import _common
import tinygraph as tg
from tinygraph import data, optim
from tinygraph.models import SequenceClassifier, SequenceTagger

CELLS = ("lstm", "gru")
SILENCE = 10
FRAME_MS, HOP_MS = 32.0, 16.0
# --quick: the defaults of a seconds-long run; options given explicitly still win
QUICK = dict(epochs=4, hidden=16, batch=16, n_mels=16)


def predict(model, batch):
    """Logits per frame (T, B, K) for a tagger, per recording (B, K) for a classifier."""
    out = model(batch.inputs, lengths=batch.lengths)
    return out[0] if isinstance(out, tuple) else out


def featurise(item, kind, n_mels):
    signal, rate = data.read_wav(item.path)
    if kind == "mfcc":
        feats = data.mfcc(signal, rate, n_mfcc=13, n_mels=n_mels, frame_ms=FRAME_MS, hop_ms=HOP_MS)
    else:
        feats = data.log_mel(signal, rate, n_mels=n_mels, frame_ms=FRAME_MS, hop_ms=HOP_MS)
    power = data.power_spectrogram(signal, rate, frame_ms=FRAME_MS, hop_ms=HOP_MS).sum(axis=1)
    db = 10 * np.log10(power + 1e-12)
    frame_labels = np.where(db < db.max() - 35.0, SILENCE, item.digit)
    return feats, frame_labels


def build_parser():
    p = _common.make_parser(__doc__.splitlines()[0], script=__file__, data_name="free-spoken-digit/train")
    p.add_argument("--task", choices=("classify", "frames"), default="classify")
    p.add_argument("--features", choices=("logmel", "mfcc"), default="logmel")
    p.add_argument("--n-mels", type=int, default=32)
    p.add_argument("--cell", choices=CELLS, default="lstm")
    p.add_argument("--holdout-speaker", default=None, help="validate on this speaker's recordings")
    p.add_argument("--epochs", type=_common.positive_int, default=8)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--hidden", type=int, default=64)
    p.add_argument("--lr", type=float, default=3e-3, help="Adam learning rate")
    return p


def load_split(folder, holdout_speaker):
    """(train, val) recordings of ``folder``; a wrong folder or an unknown speaker is a one-line error."""
    if not folder.is_dir():
        _common.fail(f"--data {folder} is not a folder of digit_speaker_index.wav files")
    with _common.data_errors(f"--data {folder}"):  # e.g. a folder with no recordings in it
        items = data.list_spoken_digits(folder)
    speakers = sorted({it.speaker for it in items})
    if holdout_speaker is not None and holdout_speaker not in speakers:
        _common.fail(f"--holdout-speaker {holdout_speaker!r}: no such speaker in {folder}; "
                     f"choose from {', '.join(speakers)}")
    train, val = data.split_spoken_digits(items, holdout_speaker=holdout_speaker)
    if not (train and val):  # e.g. only indices 0-4, or a single speaker held out
        _common.fail(f"--data {folder}: the split leaves {len(train)} training and {len(val)} "
                     f"validation recordings; both need some")
    return train, val


def evaluate(model, batches, per_frame):
    return _common.accuracy(lambda b: predict(model, b), batches, per_step=per_frame)


def main(argv=None):
    args = _common.parse_args(build_parser(), argv, QUICK)
    folder = _common.need_data(args.data, "free-spoken-digit folder")
    train_items, val_items = load_split(folder, args.holdout_speaker)
    rng, out = _common.setup(args)
    if args.quick:  # a random handful of recordings
        train_items = [train_items[i] for i in rng.permutation(len(train_items))[:120]]
        val_items = [val_items[i] for i in rng.permutation(len(val_items))[:40]]
    per_frame = args.task == "frames"
    t0 = time.perf_counter()
    bar = _common.Progress(len(train_items) + len(val_items), desc="features")
    feats = {}
    for it in train_items + val_items:
        with _common.data_errors(it.path, extra=(wave.Error, EOFError)):  # a damaged or non-PCM WAV
            feats[it.path] = featurise(it, args.features, args.n_mels)
        bar.update()
    bar.close()
    train_feats = np.concatenate([feats[it.path][0] for it in train_items])
    mean, std = train_feats.mean(axis=0), train_feats.std(axis=0) + 1e-5
    print(f"spoken digits ({args.task}): {len(train_items)} train / {len(val_items)} val recordings, "
          f"{args.features} features {train_feats.shape[1]} per frame, "
          f"{np.mean([len(feats[it.path][0]) for it in train_items]):.0f} frames on average "
          f"({time.perf_counter() - t0:.1f}s to compute)")

    def batches(its, shuffle):
        seqs = [((feats[it.path][0] - mean) / std).astype(np.float32) for it in its]
        targets = [feats[it.path][1] for it in its] if per_frame else [it.digit for it in its]
        return data.make_batches(seqs, targets, batch_size=args.batch, shuffle=shuffle, seed=args.seed)

    train_b, val_b = batches(train_items, True), batches(val_items, False)
    if per_frame:
        counts = Counter(int(l) for it in train_items for l in feats[it.path][1])
        majority_label = counts.most_common(1)[0][0]
        val_labels = np.concatenate([feats[it.path][1] for it in val_items])
        baseline = float(np.mean(val_labels == majority_label))
        num_classes = 11
    else:
        majority_label = Counter(it.digit for it in train_items).most_common(1)[0][0]
        baseline = float(np.mean([it.digit == majority_label for it in val_items]))
        num_classes = 10

    tg.manual_seed(args.seed)
    if per_frame:  # a frame's label depends on what comes after it too: read both ways
        model = SequenceTagger(train_feats.shape[1], num_classes, cell=args.cell, hidden_size=args.hidden,
                               bidirectional=True, fused=True)   # fused kernels, padded batches included
    else:
        model = SequenceClassifier(train_feats.shape[1], num_classes, cell=args.cell, hidden_size=args.hidden,
                                   fused=True)
    opt = optim.Adam(model.parameters(), lr=args.lr)
    def loss_fn(b):
        return tg.cross_entropy(predict(model, b), b.targets, mask=b.mask if per_frame else None)
    start = time.perf_counter()
    history = _common.run_epochs(model, opt, train_b, loss_fn, epochs=args.epochs, clip=5.0, seed=args.seed,
                                 desc=args.cell, evaluate=lambda: {"val_acc": evaluate(model, val_b, per_frame)})
    elapsed = time.perf_counter() - start
    acc = history["eval"][-1]["val_acc"]

    what = "frame accuracy" if per_frame else "recording accuracy"
    pictures = [_common.plot_lines(
        {f"{args.cell} val": (history["epoch"], [100 * e["val_acc"] for e in history["eval"]])},
        out / f"spoken_digits_{args.task}.png", title=f"Free Spoken Digits: {what}", xlabel="epoch",
        ylabel="accuracy (%)", hlines={"majority class": 100 * baseline})]
    summary = _common.finish(out, {
        "task": f"spoken_digits_{args.task}", "features": args.features, "cell": args.cell,
        "split": f"speaker {args.holdout_speaker}" if args.holdout_speaker else "indices 5-9",
        "epochs": args.epochs, "seconds": elapsed, "val_accuracy": acc, "majority_baseline": baseline,
        "loss_history": history["train_loss"], "history": history,
    }, pictures)
    _common.result(f"{args.cell} val {what}", 100 * acc, "majority-class baseline", 100 * baseline,
                   better="higher", unit="%", extra=f"{elapsed:.0f}s")
    return summary


if __name__ == "__main__":
    main()
