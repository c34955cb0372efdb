"""Data for sequence learning: vocabularies, batching, real-data loaders, synthetic tasks.

Everything here returns plain NumPy arrays (time-major ``(T, B, ...)`` where
there is a time axis), so it works with any model and costs nothing to
import. The sections:

- text: :class:`Vocab` with unknown-symbol handling, char/word tokenising,
  contiguous train/validation splits, the embedded ``pydoc_data`` corpus;
- batching: parallel streams and ``(T, B)`` windows for truncated BPTT,
  padding and length-bucketing of variable-length sequences;
- loaders: CoNLL-U (Universal Dependencies), sentence polarity, WAV files and
  the Free Spoken Digit Dataset, with log-mel and MFCC features in NumPy;
- synthetic long-range tasks: the adding problem and the copy task.

Loaders take a path; :func:`shared_data_dir` gives the default
(``$TINYGRAPH_DATA`` or ``../shared/data`` beside the project).
"""
from __future__ import annotations

import collections
import hashlib
import json
import math
import os
import re
import wave
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

__all__ = [
    "Vocab", "char_tokens", "word_tokens", "split_train_val", "seeded_split",
    "pydoc_corpus", "unigram_bits_per_symbol", "shared_data_dir", "require_path",
    "stream_batches", "tbptt_windows", "pad_sequences", "length_mask", "Batch",
    "bucket_batches", "make_batches",
    "Sentence", "read_conllu", "parse_conllu", "most_frequent_tag_baseline",
    "load_sentence_polarity", "read_wav", "power_spectrogram", "mel_filterbank",
    "log_mel", "mfcc", "SpokenDigit", "list_spoken_digits", "split_spoken_digits",
    "adding_problem", "adding_problem_baseline", "copy_task", "copy_task_baseline",
]


# ---------------------------------------------------------------------------
# where the data lives
# ---------------------------------------------------------------------------
def shared_data_dir() -> Path:
    """Default data folder: ``$TINYGRAPH_DATA`` or ``../shared/data`` next to the project.

    The folder may not exist (it does not on a user's machine); callers check
    with :func:`require_path` and tests skip.
    """
    env = os.environ.get("TINYGRAPH_DATA")
    if env:
        return Path(env).expanduser()
    project_root = Path(__file__).resolve().parent.parent
    return (project_root / ".." / "shared" / "data").resolve()


_DOWNLOADS = {
    "tinyshakespeare": "https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt",
    "ud-english-ewt": "https://github.com/UniversalDependencies/UD_English-EWT",
    "sentence-polarity": "http://www.cs.cornell.edu/people/pabo/movie-review-data/rt-polaritydata.tar.gz",
    "free-spoken-digit": "https://github.com/Jakobovski/free-spoken-digit-dataset",
}


def require_path(path, what="data", option="--data") -> Path:
    """Return ``path`` as a Path, or raise FileNotFoundError saying where to get it.

    ``option`` is the command-line option the message tells the user to pass
    the path with (the examples' ``--data``).
    """
    path = Path(path)
    if path.exists():
        return path
    hint = _download_hint(what) or _download_hint(str(path))  # what is asked for first: a path may mislead
    msg = f"{what} not found at {path}"
    if hint:
        msg += f"; download it from {hint}"
    msg += f"; pass its path with {option} (or set TINYGRAPH_DATA to the folder holding it)"
    raise FileNotFoundError(msg)


def _download_hint(text):
    """The download link of the data set ``text`` names ("Tiny Shakespeare text", a path), if any."""
    squashed = "".join(ch for ch in text.lower() if ch.isalnum())
    return next((url for key, url in _DOWNLOADS.items() if key.replace("-", "") in squashed), None)


