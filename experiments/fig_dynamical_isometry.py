"""Pennington, Schoenholz & Ganguli 2017/2018: dynamical isometry of deep nets at criticality.

The input-output Jacobian ``J = D^L W^L ... D^1 W^1`` of critical linear (sigma_w2 = 1), relu
(sigma_w2 = 2) and tanh nets (chi1 = 1 at sigma_b2 = 1e-4, q* ~ 0.046), with Gaussian or
orthogonal W, every layer N -> N with its nonlinearity (also the last), inputs on the q* shell:

* the density of its singular values s at several depths (exact: ``gf.jacobian_singular_values``
  in the log domain, so values far below s_max are not lost to rounding);
* the variance of s^2 against Pennington et al.'s L (mu2 / mu1^2 - 1 - s1) (``theory.
  jacobian_moments``; s1 = -1 Gaussian, 0 orthogonal) and, for linear Gaussian nets, against the
  exact finite-width value (Wick's theorem, :func:`gaussian_product_moments`);
* the largest singular value of linear Gaussian nets against the Fuss-Catalan edge
  sqrt((L+1)^(L+1) / L^L) ~ sqrt(e L).

Writes ``paper_figures/dynamical_isometry.png`` and ``paper_figures/data/dynamical_isometry/``.

    python experiments/fig_dynamical_isometry.py [--smoke] [--out paper_figures] [--recompute]
"""

from __future__ import annotations

import math

import jax
import numpy as np

import gradflow as gf
from gradflow import figures, plots, theory

CONFIG = dict(
    width=128,
    depths=(4, 16, 64),
    seeds=8,
    smax_width=256,
    smax_depths=(1, 2, 4, 8, 16, 32, 64),
    smax_seeds=8,
    tanh_sigma_b2=1e-4,
)
SMOKE = dict(
    width=8, depths=(2,), seeds=2, smax_width=8, smax_depths=(2,), smax_seeds=2,
    tanh_sigma_b2=1e-4,
)  # fmt: skip

ACTIVATIONS = ("linear", "relu", "tanh")
WEIGHTS = ("gaussian", "orthogonal")
# REFERENCES.md 4.1 [C]: N = 400, L = 8, 6 seeds: var(s^2) / L and s_max.
PAPER_TABLE = {
    ("linear", "gaussian"): (1.05, 4.68),
    ("linear", "orthogonal"): (0.0, 1.00),
    ("relu", "gaussian"): (1.88, 6.13),
    ("relu", "orthogonal"): (1.08, 4.45),
    ("tanh", "gaussian"): (1.05, 4.67),
    ("tanh", "orthogonal"): (0.012, 1.24),
}


def sigmas(activation: str, cfg: dict) -> tuple[float, float]:
    """(sigma_w2, sigma_b2) on the critical line: linear (1, 0), relu (2, 0), tanh at chi1 = 1."""
    if activation == "tanh":
        b2 = cfg["tanh_sigma_b2"]
        return theory.critical_sigma_w2("tanh", b2), b2
    return theory.critical_sigma_w2(activation, 0.0), 0.0


def fuss_catalan_edge(depth) -> np.ndarray:
    """Largest singular value of a product of L Gaussian N x N matrices (variance 1/N), N -> inf:
    sqrt((L+1)^(L+1) / L^L) (the edge of the Fuss-Catalan law), ~ sqrt(e (L + 1/2)) for large L."""
    L = np.asarray(depth, dtype=np.float64)
    return np.exp(0.5 * ((L + 1) * np.log(L + 1) - L * np.log(L)))


