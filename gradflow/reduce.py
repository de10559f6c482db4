"""Sums over axes that stay fast on XLA:CPU: the statistics' reductions, chosen by length.

The probes reduce squares of parameters, gradients and hidden units to one number per layer or
per example. On XLA:CPU how a sum is written decides its speed more than its length does
(bench/train_bench.py and bench/run.py measure the cases, 2 CPU cores):

* a single-operand sum over 32 or more elements is rewritten as a tree of partial sums over a
  materialised copy of its input (for accuracy), and a variadic one (several arrays summed in
  one ``lax.reduce``) is one chain of dependent adds, about 2 ns an element: strict float order
  forbids reassociating it;
* a sum of blocks of 8 x 8 elements, added as vectors into partial sums, runs at memory speed
  (:func:`lane_sums`): 5x faster than the variadic chain on a 784 x 30 leaf, 50x on rows of 64.

So :func:`sums` picks by the number n of elements each output sums: n >= 64 blocks of 64
(:func:`lane_sums`), with the kept axes moved to the front first where they are not leading (a
feature-major (n, batch) input summed per example reads the rows of its transpose: XLA cancels
the transpose of an ``x.T`` and otherwise copies once, where a sum down the columns went through
a transposed copy of the squares every time); otherwise one variadic reduction (short sums as
single-operand ones read each array once more: workload A of bench/run.py ran 1.2x slower with
them). Every path is exact up to float rounding in a different order.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
from jax import lax

LANES = 8
"""Width of the partial sums :func:`lane_sums` keeps (one float32 AVX register)."""


def sums(*arrays, axes) -> tuple[jax.Array, ...]:
    """Sums over ``axes`` of equal-shape arrays, one per array, by the fastest way for the
    length (module docstring). ``axes=()`` returns the arrays."""
    if not axes:
        return arrays
    ndim = arrays[0].ndim
    n_keep = ndim - len(axes)
    if math.prod(arrays[0].shape[a] for a in axes) >= LANES * LANES:
        kept = [a for a in range(ndim) if a not in axes]
        if kept != list(range(n_keep)):  # e.g. per example of (features, batch): rows of x.T
            arrays = tuple(jnp.moveaxis(a, kept, range(n_keep)) for a in arrays)
        return lane_sums(arrays, n_keep)
    # A single array is summed beside a ones array: a variadic reduction is never rewritten.
    operands = arrays if len(arrays) > 1 else (*arrays, jnp.ones_like(arrays[0]))
    init = tuple(jnp.zeros((), a.dtype) for a in operands)
    add = lambda xs, ys: tuple(a + b for a, b in zip(xs, ys, strict=True))  # noqa: E731
    return tuple(lax.reduce(operands, init, add, tuple(axes)))[: len(arrays)]


def square_sums(arrays, keep: int = 0) -> tuple[jax.Array, ...]:
    """Sums of squares of equal-shape arrays over every axis after the first ``keep`` (a stacked
    leaf's layers with ``keep=1``), all read in one pass by :func:`sums`; with no axis left, the
    squares. Squares of different dtypes are first promoted to one (one reduction, one dtype)."""
    squares = [jnp.square(a) for a in arrays]
    if len({q.dtype for q in squares}) > 1:
        dtype = functools.reduce(jnp.promote_types, [q.dtype for q in squares])
        squares = [q.astype(dtype) for q in squares]
    return sums(*squares, axes=tuple(range(keep, squares[0].ndim)))


def lane_sums(arrays, n_keep: int) -> tuple[jax.Array, ...]:
    """Sums over all axes after the first ``n_keep``, as levels of :data:`LANES` x :data:`LANES`
    blocks.

    Each array, flattened to ``(*kept, n)``, is read as ``(*kept, n // 64, 8, 8)`` and summed
    over its second-to-last axis: blocks of 8 rows added as vectors into ``(*kept, r, 8)``
    partial sums (r = n // 64). While r > 64, the partials are summed the same way again: their
    first q = 8 * ((r - 1) // 8) rows in blocks of 8 into ``(*kept, q // 8, 8)``, the other 1 to
    8 rows added at the end. The last at most 512 partials of each output are one sum, which
    XLA:CPU rewrites into a reduce-window run as a scalar chain (~1 element a nanosecond): over
    all 2,936 partials of a 784 x 30 leaf that chain took longer than the first level (the sum:
    1.95 -> 1.08 us with the second level; a level down to 8 rows more was 3-6% slower in
    ``train``'s full-batch recording step on 2 cores, though not on 1). The left-out rows make
    two operations read each level: XLA then writes it out instead of fusing it into the next
    one and re-running it element by element. Barriers keep XLA's simplifier from folding the
    levels back into one sum. The last ``n % 64`` elements are one variadic reduction
    (:func:`sums`).
    """
    kept = arrays[0].shape[:n_keep]
    n = math.prod(arrays[0].shape[n_keep:])
    block = LANES * LANES
    m = n - n % block
    flat = [a.reshape(*kept, n) for a in arrays]
    partial = lax.optimization_barrier(
        tuple(jnp.sum(f[..., :m].reshape(*kept, m // block, LANES, LANES), axis=-2) for f in flat)
    )
    rest = [[] for _ in arrays]  # per array, the rows each level left out, flattened
    while partial[0].shape[-2] > LANES * LANES:
        q = (partial[0].shape[-2] - 1) // LANES * LANES  # leaves 1 to 8 rows
        for r, p in zip(rest, partial, strict=True):
            r.append(p[..., q:, :].reshape(*kept, (p.shape[-2] - q) * LANES))
        partial = lax.optimization_barrier(
            tuple(jnp.sum(p[..., :q, :].reshape(*kept, q // LANES, LANES, LANES), axis=-2)
                  for p in partial)
        )  # fmt: skip
    out = [jnp.sum(p, axis=(-2, -1)) for p in partial]
    for i, r in enumerate(rest):
        for rows in r:
            out[i] = out[i] + jnp.sum(rows, axis=-1)
    if m < n:
        tails = sums(*[f[..., m:] for f in flat], axes=(n_keep,))
        out = [s + t for s, t in zip(out, tails, strict=True)]
    return tuple(out)
