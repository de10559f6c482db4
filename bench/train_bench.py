"""What recording the probes at every training step costs: ``gf.train.train`` side by side.

Four contenders per workload, run interleaved round by round (load from other processes falls
on all alike), each ratio taken within a round and reported as the median over rounds:

  record     ``train(..., record_every=1)``: per-layer norms, update ratios, loss, accuracy
  epoch      ``train(..., record_every=<steps per epoch>)``: the same, once an epoch
  no record  ``train(..., record_every=0)``: the same training, nothing recorded
  hand       a hand-written jitted optax loop (nested ``lax.scan``: epochs, batches) that
             records nothing: what plain JAX costs

Workloads:
  nielsen  Nielsen's [784, 30, 30, 30, 10] sigmoid net (network2 init and update, cross-entropy),
           mini-batch SGD, batch 10, on the first 1,000 MNIST training digits, one seed
  nielsen_100  the same, mini-batches of 100, ten times the epochs (as many steps)
  nielsen_full  the same net, full-batch gradient descent on the 1,000 digits (the book's
           ``fig/generate_gradient.py``, which records the norms at every step)
  wide     tanh MLP [256] * 8 -> 10, Adam, batch 64 of 512 Gaussian inputs (random labels),
           16 seeds vmapped by ``gf.sweep`` (the hand loop: ``jit(vmap(loop))``)

Targets: record / no record <= 1.10; no record / hand ~ 1. Never an absolute time.

    python bench/train_bench.py [--quick] [--rounds N]
"""

from __future__ import annotations

import argparse
import statistics
import time
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax import lax

import gradflow as gf
from gradflow.losses import get_loss
from gradflow.train import make_optimizer, train

PAIRS = (("record", "no record"), ("epoch", "no record"), ("no record", "hand"))
FULL = dict(
    rounds=5,
    nielsen_epochs=10,
    full_steps=200,
    wide_n=512,
    wide_batch=64,
    wide_epochs=4,
    wide_seeds=16,
)
QUICK = dict(
    FULL, rounds=3, nielsen_epochs=1, full_steps=20, wide_n=256, wide_epochs=2, wide_seeds=4
)


def hand_loop(model, loss, tx, x, y, batch_size, epochs, key):
    """``params, key -> final params``: the optax loop a researcher writes (no probes): a fresh
    permutation ``permutation(fold_in(key, epoch), n)`` per epoch, a scan over its batches."""
    loss_fn = get_loss(loss)
    n = x.shape[0]
    per_epoch = n // batch_size

    def step(carry, idx):
        params, opt_state = carry
        xb, yb = x[idx], y[idx]
        grads = jax.grad(lambda p: jnp.mean(loss_fn(model.apply(p, xb), yb)))(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        return (optax.apply_updates(params, updates), opt_state), None

    def epoch(carry, e):
        perm = jax.random.permutation(jax.random.fold_in(key, e), n)
        batches = perm[: per_epoch * batch_size].reshape(per_epoch, batch_size)
        return jax.lax.scan(step, carry, batches)[0], None

    def run(params):
        carry = (params, tx.init(params))
        return jax.lax.scan(epoch, carry, jnp.arange(epochs))[0][0]

    return run


def interleaved(fns: dict, rounds: int) -> tuple[dict, dict]:
    """Wall and process CPU times of each (warmed-up) function, ``rounds`` times, interleaved
    and rotated. CPU time (all threads) is the steadier measure on a shared machine: waiting
    for a core does not count."""
    wall, cpu = {name: [] for name in fns}, {name: [] for name in fns}
    names = list(fns)
    for r in range(rounds):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            start, start_cpu = time.perf_counter(), time.process_time()
            jax.block_until_ready(fns[name]())
            wall[name].append(time.perf_counter() - start)
            cpu[name].append(time.process_time() - start_cpu)
    return wall, cpu


def ratios(wall: dict[str, list[float]], cpu: dict[str, list[float]]) -> dict:
    """Median over rounds of the per-round ratios (wall time, and CPU time in brackets), and
    each contender's median wall time."""

    def median_ratio(times, a, b):
        return statistics.median(u / v for u, v in zip(times[a], times[b], strict=True))

    return {
        **{f"{a} / {b}": median_ratio(wall, a, b) for a, b in PAIRS},
        **{f"{a} / {b} (cpu)": median_ratio(cpu, a, b) for a, b in PAIRS},
        "median seconds": {k: statistics.median(v) for k, v in wall.items()},
    }


def max_rel_diff(a, b) -> float:
    return max(
        float(np.max(np.abs(np.asarray(u) - np.asarray(v))) / (np.max(np.abs(np.asarray(v))) or 1))
        for u, v in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True)
    )


def measure(fns: dict, rounds: int, steps: int) -> dict:
    """Compile each contender, time them interleaved, and check the single-seed results: the
    recorded run's params bit-equal to the unrecorded one's, and close to the hand loop's."""
    warm = {name: jax.block_until_ready(f()) for name, f in fns.items()}  # compile
    row = ratios(*interleaved(fns, rounds))
    row["steps"] = steps
    recorded, plain = (jax.tree.leaves(warm[k].params) for k in ("record", "no record"))
    row["checks"] = {
        "record vs no record params bit-equal": all(
            np.array_equal(u, v) for u, v in zip(recorded, plain, strict=True)
        ),
        "no record vs hand, max rel diff": max_rel_diff(warm["no record"].params, warm["hand"]),
    }
    return row


