"""Pictures of a backprop walk: one diagram per step, and a self-contained HTML player.

``draw_step(event, view)`` draws the graph of the stepper's loss with the
nodes processed so far coloured, the current node highlighted and gradient
summaries on the nodes. Importing this module installs it as the renderer
behind ``Event.diagram()`` (the engine's stepper never imports viz).

``stepper_html(stepper, path)`` writes ONE file with no external resources:
the diagram as inline SVG, drawn once (one layout for every step; each step
records the SVG ids of its current and processed nodes), prev/next/play/reset
buttons (and the arrow keys), the current step's formula and numbers, and a
time-step strip showing how far back the gradient has reached. Stable hooks
for tests and styling: ``#prev #next #play #reset #step-index #formula
#values #node-label #timeline`` and, inside the visible diagram, the class
``current`` on the highlighted node (``processed`` on the nodes already done).
"""
from __future__ import annotations

import html
import json
import re

from tinygraph import stepper as _stepper
from tinygraph.fileio import atomic_write_text

__all__ = ["draw_step", "stepper_html", "VIEWS"]

VIEWS = ("unfolded", "ops", "graph")


def draw_step(event, view="unfolded", **options):
    """The diagram of ``event``'s walk: ``view`` is "unfolded" (variables), "ops" or "graph"."""
    return _draw_at(event._walk, event.index, view, **options)


def _notebook_svg(diagram):
    from .render import render_svg
    return _strip_prolog(render_svg(diagram))


_stepper.set_diagram_renderer(draw_step, svg=_notebook_svg)


def _draw_at(walk, index, view, **options):
    """The diagram right after event ``index`` (-1: before the first step)."""
    from .diagrams import draw_graph, draw_unfolded

    if view not in VIEWS:
        raise ValueError(f"unknown view {view!r}; choose one of {', '.join(VIEWS)}")
    if index < 0:
        highlight, processed, grads = set(), set(), {}
    else:
        event = walk.events[index]
        highlight = {event.node.id} if event.node is not None else set()
        processed, grads = set(walk.processed_at(index)), walk.grads_at(index)
    keywords = dict(highlight=highlight, processed=processed, grads=grads, show_grads=True)
    keywords.update(options)
    if view == "graph":
        return draw_graph(walk.loss, detail="ops", **keywords)
    return draw_unfolded(walk.loss, detail="variables" if view == "unfolded" else "ops", **keywords)


def _diagram_svg(walk, index, view, grads_on_nodes):
    from .render import render_svg

    diagram = _draw_at(walk, index, view, show_grads=grads_on_nodes)
    return _mark_nodes(_strip_prolog(render_svg(diagram)))


_COMMENT = re.compile(r"<!--.*?-->\n?", re.S)


def _strip_prolog(svg):
    """Inline SVG must not carry the XML declaration or DOCTYPE (nor Graphviz's comments)."""
    start = svg.find("<svg")
    return _COMMENT.sub("", svg[start:] if start >= 0 else svg)


_NODE_GROUP = re.compile(r'<g id="(node\d+)" class="node">(.*?)</g>', re.S)


def _mark_nodes(svg):
    """Add the CSS classes ``current``/``processed`` to the node groups drawn that way.

    The diagrams mark them by colour (viz.labels.HIGHLIGHT / PROCESSED); a class
    lets the player, its stylesheet and tests find them without knowing colours.
    """
    from .labels import HIGHLIGHT, PROCESSED

    current = HIGHLIGHT.get("color", "").lower()
    done = PROCESSED.get("fillcolor", "").lower()

    def classify(match):
        body = match.group(2).lower()
        classes = ["node"]
        if current and f'stroke="{current}"' in body:
            classes.append("current")
        if done and f'fill="{done}"' in body:
            classes.append("processed")
        return f'<g id="{match.group(1)}" class="{" ".join(classes)}">{match.group(2)}</g>'

    return _NODE_GROUP.sub(classify, svg)


def _step_record(walk, event):
    """What the page shows beside the diagram for one step."""
    return {
        "kind": event.kind,
        "label": event.label,
        "header": event.header(),
        "formula": str(event.formula()),
        "values": str(event.explain()),
        "timestep": event.timestep if isinstance(event.timestep, int) else None,
        "reached": walk.reached_timesteps(event.index),
    }


# a DOT node statement: ``n16 [label=... color="#e03131" ...]`` (edges have ``->``)
_DOT_NODE = re.compile(r'^\s*"?([\w]+)"?\s+\[(.*)\]\s*$', re.M)


def _marked_dot_nodes(source):
    """(current, processed): DOT names drawn highlighted / coloured as done in ``source``."""
    from .labels import HIGHLIGHT, PROCESSED

    stroke = HIGHLIGHT.get("color", "").lower()
    fill = PROCESSED.get("fillcolor", "").lower()
    current, processed = [], []
    for name, attrs in _DOT_NODE.findall(source):
        attrs = attrs.lower()
        if stroke and f'color="{stroke}"' in attrs.replace("fillcolor=", "fill="):
            current.append(name)
        if fill and f'fillcolor="{fill}"' in attrs:
            processed.append(name)
    return current, processed


