"""Readable formulas for every primitive, in textbook notation.

This is documentation, not a second implementation: each entry says in words
and symbols what the primitive's one VJP rule (in ``tinygraph.ops``) computes,
so the stepper can print ``∂L/∂a(2) = ∂L/∂h(2) ⊙ (1 − h(2)²)`` next to the
numbers the rule actually produced.

Template tokens
    {out}          the node's output            {g}    the gradient arriving at it
    {x0} {x1} ...  its arguments by position    {x0T}  argument 0 transposed
    {xshape}       shape of the argument being differentiated
    {k}            position of that argument     {n}   size ratio (mean's N)
    {axis} {lo} {hi} {shape} {index}            the op's attributes

A rule template is the right-hand side for ``∂L/∂{x_k}``. ``via`` is the short
phrase naming how the gradient passes (``"Wᵀ"``, ``"tanh′"``), used when a
node's gradient is shown as a sum over its consumers.
"""
from __future__ import annotations

import string
from dataclasses import dataclass

import numpy as np

__all__ = ["OpFormula", "FORMULAS", "formula_for", "fill", "transpose_label", "partial",
           "node_labels", "initial_state_labels", "format_value"]


@dataclass(frozen=True)
class OpFormula:
    """Forward expression, gradient rule per argument, and a 'via' phrase per argument."""

    forward: str
    rules: tuple       # one template per argument; a 1-tuple repeats for variadic ops
    via: tuple

    def rule(self, position: int) -> str:
        return self.rules[min(position, len(self.rules) - 1)]

    def via_phrase(self, position: int) -> str:
        return self.via[min(position, len(self.via) - 1)]


