"""Step through a backward pass one node at a time.

``Stepper(loss)`` runs the engine's own reverse walk (``run_backward``, the
same VJP rules, the same accumulation order) once, and records what happens
at every op node as an :class:`Event`: the gradient arriving (and, when the
node has several consumers, the sum it is made of), the local rule as a
textbook formula, and the gradient sent to each input. The cursor API
(``step``, ``back``, ``run``, ``run_to``, ``reset``, iteration) then moves
through those events, and ``.grads`` gives the leaf gradients as they stand
at the cursor; at the end they are exactly what ``loss.backward()`` gives.

Truncated BPTT and gradient clipping appear as events of their own: pass the
detached states carried across a window edge as ``cuts=`` (a "cut" event
shows the gradient that stops there), and call ``record_clip(max_norm)`` to
append a "clip" event with the norm before and after.

Rendering lives in ``tinygraph.viz``; importing it installs the diagram
renderer used by ``Event.diagram()`` (the engine never imports viz).
"""
from __future__ import annotations

import html

from . import backend
from .autodiff import run_backward
from .formulas import _format_attr, argument_symbols, fill, format_value, formula_for, partial, time_symbols, wrap
from .formulas import node_labels as _node_labels
from .folding import _common_scope
from .graph import no_grad, topological_order
from .ops import rule_keywords, sum_to
from .tensor import Tensor

__all__ = ["Stepper", "Event", "Contribution", "SentGradient", "GradientSum", "Text",
           "set_diagram_renderer"]

_diagram_renderer = None
_svg_of = None


def set_diagram_renderer(renderer, svg=None):
    """Install ``renderer(event, view, **options) -> diagram`` and ``svg(diagram) -> str``.

    tinygraph.viz does this when imported; the engine itself never imports viz.
    """
    global _diagram_renderer, _svg_of
    _diagram_renderer, _svg_of = renderer, svg


class Text(str):
    """A str that displays as itself (no quotes) in a REPL or notebook."""

    def __repr__(self):
        return str(self)


class Contribution:
    """One consumer's share of a node's gradient: ``from o(2) via V``."""

    __slots__ = ("consumer", "position", "source", "via", "value")

    def __init__(self, consumer, position, source, via, value):
        self.consumer = consumer      # the op node whose rule produced this share
        self.position = position      # which of its arguments received it
        self.source = source          # label of the nearest named node downstream
        self.via = via                # how it passed, e.g. "V" or "tanh′"
        self.value = value            # the array, already in the receiver's shape

    @property
    def timestep(self):
        return self.consumer.timestep

    def term(self) -> str:
        t = self.timestep
        when = f" at t={t}" if t is not None and f"({t})" not in self.source else ""
        return f"from {self.source}{when} via {self.via}"

    def __repr__(self):
        return f"<Contribution {self.term()}>"


class SentGradient:
    """What a node's rule sends to one input: formula, value, and the receiver's new total."""

    __slots__ = ("position", "node", "label", "rule", "numbers", "value", "reduced", "total")

    def __init__(self, position, node, label, rule, numbers, value, reduced, total):
        self.position, self.node, self.label = position, node, label
        self.rule = rule              # "∂L/∂a(2) = ∂L/∂h(2) ⊙ (1 − h(2)²)"
        self.numbers = numbers        # the same with the values plugged in
        self.value = value
        self.reduced = reduced        # True when broadcasting was summed away (sum_to)
        self.total = total            # receiver's gradient so far, this share included

    def __repr__(self):
        return f"<SentGradient {self.rule}>"


class GradientSum:
    """A leaf's gradient as the sum of its contributions (∇W summed over time).

    When the leaf is used through a rearranging op computed once (``Wᵀ``
    outside the time loop), the sum over time happens at that op; ``wrapper``
    is then its rule (``"({g})ᵀ"``) and each term is already rearranged into
    the leaf's shape.
    """

    def __init__(self, node, label, contributions, total, wrapper="{g}"):
        self.node, self.label = node, label
        self.contributions = list(contributions)
        self.total = total
        self.wrapper = wrapper

    def formula(self) -> str:
        terms = " + ".join(c.term() for c in self.contributions) or "0"
        if self.wrapper != "{g}":
            terms = fill(self.wrapper, {"g": terms})
        return f"∇{self.label} = {terms}"

    def explain(self) -> str:
        lines = [self.formula()]
        if len(self.contributions) > 1:
            pad = " " * (len(self.label) + 2)
            lines.append(pad + "= " + " + ".join(format_value(c.value) for c in self.contributions))
            lines.append(pad + "= " + format_value(self.total))
        else:
            lines.append(" " * (len(self.label) + 2) + "= " + format_value(self.total))
        return "\n".join(lines)

    def __repr__(self):
        return f"<GradientSum {self.formula()}>"


