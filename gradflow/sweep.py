"""Sweeps over random seeds and hyperparameter grids: ``vmap`` inside one ``jit``, in chunks.

Seed i is ``jax.random.fold_in(jax.random.key(0), i)``: seed 17 is the same network whether 32 or
10,000 seeds run, whichever chunk it lands in and whichever device computes it.

Scale (docs/scale.md): each chunk's seeds are sharded over the local devices (a one-axis
``Mesh`` named ``"seeds"``); ``grid_sweep`` flattens (grid point, seed) pairs into the same
chunks, with the swept values traced; ``chunk_size="auto"`` sizes chunks from the compiled
function's ``memory_analysis()``; ``run_dir=`` makes a sweep resumable (:mod:`gradflow.io`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from gradflow.memory import ChunkChoice
from gradflow.models import Model
from gradflow.precision import matmul_precision
from gradflow.sweep_engine import _auto_chunk, _execute, _prepare


def sweep(
    fn: Callable[..., Any],
    model: Model,
    keys,
    *args,
    chunk_size: int | str | None = None,
    vmap_size: int | None = None,
    hyper: dict[str, Any] | None = None,
    devices=None,
    memory: int | str | None = None,
    run_dir=None,
    quiet: bool = False,
    precision: str = "highest",
    **kwargs,
):
    """Compute ``fn(model, model.init(key_i), *args, **kwargs)`` for every seed, vmapped and jitted.

    Args:
      fn: a per-seed function such as :func:`gradflow.layer_grad_norms`, returning a pytree of
        arrays.
      model: the :class:`Model` whose ``init`` draws each seed's parameters.
      keys: an int n (seeds 0..n-1, see :func:`seed_keys`) or an array of keys.
      *args: arrays shared by all seeds (data), passed to ``fn`` as traced arguments.
      chunk_size: seeds per compiled call: an int, ``"auto"`` (the largest chunk whose compiled
        program fits ``memory``, see :func:`auto_chunk_size`) or None (the default, below).
        Memory grows with the chunk, not with the number of seeds; chunks are rounded up to a
        multiple of the device count and the last one is padded, so one compilation serves all.
      vmap_size: seeds vectorised together inside a chunk. With k, a chunk runs as groups of k
        vmapped seeds one after another inside the same compiled program (``jax.lax.map``),
        and chunks are rounded up to a multiple of k (k itself to a multiple of the device
        count). With ``chunk_size`` given and ``vmap_size=None``: the whole chunk at once.
        Default (both None): chosen from one trace of one seed's program, nothing compiled
        (:func:`gradflow.memory.default_plan`): groups of the power of two nearest 8 GFLOP of
        matmuls in one step (the whole program, or one training step of ``gf.train.train``;
        Nielsen's nets: 64 seeds; depth 50 width 256: 4), at most 64 GFLOP of the whole run,
        shrunk to fit ``memory``, eight groups a chunk. The group depends on the program only,
        so a seed's numbers are bit-identical whatever the number of seeds; other group sizes
        agree to float32 rounding (XLA picks matmul kernels by shape).
      hyper: traced values shared by all seeds, so new values do not recompile. Names that
        ``model.init`` accepts (``sigma_w2``, ``sigma_b2``) go to init, others (e.g. ``lr``) to
        ``fn`` as keyword arguments.
      devices: the devices each chunk is sharded over: None (all local devices), an int k (the
        first k) or a list of this process's devices. Results equal a one-device run.
      memory: the per-device budget for ``chunk_size="auto"`` and the default split: bytes or a
        string like ``"4GiB"`` (default: 80% of an accelerator's memory, or on CPU half the RAM
        split across the devices).
      run_dir: a folder that makes the sweep resumable: each finished chunk is saved there
        atomically, a re-run skips verified chunks, and a folder holding a different sweep is
        refused with a ValueError. Results go to ``results.npz`` and ``config.json``.
      quiet: no progress bar and no notes (a bar is drawn only on a terminal or in Jupyter).
      precision: float32 matmul precision (``jax.default_matmul_precision``): ``"highest"``
        (default: full float32 on every backend, so a seed's numbers match across CPU, GPU
        and TPU to float32 rounding), ``"high"`` (3 bfloat16 passes or TF32: faster on
        accelerators, ~3 fewer digits) or ``"default"`` (the backend's fastest: TF32 on NVIDIA,
        one bfloat16 pass on TPU). A run directory records it. CPU computes full float32 for all.
      **kwargs: static options of ``fn`` (e.g. ``loss="mse"``); must be hashable.

    Returns:
      ``fn``'s pytree with numpy leaves and a leading seed axis of length n.

    Multi-host (``jax.distributed.initialize``): a sweep runs on its process's local devices. Give
    each process its own seeds and ``run_dir`` and gather the results (docs/scale.md).
    """
    precision = matmul_precision(precision)  # checked before any work
    with precision:  # the seed's program is traced in _prepare: at the chosen precision
        job = _prepare(fn, model, keys, args, kwargs, hyper, None, devices, vmap_size)
        return _execute(job, chunk_size, memory, run_dir, quiet, "sweep")


def grid_sweep(
    fn: Callable[..., Any],
    model: Model,
    keys,
    *args,
    grid: dict[str, Any],
    chunk_size: int | str | None = None,
    vmap_size: int | None = None,
    hyper: dict[str, Any] | None = None,
    devices=None,
    memory: int | str | None = None,
    run_dir=None,
    quiet: bool = False,
    precision: str = "highest",
    **kwargs,
):
    """:func:`sweep` over seeds x a hyperparameter grid, as one compiled function.

    ``grid={"sigma_w2": a1, "sigma_b2": a2}`` runs every seed at every point of the Cartesian
    grid a1 x a2. The values are traced, never closed over, so the whole grid is one compilation;
    names that ``model.init`` accepts go to init, others (e.g. a learning rate) go to ``fn`` as
    keyword arguments. The (grid point, seed) pairs are flattened and chunked like seeds, so a
    64 x 64 phase diagram x 32 seeds runs in bounded memory. Seed i is the same network at every
    grid point (``sigma_w2`` only rescales it).

    Args:
      grid: name -> 1-d array of values (n_1,), (n_2,), ...
      fn, model, keys, args, chunk_size, vmap_size, hyper, devices, memory, run_dir, quiet,
        precision, kwargs: as for :func:`sweep` (``chunk_size`` and ``vmap_size`` count
        (grid point, seed) pairs).

    Returns:
      ``fn``'s pytree with numpy leaves of leading shape (n_1, n_2, ..., n_seeds).

    References: Poole et al. 2016 (arXiv:1606.05340) and Schoenholz et al. 2017
    (arXiv:1611.01232) for the (sigma_w2, sigma_b2) phase diagram.
    """
    if not isinstance(grid, dict) or not grid:
        raise ValueError(f"grid must be a non-empty dict name -> 1-d values, got {grid!r:.80}")
    precision = matmul_precision(precision)  # checked before any work
    with precision:  # the seed's program is traced in _prepare: at the chosen precision
        job = _prepare(fn, model, keys, args, kwargs, hyper, grid, devices, vmap_size)
        return _execute(job, chunk_size, memory, run_dir, quiet, "grid_sweep")


def auto_chunk_size(
    fn, model, keys, *args, memory=None, devices=None, hyper=None, grid=None,
    precision: str = "highest", **kwargs,
) -> ChunkChoice:  # fmt: skip
    """The chunk ``sweep(..., chunk_size="auto", memory=memory)`` would use (same arguments,
    so the same program: ``precision`` as for :func:`sweep`).

    Compiles the chunk function at two small chunk sizes, fits bytes = a + b * chunk to their
    ``memory_analysis()`` (arguments + outputs + temporaries), and takes the largest multiple of
    the device count within budget, capped at the number of seeds (times grid points). Default
    budget: 80% of an accelerator's memory, or on CPU half the RAM split across the devices.
    """
    with matmul_precision(precision):
        job = _prepare(fn, model, keys, args, kwargs, hyper, grid, devices)
        return _auto_chunk(job, memory)[0]