def gaussian_product_moments(width: int, depth: int) -> tuple[float, float]:
    """Exact finite-width moments of s^2 for J = W^L ... W^1, W iid N(0, 1/N), N x N.

    With A_l = J_l J_l^T, Wick's theorem for G = W^(l+1) gives
    E tr(A'^2) = (1 + 1/N) E tr(A^2) + E (tr A)^2 / N and E (tr A')^2 = E (tr A)^2 +
    2 E tr(A^2) / N, from A_0 = I. With m_k = tr(A^k) / N:

    Returns:
      (E m2 - 1, E m2 - E m1^2): the variance of the seed-pooled spectrum (E m1 = 1), and the
      expected variance within one seed's spectrum (what ``np.var`` of one seed's s^2 estimates).
      Both -> L as N -> inf (Pennington et al.'s L (mu2/mu1^2 - 1 - s1) with s1 = -1).
    """
    n = float(width)
    tr2, trsq = n, n * n  # E tr(A^2), E (tr A)^2 at A = I
    for _ in range(depth):
        tr2, trsq = (1 + 1 / n) * tr2 + trsq / n, trsq + 2 * tr2 / n
    return tr2 / n - 1, tr2 / n - trsq / n**2


def log_spectra(activation: str, weights: str, depth: int, width: int, seeds: int, cfg: dict):
    """log singular values of df/dx at one input on the q* shell, per seed: (seeds, width).

    Seed i's weights are ``model.init(fold_in(key(0), i))`` as in ``gf.sweep``. The spectrum is
    computed by one model per (activation, depth) whatever the init -- the Jacobian of ``apply``
    does not depend on how W was drawn -- so Gaussian and orthogonal share one compiled program.
    """
    w2, b2 = sigmas(activation, cfg)
    widths = [width] * (depth + 1)
    kw = dict(sigma_w2=w2, sigma_b2=b2, output_activation=activation, scan=2)
    draw = gf.mlp(widths, activation, weights, **kw)
    probe = gf.mlp(widths, activation, "gaussian", **kw)
    params = jax.vmap(draw.init)(gf.seed_keys(seeds))
    q_in = (theory.q_star(activation, w2, b2) - b2) / w2  # so that q^1 = q*
    x = gf.data.gaussian_inputs(jax.random.key(1), 1, width, q=q_in, on_shell=True)
    log_sv = jax.vmap(lambda p: gf.jacobian_singular_values(probe, p, x, log=True))(params)
    return np.asarray(log_sv[:, 0, :], dtype=np.float64)


def compute(cfg: dict) -> dict[str, np.ndarray]:
    out = {}
    for act in ACTIVATIONS:
        for w in WEIGHTS:
            for L in cfg["depths"]:
                out[f"{act}/{w}/{L}"] = log_spectra(act, w, L, cfg["width"], cfg["seeds"], cfg)
    for L in cfg["smax_depths"]:
        out[f"smax/{L}"] = log_spectra(
            "linear", "gaussian", L, cfg["smax_width"], cfg["smax_seeds"], cfg
        )
    return out


# --------------------------------------------------------------------------------------------
# Summaries


def variances(log_sv: np.ndarray) -> np.ndarray:
    """Per-seed variance of s^2 over the spectrum, shape (seeds,)."""
    s2 = np.exp(2 * log_sv)
    return s2.var(axis=-1)


def predicted(act: str, weights: str, depth: int, cfg: dict):
    """Infinite-width (mean, variance) of s^2 (``theory.jacobian_moments``, q = q*)."""
    w2, b2 = sigmas(act, cfg)
    return theory.jacobian_moments(act, w2, b2, depth, weights=weights)


def _band(v):
    q05, med, q95 = np.quantile(v, [0.05, 0.5, 0.95])
    return med, q05, q95


