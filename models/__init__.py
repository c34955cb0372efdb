"""Recurrent models built on tinygraph (installed as tinygraph.models).

Cells (one step), layers (whole sequences, PyTorch's shapes), the textbook
Elman and Jordan networks, and heads for tagging, classification and
language modelling. See docs/models.md.
"""
from .cells import GRUCell, LSTMCell, RNNCell, zeros_state
from .elman import ElmanRNN, JordanRNN
from .fused import lstm_cell
from .heads import LanguageModel, SequenceClassifier, SequenceTagger
from .layers import GRU, IRNN, LSTM, RNN, decomposed, make_layer
from .masks import check_lengths, lengths_to_mask, mask_to_lengths
from .sequence import gru_sequence, lstm_sequence, rnn_sequence

__all__ = [
    "RNNCell", "LSTMCell", "GRUCell", "zeros_state", "lstm_cell",
    "RNN", "LSTM", "GRU", "IRNN", "make_layer", "decomposed",
    "rnn_sequence", "lstm_sequence", "gru_sequence",
    "ElmanRNN", "JordanRNN",
    "SequenceTagger", "SequenceClassifier", "LanguageModel",
    "lengths_to_mask", "mask_to_lengths", "check_lengths",
]
