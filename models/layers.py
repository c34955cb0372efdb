"""Recurrent layers with PyTorch's signatures and shapes: RNN, LSTM, GRU.

A layer runs its cells over a whole sequence: ``forward(x, state=None,
lengths=None)`` takes ``x`` time-major (T, B, D) (or (B, T, D) with
``batch_first=True``) and returns ``(output, h_n)``, for the LSTM
``(output, (h_n, c_n))``. ``output`` is (T, B, H * directions); ``h_n`` is
(num_layers * directions, B, H) with row ``layer * directions + direction``,
as in PyTorch. ``model(x_window, state) -> (outputs, state)`` is the
contract the BPTT driver relies on.

Recording: each step of each direction runs inside ``tg.timestep(t)`` (``t``
is always the ORIGINAL time index, also for the backward direction) and
``tg.scope("layer{l}.forward")`` / ``("layer{l}.backward")``, so the
diagrams can unfold and fold every direction of every layer.

Bidirectional layers run a second recurrence over the reversed sequence and
concatenate both at every step. Variable lengths (``lengths=``): at padded
steps the state is carried unchanged (``tg.where`` with the mask) and the
output is zero. So the forward direction's final state is the one at each
sequence's own last step, and the backward direction, which sweeps
t = T-1 .. 0 holding its initial state through the padding, effectively
starts at each sequence's own last step -- the same as PyTorch's packed
sequences. With ``fused=True`` a padded batch runs through the fused
kernels instead, with the same numbers (``_sweep_fused_padded``).

Parameters are named ``layer{l}.U`` / ``layer{l}_reverse.U`` etc. (see
``models.cells`` for each cell's parameters and gate order);
``load_torch_state_dict`` / ``torch_state_dict`` convert from / to
PyTorch's ``weight_ih_l0``, ``weight_hh_l0``, ``bias_ih_l0``, ``bias_hh_l0``,
``..._reverse`` keys with NumPy values (no torch import).
"""
from __future__ import annotations

import contextlib

import numpy as np

import tinygraph as tg
from tinygraph import backend
from tinygraph.fusion import register_fusion
from tinygraph.nn import Dropout, Module

from .cells import _DECOMPOSED, GRUCell, LSTMCell, RNNCell, as_tensor, decomposed, stand_in, zeros_state
from .masks import check_lengths, lengths_to_mask, mask_to_lengths
from .sequence import final_rows, gru_sequence, lstm_sequence, rnn_sequence

__all__ = ["RNN", "LSTM", "GRU", "IRNN", "make_layer", "decomposed"]

