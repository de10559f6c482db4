"""``gradflow train`` and ``gradflow diagnose``: the same model, data and sweep flags as
``gradflow sweep``, for the built-in MLP or any model (``--model package.module:function``).

Both run over ``--seeds`` seeds with :func:`gradflow.sweep` and write ``results.npz`` and
``config.json`` into ``--out`` (``train`` also ``norms.png``: per-layer weight-gradient norms
over the training steps, seed medians with 5-95% bands; ``diagnose`` also ``report.json``).
"""

from __future__ import annotations

import argparse
import importlib
import inspect
import math
import os
import sys

import numpy as np


def add_parsers(sub, add_model_args, add_data_args, add_sweep_args) -> None:
    """Register the ``train`` and ``diagnose`` subcommands on ``sub``."""
    from gradflow.optimizers import OPTIMIZERS

    p = sub.add_parser("train", help="train over many seeds, recording per-layer norms")
    add_model_args(p)
    add_data_args(p)
    add_sweep_args(p, seeds=8)
    p.add_argument("--steps", type=int, default=100, help="optimizer steps (default 100)")
    p.add_argument("--optimizer", default="sgd", choices=OPTIMIZERS, help="optimizer (default sgd)")
    p.add_argument("--lr", type=float, default=0.1, help="learning rate (default 0.1)")
    p.add_argument("--weight-decay", type=float, default=0.0, help="L2 on weights only (default 0)")
    p.add_argument(
        "--batch-size", type=int, default=None, help="mini-batch size (default: full batch)"
    )
    p.add_argument(
        "--record-every", type=int, default=1, help="record the probes every k steps (default 1)"
    )
    p.add_argument("--key", type=int, default=0, help="seed of the mini-batch order (default 0)")

    p = sub.add_parser("diagnose", help="vanishing, exploding, dead, saturated, saddle, minimum?")
    add_model_args(p)
    add_data_args(p)
    add_sweep_args(p, seeds=8)
    p.add_argument(
        "--hessian-iterations",
        type=int,
        default=20,
        help="Lanczos steps for the Hessian extremes (default 20; 0 skips them)",
    )


def load_model_spec(spec: str):
    """``package.module:function`` -> the :class:`gradflow.Model` that function returns."""
    from gradflow.models import Model

    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise ValueError(f"--model must look like package.module:function, got {spec!r}")
    if os.getcwd() not in sys.path:  # a module beside the user, as `python -m` would find it
        sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        raise ValueError(f"--model: cannot import {module_name!r} ({e})") from None
    fn = getattr(module, attr, None)
    if not callable(fn):
        raise ValueError(f"--model: {module_name!r} has no function {attr!r}")
    try:
        signature = inspect.signature(fn)
    except ValueError:  # no signature to read (a builtin): let the call say
        signature = None
    needed = [
        p.name
        for p in (signature.parameters.values() if signature else ())
        if p.default is p.empty and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
    ]
    if needed:
        raise ValueError(
            f"--model: {spec} needs arguments ({', '.join(needed)}); point --model at a "
            "function of no arguments that returns the model"
        )
    model = fn()
    if not isinstance(model, Model):
        raise ValueError(
            f"--model: {spec} returned {type(model).__name__}, not a gradflow Model; return "
            "gf.from_apply(init, apply), gf.from_layers(...) or a built-in"
        )
    return model