F = OpFormula
FORMULAS = {
    # elementwise binary
    "add": F("{x0} + {x1}", ("{g}", "{g}"), ("identity", "identity")),
    "sub": F("{x0} − {x1}", ("{g}", "−{g}"), ("identity", "negation")),
    "mul": F("{x0} ⊙ {x1}", ("{g} ⊙ {x1}", "{g} ⊙ {x0}"), ("⊙ {x1}", "⊙ {x0}")),
    "div": F("{x0} / {x1}", ("{g} / {x1}", "−{g} ⊙ {out} / {x1}"), ("/ {x1}", "−{out} / {x1}")),
    "pow": F("{x0}^{x1}", ("{g} ⊙ {x1} ⊙ {x0}^({x1} − 1)", "{g} ⊙ {out} ⊙ log {x0}"),
             ("power rule", "log {x0}")),
    "maximum": F("max({x0}, {x1})", ("{g} where {x0} ≥ {x1}", "{g} where {x0} < {x1}"),
                 ("max mask", "max mask")),
    "minimum": F("min({x0}, {x1})", ("{g} where {x0} ≤ {x1}", "{g} where {x0} > {x1}"),
                 ("min mask", "min mask")),
    "where": F("where({x0}, {x1}, {x2})", ("0", "{g} where {x0}", "{g} where not {x0}"),
               ("mask", "mask", "mask")),
    "compare": F("{x0} {how} {x1}", ("0", "0"), ("no gradient", "no gradient")),
    # elementwise unary
    "neg": F("−{x0}", ("−{g}",), ("negation",)),
    "exp": F("exp({x0})", ("{g} ⊙ {out}",), ("exp",)),
    "log": F("log {x0}", ("{g} / {x0}",), ("1/{x0}",)),
    "sqrt": F("√{x0}", ("{g} / (2 {out})",), ("√′",)),
    "sign": F("sign({x0})", ("0",), ("zero",)),
    "abs": F("|{x0}|", ("{g} ⊙ sign({x0})",), ("sign",)),
    "tanh": F("tanh({x0})", ("{g} ⊙ (1 − {out}²)",), ("tanh′",)),
    "sigmoid": F("σ({x0})", ("{g} ⊙ {out} ⊙ (1 − {out})",), ("σ′",)),
    "relu": F("relu({x0})", ("{g} ⊙ [{x0} > 0]",), ("relu′",)),
    "clip": F("clip({x0}, {lo}, {hi})", ("{g} ⊙ [{lo} ≤ {x0} ≤ {hi}]",), ("clip mask",)),
    "softmax": F("softmax({x0})", ("{out} ⊙ ({g} − Σ({g} ⊙ {out}))",), ("softmax′",)),
    "log_softmax": F("log softmax({x0})", ("{g} − exp({out}) ⊙ Σ {g}",), ("log-softmax′",)),
    # reductions and shapes
    "sum": F("Σ {x0}", ("{g} copied to every element of {x0} (shape {xshape})",), ("copy",)),
    "mean": F("mean {x0}", ("{g} / {n} copied to every element of {x0}",), ("1/{n}",)),
    "max": F("max {x0}", ("{g} at the position of the maximum of {x0}",), ("argmax",)),
    "min": F("min {x0}", ("{g} at the position of the minimum of {x0}",), ("argmin",)),
    "detach": F("detach({x0})", ("0",), ("no gradient",)),
    "argmax": F("argmax {x0}", ("0",), ("no gradient",)),
    "reshape": F("reshape({x0}, {shape})", ("{g} reshaped to {xshape}",), ("reshape",)),
    "transpose": F("{x0}ᵀ", ("({g})ᵀ",), ("transpose",)),
    "broadcast_to": F("broadcast({x0}, {shape})", ("Σ {g} over the broadcast axes",), ("sum",)),
    "sum_to": F("sum_to({x0}, {shape})", ("{g} copied back to shape {xshape}",), ("copy",)),
    "matmul": F("{x0} {x1}", ("{g} {x1T}", "{x0T} {g}"), ("{x1T}", "{x0T}")),
    "getitem": F("{x0}[{index}]", ("{g} placed at [{index}] in zeros of shape {xshape}",),
                 ("slice",)),
    "getitem_grad": F("zeros with {x0} at [{index}]", ("{g}[{index}]",), ("slice",)),
    "take": F("take({x0}, {x1})", ("{g} added back at indices {x1} along axis {axis} of {x0}", "0"),
              ("indices", "none")),
    "take_along_axis": F("take_along_axis({x0}, {x1}, {axis})",
                         ("{g} added back at the picked positions of {x0}", "0"),
                         ("pick", "none")),
    "cross_entropy": F("logsumexp({x0}) − {x0}[…, {x1}]",
                       ("{g} ⊙ (softmax({x0}) − onehot({x1}))", "0"), ("softmax − onehot", "none")),
    "pick": F("{x0}[…, {x1}]", ("{g} added back at the picked positions of {x0}", "0"), ("pick", "none")),
    "concat": F("concat({xs})", ("part {k} of {g}",), ("part {k}",)),
    "stack": F("stack({xs})", ("slice {k} of {g} along axis {axis}",), ("slice {k}",)),
    "to_device": F("{x0} on {device}", ("{g} moved back to {source}",), ("copy",)),
    "astype": F("{x0} as {dtype}", ("{g} cast back",), ("cast",)),
    # fused cells (closed-form VJPs; dz are the gate pre-activation gradients
    # [di i(1−i), df f(1−f), dg (1−g²), do o(1−o)], dc = ∂L/∂c′ + ∂L/∂h′ ⊙ o ⊙ (1 − tanh²c′))
    "lstm_cell": F("LSTM cell({x0}, {x1}, {x2})",
                   ("dz {x3}", "dz {x4}", "dc ⊙ f", "dzᵀ {x0}", "dzᵀ {x1}", "dz"),
                   ("{x3}", "{x4}", "⊙ f", "gates, x", "gates, h", "gates")),
    # fused sequence kernels (models.sequence): dZ stacks every step's gate
    # pre-activation gradients, found by one backward sweep through time
    "rnn_sequence": F("RNN over time({x0}, {x1})",
                      ("dZ {x2}", "dZ(first step) {x3}", "Σ_t dZ(t)ᵀ x(t)", "Σ_t dZ(t)ᵀ h({prev})", "Σ_t,batch dZ"),
                      ("{x2}", "{x3}", "steps, x", "steps, h", "steps")),
    "lstm_sequence": F("LSTM over time({x0}, {x1}, {x2})",
                       ("dZ {x3}", "dZ(first step) {x4}", "dc(first step) ⊙ f", "Σ_t dZ(t)ᵀ x(t)",
                        "Σ_t dZ(t)ᵀ h({prev})", "Σ_t,batch dZ"),
                       ("{x3}", "{x4}", "⊙ f", "steps, x", "steps, h", "steps")),
    "gru_sequence": F("GRU over time({x0}, {x1})",
                      ("dZ {x2}", "dZ_h(first step) {x3} + dh ⊙ z", "Σ_t dZ(t)ᵀ x(t)", "Σ_t dZ_h(t)ᵀ h({prev})",
                       "Σ_t,batch dZ", "Σ_t,batch dZ_n ⊙ r"),
                      ("{x2}", "{x3}", "steps, x", "steps, h", "steps", "steps")),
}
del F