_SVG_NODE = re.compile(r'<g id="(node\d+)" class="node">\s*<title>(.*?)</title>', re.S)


def _svg_ids(svg):
    """DOT node name -> id of its ``<g class="node">`` in the SVG."""
    return {html.unescape(title): gid for gid, title in _SVG_NODE.findall(svg)}


def _progress(enabled, total, desc):
    if not enabled:
        return None
    from tinygraph.progress import ProgressBar
    return ProgressBar(total, desc=desc)


def stepper_html(stepper, path=None, view="unfolded", *, title=None, grads_on_nodes=False,
                 max_steps=2000, progress=False):
    """Write the walk of ``stepper`` as one self-contained HTML file; returns the HTML text.

    The diagram is rendered ONCE (the same layout at every step); each step
    records which of its nodes are current and which are done, and the page
    toggles the CSS classes ``current`` / ``processed`` as you step. The file
    grows with the number of steps only by their text. ``progress=True`` shows
    a progress bar on stderr while the steps are worked out.

    ``grads_on_nodes=True`` also writes a gradient summary into every node;
    that needs one diagram per step (a bigger, slower file whose layout shifts
    as the labels grow), so it is refused above ``max_steps // 4`` steps.
    """
    if view not in VIEWS:
        raise ValueError(f"unknown view {view!r}; choose one of {', '.join(VIEWS)}")
    limit = max_steps // 4 if grads_on_nodes else max_steps
    if len(stepper) > limit:
        raise ValueError(f"stepper_html: {len(stepper)} steps is more than "
                         f"{'max_steps // 4 with grads_on_nodes' if grads_on_nodes else 'max_steps'}"
                         f"={limit}; use fewer time steps or a smaller model, or raise max_steps")
    total = len(stepper) + 1
    bar = _progress(progress, total, "rendering the player")
    if grads_on_nodes:
        frames, marks = [], None
        for k in range(total):
            frames.append(_diagram_svg(stepper, k - 1, view, True))
            if bar is not None:
                bar.update()
    else:
        frames, marks = _one_frame_and_marks(stepper, view, bar)
    if bar is not None:
        bar.close()
    start = {"kind": "start", "label": "", "header": f"before the first step: {len(stepper)} steps",
             "formula": "press next (→) to take the first step", "values": "",
             "timestep": None, "reached": []}
    steps = [start] + [_step_record(stepper, e) for e in stepper.events]
    if marks is not None:
        for record, (current, processed) in zip(steps, marks):
            record["current"], record["processed"] = current, processed
    page = _page(title or "tinygraph: stepping through backprop", frames, steps,
                 stepper.timesteps(), str(stepper.summary(numbers=True)))
    if path is not None:
        atomic_write_text(path, page, fsync=False)
    return page


def _one_frame_and_marks(stepper, view, bar):
    """The plain diagram, rendered once, and per step the SVG ids of the current/done nodes.

    Which drawn node stands for which recorded node is the diagram's business
    (in the variables view one drawn node is a whole op chain), so it is read
    back from the diagram's own DOT source at each step: only the cheap DOT
    text is made per step, never another layout.
    """
    from .render import render_svg

    svg = _strip_prolog(render_svg(_draw_at(stepper, -1, view, show_grads=False)))
    ids = _svg_ids(svg)
    marks = []
    for k in range(len(stepper) + 1):
        if k == 0:
            marks.append(([], []))
        else:
            source = _draw_at(stepper, k - 1, view, show_grads=False).source
            current, processed = _marked_dot_nodes(source)
            marks.append(([ids[n] for n in current if n in ids],
                          [ids[n] for n in processed if n in ids]))
        if bar is not None:
            bar.update()
    return [svg], marks


def _json_for_script(data):
    """JSON that cannot end or change the <script> element it sits in.

    Every "<" becomes the escape \\u003c: "</script" would end the element, and
    "<!--" followed by "<script" would put the HTML parser in its escaped
    state, swallowing the player's own script. JSON.parse reads it back as "<".
    """
    return json.dumps(data, ensure_ascii=False).replace("<", "\\u003c")


def _page(title, frames, steps, timesteps, summary):
    if len(frames) == 1:  # one diagram; the script moves the classes from step to step
        frame_html = f'<div class="frame" data-step="all">{frames[0]}</div>'
    else:
        frame_html = "\n".join(
            f'<div class="frame" data-step="{k}"{"" if k == 0 else " hidden"}>{svg}</div>'
            for k, svg in enumerate(frames))
    strip = "".join(f'<span class="tstep" data-t="{t}">t={t}</span>' for t in timesteps)
    return _TEMPLATE.format(
        title=html.escape(title), frames=frame_html, strip=strip or "<span>no time steps</span>",
        last=len(steps) - 1, summary=html.escape(summary), css=_CSS, js=_JS,
        data=_json_for_script(steps))