def table(data: dict, cfg: dict) -> str:
    n, S = cfg["width"], cfg["seeds"]
    lines = [
        f"var(s^2) / L, width {n}, {S} seeds x 1 input: seed mean (the expectation the theory "
        "gives), median [5%, 95%] of the per-seed values; theory L (mu2/mu1^2 - 1 - s1) / L",
    ]
    for act in ACTIVATIONS:
        for w in WEIGHTS:
            th = predicted(act, w, 1, cfg).variance
            lines.append(f"  {act} {w} (theory {th:.3g}):")
            for L in cfg["depths"]:
                log_sv = data[f"{act}/{w}/{L}"]
                v = variances(log_sv) / L
                med, lo, hi = _band(v)
                mean = np.mean(np.exp(2 * log_sv))
                lines.append(
                    f"    L = {L:>3}: mean {v.mean():.3g}, median {med:.3g} [{lo:.2g}, {hi:.2g}];"
                    f" mean s^2 {mean:.3f} (theory {predicted(act, w, L, cfg).mean:.3f})"
                )
    lines += [
        "",
        f"linear Gaussian, width {cfg['smax_width']}, {cfg['smax_seeds']} seeds: s_max median "
        "[5%, 95%] vs the Fuss-Catalan edge; var(s^2) vs the exact finite-width value (Wick) "
        "and L (infinite width):",
    ]
    for L in cfg["smax_depths"]:
        log_sv = data[f"smax/{L}"]
        med, lo, hi = _band(np.exp(log_sv.max(axis=-1)))
        v = variances(log_sv)
        vmed, vlo, vhi = _band(v)
        wick = gaussian_product_moments(cfg["smax_width"], L)[1]
        lines.append(
            f"  L = {L:>2}: s_max {med:.3f} [{lo:.3f}, {hi:.3f}], edge {fuss_catalan_edge(L):.3f}"
            f", sqrt(eL) {math.sqrt(math.e * L):.3f};  var(s^2) mean {v.mean():.3g}, median "
            f"{vmed:.3g} [{vlo:.3g}, {vhi:.3g}], Wick {wick:.4g}"
        )
    return "\n".join(lines)


FLOOR = -4.0  # log10 s: smaller singular values (down to ~1e-80 at L = 64) are counted, not drawn


def _errorbar(ax, xs, samples, center=np.median, **kw):
    """A marker at ``center`` of the seeds (median by default) with a 5-95% bar at each x."""
    med = np.array([center(v) for v in samples])
    lo = np.array([np.quantile(v, 0.05) for v in samples])
    hi = np.array([np.quantile(v, 0.95) for v in samples])
    ax.errorbar(xs, med, yerr=np.stack([med - lo, hi - med]), capsize=2, **kw)
    return med


def _depth_ticks(ax, depths):
    ax.set_xticks(list(depths), [str(L) for L in depths])
    ax.xaxis.set_minor_formatter("")