def build_model(args, load_batch):
    """(model, x, y, description) for the model and data flags."""
    import jax

    import gradflow as gf

    if args.model:
        model = load_model_spec(args.model)
        if args.data == "gaussian":
            if model.in_shape is None or len(model.in_shape) != 1:
                raise ValueError(
                    "--data gaussian needs the model's input size, which it does not declare; "
                    "use --data mnist or digits, or build it with gf.from_layers(net, in_shape)"
                )
            n_in = model.in_shape[0]
        else:
            n_in = gf.data.load(args.data, args.data_dir).x_train.shape[1]
        shape = (n_in,)
        declared = model.in_shape if model.in_shape and None not in model.in_shape else None
        if declared is not None:
            if math.prod(declared) != n_in:
                raise ValueError(
                    f"--model {args.model} takes inputs of shape {declared} but --data "
                    f"{args.data} has {n_in} features; use other data or a model that fits them"
                )
            shape = tuple(declared)  # e.g. a CNN's (28, 28, 1): the flat data is reshaped
        params = jax.eval_shape(model.init, jax.random.key(0))
        try:
            out = jax.eval_shape(model.apply, params, jax.ShapeDtypeStruct((1, *shape), np.float32))
        except Exception as e:  # the user's apply on the CLI's data: one line, not a traceback
            first = (str(e).strip().splitlines() or [type(e).__name__])[0][:160]
            raise ValueError(
                f"--model {args.model} does not run on --data {args.data}'s inputs of shape "
                f"(batch, {', '.join(map(str, shape))}) ({type(e).__name__}: {first})"
            ) from None
        x, y, source = load_batch(args, n_in, out.shape[-1])
        x = x.reshape(x.shape[0], *shape)
        return model, x, y, f"model {args.model}; {source}"
    model = gf.mlp(
        args.widths, args.activation, args.init, sigma_w2=args.sigma_w2,
        sigma_b2=args.sigma_b2, residual=args.residual,
    )  # fmt: skip
    x, y, source = load_batch(args, args.widths[0], args.widths[-1])
    desc = f"widths {list(args.widths)}, {args.activation}, init {args.init}; {source}"
    return model, x, y, desc


def check_common(args) -> None:
    """The checks every sweeping subcommand (sweep, train, diagnose) makes before building the
    model: --out, --loss, --seeds, and the sweep's own flags."""
    import gradflow as gf

    if args.out is not None:
        gf.io.check_output_dir(args.out, "--out")
    gf.losses.get_loss(args.loss)
    if args.seeds < 1:
        raise ValueError(f"--seeds must be >= 1, got {args.seeds}")
    _check_sweep_flags(args)


def _check_sweep_flags(args) -> None:
    """The sweep's own checks of ``--memory``, ``--vmap-size`` and ``--devices``, made before the
    model is built or anything is printed (the sweep makes them again)."""
    from gradflow.memory import parse_bytes
    from gradflow.seeds import positive_int
    from gradflow.sweep_engine import mesh_of

    if args.memory is not None:
        parse_bytes(args.memory)
    if args.vmap_size is not None:
        positive_int("--vmap-size", args.vmap_size)
    mesh_of(args.devices)


def _sweep_kw(args, chunk) -> dict:
    return dict(
        chunk_size=chunk, memory=args.memory, devices=args.devices, quiet=args.quiet,
        vmap_size=args.vmap_size, precision=args.precision, run_dir=args.out,
    )  # fmt: skip


