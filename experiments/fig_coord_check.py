"""Tensor Programs V's coordinate check: SP vs muP activations across widths under Adam.

For the built-in MLP (``[d_in, n, n, d_out]``, relu, He init) and the built-in Pre-LN
transformer (2 blocks, 4 heads of size n/4, FFN 4n), every width n is trained a few Adam steps
on one fixed batch, and before and after each step the check records the mean absolute
coordinate ``mean |x_t|`` of every tapped layer (the MLP's pre-activations, the transformer's
residual stream after each block) and of the output (``gf.coord_check``, mup's
``x.abs().mean()``). Standard parametrisation (SP: the built-ins' init, one learning rate) vs
muP (``gradflow.mup``, TP5 Table 3: Adam lr eta/m for hidden and readout weights, readout init
variance v/m, attention logits scaled 1/d_h; m = n / base width):

* SP: after one step a hidden layer moves by Theta(eta n) per coordinate (n correlated Adam
  updates of size eta summed), so its l1 grows with width (log-log slope toward 1 once
  eta n >> 1); the MLP's output gains a further sqrt(n) (its readout weights, of size
  n^-1/2, are aligned with that update): slope toward 1.5;
* muP: every layer stays Theta(1) (slope 0); at t = 0 the output is n^-1/2 smaller (the
  readout's v/m init variance), the known exception of mup's README.

Widths: the slope of ``log mean_seeds(l1)`` on ``log n`` is ``gf.coord_check.width_slopes``;
the bands are the 5-95% quantiles of the same slope fitted to each seed alone.

Writes ``paper_figures/coord_check.png`` and ``paper_figures/data/coord_check/``.

    python experiments/fig_coord_check.py [--smoke] [--out paper_figures] [--recompute]
"""

from __future__ import annotations

import jax
import numpy as np

from gradflow import figures, plots
from gradflow.coord_check import OUTPUT, CoordCheck, coord_check, width_slopes
from gradflow.mup import Parametrisation, mlp_family, transformer_family

CONFIG = dict(
    models=["mlp", "transformer"], kinds=["sp", "mup"], lr=0.01, steps=3, base_width=64,
    mlp=dict(widths=[64, 128, 256, 512, 1024, 2048], seeds=10, d_in=32, d_out=10, depth=2,
             batch=64),
    transformer=dict(widths=[64, 128, 256, 512], seeds=6, depth=2, heads=4, ffn_mult=4,
                     seq_len=8, n_in=16, d_out=10, batch=16),
)  # fmt: skip
# The MLP only, at two widths (the least a coord check takes): compiling one width costs ~5 s
# of CPU here for the MLP, ~25 s for the transformer.
SMOKE = dict(CONFIG, models=["mlp"], steps=2, base_width=16,
             mlp=dict(CONFIG["mlp"], widths=[16, 32], seeds=2, batch=8))  # fmt: skip
MODELS = {"mlp": "MLP", "transformer": "transformer"}
KINDS = {"sp": "SP", "mup": "muP"}
# REFERENCES 7.3: mup's coord-check defaults and the expected slopes ([V] read in the paper or
# mup's code; [R, derived] our derivation, not a number printed in the paper).
PAPER = {
    "statistic": "mean |x| per layer, t = 1..k (t = 1 at init) [V]",
    "mup_defaults": "3 steps, same batch, cross-entropy, Adam lr 1e-3, MLP 3072-w-w-10 relu, "
    "widths 2^7..2^13, base width 256, 10 seeds [V]",
    "sp_adam_slope_after_one_step": "grows with width; ~1 [R, derived]",
    "mup_slope": "0 (flat) [V]",
    "mup_output_slope_at_init": "-0.5 (readout init; zero readout removes it) [V]",
}