def plot(data: dict, cfg: dict):
    import matplotlib
    import matplotlib.pyplot as plt

    with plt.rc_context(plots.STYLE):
        fig, axes = plt.subplots(2, 4, figsize=(19, 8.8))
    depths = cfg["depths"]
    colors = {L: plt.cm.viridis(i / max(1, len(depths) - 1) * 0.85) for i, L in enumerate(depths)}
    # Densities of log10 s per depth, pooled over seeds; area = 1 over all values.
    top = max(float(np.max(v)) for v in data.values()) / math.log(10) + 0.1
    bins = np.linspace(FLOOR, max(top, 0.5), 70)
    for r, w in enumerate(WEIGHTS):
        for c, act in enumerate(ACTIVATIONS):
            ax = axes[r, c]
            tails = []
            for L in depths:
                log10 = data[f"{act}/{w}/{L}"].ravel() / math.log(10)  # -inf: exact zero
                tails.append(np.mean(log10 < FLOOR))
                shown = log10[log10 >= FLOOR]  # area under the curve: the fraction shown
                weights = np.full(shown.size, 1 / (log10.size * (bins[1] - bins[0])))
                ax.hist(
                    shown, bins=bins, weights=weights, histtype="step", color=colors[L], lw=1.6,
                    label=f"L = {L}",
                )  # fmt: skip
            ax.axvline(0, color="0.5", ls=":", lw=1)
            w2, b2 = sigmas(act, cfg)
            ax.set_title(rf"{act}, {w} W ($\sigma_w^2$={w2:.4g}, $\sigma_b^2$={b2:g})", fontsize=10)
            ax.set_xlabel(r"$\log_{10} s$ (singular value of $\partial f/\partial x$)")
            ax.set_ylabel(r"density per unit $\log_{10} s$")
            if max(tails) > 0:
                text = ", ".join(f"{t:.0%}" for t in tails)
                text = f"not shown: s < 1e{FLOOR:.0f} (or exactly 0)\nL = {depths}: {text}"
                ax.text(
                    0.02, 0.97, text,
                    transform=ax.transAxes, fontsize=7, va="top",
                )  # fmt: skip
            ax.legend(fontsize=8, loc="upper right")

    # Variance of s^2 vs depth: measured (median, 5-95%) against L (mu2/mu1^2 - 1 - s1).
    ax = axes[0, 3]
    floor = 1e-3
    grid = np.geomspace(min(depths), max(depths), 50)
    for i, act in enumerate(ACTIVATIONS):
        for w, marker, ls in zip(WEIGHTS, "os", ("-", "--"), strict=True):
            color = f"C{i}"
            vs = [variances(data[f"{act}/{w}/{L}"]) for L in depths]
            slope = predicted(act, w, 1, cfg).variance  # mu2/mu1^2 - 1 - s1
            if slope > 0:
                shift = 1.04 if w == "orthogonal" else 0.96  # keep the error bars apart
                _errorbar(ax, np.array(depths) * shift, vs, center=np.mean, fmt=marker,
                          color=color, ms=5, mfc=color if w == "gaussian" else "white")  # fmt: skip
                ax.plot(grid, slope * grid, ls, color=color, lw=1,
                        label=f"{act} {w}: theory {slope:.3g} L")  # fmt: skip
            else:  # exactly 0 in theory: off the log axis
                worst = max(float(np.max(v)) for v in vs)
                ax.plot([], [], marker, color=color, mfc="white",
                        label=f"{act} {w}: theory 0, measured <= {worst:.0e}")  # fmt: skip
    wick = [gaussian_product_moments(cfg["width"], int(round(L)))[1] for L in grid]
    ax.plot(grid, wick, ":", color="C0", lw=2,
            label=f"linear Gaussian, exact at width {cfg['width']}")  # fmt: skip
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_ylim(floor, None)
    _depth_ticks(ax, depths)
    ax.set_xlabel("depth L")
    ax.set_ylabel(r"variance of $s^2$ over the spectrum (per seed)")
    ax.set_title(
        r"var($s^2$): theory L$(\mu_2/\mu_1^2 - 1 - s_1)$; seed mean, 5-95% bars", fontsize=10
    )
    ax.legend(fontsize=7)

    # s_max of linear Gaussian nets against the Fuss-Catalan edge.
    ax = axes[1, 3]
    series = [(cfg["smax_width"], "smax/{}", cfg["smax_depths"], "o", "C3")]
    if cfg["width"] != cfg["smax_width"]:
        series.append((cfg["width"], "linear/gaussian/{}", depths, "s", "C0"))
    for n, key, Ls, marker, color in series:
        smax = [np.exp(data[key.format(L)].max(axis=-1)) for L in Ls]
        _errorbar(ax, Ls, smax, fmt=marker, color=color,
                  label=f"measured, width {n} (median, 5-95%)")  # fmt: skip
    grid = np.geomspace(1, max(max(cfg["smax_depths"]), max(depths)), 60)
    ax.plot(grid, fuss_catalan_edge(grid), "k-", lw=1.2,
            label=r"$\sqrt{(L+1)^{L+1}/L^L}$ (Fuss-Catalan edge, width $\to\infty$)")  # fmt: skip
    ax.plot(grid, np.sqrt(math.e * grid), "k--", lw=1, label=r"$\sqrt{eL}$")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("depth L")
    _depth_ticks(ax, sorted(set(cfg["smax_depths"]) | set(depths)))
    ax.yaxis.set_major_formatter(matplotlib.ticker.ScalarFormatter())
    ax.yaxis.set_minor_formatter(matplotlib.ticker.ScalarFormatter())
    ax.set_ylabel(r"largest singular value $s_{max}$")
    ax.set_title(r"linear Gaussian nets: $s_{max}$ vs $\sqrt{eL}$", fontsize=10)
    ax.legend(fontsize=8)
    fig.suptitle(
        "Pennington, Schoenholz & Ganguli 2017/2018: input-output Jacobian spectra at criticality "
        f"(width {cfg['width']}, {cfg['seeds']} seeds x 1 input)"
    )
    fig.tight_layout()
    return fig


