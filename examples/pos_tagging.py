"""Part-of-speech tagging as sequence labelling: one output per word, bidirectional LSTM.

Reads CoNLL-U (Universal Dependencies; default the English Web Treebank) and
tags each word with its UPOS tag (17 tags). A word's tag often depends on
the words after it ("that" before a noun vs before a verb), so a
bidirectional LSTM, which sees the past and the future at every step, beats a
one-directional one. Baseline: each word's most frequent training tag,
unknown words NOUN (86.1 % on EWT dev). Published (data README): BiLSTM
about 87.3 %, one-directional LSTM about 84.7 % after 3 epochs.

    python examples/pos_tagging.py --epochs 8 --lr 2e-3
    python examples/pos_tagging.py --train my-train.conllu --dev my-dev.conllu
"""
from __future__ import annotations

import time
from pathlib import Path

import _common
import tinygraph as tg
from tinygraph import data, optim
from tinygraph.models import SequenceTagger

PAD, UNK = "<pad>", "<unk>"


def build_parser():
    p = _common.make_parser(__doc__.splitlines()[0], script=__file__, data_name="ud-english-ewt")
    p.add_argument("--train", default=None, help="training CoNLL-U file (default: DATA/en_ewt-ud-train.conllu)")
    p.add_argument("--dev", default=None, help="evaluation CoNLL-U file (default: DATA/en_ewt-ud-dev.conllu)")
    p.add_argument("--directions", default="bi,uni", help="which models to train: bi, uni or both")
    p.add_argument("--epochs", type=int, default=8)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--embedding", type=int, default=64)
    p.add_argument("--hidden", type=int, default=64)
    p.add_argument("--lr", type=float, default=2e-3, help="Adam learning rate")
    p.add_argument("--min-freq", type=int, default=2, help="rarer training words become <unk>")
    p.add_argument("--limit", type=int, default=None, help="use only the first N training sentences")
    return p


def token_accuracy(model, batches):
    return _common.accuracy(lambda b: model(b.inputs, lengths=b.lengths)[0], batches, per_step=True)


def main(argv=None):
    args = build_parser().parse_args(argv)
    folder = Path(args.data)
    if not (args.train and args.dev):
        _common.need_data(folder, "UD English EWT folder")
    train_path = (_common.need_data(args.train, "training CoNLL-U file", "--train") if args.train else
                  _common.need_data(folder / "en_ewt-ud-train.conllu", "UD English EWT train file"))
    dev_path = (_common.need_data(args.dev, "evaluation CoNLL-U file", "--dev") if args.dev else
                _common.need_data(folder / "en_ewt-ud-dev.conllu", "UD English EWT dev file"))
    if args.quick:
        args.epochs, args.embedding, args.hidden, args.batch, args.lr = 3, 16, 16, 16, 1e-2
        args.limit = args.limit or 400
    rng, out = _common.setup(args)
    train, dev = data.read_conllu(train_path), data.read_conllu(dev_path)
    if args.limit:
        train = train[: args.limit]
    if args.quick:
        dev = dev[:100]
    words = data.Vocab.build([s.words for s in train], min_freq=args.min_freq, unk=UNK, specials=(PAD,))
    tags = data.Vocab.build([s.upos for s in train])
    baseline = data.most_frequent_tag_baseline(train, dev)
    print(f"POS tagging: {len(train)} train / {len(dev)} dev sentences, {len(words)} words "
          f"({100 * words.unknown_rate(w for s in dev for w in s.words):.1f}% of dev words unknown), "
          f"{len(tags)} tags; most-frequent-tag baseline {100 * baseline:.1f}%")

    def batches(sentences, shuffle):
        return data.make_batches([words.encode(s.words) for s in sentences],
                                 [tags.encode(s.upos) for s in sentences],
                                 batch_size=args.batch, shuffle=shuffle, seed=args.seed)

    train_b, dev_b = batches(train, True), batches(dev, False)
    start = time.perf_counter()
    histories, acc = {}, {}
    for direction in [d.strip() for d in args.directions.split(",") if d.strip()]:
        tg.manual_seed(args.seed)
        model = SequenceTagger(len(words), len(tags), cell="lstm", hidden_size=args.hidden,
                               embedding_dim=args.embedding, bidirectional=direction == "bi",
                               fused=True)  # training speed: fused kernels, padded batches included
        opt = optim.Adam(model.parameters(), lr=args.lr)
        name = "BiLSTM" if direction == "bi" else "LSTM"
        histories[name] = _common.run_epochs(
            model, opt, train_b,
            lambda b: tg.cross_entropy(model(b.inputs, lengths=b.lengths)[0], b.targets, mask=b.mask),
            epochs=args.epochs, clip=5.0, seed=args.seed, desc=f"{name:>6}",
            evaluate=lambda: {"dev_acc": token_accuracy(model, dev_b)})
        acc[name] = histories[name]["eval"][-1]["dev_acc"]
        print(f"{name}: dev token accuracy {100 * acc[name]:.2f}%")
    elapsed = time.perf_counter() - start

    pictures = [_common.plot_lines(
        {n: (h["epoch"], [100 * e["dev_acc"] for e in h["eval"]]) for n, h in histories.items()},
        out / "pos_accuracy.png", title="UPOS tagging, dev token accuracy", xlabel="epoch",
        ylabel="accuracy (%)", hlines={"most frequent tag": 100 * baseline})]
    best = max(acc, key=acc.get)
    summary = _common.finish(out, {
        "task": "pos_tagging", "train": str(train_path), "dev": str(dev_path), "epochs": args.epochs,
        "seconds": elapsed, "dev_accuracy": acc, "most_frequent_tag_baseline": baseline,
        "published": {"BiLSTM": 0.873, "LSTM": 0.847},
        "loss_history": {n: h["train_loss"] for n, h in histories.items()}, "histories": histories,
    }, pictures)
    _common.result(f"{best} dev token accuracy", 100 * acc[best], "most-frequent-tag baseline", 100 * baseline,
                   better="higher", unit="%",
                   extra=", ".join(f"{n} {100 * a:.2f}%" for n, a in acc.items()) + f"; {elapsed:.0f}s")
    return summary


if __name__ == "__main__":
    main()