def family(model: str, cfg: dict):
    """The width family ``n -> Model`` of ``model`` ("mlp" or "transformer")."""
    c = cfg[model]
    if model == "mlp":
        return mlp_family(c["d_in"], c["d_out"], depth=c["depth"], activation="relu", init="he")
    return transformer_family(depth=c["depth"], heads=c["heads"], seq_len=c["seq_len"],
                              n_in=c["n_in"], n_out=c["d_out"], ffn_mult=c["ffn_mult"])  # fmt: skip


def batch(model: str, cfg: dict) -> tuple[jax.Array, jax.Array]:
    """The fixed batch: Gaussian inputs (batch, d_in) or (batch, T, n_in), random labels."""
    c = cfg[model]
    shape = (c["batch"], c["d_in"]) if model == "mlp" else (c["batch"], c["seq_len"], c["n_in"])
    x = jax.random.normal(jax.random.key(1), shape)
    y = jax.random.randint(jax.random.key(2), (c["batch"],), 0, c["d_out"])
    return x, y


def run(model: str, kind: str, cfg: dict) -> CoordCheck:
    """One coord check: every width of ``model`` under ``kind``, seeds ``0..seeds-1``."""
    x, y = batch(model, cfg)
    p = Parametrisation(kind=kind, base_width=cfg["base_width"], optimizer="adam")
    return coord_check(family(model, cfg), cfg[model]["widths"], x, y, "xent", parametrisation=p,
                       learning_rate=cfg["lr"], steps=cfg["steps"], seeds=cfg[model]["seeds"],
                       key=jax.random.key(0))  # fmt: skip


def compute(cfg: dict) -> dict[str, np.ndarray]:
    out = {}
    for model in cfg["models"]:
        for kind in cfg["kinds"]:
            res = run(model, kind, cfg)
            out[f"{model}/{kind}/l1"] = res.l1  # (W, S, T + 1, L)
            out[f"{model}/{kind}/delta"] = res.delta
            out[f"{model}/{kind}/loss"] = res.loss  # (W, S, T + 1)
        out[f"{model}/widths"] = res.widths
        out[f"{model}/names"] = np.asarray(res.names)
    return out


def result(data: dict, model: str, kind: str, cfg: dict) -> CoordCheck:
    """The :class:`CoordCheck` of ``model`` under ``kind``, rebuilt from the saved arrays."""
    p = Parametrisation(kind=kind, base_width=cfg["base_width"], optimizer="adam")
    return CoordCheck(data[f"{model}/widths"], tuple(str(n) for n in data[f"{model}/names"]),
                      data[f"{model}/{kind}/l1"], data[f"{model}/{kind}/delta"],
                      data[f"{model}/{kind}/loss"], p, cfg["lr"])  # fmt: skip


def layers(res: CoordCheck) -> list[int]:
    """Indices of the layers to show: the MLP's last tap is its output, listed once."""
    keep = [j for j, n in enumerate(res.names) if n != OUTPUT]
    dup = res.names[-1] == OUTPUT and np.array_equal(res.l1[..., -1], res.l1[..., keep[-1]])
    return keep[:-1] + [len(res.names) - 1] if dup else list(range(len(res.names)))


def seed_slopes(res: CoordCheck, *, stat: str = "l1", step: int = -1) -> np.ndarray:
    """(S, L) slopes of ``log stat`` on ``log width``, each seed fitted alone."""
    n_seeds = res.l1.shape[1]
    one = lambda s: res._replace(l1=res.l1[:, s : s + 1], delta=res.delta[:, s : s + 1])  # noqa: E731
    return np.stack([width_slopes(one(s), stat=stat, step=step) for s in range(n_seeds)])


def _band(res: CoordCheck, j: int, stat: str, step: int) -> str:
    mid = width_slopes(res, stat=stat, step=step)[j]
    lo, hi = np.quantile(seed_slopes(res, stat=stat, step=step)[:, j], [0.05, 0.95])
    return f"{mid:+.2f} [{lo:+.2f}, {hi:+.2f}]"