class Event:
    """One step of the walk: kind "node" (an op node), "cut" (window edge) or "clip"."""

    def __init__(self, kind, node, label, upstream, contributions=(), sent=(), forward="",
                 detail=None):
        self.kind = kind
        self.node = node
        self.label = label
        self.upstream = upstream              # ∂L/∂(this node's output), the full sum
        self.contributions = list(contributions)
        self.sent = list(sent)
        self.forward = forward                # "h(2) = tanh(a(2))"
        self.detail = detail or {}            # cut/clip specifics (norms, clipped grads)
        self.index = -1
        self._walk = None

    # -- node facts --------------------------------------------------------
    op = property(lambda self: self.node.op if self.node is not None else self.kind)
    name = property(lambda self: self.node.name if self.node is not None else None)
    scope = property(lambda self: self.node.scope if self.node is not None else "")
    timestep = property(lambda self: self.node.timestep if self.node is not None else None)
    shape = property(lambda self: tuple(self.node.shape) if self.node is not None else ())

    @property
    def processed(self):
        """Ids of the op nodes whose rule has run, this one included."""
        return self._walk.processed_at(self.index)

    @property
    def grads(self):
        """node id -> gradient accumulated so far, right after this event."""
        return self._walk.grads_at(self.index)

    # -- text ----------------------------------------------------------------
    def gradient_in(self) -> str:
        """How the arriving gradient is made: the seed, one share, or an explicit sum."""
        lhs = partial(self.label)
        if not self.contributions:
            return f"{lhs} = 1 (the seed)" if self.kind == "node" else lhs
        return f"{lhs} = " + " + ".join(c.term() for c in self.contributions)

    def formula(self) -> Text:
        """The symbolic story of this step, one formula per line."""
        if self.kind == "cut":
            return Text(f"{self.gradient_in()}\n✂ {self.label} was detached at the window edge: "
                        "this gradient stops here and reaches no earlier time step")
        if self.kind == "clip":
            d = self.detail
            return Text(f"g ← g · min(1, {d['max_norm']:g} / ‖g‖)   "
                        f"‖g‖ = {d['norm_before']:.4g} → {d['norm_after']:.4g}")
        lines = [self.gradient_in()] + [s.rule for s in self.sent]
        return Text("\n".join(lines))

    def explain(self) -> Text:
        """The formulas with the numbers plugged in (readable for small sizes)."""
        lines = [self.header()]
        if self.kind == "clip":
            lines.append("  " + self.formula())
            for label, (before, after) in self.detail["labels"].items():
                lines.append(f"  ∇{label}: {format_value(before)} → {format_value(after)}")
            return Text("\n".join(lines))
        lines.append("  " + self.gradient_in())
        pad = "  " + " " * len(partial(self.label)) + " "
        if len(self.contributions) > 1:
            lines.append(pad + "= " + " + ".join(format_value(c.value) for c in self.contributions))
        if self.contributions:
            lines.append(pad + "= " + format_value(self.upstream))
        if self.kind == "cut":
            lines.append(f"  ✂ stops here (‖·‖ = {self.detail['norm']:.4g} is dropped)")
        for s in self.sent:
            lhs = partial(s.label)
            rest = s.rule[len(lhs):]
            lines.append("  " + lhs + rest)
            pad = "  " + " " * len(lhs) + " "
            lines.append(pad + "= " + s.numbers)
            lines.append(pad + "= " + format_value(s.value))
        return Text("\n".join(lines))

    def header(self) -> str:
        total = len(self._walk) if self._walk is not None else "?"
        where = []
        if self.node is not None:
            where.append(f"op {self.node.op}")
            if self.scope:
                where.append(f"scope {self.scope}")
            if self.timestep is not None:
                where.append(f"t={self.timestep}")
            where.append(f"shape {self.shape}")
        title = {"node": self.forward or self.label,
                 "cut": f"✂ truncation at {self.label}",
                 "clip": "✂ gradient clipping"}[self.kind]
        tail = ("   [" + " · ".join(where) + "]") if where else ""
        return f"step {self.index + 1}/{total}  {title}{tail}"

    def __str__(self):
        if self.kind != "node":
            return "\n".join([self.header()] + ["  " + line for line in self.formula().split("\n")])
        lines = [self.header(), "  " + self.gradient_in()]
        for s in self.sent:
            lines.append("  " + s.rule)
            lines.append("  " + " " * len(partial(s.label)) + " = " + format_value(s.value))
        return "\n".join(lines)

    def __repr__(self):
        return f"<Event {self.index} {self.kind} {self.label}>"

    def __eq__(self, other):
        if not isinstance(other, Event):
            return NotImplemented
        return (self._walk is other._walk and self.index == other.index
                and self.kind == other.kind and self.node is other.node)

    def __hash__(self):
        return hash((id(self._walk), self.index))

    # -- pictures -------------------------------------------------------------
    def diagram(self, view="unfolded", **options):
        """The graph with processed nodes coloured and this node highlighted (needs tinygraph.viz)."""
        if _diagram_renderer is None:
            raise RuntimeError(
                "Event.diagram needs the renderer from tinygraph.viz: run `import tinygraph.viz` "
                "first (and pip install 'tinygraph[viz]' if that fails)")
        return _diagram_renderer(self, view, **options)

    def _repr_html_(self):
        text = html.escape(str(self.explain() if _small(self) else self))
        svg = ""
        if _diagram_renderer is not None and _svg_of is not None:
            try:
                svg = _svg_of(self.diagram())
            except Exception:  # a notebook display must not raise; the text is still useful
                svg = ""
        return f"<div>{svg}<pre>{text}</pre></div>"


