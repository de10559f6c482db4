"""The sweep engine: chunks of (grid point, seed) items, each vmapped in one ``jit``.

:func:`gradflow.sweep` and :func:`gradflow.grid_sweep` (module :mod:`gradflow.sweep`) check
their arguments and hand a :class:`_Job` to :func:`_execute`, which plans the chunks (the
default plan from one seed's traced cost, ``"auto"`` from compiled memory analyses, or a
stored run's split), dispatches each chunk asynchronously while the previous one is fetched,
and resumes from a run directory (:mod:`gradflow.io`). Items are (grid point, seed) pairs,
item ``p = g * n_seeds + s``; each chunk's items are sharded over a one-axis ``Mesh``.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable
from functools import partial
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.extend.core import jaxpr_as_fun
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from gradflow import io
from gradflow.memory import (
    SeedCost,
    check_results_fit,
    choose_chunk,
    default_budget,
    default_plan,
    parse_bytes,
    seed_cost,
)
from gradflow.models import Model
from gradflow.precision import current as current_precision
from gradflow.progress import Progress
from gradflow.seeds import as_keys, check_finite, positive_int

try:  # public from jax 0.6.1; no replication checks: the body has no collectives, and the
    # replayed seed program (jaxpr_as_fun) mixes per-device and replicated values freely
    from jax import shard_map as _public_shard_map

    _shard_map = partial(_public_shard_map, check_vma=False)
except ImportError:  # pragma: no cover
    from jax.experimental.shard_map import shard_map as _experimental_shard_map

    _shard_map = partial(_experimental_shard_map, check_rep=False)

AXIS = "seeds"
"""Name of the mesh axis the seeds (or flattened grid-point x seed pairs) are sharded over."""


def _validate_call(fn, model, args, kwargs) -> None:
    from gradflow import probes  # local: probes do not depend on sweep

    if fn in (probes.layer_grad_norms, probes.time_grad_norms) and len(args) >= 2:
        probes.validate(model, args[0], args[1], kwargs.get("loss", "mse"))
    check_finite(*args, names=["x", "y"] + [f"argument {i}" for i in range(2, len(args))])


# --------------------------------------------------------------------------------------------
# The engine: items are (grid point, seed) pairs, item p = g * n_seeds + s.


class _Job(NamedTuple):
    key_data: np.ndarray  # raw key data of the seeds, (n_seeds, ...)
    grid_shape: tuple[int, ...]  # () for a plain sweep
    grid_flat: dict[str, np.ndarray]  # name -> (n_points,) value at each flattened grid point
    args: tuple  # data, replicated over the mesh
    hyper: dict  # shared traced values, replicated
    static: dict  # static arguments of _run_chunk
    fingerprint: Callable[[], dict]  # what a run directory must match (see gradflow.io)
    cost: SeedCost  # one seed's result bytes, working set and FLOPs (memory.seed_cost)

    @property
    def n_items(self) -> int:
        return math.prod(self.grid_shape) * self.key_data.shape[0]


@partial(jax.jit, static_argnames=("fn", "model", "kwargs", "impl", "init_names"))
def _one_seed(key_data, item, args, hyper, *, fn, model, kwargs, impl, init_names):
    """One seed's result: its network drawn from ``key_data`` (and the init's hyperparameters
    among ``hyper`` and the grid ``item``), then ``fn(model, params, *args, ...)``."""
    values = {**hyper, **item}
    init_kw = {k: v for k, v in values.items() if k in init_names}
    fn_kw = {k: v for k, v in values.items() if k not in init_names}
    params = model.init(jax.random.wrap_key_data(key_data, impl=impl), **init_kw)
    return fn(model, params, *args, **fn_kw, **dict(kwargs))


class _SeedProgram:
    """:func:`_one_seed`'s closed jaxpr for one sweep: ``(key_data, item, args, hyper) ->
    result``, traced once from abstract inputs shaped like one seed's share of a chunk (shape,
    dtype and weak type, which decides type promotion).

    :func:`gradflow.memory.seed_cost` reads it, and every chunk evaluates it under ``vmap``
    instead of tracing the model's Python again. ``jit``'s trace cache holds the jaxpr: the
    same sweep under the same configuration (precision, x64, promotion rules...) finds the same
    jaxpr, so programs compare equal and ``_run_chunk`` finds its compiled chunks again; any
    change of configuration, or ``jax.clear_caches()``, traces afresh.
    """

    def __init__(self, key_data, item, args, hyper, **static):
        weak = lambda a: getattr(a, "weak_type", False)  # noqa: E731 (numpy: never weak)
        avals = jax.tree.map(
            lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, weak_type=weak(a)),
            (key_data, item, args, hyper),
        )
        traced = _one_seed.trace(*avals, **static)
        self.closed, self.in_tree = traced.jaxpr, jax.tree.structure(avals)
        self.out_tree = jax.tree.structure(traced.out_info)
        self.run = jaxpr_as_fun(self.closed)

    def __call__(self, key_data, item, args, hyper):
        leaves, tree = jax.tree.flatten((key_data, item, args, hyper))
        if tree != self.in_tree:
            raise AssertionError(f"sweep inputs {tree} differ from the traced {self.in_tree}")
        return jax.tree.unflatten(self.out_tree, self.run(*leaves))

    def __eq__(self, other):
        return isinstance(other, _SeedProgram) and self.closed is other.closed

    def __hash__(self):
        return id(self.closed)


@partial(jax.jit, static_argnames=("program", "mesh", "vmap_size"))
def _run_chunk(key_data, items, args, hyper, *, program, mesh, vmap_size):
    """One chunk: each device evaluates ``program`` on its own contiguous block of the chunk's
    items (``shard_map``), vmapped whole or as groups of ``vmap_size / devices`` seeds one
    after another (``lax.map``). Seeds never interact, so the devices never communicate: a
    data-dependent loop in one seed's program (a ``while_loop`` over windows, a Jacobi sweep)
    stops on its own device's seeds, with no cross-device reduction per iteration (under
    GSPMD it had one, and 8 simulated devices on 2 cores could deadlock in it)."""

    def block(key_data, items, args, hyper):  # this device's items; args, hyper replicated
        one = lambda k, item: program(k, item, args, hyper)  # noqa: E731
        local = key_data.shape[0]
        group = local if vmap_size is None else min(vmap_size // mesh.size, local)
        if group >= local:
            return jax.vmap(one)(key_data, items)
        # A scan over local / group vmapped groups (group divides local: see _step).
        return jax.lax.map(lambda ki: one(*ki), (key_data, items), batch_size=group)

    seeds, replicated = PartitionSpec(AXIS), PartitionSpec()
    specs = (seeds, seeds, replicated, replicated)
    return _shard_map(block, mesh=mesh, in_specs=specs, out_specs=seeds)(
        key_data, items, args, hyper
    )


def mesh_of(devices) -> Mesh:
    """The 1-d device mesh a sweep shards over: all local devices (None), the first k (an int), or
    a list of this process's devices; a ValueError naming ``--devices`` otherwise."""
    local = jax.local_devices()
    if devices is None:
        devices = local
    elif isinstance(devices, (int, np.integer)) and not isinstance(devices, bool):
        if not 1 <= devices <= len(local):
            raise ValueError(
                f"devices (--devices) must be 1..{len(local)}, the local devices of this "
                f"process, got {devices}"
            )
        devices = local[: int(devices)]
    else:
        devices = list(devices)
        foreign = [d for d in devices if d.process_index != jax.process_index()]
        if not devices or foreign:
            raise ValueError(
                f"devices must be a non-empty list of this process's devices, got {devices!r:.80}; "
                "multi-host sweeps run one sweep per process (docs/scale.md)"
            )
    return Mesh(np.array(devices), (AXIS,))