def table(data: dict, cfg: dict) -> str:
    """Markdown table of the width slopes, per model, parametrisation and layer."""
    t_last = cfg["steps"]
    head = (
        f"| model | param. | layer | l1 slope, t = 0 | l1 slope, t = 1 | l1 slope, t = {t_last} "
        f"| delta slope, t = {t_last} |"
    )
    lines = [head, "|" + "---|" * 7]
    for model in cfg["models"]:
        for kind in cfg["kinds"]:
            res = result(data, model, kind, cfg)
            for j in layers(res):
                cells = [_band(res, j, "l1", t) for t in (0, 1, t_last)]
                cells.append(_band(res, j, "delta", t_last))
                lines.append(f"| {MODELS[model]} | {KINDS[kind]} | {res.names[j]} | "
                             + " | ".join(cells) + " |")  # fmt: skip
    return "\n".join(lines)


def plot(data: dict, cfg: dict):
    import matplotlib.pyplot as plt

    rows = [(m, k) for m in cfg["models"] for k in cfg["kinds"]]
    steps = range(cfg["steps"] + 1)
    with plt.rc_context(plots.STYLE):
        fig, axes = plt.subplots(len(rows), len(steps), figsize=(3.4 * len(steps),
                                 2.9 * len(rows) + 0.4), squeeze=False)  # fmt: skip
        for (model, kind), row in zip(rows, axes, strict=True):
            res = result(data, model, kind, cfg)
            for t, ax in zip(steps, row, strict=True):
                _panel(ax, res, t, guide=kind == "sp" and t > 0)
                ax.set_title(f"{MODELS[model]}, {KINDS[kind]}: t = {t}", fontsize=9)
            row[0].set_ylabel("mean |x|", fontsize=8)
        for model in cfg["models"]:  # SP and muP of one model share the y range: flat reads flat
            same = [a for (m, _), row in zip(rows, axes, strict=True) if m == model for a in row]
            lo = min(a.get_ylim()[0] for a in same)
            hi = max(a.get_ylim()[1] for a in same)
            for a in same:
                a.set_ylim(lo, hi)
        for ax in axes[-1]:
            ax.set_xlabel("width n")
        fig.suptitle(
            "Tensor Programs V (Yang et al. 2022; microsoft/mup) coordinate check: SP vs muP, "
            f"Adam lr {cfg['lr']:g}, base width {cfg['base_width']}\n"
            "t = Adam steps taken (t = 0: init, mup's t = 1); lines: seed mean, bands: 5-95% "
            "over seeds; legend: slope of log mean |x| on log n",
            fontsize=10,
        )
        fig.tight_layout()
    return fig


def _panel(ax, res: CoordCheck, t: int, *, guide: bool) -> None:
    """One step of one coord check: mean |x| vs width, one line per layer."""
    w = np.asarray(res.widths)
    slopes = width_slopes(res, step=t)
    for c, j in enumerate(layers(res)):
        v = np.asarray(res.l1[:, :, t, j], np.float64)  # (W, S)
        lo, hi = np.quantile(v, [0.05, 0.95], axis=1)
        style = "--" if res.names[j] == OUTPUT else "-"
        label = f"{res.names[j]} (slope {slopes[j]:+.2f})"
        ax.plot(w, v.mean(axis=1), style, marker="o", ms=3, color=f"C{c}", label=label)
        ax.fill_between(w, lo, hi, color=f"C{c}", alpha=0.2, lw=0)
    if guide:  # what "grows like the width" looks like
        y0 = res.l1[0, :, t, -1].mean()
        ax.plot(w, y0 * w / w[0], ":", color="0.4", lw=1, label="slope 1 (guide)")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xticks(w, [f"$2^{{{int(np.log2(n))}}}$" for n in w])
    ax.minorticks_off()
    ax.legend(fontsize=6, loc="upper left")


