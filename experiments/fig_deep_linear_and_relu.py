"""Saxe et al. 2014 and He et al. 2015: what the init does to deep linear and deep relu nets.

* Deep linear nets (Saxe, McClelland & Ganguli 2014, Fig. 6): the singular values of the
  input-output map ``W^L ... W^1`` spread out with depth for scaled Gaussian weights
  (W ~ N(0, 1/n)) and stay at 1 for orthogonal ones; and the learning time of a linear
  regression task (steps of gradient descent to a relative error of 1%, learning rate lr0 / L)
  grows with depth for Gaussian init and stays flat for orthogonal init.
* 30-layer relu nets (He, Zhang, Ren & Sun 2015, Fig. 3): Glorot's init (Var W = 2 / (n_in +
  n_out)) halves the signal's second moment in every square relu layer, He's (2 / n_in) keeps
  it; per-layer gradient norms at initialisation over seeds, and momentum SGD on MNIST: the
  Glorot net does not learn, He's does.

Writes ``paper_figures/deep_linear_and_relu.png`` and ``paper_figures/data/deep_linear_and_relu/``.

    python experiments/fig_deep_linear_and_relu.py [--smoke] [--out paper_figures] [--recompute]
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax

import gradflow as gf
from gradflow import figures, plots

CONFIG = dict(
    spread_width=128,
    spread_depths=(1, 4, 16, 64),
    spread_seeds=8,
    saxe_width=16,  # input and hidden width; x = the 16 basis vectors (whitened inputs)
    saxe_out=4,  # fewer outputs than inputs: the orthogonal product is an exact isometry
    saxe_depths=(1, 2, 4, 8, 16, 32, 64),
    saxe_seeds=8,
    saxe_lr0=1.0,  # learning rate lr0 / L
    saxe_criterion=0.01,  # relative squared error ||f(X) - Y||^2 / ||Y||^2
    saxe_max_steps=2000,
    relu_depth=30,
    relu_width=64,
    grad_seeds=16,
    grad_images=256,
    train_seeds=4,
    n_train=2000,
    n_test=1000,
    steps=400,
    batch=32,
    learning_rate=0.005,
    momentum=0.9,
    smooth=20,  # moving average of the mini-batch loss, in steps
)
SMOKE = dict(
    CONFIG, spread_width=8, spread_depths=(2,), spread_seeds=2, saxe_width=8, saxe_out=4,
    saxe_depths=(2,), saxe_seeds=2, saxe_max_steps=20, relu_depth=4, relu_width=8, grad_seeds=2,
    grad_images=16, train_seeds=2, n_train=64, n_test=32, steps=6, batch=16, smooth=2,
)  # fmt: skip

INITS_LINEAR = ("gaussian", "orthogonal")
INITS_RELU = {"Glorot (Xavier)": "glorot_uniform", "He": "he"}
CHANCE_LOSS = math.log(10)


def draw(models: list, seeds: int):
    """Seeds 0..seeds-1 of every model (``model.init(fold_in(key(0), i))``, as ``gf.sweep``
    draws them), stacked along axis 0 in the order of ``models``: (len(models) * seeds, ...)."""
    keys = gf.seed_keys(seeds)
    drawn = [jax.vmap(m.init)(keys) for m in models]
    return jax.tree.map(lambda *leaves: jnp.concatenate(leaves), *drawn)


def run_shared(fn, model, params, *args, **options):
    """``fn(model, p, *args, **options)`` for every p along params' axis 0, in one program.

    Models that differ only in their init share ``apply``, so their seeds (from :func:`draw`)
    run through one compiled program: half the compilations of one ``gf.sweep`` per init,
    which is most of the cost at these sizes on a CPU.
    """
    one = lambda p, *a: fn(model, p, *a, **options)  # noqa: E731
    return jax.jit(jax.vmap(one, in_axes=(0,) + (None,) * len(args)))(params, *args)


def split(tree, parts: int) -> list:
    """Undo :func:`draw`'s stacking: ``parts`` numpy trees of equal length along axis 0."""
    return [
        jax.tree.map(lambda a, i=i: np.asarray(np.split(a, parts)[i]), tree) for i in range(parts)
    ]


# --------------------------------------------------------------------------------------------
# Deep linear nets


