"""Data loaders and batching: vocabularies, CoNLL-U, padding/bucketing, features, synthetic tasks."""
import io
import math
import wave

import numpy as np
import pytest

from tinygraph import data

SHARED = data.shared_data_dir()

CONLLU = """\
# newdoc id = doc1
# sent_id = s1
# text = I don't know.
1\tI\tI\tPRON\tPRP\t_\t3\tnsubj\t_\t_
2-3\tdon't\t_\t_\t_\t_\t_\t_\t_\t_
2\tdo\tdo\tAUX\tVBP\t_\t4\taux\t_\t_
3\tn't\tnot\tPART\tRB\t_\t4\tadvmod\t_\t_
4\tknow\tknow\tVERB\tVB\t_\t0\troot\t_\t_
4.1\tknow\tknow\tVERB\tVB\t_\t_\t_\t0:root\tCopyOf=4
5\t.\t.\tPUNCT\t.\t_\t4\tpunct\t_\t_

# sent_id = s2
1\tHello\thello\tINTJ\tUH\t_\t0\troot\t_\t_
"""


# -- vocabulary -------------------------------------------------------------
def test_vocab_maps_unknown_symbols_to_unk():
    vocab = data.Vocab.build([list("abracadabra")], unk="<unk>", specials=("<pad>",))
    assert vocab.itos[0] == "<pad>" and vocab.itos[1] == "<unk>"
    ids = vocab.encode(list("abz"))
    assert ids[2] == vocab.unk_id and ids[0] != vocab.unk_id
    assert vocab.decode(vocab.encode(list("cab"))) == "cab"
    assert vocab.unknown_rate(list("azzz")) == pytest.approx(0.75)


def test_vocab_orders_by_frequency_and_respects_min_freq_and_max_size():
    vocab = data.Vocab.build([["x", "y", "y", "z", "z", "z"]], unk="<unk>", min_freq=2)
    assert vocab.itos == ["<unk>", "z", "y"]
    assert vocab.encode(["x"])[0] == vocab.unk_id
    small = data.Vocab.build([["x", "y", "y", "z", "z", "z"]], unk="<unk>", max_size=2)
    assert len(small) == 2 and "z" in small and "y" not in small


def test_vocab_without_unk_names_the_unknown_symbol():
    vocab = data.Vocab.build(["ab"])
    with pytest.raises(KeyError, match="'q'"):
        vocab.encode("aq")


def test_vocab_json_round_trip():
    vocab = data.Vocab.build([data.word_tokens("the cat sat on the mat")], unk="<unk>", specials=("<pad>",))
    again = data.Vocab.from_json(vocab.to_json())
    assert again.itos == vocab.itos and again.unk_id == vocab.unk_id


def test_word_and_char_tokens():
    assert data.word_tokens("The  cat\nsat", lower=True) == ["the", "cat", "sat"]
    assert data.char_tokens("a\nb") == ["a", "\n", "b"]


def test_contiguous_and_seeded_splits():
    train, val = data.split_train_val(np.arange(100), 0.1)
    assert list(train) == list(range(90)) and list(val) == list(range(90, 100))
    parts = data.seeded_split(50, (0.6, 0.2, 0.2), seed=3)
    assert sorted(np.concatenate(parts).tolist()) == list(range(50))
    assert [len(p) for p in parts] == [30, 10, 10]
    again = data.seeded_split(50, (0.6, 0.2, 0.2), seed=3)
    assert all(np.array_equal(a, b) for a, b in zip(parts, again))
    other = data.seeded_split(50, (0.6, 0.2, 0.2), seed=4)
    assert not np.array_equal(parts[1], other[1])


def test_unigram_baseline_is_entropy_for_matching_frequencies():
    ids = np.array([0, 1] * 500)
    assert data.unigram_bits_per_symbol(ids, ids, 2) == pytest.approx(1.0, abs=1e-6)


def test_pydoc_corpus_is_always_there_with_its_hash():
    text, info = data.pydoc_corpus()
    assert len(text) > 100_000 and len(info["sha256"]) == 64