def summary(data: dict, cfg: dict) -> str:
    """The findings in words, each with its number (slopes of the seed mean)."""
    out = []
    later = range(1, cfg["steps"] + 1)
    for model in cfg["models"]:
        sp, mup = (result(data, model, k, cfg) for k in ("sp", "mup"))
        shown = layers(sp)
        s1, sT = width_slopes(sp, step=1)[shown], width_slopes(sp, step=-1)[shown]
        hidden = max(np.abs(width_slopes(mup, step=t)[shown[:-1]]).max() for t in later)
        outs = [width_slopes(mup, step=t)[-1] for t in (0, *later)]
        out.append(
            f"{MODELS[model]} ({', '.join(sp.names[j] for j in shown)}): SP slopes "
            f"{np.round(s1, 2).tolist()} after one step and {np.round(sT, 2).tolist()} after "
            f"{cfg['steps']}; muP's hidden layers within +-{hidden:.2f} of 0 at every t >= 1, "
            f"its output {' -> '.join(f'{s:+.2f}' for s in outs)} over t = 0..{cfg['steps']} "
            f"(the readout's width^-1/2 init, outgrown by its update; widths {sp.widths[0]}.."
            f"{sp.widths[-1]})."
        )
    return " ".join(out)


def versus(data: dict, cfg: dict) -> str:
    """Markdown table: the paper's statements beside our slopes (seed-mean fit, 5-95%)."""
    rows = [
        "| claim | paper (how sure) | gradflow |",
        "|---|---|---|",
    ]
    for model in cfg["models"]:
        sp, mup = (result(data, model, k, cfg) for k in ("sp", "mup"))
        h = layers(sp)[-2]  # the last hidden layer / block
        m = MODELS[model]
        rows += [
            f"| {m} SP, {sp.names[h]}, l1 after one step | grows with width [V]; slope ~1 "
            f"[R, derived] | {_band(sp, h, 'l1', 1)} (delta {_band(sp, h, 'delta', 1)}) |",
            f"| {m} SP, output, l1 after one step | grows with width [V] | "
            f"{_band(sp, len(sp.names) - 1, 'l1', 1)} |",
            f"| {m} muP, {sp.names[h]}, l1 at t = {cfg['steps']} | flat: 0 [V] | "
            f"{_band(mup, h, 'l1', -1)} |",
            f"| {m} muP, output, l1 at init | ~ width^-1/2: -0.5 [V] | "
            f"{_band(mup, len(mup.names) - 1, 'l1', 0)} |",
        ]
    return "\n".join(rows)


def why(data: dict, cfg: dict) -> str:
    """Why SP's slopes are what they are, with the measured numbers."""
    sp = result(data, "mlp", "sp", cfg)
    eta_n = (cfg["lr"] * cfg["base_width"], cfg["lr"] * sp.widths[-1])
    text = (
        "Reading SP's slopes: l1 = |init part, Theta(1), + update|. A hidden matrix's Adam step "
        "moves the coordinates it writes by Theta(eta n) (n correlated entries of size eta); "
        f"with eta n = {eta_n[0]:.2g}..{eta_n[1]:.2g} the l1 line bends from 0 toward 1, and "
        "delta, the update alone, is nearer 1 (MLP layer2: "
        f"{width_slopes(sp, stat='delta', step=1)[1]:.2f} at t = 1). Where an updated matrix "
        "reads a layer that has itself moved, the terms multiply: the MLP's readout (entries "
        "n^-1/2, aligned with layer2's update) sums n terms of Theta(eta n), Theta(eta n^1.5)"
    )
    if "transformer" in cfg["models"]:
        tf = result(data, "transformer", "sp", cfg)
        text += (
            "; in the transformer the FFN's second matrix reads the first one's moved output, "
            "so the residual stream's slope passes 1 after a few steps "
            f"({width_slopes(tf, step=-1)[-2]:.2f} at t = {cfg['steps']}). Its final "
            "LayerNorm renormalises the stream before the readout, so its output grows far "
            f"less ({width_slopes(tf, step=-1)[-1]:.2f})"
        )
    return text + ". The input layer (fan-in fixed) is flat under both, as Table 3 says."


