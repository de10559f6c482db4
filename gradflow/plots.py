"""Figures: numpy in, matplotlib Figure out. No computation beyond what is drawn.

matplotlib is imported when a figure is drawn, not with ``import gradflow`` (0.4 s saved on every
import), and its backend is left as the user set it: a notebook keeps its inline backend. The
``gradflow`` command and the paper-figure scripts choose the headless Agg backend themselves.
"""

from __future__ import annotations

import os
import pathlib
import sys

import numpy as np

from gradflow.stats import Summary

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
    import matplotlib.pyplot as plt

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


def headless() -> None:
    """Draw with matplotlib's Agg backend (files only, no display): for the ``gradflow`` command
    and the figure scripts, never on ``import gradflow``. Before matplotlib is imported this only
    sets ``MPLBACKEND``, so a command that draws nothing does not pay matplotlib's import."""
    if "matplotlib" in sys.modules:
        sys.modules["matplotlib"].use("Agg")
    else:
        os.environ["MPLBACKEND"] = "Agg"


def save(fig, path: str | pathlib.Path) -> pathlib.Path:
    """Write ``fig`` to ``path`` (PNG/PDF by suffix), creating folders; returns the path."""
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, bbox_inches="tight")
    import matplotlib.pyplot as plt

    plt.close(fig)
    return path


def phase_diagram(
    sigma_w2s,
    sigma_b2s,
    chi1,
    *,
    critical=None,
    points=None,
    activation: str = "",
    title: str = "",
    ax=None,
):
    """The (sigma_w2, sigma_b2) plane: log chi1 as colour, the chi1 = 1 line, measured points.

    Colour is the log growth of E||dC/dz^l||^2 per layer going back (blue: ordered, vanishing;
    red: chaotic, exploding). Measured points use the same colour scale, so a point that blends
    into the background agrees with the theory.

    Args:
      sigma_w2s, sigma_b2s: grid axes, (n_w,) and (n_b,).
      chi1: (n_w, n_b), e.g. ``theory.chi1_grid``.
      critical: optional ``(sigma_b2s, sigma_w2s)`` of the chi1 = 1 line (NaN entries skipped).
      points: optional ``(sigma_w2, sigma_b2, measured_rate)`` arrays (P,): measured per-layer
        growth rates, labelled with their values.
      activation: named in the title and colour-bar label.
    Returns: the matplotlib Figure.

    References: Poole et al. 2016 (arXiv:1606.05340); Schoenholz et al. 2017 (arXiv:1611.01232),
    Fig. 1.
    """
    import matplotlib.pyplot as plt
    from matplotlib.colors import CenteredNorm

    sw, sb, chi = np.asarray(sigma_w2s), np.asarray(sigma_b2s), np.asarray(chi1)
    if chi.shape != (sw.size, sb.size):
        raise ValueError(f"chi1 must have shape ({sw.size}, {sb.size}), got {chi.shape}")
    log_chi = np.log(chi)
    norm = CenteredNorm(vcenter=0.0, halfrange=max(float(np.nanmax(np.abs(log_chi))), 1e-3))
    with plt.rc_context({**STYLE, "axes.grid": False}):
        if ax is None:
            fig, ax = plt.subplots(figsize=(6.4, 4.6))
        else:
            fig = ax.figure
        mesh = ax.pcolormesh(sw, sb, log_chi.T, cmap="RdBu_r", norm=norm, shading="nearest")
        bar = fig.colorbar(mesh, ax=ax)
        bar.set_label(r"$\log\chi_1$: log growth of $E\|\partial C/\partial z^l\|^2$ per layer")
        if critical is not None:
            b2, w2 = (np.asarray(a, dtype=float) for a in critical)
            keep = np.isfinite(w2)
            ax.plot(w2[keep], b2[keep], "k-", lw=2, label=r"$\chi_1 = 1$ (order to chaos)")
        # Region names along the top edge, away from the measured points below them.
        top = sb.min() + 0.9 * (sb.max() - sb.min())
        for where, text in ((log_chi[:, -1] < 0, "ordered"), (log_chi[:, -1] > 0, "chaotic")):
            if where.any():
                ax.text(sw[where].mean(), top, text, ha="center", va="center", alpha=0.8)
        if points is not None:
            pw, pb, rate = (np.asarray(a, dtype=float) for a in points)
            ax.scatter(
                pw, pb, c=np.log(rate), cmap="RdBu_r", norm=norm, s=70, edgecolors="k",
                linewidths=1.2, zorder=3, label="measured (same colours: blends in if it agrees)",
            )  # fmt: skip
            for w, b, r in zip(pw, pb, rate, strict=True):
                ax.annotate(
                    f"{r:.3g}", (w, b), xytext=(5, 5), textcoords="offset points", fontsize=8
                )
        ax.set_xlim(sw.min(), sw.max())
        ax.set_ylim(sb.min(), sb.max())
        ax.set_xlabel(r"$\sigma_w^2$")
        ax.set_ylabel(r"$\sigma_b^2$")
        ax.set_title(title or f"{activation} mean-field phase diagram".strip())
        if critical is not None or points is not None:
            ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.13), ncol=2)
    return fig
