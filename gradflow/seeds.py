"""Seeds: typed keys for seed i = ``fold_in(key(0), i)`` (the same network whatever the chunk or
device), the checks every sweep makes on its seed count and data."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np


def seed_keys(n: int, base: jax.Array | None = None) -> jax.Array:
    """Typed keys for seeds 0..n-1: ``fold_in(base, i)`` with ``base = jax.random.key(0)``.

    Returns: a key array of shape (n,).
    """
    n = positive_int("the number of seeds", n)
    base = jax.random.key(0) if base is None else base
    return jax.vmap(lambda i: jax.random.fold_in(base, i))(jnp.arange(n, dtype=jnp.uint32))


def positive_int(name: str, value, alternatives: str = "") -> int:
    """``value`` as an int >= 1, or a ValueError naming ``name`` and what it may be."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name} must be an int >= 1{alternatives}, got {value!r}")
    return int(value)


def as_keys(keys) -> jax.Array:
    """Normalise ``keys`` (an int n, typed keys (n,), or raw uint32 keys (n, 2)) to typed keys."""
    if isinstance(keys, (int, np.integer)) and not isinstance(keys, bool):
        return seed_keys(keys)
    try:
        keys = jnp.asarray(keys) if not isinstance(keys, jax.Array) else keys
    except TypeError:  # e.g. a string ("8" from a config file): say what keys may be
        keys = jnp.zeros((0,))
    if jnp.issubdtype(keys.dtype, jax.dtypes.prng_key):
        if keys.ndim != 1 or keys.shape[0] < 1:
            raise ValueError(f"keys must be a 1-d key array with >= 1 key, got shape {keys.shape}")
        return keys
    if keys.dtype == jnp.uint32 and keys.ndim == 2 and keys.shape[1] == 2 and keys.shape[0] >= 1:
        return jax.random.wrap_key_data(keys)
    raise ValueError(
        "keys must be an int (number of seeds), a typed key array of shape (n,) from "
        f"jax.random.key/split, or raw uint32 keys of shape (n, 2); got {keys!r:.80}"
    )


def check_finite(*arrays, names=None) -> None:
    """Raise a ValueError if a floating array holds NaN or inf (checked on the host, once)."""
    for i, a in enumerate(arrays):
        arr = np.asarray(a)
        if np.issubdtype(arr.dtype, np.floating) and not np.all(np.isfinite(arr)):
            name = names[i] if names else f"argument {i}"
            bad = int(np.size(arr) - np.count_nonzero(np.isfinite(arr)))
            raise ValueError(
                f"{name} contains {bad} NaN/inf value(s); clean or drop those examples first"
            )