def report(data: dict, cfg: dict) -> str:
    mlp, tf = cfg["mlp"], cfg["transformer"]
    lines = [
        "**Paper** (Yang et al. 2022, Tensor Programs V, and microsoft/mup's coord check; "
        "REFERENCES 7.3; [V] read in the paper or mup's code, [R] our derivation): the "
        "statistic is mean |x| of every (pre)activation and of the output at steps t = 1..k, "
        "t = 1 at init [V]. Under SP with Adam it grows with width after one step, under muP "
        "it is flat in width [V]; the log-log slope ~1 for SP is our derivation [R], the "
        "paper prints no slope. Known exception [V]: under muP the output shrinks ~ "
        "width^-1/2 at init (slope -0.5). mup's defaults [V]: 3 steps on one repeated "
        "batch, cross-entropy, Adam lr 1e-3, MLP 3072-w-w-10 relu, widths 2^7..2^13, base "
        "width 256, 10 seeds.",
        "",
        f"**gradflow**: width slopes of log mean_seeds(l1) (``width_slopes``), [5%, 95%] of "
        f"the per-seed slopes; delta = mean |x_t - x_0|. Our t = 0 is mup's t = 1. MLP "
        f"{mlp['d_in']}-n-n-{mlp['d_out']} relu (He), widths {mlp['widths'][0]}.."
        f"{mlp['widths'][-1]}, {mlp['seeds']} seeds, batch {mlp['batch']}"
        + (
            f"; Pre-LN transformer, {tf['depth']} blocks, {tf['heads']} heads, FFN "
            f"{tf['ffn_mult']}n, {tf['seq_len']} positions, widths {tf['widths'][0]}.."
            f"{tf['widths'][-1]}, {tf['seeds']} seeds, batch {tf['batch']}"
            if "transformer" in cfg["models"]
            else ""
        )
        + f"; Adam lr {cfg['lr']:g}, {cfg['steps']} steps, base width {cfg['base_width']}.",
        "",
        versus(data, cfg),
        "",
        "All layers (slope of the seed-mean l1 on log width, [5%, 95%] of per-seed fits):",
        "",
        table(data, cfg),
        "",
        summary(data, cfg),
        "",
        why(data, cfg),
        "",
        "**Differences**: Gaussian inputs and random labels instead of CIFAR-10 (mup's "
        "example) or text (the paper's transformers); MLP input 32 instead of 3072; "
        f"base width {cfg['base_width']} (the smallest, where muP = SP) instead of 256; "
        f"widths up to {mlp['widths'][-1]} (MLP) and {tf['widths'][-1]} (transformer) instead "
        "of 2^13, and fewer transformer seeds, for 2 CPU cores; Adam lr "
        f"{cfg['lr']:g} instead of mup's 1e-3, so that SP's update (eta n) is visible at "
        "these widths; l1 (mup's statistic) rather than Fig. 5's std of x_t - x_0 (our delta "
        "is its mean-absolute analogue); the transformer's taps are the residual stream after "
        "each block (no attention-logit or embedding taps), attention logits use "
        "sqrt(d_h0)/d_h (mup's README: 8/d_h), and W_q is not zero-initialised.",
    ]
    return "\n".join(lines)


FIGURE = figures.PaperFigure(
    name="coord_check",
    number=10,
    title="Yang et al. 2022 (Tensor Programs V) / microsoft/mup: coordinate check, SP vs muP",
    config=CONFIG,
    smoke=SMOKE,
    compute=compute,
    plot=plot,
    report=report,
    paper=PAPER,
)


def main(argv=None) -> int:
    return figures.main(FIGURE, argv)


if __name__ == "__main__":
    raise SystemExit(main())