class _RecurrentLayer(Module):
    """Shared driver: stacks of (optionally bidirectional) cells over a sequence."""

    cell_class = None
    state_tensors = 1  # h only; the LSTM carries (h, c)
    cell_takes_fused = False  # the LSTM cell has a fused per-step primitive of its own

    def __init__(self, input_size, hidden_size, num_layers=1, bias=True, batch_first=False, dropout=0.0,
                 bidirectional=False, *, residual=False, layer_norm=False, recurrent_init=None, dtype=None,
                 **cell_options):
        super().__init__()
        if num_layers < 1:
            raise ValueError(f"{type(self).__name__}: num_layers must be >= 1, got {num_layers}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"{type(self).__name__}: dropout must lie in [0, 1), got {dropout}")
        self.input_size, self.hidden_size = int(input_size), int(hidden_size)
        self.num_layers, self.bias, self.batch_first = int(num_layers), bool(bias), bool(batch_first)
        self.dropout, self.bidirectional, self.residual = float(dropout), bool(bidirectional), bool(residual)
        self.layer_norm = bool(layer_norm)
        self.num_directions = 2 if bidirectional else 1
        fused = cell_options.get("fused", False) if self.cell_takes_fused else cell_options.pop("fused", False)
        self.fused = bool(fused)
        if self.fused and self.layer_norm:
            raise ValueError(f"{type(self).__name__}: the fused kernels have no layer norm; "
                             "use fused=False with layer_norm=True")
        for layer in range(self.num_layers):
            width = self.input_size if layer == 0 else self.hidden_size * self.num_directions
            for direction in range(self.num_directions):
                cell = self.cell_class(width, hidden_size, bias=bias, layer_norm=layer_norm,
                                       recurrent_init=recurrent_init, dtype=dtype, **cell_options)
                setattr(self, self.cell_name(layer, direction), cell)
        if self.dropout > 0 and self.num_layers > 1:
            self.drop = Dropout(self.dropout)

    @staticmethod
    def cell_name(layer, direction):
        """Attribute name of a cell: "layer0" (forward) or "layer0_reverse" (backward)."""
        return f"layer{layer}" + ("_reverse" if direction else "")

    def cell(self, layer, direction=0):
        """The cell that runs ``layer`` in ``direction`` (0 forward, 1 backward)."""
        return getattr(self, self.cell_name(layer, direction))

    def extra_repr(self):
        opts = [f"{self.input_size}, {self.hidden_size}", f"num_layers={self.num_layers}"]
        for flag in ("batch_first", "bidirectional", "residual", "layer_norm"):
            if getattr(self, flag):
                opts.append(f"{flag}=True")
        if self.dropout:
            opts.append(f"dropout={self.dropout}")
        return ", ".join(opts)

    # -- running -----------------------------------------------------------
    def forward(self, x, state=None, lengths=None, mask=None):
        """Run the stack over ``x``; returns ``(output, state)`` (see the module docstring).

        Variable lengths: ``lengths`` (B,) or ``mask`` (T, B) of valid steps
        (a prefix per sequence; batch-major (B, T) when ``batch_first``).
        """
        if mask is not None:
            if lengths is not None:
                raise ValueError(f"{type(self).__name__}: pass lengths= or mask=, not both")
            mask = mask.numpy() if isinstance(mask, tg.Tensor) else backend.as_host(mask)  # (a trace sees the read)
        x = as_tensor(x, self.cell(0).U)
        if x.ndim != 3:
            layout = "(B, T, D)" if self.batch_first else "(T, B, D)"
            raise ValueError(f"{type(self).__name__}: input must be 3-D {layout}, got shape {x.shape}")
        if self.batch_first:
            x = tg.transpose(x, (1, 0, 2))
        steps, batch, width = x.shape
        if steps == 0:
            raise ValueError(f"{type(self).__name__}: the input has no time steps (T = 0, shape {x.shape})")
        if width != self.input_size:
            raise ValueError(f"{type(self).__name__}: input feature size must be {self.input_size}, got {width}")
        if mask is not None:
            if mask.shape != ((batch, steps) if self.batch_first else (steps, batch)):
                layout = "(B, T)" if self.batch_first else "(T, B)"
                want = (batch, steps) if self.batch_first else (steps, batch)
                raise ValueError(f"{type(self).__name__}: mask must be {layout} = {want} like the input, "
                                 f"got shape {tuple(mask.shape)}")
            lengths = mask_to_lengths(mask.T if self.batch_first else mask)
        initial = self._split_state(x, state, batch)
        keep = keep_float = None
        if lengths is not None:
            lengths = check_lengths(lengths, steps, batch)
            if lengths.size == 0 or lengths.min() == steps:
                lengths = None   # nothing is padded: the same numbers without masks
        if lengths is not None:
            mask = lengths_to_mask(lengths, steps)[:, :, None]
            keep = backend.to_device(mask, x.device)
            keep_float = backend.to_device(mask.astype(x.dtype), x.device)

        # The fused sequence kernels run full-length and padded batches
        # (``_sweep_fused_padded``); decomposed() blocks run step by step. A single
        # step records the textbook cell: the gradient diagnostics run one step per
        # call and take dL/dh(t), dL/dc(t) at the returned state, which must then lie
        # upstream of the output (in a fused node h_n, c_n and the output are sibling
        # slices).
        use_kernel = self.fused and steps > 1 and not _DECOMPOSED[0]
        with decomposed() if self.fused and steps == 1 else contextlib.nullcontext():
            return self._run_layers(x, initial, keep, keep_float, use_kernel, lengths)

    def _run_layers(self, x, initial, keep, keep_float, use_kernel, lengths=None):
        layer_input, finals = x, []
        for layer in range(self.num_layers):
            outputs = []
            for direction in range(self.num_directions):
                label = f"layer{layer}." + ("backward" if direction else "forward")
                state = initial[layer * self.num_directions + direction]
                with tg.scope(label):
                    if use_kernel and keep is not None:
                        out, final = self._sweep_fused_padded(self.cell(layer, direction), layer_input, state,
                                                              bool(direction), lengths, keep_float)
                    elif use_kernel:
                        out, final = self._sweep_fused(self.cell(layer, direction), layer_input, state,
                                                       reverse=bool(direction))
                    else:
                        out, final = self._sweep(self.cell(layer, direction), layer_input, state,
                                                 keep, keep_float, reverse=bool(direction))
                outputs.append(out)
                finals.append(final)
            with tg.scope(f"layer{layer}"):
                out = outputs[0] if len(outputs) == 1 else tg.concat(outputs, axis=-1)
                if self.residual and layer > 0:
                    out = out + layer_input
                if layer < self.num_layers - 1 and self.dropout > 0 and self.training:
                    out = self.drop(out)
            layer_input = out

        output = tg.transpose(layer_input, (1, 0, 2)) if self.batch_first else layer_input
        return output, self._join_state(finals)

    def _sweep(self, cell, x, state, keep, keep_float, reverse):
        """One direction of one layer over all steps; returns (outputs (T, B, H), final state)."""
        steps = x.shape[0]
        outputs = [None] * steps
        order = range(steps - 1, -1, -1) if reverse else range(steps)
        weights = cell.weights()  # once per sequence, outside the steps (timestep None)
        for t in order:
            with tg.timestep(t):
                x_t = x[t]
                x_t.name = "x"
                new = self._step(cell, x_t, state, weights)
                if keep is not None:
                    # padded steps carry the state through and output zeros
                    new = tuple(tg.where(keep[t], n, s) for n, s in zip(new, state))
                    outputs[t] = new[0] * keep_float[t]
                else:
                    outputs[t] = new[0]
                state = new
        return tg.stack(outputs, axis=0), state

    def _step(self, cell, x_t, state, weights):
        return (cell.step(x_t, state[0], weights),)

    def _sweep_fused(self, cell, x, state, reverse, ends=None):
        """One direction of one layer as a single fused node (``models.sequence``).

        ``ends`` (B,) ints: each row's final state is the one after its step
        ``ends[b]`` (a padded batch, see ``_sweep_fused_padded``).
        """
        hs = rnn_sequence(x, state[0], cell.U, cell.W, cell.b, nonlinearity=cell.nonlinearity, reverse=reverse)
        hs.name = "h"
        return hs, (final_rows(hs, ends, reverse),)

    def _sweep_fused_padded(self, cell, x, state, reverse, lengths, keep_float):
        """A padded batch through the fused kernel, with the step-by-step path's numbers.

        Forward direction: all T steps run, since the padding after a
        sequence's end changes nothing before it. Each row's final state is
        taken at its own last step, and the outputs at padded steps are
        zeroed. Backward direction: each sequence's valid prefix is reversed
        in place (a permutation of the steps, its own inverse), the forward
        direction runs on it, and its outputs are put back in time order. That
        is what the step-by-step path computes when it holds the initial
        state through the padding.
        """
        steps, batch = x.shape[0], x.shape[1]
        if reverse:
            t = np.arange(steps)[:, None]
            order = np.where(t < lengths[None, :], lengths[None, :] - 1 - t, t)
            columns = np.arange(batch)[None, :]
            x = x[order, columns]
        out, final = self._sweep_fused(cell, x, state, reverse=False, ends=lengths - 1)
        if reverse:
            out = out[order, columns]
        return out * keep_float, final

    # -- state layout --------------------------------------------------------
    def _state_shape(self, batch):
        return (self.num_layers * self.num_directions, batch, self.hidden_size)

    def _split_state(self, x, state, batch):
        """Per (layer, direction) tuples of (B, H) tensors; zeros when ``state`` is None."""
        count = self.num_layers * self.num_directions
        if state is None:
            return [tuple(zeros_state(x, batch, self.hidden_size) for _ in range(self.state_tensors))
                    for _ in range(count)]
        parts = (state,) if self.state_tensors == 1 else tuple(state)
        if len(parts) != self.state_tensors:
            raise ValueError(f"{type(self).__name__}: state must be {self._state_doc()}")
        parts = [as_tensor(p, self.cell(0).U) for p in parts]
        for p in parts:
            if p.shape != self._state_shape(batch):
                raise ValueError(f"{type(self).__name__}: each state tensor must have shape "
                                 f"{self._state_shape(batch)} (layers*directions, B, H), got {p.shape}")
        return [tuple(p[k] for p in parts) for k in range(count)]

    def _state_doc(self):
        return "h0" if self.state_tensors == 1 else "(h0, c0)"

    def _join_state(self, finals):
        if len(finals) == 1:  # one layer, one direction: a view with a leading axis, no copy
            stacked = tuple(tg.reshape(f, (1,) + f.shape) for f in finals[0])
        else:
            stacked = tuple(tg.stack([f[i] for f in finals], axis=0) for i in range(self.state_tensors))
        return stacked[0] if self.state_tensors == 1 else stacked

    # -- PyTorch weights -------------------------------------------------
    def _torch_keys(self, layer, direction):
        sfx = f"_l{layer}" + ("_reverse" if direction else "")
        keys = [f"weight_ih{sfx}", f"weight_hh{sfx}"]
        return keys + ([f"bias_ih{sfx}", f"bias_hh{sfx}"] if self.bias else [])

    def load_torch_state_dict(self, state_dict):
        """Copy weights from a PyTorch RNN/LSTM/GRU ``state_dict`` (NumPy values).

        Checks every key and shape first and raises naming the offending key,
        so a failed load changes nothing. Afterwards the outputs, final states
        and gradients match PyTorch's.
        """
        if self.layer_norm:
            raise ValueError(f"{type(self).__name__}: PyTorch layers have no layer norm; "
                             "build this layer with layer_norm=False to load PyTorch weights")
        G, H = self.cell_class.num_gates, self.hidden_size
        ours, expected = {}, set()
        for layer in range(self.num_layers):
            width = self.input_size if layer == 0 else H * self.num_directions
            for direction in range(self.num_directions):
                keys = self._torch_keys(layer, direction)
                shapes = [(G * H, width), (G * H, H), (G * H,), (G * H,)]
                values = []
                for key, shape in zip(keys, shapes):
                    if key not in state_dict:
                        raise KeyError(f"load_torch_state_dict: missing {key!r}")
                    value = np.asarray(state_dict[key])
                    if value.shape != shape:
                        raise ValueError(f"load_torch_state_dict: {key!r} has shape {value.shape}, "
                                         f"expected {shape}")
                    values.append(value)
                    expected.add(key)
                name = self.cell_name(layer, direction)
                for k, v in self.cell(layer, direction).from_torch(*values).items():
                    ours[f"{name}.{k}"] = v
        unexpected = sorted(set(state_dict) - expected)
        if unexpected:
            raise KeyError(f"load_torch_state_dict: unexpected keys {unexpected} (check num_layers, "
                           "bidirectional and bias)")
        return self.load_state_dict(ours)

    def torch_state_dict(self):
        """This layer's weights under PyTorch's key names (NumPy arrays)."""
        out = {}
        for layer in range(self.num_layers):
            for direction in range(self.num_directions):
                arrays = self.cell(layer, direction).to_torch()
                for key, value in zip(self._torch_keys(layer, direction), arrays):
                    out[key] = value
        return out


class RNN(_RecurrentLayer):
    """Stacked vanilla RNN: h(t) = tanh(b + W h(t-1) + U x(t)) per layer (``nonlinearity="relu"`` too).

    ``RNN(input_size, hidden_size, num_layers=1, nonlinearity="tanh", bias=True,
    batch_first=False, dropout=0.0, bidirectional=False)`` as in PyTorch;
    ``RNN(3, 4, 1, True)`` (bias fourth, like LSTM and GRU) works too.

    With no readout this is the textbook's recurrent network with no outputs:
    it only carries state forward. Options: ``residual`` (add each stacked
    layer's input to its output), ``layer_norm``, ``recurrent_init``
    ("orthogonal", "identity").
    """

    cell_class = RNNCell

    def __init__(self, input_size, hidden_size, num_layers=1, *args, **options):
        # Positional order: PyTorch's nn.RNN (nonlinearity, bias, batch_first, dropout,
        # bidirectional) when the 4th argument is a string, else the LSTM/GRU order
        # (bias, batch_first, dropout, bidirectional), so both kinds of call keep working.
        names = _RNN_POSITIONAL if args and isinstance(args[0], str) else _RNN_POSITIONAL[1:]
        if len(args) > len(names):
            raise TypeError(f"RNN takes at most {3 + len(names)} positional arguments ({len(args) + 3} given)")
        for name, value in zip(names, args):
            if name in options:
                raise TypeError(f"RNN got multiple values for argument {name!r}")
            options[name] = value
        options.setdefault("nonlinearity", "tanh")
        super().__init__(input_size, hidden_size, num_layers, **options)
        self.nonlinearity = options["nonlinearity"]


_RNN_POSITIONAL = ("nonlinearity", "bias", "batch_first", "dropout", "bidirectional")


def IRNN(input_size, hidden_size, num_layers=1, **options):
    """An RNN with ReLU recurrence and identity-initialised W (Le, Jaitly & Hinton 2015)."""
    for fixed in ("nonlinearity", "recurrent_init"):
        if fixed in options:
            raise ValueError(f"IRNN: {fixed} is fixed (relu, identity); use RNN(...) to choose it")
    return RNN(input_size, hidden_size, num_layers, nonlinearity="relu", recurrent_init="identity", **options)


class LSTM(_RecurrentLayer):
    """Stacked LSTM; state is (h, c), each (layers*directions, B, H).

    ``forget_bias`` sets the forget-gate bias; ``fused=True`` records each
    direction of each layer as one fused sequence kernel (``models.sequence``;
    same numbers, training speed), padded batches (``lengths=``) included.
    """

    cell_class = LSTMCell
    state_tensors = 2
    cell_takes_fused = True

    def __init__(self, input_size, hidden_size, num_layers=1, bias=True, batch_first=False, dropout=0.0,
                 bidirectional=False, *, residual=False, layer_norm=False, recurrent_init=None,
                 forget_bias=None, fused=False, dtype=None):
        super().__init__(input_size, hidden_size, num_layers, bias, batch_first, dropout, bidirectional,
                         residual=residual, layer_norm=layer_norm, recurrent_init=recurrent_init, dtype=dtype,
                         forget_bias=forget_bias, fused=fused)

    def _step(self, cell, x_t, state, weights):
        return cell.step(x_t, state, weights)

    def _sweep_fused(self, cell, x, state, reverse, ends=None):
        outputs, h_n, c_n = lstm_sequence(x, state[0], state[1], cell.U, cell.W, cell.b, reverse=reverse,
                                          ends=ends)
        return outputs, (h_n, c_n)


class GRU(_RecurrentLayer):
    """Stacked GRU in PyTorch's formulation (see ``GRUCell``).

    ``fused=True`` records each direction of each layer as one fused sequence
    kernel (``models.sequence``) for training speed, padded batches
    (``lengths=``) included.
    """

    cell_class = GRUCell

    def _sweep_fused(self, cell, x, state, reverse, ends=None):
        hs = gru_sequence(x, state[0], cell.U, cell.W, cell.b, cell.b_hn, reverse=reverse)
        hs.name = "h"
        return hs, (final_rows(hs, ends, reverse),)


_LAYERS = {"rnn": RNN, "lstm": LSTM, "gru": GRU, "irnn": IRNN}


# -- trace-time fusion: a decomposed sweep replays as the fused kernel ----------------
# A decomposed layer (fused=False, or tg.decomposed()) records every gate of every step,
# for the diagrams and the stepper. Traced (tg.trace, tg.traced_step), each such sweep
# is swapped for the fused sequence kernel: ``tinygraph.fusion`` finds it because the
# pattern below IS the layer's own ``_sweep`` (and the replacement its own
# ``_sweep_fused``), run on a stand-in cell whose parameters are the pattern's inputs.
# Covered: each direction of each layer with a bias and no layer norm, unpadded.

def _stand_in(layer_class, parameters, nonlinearity):
    """(layer, cell) objects that run the real sweep code with ``parameters`` as U, W, b (, b_hn)."""
    U, W, b = parameters[:3]
    cell = stand_in(layer_class.cell_class, input_size=U.shape[1], hidden_size=W.shape[1], has_bias=True,
                    layer_norm=False, fused=False, nonlinearity=nonlinearity, U=U, W=W, b=b,
                    b_hn=parameters[3] if len(parameters) > 3 else None)
    return object.__new__(layer_class), cell


def _sweep_fusion(layer_class, reverse, nonlinearity=None):
    states = layer_class.state_tensors

    def run(fused, x, *args):
        layer, cell = _stand_in(layer_class, args[states:], nonlinearity)
        state = tuple(args[:states])
        out, final = (layer._sweep_fused(cell, x, state, reverse) if fused
                      else layer._sweep(cell, x, state, None, None, reverse))
        return (out, *final)

    def examples(anchor):
        """Small inputs with the anchor's number of steps (the anchor is the sweep's output stack)."""
        if anchor.op != "stack" or len(anchor.inputs) < 2 or len(anchor.shape) != 3:
            return None
        gates = {LSTM: 4, GRU: 3, RNN: 1}[layer_class]
        T, D, H = len(anchor.inputs), 3, 2
        shapes = [(T, 2, D)] + [(2, H)] * states + [(gates * H, D), (gates * H, H), (gates * H,)]
        return [np.zeros(s) for s in shapes + ([(H,)] if layer_class is GRU else [])]

    name = f"{layer_class.__name__.lower()}{'_' + nonlinearity if nonlinearity else ''}_sweep"
    register_fusion(name + ("_reverse" if reverse else ""), lambda *a: run(False, *a), lambda *a: run(True, *a),
                    examples)


for _reverse in (False, True):
    _sweep_fusion(LSTM, _reverse)
    _sweep_fusion(GRU, _reverse)
    _sweep_fusion(RNN, _reverse, "tanh")
    _sweep_fusion(RNN, _reverse, "relu")


def make_layer(cell, input_size, hidden_size, **options):
    """Build a recurrent layer by name ("rnn", "lstm", "gru", "irnn") or class."""
    if isinstance(cell, str):
        key = cell.lower()
        if key not in _LAYERS:
            raise ValueError(f"unknown cell {cell!r}; use one of {sorted(_LAYERS)}")
        cell = _LAYERS[key]
    return cell(input_size, hidden_size, **options)
