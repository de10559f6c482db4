"""Nielsen, *Neural Networks and Deep Learning*, ch. 5: the "speed of learning" ||delta^l||.

Reproduces the chapter's numbers and figures over many seeds (the book used one unseeded init):

* at initialisation, ``||dC/db^l||`` (the norm of the bias gradient averaged over the first
  1,000 MNIST training digits) for the hidden layers of [784,30,30,10], [784,30,30,30,10] and
  [784,30,30,30,30,10], sigmoid, network2's default init (W ~ N(0, 1/n_in), b ~ N(0, 1)),
  cross-entropy cost -- printed as seed median and 5-95% band beside the book's numbers;
* during training, as in ``fig/generate_gradient.py``: 500 epochs of full-batch gradient descent on
  the same 1,000 digits, lr 0.1, L2 lmbda 5.0 (n = 1,000), norms recorded before each epoch.

Writes ``paper_figures/nielsen_speed_of_learning.png`` and the per-seed numbers in
``paper_figures/data/nielsen_speed_of_learning/`` (results.npz + config.json).

    python experiments/fig_nielsen_speed_of_learning.py [--smoke] [--out paper_figures]
"""

from __future__ import annotations

import argparse
import pathlib
import time

import numpy as np

import gradflow as gf
from gradflow import io, plots
from gradflow.train import train_trajectory

CONFIG = dict(
    nets={2: [784, 30, 30, 10], 3: [784, 30, 30, 30, 10], 4: [784, 30, 30, 30, 30, 10]},
    n_images=1000,
    init_seeds=256,  # at initialisation: cheap, so many seeds
    train_seeds=8,  # 500 epochs each
    epochs=500,
    learning_rate=0.1,
    lmbda=5.0,
)
SMOKE = dict(CONFIG, n_images=100, init_seeds=8, train_seeds=2, epochs=5)

# Book, ch. 5 (one unseeded initialisation; REFERENCES.md 1.2).
BOOK = {2: [0.07, 0.31], 3: [0.012, 0.060, 0.283], 4: [0.003, 0.017, 0.070, 0.285]}


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


def plot(data: dict, cfg: dict):
    import matplotlib.pyplot as plt

    n = len(cfg["nets"])
    with plt.rc_context(plots.STYLE):
        fig, axes = plt.subplots(2, n, figsize=(4.2 * n, 7.2), squeeze=False)
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
    fig.suptitle("Nielsen ch. 5: speed of learning of each hidden layer (sigmoid, MNIST)")
    fig.tight_layout()
    return fig


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="paper_figures", help="output folder")
    parser.add_argument("--smoke", action="store_true", help="tiny sizes, for the test suite")
    args = parser.parse_args(argv)
    cfg = SMOKE if args.smoke else CONFIG
    start = time.perf_counter()
    data = compute(cfg)
    out = pathlib.Path(args.out)
    io.save_results(out / "data" / "nielsen_speed_of_learning", data, {**cfg, "book": BOOK})
    print(table(data, cfg))
    path = plots.save(plot(data, cfg), out / "nielsen_speed_of_learning.png")
    print(f"figure: {path}  ({time.perf_counter() - start:.0f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