_UNKNOWN = OpFormula("{op}({xs})", ("VJP of {op} applied to {g}",), ("{op}′",))


def formula_for(op: str) -> OpFormula:
    """The formula entry of ``op`` (a generic one for primitives added later)."""
    return FORMULAS.get(op, _UNKNOWN)


class _Lenient(dict):
    def __missing__(self, key):
        return "{" + key + "}"


def fill(template: str, symbols: dict) -> str:
    """Substitute ``{token}`` placeholders; unknown tokens are left visible."""
    return string.Formatter().vformat(template, (), _Lenient(symbols))


# ---------------------------------------------------------------------------
# notation: labels for nodes
# ---------------------------------------------------------------------------

_SUPERSCRIPT_T = "ᵀ"


def is_atomic(label: str) -> bool:
    """True for labels that need no parentheses inside a larger expression."""
    depth = 0
    for ch in label:
        if ch in "([":
            depth += 1
        elif ch in ")]":
            depth -= 1
        elif ch == " " and depth == 0:
            return False
    return True


def wrap(label: str) -> str:
    return label if is_atomic(label) else f"({label})"


def transpose_label(label: str) -> str:
    """``W`` -> ``Wᵀ``, ``Wᵀ`` -> ``W``, ``h W`` -> ``(h W)ᵀ``."""
    if label.endswith(_SUPERSCRIPT_T) and is_atomic(label[:-1]):
        return label[:-1]
    return wrap(label) + _SUPERSCRIPT_T


def with_time(label: str, timestep) -> str:
    return label if timestep is None else f"{label}({timestep})"


def partial(label: str) -> str:
    """``∂L/∂h(2)``, with parentheses around compound labels."""
    return "∂L/∂" + wrap(label)


_MAX_EXPRESSION = 18  # longer unnamed expressions read worse than op#n


def node_labels(nodes, overrides=None) -> dict:
    """node id -> short textbook label, for nodes in topological order.

    Named nodes read ``h(2)`` (time step in parentheses; parameters carry no
    time). Unnamed op nodes read as their expression (``h(1) Wᵀ``) while it
    stays short, else ``op#ordinal(t)``. The zeros that stand in for a state
    at the first step read ``h0`` / ``c0`` (see ``initial_state_labels``).
    ``overrides`` (id -> label) name some nodes first, so the expressions
    that use them read those names too.
    """
    nodes = list(nodes)
    initial = initial_state_labels(nodes)
    labels = {}
    overrides = overrides or {}
    for node in nodes:
        if node.id in overrides:
            labels[node.id] = overrides[node.id]
        elif node.id in initial:
            labels[node.id] = initial[node.id]
        elif node.name:
            # parameters are shared by every step, so they carry no time; a name
            # that already ends in a digit (h0) reads badly with one too
            timeless = node.requires_grad and node.is_leaf or node.name[-1].isdigit()
            labels[node.id] = node.name if timeless else with_time(node.name, node.timestep)
        elif node.is_leaf:
            labels[node.id] = _leaf_label(node)
        else:
            labels[node.id] = _expression_label(node, labels)
    return labels


def initial_state_labels(nodes) -> dict:
    """const leaf id -> ``h0`` / ``c0`` for the zeros that stand in for a state at the first step.

    The same rule as the diagrams (``tinygraph.folding.label_initial_states``),
    on the recorded nodes: an unnamed constant leaf that feeds an op in the
    same input slot where, at another time step, the same op (same scope and
    ordinal) is fed by a named state from a different step, is that state's
    initial value: it gets the state's name with a 0 (``h`` -> ``h0``).
    """
    nodes = list(nodes)
    delayed, candidates = {}, {}
    for node in nodes:
        if node.is_leaf or not isinstance(node.timestep, int):
            continue
        for slot, source in enumerate(node.inputs):
            key = (node.scope, node.ordinal, node.op, slot)
            if (source.name and not source.is_leaf and isinstance(source.timestep, int)
                    and source.timestep != node.timestep):
                delayed.setdefault(key, source.name)
            elif source.is_leaf and not source.name and not source.requires_grad:
                candidates.setdefault(source.id, set()).add(key)
    labels = {}
    for leaf_id, keys in candidates.items():
        names = {delayed[k] for k in keys if k in delayed}
        if len(names) == 1:  # used for two different states: leave it alone
            labels[leaf_id] = names.pop() + "0"
    return labels


