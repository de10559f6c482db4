"""A small progress bar on stderr: done/total, rate (e.g. seeds/s) and ETA; no dependencies.

It draws only when its stream is a terminal and ``quiet`` is False, so logs, pipes, CI and tests
stay clean::

    with Progress(1000, unit="seeds", desc="sweep") as bar:
        for chunk in chunks:
            ...
            bar.update(len(chunk))
"""

from __future__ import annotations

import sys
import time
from typing import TextIO


def _clock(seconds: float) -> str:
    seconds = int(round(seconds))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m:d}:{s:02d}"


class Progress:
    """A one-line progress bar, redrawn in place at most every ``min_interval`` seconds.

    Args:
      total: the number of units of work (e.g. seeds).
      unit: what a unit is called, used in ``"<rate> seeds/s"``.
      desc: a short label printed before the bar.
      quiet: if True, never draw (the ``--quiet`` flag).
      file: the stream (default ``sys.stderr``, looked up when the bar is made). Nothing is drawn
        unless it is a terminal (``file.isatty()``).
      min_interval: seconds between redraws.
    """

    def __init__(
        self,
        total: int,
        *,
        unit: str = "seeds",
        desc: str = "",
        quiet: bool = False,
        file: TextIO | None = None,
        min_interval: float = 0.1,
    ):
        self.total = max(int(total), 0)
        self.unit = unit
        self.desc = desc
        self.file = sys.stderr if file is None else file
        isatty = getattr(self.file, "isatty", None)
        self.enabled = (not quiet) and bool(isatty and isatty())
        self.min_interval = min_interval
        self.done = 0
        self._computed = 0  # units computed here (the rate excludes ones loaded from disk)
        self._start = time.perf_counter()
        self._last_draw = -float("inf")
        self._width = 0

    def update(self, n: int, *, computed: bool = True) -> None:
        """Record ``n`` more units done; ``computed=False`` for work skipped (e.g. resumed)."""
        self.done += int(n)
        if computed:
            self._computed += int(n)
        now = time.perf_counter()
        if self.enabled and (now - self._last_draw >= self.min_interval or self.done >= self.total):
            self._draw(now)

    def note(self, message: str) -> None:
        """Print a one-line message above the bar (only when the bar is drawn)."""
        if self.enabled:
            self._clear()
            print(message, file=self.file, flush=True)
            self._draw(time.perf_counter())

    def line(self, now: float | None = None) -> str:
        """The bar's text, e.g. ``sweep  512/1000 seeds |#####     | 1.2e+03 seeds/s ETA 0:01``."""
        now = time.perf_counter() if now is None else now
        elapsed = max(now - self._start, 1e-9)
        frac = self.done / self.total if self.total else 1.0
        filled = int(20 * min(frac, 1.0))
        rate = self._computed / elapsed
        if self.done >= self.total:
            eta = f"in {_clock(elapsed)}"
        elif rate > 0:
            eta = f"ETA {_clock((self.total - self.done) / rate)}"
        else:
            eta = "ETA ?"
        prefix = f"{self.desc} " if self.desc else ""
        return (
            f"{prefix}{self.done}/{self.total} {self.unit} |{'#' * filled}{' ' * (20 - filled)}| "
            f"{rate:.3g} {self.unit}/s {eta}"
        )

    def _draw(self, now: float) -> None:
        text = self.line(now)
        self.file.write("\r" + text + " " * max(self._width - len(text), 0))
        self.file.flush()
        self._width = len(text)
        self._last_draw = now

    def _clear(self) -> None:
        if self._width:
            self.file.write("\r" + " " * self._width + "\r")
            self._width = 0

    def close(self) -> None:
        """Finish the line (the last drawn state stays visible)."""
        if self.enabled and self._width:
            self.file.write("\n")
            self.file.flush()
            self._width = 0

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
