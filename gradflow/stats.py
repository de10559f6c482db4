"""Summaries across seeds: norms are closer to log-normal than normal, so the median, quantiles
and geometric mean describe them better than mean and std."""

from __future__ import annotations

import warnings
from typing import NamedTuple

import jax
import numpy as np


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

    ``values`` may be a pytree of arrays (e.g. a swept :class:`gradflow.LayerGradNorms`): the
    result is the same pytree with a :class:`Summary` in place of every leaf.
    """
    if not isinstance(values, (np.ndarray, jax.Array, list, tuple, float, int)):
        leaves, treedef = jax.tree.flatten(values)
        return jax.tree.unflatten(treedef, [summarize(v, axis) for v in leaves])
    v = np.asarray(values, dtype=np.float64)
    finite = np.where(np.isfinite(v), v, np.nan)
    with warnings.catch_warnings(), np.errstate(divide="ignore", invalid="ignore"):
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN slices give NaN, as wanted
        q05, median, q95 = np.nanquantile(finite, [0.05, 0.5, 0.95], axis=axis)
        geomean = np.exp(np.mean(np.log(v), axis=axis))
    return Summary(
        median=median, q05=q05, q95=q95, geomean=geomean, mean=v.mean(axis), std=v.std(axis)
    )