# -- batching ---------------------------------------------------------------
def test_stream_batches_make_parallel_contiguous_streams():
    streams = data.stream_batches(np.arange(103), batch_size=4)
    assert streams.shape == (25, 4)
    assert list(streams[:, 1]) == list(range(25, 50))  # column b continues in time


def test_tbptt_windows_shift_targets_by_one_and_cover_the_stream():
    streams = data.stream_batches(np.arange(40), batch_size=2)  # (20, 2)
    windows = list(data.tbptt_windows(streams, window=6))
    assert [x.shape for x, _ in windows] == [(6, 2), (6, 2), (6, 2), (1, 2)]
    for x, y in windows:
        assert np.array_equal(y, x + 1)
    assert sum(len(x) for x, _ in windows) == len(streams) - 1


def test_pad_sequences_is_time_major_with_lengths():
    padded, lengths = data.pad_sequences([[1, 2, 3], [4], [5, 6]], pad_value=0)
    assert padded.shape == (3, 3)
    assert list(lengths) == [3, 1, 2]
    assert list(padded[:, 1]) == [4, 0, 0]
    mask = data.length_mask(lengths)
    assert mask.sum() == 6 and mask[0].all() and not mask[1, 1]
    feats, lens = data.pad_sequences([np.ones((4, 3)), np.ones((2, 3))])
    assert feats.shape == (4, 2, 3) and feats[2:, 1].sum() == 0


def test_pad_sequences_rejects_mixed_feature_shapes():
    with pytest.raises(ValueError, match="feature shape"):
        data.pad_sequences([np.ones((2, 3)), np.ones((2, 4))])


def test_bucket_batches_cover_every_item_once_and_reduce_padding():
    rng = np.random.default_rng(0)
    lengths = rng.integers(1, 60, size=500)
    batches = data.bucket_batches(lengths, 16, seed=1)
    flat = np.concatenate(batches)
    assert sorted(flat.tolist()) == list(range(500))
    assert all(len(b) <= 16 for b in batches)
    bucketed_pad = sum(lengths[b].max() * len(b) - lengths[b].sum() for b in batches)
    order = rng.permutation(500)
    random_pad = sum(lengths[b].max() * len(b) - lengths[b].sum()
                     for b in np.array_split(order, len(batches)))
    assert bucketed_pad < random_pad / 3


def test_make_batches_with_per_step_and_per_sequence_targets():
    seqs = [np.arange(n) for n in (5, 3, 4, 1)]
    tags = [np.arange(n) + 10 for n in (5, 3, 4, 1)]
    batches = data.make_batches(seqs, tags, batch_size=2, seed=0)
    assert sum(len(b) for b in batches) == 4
    for b in batches:
        assert b.inputs.shape == b.targets.shape == b.mask.shape
        assert np.array_equal(b.targets[b.mask], b.inputs[b.mask] + 10)
    labels = data.make_batches(seqs, [0, 1, 0, 1], batch_size=3, shuffle=False)
    assert [b.targets.shape for b in labels] == [(3,), (1,)]
    assert [list(b.lengths) for b in labels] == [[1, 3, 4], [5]]


# -- CoNLL-U ----------------------------------------------------------------
def test_conllu_skips_multiword_tokens_and_empty_nodes_and_keeps_comments():
    sentences = data.parse_conllu(io.StringIO(CONLLU))
    assert len(sentences) == 2
    s = sentences[0]
    assert s.words == ["I", "do", "n't", "know", "."]
    assert s.upos == ["PRON", "AUX", "PART", "VERB", "PUNCT"]
    assert s.multiword_tokens == [((2, 3), "don't")]
    assert s.sent_id == "s1" and s.text == "I don't know." and s.comments["newdoc id"] == "doc1"
    assert sentences[1].words == ["Hello"] and sentences[1].comments == {"sent_id": "s2"}


def test_conllu_reports_malformed_lines_with_location():
    with pytest.raises(ValueError, match="<lines>:1"):
        data.parse_conllu(["1\tonly\tthree\n"])