def _small(event, limit=8):
    arrays = [event.upstream] + [s.value for s in event.sent]
    return all(getattr(a, "size", 1) <= limit for a in arrays if a is not None)


class Stepper:
    """Walk the backward pass of ``loss`` node by node.

    ``inputs``: restrict to the gradients of these tensors (like ``tg.grad``);
    by default every leaf that requires a gradient. ``cuts``: detached states
    carried over a truncated-BPTT window edge (a Tensor or an LSTM-style tuple);
    each gets a "cut" event showing the gradient that stops there
    (``Stepper.for_window`` builds one truncated-BPTT window this way).
    """

    def __init__(self, loss, *, inputs=None, cuts=None):
        if not isinstance(loss, Tensor) or loss._node is None or not loss.requires_grad:
            raise RuntimeError("Stepper: the loss has no recorded graph; build it from tensors "
                               "with requires_grad=True (outside tg.no_grad())")
        if loss.size != 1:
            raise ValueError(f"Stepper: the loss must have one element, got shape {loss.shape}; "
                             "reduce it first, e.g. loss.sum()")
        self.loss = loss
        root = loss._node
        self.order = topological_order([root])
        # a carried state is first used at step t, so it is the state of step t-1: named so before
        # the labels are made, so the expressions that read it say h(t-1) too
        self._cut_ids = {t._node.id for t in _flatten_state(cuts) if t._node is not None}
        self.labels = _node_labels(self.order, overrides={
            node.id: f"{node.name}({node.timestep - 1})" for node in self.order
            if node.id in self._cut_ids and node.name and isinstance(node.timestep, int)})
        self._consumers = {n.id: [] for n in self.order}
        for n in self.order:
            for i in n.inputs:
                self._consumers[i.id].append(n)
        targets = None
        if inputs is not None:
            if isinstance(inputs, Tensor) or not hasattr(inputs, "__iter__"):
                inputs = [inputs]  # one tensor, not an iterable of its rows
            targets = [_node_id(t, "inputs") for t in inputs]
            in_graph = {n.id for n in self.order}
            if not any(t in in_graph for t in targets):
                raise ValueError("Stepper: none of the tensors in inputs= is part of the loss's "
                                 "graph, so no gradient would reach them")
        self._needed = _needed_nodes(self.order, targets)
        self._contributions = {}   # receiver id -> [Contribution] in arrival order
        self._totals = {}          # receiver id -> running total (same adds as the engine)
        self._dropped = {}         # cut id -> [Contribution] that would have flowed
        self._source_cache = {}
        self._rearrangements = {}  # op id -> _Rearrangement, for leaf_sums after backward()
        self._leaf_label_cache = None
        self._node_events = []
        self._cut_after = {}       # cut id -> index of the last node event feeding it
        self._cut_nodes = {}
        seed = self._seed = backend.array_module(loss.data).ones(loss.data.shape, dtype=loss.dtype)
        with no_grad():
            self._results = run_backward([loss], [seed], retain_graph=True, create_graph=False,
                                         targets=targets, on_node=self._record)
        self.events = self._with_cut_events()
        self._renumber()
        self.position = 0
        self.breakpoints = []
        self.window = None  # (a, b, r) when made by for_window
        self._cells = None

    @classmethod
    def for_window(cls, model, xs, targets, loss_fn, *, k1, k2=None, window=0, state=None,
                   clip_norm=None):
        """The walk of one truncated-BPTT window, planned as ``tinygraph.bptt`` plans it.

        Window ``window`` of TBPTT(k1, k2) puts the loss on steps [a, b) and
        backpropagates through [r, b). Steps before r run without recording;
        the state carried into step r is detached, and the walk shows a "cut"
        event where its gradient stops. ``clip_norm`` appends a "clip" event.
        Model contract as in bptt: ``model(x_window, state) -> (outputs, state)``.
        Time steps in the walk count from 0 at step r of the sequence.
        """
        from .bptt import resolve_window, truncate, window_plan

        steps = xs.shape[0]
        k1, k2 = resolve_window(k1, k2, steps)
        a, b, r = window_plan(steps, k1, k2)[window]
        if r > 0:
            with no_grad():
                _, state = model(_time_slice(xs, 0, r), state)
        carried = truncate(state)
        outputs, _ = model(_time_slice(xs, r, b), carried)
        if a > r:
            outputs = outputs[a - r:]
        loss = loss_fn(outputs, targets[a:b])
        walk = cls(loss, cuts=carried)
        walk.window = (a, b, r)
        if clip_norm is not None:
            walk.record_clip(clip_norm)
        return walk

    # -- recording ------------------------------------------------------------
    def _record(self, node, upstream, input_grads):
        source = node.inputs[0] if node.op in _REARRANGING_OPS else None
        if source is not None and (source.is_leaf or source.op in _REARRANGING_OPS):
            # leaf_sums looks through these later, when loss.backward() may have freed `saved`
            self._rearrangements[node.id] = _Rearrangement(node)
        label = self.labels[node.id]
        symbols = argument_symbols(node, self.labels)
        symbols.update(out=wrap(label), g=partial(label), n=_size_ratio(node))
        numbers = _numeric_symbols(node, upstream)
        entry = formula_for(node.op)
        sent = []
        for position, (arg, grad) in enumerate(zip(node.saved, input_grads)):
            if not isinstance(arg, Tensor):
                continue
            receiver = arg._node
            if not (arg.requires_grad and self._needed.get(receiver.id, False)):
                if receiver.id in self._cut_ids:
                    self._record_dropped(node, upstream, position, receiver)
                continue
            if grad is None:
                continue
            value, reduced = _reduce_to(grad, arg.shape)
            via = fill(entry.via_phrase(position), {**symbols, "k": position})
            self._contributions.setdefault(receiver.id, []).append(
                Contribution(node, position, self._source_label(node), via, value))
            previous = self._totals.get(receiver.id)
            total = value if previous is None else previous + value
            self._totals[receiver.id] = total
            extra = {"xshape": tuple(arg.shape), "k": position}
            rhs = fill(entry.rule(position), {**symbols, **extra})
            rhs_numbers = fill(entry.rule(position), {**numbers, **extra})
            if reduced:  # the engine sums broadcast axes away once, centrally (sum_to)
                rhs, rhs_numbers = f"Σ_bcast {wrap(rhs)}", f"Σ_bcast {wrap(rhs_numbers)}"
            target = self.labels[receiver.id]
            sent.append(SentGradient(position, receiver, target, f"{partial(target)} = {rhs}",
                                     rhs_numbers, value, reduced, total))
        forward = fill(entry.forward, symbols)
        forward_text = label if forward == label else f"{label} = {forward}"
        self._node_events.append(Event("node", node, label, upstream,
                                       self._contributions.get(node.id, ()), sent, forward_text))

    def _record_dropped(self, node, upstream, position, receiver):
        """The share a detached state would have received: the same rule, asked for it."""
        arg = node.saved[position]
        needs = tuple(k == position for k in range(len(node.saved)))
        args = [a.data if isinstance(a, Tensor) else a for a in node.saved]
        out = node.tensor.data if node.tensor is not None else node.value
        grad = node.prim.vjp(upstream, out, needs, *args, **rule_keywords(node))[position]
        if grad is None:
            return
        value, _ = _reduce_to(grad, arg.shape)
        via = fill(formula_for(node.op).via_phrase(position),
                   {**argument_symbols(node, self.labels), "k": position})
        self._dropped.setdefault(receiver.id, []).append(
            Contribution(node, position, self._source_label(node), via, value))
        self._cut_nodes[receiver.id] = receiver
        self._cut_after[receiver.id] = len(self._node_events)  # the event being recorded

    def _with_cut_events(self):
        cuts_by_position = {}
        for cut_id, shares in self._dropped.items():
            total = shares[0].value
            for share in shares[1:]:
                total = total + share.value
            node = self._cut_nodes[cut_id]
            norm = float(_norm(total))
            event = Event("cut", node, self.labels[node.id], total, shares,
                          detail={"norm": norm})
            cuts_by_position.setdefault(self._cut_after[cut_id], []).append(event)
        events = []
        for k, event in enumerate(self._node_events):
            events.append(event)
            events.extend(cuts_by_position.get(k, ()))
        return events

    def _renumber(self):
        for k, event in enumerate(self.events):
            event.index = k
            event._walk = self

    def _source_label(self, consumer):
        """Label of the named node(s) where ``consumer``'s output goes.

        Every path downstream is followed to its first named node (at most
        ``_SOURCE_DEPTH`` ops away): when the output feeds several (the LSTM's
        gate pre-activation feeds i, f, g and o), all of them are named,
        ``f,i,g,o(2)``, rather than whichever the search met first. With no
        named node within reach, the consumer's own label is used.
        """
        cached = self._source_cache.get(consumer.id)
        if cached is not None:
            return cached
        found = self.labels[consumer.id]
        level, seen, named = [consumer], {consumer.id}, []
        for _ in range(_SOURCE_DEPTH + 1):
            following = []
            for node in level:
                if node.name:  # the first named node on this path
                    named.append(node)
                    continue
                for nxt in self._consumers.get(node.id, ()):
                    if nxt.id not in seen:
                        seen.add(nxt.id)
                        following.append(nxt)
            if named and not following:
                break
            level = following
        if named:
            found = _joined_labels(sorted(named, key=lambda n: n.id), self.labels)
        self._source_cache[consumer.id] = found
        return found

    # -- cursor -----------------------------------------------------------------
    def __len__(self):
        return len(self.events)

    @property
    def done(self) -> bool:
        return self.position >= len(self.events)

    @property
    def current(self):
        """The last event taken (None before the first step)."""
        return self.events[self.position - 1] if self.position else None

    def step(self):
        """Take one step; returns its event (None when the walk is over)."""
        if self.done:
            return None
        self.position += 1
        return self.current

    def back(self):
        """Undo one step; returns the event that is now current (None at the start)."""
        if self.position:
            self.position -= 1
        return self.current

    def reset(self):
        """Back to before the first step."""
        self.position = 0
        return self

    def __iter__(self):
        while not self.done:
            yield self.step()

    def break_at(self, **criteria):
        """Add a breakpoint (same keywords as ``run_to``); ``run()`` stops there."""
        _check_criteria(criteria)
        self.breakpoints.append(criteria)
        return self

    def clear_breakpoints(self):
        self.breakpoints.clear()
        return self

    def run(self):
        """Run to the next breakpoint, or to the end; returns the current event."""
        while not self.done:
            event = self.step()
            if any(_matches(event, bp) for bp in self.breakpoints):
                break
        return self.current

    def run_to(self, name=None, scope=None, timestep=None, *, op=None, label=None, kind=None):
        """Step until the next event that matches every given criterion; returns it.

        ``name`` matches the node's name (``"h"``), ``label`` its full label
        (``"h(2)"``), ``scope`` any scope containing those dotted parts
        (``"cell"`` matches ``"ElmanRNN.cell"``). Raises ValueError, leaving
        the cursor where it was, when no later event matches.
        """
        criteria = {k: v for k, v in dict(name=name, scope=scope, timestep=timestep, op=op,
                                          label=label, kind=kind).items() if v is not None}
        _check_criteria(criteria)
        for k in range(self.position, len(self.events)):
            if _matches(self.events[k], criteria):
                self.position = k + 1
                return self.current
        raise ValueError(self._no_match_message(criteria))

    def _no_match_message(self, criteria):
        wanted = ", ".join(f"{k}={v!r}" for k, v in criteria.items())
        where = "after the current step" if self.position else "in this walk"
        if any(_matches(e, criteria) for e in self.events[:self.position]):
            where += " (there are earlier matches: reset() to go back)"
        names = sorted({e.name for e in self.events if e.name})
        shown = ", ".join(names[:12]) + (", ..." if len(names) > 12 else "")
        steps = self.timesteps()
        return (f"run_to: no node matches {wanted} {where}; names: {shown or 'none'}; "
                f"time steps: {', '.join(map(str, steps)) or 'none'}")

    # -- gradients ----------------------------------------------------------------
    def processed_at(self, index):
        return frozenset(e.node.id for e in self.events[:index + 1] if e.kind == "node")

    def grads_at(self, index):
        """node id -> gradient accumulated up to and including event ``index``."""
        totals = {self.loss._node.id: self._seed} if index >= 0 else {}
        for event in self.events[:index + 1]:
            if event.kind == "clip":
                totals.update(event.detail["clipped"])
            for s in event.sent:
                totals[s.node.id] = s.total
        return totals

    @property
    def grads(self):
        """Leaf (or ``inputs``) node -> gradient as it stands at the cursor.

        After the last step these are exactly ``loss.backward()``'s gradients
        (clipped, once a clip event has been passed), before any gradient hook
        registered on a leaf: those run as ``backward()`` fills ``.grad``.
        """
        totals = self.grads_at(self.position - 1)
        return {node: totals[node.id] for node, _ in self._results.values() if node.id in totals}

    def grad(self, tensor):
        """The gradient of one leaf ``tensor`` at the cursor (None if none arrived yet)."""
        node = tensor._node if isinstance(tensor, Tensor) else tensor
        return self.grads_at(self.position - 1).get(node.id) if node is not None else None

    def named_grads(self):
        """Leaf label -> gradient at the cursor, named as ``leaf_sums`` names them (``W [forward]``)."""
        labels = self._leaf_labels()
        return {labels[node.id]: value for node, value in self.grads.items()}

    def leaf_sums(self):
        """Each leaf's final gradient as the explicit sum of its contributions (over time)."""
        labels = self._leaf_labels()
        sums = []
        for node, _ in self._results.values():
            shares = self._contributions.get(node.id, ())
            if shares:
                shares, wrapper = self._through_rearrangements(node, shares)
                sums.append(GradientSum(node, labels[node.id], shares,
                                        self._totals[node.id], wrapper))
        return sums

    def _leaf_labels(self):
        """Result node id -> its label, unique: the same name in two places says which.

        A bidirectional RNN's two ``W`` become ``W [forward]`` and ``W [backward]``
        (the scope part that tells their uses apart). Leaves still alike after
        that are numbered in walk order, not by node id, so the names do not
        depend on what else was recorded first. Computed over every leaf, not
        just those reached so far, so a name does not change as the cursor moves.
        """
        if self._leaf_label_cache is None:
            nodes = [node for node, _ in self._results.values()]
            labels = qualify_clashes([self.labels[n.id] for n in nodes], lambda k: self._home_scope(nodes[k]))
            for label, group in _positions_by(labels).items():
                if len(group) > 1:
                    for number, k in enumerate(group, 1):
                        labels[k] = f"{label} #{number}"
            self._leaf_label_cache = {n.id: label for n, label in zip(nodes, labels)}
        return self._leaf_label_cache

    def _home_scope(self, leaf):
        """Where a leaf is used: the scope its consumers share (parameters carry none)."""
        if leaf.scope:
            return leaf.scope
        return _common_scope([c.scope for c in self._consumers.get(leaf.id, ()) if c.scope])

    def _through_rearrangements(self, leaf, shares):
        """Look through a transpose/reshape used once, to the shares summed before it."""
        wrapper = "{g}"
        while len(shares) == 1 and shares[0].consumer.op in _REARRANGING_OPS:
            op_node = shares[0].consumer
            inner = self._contributions.get(op_node.id, ())
            if len(inner) < 2:
                break
            rule = formula_for(op_node.op).rule(0)
            symbols = {"xshape": tuple(leaf.shape)}
            wrapper = fill(rule, {**symbols, "g": wrapper})
            rearrange = self._rearrangements[op_node.id]
            shares = [Contribution(c.consumer, c.position, c.source, c.via, rearrange(c.value))
                      for c in inner]
        return shares, wrapper

    # -- truncation and clipping -----------------------------------------------------
    def record_clip(self, max_norm, *, params=None, norm_type=2.0):
        """Append a "clip" event: gradient-norm clipping applied to the final gradients.

        Uses ``tinygraph.optim.clip_grad_norm`` (the optimizer's own rule) on
        copies; ``params`` limits it to those tensors (default: every leaf).
        """
        from .optim import clip_grad_norm

        final = {node.id: (node, self._totals[node.id]) for node, _ in self._results.values()
                 if node.id in self._totals}
        if params is not None:
            wanted = {_node_id(p, "params") for p in params}
            final = {k: v for k, v in final.items() if k in wanted}
        holders = {k: _GradHolder(v) for k, (_, v) in final.items()}
        before = clip_grad_norm(list(holders.values()), max_norm, norm_type)
        clipped = {k: h.grad.data for k, h in holders.items()}
        after = float(sum(float((abs(v) ** norm_type).sum()) for v in clipped.values()) ** (1 / norm_type))
        labels = {self.labels[k]: (final[k][1], clipped[k]) for k in final}
        event = Event("clip", None, "‖g‖", None, detail={
            "max_norm": float(max_norm), "norm_before": float(before), "norm_after": after,
            "clipped": clipped, "labels": labels})
        self.events.append(event)
        self._renumber()
        return event

    # -- whole-walk text ------------------------------------------------------------------
    def walkthrough(self) -> Text:
        """Every step's formulas, then the leaf gradients as sums (no numbers)."""
        parts = [str(e) for e in self.events]
        parts.append(self.summary())
        return Text("\n\n".join(parts))

    def explain(self) -> Text:
        """Every step with the numbers plugged in, then the leaf gradients as sums."""
        parts = [e.explain() for e in self.events]
        parts.append(self.summary(numbers=True))
        return Text("\n\n".join(parts))

    def summary(self, numbers=False) -> Text:
        lines = ["gradients of the leaves (sums over their uses, i.e. over time):"]
        for s in self.leaf_sums():
            body = s.explain() if numbers else s.formula() + "  = " + format_value(s.total)
            lines += ["  " + line for line in body.split("\n")]
        return Text("\n".join(lines))

    def timesteps(self):
        """All time steps present in the graph, sorted."""
        return sorted({n.timestep for n in self.order if isinstance(n.timestep, int)})

    def reached_timesteps(self, index=None):
        """Time steps whose cell nodes the gradient has passed, up to event ``index`` (default: cursor).

        Cell nodes are those in the scopes where parameters are used at a time
        step; a per-step loss is left out, since the gradient reaches it at once.
        """
        index = self.position - 1 if index is None else index
        cells = self._cell_scopes()
        return sorted({e.timestep for e in self.events[:index + 1]
                       if e.node is not None and isinstance(e.timestep, int)
                       and (not cells or e.scope in cells)})

    def _cell_scopes(self):
        if self._cells is None:
            self._cells = {c.scope for n in self.order if n.is_leaf and n.requires_grad
                           for c in self._consumers[n.id] if isinstance(c.timestep, int)}
        return self._cells

    def __repr__(self):
        return f"<Stepper {self.position}/{len(self.events)} steps>"

    def _repr_html_(self):
        current = self.current
        if current is None:
            return f"<pre>{html.escape(repr(self))}: call step()</pre>"
        return current._repr_html_()


