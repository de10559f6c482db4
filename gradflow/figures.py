"""The runner behind ``experiments/fig_*.py``: compute once, cache, plot, report.

Each paper-figure script defines a :class:`PaperFigure` (what to compute, how to draw it, and a
markdown report: what the paper states, what we measure, and every difference) and calls
:func:`main`. The runner

* checks ``--out`` before any computation (one line, exit 2);
* recomputes only when the computation changed: the data in ``<out>/data/<name>/`` are reused
  when their config and the fingerprint of ``compute`` (its code and that of every function of
  the script it calls, recursively) match; a change to ``plot`` or ``report`` only re-plots.
  ``--recompute`` forces it (gradflow's own code is not part of the fingerprint: its version
  and git commit are recorded in ``config.json``);
* writes ``<out>/<name>.png``, ``<out>/data/<name>/{results.npz,config.json,report.md}``, and
  rebuilds ``<out>/README.md`` from every figure's ``report.md``: the README is written by the
  scripts, never by hand.

    python experiments/fig_<name>.py [--smoke] [--out paper_figures] [--recompute]
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import inspect
import json
import pathlib
import sys
import time
import types
from collections.abc import Callable

import numpy as np

from gradflow import io, plots

README_HEAD = """# Paper figures

Written by `experiments/fig_*.py` (`make figures`); do not edit by hand. Each section: the
figure, what the paper reports, what gradflow measures (seed medians with 5-95% bands unless
stated) and how our setting differs from the paper's. Data and configs: `data/<name>/`.
"""


@dataclasses.dataclass(frozen=True)
class PaperFigure:
    """One reproduced figure.

    Attributes:
      name: file stem: ``<out>/<name>.png`` and ``<out>/data/<name>/``.
      number: its place in ``paper_figures/README.md``.
      title: the paper and figure, e.g. ``"Xiong et al. 2020, Fig. 3: ..."``.
      config, smoke: the full-size and the test-suite settings (JSON-able dicts).
      compute: ``compute(cfg) -> dict[str, np.ndarray]``: every number the plot and report use.
      plot: ``plot(data, cfg) -> matplotlib Figure``.
      report: ``report(data, cfg) -> str``: markdown, the paper's numbers beside ours.
      paper: the paper's numbers, saved with the data.
    """

    name: str
    number: int
    title: str
    config: dict
    smoke: dict
    compute: Callable[[dict], dict]
    plot: Callable
    report: Callable[[dict, dict], str]
    paper: dict = dataclasses.field(default_factory=dict)


def fingerprint(fn) -> str:
    """sha256 of ``fn``'s source and, recursively, of the functions of its module it names."""
    module = sys.modules.get(fn.__module__)
    seen, h = set(), hashlib.sha256()

    def visit(f):
        if f in seen:
            return
        seen.add(f)
        try:
            h.update(inspect.getsource(f).encode())
        except (OSError, TypeError):
            h.update(f.__code__.co_code)
        for name in sorted(_names(f.__code__)):  # a set: sorted, or the hash varies per run
            g = getattr(module, name, None)
            if isinstance(g, types.FunctionType) and g.__module__ == fn.__module__:
                visit(g)
            elif name.isupper() and g is not None and not callable(g):
                h.update(f"{name}={g!r}".encode())  # module constants it reads

    visit(fn)
    return h.hexdigest()[:16]


def _names(code) -> set[str]:
    names = set(code.co_names)
    for c in code.co_consts:
        if inspect.iscode(c):
            names |= _names(c)
    return names


def _cached(folder: pathlib.Path, key: dict):
    try:
        arrays, meta = io.load_results(folder)
    except (OSError, ValueError, json.JSONDecodeError):
        return None
    return arrays if meta.get("cache_key") == _canonical(key) else None


def _canonical(obj):
    return json.loads(json.dumps(obj, sort_keys=True, default=repr))


def main(fig: PaperFigure, argv=None) -> int:
    """Command line of one figure script; returns the exit code (2 on a bad ``--out``)."""
    parser = argparse.ArgumentParser(description=fig.title)
    parser.add_argument("--out", default="paper_figures", help="output folder")
    parser.add_argument("--smoke", action="store_true", help="tiny sizes, for the test suite")
    parser.add_argument("--recompute", action="store_true", help="ignore cached data")
    args = parser.parse_args(argv)
    plots.headless()
    try:
        out = io.check_output_dir(args.out, "--out")
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    cfg = fig.smoke if args.smoke else fig.config
    folder = out / "data" / fig.name
    key = {"config": cfg, "smoke": args.smoke, "compute": fingerprint(fig.compute)}
    start = time.perf_counter()
    data = None if args.recompute else _cached(folder, key)
    if data is None:
        data = {k: np.asarray(v) for k, v in fig.compute(cfg).items()}
        seconds = time.perf_counter() - start
        extra = {"cache_key": _canonical(key), "figure": fig.title,
                 "compute_seconds": round(seconds, 1)}  # fmt: skip
        io.save_results(folder, data, {**cfg, "paper": fig.paper}, extra)
        how = f"computed in {seconds:.0f} s"
    else:
        how = "re-plotted from cached data (--recompute to compute again)"
    text = fig.report(data, cfg)
    print(text)
    path = plots.save(fig.plot(data, cfg), out / f"{fig.name}.png")
    size = "smoke sizes (test suite)" if args.smoke else "full size"
    section = f"## {fig.number}. {fig.title}\n\n![{fig.name}]({fig.name}.png)\n\n{text.strip()}\n"
    section += f"\n_{size}; `python experiments/fig_{fig.name}.py`._\n"
    io.atomic_write(folder / "report.md", section.encode())
    write_readme(out)
    print(f"figure: {path}  ({how}; {time.perf_counter() - start:.0f} s in all)")
    return 0


def write_readme(out) -> pathlib.Path:
    """Rebuild ``<out>/README.md`` from ``<out>/data/*/report.md``, ordered by figure number."""
    out = pathlib.Path(out)
    sections = []
    for report in (out / "data").glob("*/report.md"):
        text = report.read_text()
        number = text.split(".", 1)[0].removeprefix("## ")
        sections.append((int(number) if number.isdigit() else 10**6, report.parent.name, text))
    body = "\n".join(text for *_, text in sorted(sections))
    path = out / "README.md"
    io.atomic_write(path, (README_HEAD + "\n" + body).encode())
    return path