def _init_names(model) -> frozenset:
    if model.hyper_names:
        return frozenset(model.hyper_names)
    params = inspect.signature(model.init).parameters.values()
    return frozenset(p.name for p in params if p.kind is p.KEYWORD_ONLY)


def _prepare(fn, model, keys, args, kwargs, hyper, grid, devices, vmap_size=None) -> _Job:
    if not isinstance(model, Model):
        raise ValueError(
            "model must be a gradflow Model (gf.mlp, gf.from_apply, ...), got "
            f"{type(model).__name__}"
        )
    _validate_call(fn, model, args, kwargs)
    hyper, grid = dict(hyper or {}), dict(grid or {})
    init_names = _init_names(model)
    clash = (set(hyper) & set(grid)) | ((set(hyper) | set(grid)) & set(kwargs))
    if clash:
        raise ValueError(f"{sorted(clash)} given twice (in hyper, grid or keyword options)")
    to_fn = sorted((set(hyper) | set(grid)) - init_names)
    fn_params = _parameters(fn)
    if to_fn and fn_params is not None and not set(to_fn) <= fn_params:
        raise ValueError(
            f"{sorted(set(to_fn) - fn_params)} is neither a keyword of model.init "
            f"({', '.join(sorted(init_names)) or 'none'}) nor a parameter of {_name(fn)}"
        )
    values = {}
    for name, v in grid.items():
        v = np.asarray(jnp.asarray(v))  # the dtype jax would use (float32 unless x64)
        if v.ndim != 1 or v.size == 0:
            raise ValueError(f"grid[{name!r}] must be a non-empty 1-d array, got shape {v.shape}")
        values[name] = v
    seed_range = isinstance(keys, (int, np.integer)) and not isinstance(keys, bool)
    if seed_range:
        n_seeds = positive_int("the number of seeds", keys)
    else:
        keys = as_keys(keys)
        n_seeds = keys.shape[0]
    args = tuple(jnp.asarray(a) for a in args)
    hyper = {k: jnp.asarray(v) for k, v in hyper.items()}
    impl = jax.random.key_impl(jax.random.key(0) if seed_range else keys)
    one_key = np.asarray(jax.random.key_data(jax.random.key(0, impl=impl)))
    one_item = {k: v[0] for k, v in values.items()}
    kwargs = tuple(sorted(kwargs.items()))
    # One trace of one seed (jit's trace cache keeps it) sizes the results and the default
    # chunks, and is the program every chunk evaluates.
    program = _SeedProgram(
        one_key, one_item, args, hyper, fn=fn, model=model, kwargs=kwargs, impl=impl,
        init_names=init_names,
    )  # fmt: skip
    cost = seed_cost(program.closed)
    # Before drawing n keys: a billion seeds must be refused now, not after 12 GB of keys.
    check_results_fit(cost, n_seeds * math.prod(v.size for v in values.values()))
    keys = as_keys(keys)
    points = np.meshgrid(*values.values(), indexing="ij") if values else []
    grid_flat = {name: p.reshape(-1) for name, p in zip(values, points, strict=True)}
    mesh = mesh_of(devices)
    replicated = NamedSharding(mesh, PartitionSpec())
    args = jax.device_put(args, replicated)
    hyper = jax.device_put(hyper, replicated)
    key_data = np.asarray(jax.random.key_data(keys))
    if vmap_size is not None:
        vmap_size = _round_up(positive_int("vmap_size", vmap_size, " or None"), mesh.size)
    static = dict(program=program, mesh=mesh, vmap_size=vmap_size)
    config = model.describe()  # built-ins: their config; others: their functions' code

    def fingerprint() -> dict:  # hashing the data takes time: only a run_dir needs it
        return {
            "fn": _name(fn),
            "model": config,
            "kwargs": {k: repr(v) for k, v in kwargs},
            # Seeds 0..n-1 (an int): the count is its own field, so a run dir can be extended.
            **(
                {"keys": f"seeds fold_in(key(0), i), {impl}", "n_seeds": n_seeds}
                if seed_range and not values
                else {"keys": f"{n_seeds} {impl} keys, sha256 {io.hash_array(key_data)[:16]}"}
            ),
            "args": [f"{a.dtype}{list(a.shape)} sha256 {io.hash_array(a)[:16]}" for a in args],
            "hyper": {k: np.asarray(v).tolist() for k, v in hyper.items()},
            "grid": {k: v.tolist() for k, v in values.items()},
        }

    grid_shape = tuple(v.size for v in values.values())
    return _Job(key_data, grid_shape, grid_flat, args, hyper, static, fingerprint, cost)