_CSS = """
body { font-family: system-ui, sans-serif; margin: 1em; color: #212529; }
#controls button { font-size: 1em; padding: .3em .9em; margin-right: .3em; }
#step-index { font-weight: bold; margin-left: .6em; }
#timeline { margin: .8em 0; }
.tstep { display: inline-block; padding: .2em .7em; margin-right: 2px; border-radius: 3px;
         background: #e9ecef; color: #495057; }
.tstep.reached { background: #b2f2bb; color: #1b4332; }
.tstep.current { outline: 3px solid #e03131; }
#node-label { font-weight: bold; margin: .4em 0; }
#text { display: flex; gap: 1em; flex-wrap: wrap; }
#text > * { flex: 1 1 28em; min-width: 0; }
pre { white-space: pre; overflow-x: auto; background: #f8f9fa; padding: .6em; margin: .3em 0; }
#formula { font-size: 1.1em; }
#diagram { margin-top: .8em; border: 1px solid #dee2e6; overflow: auto; }
#diagram svg { max-width: 100%; height: auto; }
g.node.processed :is(ellipse, polygon, path):not([fill="none"]) { fill: #b2f2bb; }
g.node.current :is(ellipse, polygon, path) { stroke: #e03131; stroke-width: 4; }
#summary[hidden] { display: none; }
"""

_JS = """
(function () {
  var steps = JSON.parse(document.getElementById('steps-data').textContent);
  var frames = document.querySelectorAll('#diagram .frame');
  var last = steps.length - 1;
  var index = 0, timer = null;
  var el = function (id) { return document.getElementById(id); };
  function show(k) {
    index = Math.max(0, Math.min(last, k));
    var s = steps[index];
    if (frames.length === 1) {
      var marked = document.querySelectorAll('#diagram g.node.current, #diagram g.node.processed');
      for (var m = 0; m < marked.length; m++) marked[m].classList.remove('current', 'processed');
      var mark = function (ids, cls) {
        for (var q = 0; q < ids.length; q++) {
          var g = document.getElementById(ids[q]);
          if (g) g.classList.add(cls);
        }
      };
      mark(s.processed || [], 'processed');
      mark(s.current || [], 'current');
    } else {
      for (var i = 0; i < frames.length; i++) frames[i].hidden = (i !== index);
    }
    el('step-index').textContent = index + ' / ' + last;
    el('node-label').textContent = s.header;
    el('formula').textContent = s.formula;
    el('values').textContent = s.values;
    el('player').setAttribute('data-step', String(index));
    el('player').classList.toggle('at-end', index === last);
    el('summary').hidden = (index !== last);
    var cells = document.querySelectorAll('#timeline .tstep');
    for (var j = 0; j < cells.length; j++) {
      var t = Number(cells[j].getAttribute('data-t'));
      cells[j].classList.toggle('reached', s.reached.indexOf(t) >= 0);
      cells[j].classList.toggle('current', s.timestep === t);
    }
    el('prev').disabled = (index === 0);
    el('next').disabled = (index === last);
    if (index === last) stop();
  }
  function stop() {
    if (timer !== null) { clearInterval(timer); timer = null; }
    el('play').textContent = 'play';
  }
  function play() {
    if (timer !== null) { stop(); return; }
    if (index === last) show(0);
    el('play').textContent = 'pause';
    timer = setInterval(function () { show(index + 1); }, Number(el('player').getAttribute('data-interval')));
  }
  el('next').onclick = function () { stop(); show(index + 1); };
  el('prev').onclick = function () { stop(); show(index - 1); };
  el('reset').onclick = function () { stop(); show(0); };
  el('play').onclick = play;
  document.addEventListener('keydown', function (e) {
    if (e.key === 'ArrowRight') { stop(); show(index + 1); e.preventDefault(); }
    else if (e.key === 'ArrowLeft') { stop(); show(index - 1); e.preventDefault(); }
    else if (e.key === 'Home') { stop(); show(0); e.preventDefault(); }
    else if (e.key === ' ') { play(); e.preventDefault(); }
  });
  show(0);
})();
"""

_TEMPLATE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>{title}</title>
<style>{css}</style>
</head>
<body>
<div id="player" data-step="0" data-last="{last}" data-interval="600">
<h1>{title}</h1>
<div id="controls">
<button id="reset" title="back to the start (Home)">reset</button>
<button id="prev" title="one step back (←)">prev</button>
<button id="play" title="play / pause (space)">play</button>
<button id="next" title="one step forward (→)">next</button>
<span id="step-index">0 / {last}</span>
</div>
<div id="timeline" title="time steps the gradient has reached">{strip}</div>
<div id="node-label"></div>
<div id="text">
<div><pre id="formula"></pre></div>
<details open><summary>numbers</summary><pre id="values"></pre></details>
</div>
<div id="summary" hidden><h3>leaf gradients: sums over time</h3><pre>{summary}</pre></div>
<div id="diagram">
{frames}
</div>
</div>
<script type="application/json" id="steps-data">{data}</script>
<script>{js}</script>
</body>
</html>
"""