def linear_log_spectra(depth: int, width: int, seeds: int) -> dict[str, np.ndarray]:
    """log singular values of W^L ... W^1 (L square N x N layers) per init: {init: (seeds, N)}."""
    models = [gf.mlp([width] * (depth + 1), "linear", w, scan=2) for w in INITS_LINEAR]
    x = jnp.ones((1, width), jnp.float32)  # a linear net's Jacobian does not depend on x
    log_sv = run_shared(_log_sv, models[0], draw(models, seeds), x)
    return dict(zip(INITS_LINEAR, split(np.asarray(log_sv, np.float64), 2), strict=True))


def _log_sv(model, params, x):
    return gf.jacobian_singular_values(model, params, x, log=True)[0]


def regression_task(width: int, n_out: int) -> tuple[jax.Array, jax.Array]:
    """Whitened inputs X = I (width examples) and targets Y = X A, A = U diag(s) V^T.

    U (width, n_out) and V (n_out, n_out) Haar (semi-)orthogonal from the fixed key 7, s evenly
    spaced in [0.5, 2]: modes of different strength, as in Saxe et al.'s analysis.
    """
    ku, kv = jax.random.split(jax.random.key(7))
    u = gf.inits.orthogonal(ku, width, n_out)
    v = gf.inits.orthogonal(kv, n_out, n_out)
    a = (u * jnp.linspace(0.5, 2.0, n_out)[None, :]) @ v
    return jnp.eye(width, dtype=jnp.float32), a


def _zero_biases(grads):
    # Saxe's nets have no biases: ours start at 0 (sigma_b2 = 0) and are kept there.
    return jax.tree_util.tree_map_with_path(
        lambda path, g: jnp.zeros_like(g) if getattr(path[-1], "key", None) == "b" else g, grads
    )


def learning_time(model, params, x, y, *, learning_rate0, criterion, max_steps):
    """Gradient descent on E = ||f(X) - Y||^2 / ||Y||^2 until E <= criterion.

    Full batch, weights only, learning rate ``learning_rate0 / L`` (the optimal rate of a deep
    linear net falls like 1/L, Saxe et al. 2014 [R]). One seed; vmapped over seeds, the
    ``while_loop`` runs until every seed is done, each keeping its own count.

    Returns:
      dict: ``steps`` () the first t with E_t <= criterion (``max_steps`` if none),
      ``initial`` () E_0 and ``final`` () E at ``steps``.
    """
    lr = learning_rate0 / model.config.n_layers
    scale = jnp.sum(jnp.square(y))

    def error(p):
        return jnp.sum(jnp.square(model.apply(p, x) - y)) / scale

    def body(state):
        t, p, _ = state
        grads = _zero_biases(jax.grad(error)(p))
        p = jax.tree.map(lambda a, g: a - lr * g, p, grads)
        return t + 1, p, error(p)

    e0 = error(params)
    t, _, e = jax.lax.while_loop(
        lambda s: (s[0] < max_steps) & (s[2] > criterion), body, (jnp.int32(0), params, e0)
    )
    return {"steps": t.astype(jnp.float32), "initial": e0, "final": e}


# --------------------------------------------------------------------------------------------
# 30-layer relu nets


def relu_widths(n_in: int, cfg: dict) -> list[int]:
    return [n_in] + [cfg["relu_width"]] * (cfg["relu_depth"] - 1) + [10]


def glorot_over_he_mean_square(widths) -> float:
    """E[mean z^L^2] under Glorot over the same under He, relu nets with zero biases: exact.

    Given a^{l-1}, z^l_i has variance Var(W^l) ||a^{l-1}||^2, and for a symmetric weight law
    E relu(z)^2 = E z^2 / 2, so E||z^l||^2 / n_l = n_{l-1} Var(W^l) E||z^{l-1}||^2 / (2 n_{l-1})
    at any width. The relu factors cancel in the ratio, which is
    prod_l Var_Glorot / Var_He = prod_l n_{l-1} / (n_{l-1} + n_l): 1/2 per square layer,
    He et al.'s "1/sqrt(2)^L" in standard deviation.
    """
    w = np.asarray(widths, dtype=np.float64)
    return float(np.prod(w[:-1] / (w[:-1] + w[1:])))