def test_most_frequent_tag_baseline_tags_unknowns_as_noun():
    train = data.parse_conllu(io.StringIO(CONLLU))
    test = [data.Sentence(["I", "zebra"], ["PRON", "NOUN"])]
    assert data.most_frequent_tag_baseline(train, test) == 1.0


@pytest.mark.skipif(not (SHARED / "ud-english-ewt").exists(), reason="shared UD English EWT data absent")
def test_ewt_dev_matches_the_published_counts_and_baseline():
    dev = data.read_conllu(SHARED / "ud-english-ewt" / "en_ewt-ud-dev.conllu")
    assert len(dev) == 2001 and sum(len(s) for s in dev) == 25147
    assert any(s.multiword_tokens for s in dev)


# -- sentence polarity -------------------------------------------------------
def test_sentence_polarity_split_is_fixed_by_the_seed(tmp_path):
    (tmp_path / "rt-polarity.pos").write_text("\n".join(f"good film {i}" for i in range(30)) + "\n")
    (tmp_path / "rt-polarity.neg").write_bytes(b"".join(b"bad film \xe9 %d\n" % i for i in range(30)))
    a = data.load_sentence_polarity(tmp_path, seed=7)
    b = data.load_sentence_polarity(tmp_path, seed=7)
    assert [len(a[k][0]) for k in ("train", "val", "test")] == [48, 6, 6]
    assert a["val"][0] == b["val"][0]
    assert set(np.concatenate([a[k][1] for k in a]).tolist()) == {0, 1}
    assert a["train"][0][0][0] in ("good", "bad")


def test_missing_data_error_says_where_to_download(tmp_path):
    with pytest.raises(FileNotFoundError, match="cornell"):
        data.load_sentence_polarity(tmp_path / "sentence-polarity")


# -- audio ------------------------------------------------------------------
def _write_tone(path, freq=440.0, rate=8000, seconds=0.5):
    t = np.arange(int(rate * seconds)) / rate
    pcm = (0.5 * np.sin(2 * np.pi * freq * t) * 32767).astype("<i2")
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(pcm.tobytes())


def test_read_wav_and_feature_shapes(tmp_path):
    _write_tone(tmp_path / "tone.wav")
    x, rate = data.read_wav(tmp_path / "tone.wav")
    assert rate == 8000 and x.shape == (4000,) and np.abs(x).max() == pytest.approx(0.5, abs=1e-3)
    frames = 1 + (4000 - 200) // 80
    assert data.log_mel(x, rate, n_mels=40).shape == (frames, 40)
    assert data.mfcc(x, rate, n_mfcc=13).shape == (frames, 13)


def test_log_mel_peaks_in_the_band_of_the_tone(tmp_path):
    _write_tone(tmp_path / "low.wav", freq=300.0)
    _write_tone(tmp_path / "high.wav", freq=3000.0)
    low = data.log_mel(*data.read_wav(tmp_path / "low.wav"), n_mels=20).mean(axis=0)
    high = data.log_mel(*data.read_wav(tmp_path / "high.wav"), n_mels=20).mean(axis=0)
    assert low.argmax() < 6 < high.argmax()


def test_mel_filterbank_triangles_are_in_range_and_cover_the_band():
    fb = data.mel_filterbank(20, 256, 8000)
    assert fb.shape == (20, 129) and fb.min() >= 0 and fb.max() <= 1 + 1e-9
    assert (fb.sum(axis=0)[3:-3] > 0).all()


def test_spoken_digit_names_and_splits(tmp_path):
    for name in ("3_alice_5.wav", "3_alice_20.wav", "7_bob_6.wav", "7_bob_30.wav", "notes.txt"):
        (tmp_path / name).write_bytes(b"")
    items = data.list_spoken_digits(tmp_path)
    assert [(i.digit, i.speaker, i.index) for i in items][0] == (3, "alice", 20)
    train, val = data.split_spoken_digits(items)
    assert {i.index for i in val} == {5, 6}
    train, val = data.split_spoken_digits(items, holdout_speaker="bob")
    assert {i.speaker for i in val} == {"bob"} and {i.speaker for i in train} == {"alice"}