# ---------------------------------------------------------------------------
# text
# ---------------------------------------------------------------------------
class Vocab:
    """A symbol <-> id table; symbols not in it map to the unknown symbol.

    ``specials`` come first (so ``<pad>`` can be id 0). Without an ``unk``
    symbol, encoding an unseen symbol raises a KeyError that names it.
    """

    def __init__(self, symbols, *, unk=None, specials=()):
        ordered = list(dict.fromkeys(list(specials) + ([unk] if unk is not None else []) + list(symbols)))
        self.itos = ordered
        self.stoi = {s: i for i, s in enumerate(ordered)}
        self.unk = unk
        self.specials = tuple(specials)
        self.unk_id = self.stoi[unk] if unk is not None else None

    @classmethod
    def build(cls, sequences, *, min_freq=1, max_size=None, unk=None, specials=()):
        """Count symbols over ``sequences`` (iterables of symbols); most frequent first.

        Symbols seen fewer than ``min_freq`` times, or beyond ``max_size``,
        are left out and will encode as ``unk``.
        """
        counts = collections.Counter()
        for seq in sequences:
            counts.update(seq)
        # ties broken by first-seen order is not stable across Python hashes of
        # sets, so sort by (-count, symbol) to make vocabularies reproducible
        kept = [s for s, c in sorted(counts.items(), key=lambda kv: (-kv[1], str(kv[0]))) if c >= min_freq]
        reserved = set(specials) | ({unk} if unk is not None else set())
        kept = [s for s in kept if s not in reserved]
        if max_size is not None:
            kept = kept[: max(0, max_size - len(reserved))]
        vocab = cls(kept, unk=unk, specials=specials)
        vocab.counts = counts
        return vocab

    def __len__(self):
        return len(self.itos)

    def __contains__(self, symbol):
        return symbol in self.stoi

    def __getitem__(self, symbol) -> int:
        return self.index(symbol)

    def index(self, symbol) -> int:
        i = self.stoi.get(symbol)
        if i is not None:
            return i
        if self.unk_id is None:
            raise KeyError(f"symbol {symbol!r} is not in the vocabulary of {len(self)} symbols "
                           f"and it has no unknown symbol; build it with unk='<unk>'")
        return self.unk_id

    def encode(self, symbols) -> np.ndarray:
        """Ids of ``symbols`` as an int64 array (unknowns -> ``unk`` id)."""
        get, unk = self.stoi.get, self.unk_id
        symbols = list(symbols)  # an iterator is read twice when a symbol is missing
        ids = [get(s, unk) for s in symbols]
        if unk is None and None in ids:
            bad = next(s for s, i in zip(symbols, ids) if i is None)
            self.index(bad)  # raises the explanatory KeyError
        return np.asarray(ids, dtype=np.int64)

    def decode(self, ids, sep=""):
        """Symbols of ``ids`` joined by ``sep`` (a list when ``sep`` is None)."""
        symbols = [self.itos[int(i)] for i in np.asarray(ids).ravel()]
        return symbols if sep is None else sep.join(symbols)

    def unknown_rate(self, symbols) -> float:
        """Fraction of ``symbols`` that encode as unknown."""
        symbols = list(symbols)
        return sum(s not in self.stoi for s in symbols) / max(len(symbols), 1)

    def to_json(self) -> str:
        return json.dumps({"itos": self.itos, "unk": self.unk, "specials": list(self.specials)})

    @classmethod
    def from_json(cls, text):
        d = json.loads(text)
        return cls([s for s in d["itos"]], unk=d["unk"], specials=d["specials"])

    def __repr__(self):
        head = ", ".join(repr(s) for s in self.itos[:8])
        return f"Vocab({len(self)} symbols: {head}{', ...' if len(self) > 8 else ''}; unk={self.unk!r})"


def char_tokens(text: str) -> list:
    """One token per character (newlines included: they are part of the text)."""
    return list(text)


_WORD_RE = re.compile(r"\S+")


def word_tokens(text: str, lower: bool = False) -> list:
    """Whitespace tokens (the polarity data is already tokenised)."""
    return _WORD_RE.findall(text.lower() if lower else text)


def split_train_val(sequence, val_fraction=0.1, val_size=None):
    """Contiguous split: the first part trains, the rest validates (no shuffling,
    so a text's validation part is unseen prose, not interleaved lines).

    ``val_size`` (an absolute count) overrides ``val_fraction``; the
    tinyshakespeare baselines use the first 90 % for training and the next
    100,000 characters for validation.
    """
    n = len(sequence)
    n_train = int(round(n * (1.0 - val_fraction)))
    if not 0 < n_train < n:
        raise ValueError(f"split_train_val: val_fraction={val_fraction} leaves an empty split of {n} items")
    train = sequence[:n_train]
    val = sequence[n_train:] if val_size is None else sequence[n_train:n_train + val_size]
    return train, val


