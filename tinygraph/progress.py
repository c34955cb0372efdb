"""A small text progress bar on stderr (no tqdm dependency).

On a terminal it redraws one line in place; elsewhere (logs, pytest) it
stays quiet until ``close()``, which writes one summary line.
"""
from __future__ import annotations

import sys
import time

import numpy as np

__all__ = ["ProgressBar", "format_stats"]


def _fmt_value(v):
    if isinstance(v, np.floating):   # a NumPy float32 is no Python float: format it the same way
        v = float(v)
    if isinstance(v, float):
        if v != v or v in (float("inf"), float("-inf")):
            return str(v)
        return f"{v:.3g}" if (abs(v) >= 1e4 or (v and abs(v) < 1e-3)) else f"{v:.4f}".rstrip("0").rstrip(".")
    return str(v)


def format_stats(stats) -> str:
    """``loss=2.31 ppl=10.1``: None values are left out."""
    return " ".join(f"{k}={_fmt_value(v)}" for k, v in stats.items() if v is not None)


def _fmt_time(seconds):
    seconds = int(seconds)
    m, s = divmod(seconds, 60)
    h, m = divmod(m, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m:02d}:{s:02d}"


class ProgressBar:
    """``bar = ProgressBar(total, desc="epoch 1")``; ``bar.update(loss=...)``; ``bar.close()``."""

    def __init__(self, total=None, *, desc="", stream=None, width=24, min_interval=0.1, enabled=True):
        self.total = total
        self.desc = desc
        self.stream = stream if stream is not None else sys.stderr
        self.width = width
        self.min_interval = min_interval
        self.enabled = enabled
        self.count = 0
        self.stats = {}
        self.start = time.perf_counter()
        self._last_draw = 0.0
        self._interactive = enabled and bool(getattr(self.stream, "isatty", lambda: False)())

    def render(self) -> str:
        elapsed = time.perf_counter() - self.start
        rate = self.count / elapsed if elapsed > 0 else 0.0
        parts = [self.desc] if self.desc else []
        if self.total:
            frac = min(self.count / self.total, 1.0)
            filled = int(round(frac * self.width))
            parts.append(f"|{'#' * filled}{'.' * (self.width - filled)}| {self.count}/{self.total}")
            eta = max(0, self.total - self.count) / rate if rate > 0 else 0.0
            parts.append(f"[{_fmt_time(elapsed)}<{_fmt_time(eta)}, {rate:.2f} it/s]")
        else:
            parts.append(f"{self.count} it [{_fmt_time(elapsed)}, {rate:.2f} it/s]")
        stats = format_stats(self.stats)
        if stats:
            parts.append(stats)
        return " ".join(parts)

    def update(self, n=1, **stats):
        self.count += n
        self.stats.update(stats)
        now = time.perf_counter()
        if self._interactive and now - self._last_draw >= self.min_interval:
            self._last_draw = now
            self.stream.write("\r" + self.render() + "\x1b[K")
            self.stream.flush()

    def write(self, message):
        """Print a message line without breaking the bar."""
        if not self.enabled:
            return
        prefix = "\r\x1b[K" if self._interactive else ""
        self.stream.write(prefix + message + "\n")
        self.stream.flush()

    def close(self, **stats):
        self.stats.update(stats)
        if self.enabled:
            self.stream.write(("\r" if self._interactive else "") + self.render() + "\n")
            self.stream.flush()