# ---------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------

class _GradHolder:
    """The shape clip_grad_norm expects: something with a ``.grad`` Tensor."""

    def __init__(self, array):
        self.grad = Tensor(array.copy())


def _time_slice(xs, start, stop):
    """Steps [start, stop) of a time-major sequence as a Tensor with no recorded op."""
    data = xs.data if isinstance(xs, Tensor) else xs
    return Tensor(data[start:stop])


def _flatten_state(state):
    """Tensors of a recurrent state: None, a Tensor, or (nested) tuples/lists of them."""
    if state is None:
        return []
    if isinstance(state, Tensor):
        return [state]
    return [t for part in state for t in _flatten_state(part)]


def _node_id(t, what):
    node = t._node if isinstance(t, Tensor) else t
    if node is None:
        raise ValueError(f"Stepper: a tensor in {what}= is not part of any recorded graph")
    return node.id


def _needed_nodes(order, targets):
    """The same pruning as the engine: nodes on a path to something that needs a gradient."""
    wanted = set(targets) if targets is not None else None
    needed = {}
    for node in order:
        hit = node.id in wanted if wanted is not None else (node.prim is None and node.requires_grad)
        if not hit:
            hit = any(needed.get(i.id) for i in node.inputs)
        needed[node.id] = hit
    return needed