def init_stats(model, params, x, y):
    """Per-layer ||dC/dW^l|| (xent on (x, y)) and the mean square of the logits, at init."""
    norms = gf.layer_grad_norms(model, params, x, y, loss="xent")
    return {"weights": norms.weights, "logit_ms": jnp.mean(jnp.square(model.apply(params, x)))}


def train_curve(model, params, x, y, x_test, y_test, *, steps, batch, learning_rate, momentum):
    """Momentum SGD on softmax cross-entropy: the mini-batch loss at every step, the test accuracy.

    Mini-batch s is the slice ``(s mod n/batch) * batch`` of the (already shuffled) training set,
    the same for every seed. Returns ``{"loss": (steps,), "accuracy": ()}``.
    """
    tx = optax.sgd(learning_rate, momentum=momentum)
    per_epoch = x.shape[0] // batch
    xent = gf.losses.get_loss("xent")

    def step(carry, s):
        p, state = carry
        start = (s % per_epoch) * batch
        xb = jax.lax.dynamic_slice_in_dim(x, start, batch)
        yb = jax.lax.dynamic_slice_in_dim(y, start, batch)
        value, grads = jax.value_and_grad(lambda q: jnp.mean(xent(model.apply(q, xb), yb)))(p)
        updates, state = tx.update(grads, state, p)
        return (optax.apply_updates(p, updates), state), value

    (params, _), losses = jax.lax.scan(step, (params, tx.init(params)), jnp.arange(steps))
    logits = model.apply(params, x_test)
    accuracy = jnp.mean((jnp.argmax(logits, axis=-1) == y_test).astype(jnp.float32))
    return {"loss": losses, "accuracy": accuracy}


def compute(cfg: dict) -> dict[str, np.ndarray]:
    out = {}
    for L in cfg["spread_depths"]:
        for w, log_sv in linear_log_spectra(L, cfg["spread_width"], cfg["spread_seeds"]).items():
            out[f"spread/{w}/{L}"] = log_sv
    x, y = regression_task(cfg["saxe_width"], cfg["saxe_out"])
    runs = []
    for L in cfg["saxe_depths"]:
        widths = [cfg["saxe_width"]] * L + [cfg["saxe_out"]]
        models = [gf.mlp(widths, "linear", w, scan=2) for w in INITS_LINEAR]
        runs.append(
            split(
                run_shared(
                    learning_time, models[0], draw(models, cfg["saxe_seeds"]), x, y,
                    learning_rate0=cfg["saxe_lr0"], criterion=cfg["saxe_criterion"],
                    max_steps=cfg["saxe_max_steps"],
                ),
                len(models),
            )
        )  # fmt: skip
    for i, w in enumerate(INITS_LINEAR):
        for field in ("steps", "initial", "final"):
            out[f"saxe/{w}/{field}"] = np.stack([r[i][field] for r in runs])  # (depths, seeds)

    ds = gf.data.load("mnist")
    print(f"data: {ds.source}")
    xs, ys = ds.x_train[: cfg["n_train"]], ds.y_train[: cfg["n_train"]]
    xt, yt = ds.x_test[: cfg["n_test"]], ds.y_test[: cfg["n_test"]]
    models = [gf.mlp(relu_widths(xs.shape[1], cfg), "relu", i, scan=2) for i in INITS_RELU.values()]
    n = cfg["grad_images"]
    stats = run_shared(init_stats, models[0], draw(models, cfg["grad_seeds"]), xs[:n], ys[:n])
    trained = run_shared(
        train_curve, models[0], draw(models, cfg["train_seeds"]), xs, ys, xt, yt,
        steps=cfg["steps"], batch=cfg["batch"], learning_rate=cfg["learning_rate"],
        momentum=cfg["momentum"],
    )  # fmt: skip
    parts = zip(INITS_RELU.values(), split(stats, 2), split(trained, 2), strict=True)
    for init, st, tr in parts:
        out[f"relu/{init}/grad_weights"] = st["weights"]  # (seeds, L)
        out[f"relu/{init}/logit_ms"] = st["logit_ms"]  # (seeds,)
        out[f"relu/{init}/loss"] = tr["loss"]  # (seeds, steps)
        out[f"relu/{init}/accuracy"] = tr["accuracy"]  # (seeds,)
    out["relu/n_in"] = np.int64(xs.shape[1])
    return out


# --------------------------------------------------------------------------------------------
# Summaries, plot, report