def cmd_train(args, load_batch, chunk) -> int:
    import gradflow as gf
    from gradflow import io, plots

    check_common(args)
    for name in ("steps", "record_every"):
        if getattr(args, name) < 0:
            raise ValueError(f"--{name.replace('_', '-')} must be >= 0, got {getattr(args, name)}")
    if args.record_every == 0 or args.steps % args.record_every:
        raise ValueError(
            f"--record-every must be >= 1 and divide --steps={args.steps}, got {args.record_every}"
        )
    if not (math.isfinite(args.lr) and args.lr > 0):
        raise ValueError(f"--lr must be a finite number > 0, got {args.lr}")
    if not (math.isfinite(args.weight_decay) and args.weight_decay >= 0):
        raise ValueError(f"--weight-decay must be a finite number >= 0, got {args.weight_decay}")
    model, x, y, desc = build_model(args, load_batch)
    if args.batch_size is not None and not 1 <= args.batch_size <= len(x):
        raise ValueError(f"--batch-size must be in 1..{len(x)} (--batch), got {args.batch_size}")
    print(f"{desc}; {args.seeds} seeds, {args.steps} {args.optimizer} steps, lr {args.lr}")

    hyper = {"learning_rate": args.lr, "weight_decay": args.weight_decay}
    traj = gf.sweep(
        trajectory, model, args.seeds, x, y, loss=args.loss, hyper=hyper, steps=args.steps,
        optimizer=args.optimizer, batch_size=args.batch_size, key=args.key,
        record_every=args.record_every, **_sweep_kw(args, chunk),
    )  # fmt: skip
    arrays = io.leaf_names(traj)
    loss = np.median(np.asarray(traj.loss), axis=0)
    acc = np.median(np.asarray(traj.accuracy), axis=0)
    steps = np.asarray(traj.step)[0]
    print("step   loss (seed median)   accuracy")
    for i in sorted({0, len(steps) // 2, len(steps) - 1}):
        print(f"{int(steps[i]):>5}  {loss[i]:>19.4g}   {acc[i]:.3f}")
    if args.out:
        out = io.save_results(args.out, arrays, {"command": "train", **vars(args), "model": desc})
        fig = _norms_figure(traj.norms, steps, plots)
        path = plots.save(fig, out / "norms.png")
        print(f"wrote {out / 'results.npz'}, {out / 'config.json'} and {path}")
    return 0


def trajectory(model, params, x, y, loss, *, learning_rate, weight_decay, **options):
    """:func:`gradflow.train.train`'s trajectory alone (a sweep keeps no final params); the
    static ``options`` are part of a run directory's fingerprint, so resuming never mixes runs."""
    from gradflow.train import train

    return train(
        model,
        params,
        x,
        y,
        loss,
        learning_rate=learning_rate,
        weight_decay=weight_decay,
        **options,
    ).trajectory


def _norms_figure(norms, steps, plots):
    import matplotlib.pyplot as plt

    w = np.asarray(norms.weights)  # (seeds, records, L)
    with plt.rc_context(plots.STYLE):
        fig, ax = plt.subplots(figsize=(6.8, 4.2))
        for l, name in enumerate(norms.names):
            q05, med, q95 = np.nanquantile(w[:, :, l], [0.05, 0.5, 0.95], axis=0)
            (line,) = ax.plot(steps, med, label=name)
            ax.fill_between(steps, q05, q95, color=line.get_color(), alpha=0.15, lw=0)
        ax.set_yscale("log")
        ax.set_xlabel("optimizer step")
        ax.set_ylabel(r"$\|\partial C/\partial W^l\|$ (seed median, 5-95%)")
        ax.set_title("per-layer weight-gradient norms during training")
        ax.legend(fontsize=7, ncol=2)
    return fig


def cmd_diagnose(args, load_batch, chunk) -> int:
    import gradflow as gf
    from gradflow import io
    from gradflow.diagnose import diagnose
    from gradflow.report import report

    check_common(args)
    if args.hessian_iterations < 0:
        raise ValueError(f"--hessian-iterations must be >= 0, got {args.hessian_iterations}")
    model, x, y, desc = build_model(args, load_batch)
    print(f"{desc}; {args.seeds} seeds")
    d = gf.sweep(diagnose, model, args.seeds, x, y, loss=args.loss,
                 hessian_iterations=args.hessian_iterations, **_sweep_kw(args, chunk))  # fmt: skip
    r = report(d)
    print(r.text)
    if args.out:
        out = io.save_results(
            args.out, d._asdict(), {"command": "diagnose", **vars(args), "model": desc}
        )
        import json

        io.atomic_write(out / "report.json", json.dumps(r.to_dict(), indent=1).encode())
        print(f"wrote {out / 'results.npz'}, {out / 'config.json'} and {out / 'report.json'}")
    return 0


def model_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--model",
        default=None,
        help="any model: package.module:function returning a gradflow Model (replaces "
        "--widths/--activation/--init)",
    )
