"""Heads for the three kinds of sequence problem, over any recurrent layer.

* ``SequenceTagger``: one label per step (part-of-speech tags, frame labels).
* ``SequenceClassifier``: one label per sequence (sentiment).
* ``LanguageModel``: predict the next token; ``sample`` generates text.

Tagger and classifier take either integer tokens (give ``embedding_dim``:
the first argument is then the vocabulary size and an ``Embedding`` comes
first) or float features (leave ``embedding_dim=None``: the first argument
is the feature size). ``cell`` is "lstm", "gru", "rnn" or "irnn" (or a layer
class); extra keyword options go to the layer (``residual``, ``layer_norm``,
``recurrent_init``, ``forget_bias``, ``nonlinearity``...).
"""
from __future__ import annotations

import numpy as np

import tinygraph as tg
from tinygraph import backend
from tinygraph.nn import Dropout, Embedding, Linear, Module

from .layers import make_layer
from .masks import check_lengths

__all__ = ["SequenceTagger", "SequenceClassifier", "LanguageModel"]


class _Encoder(Module):
    """(Embedding or nothing) followed by a recurrent layer."""

    def _build(self, vocab_or_input, embedding_dim, cell, hidden_size, num_layers, bidirectional, dropout,
               batch_first, layer_options):
        dtype = layer_options.get("dtype")   # the embedding and the readout too, not the layer alone
        if embedding_dim is not None:
            self.embedding = Embedding(vocab_or_input, embedding_dim, dtype=dtype)
            width = int(embedding_dim)
        else:
            self.embedding = None
            width = int(vocab_or_input)
        self.rnn = make_layer(cell, width, hidden_size, num_layers=num_layers, bidirectional=bidirectional,
                              dropout=dropout, batch_first=batch_first, **layer_options)
        self.features = int(hidden_size) * (2 if bidirectional else 1)

    def _encode(self, x, state, lengths):
        if self.embedding is not None:
            x = self.embedding(x)
        elif (x.dtype if hasattr(x, "dtype") else np.asarray(x).dtype).kind not in "fc":
            raise TypeError(f"{type(self).__name__}: got integer input but the model was built for float "
                            "features; pass embedding_dim= to read token ids")
        return self.rnn(x, state, lengths=lengths)  # the layer casts arrays to its dtype


def _hidden(hidden_size, hidden):
    return hidden_size if hidden is None else hidden


class SequenceTagger(_Encoder):
    """One label per step: recurrent layer, then a linear readout at every step.

    ``forward(x, state=None, lengths=None) -> (logits (T, B, num_tags), state)``.
    Train with ``tg.cross_entropy(logits, tags, mask=lengths_to_mask(lengths, T))``
    so padded steps add nothing to the loss. ``hidden=`` is an alias of ``hidden_size``.
    """

    def __init__(self, vocab_or_input, num_tags, cell="lstm", hidden_size=32, embedding_dim=None,
                 num_layers=1, bidirectional=False, dropout=0.0, batch_first=False, hidden=None,
                 **layer_options):
        super().__init__()
        self._build(vocab_or_input, embedding_dim, cell, _hidden(hidden_size, hidden), num_layers,
                    bidirectional, dropout, batch_first, layer_options)
        self.readout = Linear(self.features, num_tags, dtype=layer_options.get("dtype"))

    def forward(self, x, state=None, lengths=None):
        out, state = self._encode(x, state, lengths)
        return self.readout(out), state


