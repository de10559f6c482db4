"""The ``gradflow`` command line: ``sweep``, ``train``, ``diagnose``, ``theory`` and ``demo``.

Bad input is a one-line error naming the problem and the fix, exit code 2, no traceback.
"""

from __future__ import annotations

import argparse
import math
import pathlib
import sys

import numpy as np

from gradflow import cli_runs
from gradflow.inits import INIT_FORMULAS

USAGE_ERROR = 2


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, exit 2 (argparse's default prints the usage too)
        self.exit(USAGE_ERROR, f"gradflow: error: {message} (see '{self.prog} --help')\n")


def _widths(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(w) for w in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"--widths must be comma-separated ints like 784,30,10, got {text!r}"
        ) from None


def _add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--widths",
        type=_widths,
        default=(784, 30, 30, 30, 10),
        help="layer sizes, input first, e.g. 784,30,30,30,10",
    )
    p.add_argument("--activation", default="sigmoid", help="hidden nonlinearity (default sigmoid)")
    p.add_argument(
        "--init",
        default="nielsen",
        help="initialisation (default nielsen); formulas: "
        + "; ".join(f"{k}: {v}" for k, v in INIT_FORMULAS.items()),
    )
    p.add_argument(
        "--sigma-w2", type=float, default=None, help="weight variance (gaussian/orthogonal)"
    )
    p.add_argument(
        "--sigma-b2", type=float, default=None, help="bias variance (gaussian/orthogonal)"
    )
    p.add_argument("--residual", action="store_true", help="residual hidden layers of equal width")
    p.add_argument("--loss", default="sigmoid_xent", help="mse, xent or sigmoid_xent (default)")
    cli_runs.model_arg(p)


def _add_data_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", default="mnist", help="mnist, digits or gaussian (default mnist)")
    p.add_argument(
        "--data-dir",
        default=None,
        help="folder with MNIST IDX files or mnist.npz (default $GRADFLOW_DATA, else the "
        "embedded 5,000-digit subset)",
    )
    p.add_argument(
        "--batch",
        type=int,
        default=1000,
        help="examples in the batch (the first N training examples; default 1000)",
    )
    p.add_argument(
        "--q",
        type=float,
        default=1.0,
        help="per-unit second moment of --data gaussian inputs (default 1)",
    )


