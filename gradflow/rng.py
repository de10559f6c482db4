"""Parameter draws and key splits: ``jax.random.normal``/``uniform``/``split`` bit for bit, fused.

Why this module exists (measured in ``bench/run.py``): on CPU, jax lowers the Threefry hash as a
rolled five-step loop (it keeps compile times short), so every draw writes and re-reads its
counters five times and XLA cannot fuse the hash into the uniform-to-normal map. Written out
unrolled -- the lowering jax itself uses on GPU and TPU -- the hash, the erf_inv map and the
init's scaling become one fused loop, about twice as fast, with exactly the same numbers.

Seed identity is untouched: every draw hashes its own key with counters 0..n-1, as
``jax.random`` does in its default (``jax_threefry_partitionable``) mode, so a parameter depends
only on its key. Any other case (an ``rbg`` key, a dtype other than float32, the legacy
non-partitionable mode, more than 2**32 numbers) calls ``jax.random`` itself.

References: Salmon et al. 2011, "Parallel random numbers: as easy as 1, 2, 3" (Threefry).
"""

from __future__ import annotations

import math
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

_ROTATIONS = ((13, 15, 26, 6), (17, 29, 16, 24))


def _threefry2x32(k1, k2, x1, x2):
    """Threefry-2x32, 20 rounds: the same arithmetic as ``jax.random``'s hash, unrolled."""
    ks = (k1, k2, k1 ^ k2 ^ np.uint32(0x1BD11BDA))
    x1, x2 = x1 + ks[0], x2 + ks[1]
    for i in range(5):
        for r in _ROTATIONS[i % 2]:
            x1 = x1 + x2
            x2 = (x2 << np.uint32(r)) | (x2 >> np.uint32(32 - r))
            x2 = x1 ^ x2
        x1 = x1 + ks[(i + 1) % 3]
        x2 = x2 + ks[(i + 2) % 3] + np.uint32(i + 1)
    return x1, x2


def _key_words(key):
    """The two uint32 words of a single Threefry key, or None when the fast path does not apply."""
    if not jax.config.jax_threefry_partitionable:
        return None
    if jnp.issubdtype(key.dtype, jax.dtypes.prng_key):
        if key.shape != () or str(jax.random.key_impl(key)) != "threefry2x32":
            return None
        data = jax.random.key_data(key)
    elif key.dtype == jnp.uint32 and key.shape == (2,):  # a legacy raw key
        if jax.config.jax_default_prng_impl != "threefry2x32":
            return None
        data = key
    else:
        return None
    return data[0], data[1]


def _own_words(key):
    """The key's two words, computed once (:func:`once`): a draw's kernel then reads its key
    as an input instead of fusing in the split and slice that made it, so the draws of every
    layer of one shape are the same kernel, which XLA compiles once and reuses."""
    words = once(jnp.stack(_key_words(key)))
    return words[0], words[1]


def _bits(words, shape, transpose=False):
    """32 random bits per element, as ``jax.random.bits`` draws them (partitionable mode); with
    ``transpose`` the same bits for a 2-d ``shape``, transposed."""
    k1, k2 = words
    if transpose:  # element (j, i) of the result is element (i, j) of the draw
        shape = shape[::-1]
        rows = lax.broadcasted_iota(jnp.uint32, shape, 1) * np.uint32(shape[0])
        counts = rows + lax.broadcasted_iota(jnp.uint32, shape, 0)
    else:
        counts = lax.iota(jnp.uint32, math.prod(shape)).reshape(shape)
    # The count is a 64-bit index split into (high, low) words; the high word is 0 here.
    b1, b2 = _threefry2x32(k1, k2, jnp.zeros(shape, jnp.uint32), counts)
    return b1 ^ b2


def _fast(key, shape, dtype, transpose=False):
    if dtype is None:  # jax.random's default: float32, or float64 under jax_enable_x64
        dtype = jax.dtypes.canonicalize_dtype(jnp.float64)
    shape = tuple(int(d) for d in shape)
    if transpose and len(shape) != 2:
        raise ValueError(f"transpose=True needs a 2-d shape, got {shape}")
    n = math.prod(shape)
    if jnp.dtype(dtype) != jnp.float32 or not 0 < n < 2**32:
        return None
    return _key_words(key)


def _uniform_from(words, shape, minval, maxval, transpose=False):
    # jax.random.uniform's mapping: 23 random mantissa bits give a float in [1, 2), minus 1.
    # Callers jit it as jax does, so multiply-add rounds the same way even when called eagerly.
    bits = _bits(words, shape, transpose)
    one = np.array(1.0, np.float32)
    floats = lax.bitcast_convert_type((bits >> np.uint32(9)) | one.view(np.uint32), jnp.float32)
    floats = floats - one
    minval = jnp.asarray(minval, jnp.float32)
    maxval = jnp.asarray(maxval, jnp.float32)
    return lax.max(minval, floats * (maxval - minval) + minval)