def report(data: dict, cfg: dict) -> str:
    paper = "; ".join(f"{a} {w} {v:g} / {s:g}" for (a, w), (v, s) in PAPER_TABLE.items())
    L_big = max(cfg["depths"])
    th_orth, th_gauss = (predicted("tanh", w, 1, cfg).variance for w in WEIGHTS[::-1])
    orth, gauss = (variances(data[f"tanh/{w}/{L_big}"]).mean() / L_big for w in WEIGHTS[::-1])
    lines = [
        "**Paper** (Pennington et al. 2017, 2018): at criticality var(s^2) = "
        "L (mu2/mu1^2 - 1 - s1) [R], so linear Gaussian L, linear orthogonal 0, relu Gaussian "
        "2L, relu orthogonal L, tanh orthogonal -> 0 as q* -> 0: relu nets cannot reach "
        "dynamical isometry, tanh nets can, but only with orthogonal weights [V]. Random-matrix "
        f"check (REFERENCES 4.1 [C], N = 400, L = 8; var/L / s_max): {paper}. Linear Gaussian "
        "s_max -> sqrt((L+1)^(L+1)/L^L) ~ sqrt(e L) [M] (L = 8: 4.80).",
        "",
        "**gradflow** (exact log-domain singular values, `gf.jacobian_singular_values`):",
        "",
        "```",
        table(data, cfg),
        "```",
        "",
        f"At L = {L_big} the tanh net's var(s^2)/L (seed mean) is {orth:.3g} with orthogonal "
        "weights against "
        f"{gauss:.3g} with Gaussian ones (theory {th_orth:.3g} and {th_gauss:.3g}).",
        "",
        "**Differences**: width "
        f"{cfg['width']} (paper [R]: ~1000) and {cfg['seeds']} seeds x 1 input per net; the "
        "theory lines are the infinite-width limit, and finite width adds O(L/N) to the "
        "variance (the dotted exact Wick curve for linear Gaussian nets shows how much: x"
        f"{gaussian_product_moments(cfg['width'], L_big)[1] / L_big:.2f} at L = {L_big}). "
        "s_max at finite width falls below the Fuss-Catalan edge once L is a sizeable fraction "
        "of N. Every layer, the last included, applies phi (the papers' J = prod D W), and the "
        f"tanh nets use sigma_b2 = {cfg['tanh_sigma_b2']:g} (q* = "
        f"{theory.q_star('tanh', *sigmas('tanh', cfg)):.3f}); the papers' tanh experiments "
        "sweep q* [R].",
    ]
    return "\n".join(lines)


FIGURE = figures.PaperFigure(
    name="dynamical_isometry",
    number=4,
    title="Pennington, Schoenholz & Ganguli 2017/2018: Jacobian spectra and dynamical isometry",
    config=CONFIG,
    smoke=SMOKE,
    compute=compute,
    plot=plot,
    report=report,
    paper={"var_over_L_and_smax_N400_L8": {f"{a}/{w}": v for (a, w), v in PAPER_TABLE.items()}},
)


def main(argv=None) -> int:
    return figures.main(FIGURE, argv)


if __name__ == "__main__":
    raise SystemExit(main())