def _add_sweep_args(p: argparse.ArgumentParser, seeds: int = 100) -> None:
    p.add_argument("--seeds", type=int, default=seeds, help=f"number of seeds (default {seeds})")
    p.add_argument(
        "--chunk-size",
        default=None,
        help="seeds per compiled call, or 'auto' (compile candidates to fit --memory); default: "
        "chosen from one trace of one seed (groups of ~8 GFLOP, eight a chunk, within --memory)",
    )
    p.add_argument(
        "--memory",
        default=None,
        help="per-device memory budget, e.g. 4GiB (default: 80%% of "
        "an accelerator's, or half the RAM on CPU)",
    )
    p.add_argument(
        "--vmap-size",
        type=int,
        default=None,
        help="seeds vectorised together inside a chunk (default: chosen with the chunk; with "
        "--chunk-size, the whole chunk)",
    )
    p.add_argument("--devices", type=int, default=None, help="local devices to use (default all)")
    p.add_argument(
        "--precision",
        default="highest",
        choices=("highest", "high", "default"),
        help="float32 matmul precision: highest = full float32 on every backend (default); "
        "high/default trade digits for speed on GPU/TPU (TF32, bfloat16)",
    )
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument(
        "--out",
        default=None,
        help="run folder for results.npz and config.json; finished chunks are saved there, so "
        "re-running the same command resumes",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="gradflow", description="Measure vanishing and exploding gradients.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    p = sub.add_parser("sweep", help="per-layer gradient norms over many random seeds")
    _add_model_args(p)
    _add_data_args(p)
    _add_sweep_args(p)

    cli_runs.add_parsers(sub, _add_model_args, _add_data_args, _add_sweep_args)
    _add_theory_parser(sub)

    p = sub.add_parser("demo", help="the vanishing-gradient story on real MNIST digits")
    p.add_argument("--seeds", type=int, default=128, help="seeds per network (default 128)")
    p.add_argument("--batch", type=int, default=1000, help="MNIST digits in the batch")
    p.add_argument("--data-dir", default=None, help="folder with MNIST (default: embedded)")
    p.add_argument("--out", default="runs/demo", help="folder for the figure and results")
    return parser


FIGURE_SUFFIXES = (".png", ".pdf", ".svg", ".jpg", ".jpeg")
"""Figure formats matplotlib writes without extra packages."""


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from gradflow import plots

    plots.headless()  # the command writes figures to files
    try:
        if args.command == "sweep":
            return cmd_sweep(args)
        if args.command == "theory":
            return cmd_theory(args)
        if args.command == "train":
            return cli_runs.cmd_train(args, load_batch, _chunk_size(args.chunk_size))
        if args.command == "diagnose":
            return cli_runs.cmd_diagnose(args, load_batch, _chunk_size(args.chunk_size))
        if args.command == "demo":
            from gradflow import io
            from gradflow.demo import run_demo

            io.check_output_dir(args.out, "--out")
            return run_demo(args)
    except ValueError as e:
        print(f"gradflow: error: {e}", file=sys.stderr)
        return USAGE_ERROR
    except KeyboardInterrupt:
        print("gradflow: interrupted", file=sys.stderr)
        return 130
    raise AssertionError(args.command)


# --------------------------------------------------------------------------------------------
# gradflow sweep


def load_batch(args, n_in: int, n_out: int):
    """The (x, y) batch a command asked for: the first ``--batch`` training examples."""
    import jax

    from gradflow import data

    if args.batch < 1:
        raise ValueError(f"--batch must be >= 1, got {args.batch}")
    if args.data == "gaussian":
        kx, ky = jax.random.split(jax.random.key(1))
        x = np.asarray(data.gaussian_inputs(kx, args.batch, n_in, args.q))
        y = np.asarray(jax.random.normal(ky, (args.batch, n_out)), np.float32)
        return x, y, f"Gaussian inputs, q = {args.q}, {n_in} features; Gaussian targets"
    ds = data.load(args.data, args.data_dir)
    if args.batch > ds.x_train.shape[0]:
        raise ValueError(
            f"--batch {args.batch} exceeds the {ds.x_train.shape[0]} training examples of "
            f"{ds.source}; lower --batch"
        )
    if ds.x_train.shape[1] != n_in:
        raise ValueError(
            f"--data {args.data} has {ds.x_train.shape[1]} features but --widths starts with "
            f"{n_in}; use --widths {ds.x_train.shape[1]},..."
        )
    if ds.n_classes > n_out:
        raise ValueError(
            f"--data {args.data} has {ds.n_classes} classes but the last width is {n_out}; "
            f"end --widths with {ds.n_classes}"
        )
    x, y = ds.x_train[: args.batch], ds.y_train[: args.batch]
    return x, y, f"{ds.source}; first {args.batch} training examples"


def _chunk_size(text):
    if text is None or text == "auto":
        return text
    try:
        value = int(text)
    except ValueError:
        raise ValueError(f"--chunk-size must be a positive int or 'auto', got {text!r}") from None
    if value < 1:
        raise ValueError(f"--chunk-size must be >= 1, got {value}")
    return value


def cmd_sweep(args) -> int:
    import gradflow as gf

    cli_runs.check_common(args)
    chunk = _chunk_size(args.chunk_size)
    model, x, y, desc = cli_runs.build_model(args, load_batch)
    print(f"model: {desc}; loss {args.loss}; {args.seeds} seeds")
    resuming = bool(args.out) and (pathlib.Path(args.out) / "run.json").exists()
    # --out is also the run directory: a matching run resumes, a different one is refused
    norms = gf.sweep(
        gf.layer_grad_norms, model, args.seeds, x, y, loss=args.loss, chunk_size=chunk,
        memory=args.memory, devices=args.devices, quiet=args.quiet, run_dir=args.out,
        vmap_size=args.vmap_size, precision=args.precision,
    )  # fmt: skip
    if resuming:
        print(
            f"resumed the run in {args.out}: chunks finished earlier were loaded "
            "(how many: on stderr unless --quiet)"
        )
    print(format_layer_table(norms))
    if args.out:
        out = save_run(
            args.out,
            norms._asdict(),
            {
                "command": "sweep",
                **vars(args),
                "model": model.describe(),
                "description": desc,
            },
        )
        print(f"wrote {out / 'results.npz'} and {out / 'config.json'}")
    return 0


def _band(values) -> str:
    from gradflow.stats import summarize

    s = summarize(values)
    return f"{s.median:9.3g} [{s.q05:8.2g}, {s.q95:8.2g}]"


def format_layer_table(norms) -> str:
    """Per-layer table: median [5%, 95%] across seeds of bias, weight and hidden-unit gradient
    norms, the median ratio to the last layer, and how many seeds gave NaN/inf or exact zeros."""
    n_layers = norms.weights.shape[1]
    head = (
        f"{'layer':>5}  {'||dC/db^l|| median [5%, 95%]':>32}  {'||dC/dW^l||':>32}  "
        f"{'rms_x ||dC_x/dz^l||':>32}  {'b ratio to last':>15}  {'non-finite':>10}"
    )
    lines = [head, "-" * len(head)]
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = norms.biases / norms.biases[:, -1:]
    # The hidden-unit column is the tap named like the layer (the MLP taps every layer; other
    # models tap some layers, or none): "-" where a layer has no tap of its own.
    column = {name: i for i, name in enumerate(norms.hidden_names)}
    for l in range(n_layers):
        bad = int(np.sum(~np.isfinite(norms.weights[:, l]) | ~np.isfinite(norms.biases[:, l])))
        c = column.get(norms.names[l])
        hidden = _band(norms.preacts[:, c]) if c is not None else "-"
        lines.append(
            f"{l + 1:>5}  {_band(norms.biases[:, l]):>32}  {_band(norms.weights[:, l]):>32}  "
            f"{hidden:>32}  {np.nanmedian(ratio[:, l]):15.3g}  "
            f"{bad:>10}"
        )
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------
# gradflow theory


def _add_theory_parser(sub) -> None:
    p = sub.add_parser(
        "theory",
        help="mean-field predictions next to measurements over many seeds: per-layer gradient "
        "growth, Jacobian moments, depth scales, phase",
        description="Measure an MLP of [width] * (depth + 1) units, init gaussian(sigma_w2, "
        "sigma_b2), linear output, Gaussian inputs on the q* shell, and print the mean-field "
        "predictions (q*, chi1, depth scales, critical sigma_w2) next to the measured per-layer "
        "gradient growth and input-output Jacobian moments, with standard errors and a verdict.",
    )
    p.add_argument("--activation", default="tanh", help="hidden nonlinearity (default tanh)")
    p.add_argument("--sigma-w2", type=float, default=1.5, help="weight variance (default 1.5)")
    p.add_argument("--sigma-b2", type=float, default=0.05, help="bias variance (default 0.05)")
    p.add_argument("--depth", type=int, default=50, help="weight layers L (default 50)")
    p.add_argument("--width", type=int, default=512, help="units per layer (default 512)")
    p.add_argument("--seeds", type=int, default=256, help="networks measured (default 256)")
    p.add_argument("--batch", type=int, default=8, help="Gaussian inputs per network (default 8)")
    p.add_argument(
        "--jacobian-seeds",
        type=int,
        default=None,
        help="seeds that also give exact Jacobian moments, 1 input each (default min(32, seeds); "
        "0 skips them)",
    )
    p.add_argument(
        "--readout",
        default="linear",
        choices=("linear", "mse"),
        help="linear: C = <f(x), v> with v ~ N(0, I), a generic backward signal (default); mse: "
        "0.5 ||f(x) - y||^2 with Gaussian targets, as 'gradflow sweep --loss mse' (its last 3 "
        "layers are not fitted)",
    )
    p.add_argument(
        "--q1", type=float, default=None, help="first-layer pre-activation variance (default q*)"
    )
    p.add_argument(
        "--chunk-size", default=None, help="seeds per compiled call, or 'auto' (default ~256 MiB)"
    )
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--out", default=None, help="folder for results.npz and config.json")
    p.add_argument(
        "--phase-diagram",
        default=None,
        metavar="PATH",
        help="also save the (sigma_w2, sigma_b2) phase diagram with a few measured points "
        "(depth <= 20, width <= 256, 32 seeds each) to PATH (.png or .pdf)",
    )


def cmd_theory(args) -> int:
    import time

    from gradflow import io, meanfield

    if args.out is not None:
        io.check_output_dir(args.out, "--out")
    if args.phase_diagram:
        io.check_output_file(args.phase_diagram, "--phase-diagram", FIGURE_SUFFIXES)
    start = time.perf_counter()
    c = meanfield.compare(
        args.activation, args.sigma_w2, args.sigma_b2, args.depth, args.width, args.seeds,
        batch=args.batch, jacobian_seeds=args.jacobian_seeds, readout=args.readout, q1=args.q1,
        chunk_size=_chunk_size(args.chunk_size), quiet=args.quiet,
    )  # fmt: skip
    print(meanfield.format_comparison(c))
    print(f"({time.perf_counter() - start:.0f} s)")
    if args.out:
        arrays = {k: v for k, v in c._asdict().items() if isinstance(v, np.ndarray)}
        scalars = {k: v for k, v in c._asdict().items() if k not in arrays}
        out = save_run(args.out, arrays, {"command": "theory", **vars(args), "result": scalars})
        print(f"wrote {out / 'results.npz'} and {out / 'config.json'}")
    if args.phase_diagram:
        path = _phase_diagram(args, c)
        print(f"wrote {path}")
    return 0


def _phase_diagram(args, c) -> pathlib.Path:
    """Theory on a grid around the measured point, plus a few small measured points."""
    from gradflow import meanfield, plots, theory

    sb_max = max(0.5, 1.25 * args.sigma_b2)
    sw_max = max(4.0, 1.1 * args.sigma_w2)
    sigma_w2s, sigma_b2s = np.linspace(0.75, sw_max, 36), np.linspace(0.0, sb_max, 26)
    points = []
    for sb in sorted({args.sigma_b2, 0.4 * sb_max}):
        try:
            crit = theory.critical_sigma_w2(args.activation, sb)
        except ValueError:  # no order-to-chaos line here: measure across the plane instead
            crit = 0.5 * (1.0 + sw_max)
        for sw in (1.0, crit, 0.5 * (crit + sw_max), 0.9 * sw_max):
            if math.isfinite(sw) and sb < theory.q_star(args.activation, sw, sb) < math.inf:
                points.append((sw, sb))  # compare needs inputs of nonzero, finite length
    data = meanfield.phase_diagram_data(
        args.activation, sigma_w2s, sigma_b2s, points, measured=(c,),
        depth=min(args.depth, 20), width=min(args.width, 256), seeds=min(args.seeds, 32),
        batch=min(args.batch, 4), chunk_size=_chunk_size(args.chunk_size), quiet=args.quiet,
    )  # fmt: skip
    fig = plots.phase_diagram(
        data.sigma_w2s, data.sigma_b2s, data.chi1, critical=(data.critical_b2, data.critical_w2),
        points=(data.points_w2, data.points_b2, data.points_rate), activation=args.activation,
        title=f"{args.activation}: chi1 (colour) and measured gradient growth per layer (points)",
    )  # fmt: skip
    return plots.save(fig, args.phase_diagram)


def save_run(out_dir, arrays: dict, config: dict) -> pathlib.Path:
    """Write ``results.npz`` and ``config.json`` (config, versions, device, git commit) to
    ``out_dir``, each atomically (see :func:`gradflow.io.save_results`)."""
    from gradflow import io

    return io.save_results(out_dir, arrays, config)


if __name__ == "__main__":
    sys.exit(main())