def spread_quantiles(log_sv: np.ndarray) -> np.ndarray:
    """Per seed: the 5%, 50% and 95% quantiles of the singular values, shape (3, seeds)."""
    return np.quantile(np.exp(log_sv), [0.05, 0.5, 0.95], axis=-1)


def moving_average(v: np.ndarray, k: int) -> np.ndarray:
    """Mean over the last k steps along the last axis (shorter windows at the start)."""
    c = np.cumsum(v, axis=-1)
    c[..., k:] = c[..., k:] - c[..., :-k]
    return c / np.minimum(np.arange(1, v.shape[-1] + 1), k)


def _band(v, axis=0):
    return np.quantile(v, [0.05, 0.5, 0.95], axis=axis)


def table(data: dict, cfg: dict) -> str:
    lines = [
        f"deep linear, width {cfg['spread_width']}, {cfg['spread_seeds']} seeds: singular values"
        " of W^L...W^1, seed medians of the per-seed 5% / 50% / 95% quantiles",
    ]
    for w in INITS_LINEAR:
        cells = []
        for L in cfg["spread_depths"]:
            q = np.median(spread_quantiles(data[f"spread/{w}/{L}"]), axis=1)
            cells.append(f"L={L}: {q[0]:.2g}/{q[1]:.2g}/{q[2]:.2g}")
        lines.append(f"  {w:<10} " + "  ".join(cells))
    lines += [
        "",
        f"learning time (GD steps to relative error {cfg['saxe_criterion']}, lr {cfg['saxe_lr0']}"
        f"/L), median [5%, 95%] over {cfg['saxe_seeds']} seeds; '>' = not reached in "
        f"{cfg['saxe_max_steps']} steps:",
    ]
    for w in INITS_LINEAR:
        steps = data[f"saxe/{w}/steps"]
        cells = []
        for L, s in zip(cfg["saxe_depths"], steps, strict=True):
            lo, med, hi = _band(s)
            mark = ">" if med >= cfg["saxe_max_steps"] else ""
            cells.append(f"L={L}: {mark}{med:.0f} [{lo:.0f}, {hi:.0f}]")
        lines.append(f"  {w:<10} " + "  ".join(cells))
    widths = relu_widths(int(data["relu/n_in"]), cfg)
    ratio = glorot_over_he_mean_square(widths)
    g, h = (data[f"relu/{i}/logit_ms"] for i in INITS_RELU.values())
    lines += [
        "",
        f"relu {cfg['relu_depth']} layers x {cfg['relu_width']}, Glorot vs He:",
        f"  logit mean square Glorot / He (means over {cfg['grad_seeds']} seeds): "
        f"{g.mean() / h.mean():.3g}; exact expectation {ratio:.3g} "
        f"(std ratio {math.sqrt(ratio):.3g})",
    ]
    for name, init in INITS_RELU.items():
        gw = _band(data[f"relu/{init}/grad_weights"])
        loss = data[f"relu/{init}/loss"]
        k = cfg["smooth"]
        start, end = moving_average(loss, k)[:, [k - 1, -1]].T
        acc = data[f"relu/{init}/accuracy"]
        lines.append(
            f"  {name:<16} ||dC/dW^l|| layer 1 {gw[1, 0]:.2e} [{gw[0, 0]:.1e}, {gw[2, 0]:.1e}], "
            f"layer {cfg['relu_depth'] // 2} {gw[1, cfg['relu_depth'] // 2 - 1]:.2e}, last "
            f"{gw[1, -1]:.2e};  loss (mean of {k} steps) {np.median(start):.3f} -> "
            f"{np.median(end):.3f} [{end.min():.3f}, {end.max():.3f}];  test accuracy "
            f"{np.median(acc):.3f} [{acc.min():.3f}, {acc.max():.3f}]"
        )
    return "\n".join(lines)