def _leaf_label(node) -> str:
    if node.requires_grad:
        return f"leaf#{node.id}"
    if node.op == "const" and _size(node.shape) == 1 and node.tensor is not None:
        return format_value(node.tensor.data)
    return "const[" + "×".join(str(s) for s in node.shape) + "]"


def _expression_label(node, labels) -> str:
    symbols = argument_symbols(node, labels)
    text = fill(formula_for(node.op).forward, symbols)
    if len(text) <= _MAX_EXPRESSION and "{" not in text:
        return text
    return with_time(f"{node.op}#{node.ordinal}", node.timestep)


def argument_symbols(node, labels, saved=None) -> dict:
    """Template symbols for ``node``: {x_k}, {x_kT}, {xs}, {op} and the attributes."""
    args = saved if saved is not None else _arguments(node)
    symbols = {"op": node.op}
    names = []
    for k, arg in enumerate(args):
        if hasattr(arg, "_node") or hasattr(arg, "inputs"):
            arg_node = arg if hasattr(arg, "inputs") else arg._node
            text = labels.get(arg_node.id, f"#{arg_node.id}")
        else:
            text = format_value(arg)
        symbols[f"x{k}"] = wrap(text)
        symbols[f"x{k}T"] = transpose_label(text)
        names.append(text)
    symbols["xs"] = ", ".join(names)
    for key, value in node.attrs.items():
        symbols[key] = _format_attr(value)
    symbols.update(time_symbols(node))
    return symbols


def time_symbols(node) -> dict:
    """{prev}: the step a sweep's step t started from, t−1 (t+1 for a reversed sweep)."""
    return {"prev": "t+1" if node.attrs.get("reverse") else "t−1"}


def _arguments(node):
    """Saved arguments while available, else input nodes with the literal scalars put back."""
    if node.saved is not None:
        return node.saved
    literals = dict(getattr(node, "literals", None) or ())
    inputs = iter(node.inputs)
    return [literals[k] if k in literals else next(inputs)
            for k in range(len(node.inputs) + len(literals))]


def _format_attr(value):
    if isinstance(value, tuple) and any(isinstance(v, slice) for v in value):
        return ", ".join(_format_index(v) for v in value)
    return _format_index(value)


def _format_index(value):
    """Index notation: ``slice(6, 9)`` reads ``6:9``."""
    if isinstance(value, slice):
        parts = ["" if v is None else str(v) for v in (value.start, value.stop, value.step)]
        return ":".join(parts[:2] if value.step is None else parts)
    if hasattr(value, "shape") and getattr(value, "ndim", 0) > 0:
        return f"array{tuple(value.shape)}"
    return str(value)


def _size(shape):
    n = 1
    for s in shape:
        n *= s
    return n


# ---------------------------------------------------------------------------
# numbers
# ---------------------------------------------------------------------------

def format_value(value, max_elements: int = 8, precision: int = 3) -> str:
    """A number or a small array on one line; larger arrays as shape and norm."""
    if isinstance(value, (bool, int, float, np.integer, np.floating)):
        return f"{float(value):.{precision + 1}g}" if isinstance(value, (float, np.floating)) else str(value)
    arr = np.asarray(value.get() if hasattr(value, "get") else value)
    if arr.ndim == 0 or arr.size == 1:
        return f"{float(arr.reshape(())):.{precision + 1}g}"
    if arr.size <= max_elements:
        return np.array2string(arr, precision=precision, separator=", ", suppress_small=True,
                               max_line_width=10_000).replace("\n", "")
    norm = float(np.sqrt((arr.astype(np.float64) ** 2).sum()))
    return f"‹{'×'.join(str(s) for s in arr.shape)} array, ‖·‖={norm:.{precision}g}›"