def _parameters(fn) -> set | None:
    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):
        return None
    if any(p.kind is p.VAR_KEYWORD for p in params):
        return None
    return {p.name for p in params}


def _name(fn) -> str:
    return f"{getattr(fn, '__module__', '?')}.{getattr(fn, '__qualname__', repr(fn))}"


def _round_up(n: int, k: int) -> int:
    return -(-n // k) * k


def _specs(job: _Job, size: int):
    s = NamedSharding(job.static["mesh"], PartitionSpec(AXIS))
    kd = jax.ShapeDtypeStruct((size, *job.key_data.shape[1:]), job.key_data.dtype, sharding=s)
    items = {
        k: jax.ShapeDtypeStruct((size,), v.dtype, sharding=s) for k, v in job.grid_flat.items()
    }
    return kd, items, job.args, job.hyper


def _inputs(job: _Job, start: int, size: int):
    idx = np.minimum(np.arange(start, start + size), job.n_items - 1)  # pad with the last item
    n_seeds = job.key_data.shape[0]
    host = (job.key_data[idx % n_seeds], {k: v[idx // n_seeds] for k, v in job.grid_flat.items()})
    kd, items = jax.device_put(host, NamedSharding(job.static["mesh"], PartitionSpec(AXIS)))
    return kd, items, job.args, job.hyper


def _execute(job: _Job, chunk_size, memory, run_dir, quiet, kind):
    n, n_dev = job.n_items, job.static["mesh"].size
    if not (chunk_size is None or chunk_size == "auto"):
        positive_int("chunk_size", chunk_size, ", 'auto' or None")
    run = None
    if run_dir is not None:
        fingerprint = {"kind": kind, **job.fingerprint(), "chunk_size": chunk_size}
        fingerprint["precision"] = current_precision()
        if job.static["vmap_size"] is not None:  # absent by default: older run dirs still match
            fingerprint["vmap_size"] = job.static["vmap_size"]
        run = io.RunDir.open(run_dir, fingerprint)  # refuses a different sweep, before any work
        if run.stored_items is not None and run.stored_items < n:
            bar_note = f"extending {run_dir} from {run.stored_items} to {n} seeds"
        else:
            bar_note = None
    if chunk_size is None and job.static["vmap_size"] is None:  # the default: from the cost
        plan = default_plan(job.cost, n, n_dev, _budget(job, memory))
        job = job._replace(static={**job.static, "vmap_size": plan.vmap_size})
    else:
        plan = None
    runner = partial(_run_chunk, **job.static)
    bar = Progress(n, unit="seeds", desc=kind, quiet=quiet)
    if run is not None and run.chunk_size is not None:
        chunk = run.chunk_size  # resuming: the stored chunks define the split
    elif chunk_size == "auto":
        choice, runner = _auto_chunk(job, memory)
        chunk = choice.chunk_size
        bar.note(f"chunk_size auto: {chunk} ({choice.method}, ~{choice.predicted_bytes:.3g} B)")
    elif plan is not None:  # whole groups even below n: a seed's program never changes shape
        chunk = plan.chunk_size
    else:
        chunk = _round_up(min(n if chunk_size is None else int(chunk_size), n), n_dev)
        chunk = _round_up(chunk, _step(job, chunk))
    # Differs from chunk only for a run resumed elsewhere (another device count or vmap_size).
    padded = _round_up(chunk, _step(job, chunk))
    if run is not None:
        run.begin(chunk, n)
        if bar_note:
            bar.note(bar_note)
    counts = {"loaded": 0, "computed": 0}
    spec = jax.eval_shape(partial(_run_chunk, **job.static), *_specs(job, padded))
    specs, treedef = jax.tree.flatten(spec)
    results = [np.empty((n, *s.shape[1:]), s.dtype) for s in specs]

    def finish(i, leaves, computed):
        start = i * chunk
        count = min(chunk, n - start)
        leaves = [np.asarray(a)[:count] for a in leaves]  # gathers the shards to the host
        if computed and run is not None:
            run.save_chunk(i, leaves)
        for r, a in zip(results, leaves, strict=True):
            r[start : start + count] = a
        bar.update(count, computed=computed)
        counts["computed" if computed else "loaded"] += 1

    with bar:
        pending = None
        for i in range(-(-n // chunk)):
            if run is not None:
                count = min(chunk, n - i * chunk)
                expected = [((count, *s.shape[1:]), s.dtype) for s in specs]
                loaded = run.load_chunk(i, expected)
                if loaded is not None:
                    finish(i, loaded, computed=False)
                    continue
            out = runner(*_inputs(job, i * chunk, padded))  # dispatched asynchronously
            if pending is not None:  # fetch the previous chunk while this one runs
                finish(*pending, computed=True)
            pending = (i, jax.tree.leaves(out))
        if pending is not None:
            finish(*pending, computed=True)
    lead = (*job.grid_shape, job.key_data.shape[0])
    out = jax.tree.unflatten(treedef, [r.reshape(lead + r.shape[1:]) for r in results])
    if run is not None:
        bar.note(
            f"run_dir {run_dir}: loaded {counts['loaded']} chunk(s) from disk, computed "
            f"{counts['computed']}"
        )
        if run.stored_items is None or n >= run.stored_items:  # a subset keeps the full results
            run.write_results(out)
    return out


def _step(job: _Job, chunk: int) -> int:
    """What a chunk's size must be a multiple of: the vmap_size groups when the chunk runs as
    several (vmap_size is itself a multiple of the device count), else the device count."""
    group = job.static["vmap_size"]
    return group if group is not None and group < chunk else job.static["mesh"].size


def _auto_chunk(job: _Job, memory):
    """(ChunkChoice, compiled runner) for ``chunk_size="auto"``; see :func:`memory.choose_chunk`."""
    mesh = job.static["mesh"]
    return choose_chunk(  # _run_chunk.lower(...) shares jit's in-memory compilation cache
        lambda size: _run_chunk.lower(*_specs(job, size), **job.static).compile(),
        lambda size: jax.make_jaxpr(partial(_run_chunk, **job.static))(*_specs(job, size)),
        job.n_items,
        mesh.size,
        _budget(job, memory),
        multiple=job.static["vmap_size"] or mesh.size,
        seed_bound=job.cost.traced_bytes,
    )


def _budget(job: _Job, memory) -> int:
    """Per-device bytes: ``memory`` if given, else :func:`memory.default_budget`."""
    mesh = job.static["mesh"]
    if memory is None:
        return default_budget(mesh.devices.flat[0], mesh.size)
    return parse_bytes(memory)
