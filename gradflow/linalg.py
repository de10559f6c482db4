"""Products of Jacobians kept in factored form, their singular values and summaries, in logs.

Model-agnostic numerics for :mod:`gradflow.spectra` (which re-exports the summaries).

A product ``P = J_L ... J_1`` (n_L, n_0) of many Jacobians overflows or underflows any float long
before its singular values stop being meaningful. The accumulators here keep P factored while the
factors arrive one at a time, as two kinds of step (what :func:`gradflow.layers.walk` hands out):

* ``matrix(state, J)``: a dense factor (n_out, n_in): multiply, and every few factors
  re-orthogonalise by QR (a *fold*);
* ``diag(state, d)``: an elementwise factor ``diag(d)``: scale the rows of the running factor (the
  next fold absorbs it).

Two factorisations (:func:`accumulator`):

* ``"lyapunov"``: the classic QR method (Benettin et al. 1980; Shimada & Nagashima 1979). State
  ``P = M R`` with only ``s = log|diag R|`` kept: ``A = J M = Q' R'``, ``s += log|diag R'|``. The
  sorted ``s`` sum to ``log|det P|`` exactly (square factors) and are Lyapunov-style estimates of
  the individual ``log sigma_i`` (off by at most ``log cond`` of the triangular product's unit
  part: O(1) at any depth when the exponents are distinct, so ``s / L`` has an O(1/L) bias).
* ``"exact"``: the graded, pre-pivoted QR ("UDT" stabilisation; Loh et al. 1992, Bai et al.
  2011). State ``P = M diag(e^s) T`` exactly, with T's rows of unit norm: ``A = J M`` is ordered
  by ``s_j + log||A_j||``, factored ``A = Q' R`` and ``R diag(e^s)`` is folded into the rows of T
  using exponentials of non-positive differences only (no overflow; underflow only of negligible
  terms). :func:`gradflow.graded_svd.log_svd` then returns the true ``log sigma_i`` of
  ``diag(e^s) T`` (float64 windows, or a float32 Jacobi SVD where the backend has no float64).

Both are exact in exact arithmetic however often they fold (the R of a product of factors is the
product of their R's), so folding is only about rounding. A fold costs several matrix products
(LAPACK QR; a vmapped batch of them runs as one call per CPU core, :mod:`gradflow.per_core`), so
it is skipped while that is safe: in the factors since the last fold, the column ``A_j``
of the unfolded product picks up a rounding error ~ eps ||A_j||, against a part that survives the
next QR of only ``|r_jj|``. That *pollution* ``log(||A_j|| / |r_jj|)`` is measured at each fold,
and the next fold comes after as many factors as keep it within ``log GROWTH`` (predicted from
the last block, per factor) and the column norms within e^+-SPAN; at most :data:`MAX_EVERY`.
The decision is shared by every example of a ``vmap`` (:func:`_batch_max`) so that a skipped
fold is really skipped (a per-example ``lax.cond`` would run both branches). One Gaussian layer
pollutes by ~0.5-8 nats (width 256: median 3.5), so Gaussian MLPs fold every layer, as before;
orthogonal and near-isometric ones (tanh, ``sigma_w^2 = 1.05``: median 0.01 nats) every 16.
``reorth_every=k`` fixes the block length instead.

The running rank k (columns of M) starts at n_0 and shrinks to ``min(k, n_out)`` at a narrower
factor (always a fold), so a wide input costs nothing after the first layer. Inside a ``lax.scan``
the state's shapes must not change between iterations; ``fixed_rank=True`` keeps k = n_0 instead
(the lost directions become zero columns with ``s = -inf``), for walks whose scanned blocks narrow
inside.

References: Benettin, Galgani, Giorgilli & Strelcyn 1980 (Meccanica 15, 9); Loh et al. 1992
(Int. J. Mod. Phys. B 6, 1091); Bai, Chen, Scalettar & Yamazaki 2011 (Numerical methods for
quantum Monte Carlo simulations of the Hubbard model); Demmel & Veselic 1992 (SIAM J. Matrix Anal.
Appl. 13, 1204); Demmel et al. 1999 (Computing the SVD with high relative accuracy, LAA 299, 21);
Cox & Higham 1998 (row-wise backward stable Householder QR, BIT 38, 354).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.custom_batching import custom_vmap

from gradflow import per_core
from gradflow.graded_svd import (  # noqa: F401  (graded_log_svd, jacobi_log_svd: re-exported)
    graded_log_svd,
    jacobi_log_svd,
    log0,
    log_svd,
    unit_rows,
)

MAX_EVERY = 16
"""Most factors between two folds: bounds the damage if one layer is far worse than the last."""

GROWTH = 2.0
"""How much an unfolded product may amplify rounding relative to its smallest surviving column
(one bit per fold, any dtype). Looser budgets let Gaussian nets skip folds and cost them accuracy
at the bottom of the spectrum (width 8, depth 1,000: smallest log sigma off by 0.09 at 32, 0.03 at
4, 0.01 at 2, as with a fold per layer)."""

SPAN = 30.0
"""Nats the column norms of an unfolded product may drift (float32 reaches e^88)."""


@custom_vmap
def _batch_max(v: jax.Array) -> jax.Array:
    """``v`` itself; under ``vmap`` the max over the batch, *unbatched* (so a ``lax.cond`` on it
    stays a branch instead of becoming a select that computes both sides)."""
    return v


@_batch_max.def_vmap
def _batch_max_rule(axis_size, in_batched, v):
    del axis_size
    return _batch_max(jnp.max(v, axis=0) if in_batched[0] else v), False


# --------------------------------------------------------------------------------------------
# Accumulators


class Accumulator(NamedTuple):
    """How a product of factors is kept (see the module docstring).

    Attributes:
      init: ``init(n0, dtype) -> state`` for the empty product (the identity on n_0 inputs).
      matrix: ``matrix(state, J) -> state`` for a dense factor J of shape (n_out, n_in).
      diag: ``diag(state, d) -> state`` for the factor ``diag(d)``, d of shape (n,).
      log_sv: ``log_sv(state) -> (k,)``: descending log singular values of the product (or the
        QR estimates), k the running rank; -inf for exact zeros.
    """

    init: Callable
    matrix: Callable
    diag: Callable
    log_sv: Callable


class _Graded(NamedTuple):
    m: jax.Array  # (n, k): orthonormal columns after a fold, times the factors since
    s: jax.Array  # (k,) log scales
    t: jax.Array  # (k, n0) unit rows
    steps: jax.Array  # () int32: matrix factors since the last fold
    every: jax.Array  # () int32: fold when steps reaches it


class _Lyapunov(NamedTuple):
    m: jax.Array  # (n, k)
    s: jax.Array  # (k,) accumulated log|diag R|
    steps: jax.Array
    every: jax.Array


def accumulator(
    method: str, *, fixed_rank: bool = False, reorth_every: int | None = None
) -> Accumulator:
    """The :class:`Accumulator` of ``method`` ("exact" or "lyapunov").

    Args:
      method: "exact" (graded QR, then :func:`log_svd`) or "lyapunov" (QR diagonal).
      fixed_rank: keep the running rank at n_0 (zero-padding) so the state's shapes never change.
      reorth_every: fold (QR) after every k matrix factors; None chooses k from the pollution
        measured at each fold (module docstring). 1 is the most accurate, larger k faster.
    """
    if method not in ("exact", "lyapunov"):
        raise ValueError(f"unknown accumulator {method!r}; choose 'exact' or 'lyapunov'")
    if reorth_every is not None and (
        isinstance(reorth_every, bool)
        or not isinstance(reorth_every, (int, np.integer))
        or reorth_every < 1
    ):
        raise ValueError(
            f"reorth_every must be None (automatic) or an int >= 1, not {reorth_every!r}"
        )
    first = 1 if reorth_every is None else int(reorth_every)  # auto: measure after one factor

    def pad(q, s, t, k):
        # Lost directions as zero columns of Q (and zero rows of T) with log scale -inf: every
        # later step keeps them exactly zero (see the -inf handling in _graded_fold).
        missing = k - s.shape[0]
        if not fixed_rank or missing == 0:
            return q, s, t
        q = jnp.concatenate([q, jnp.zeros((q.shape[0], missing), q.dtype)], axis=1)
        s = jnp.concatenate([s, jnp.full((missing,), -jnp.inf, s.dtype)])
        if t is not None:
            t = jnp.concatenate([t, jnp.zeros((missing, t.shape[1]), t.dtype)])
        return q, s, t

    def next_every(state, log_c, log_r):
        """Factors until the next fold, from this fold's pollution and column-norm drift."""
        if reorth_every is not None:
            return jnp.asarray(reorth_every, jnp.int32)
        live = log_c > -jnp.inf
        pollution = jnp.max(jnp.where(live, log_c - log_r, -jnp.inf), initial=-jnp.inf)
        drift = jnp.max(jnp.where(live, jnp.abs(log_c), 0), initial=0)
        per_factor = jnp.maximum(pollution / float(np.log(GROWTH)), drift / SPAN)
        per_factor = per_factor / jnp.maximum(state.steps, 1)
        per_factor = _batch_max(jnp.where(jnp.isnan(per_factor), jnp.inf, per_factor))
        return jnp.clip(jnp.floor(1 / per_factor), 1, MAX_EVERY).astype(jnp.int32)

    def scale(state, d):
        return state._replace(m=d.astype(state.m.dtype)[:, None] * state.m)

    def matrix(fold):
        def step(state, jac):
            state = state._replace(m=jac.astype(state.m.dtype) @ state.m, steps=state.steps + 1)
            # A narrower factor shrinks the rank (and the state's shapes): fold there, always.
            if reorth_every == 1 or (jac.shape[0] < state.s.shape[0] and not fixed_rank):
                return fold(state)
            # The predicate is unbatched (steps and every are the same for the whole batch).
            return lax.cond(state.steps >= state.every, fold, lambda st: st, state)

        return step

    zero = jnp.zeros((), jnp.int32)

    if method == "lyapunov":

        def fold(state, adapt=True):
            log_c = log0(jnp.linalg.norm(state.m, axis=0))
            q, r = per_core.qr(state.m)
            log_r = log0(jnp.abs(jnp.diagonal(r)))
            every = next_every(state, log_c[: r.shape[0]], log_r) if adapt else state.every
            q, s, _ = pad(q, state.s[: r.shape[0]] + log_r, None, state.s.shape[0])
            return _Lyapunov(q, s, zero, every)

        def init(n0, dtype):
            eye = jnp.eye(n0, dtype=dtype)
            return _Lyapunov(eye, jnp.zeros((n0,), dtype), zero, jnp.asarray(first, jnp.int32))

        def log_sv(state):
            return -jnp.sort(-fold(state, adapt=False).s)

        return Accumulator(init, matrix(fold), scale, log_sv)

    def fold(state, adapt=True):
        q, s, t, log_c, log_r = _graded_fold(state.m, state.s, state.t)
        every = next_every(state, log_c, log_r) if adapt else state.every
        return _Graded(*pad(q, s, t, state.s.shape[0]), zero, every)

    def init(n0, dtype):
        eye = jnp.eye(n0, dtype=dtype)
        return _Graded(eye, jnp.zeros((n0,), dtype), eye, zero, jnp.asarray(first, jnp.int32))

    def log_sv(state):
        state = fold(state, adapt=False)  # absorbs the factors since the last fold
        s, t = state.s, state.t
        live = min(s.shape[0], state.m.shape[0])  # rank <= n_L: with fixed_rank, drop the padding
        if live < s.shape[0]:
            keep = jnp.argsort(-s)[:live]
            s, t = s[keep], t[keep]
        return log_svd(s, t)

    return Accumulator(init, matrix(fold), scale, log_sv)