def uniform(
    key: jax.Array, shape, dtype=None, minval=0.0, maxval=1.0, *, transpose: bool = False
) -> jax.Array:
    """``jax.random.uniform(key, shape, dtype, minval, maxval)``, bit for bit, fused.

    ``minval`` and ``maxval`` are scalars.
    ``transpose=True`` returns the same draw transposed (2-d ``shape``), see :func:`normal`.
    """
    if _fast(key, shape, dtype, transpose) is None:
        out = jax.random.uniform(key, shape, dtype, minval, maxval)
        return out.T if transpose else out
    shape = tuple(int(d) for d in shape)
    # Bounds as runtime operands, as in jax.random.uniform: constant bounds let XLA fold
    # (u - 1) * (maxval - minval) + minval differently, 1 ulp off for asymmetric ranges.
    minval, maxval = np.float32(minval), np.float32(maxval)
    return _uniform(key, shape, minval, maxval, bool(transpose))


@partial(jax.jit, static_argnums=(1, 4))
def _uniform(key, shape, minval, maxval, transpose):
    return _uniform_from(_own_words(key), shape, minval, maxval, transpose)


def normal(key: jax.Array, shape, dtype=None, *, transpose: bool = False) -> jax.Array:
    """``jax.random.normal(key, shape, dtype)``, bit for bit, fused.

    Same construction as jax: u uniform on (-1, 1), then ``sqrt(2) * erf_inv(u)``. With
    ``transpose=True`` (a 2-d ``shape``) it returns ``normal(key, shape).T``, computed in that
    order: a weight matrix drawn as W^T is already in the layout a matmul over a batch of seeds
    reads (bench/README.md), so XLA need not copy it.
    """
    if _fast(key, shape, dtype, transpose) is None:
        out = jax.random.normal(key, shape, dtype)
        return out.T if transpose else out
    return _normal(key, tuple(int(d) for d in shape), bool(transpose))


@partial(jax.jit, static_argnums=(1, 2))
def _normal(key, shape, transpose):
    lo = np.nextafter(np.float32(-1.0), np.float32(0.0))
    u = _uniform_from(_own_words(key), shape, lo, 1.0, transpose)
    return np.float32(np.sqrt(2)) * lax.erf_inv(u)


def split(key: jax.Array, num: int = 2) -> jax.Array:
    """``jax.random.split(key, num)``, bit for bit, as one fused hash.

    In partitionable mode, new key i is the Threefry hash of the counter (0, i) under ``key``.
    jax's own rolled hash loop costs little arithmetic but many tiny steps, and under
    ``vmap(init)`` those steps (one loop per layer) were a tenth of a small sweep's run time.
    """
    words = _key_words(key)
    if words is None or not 0 < num < 2**32:
        return jax.random.split(key, num)
    return _split(key, int(num))


@partial(jax.jit, static_argnums=1)
def _split(key, num):
    k1, k2 = _own_words(key)
    counts = lax.iota(jnp.uint32, num)
    b1, b2 = _threefry2x32(k1, k2, jnp.zeros_like(counts), counts)
    data = jnp.stack([b1, b2], axis=-1)
    if jnp.issubdtype(key.dtype, jax.dtypes.prng_key):
        return jax.random.wrap_key_data(data, impl=jax.random.key_impl(key))
    return data  # a legacy raw key gives raw keys, as jax.random.split does


def once(x: jax.Array) -> jax.Array:
    """``x`` itself, bit for bit, computed once: a boundary XLA does not fuse through.

    XLA:CPU fuses a cheap elementwise chain into each consumer, and through a broadcast it
    recomputes the chain for every element it is broadcast to: under ``vmap(init -> probe)`` a
    bias ``b`` in ``z = a W + b`` was redrawn once per example (a 1,000-example sweep ran 1.4x
    slower), and a weight matrix read by two matmuls and a norm was drawn up to three times
    (a depth-50 sweep ran 1.3x slower; bench/run.py). ``jax.lax.optimization_barrier`` does not
    prevent it (XLA removes barriers before fusion); a reduction is never duplicated into its
    consumers. So ``x`` is reduced with a sentinel s (-inf, or the integer minimum) under
    "the first operand that is not s": exact for every value, NaN and -0.0 included, in any
    order XLA combines them. A custom combiner keeps it one native XLA loop that writes ``x``
    once (a plain float max would go to a library kernel that first copies both operands).
    """
    x = jnp.asarray(x)
    if jnp.issubdtype(x.dtype, jnp.floating):
        sentinel = -math.inf
    elif jnp.issubdtype(x.dtype, jnp.integer):
        sentinel = int(jnp.iinfo(x.dtype).min)
    else:
        return x  # bool and complex arrays are returned as they are
    return _once(x, sentinel)


@partial(jax.custom_jvp, nondiff_argnums=(1,))
def _once(x, sentinel):
    return _first_not_sentinel(x, sentinel)


@partial(jax.jit, static_argnums=1)
def _first_not_sentinel(x, sentinel):
    # Jitted so that an eager call is compiled once per shape: the reduction's combiner is a
    # new function each call, and eager lax.reduce compiled it anew every time (30 ms a call,
    # 90 s for an eager depth-1000 init).
    sentinel = np.array(sentinel, x.dtype)
    first = lambda a, b: jnp.where(a == sentinel, b, a)  # noqa: E731
    return lax.reduce(jnp.stack([x, jnp.full_like(x, sentinel)]), sentinel, first, (0,))


@_once.defjvp
def _once_jvp(sentinel, primals, tangents):  # the identity's derivative
    return _once(primals[0], sentinel), tangents[0]