def seeded_split(n_items, fractions=(0.8, 0.1, 0.1), seed=0):
    """Index arrays that partition ``range(n_items)`` by ``fractions``, shuffled with ``seed``.

    The same ``(n_items, fractions, seed)`` always gives the same split.
    """
    fractions = np.asarray(fractions, dtype=float)
    if np.any(fractions < 0) or not math.isclose(fractions.sum(), 1.0, abs_tol=1e-6):
        raise ValueError(f"seeded_split: fractions must be non-negative and sum to 1, got {tuple(fractions)}")
    order = np.random.default_rng(seed).permutation(n_items)
    bounds = np.round(np.cumsum(fractions) * n_items).astype(int)
    return [np.sort(part) for part in np.split(order, bounds[:-1])]


def pydoc_corpus():
    """Python's own documentation text (``pydoc_data/topics.py``), always installed.

    Returns ``(text, info)``; ``info`` has the file path, its sha256 and the
    Python version, because the text changes between Python versions.
    """
    import platform

    import pydoc_data.topics as topics
    path = Path(topics.__file__)
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    text = "\n".join(topics.topics[key] for key in sorted(topics.topics))
    info = {"path": str(path), "sha256": digest, "python": platform.python_version(), "chars": len(text)}
    return text, info


def unigram_bits_per_symbol(train_ids, val_ids, vocab_size) -> float:
    """Cross-entropy (bits/symbol) of ``val_ids`` under add-one-smoothed train frequencies.

    The baseline a language model must beat: it knows how often each symbol
    occurs but nothing about order.
    """
    counts = np.bincount(np.asarray(train_ids).ravel(), minlength=vocab_size).astype(np.float64) + 1.0
    probs = counts / counts.sum()
    return float(-np.mean(np.log2(probs[np.asarray(val_ids).ravel()])))


# ---------------------------------------------------------------------------
# batching
# ---------------------------------------------------------------------------
def stream_batches(ids, batch_size):
    """Lay a long id sequence out as ``batch_size`` parallel streams, shape ``(N, B)``.

    Stream b is the b-th contiguous slice of the text, so consecutive windows
    of one column continue each other and a carried hidden state stays
    meaningful (the layout truncated BPTT needs). The tail that does not fill
    a full row is dropped.
    """
    ids = np.asarray(ids)
    n = len(ids) // batch_size
    if n < 2:
        raise ValueError(f"stream_batches: {len(ids)} symbols are too few for {batch_size} streams")
    return ids[: n * batch_size].reshape(batch_size, n).T.copy()


def tbptt_windows(streams, window, *, offset=0):
    """Yield ``(inputs, targets)`` windows, each ``(T, B)`` with ``T <= window``,
    where targets are inputs shifted one step ahead (next-symbol prediction).

    ``offset`` starts later (a random offset per epoch varies where windows cut).
    """
    streams = np.asarray(streams)
    last = streams.shape[0] - 1
    for start in range(offset, last, window):
        stop = min(start + window, last)
        yield streams[start:stop], streams[start + 1: stop + 1]


def pad_sequences(sequences, *, pad_value=0, dtype=None, max_len=None):
    """Stack variable-length sequences time-major: ``(T_max, B, ...)`` and ``lengths (B,)``.

    Each sequence is an array ``(T_i,)`` or ``(T_i, D)``; ``max_len`` truncates.
    """
    arrays = [np.asarray(s) for s in sequences]
    if not arrays:
        raise ValueError("pad_sequences: no sequences given")
    if max_len is not None:
        arrays = [a[:max_len] for a in arrays]
    lengths = np.array([len(a) for a in arrays], dtype=np.int64)
    tails = {a.shape[1:] for a in arrays}
    if len(tails) > 1:
        raise ValueError(f"pad_sequences: sequences differ in feature shape: {sorted(tails)}")
    # an empty Python list reads as float64: let only the non-empty sequences choose the dtype
    dtype = dtype or np.result_type(*([a for a in arrays if a.size] or arrays))
    out = np.full((int(lengths.max(initial=0)), len(arrays)) + arrays[0].shape[1:], pad_value, dtype=dtype)
    for b, a in enumerate(arrays):
        out[: len(a), b] = a
    return out, lengths


