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
# the 17 Universal POS tags: the tag set is fixed, so it does not depend on which
# sentences --limit keeps (a dev tag unseen in a small training slice is still known)
UPOS_TAGS = ("ADJ", "ADP", "ADV", "AUX", "CCONJ", "DET", "INTJ", "NOUN", "NUM", "PART", "PRON", "PROPN",
             "PUNCT", "SCONJ", "SYM", "VERB", "X")
DIRECTIONS = {"bi": ("bi",), "uni": ("uni",), "both": ("bi", "uni")}
# --quick: the defaults of a seconds-long run; options given explicitly still win
QUICK = dict(epochs=3, embedding=16, hidden=16, batch=16, lr=1e-2, limit=400)


def parse_directions(text):
    """``--directions``: comma-separated bi, uni or both (= bi,uni); an unknown value is a usage error."""
    chosen = []
    for name in _common.name_list(tuple(DIRECTIONS), "direction")(text):
        chosen += [d for d in DIRECTIONS[name] if d not in chosen]
    return chosen


def build_parser():
    p = _common.make_parser(__doc__.splitlines()[0], script=__file__, data_name="ud-english-ewt")
    p.add_argument("--train", default=None, help="training CoNLL-U file (default: DATA/en_ewt-ud-train.conllu)")
    p.add_argument("--dev", default=None, help="evaluation CoNLL-U file (default: DATA/en_ewt-ud-dev.conllu)")
    p.add_argument("--directions", type=parse_directions, default="bi,uni",
                   help="which models to train, comma-separated: bi, uni, or both (= bi,uni)")
    p.add_argument("--epochs", type=_common.positive_int, default=8)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--embedding", type=int, default=64)
    p.add_argument("--hidden", type=int, default=64)
    p.add_argument("--lr", type=float, default=2e-3, help="Adam learning rate")
    p.add_argument("--min-freq", type=int, default=2, help="rarer training words become <unk>")
    p.add_argument("--limit", type=_common.positive_int, default=None,
                   help="use only the first N training sentences")
    return p


def data_paths(args):
    """The (train, dev) CoNLL-U paths; a missing one is a one-line error.

    Files named with --train/--dev are checked first, so a typo in them is
    reported even where the default EWT folder is absent too.
    """
    train = _common.need_data(args.train, "training CoNLL-U file", "--train") if args.train else None
    dev = _common.need_data(args.dev, "evaluation CoNLL-U file", "--dev") if args.dev else None
    folder = Path(args.data)
    if not (train and dev):
        _common.need_data(folder, "UD English EWT folder")
    return (train or _common.need_data(folder / "en_ewt-ud-train.conllu", "UD English EWT train file"),
            dev or _common.need_data(folder / "en_ewt-ud-dev.conllu", "UD English EWT dev file"))


def read_sentences(path, what):
    """The sentences of a CoNLL-U file; a file that is not one is a one-line error."""
    with _common.data_errors(f"{what} {path}"):  # a text file, a binary file, a folder ...
        sentences = data.read_conllu(path)
    if not sentences:
        _common.fail(f"{what} {path} holds no CoNLL-U sentences")
    return sentences


def tag_vocab(sentences):
    """The 17 UPOS tags, then (for a treebank with other tags) any other tag the sentences use."""
    extra = sorted({t for s in sentences for t in s.upos} - set(UPOS_TAGS))
    return data.Vocab(list(UPOS_TAGS) + extra)


def token_accuracy(model, batches):
    return _common.accuracy(lambda b: model(b.inputs, lengths=b.lengths)[0], batches, per_step=True)


def main(argv=None):
    args = _common.parse_args(build_parser(), argv, QUICK)
    train_path, dev_path = data_paths(args)
    train = read_sentences(train_path, "training CoNLL-U file")
    dev = read_sentences(dev_path, "evaluation CoNLL-U file")
    rng, out = _common.setup(args)
    if args.limit:
        train = train[: args.limit]
    if args.quick:
        dev = dev[:100]
    words = data.Vocab.build([s.words for s in train], min_freq=args.min_freq, unk=UNK, specials=(PAD,))
    tags = tag_vocab(train + dev)
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
    for direction in args.directions:
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