# ops that only move elements: their VJP maps each share on its own (linear, no mixing)
_REARRANGING_OPS = ("transpose", "reshape", "astype", "to_device")


class _Rearrangement:
    """A rearranging op's own rule, applied to one share: ``grad`` of its output -> its input's.

    Holds what the rule reads (the arguments, the output), taken while the walk
    runs: ``loss.backward()`` afterwards frees the node's ``saved`` and ``value``.
    """

    __slots__ = ("prim", "args", "out", "keywords", "shape")

    def __init__(self, node):
        self.prim = node.prim
        self.args = [a.data if isinstance(a, Tensor) else a for a in node.saved]
        self.out = node.tensor.data if node.tensor is not None else node.value
        self.keywords = rule_keywords(node)
        self.shape = node.saved[0].shape

    def __call__(self, grad):
        needs = (True,) + (False,) * (len(self.args) - 1)
        value = self.prim.vjp(grad, self.out, needs, *self.args, **self.keywords)[0]
        return _reduce_to(value, self.shape)[0]


def qualify_clashes(labels, home):
    """``labels`` where the alike ones say where each is used: ``U [forward]``, ``U [backward]``.

    ``home(k)`` is the scope item k is used in; a clashing label gets the part
    of it that tells the group apart (``_distinguishing_scopes``).
    """
    labels = list(labels)
    for label, group in _positions_by(labels).items():
        if len(group) > 1:
            for k, where in zip(group, _distinguishing_scopes([home(k) for k in group])):
                if where:
                    labels[k] = f"{label} [{where}]"
    return labels