def length_mask(lengths, max_len=None):
    """Boolean ``(T, B)`` mask, True at real (unpadded) steps."""
    lengths = np.asarray(lengths)
    T = int(lengths.max(initial=0)) if max_len is None else max_len
    return np.arange(T)[:, None] < lengths[None, :]


@dataclass
class Batch:
    """A padded time-major batch: ``inputs (T, B, ...)``, ``lengths (B,)``, ``mask (T, B)``,
    ``targets`` either per step ``(T, B)`` or per sequence ``(B,)``, and the
    ``indices`` of its items in the source list."""

    inputs: np.ndarray
    lengths: np.ndarray
    mask: np.ndarray
    targets: np.ndarray = None
    indices: np.ndarray = field(default=None)

    def __len__(self):
        return len(self.lengths)


def bucket_batches(lengths, batch_size, *, shuffle=True, seed=0, bucket_factor=50):
    """Group item indices into batches of similar length (less padding).

    Items are shuffled, cut into pools of ``batch_size * bucket_factor``,
    sorted by length within each pool and sliced into batches; the batch
    order is shuffled again. ``shuffle=False`` sorts everything by length.
    """
    lengths = np.asarray(lengths)
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(lengths)) if shuffle else np.arange(len(lengths))
    pool = max(len(lengths), 1) if not shuffle else max(batch_size * bucket_factor, batch_size)
    batches = []
    for start in range(0, len(order), pool):
        chunk = order[start:start + pool]
        chunk = chunk[np.argsort(lengths[chunk], kind="stable")]
        batches += [chunk[i:i + batch_size] for i in range(0, len(chunk), batch_size)]
    if shuffle:
        batches = [batches[i] for i in rng.permutation(len(batches))]
    return batches


def make_batches(sequences, targets=None, *, batch_size=32, shuffle=True, seed=0, bucket=True,
                 pad_value=0, max_len=None):
    """Padded, length-bucketed :class:`Batch` objects for a list of sequences.

    ``targets`` may be one label per sequence (ints) or one label sequence per
    sequence (padded like the inputs; the mask says which steps count).
    """
    lengths = np.array([min(len(s), max_len or len(s)) for s in sequences])
    if bucket:
        groups = bucket_batches(lengths, batch_size, shuffle=shuffle, seed=seed)
    else:
        order = np.random.default_rng(seed).permutation(len(sequences)) if shuffle else np.arange(len(sequences))
        groups = [order[i:i + batch_size] for i in range(0, len(order), batch_size)]
    per_step = targets is not None and len(targets) and np.ndim(targets[0]) > 0
    out = []
    for idx in groups:
        inputs, lens = pad_sequences([sequences[i] for i in idx], pad_value=pad_value, max_len=max_len)
        if targets is None:
            tgt = None
        elif per_step:
            tgt, _ = pad_sequences([targets[i] for i in idx], pad_value=0, max_len=max_len)
        else:
            tgt = np.asarray([targets[i] for i in idx])
        out.append(Batch(inputs, lens, length_mask(lens), tgt, np.asarray(idx)))
    return out


# ---------------------------------------------------------------------------
# CoNLL-U (Universal Dependencies)
# ---------------------------------------------------------------------------
@dataclass
class Sentence:
    """One CoNLL-U sentence: the syntactic words with their UPOS/XPOS tags,
    the surface multi-word tokens (``((start, end), form)``, e.g.
    ``((3, 4), "don't")``) and the ``# key = value`` comments."""

    words: list
    upos: list
    xpos: list = field(default_factory=list)
    lemmas: list = field(default_factory=list)
    multiword_tokens: list = field(default_factory=list)
    comments: dict = field(default_factory=dict)

    @property
    def sent_id(self):
        return self.comments.get("sent_id")

    @property
    def text(self):
        return self.comments.get("text")

    def __len__(self):
        return len(self.words)