class SequenceClassifier(_Encoder):
    """One label per sequence, read from a summary of the recurrent outputs.

    ``pooling="last"`` uses the top layer's final states (the forward
    direction's at each sequence's own last valid step, and for a
    bidirectional layer the backward direction's after it has read the whole
    sequence); ``pooling="mean"`` averages the outputs over each sequence's
    valid steps. ``forward(x, lengths=None, state=None) -> logits (B, num_classes)``.
    """

    def __init__(self, vocab_or_input, num_classes, cell="lstm", hidden_size=32, embedding_dim=None,
                 num_layers=1, bidirectional=False, dropout=0.0, batch_first=False, pooling="last",
                 hidden=None, **layer_options):
        super().__init__()
        if pooling not in ("last", "mean"):
            raise ValueError(f"SequenceClassifier: pooling must be 'last' or 'mean', got {pooling!r}")
        self.pooling = pooling
        self._build(vocab_or_input, embedding_dim, cell, _hidden(hidden_size, hidden), num_layers,
                    bidirectional, dropout, batch_first, layer_options)
        self.readout = Linear(self.features, num_classes, dtype=layer_options.get("dtype"))

    def forward(self, x, lengths=None, state=None):
        out, final = self._encode(x, state, lengths)
        if self.pooling == "last":
            h_n = final[0] if isinstance(final, tuple) else final
            dirs = self.rnn.num_directions
            top = h_n[h_n.shape[0] - dirs:]                      # (dirs, B, H)
            summary = tg.reshape(tg.transpose(top, (1, 0, 2)), (top.shape[1], -1))
        else:
            time_axis = 1 if self.rnn.batch_first else 0
            steps, batch = out.shape[time_axis], out.shape[1 - time_axis]
            counts = (np.full(batch, steps) if lengths is None else check_lengths(lengths, steps, batch))
            counts = backend.to_device(counts.astype(out.dtype)[:, None], out.device)
            summary = tg.sum(out, axis=time_axis) / counts    # padded outputs are zero
        return self.readout(summary)


class LanguageModel(Module):
    """Next-token model: Embedding -> recurrent layer -> Linear to the vocabulary.

    ``forward(tokens (T, B) int, state=None) -> (logits (T, B, V), state)``;
    ``tie_weights=True`` shares the embedding matrix with the readout (needs
    ``embedding_dim == hidden_size``).
    """

    def __init__(self, vocab_size, embedding_dim, hidden_size, cell="lstm", num_layers=1, dropout=0.0,
                 tie_weights=False, **layer_options):
        super().__init__()
        self.vocab_size = int(vocab_size)
        dtype = layer_options.get("dtype")   # the embedding and the decoder too, not the layer alone
        self.embedding = Embedding(vocab_size, embedding_dim, dtype=dtype)
        self.rnn = make_layer(cell, embedding_dim, hidden_size, num_layers=num_layers, dropout=dropout,
                              **layer_options)
        if getattr(self.rnn, "num_directions", 1) != 1:
            raise ValueError("LanguageModel: a next-token model cannot read the future; use bidirectional=False")
        self.drop = Dropout(dropout)
        self.decoder = Linear(hidden_size, vocab_size, dtype=dtype)
        if tie_weights:
            if embedding_dim != hidden_size:
                raise ValueError(f"LanguageModel: tie_weights needs embedding_dim == hidden_size "
                                 f"({embedding_dim} != {hidden_size})")
            self.decoder.weight = self.embedding.weight

    def forward(self, tokens, state=None):
        out, state = self.rnn(self.embedding(tokens), state)
        return self.decoder(self.drop(out)), state

    def sample(self, prompt_ids, n, temperature=1.0, rng=None):
        """Generate ``n`` new token ids after ``prompt_ids`` (a list of ids); returns them as a list.

        Samples from softmax(logits / temperature) with ``rng`` (a NumPy
        Generator; ``tg.generator()`` by default); ``temperature=0`` is greedy.
        Runs in eval mode without recording and restores the mode afterwards.
        """
        prompt = [int(i) for i in prompt_ids]
        if not prompt:
            raise ValueError("LanguageModel.sample: prompt_ids must hold at least one id")
        if temperature < 0:
            raise ValueError(f"LanguageModel.sample: temperature must be >= 0, got {temperature}")
        rng = tg.generator() if rng is None else rng
        was_training = self.training
        self.eval()
        generated = []
        try:
            with tg.no_grad():
                # one sequence: (T, 1) time-major, or (1, T) for a batch_first layer
                batch_first = getattr(self.rnn, "batch_first", False)
                ids = np.asarray(prompt, dtype=np.int64)
                logits, state = self(ids[None, :] if batch_first else ids[:, None])
                for k in range(int(n)):
                    last = backend.as_host(logits.data[0, -1] if batch_first else logits.data[-1, 0])
                    last = last.astype(np.float64)
                    if temperature == 0:
                        token = int(np.argmax(last))
                    else:
                        scaled = last / temperature
                        p = np.exp(scaled - scaled.max())
                        token = int(rng.choice(self.vocab_size, p=p / p.sum()))
                    generated.append(token)
                    if k + 1 < n:
                        logits, state = self(np.asarray([[token]], dtype=np.int64), state)
        finally:
            self.train(was_training)
        return generated