def _graded_fold(a, s, t):
    """``A diag(e^s) T = Q' diag(e^s') T'`` exactly, using only non-positive exponents.

    Args: a (n, k), s (k,), t (k, n0). Returns q (n, k'), s' (k',), t' (k', n0), k' = min(n, k),
    and for the pollution estimate ``log||A_j||`` and ``log|r_jj|`` (k',) in pivoted order.
    """
    c = jnp.linalg.norm(a, axis=0)
    order = jnp.argsort(-(s + log0(c)))  # pre-pivoting: the largest column of A diag(e^s) first
    a, s, t, c = a[:, order], s[order], t[order], c[order]
    key = s + log0(c)  # descending, -inf last; never +inf or NaN
    q, r = per_core.qr(a)
    k = r.shape[0]
    # E_ij = r_ij e^{s_j - s_i} (j >= i) = (r_ij / c_j) e^{key_j - key_i} c_i: the first factor
    # is <= 1 (|r_ij| <= ||A_j||), the exponent <= 0 by the ordering, so E never overflows.
    # -inf - -inf (zero rows/columns) is NaN: those terms are exactly 0.
    diff = key[None, :] - key[:k, None]
    upper = jnp.triu(jnp.ones(r.shape, dtype=bool))
    diff = jnp.where(upper & ~jnp.isnan(diff), jnp.minimum(diff, 0), -jnp.inf)
    e = r / jnp.where(c > 0, c, 1)[None, :] * jnp.exp(diff) * c[:k, None]
    t, log_norm = unit_rows(e @ t)
    return q, s[:k] + log_norm, t, log0(c[:k]), log0(jnp.abs(jnp.diagonal(r)))


