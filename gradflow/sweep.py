"""Sweeps over random seeds: ``vmap`` over initialisations inside one ``jit``, in bounded chunks.

Seed i is ``jax.random.fold_in(jax.random.key(0), i)``: seed 17 is the same network whether 32 or
10,000 seeds run, and whichever chunk it lands in.
"""

from __future__ import annotations

import warnings

from collections.abc import Callable
from functools import partial
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from gradflow.models import Model


def seed_keys(n: int, base: jax.Array | None = None) -> jax.Array:
    """Typed keys for seeds 0..n-1: ``fold_in(base, i)`` with ``base = jax.random.key(0)``.

    Returns: a key array of shape (n,).
    """
    n = _check_n_seeds(n)
    base = jax.random.key(0) if base is None else base
    return jax.vmap(lambda i: jax.random.fold_in(base, i))(jnp.arange(n, dtype=jnp.uint32))


def _check_n_seeds(n) -> int:
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise ValueError(f"the number of seeds must be an int >= 1, got {n!r}")
    return int(n)


def as_keys(keys) -> jax.Array:
    """Normalise ``keys`` (an int n, typed keys (n,), or raw uint32 keys (n, 2)) to typed keys."""
    if isinstance(keys, (int, np.integer)) and not isinstance(keys, bool):
        return seed_keys(keys)
    keys = jnp.asarray(keys) if not isinstance(keys, jax.Array) else keys
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


@partial(jax.jit, static_argnames=("fn", "model", "kwargs"))
def _run_chunk(keys, args, hyper, *, fn, model, kwargs):
    def one_seed(key):
        return fn(model, model.init(key, **hyper), *args, **dict(kwargs))

    return jax.vmap(one_seed)(keys)


def _validate_call(fn, model, args, kwargs) -> None:
    from gradflow import probes  # local: probes do not depend on sweep

    if fn in (probes.layer_grad_norms, probes.time_grad_norms) and len(args) >= 2:
        probes.validate(model, args[0], args[1], kwargs.get("loss", "mse"))
    check_finite(*args, names=["x", "y"] + [f"argument {i}" for i in range(2, len(args))])


def sweep(
    fn: Callable[..., Any],
    model: Model,
    keys,
    *args,
    chunk_size: int | None = None,
    hyper: dict[str, Any] | None = None,
    **kwargs,
):
    """Compute ``fn(model, model.init(key_i), *args, **kwargs)`` for every seed, vmapped and jitted.

    Args:
      fn: a per-seed function such as :func:`gradflow.layer_grad_norms`, returning a pytree of
        arrays.
      model: the :class:`Model` whose ``init`` draws each seed's parameters.
      keys: an int n (seeds 0..n-1, see :func:`seed_keys`) or an array of keys.
      *args: arrays shared by all seeds (data), passed to ``fn`` as traced arguments.
      chunk_size: seeds per compiled call (default: all at once). Memory grows with the chunk,
        not with the number of seeds; the last chunk is padded so one compilation serves all.
      hyper: keyword overrides for ``model.init`` (e.g. ``{"sigma_w2": 1.5}``), traced, so new
        values do not recompile.
      **kwargs: static options of ``fn`` (e.g. ``loss="mse"``); must be hashable.

    Returns:
      ``fn``'s pytree with numpy leaves and a leading seed axis of length n.
    """
    keys = as_keys(keys)
    n = keys.shape[0]
    _validate_call(fn, model, args, kwargs)
    chunk = n if chunk_size is None else int(chunk_size)
    if chunk < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size!r}")
    chunk = min(chunk, n)
    hyper = {k: jnp.asarray(v) for k, v in (hyper or {}).items()}
    static = dict(fn=fn, model=model, kwargs=tuple(sorted(kwargs.items())))
    args = tuple(jnp.asarray(a) for a in args)

    pending, results = None, []
    for start in range(0, n, chunk):
        stop = min(start + chunk, n)
        chunk_keys = keys[start:stop]
        if stop - start < chunk:  # pad with copies of the last key; dropped below
            chunk_keys = jnp.concatenate([chunk_keys, jnp.repeat(chunk_keys[-1:], chunk - (stop - start))])
        out = _run_chunk(chunk_keys, args, hyper, **static)  # dispatched asynchronously
        if pending is not None:
            results.append(_to_host(*pending))
        pending = (out, stop - start)
    results.append(_to_host(*pending))
    return jax.tree.map(lambda *xs: np.concatenate(xs, axis=0), *results)


def _to_host(tree, count):
    return jax.tree.map(lambda a: np.asarray(a)[:count], tree)


class Summary(NamedTuple):
    """Summaries across seeds (axis 0). Norms are closer to log-normal than normal, so the median,
    quantiles and geometric mean describe them better than mean and std."""

    median: np.ndarray
    q05: np.ndarray
    q95: np.ndarray
    geomean: np.ndarray
    mean: np.ndarray
    std: np.ndarray


def summarize(values, axis: int = 0) -> Summary:
    """Median, 5%/95% quantiles, geometric mean, mean and std over ``axis`` (the seed axis).

    NaN/inf seeds (exploded networks) are ignored by the median and quantiles (``nanquantile``)
    and make the mean and geometric mean non-finite, so they stay visible.
    """
    v = np.asarray(values, dtype=np.float64)
    finite = np.where(np.isfinite(v), v, np.nan)
    with warnings.catch_warnings(), np.errstate(divide="ignore", invalid="ignore"):
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN slices give NaN, as wanted
        q05, median, q95 = np.nanquantile(finite, [0.05, 0.5, 0.95], axis=axis)
        geomean = np.exp(np.mean(np.log(v), axis=axis))
    return Summary(
        median=median, q05=q05, q95=q95, geomean=geomean, mean=v.mean(axis), std=v.std(axis)
    )