def nielsen(cfg, batch: int | None = 10, epoch_scale: int = 1) -> dict:
    """Nielsen's [784, 30, 30, 30, 10] sigmoid net on the first 1,000 MNIST digits, network2's
    update: mini-batches of ``batch`` drawn by ``train``'s key, or with ``batch=None`` full-batch
    gradient descent (the book's ``fig/generate_gradient.py``, which records every step)."""
    ds = gf.data.load("mnist")
    x, y = jnp.asarray(ds.x_train[:1000]), jnp.asarray(ds.y_train[:1000])
    model = gf.mlp([784, 30, 30, 30, 10], "sigmoid", "nielsen")
    lr, wd = 0.1, 5.0 / len(x)
    params = model.init(jax.random.key(0))
    tx = make_optimizer("network2", lr, wd)
    kw = dict(optimizer="network2", learning_rate=lr, weight_decay=wd)
    if batch is None:
        steps = cfg["full_steps"]
        every = steps // 10  # "epoch": ten records in all
        loss_fn = get_loss("sigmoid_xent")

        def hand_step(carry, _):
            p, state = carry
            grads = jax.grad(lambda q: jnp.mean(loss_fn(model.apply(q, x), y)))(p)
            updates, state = tx.update(grads, state, p)
            return (optax.apply_updates(p, updates), state), None

        hand = jax.jit(lambda p: lax.scan(hand_step, (p, tx.init(p)), None, length=steps)[0][0])
    else:
        every = len(x) // batch
        steps = cfg["nielsen_epochs"] * epoch_scale * every
        key = jax.random.key(1)
        kw.update(batch_size=batch, key=key)
        epochs = cfg["nielsen_epochs"] * epoch_scale
        loop = hand_loop(model, "sigmoid_xent", tx, x, y, batch, epochs, key)
        hand = jax.jit(loop)

    def run(k):
        return lambda: train(model, params, x, y, "sigmoid_xent", steps=steps, record_every=k, **kw)

    fns = {"record": run(1), "epoch": run(every), "no record": run(0), "hand": lambda: hand(params)}
    return measure(fns, cfg["rounds"], steps)


def wide(cfg) -> dict:
    n, batch, seeds = cfg["wide_n"], cfg["wide_batch"], cfg["wide_seeds"]
    n_out, lr = 10, 1e-3
    x = jax.random.normal(jax.random.key(1), (n, 256))
    y = jax.random.randint(jax.random.key(2), (n,), 0, n_out)
    model = gf.mlp([256] * 8 + [n_out], "tanh", "lecun")
    steps = cfg["wide_epochs"] * (n // batch)
    keys = gf.seed_keys(seeds)

    def run(k):
        return lambda: gf.sweep(
            train, model, keys, x, y, loss="xent", steps=steps, optimizer="adam",
            batch_size=batch, key=3, record_every=k, hyper={"learning_rate": lr}, quiet=True,
        )  # fmt: skip

    tx = make_optimizer("adam", lr)
    loop = hand_loop(model, "xent", tx, x, y, batch, cfg["wide_epochs"], jax.random.key(3))
    hand_jit = jax.jit(jax.vmap(lambda k: loop(model.init(k))))

    def hand():  # results to the host, as the sweep's are
        return jax.tree.map(np.asarray, hand_jit(keys))

    fns = {"record": run(1), "epoch": run(n // batch), "no record": run(0), "hand": hand}
    warm = {name: f() for name, f in fns.items()}
    row = ratios(*interleaved(fns, cfg["rounds"]))
    row["steps"], row["seeds"] = steps, seeds
    row["checks"] = {
        "no record vs hand, max rel diff": max_rel_diff(warm["no record"].params, warm["hand"]),
    }
    return row


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="few steps and rounds (smoke test)")
    parser.add_argument("--rounds", type=int, default=None, help="interleaved rounds")
    parser.add_argument(
        "--only", default="nielsen,nielsen_100,nielsen_full,wide", help="comma-separated workloads"
    )
    args = parser.parse_args(argv)
    cfg = dict(QUICK if args.quick else FULL)
    if args.rounds is not None:
        cfg["rounds"] = args.rounds
    workloads = {
        "nielsen": nielsen,
        "nielsen_100": partial(nielsen, batch=100, epoch_scale=10),  # as many steps
        "nielsen_full": partial(nielsen, batch=None),
        "wide": wide,
    }
    rows = {}
    print(f"train bench ({jax.devices()[0].device_kind}, {cfg['rounds']} rounds): median ratios")
    for name in args.only.split(","):
        row = rows[name] = workloads[name](cfg)
        secs = "  ".join(f"{k} {v * 1e3:.1f} ms" for k, v in row["median seconds"].items())
        print(
            f"  {name:12s} "
            + "   ".join(
                f"{a}/{b} {row[f'{a} / {b}']:.3f} (cpu {row[f'{a} / {b} (cpu)']:.3f})"
                for a, b in PAIRS
            )
            + f"   ({row['steps']} steps; {secs})"
        )
        print(f"           checks: {row['checks']}")
    return rows


if __name__ == "__main__":
    main()
