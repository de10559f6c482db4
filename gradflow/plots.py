"""Figures: numpy in, matplotlib Figure out. No computation beyond what is drawn."""

from __future__ import annotations

import pathlib

import matplotlib

matplotlib.use("Agg")  # headless: figures are written to files, never shown

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from gradflow.sweep import Summary  # noqa: E402

STYLE = {
    "figure.dpi": 110,
    "axes.grid": True,
    "grid.alpha": 0.3,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "legend.frameon": False,
}


def layer_norms(
    curves: dict[str, Summary],
    *,
    ylabel: str = r"$\|\partial C/\partial b^l\|$",
    title: str = "",
    ax=None,
    colors: dict[str, str] | None = None,
):
    """Per-layer gradient norm vs layer index, log scale: seed median and 5-95% band per curve.

    Args:
      curves: label -> :class:`gradflow.Summary` whose fields have shape (L,) (layer 1..L).
      colors: optional label -> matplotlib color, to keep a curve's color across panels.
    Returns: the matplotlib Figure.
    """
    with plt.rc_context(STYLE):
        if ax is None:
            fig, ax = plt.subplots(figsize=(6.4, 4.2))
        else:
            fig = ax.figure
        for label, s in curves.items():
            layers = np.arange(1, len(s.median) + 1)
            color = (colors or {}).get(label)
            (line,) = ax.plot(layers, s.median, marker="o", ms=4, label=label, color=color)
            ax.fill_between(layers, s.q05, s.q95, color=line.get_color(), alpha=0.18, lw=0)
        ax.set_yscale("log")
        ax.set_xlabel("layer l (1 = first hidden layer)")
        ax.set_ylabel(ylabel)
        if title:
            ax.set_title(title)
        ax.xaxis.get_major_locator().set_params(integer=True)
        ax.legend(fontsize=8)
    return fig


def save(fig, path: str | pathlib.Path) -> pathlib.Path:
    """Write ``fig`` to ``path`` (PNG/PDF by suffix), creating folders; returns the path."""
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, bbox_inches="tight")
    plt.close(fig)
    return path