def plot(data: dict, cfg: dict):
    import matplotlib.pyplot as plt

    with plt.rc_context(plots.STYLE):
        fig, axes = plt.subplots(2, 2, figsize=(14, 10))
    (ax_s, ax_t), (ax_g, ax_l) = axes
    colors = {"gaussian": "C0", "orthogonal": "C3"}

    # (a) spread of the singular values with depth.
    Ls = np.array(cfg["spread_depths"])
    for w in INITS_LINEAR:
        q = np.stack([spread_quantiles(data[f"spread/{w}/{L}"]) for L in Ls])  # (L, 3, S)
        for k, (ls, what) in enumerate(zip((":", "-", "--"), ("5%", "median", "95%"), strict=True)):
            lo, med, hi = _band(q[:, k, :], axis=-1)
            ax_s.plot(Ls, med, ls, color=colors[w], marker="o", ms=4, label=f"{w}: {what}")
            ax_s.fill_between(Ls, lo, hi, color=colors[w], alpha=0.18, lw=0)
    ax_s.set_xscale("log")
    ax_s.set_yscale("log")
    ax_s.set_xticks(list(Ls), [str(L) for L in Ls])
    ax_s.xaxis.set_minor_formatter("")
    ax_s.set_xlabel("depth L (linear layers)")
    ax_s.set_ylabel(r"singular value of $W^L \cdots W^1$ (quantiles within a seed)")
    ax_s.set_title(
        f"(a) spectrum of deep linear nets, width {cfg['spread_width']} "
        f"(seed median, 5-95% band over {cfg['spread_seeds']} seeds)",
        fontsize=10,
    )
    ax_s.legend(fontsize=8, ncol=2)

    # (b) learning time vs depth.
    Ls = np.array(cfg["saxe_depths"])
    cap = cfg["saxe_max_steps"]
    for w in INITS_LINEAR:
        lo, med, hi = _band(data[f"saxe/{w}/steps"], axis=-1)
        done = med < cap
        ax_t.plot(Ls[done], med[done], "o-", color=colors[w], label=f"{w} init")
        ax_t.fill_between(Ls, lo, np.minimum(hi, cap), color=colors[w], alpha=0.18, lw=0)
        if (~done).any():
            ax_t.plot(Ls[~done], med[~done], "^", color=colors[w], mfc="white", ms=9,
                      label=f"{w}: not reached in {cap} steps")  # fmt: skip
    ax_t.axhline(cap, color="0.5", ls=":", lw=1)
    ax_t.set_xscale("log")
    ax_t.set_yscale("log")
    ax_t.set_xticks(list(Ls), [str(L) for L in Ls])
    ax_t.xaxis.set_minor_formatter("")
    ax_t.set_xlabel("depth L (linear layers)")
    ax_t.set_ylabel(f"GD steps to relative error {cfg['saxe_criterion']} (lr {cfg['saxe_lr0']}/L)")
    ax_t.set_title(
        f"(b) learning time, regression {cfg['saxe_width']} -> {cfg['saxe_out']} "
        f"(median, 5-95% over {cfg['saxe_seeds']} seeds); paper: flat for orthogonal",
        fontsize=10,
    )
    ax_t.legend(fontsize=8)

    # (c) per-layer weight-gradient norms at init.
    curves = {n: gf.summarize(data[f"relu/{i}/grad_weights"]) for n, i in INITS_RELU.items()}
    plots.layer_norms(
        curves, ylabel=r"$\|\partial C/\partial W^l\|_F$ at initialisation", ax=ax_g,
        colors={"Glorot (Xavier)": "C1", "He": "C2"},
    )  # fmt: skip
    he = curves["He"].median
    layers = np.arange(1, he.size + 1)
    factor = 2 ** (-(cfg["relu_depth"] - 1) / 2)
    ax_g.plot(layers, he * factor, "--", color="C1", lw=1,
              label=r"He $\times (1/\sqrt{2})^{L-1}$ (He et al.'s ratio)")  # fmt: skip
    ax_g.set_xlabel(f"layer l (1 = first, {cfg['relu_depth']} = output)")
    ax_g.set_title(
        f"(c) relu {cfg['relu_depth']} x {cfg['relu_width']}, {cfg['grad_images']} MNIST digits,"
        f" {cfg['grad_seeds']} seeds (median, 5-95%)",
        fontsize=10,
    )
    ax_g.legend(fontsize=8)

    # (d) training curves.
    for (name, init), color in zip(INITS_RELU.items(), ("C1", "C2"), strict=True):
        smooth = moving_average(data[f"relu/{init}/loss"], cfg["smooth"])
        lo, med, hi = _band(smooth)
        steps = np.arange(1, med.size + 1)
        acc = np.median(data[f"relu/{init}/accuracy"])
        ax_l.plot(steps, med, color=color, label=f"{name}: test accuracy {acc:.2f}")
        ax_l.fill_between(steps, lo, hi, color=color, alpha=0.2, lw=0)
    ax_l.axhline(CHANCE_LOSS, color="0.5", ls=":", lw=1, label="ln 10 (chance)")
    ax_l.set_xlabel("SGD step")
    ax_l.set_ylabel(f"training loss (cross-entropy, mean of {cfg['smooth']} mini-batches)")
    ax_l.set_title(
        f"(d) momentum SGD, lr {cfg['learning_rate']}, batch {cfg['batch']} "
        f"(median, 5-95% over {cfg['train_seeds']} seeds); paper: Xavier stalls, He learns",
        fontsize=10,
    )
    ax_l.legend(fontsize=8)
    fig.suptitle(
        "Saxe et al. 2014 (Fig. 6: deep linear nets, orthogonal vs Gaussian) and He et al. 2015 "
        "(Fig. 3: 30-layer relu nets, Xavier vs He)"
    )
    fig.tight_layout()
    return fig