# --------------------------------------------------------------------------------------------
# Summaries of spectra (re-exported by gradflow.spectra)


class SpectrumSummary(NamedTuple):
    """Moments of a spectrum over its last axis (leading axes, e.g. seeds and examples, kept).

    With ``log=True`` every field is the log of the same quantity.

    Attributes:
      mean_sq: mean of sigma^2, the first moment of J J^T (chi1^L at large width; Pennington
        et al. 2017).
      var_sq: variance of sigma^2 (0 for dynamical isometry).
      max: largest sigma.
      min: smallest sigma.
      condition: max / min (inf for a zero singular value).
    """

    mean_sq: jax.Array
    var_sq: jax.Array
    max: jax.Array
    min: jax.Array
    condition: jax.Array


def spectrum_summary(singular_values, *, log: bool = False) -> SpectrumSummary:
    """Summaries used in the dynamical-isometry literature, over the last axis.

    Args:
      singular_values: shape (..., k), e.g. (seeds, batch, k) from ``sweep``; or log singular
        values if ``log``.
      log: input and output in log form, computed without leaving the log domain (so a depth
        10,000 spectrum gives finite summaries).

    Returns:
      :class:`SpectrumSummary` with fields of shape (...,).
    """
    v = jnp.asarray(singular_values)
    if v.ndim < 1 or v.shape[-1] == 0:
        raise ValueError(f"singular_values must have shape (..., k) with k >= 1, got {v.shape}")
    if not log:
        sq = v**2
        vmax, vmin = v.max(-1), v.min(-1)
        return SpectrumSummary(sq.mean(-1), sq.var(-1), vmax, vmin, vmax / vmin)
    n = v.shape[-1]
    log_mean = jax.nn.logsumexp(2 * v, axis=-1) - np.log(n)
    # var = mean^2 * mean((sigma^2 / mean - 1)^2), and sigma^2 / mean <= n: no overflow.
    rel = jnp.exp(2 * v - log_mean[..., None])
    log_var = 2 * log_mean + jnp.log(jnp.mean((rel - 1) ** 2, axis=-1))
    vmax, vmin = v.max(-1), v.min(-1)
    return SpectrumSummary(log_mean, log_var, vmax, vmin, vmax - vmin)


def spectral_density(values, bins=50, range=None) -> tuple[np.ndarray, np.ndarray]:  # noqa: A002
    """Empirical spectral density: a normalised histogram pooled over every leading axis.

    Args:
      values: singular values (or their squares, or logs) of any shape, e.g. (seeds, batch, k);
        all entries are pooled (examples and seeds). Non-finite entries (log 0) are dropped.
      bins, range: as for ``numpy.histogram``.

    Returns:
      ``(density, edges)`` (numpy float64), density integrating to 1 over the edges.
    """
    v = np.asarray(values, dtype=np.float64).ravel()
    v = v[np.isfinite(v)]
    if v.size == 0:
        raise ValueError("spectral_density got no finite values")
    return np.histogram(v, bins=bins, range=range, density=True)