def parse_conllu(lines, source="<lines>"):
    """Parse CoNLL-U lines into :class:`Sentence` objects.

    Word lines (integer ID) become words; multi-word token lines (``3-4``)
    are kept aside as surface tokens, not tagged words; empty nodes (``5.1``,
    enhanced-dependency copies) are skipped; ``#`` lines are comments.
    """
    sentences, words, upos, xpos, lemmas, mwts, comments = [], [], [], [], [], [], {}

    def flush():
        nonlocal words, upos, xpos, lemmas, mwts, comments
        if words:
            sentences.append(Sentence(words, upos, xpos, lemmas, mwts, comments))
        words, upos, xpos, lemmas, mwts, comments = [], [], [], [], [], {}

    for lineno, raw in enumerate(lines, 1):
        line = raw.rstrip("\n").rstrip("\r")
        if not line.strip():
            flush()
            continue
        if line.startswith("#"):
            key, sep, value = line[1:].partition("=")
            comments[key.strip()] = value.strip() if sep else ""
            continue
        cols = line.split("\t")
        if len(cols) != 10:
            raise ValueError(f"{source}:{lineno}: a CoNLL-U word line has 10 tab-separated columns, "
                             f"this one has {len(cols)}: {line[:60]!r}")
        token_id = cols[0]
        if "." in token_id:  # empty node: not a surface word
            continue
        if "-" in token_id:
            start, _, end = token_id.partition("-")
            mwts.append(((int(start), int(end)), cols[1]))
            continue
        words.append(cols[1])
        lemmas.append(cols[2])
        upos.append(cols[3])
        xpos.append(cols[4])
    flush()
    return sentences


def read_conllu(path):
    """Read a CoNLL-U file into a list of :class:`Sentence`."""
    path = require_path(path, "CoNLL-U file")
    with open(path, encoding="utf-8-sig") as f:   # -sig: a byte-order mark at the start is not text
        return parse_conllu(f, source=str(path))


def most_frequent_tag_baseline(train_sentences, eval_sentences, unknown_tag="NOUN"):
    """Token accuracy of tagging each word with its most frequent training tag
    (unseen words get ``unknown_tag``): the baseline a tagger must beat."""
    counts = collections.defaultdict(collections.Counter)
    for s in train_sentences:
        for w, t in zip(s.words, s.upos):
            counts[w][t] += 1
    best = {w: c.most_common(1)[0][0] for w, c in counts.items()}
    total = correct = 0
    for s in eval_sentences:
        for w, t in zip(s.words, s.upos):
            correct += best.get(w, unknown_tag) == t
            total += 1
    return correct / max(total, 1)


