"""Progress of long sweeps: ``tqdm.auto`` (a bar on a terminal, a widget in Jupyter).

Silent in CI, logs and pipes (stderr not a terminal and not a notebook) and with ``quiet``;
notes (the chunk ``"auto"`` chose, what a resumed run loaded) print whenever not ``quiet``::

    with Progress(1000, unit="seeds", desc="sweep") as bar:
        for chunk in chunks:
            ...
            bar.update(len(chunk))

Work loaded from disk (a resumed run directory) counts as done but not in the rate, so the
seeds/s and the ETA describe what is computed.
"""

from __future__ import annotations

import sys
from typing import TextIO

from tqdm.auto import tqdm


def in_notebook() -> bool:
    """True inside a Jupyter kernel (where stderr is not a terminal but a bar is wanted)."""
    shell = sys.modules.get("IPython")
    ipython = getattr(shell, "get_ipython", lambda: None)() if shell else None
    return ipython is not None and "IPKernelApp" in getattr(ipython, "config", {})


class Progress:
    """A progress bar over ``total`` units of work.

    Args:
      total: the number of units of work (e.g. seeds).
      unit: what a unit is called, used in ``"<rate> seeds/s"``.
      desc: a short label printed before the bar.
      quiet: if True, draw nothing and print no notes (the ``--quiet`` flag).
      file: the stream (default ``sys.stderr``, looked up when the bar is made).
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
        self.quiet = quiet
        self.file = sys.stderr if file is None else file
        isatty = getattr(self.file, "isatty", None)
        self.enabled = (not quiet) and (bool(isatty and isatty()) or in_notebook())
        self.done = 0
        self._bar = tqdm(
            total=self.total, unit=unit, desc=desc or None, file=self.file,
            disable=not self.enabled, mininterval=min_interval, dynamic_ncols=True, leave=True,
        )  # fmt: skip

    def update(self, n: int, *, computed: bool = True) -> None:
        """Record ``n`` more units done; ``computed=False`` for work skipped (e.g. resumed)."""
        self.done += int(n)
        if computed:
            self._bar.update(int(n))
        elif self.enabled:  # done but not in the rate: tqdm rates (n - initial) / elapsed
            for field in ("n", "last_print_n", "initial"):
                setattr(self._bar, field, getattr(self._bar, field) + int(n))
            self._bar.refresh()

    def note(self, message: str) -> None:
        """Print a one-line message (above the bar when one is drawn) unless quiet."""
        if self.quiet:
            return
        if self.enabled:
            self._bar.write(message, file=self.file)
        else:
            print(message, file=self.file, flush=True)

    def line(self) -> str:
        """The bar's text, e.g. ``sweep:  51%|#####  | 512/1000 [00:01<00:01, 1e+03seeds/s]``."""
        return str(self._bar)

    def close(self) -> None:
        """Finish the line (the last drawn state stays visible)."""
        self._bar.close()

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