def _positions_by(labels):
    """label -> the positions holding it, in order."""
    positions = {}
    for k, label in enumerate(labels):
        positions.setdefault(label, []).append(k)
    return positions


def _reduce_to(grad, shape):
    if tuple(getattr(grad, "shape", ())) != tuple(shape):
        return sum_to(grad, shape), True
    return grad, False


def _size_ratio(node):
    """mean's N: input elements per output element."""
    if not node.inputs:
        return 1
    size_in = _prod(node.inputs[0].shape)
    return max(1, size_in // max(1, _prod(node.shape)))


def _prod(shape):
    n = 1
    for s in shape:
        n *= s
    return n


def _numeric_symbols(node, upstream):
    """Template symbols with values instead of names, for ``explain``."""
    symbols = {"op": node.op, "g": format_value(upstream), "n": _size_ratio(node)}
    out = node.tensor
    symbols["out"] = format_value(out.data) if out is not None else "out"
    values = []
    for k, arg in enumerate(node.saved):
        data = arg.data if isinstance(arg, Tensor) else arg
        text = format_value(data)
        symbols[f"x{k}"] = text
        ndim = getattr(data, "ndim", 0)
        # the matrix transpose of the last two axes, as matmul's rule uses it (not .T: every axis)
        symbols[f"x{k}T"] = format_value(data.swapaxes(-1, -2)) if ndim >= 2 else text
        values.append(text)
    symbols["xs"] = ", ".join(values)
    for key, value in node.attrs.items():
        symbols[key] = _format_attr(value)  # the same notation as the symbolic rule: [:, 6:9]
    symbols.update(time_symbols(node))
    return symbols


def _norm(array):
    return (array * array).sum() ** 0.5


# a named node further than this downstream says little about where a share came from
_SOURCE_DEPTH = 4


def _distinguishing_scopes(scopes):
    """The parts of dotted scopes that tell them apart: RNN.layer0.forward -> forward."""
    split = [s.split(".") if s else [] for s in scopes]
    k = 0
    while split and all(len(p) > k for p in split) and len({p[k] for p in split}) == 1:
        k += 1
    return [".".join(p[k:]) for p in split]


def _joined_labels(nodes, labels):
    """``o(2)``; ``i,f,g,o(2)`` for several names at one time step; else ``a(2), b(3)``."""
    if len(nodes) == 1:
        return labels[nodes[0].id]
    steps = {n.timestep for n in nodes}
    names = list(dict.fromkeys(n.name for n in nodes))
    if len(steps) == 1 and all(labels[n.id] == f"{n.name}({n.timestep})" for n in nodes):
        return f"{','.join(names)}({steps.pop()})"
    return ", ".join(dict.fromkeys(labels[n.id] for n in nodes))

_CRITERIA = ("name", "scope", "timestep", "op", "label", "kind")


def _check_criteria(criteria):
    unknown = set(criteria) - set(_CRITERIA)
    if unknown:
        raise TypeError(f"unknown breakpoint criteria {sorted(unknown)}; use {', '.join(_CRITERIA)}")
    if not criteria:
        raise TypeError(f"give at least one criterion: {', '.join(_CRITERIA)}")


def _matches(event, criteria):
    for key, want in criteria.items():
        if key == "scope":
            # "cell" matches "ElmanRNN.cell" and "rnn.cell.gates": whole dotted parts only
            if f".{want}." not in f".{event.scope or ''}.":
                return False
        elif key == "label":
            if event.label != want:
                return False
        elif getattr(event, key) != want:
            return False
    return True