# ---------------------------------------------------------------------------
# sentence polarity (Pang & Lee)
# ---------------------------------------------------------------------------
def load_sentence_polarity(root, *, fractions=(0.8, 0.1, 0.1), seed=0, lower=True):
    """Load ``rt-polarity.pos/.neg`` and split them with a fixed seed.

    Returns ``{"train": (tokens_list, labels), "val": ..., "test": ...}`` with
    labels 1 = positive, 0 = negative. The split depends only on ``seed``.
    """
    root = require_path(root, "sentence-polarity folder")
    texts, labels = [], []
    for name, label in (("rt-polarity.neg", 0), ("rt-polarity.pos", 1)):
        # a few bytes in the original release are not valid UTF-8
        with open(require_path(root / name, "sentence-polarity file"), encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.strip():
                    texts.append(word_tokens(line, lower=lower))
                    labels.append(label)
    labels = np.asarray(labels, dtype=np.int64)
    parts = seeded_split(len(texts), fractions, seed)
    names = ("train", "val", "test")[: len(parts)]
    return {n: ([texts[i] for i in idx], labels[idx]) for n, idx in zip(names, parts)}


# ---------------------------------------------------------------------------
# audio: WAV reading and spectral features
# ---------------------------------------------------------------------------
def read_wav(path):
    """Read a PCM WAV file: ``(samples float32 in [-1, 1], sample_rate)``; channels are averaged."""
    with wave.open(str(require_path(path, "WAV file")), "rb") as w:
        channels, width, rate, n = w.getnchannels(), w.getsampwidth(), w.getframerate(), w.getnframes()
        raw = w.readframes(n)
    if width == 1:  # 8-bit WAV is unsigned
        x = (np.frombuffer(raw, np.uint8).astype(np.float32) - 128.0) / 128.0
    elif width == 2:
        x = np.frombuffer(raw, "<i2").astype(np.float32) / 32768.0
    elif width == 3:
        b = np.frombuffer(raw, np.uint8).reshape(-1, 3).astype(np.int32)
        v = b[:, 0] | (b[:, 1] << 8) | (b[:, 2] << 16)
        x = (np.where(v >= 1 << 23, v - (1 << 24), v)).astype(np.float32) / float(1 << 23)
    elif width == 4:
        x = np.frombuffer(raw, "<i4").astype(np.float32) / float(1 << 31)
    else:
        raise ValueError(f"read_wav: {path}: unsupported sample width {width} bytes")
    return x.reshape(-1, channels).mean(axis=1), rate


def _frames(signal, frame_len, hop):
    if len(signal) < frame_len:
        signal = np.pad(signal, (0, frame_len - len(signal)))
    n = 1 + (len(signal) - frame_len) // hop
    idx = np.arange(frame_len)[None, :] + hop * np.arange(n)[:, None]
    return signal[idx]


def power_spectrogram(signal, rate, *, frame_ms=25.0, hop_ms=10.0, n_fft=None, preemphasis=0.97):
    """Power spectrum of Hamming-windowed frames: ``(frames, n_fft // 2 + 1)``."""
    signal = np.asarray(signal, dtype=np.float64)
    if preemphasis:
        signal = np.append(signal[:1], signal[1:] - preemphasis * signal[:-1])
    frame_len = int(round(rate * frame_ms / 1000))
    hop = int(round(rate * hop_ms / 1000))
    n_fft = n_fft or 1 << (frame_len - 1).bit_length()
    frames = _frames(signal, frame_len, hop) * np.hamming(frame_len)
    return np.abs(np.fft.rfft(frames, n=n_fft)) ** 2 / n_fft


def _hz_to_mel(f):
    return 2595.0 * np.log10(1.0 + np.asarray(f) / 700.0)


def _mel_to_hz(m):
    return 700.0 * (10.0 ** (np.asarray(m) / 2595.0) - 1.0)


def mel_filterbank(n_mels, n_fft, rate, fmin=0.0, fmax=None):
    """Triangular filters equally spaced on the mel scale: ``(n_mels, n_fft // 2 + 1)``."""
    fmax = fmax or rate / 2
    mel_points = np.linspace(_hz_to_mel(fmin), _hz_to_mel(fmax), n_mels + 2)
    bins = np.fft.rfftfreq(n_fft, 1.0 / rate)
    hz = _mel_to_hz(mel_points)
    lower, centre, upper = hz[:-2, None], hz[1:-1, None], hz[2:, None]
    rising = (bins[None, :] - lower) / np.maximum(centre - lower, 1e-9)
    falling = (upper - bins[None, :]) / np.maximum(upper - centre, 1e-9)
    return np.maximum(0.0, np.minimum(rising, falling))


def log_mel(signal, rate, *, n_mels=40, frame_ms=25.0, hop_ms=10.0, n_fft=None):
    """Log mel-band energies per frame: ``(frames, n_mels)``, float32."""
    power = power_spectrogram(signal, rate, frame_ms=frame_ms, hop_ms=hop_ms, n_fft=n_fft)
    n_fft = 2 * (power.shape[1] - 1)
    energies = power @ mel_filterbank(n_mels, n_fft, rate).T
    return np.log(energies + 1e-10).astype(np.float32)


def _dct_matrix(n_out, n_in):
    """Orthonormal DCT-II basis, rows = coefficients."""
    k = np.arange(n_out)[:, None]
    n = np.arange(n_in)[None, :]
    basis = np.cos(np.pi * k * (2 * n + 1) / (2 * n_in)) * np.sqrt(2.0 / n_in)
    basis[0] /= np.sqrt(2.0)
    return basis


def mfcc(signal, rate, *, n_mfcc=13, n_mels=40, frame_ms=25.0, hop_ms=10.0):
    """Mel-frequency cepstral coefficients: DCT-II of the log mel energies, ``(frames, n_mfcc)``."""
    logmel = log_mel(signal, rate, n_mels=n_mels, frame_ms=frame_ms, hop_ms=hop_ms).astype(np.float64)
    return (logmel @ _dct_matrix(n_mfcc, n_mels).T).astype(np.float32)


@dataclass(frozen=True)
class SpokenDigit:
    """One Free Spoken Digit recording: ``{digit}_{speaker}_{index}.wav``."""

    path: Path
    digit: int
    speaker: str
    index: int


_FSDD_NAME = re.compile(r"^(\d)_([A-Za-z]+)_(\d+)\.wav$")


def list_spoken_digits(folder):
    """Every recording in a Free Spoken Digit folder, sorted by file name."""
    folder = require_path(folder, "free-spoken-digit folder")
    items = []
    for p in sorted(folder.iterdir()):
        m = _FSDD_NAME.match(p.name)
        if m:
            items.append(SpokenDigit(p, int(m.group(1)), m.group(2), int(m.group(3))))
    if not items:
        raise FileNotFoundError(f"no files named digit_speaker_index.wav in {folder}")
    return items


def split_spoken_digits(items, *, holdout_speaker=None, val_indices=range(5, 10)):
    """Split recordings into (train, val).

    ``holdout_speaker`` holds out every recording of one speaker (a test of
    generalising to a new voice); otherwise recordings whose index falls in
    ``val_indices`` validate, mirroring the official index-based test split.
    """
    if holdout_speaker is not None:
        speakers = sorted({it.speaker for it in items})
        if holdout_speaker not in speakers:
            raise ValueError(f"split_spoken_digits: unknown speaker {holdout_speaker!r}; speakers are {speakers}")
        return ([it for it in items if it.speaker != holdout_speaker],
                [it for it in items if it.speaker == holdout_speaker])
    val_indices = set(val_indices)
    return [it for it in items if it.index not in val_indices], [it for it in items if it.index in val_indices]


# ---------------------------------------------------------------------------
# synthetic long-range tasks (Arjovsky, Shah & Bengio 2016 forms)
# ---------------------------------------------------------------------------
def adding_problem(n, T, *, seed=None, rng=None, dtype=np.float32):
    """The adding problem: inputs ``(T, n, 2)`` (value in U[0,1], marker), targets ``(n, 1)``.

    Exactly one marker falls in each half of the sequence; the target is the
    sum of the two marked values. Predicting the mean scores MSE 1/6.
    """
    if T < 2:
        raise ValueError(f"adding_problem: T must be at least 2, got {T}")
    rng = rng if rng is not None else np.random.default_rng(seed)
    values = rng.random((T, n))
    half = T // 2
    first = rng.integers(0, half, size=n)
    second = rng.integers(half, T, size=n)
    markers = np.zeros((T, n))
    cols = np.arange(n)
    markers[first, cols] = 1.0
    markers[second, cols] = 1.0
    x = np.stack([values, markers], axis=-1).astype(dtype)
    y = (values[first, cols] + values[second, cols])[:, None].astype(dtype)
    return x, y


def adding_problem_baseline() -> float:
    """MSE of always predicting 1 (the mean of the target): Var(U+U) = 1/6."""
    return 1.0 / 6.0


COPY_BLANK, COPY_DELIMITER = 0, 9


def copy_task(n, T, *, n_symbols=8, copy_len=10, seed=None, rng=None):
    """The copy task: integer inputs and targets, both ``(T + 2 * copy_len, n)``.

    Inputs: ``copy_len`` symbols drawn from 1..n_symbols, T-1 blanks (0), a
    delimiter (n_symbols + 1) and ``copy_len`` more blanks. Targets: T +
    copy_len blanks, then the symbols. ``n_symbols + 2`` classes in all.
    """
    if T < 1:
        raise ValueError(f"copy_task: T must be at least 1, got {T}")
    rng = rng if rng is not None else np.random.default_rng(seed)
    symbols = rng.integers(1, n_symbols + 1, size=(copy_len, n))
    length = T + 2 * copy_len
    x = np.zeros((length, n), dtype=np.int64)
    y = np.zeros((length, n), dtype=np.int64)
    x[:copy_len] = symbols
    x[copy_len + T - 1] = n_symbols + 1
    y[-copy_len:] = symbols
    return x, y


def copy_task_baseline(T, *, n_symbols=8, copy_len=10) -> float:
    """Mean cross-entropy per step of a memoryless model: copy_len * ln(n_symbols) / (T + 2 copy_len)."""
    return copy_len * math.log(n_symbols) / (T + 2 * copy_len)
