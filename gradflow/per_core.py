"""Batched LAPACK calls spread over the CPU cores: one call per core instead of one for all.

On CPU, XLA runs a batched factorisation (``jnp.linalg.qr``, ``svd``, ``eigh``) as one LAPACK
call that loops over the batch on a single core, while its matmuls use every core. Calls that do
not depend on each other run concurrently, so a batch split into one slice per core runs about
cores-times faster (2 cores, 64 QRs of 256 x 256: 196-225 ms as one call, 110-112 ms as two).
Each matrix goes through the same LAPACK routine either way: its factors are bit-identical.
(The code around them is compiled for other shapes, so a program's later float32 roundings may
differ in the last bit, as they do between chunk sizes; bit-identical at bench/run.py's sizes.)

:func:`per_core` wraps such a function so that under ``vmap`` (a sweep's seeds, a probe's
examples) its batch is split that way. It changes nothing without ``vmap``, off CPU (cuSOLVER
and TPU kernels batch on the device), with jaxlib 0.10 or later (which spreads a batched call
over the cores itself), or when a CPU device has fewer than two cores of its own (e.g. a sharded
sweep on simulated devices). Only the factorisations of the stable spectra use it (the QR folds
and the final float64 windows), which are not differentiated in reverse mode; the SVDs that
``jax.grad`` may go through (layer spectra, ``method="dense"``) stay plain ``jnp.linalg``.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from functools import partial

import jax
import jax.numpy as jnp
import jaxlib.version
from jax.custom_batching import custom_vmap


def _cores() -> int:
    try:
        return len(os.sched_getaffinity(0))  # respects taskset and CPU quotas set by affinity
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def _jaxlib_splits_itself() -> bool:
    """jaxlib 0.10 and later fan a batched CPU LAPACK call out over XLA's thread pool themselves
    (0.10.x deadlocks when two such calls run at once; pyproject.toml excludes it)."""
    return tuple(jaxlib.version.__version_info__[:2]) >= (0, 10)


MAX_PARTS = 8
"""Most slices per mapped axis: each slice is one more LAPACK call to compile (a depth-20 spectrum
compiled in 5.6 s with 2 slices, 8.7 s with 16), and ``sched_getaffinity`` does not see a
container's CPU quota."""


def parts(batch: int) -> int:
    """Slices to split a batch of ``batch`` factorisations into: one per core available to each
    CPU device, at most :data:`MAX_PARTS`; 1 off CPU, where jaxlib spreads the batch over the
    cores itself, or where a CPU device has fewer than two cores."""
    if jax.default_backend() != "cpu" or _jaxlib_splits_itself():
        return 1
    per_device = _cores() // max(1, jax.local_device_count("cpu"))
    return max(1, min(batch, per_device, MAX_PARTS))


def per_core(fn: Callable) -> Callable:
    """``fn`` (one array with any leading batch axes in, arrays with the same leading axes out),
    such that under ``vmap`` the mapped axis is cut into :func:`parts` slices, one call of ``fn``
    each.

    Nested ``vmap``: the innermost mapped axis of 2 or more is cut (into at most
    :func:`parts` slices); an axis of 1 leaves the cut to the next ``vmap`` out. Forward mode
    (``jax.jvp``) goes through, reverse mode (``jax.grad``) does not: ``custom_vmap`` has no
    transpose rule.
    """

    @custom_vmap
    def wrapped(a):
        return fn(a)

    @wrapped.def_vmap
    def _rule(axis_size, in_batched, a):
        del in_batched  # one argument, so it is the batched one
        k = parts(axis_size)
        if k == 1:
            out = wrapped(a)  # the axis is now an ordinary batch axis; an outer vmap may cut
        else:
            pieces = [fn(piece) for piece in jnp.array_split(a, k)]
            out = jax.tree.map(lambda *xs: jnp.concatenate(xs), *pieces)
        return out, jax.tree.map(lambda _: True, out)

    return wrapped


qr = per_core(jnp.linalg.qr)
"""``jnp.linalg.qr`` (reduced), its ``vmap`` batch one LAPACK call per core."""

qr_r = per_core(partial(jnp.linalg.qr, mode="r"))
"""The R factor of ``jnp.linalg.qr``, its ``vmap`` batch one LAPACK call per core."""

svd_values = per_core(partial(jnp.linalg.svd, compute_uv=False))
"""Singular values (``jnp.linalg.svd(a, compute_uv=False)``), its ``vmap`` batch one LAPACK call
per core (the float64 windows of :func:`gradflow.graded_svd.graded_log_svd`)."""
