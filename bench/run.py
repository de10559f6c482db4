"""gradflow benchmark (``make bench``): speed as ratios measured side by side in one run.

A shared machine is noisy, so nothing here is an absolute claim: every contender of a section
runs interleaved with the others, round by round, next to a plain float32 matmul, and the table
reports best-of-rounds times, their ratios and the fraction of the matmul's GFLOP/s. Sections
(``--only``, comma-separated):

  matmul   peak: a jitted 2048 x 2048 float32 matmul, 2 n^3 / time
  a        Nielsen scale: sigmoid [784, 30, 30, 30, 10], 1,000 MNIST digits, 1,000 seeds
  b        deep: tanh depth 50 width 256, Gaussian batch of 128, 64 seeds, init included
  memory   peak RSS of workload A at 256 vs 4,096 seeds, each in a fresh process
  devices  workload A on 1 vs 8 simulated CPU devices (an overhead check, not a speed-up)
  spectra  input-output Jacobian spectra: stable log singular values vs jacfwd + SVD
  train    gf.train.train recording every step / once an epoch / never, and a hand optax loop
           (bench/train_bench.py: Nielsen's net with SGD, a wide tanh net with Adam over seeds)

Each workload is timed as gradflow.sweep, as a Python loop of per-seed jitted calls, and (when
``import torch`` works) as torch.func (vmap of grad) and a PyTorch eager loop. Loops run a subset
of the seeds and are extrapolated linearly (the table says so). Results go to
bench/results.json (or ``--out``); bench/README.md explains the numbers.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import pathlib
import platform
import resource
import subprocess
import sys
import time
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np

import gradflow
from gradflow import data
from gradflow.nets import mlp_layers

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
import train_bench  # noqa: E402
import transformer_bench  # noqa: E402

HERE = pathlib.Path(__file__).resolve().parent
SECTIONS = ("matmul", "a", "b", "transformer", "memory", "devices", "spectra", "train")

FULL = dict(
    matmul_n=2048, rounds=5,
    a_examples=1000, a_seeds=1000, a_chunk=32, a_loop=100,
    b_widths=[256] * 51, b_batch=128, b_seeds=64, b_chunk=32, b_vmap=4, b_loop=8,
    mem_seeds=(256, 4096), mem_chunk=256, dev_seeds=256,
    spec_width=256, spec_depth=50, spec_seeds=16, spec_chunk=16, spec_batch=4,
    deep_depth=1000, deep_batch=2,
    t_depth=12, t_width=256, t_heads=4, t_seq=64, t_batch=16, t_seeds=16, t_chunk=8, t_rounds=2,
)  # fmt: skip
QUICK = dict(
    matmul_n=512, rounds=1,
    a_examples=100, a_seeds=32, a_chunk=8, a_loop=4,
    b_widths=[64] * 6, b_batch=16, b_seeds=8, b_chunk=4, b_vmap=2, b_loop=2,
    mem_seeds=(16, 64), mem_chunk=16, dev_seeds=16,
    spec_width=32, spec_depth=5, spec_seeds=4, spec_chunk=4, spec_batch=2,
    deep_depth=100, deep_batch=1,
    t_depth=2, t_width=32, t_heads=4, t_seq=8, t_batch=4, t_seeds=4, t_chunk=2, t_rounds=1,
)  # fmt: skip


# --------------------------------------------------------------------------------------------
# Timing


def block(out):
    """Wait for every array in a pytree (jax or numpy) and return it."""
    return jax.block_until_ready(out)


def round_times(fns: dict, rounds: int) -> dict[str, list[float]]:
    """Wall time of each (already warmed-up) function in each of ``rounds`` interleaved rounds,
    so that load from other processes falls on all contenders alike. A pause before each call
    lets the previous contender's idle worker threads (XLA's, OpenMP's) stop spinning first."""
    times = {name: [] for name in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            time.sleep(0.25)
            start = time.perf_counter()
            block(fn())
            times[name].append(time.perf_counter() - start)
    return times


def interleaved(fns: dict, rounds: int) -> dict[str, float]:
    """Best wall time of each function over :func:`round_times`' interleaved rounds."""
    return {name: min(t) for name, t in round_times(fns, rounds).items()}


def matmul_fn(n: int):
    """A warmed-up jitted n x n float32 matmul and its FLOP count 2 n^3."""
    a = jax.random.normal(jax.random.key(0), (n, n), jnp.float32)
    mm = jax.jit(jnp.matmul)
    block(mm(a, a))
    return (lambda: mm(a, a)), 2.0 * n**3


def gflops(flops: float, seconds: float) -> float:
    return flops / seconds / 1e9


# --------------------------------------------------------------------------------------------
# Workloads A and B


def workload(label, model, x, y, loss, source, cfg, key, use_torch) -> dict:
    """Time one per-seed probe (layer_grad_norms) every way; return the JSON record."""
    n_seeds, chunk, n_loop = cfg[f"{key}_seeds"], cfg[f"{key}_chunk"], cfg[f"{key}_loop"]
    widths = model.config.widths
    flops = 6.0 * x.shape[0] * sum(a * b for a, b in zip(widths[:-1], widths[1:], strict=False))
    print(
        f"\n{label}: {n_seeds} seeds, {6 * x.shape[0]} x {flops / 6 / x.shape[0]:,.0f} FLOPs/seed"
    )

    def sweep(n=n_seeds, chunk_size=chunk, vmap_size=None):
        return gradflow.sweep(
            gradflow.layer_grad_norms, model, n, x, y, loss=loss, chunk_size=chunk_size,
            vmap_size=vmap_size, quiet=True,
        )  # fmt: skip

    one_seed = jax.jit(lambda k: gradflow.layer_grad_norms(model, model.init(k), x, y, loss=loss))
    loop_keys = list(gradflow.seed_keys(n_loop))

    def loop():  # the naive way: one jitted call per seed
        return jax.tree.map(lambda *a: np.stack(a), *[one_seed(k) for k in loop_keys])

    peak, peak_flops = matmul_fn(cfg["matmul_n"])
    fns = {"matmul": peak, "gradflow.sweep": sweep, "jit loop": loop}
    scale = {"gradflow.sweep": 1.0, "jit loop": n_seeds / n_loop}
    block(sweep(chunk))  # compiles the chunk program
    # What a researcher gets without chunk or vmap arguments (memory.default_plan).
    block(sweep(chunk_size=None))
    fns["gradflow.sweep, defaults"] = lambda: sweep(chunk_size=None)
    scale["gradflow.sweep, defaults"] = 1.0
    if key == "b":  # one seed's matmuls fill the cores: groups of a few seeds (bench/README.md)
        grouped = lambda: sweep(vmap_size=cfg["b_vmap"])  # noqa: E731
        block(grouped())
        fns["gradflow.sweep, vmap_size"] = grouped
        scale["gradflow.sweep, vmap_size"] = 1.0
    swept, looped = sweep(), loop()
    check = {"sweep vs jit loop, max rel diff": _rel_diff(swept, looped, n_loop)}
    if use_torch:
        import torch_ref

        ref = torch_ref.Reference(
            widths, model.config.activation, model.config.init, x, y, loss,
            model.config.sigma_w2, model.config.sigma_b2,
        )  # fmt: skip
        fns["torch.func"] = lambda: ref.func(n_seeds, chunk)
        fns["torch eager loop"] = lambda: ref.eager(n_loop)
        scale.update({"torch.func": 1.0, "torch eager loop": n_seeds / n_loop})
        block(ref.func(chunk, chunk))  # warm-up
        block(ref.eager(1))
        params = [mlp_layers(model, model.init(k)) for k in gradflow.seed_keys(4)]
        theirs = ref.norms_at(params)
        ours = np.stack([swept.weights[:4], swept.biases[:4]], axis=-1).reshape(4, -1)
        check["torch.func vs gradflow (same weights), max rel diff"] = float(
            np.max(np.abs(theirs - ours) / np.abs(ours))
        )
    best = interleaved(fns, cfg["rounds"])
    peak_gflops = gflops(peak_flops, best.pop("matmul"))
    results = {}
    for name, seconds in best.items():
        total = seconds * scale[name]  # loops: extrapolated from n_loop seeds
        results[name] = {
            "seconds": total,
            "seeds_per_s": n_seeds / total,
            "gflops": gflops(flops * n_seeds, total),
            "fraction_of_peak": gflops(flops * n_seeds, total) / peak_gflops,
            "gradflow_speedup": total / (best["gradflow.sweep"]),
            "extrapolated_from_seeds": None if scale[name] == 1.0 else n_loop,
        }
    record = {
        "config": {**model.config.to_dict(), "batch": x.shape[0], "loss": loss, "data": source},
        "seeds": n_seeds, "chunk_size": chunk, "vmap_size": cfg.get(f"{key}_vmap"),
        "flops_per_seed": flops,
        "matmul_peak_gflops": peak_gflops, "results": results, "checks": check,
    }  # fmt: skip
    _print_workload(record)
    return record


def _rel_diff(swept, looped, n: int) -> float:
    worst = 0.0
    for a, b in zip(jax.tree.leaves(swept), jax.tree.leaves(looped), strict=True):
        a, b = np.asarray(a[:n], np.float64), np.asarray(b, np.float64)
        worst = max(worst, float(np.max(np.abs(a - b) / np.maximum(np.abs(b), 1e-30))))
    return worst


def _print_workload(record: dict) -> None:
    rows = [("", "time (s)", "seeds/s", "GFLOP/s", "of matmul", "gradflow speed-up")]
    labels = {
        "gradflow.sweep": f"gradflow.sweep, chunks of {record['chunk_size']}",
        "gradflow.sweep, defaults": "gradflow.sweep, defaults (no chunk/vmap arguments)",
        "gradflow.sweep, vmap_size": f"gradflow.sweep, chunks of {record['chunk_size']}, "
        f"vmap_size {record.get('vmap_size')}",
    }
    for name, r in record["results"].items():
        label = labels.get(name, name)
        if r["extrapolated_from_seeds"]:
            label += f" ({r['extrapolated_from_seeds']} seeds, extrapolated)"
        rows.append(
            (
                label,
                f"{r['seconds']:.2f}",
                f"{r['seeds_per_s']:.1f}",
                f"{r['gflops']:.1f}",
                f"{r['fraction_of_peak']:.0%}",
                f"{r['gradflow_speedup']:.2f}x",
            )  # fmt: skip
        )
    _table(rows)
    print(f"  matmul peak in this section: {record['matmul_peak_gflops']:.1f} GFLOP/s")
    for name, value in record["checks"].items():
        print(f"  check: {name} = {value:.1e}")


def _table(rows) -> None:
    widths = [max(len(str(r[i])) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        cells = [
            str(c).ljust(w) if i == 0 else str(c).rjust(w)
            for i, (c, w) in enumerate(zip(r, widths, strict=True))
        ]
        print("  " + "  ".join(cells))


def workload_a(cfg, use_torch):
    ds = data.load("mnist")
    n = cfg["a_examples"]
    x, y = jnp.asarray(ds.x_train[:n]), jnp.asarray(ds.y_train[:n])
    # Nielsen's sigmoid output layer with CrossEntropyCost: identity output + sigmoid_xent.
    model = gradflow.mlp([784, 30, 30, 30, 10], "sigmoid", "nielsen")
    label = f"Workload A (Nielsen): sigmoid [784, 30, 30, 30, 10], {n} MNIST digits"
    return workload(label, model, x, y, "sigmoid_xent", ds.source, cfg, "a", use_torch)


def workload_b(cfg, use_torch):
    widths, batch = cfg["b_widths"], cfg["b_batch"]
    model = gradflow.mlp(widths, "tanh", "gaussian", sigma_w2=1.0)
    x = data.gaussian_inputs(jax.random.key(1), batch, widths[0])
    y = data.gaussian_inputs(jax.random.key(2), batch, widths[-1])
    label = (
        f"Workload B (deep): tanh depth {len(widths) - 1} width {widths[0]}, gaussian "
        f"sigma_w2=1, batch {batch}, mse, init included"
    )
    source = "gradflow.data.gaussian_inputs, keys 1 (x) and 2 (targets)"
    return workload(label, model, x, y, "mse", source, cfg, "b", use_torch)


# --------------------------------------------------------------------------------------------
# Memory and simulated devices: fresh processes


def _child(kind: str, quick: bool, env=None, **kw) -> dict:
    cmd = [sys.executable, str(HERE / "run.py"), "--child", kind] + (["--quick"] if quick else [])
    for k, v in kw.items():
        cmd += [f"--{k}", str(v)]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, env=env)
    return json.loads(out.stdout.strip().splitlines()[-1])


def child_main(args) -> None:
    """Runs in a fresh process: workload A's sweep at ``--seeds`` (or the LAPACK timing); prints
    one JSON line."""
    if args.child == "lapack":
        return child_lapack(args)
    cfg = QUICK if args.quick else FULL
    ds = data.load("mnist")
    n = cfg["a_examples"]
    x, y = jnp.asarray(ds.x_train[:n]), jnp.asarray(ds.y_train[:n])
    model = gradflow.mlp([784, 30, 30, 30, 10], "sigmoid", "nielsen")

    def run():
        return gradflow.sweep(
            gradflow.layer_grad_norms, model, args.seeds, x, y, loss="sigmoid_xent",
            chunk_size=args.chunk, quiet=True,
        )  # fmt: skip

    out = run()
    seconds = None
    if args.child == "devices":  # time a second, compiled run
        start = time.perf_counter()
        out = run()
        seconds = time.perf_counter() - start
    status = (
        pathlib.Path("/proc/self/status").read_text() if os.path.exists("/proc/self/status") else ""
    )
    hwm = [int(line.split()[1]) * 1024 for line in status.splitlines() if line.startswith("VmHWM")]
    # VmHWM, not getrusage: Linux carries ru_maxrss across exec, so a child started by a large
    # parent reports the parent's size (we saw 3.9 GiB for both seed counts that way).
    maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print(json.dumps({
        "seeds": args.seeds,
        "peak_rss_bytes": hwm[0] if hwm else maxrss,
        "seconds": seconds,
        "devices": jax.device_count(),
        "weights": np.asarray(out.weights, np.float64).tolist(),
    }))  # fmt: skip


def child_lapack(args) -> None:
    """A vmapped scan of QR factorisations (the core of the stable spectrum under a sweep)."""
    n = args.seeds
    a = jax.random.normal(jax.random.key(0), (4, 50, n, n), jnp.float32)
    step = lambda c, m: (c + jnp.linalg.qr(m)[1][0, 0], None)  # noqa: E731
    qrs = jax.jit(jax.vmap(lambda a: jax.lax.scan(step, 0.0, a)[0]))
    block(qrs(a))
    start = time.perf_counter()
    block(qrs(a))
    print(json.dumps({"seconds": time.perf_counter() - start}))


def lapack_threads(cfg, quick) -> dict:
    """gradflow defaults OPENBLAS_NUM_THREADS to 1 (gradflow/__init__.py); compare with one
    thread per core, on an idle machine and beside one busy-looping process per core."""
    n, cores = cfg["spec_width"], os.cpu_count()
    runs = {}
    for load in (False, True):
        busy = [
            subprocess.Popen([sys.executable, "-c", "while True: pass"])
            for _ in range(cores if load else 0)
        ]
        try:
            for threads in ("1", str(cores)):
                env = {**os.environ, "OPENBLAS_NUM_THREADS": threads}
                label = f"{threads} thread(s), {'busy' if load else 'idle'} machine"
                runs[label] = _child("lapack", quick, env=env, seeds=n)["seconds"]
        finally:
            for p in busy:
                p.kill()
                p.wait()
    print(f"  LAPACK (jax's CPU QR calls scipy's OpenBLAS): vmapped scan of 4 x 50 QRs of {n}x{n}")
    for label, seconds in runs.items():
        print(f"    OPENBLAS_NUM_THREADS={label}: {seconds * 1e3:.0f} ms")
    return {"qr_scan_seconds": runs, "size": n, "cores": cores}


def memory(cfg, quick) -> dict:
    small, large = cfg["mem_seeds"]
    print(f"\nMemory: workload A, chunk {cfg['mem_chunk']}, fresh process per run")
    runs = [_child("memory", quick, seeds=n, chunk=cfg["mem_chunk"]) for n in (small, large)]
    default = [_child("memory", quick, seeds=n) for n in (small, large)]  # no chunk argument
    record = {
        "seeds": [small, large], "chunk_size": cfg["mem_chunk"],
        "peak_rss_bytes": [r["peak_rss_bytes"] for r in runs],
        "ratio": runs[1]["peak_rss_bytes"] / runs[0]["peak_rss_bytes"],
        "defaults_peak_rss_bytes": [r["peak_rss_bytes"] for r in default],
        "defaults_ratio": default[1]["peak_rss_bytes"] / default[0]["peak_rss_bytes"],
    }  # fmt: skip
    for r, d in zip(runs, default, strict=True):
        print(
            f"  {r['seeds']:>6} seeds: peak RSS {r['peak_rss_bytes'] / 2**20:8.1f} MiB "
            f"(defaults: {d['peak_rss_bytes'] / 2**20:8.1f} MiB)"
        )
    print(
        f"  ratio {record['ratio']:.3f}, defaults {record['defaults_ratio']:.3f} "
        f"({large // small}x the seeds; ~1 = flat)"
    )
    return record


def devices(cfg, quick) -> dict:
    n = cfg["dev_seeds"]
    print(f"\nSimulated devices: workload A, {n} seeds in one chunk, sharded over the devices")
    runs = {}
    for count in (1, 8):
        env = dict(os.environ)
        env["XLA_FLAGS"] = (
            env.get("XLA_FLAGS", "") + f" --xla_force_host_platform_device_count={count}"
        ).strip()
        runs[count] = _child("devices", quick, env=env, seeds=n, chunk=n)
    w1, w8 = np.asarray(runs[1]["weights"]), np.asarray(runs[8]["weights"])
    record = {
        "seeds": n,
        "seconds": {str(k): r["seconds"] for k, r in runs.items()},
        "ratio_8_over_1": runs[8]["seconds"] / runs[1]["seconds"],
        "max_rel_diff": float(np.max(np.abs(w8 - w1) / np.abs(w1))),
    }
    print(f"  1 device: {runs[1]['seconds']:.2f} s   8 devices: {runs[8]['seconds']:.2f} s")
    print(
        f"  8/1 time ratio {record['ratio_8_over_1']:.2f}: {os.cpu_count()} CPU cores carry all "
        "the simulated devices, so this checks the sharding overhead, not a speed-up; results "
        f"agree to {record['max_rel_diff']:.1e}"
    )
    return record


# --------------------------------------------------------------------------------------------
# Jacobian spectra


def jacfwd_svd(model, params, x):
    """The textbook way: the dense input-output Jacobian by forward mode, then its SVD."""
    jac = jax.vmap(jax.jacfwd(lambda xi: model.apply(params, xi[None])[0]))(x)
    return jnp.log(jnp.linalg.svd(jac, compute_uv=False))


SPECTRA_TARGETS = {"exact": 3.0, "lyapunov": 1.5}
"""The stable methods timed against jacfwd + SVD, and the issue's bound on each time ratio."""


def spectra_row(width, depth, seeds, chunk, batch, rounds) -> dict:
    """Time the stable spectra against jacfwd + SVD at one width: interleaved rounds (load from
    other processes falls on all alike), median seconds, and each method's ratio to the dense
    time of the same round."""
    model = gradflow.mlp([width] * (depth + 1), "tanh", "gaussian", sigma_w2=1.5)
    x = data.gaussian_inputs(jax.random.key(3), batch, width)
    stable = gradflow.jacobian_singular_values
    ways = {m: (stable, dict(log=True, method=m)) for m in SPECTRA_TARGETS}
    ways["jacfwd + svd"] = (jacfwd_svd, {})

    def run(name, n=seeds):
        fn, kw = ways[name]
        return block(gradflow.sweep(fn, model, n, x, chunk_size=chunk, quiet=True, **kw))

    values = {name: np.asarray(run(name)) for name in ways}  # compiles; the values for below
    times = round_times({name: partial(run, name) for name in ways}, rounds)
    dense = np.asarray(times["jacfwd + svd"])
    exact, reference = values["exact"], values["jacfwd + svd"]
    return {
        "width": width, "depth": depth, "seeds": seeds, "inputs": batch, "rounds": rounds,
        "seconds": {k: float(np.median(v)) for k, v in times.items()},
        "ratio_to_dense": {
            m: float(np.median(np.asarray(times[m]) / dense)) for m in SPECTRA_TARGETS
        },
        "top10_max_abs_diff": float(np.max(np.abs(exact[..., :10] - reference[..., :10]))),
        "smallest_log_sv": {"exact": float(np.median(exact[..., -1])),
                            "jacfwd + svd": float(np.median(reference[..., -1]))},
    }  # fmt: skip


def spectra(cfg, quick) -> dict:
    width, depth, n, chunk = (
        cfg["spec_width"],
        cfg["spec_depth"],
        cfg["spec_seeds"],
        cfg["spec_chunk"],
    )
    rounds = min(cfg["rounds"], 3)
    print(
        f"\nSpectra: log singular values of df/dx, tanh depth {depth} sigma_w2=1.5, Gaussian "
        f"weights; median of {rounds} interleaved rounds, ratio to jacfwd + SVD in the same round"
    )
    # Width 2x: fewer seeds (a Jacobian costs ~8x), same inputs per seed.
    sizes = [(width, n, chunk), (2 * width, max(1, n // 8), max(1, n // 8))]
    rows = [spectra_row(w, depth, s, c, cfg["spec_batch"], rounds) for w, s, c in sizes]
    table = [("width, Jacobians", "exact (s)", "lyapunov (s)", "jacfwd+svd (s)", "exact/dense",
              "lyapunov/dense", "top-10 diff", "smallest log sigma: exact, dense")]  # fmt: skip
    for r in rows:
        t, q, low = r["seconds"], r["ratio_to_dense"], r["smallest_log_sv"]
        table.append((
            f"{r['width']}, {r['seeds']} x {r['inputs']}", f"{t['exact']:.2f}",
            f"{t['lyapunov']:.2f}", f"{t['jacfwd + svd']:.2f}", f"{q['exact']:.2f}x",
            f"{q['lyapunov']:.2f}x", f"{r['top10_max_abs_diff']:.1e}",
            f"{low['exact']:.1f}, {low['jacfwd + svd']:.1f}",
        ))  # fmt: skip
    _table(table)
    print(
        "  top-10 diff: max |log sigma| difference, exact vs jacfwd+svd; the dense smallest value "
        "is float32's rounding floor, exact's the true one"
    )
    main = rows[0]  # checked against SPECTRA_TARGETS by targets(), printed at the end
    record = {
        **main,
        "jacfwd_over_exact": 1 / main["ratio_to_dense"]["exact"],
        "wide": rows[1],
    }
    record["deep"] = deep_spectrum(cfg, width)
    record["openblas_threads"] = lapack_threads(cfg, quick)
    return record


def deep_spectrum(cfg, width) -> dict:
    """One seed at depth 1,000, where the dense product is no longer usable."""
    depth = cfg["deep_depth"]
    model = gradflow.mlp([width] * (depth + 1), "tanh", "gaussian", sigma_w2=1.5)
    x = data.gaussian_inputs(jax.random.key(3), cfg["deep_batch"], width)
    start = time.perf_counter()
    params = model.init(gradflow.seed_keys(1)[0])  # eager: a depth-1000 jit compiles slowly
    init_s = time.perf_counter() - start
    out, times = {}, {}
    for method in ("exact", "dense"):
        f = lambda m=method: gradflow.jacobian_singular_values(model, params, x, log=True, method=m)  # noqa: E731
        block(f())  # compile
        start = time.perf_counter()
        out[method] = np.asarray(f())
        times[method] = time.perf_counter() - start
    exact, dense = out["exact"], out["dense"]
    record = {
        "depth": depth, "inputs": x.shape[0], "init_seconds": init_s, "seconds": times,
        "exact_finite": bool(np.all(np.isfinite(exact))),
        "dense_nonfinite": int(np.sum(~np.isfinite(dense))),
        "log_sv_range": {"exact": [float(exact.max()), float(exact.min())],
                         "dense": [float(np.nanmax(dense)), float(np.nanmin(dense))]},
    }  # fmt: skip
    print(
        f"  depth {depth}, 1 seed x {x.shape[0]} inputs: exact {times['exact']:.2f} s "
        f"(all finite: {record['exact_finite']}), log sigma from {exact.max():.1f} to "
        f"{exact.min():.1f}; dense product {times['dense']:.2f} s with "
        f"{record['dense_nonfinite']} non-finite values, log sigma from "
        f"{np.nanmax(dense):.1f} to {np.nanmin(dense):.1f}"
    )
    return record


# --------------------------------------------------------------------------------------------


def describe() -> dict:
    device = jax.devices()[0]
    cpu = ""
    if os.path.exists("/proc/cpuinfo"):
        names = [
            l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")
        ]
        cpu = names[0] if names else ""
    try:
        import torch

        torch_version = torch.__version__
    except ImportError:
        torch_version = None
    return {
        "device_kind": device.device_kind, "platform": device.platform,
        "device_count": jax.device_count(), "cpu_count": os.cpu_count(), "cpu_model": cpu,
        "jax": jax.__version__, "jaxlib": jax.lib.__version__, "numpy": np.__version__,
        "torch": torch_version, "python": platform.python_version(),
        "gradflow": gradflow.__version__,
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "loadavg_start": list(os.getloadavg()),
    }  # fmt: skip


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="small sizes: a smoke test")
    parser.add_argument("--only", default=",".join(SECTIONS), help=f"subset of {SECTIONS}")
    parser.add_argument("--no-torch", action="store_true", help="skip the PyTorch references")
    parser.add_argument("--out", default=str(HERE / "results.json"), help="results JSON path")
    parser.add_argument("--child", choices=("memory", "devices", "lapack"), help=argparse.SUPPRESS)
    parser.add_argument("--seeds", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--chunk", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        return child_main(args)
    only = [s.strip() for s in args.only.split(",") if s.strip()]
    unknown = set(only) - set(SECTIONS)
    if unknown:
        parser.error(f"--only: unknown section(s) {sorted(unknown)}; choose from {SECTIONS}")
    cfg = QUICK if args.quick else FULL
    use_torch = not args.no_torch and _torch_available()
    started = time.perf_counter()
    results = {"meta": {**describe(), "quick": args.quick, "sections": only}}
    meta = results["meta"]
    print(
        f"gradflow bench: {meta['platform']} ({meta['device_kind']}, {meta['cpu_count']} cores), "
        f"jax {meta['jax']}, torch {meta['torch'] or 'not installed'}, {meta['date']}, "
        f"load average {meta['loadavg_start'][0]:.1f}"
    )
    if "matmul" in only:
        fn, flops = matmul_fn(cfg["matmul_n"])
        seconds = interleaved({"matmul": fn}, 10)["matmul"]
        results["matmul"] = {
            "n": cfg["matmul_n"],
            "seconds": seconds,
            "gflops": gflops(flops, seconds),
        }
        print(
            f"\nMatmul {cfg['matmul_n']}^2 float32, best of 10: {results['matmul']['gflops']:.1f}"
            " GFLOP/s"
        )
    sections = {
        "a": ("workload_a", lambda: workload_a(cfg, use_torch)),
        "b": ("workload_b", lambda: workload_b(cfg, use_torch)),
        "transformer": (
            "transformer",
            lambda: transformer_bench.workload(
                cfg, interleaved, matmul_fn, gflops, block, use_torch
            ),
        ),
        "memory": ("memory", lambda: memory(cfg, args.quick)),
        "devices": ("devices", lambda: devices(cfg, args.quick)),
        "spectra": ("spectra", lambda: spectra(cfg, args.quick)),
        "train": ("train", lambda: train_bench.main(["--quick"] if args.quick else [])),
    }
    for name, (key, run) in sections.items():
        if name in only:
            results[key] = run()
    results["targets"] = targets(results)
    meta["loadavg_end"] = list(os.getloadavg())
    meta["seconds"] = time.perf_counter() - started
    out = pathlib.Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=1))
    print(f"\n{meta['seconds']:.0f} s in all; results in {out}")
    return results


def targets(results: dict) -> dict:
    """The issue's speed targets (issue 2: workloads A and B; issue 4: flat memory), checked
    against this run and printed as one line each. Absent sections are skipped."""
    checks = {}
    if "workload_a" in results:
        r = results["workload_a"]["results"]
        frac = r["gradflow.sweep"]["fraction_of_peak"]
        checks["A: >= 60% of the matmul peak"] = (frac >= 0.6, f"{frac:.0%}")
        frac = r["gradflow.sweep, defaults"]["fraction_of_peak"]
        checks["A with defaults: >= 85% of the matmul peak"] = (frac >= 0.85, f"{frac:.0%}")
        if "torch.func" in r:
            speedup = r["torch.func"]["gradflow_speedup"]
            checks["A: >= 1.5x faster than torch.func"] = (speedup >= 1.5, f"{speedup:.2f}x")
    if "workload_b" in results:
        r = results["workload_b"]["results"]
        frac = max(v["fraction_of_peak"] for k, v in r.items() if k.startswith("gradflow.sweep"))
        checks["B: >= 50% of the matmul peak, init included"] = (frac >= 0.5, f"{frac:.0%}")
        d = r["gradflow.sweep, defaults"]
        ok = d["fraction_of_peak"] >= 0.55 and d["seconds"] < r["jit loop"]["seconds"]
        checks["B with defaults: >= 55% of the peak and faster than the jit loop"] = (
            ok,
            f"{d['fraction_of_peak']:.0%}, {r['jit loop']['seconds'] / d['seconds']:.2f}x the loop",
        )
    if "transformer" in results:
        ratio = results["transformer"]["gradflow_over_hand"]
        name = "transformer: gradflow within 1.1x of hand-written jax.vmap(jax.grad)"
        checks[name] = (ratio <= 1.1, f"{ratio:.2f}x")
        r = results["transformer"]["results"]
        if "torch.func" in r:
            speedup = r["torch.func"]["ratio_to_gradflow"]
            checks["transformer: faster than torch.func"] = (speedup > 1.0, f"{speedup:.2f}x")
    if "spectra" in results:
        r = results["spectra"]
        for method, target in SPECTRA_TARGETS.items():
            ratio = r["ratio_to_dense"][method]
            name = f"spectra: {method} <= {target}x jacfwd + SVD, width {r['width']}"
            checks[name] = (ratio <= target, f"{ratio:.2f}x")
    if "train" in results:
        for name, row in results["train"].items():
            ratio = row["record / no record"]
            checks[f"train ({name}): recording every step <= 1.10x not recording"] = (
                ratio <= 1.10,
                f"{ratio:.2f}x",
            )
    if "memory" in results:
        ratio = results["memory"]["ratio"]
        seeds = results["memory"]["seeds"]
        name = f"memory: peak RSS at {seeds[1]} seeds <= 1.1x that at {seeds[0]}"
        checks[name] = (ratio <= 1.1, f"{ratio:.2f}x")
        ratio = results["memory"]["defaults_ratio"]
        checks[name.replace("memory:", "memory with defaults:")] = (ratio <= 1.1, f"{ratio:.2f}x")
    if checks:
        print("\nTargets")
        for name, (ok, value) in checks.items():
            print(f"  {'met    ' if ok else 'NOT MET'}  {name}: {value}")
    return {name: {"met": ok, "value": value} for name, (ok, value) in checks.items()}


def _torch_available() -> bool:
    try:
        import torch  # noqa: F401
    except ImportError:
        return False
    sys.path.insert(0, str(HERE))  # for torch_ref
    return True


if __name__ == "__main__":
    main()