# -- synthetic tasks ----------------------------------------------------------
def test_adding_problem_has_one_marker_per_half_and_sum_targets():
    x, y = data.adding_problem(64, 20, seed=0)
    assert x.shape == (20, 64, 2) and y.shape == (64, 1)
    markers = x[..., 1]
    assert (markers[:10].sum(axis=0) == 1).all() and (markers[10:].sum(axis=0) == 1).all()
    assert np.allclose((x[..., 0] * markers).sum(axis=0), y[:, 0])
    assert data.adding_problem_baseline() == pytest.approx(1 / 6)


def test_copy_task_layout_and_baseline():
    x, y = data.copy_task(5, T=12, seed=0)
    assert x.shape == y.shape == (32, 5)
    assert np.array_equal(y[-10:], x[:10]) and (x[:10] >= 1).all() and (x[:10] <= 8).all()
    assert (x[10 + 11] == 9).all() and (y[:-10] == 0).all()
    assert data.copy_task_baseline(100) == pytest.approx(10 * math.log(8) / 120)


def test_require_path_message_reads_as_one_sentence(tmp_path):
    with pytest.raises(FileNotFoundError) as err:
        data.require_path(tmp_path / "nonexistent", "my data folder")   # no known data set named
    msg = str(err.value)
    assert msg == (f"my data folder not found at {tmp_path / 'nonexistent'}; "
                   "pass its path with --data (or set TINYGRAPH_DATA to the folder holding it)")
    with pytest.raises(FileNotFoundError) as err:  # a known data set: where to download it, then the same advice
        data.require_path(tmp_path / "sentence-polarity", "sentence-polarity folder")
    assert "; download it from http" in str(err.value)
    assert str(err.value).endswith("; pass its path with --data (or set TINYGRAPH_DATA to the folder holding it)")
    with pytest.raises(FileNotFoundError) as err:
        data.require_path(tmp_path / "x.conllu", "CoNLL-U file", option="--train")
    assert "pass its path with --train" in str(err.value)


# -- found in review ------------------------------------------------------------------------
def test_encoding_an_iterator_with_an_unknown_symbol_names_it():
    vocab = data.Vocab.build(["ab"])
    with pytest.raises(KeyError, match="'z' is not in the vocabulary"):
        vocab.encode(iter("abz"))
    np.testing.assert_array_equal(vocab.encode(iter("ba")), vocab.encode("ba"))


def test_conllu_file_with_a_byte_order_mark_reads(tmp_path):
    path = tmp_path / "bom.conllu"
    path.write_bytes("\ufeff# sent_id = 1\n1\tHi\thi\tINTJ\tUH\t_\t0\troot\t_\t_\n\n".encode("utf-8"))
    sentences = data.read_conllu(path)
    assert len(sentences) == 1 and sentences[0].words == ["Hi"] and sentences[0].upos == ["INTJ"]


@pytest.mark.parametrize("shuffle", [False, True])
def test_batching_nothing_gives_no_batches(shuffle):
    assert data.bucket_batches([], 4, shuffle=shuffle) == []
    assert data.make_batches([], batch_size=4, shuffle=shuffle) == []


def test_missing_file_hint_follows_what_is_asked_for_not_the_path(tmp_path):
    misleading = tmp_path / "tinyshakespeare" / "rt-polarity.neg"
    with pytest.raises(FileNotFoundError, match="rt-polaritydata") as info:
        data.require_path(misleading, "sentence-polarity file")
    assert "karpathy" not in str(info.value)
    with pytest.raises(FileNotFoundError, match="karpathy"):
        data.require_path(tmp_path / "input.txt", "Tiny Shakespeare text")


def test_an_empty_sequence_does_not_turn_integer_ids_into_floats():
    padded, lengths = data.pad_sequences([[3, 4], [], [5]])
    assert padded.dtype.kind == "i" and lengths.tolist() == [2, 0, 1]
    np.testing.assert_array_equal(padded[:, 0], [3, 4])