def report(data: dict, cfg: dict) -> str:
    gauss, orth = (np.median(data[f"saxe/{w}/steps"], axis=-1) for w in INITS_LINEAR)
    Ls = cfg["saxe_depths"]
    k = min(2, len(Ls) - 1)  # the third depth: past the first layers' own speed-up
    more = " or more" if gauss[-1] >= cfg["saxe_max_steps"] else ""
    lines = [
        "**Paper**: Saxe et al. 2014 (Fig. 6 [V]): the singular values of products of Gaussian "
        "matrices spread (become kurtotic) with depth; learning time grows with depth for scaled "
        "Gaussian init and is depth-independent for random orthogonal init. He et al. 2015 "
        "(Fig. 3 [R*]): a 30-layer model with Xavier init stalls, theirs converges; Xavier's "
        "signal std is (1/sqrt 2)^L of theirs [R*]. Neither gives numbers we can pin.",
        "",
        "**gradflow**:",
        "",
        "```",
        table(data, cfg),
        "```",
        "",
        f"Median learning time from L = {Ls[0]} to {Ls[-1]}: orthogonal x{orth[-1] / orth[0]:.1f}, "
        f"Gaussian x{gauss[-1] / gauss[0]:.0f}{more}; from L = {Ls[k]}: orthogonal "
        f"x{orth[-1] / orth[k]:.1f}, Gaussian x{gauss[-1] / gauss[k]:.0f}{more}.",
        "",
        "**Differences**: Saxe et al. trained on MNIST-scale tasks [R]; we use a linear "
        f"regression from {cfg['saxe_width']} whitened inputs to {cfg['saxe_out']} outputs "
        "(fewer outputs than inputs, so an orthogonal product is an exact isometry and no "
        "sign-of-determinant barrier appears), full-batch GD with lr "
        f"{cfg['saxe_lr0']}/L, no biases. He et al.'s 30-layer model is convolutional (27 conv "
        f"+ 3 fc) on ImageNet; ours is a fully connected relu MLP, {cfg['relu_depth']} weight "
        f"layers of width {cfg['relu_width']}, on the first {cfg['n_train']} MNIST digits "
        f"({cfg['steps']} steps of momentum SGD, batch {cfg['batch']}, lr "
        f"{cfg['learning_rate']}), Glorot uniform (their 'Xavier') vs N(0, 2/n_in), biases 0; "
        f"test accuracy on {cfg['n_test']} held-out digits. The dashed line in (c) applies He "
        "et al.'s forward-signal ratio to the gradients (approximate: the first and last "
        "layers are not square).",
    ]
    return "\n".join(lines)


FIGURE = figures.PaperFigure(
    name="deep_linear_and_relu",
    number=5,
    title="Saxe et al. 2014, Fig. 6 and He et al. 2015, Fig. 3: orthogonal vs Gaussian deep "
    "linear nets, Xavier vs He 30-layer relu nets",
    config=CONFIG,
    smoke=SMOKE,
    compute=compute,
    plot=plot,
    report=report,
    paper={"xavier_over_he_std_per_layer": 1 / math.sqrt(2)},
)


def main(argv=None) -> int:
    return figures.main(FIGURE, argv)


if __name__ == "__main__":
    raise SystemExit(main())
