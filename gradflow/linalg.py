"""Products of Jacobians kept in factored form, their singular values and summaries, in logs.

Model-agnostic numerics for :mod:`gradflow.spectra` (which re-exports the summaries).

A product ``P = J_L ... J_1`` (n_L, n_0) of many Jacobians overflows or underflows any float long
before its singular values stop being meaningful. The accumulators here keep P factored while the
factors arrive one at a time, as two kinds of step (what :func:`gradflow.layers.walk` hands out):

* ``matrix(state, J)``: a dense factor (n_out, n_in): multiply, then re-orthogonalise by QR;
* ``diag(state, d)``: an elementwise factor ``diag(d)``: scale the rows of the running factor, no
  QR (the next matrix step's QR absorbs it; ``log_sv`` folds a trailing one).

Two factorisations (:func:`accumulator`):

* ``"lyapunov"``: the classic QR method (Benettin et al. 1980; Shimada & Nagashima 1979). State
  ``P = M R`` with only ``s = log|diag R|`` kept: ``J M = Q' R'``, ``s += log|diag R'|``. The
  sorted ``s`` sum to ``log|det P|`` exactly (square factors) and are Lyapunov-style estimates of
  the individual ``log sigma_i`` (off by at most ``log cond`` of the triangular product's unit
  part: O(1) at any depth when the exponents are distinct, so ``s / L`` has an O(1/L) bias).
* ``"exact"``: the graded, pre-pivoted QR ("UDT" stabilisation; Loh et al. 1992, Bai et al.
  2011). State ``P = M diag(e^s) T`` exactly, with T's rows of unit norm: ``A = J M`` is ordered
  by ``s_j + log||A_j||``, factored ``A = Q' R`` and ``R diag(e^s)`` is folded into the rows of T
  using exponentials of non-positive differences only (no overflow; underflow only of negligible
  terms). :func:`jacobi_log_svd` then returns the true ``log sigma_i`` of ``diag(e^s) T``: a
  one-sided Jacobi SVD computing every rotation from ``e^{s_q - s_p} <= 1`` and cosines, accurate
  in the relative sense for such graded matrices (Demmel & Veselic 1992), so the error in
  ``log sigma_i`` is absolute, ~eps per factor, whatever the magnitude of sigma_i.

The running rank k (columns of M) starts at n_0 and shrinks to ``min(k, n_out)`` at a narrower
factor, so a wide input costs nothing after the first layer. Inside a ``lax.scan`` the state's
shapes must not change between iterations; ``fixed_rank=True`` keeps k = n_0 instead (the lost
directions become zero columns with ``s = -inf``), for walks whose scanned blocks narrow inside.

References: Benettin, Galgani, Giorgilli & Strelcyn 1980 (Meccanica 15, 9); Loh et al. 1992
(Int. J. Mod. Phys. B 6, 1091); Bai, Chen, Scalettar & Yamazaki 2011 (Numerical methods for
quantum Monte Carlo simulations of the Hubbard model); Demmel & Veselic 1992 (SIAM J. Matrix Anal.
Appl. 13, 1204); Brent & Luk 1985 (SIAM J. Sci. Stat. Comput. 6, 69).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

MAX_SWEEPS = 40
"""Jacobi sweeps at most; it converges quadratically (typically 6-12 sweeps)."""


def log0(v: jax.Array) -> jax.Array:
    """``log v`` with ``log 0 = -inf`` and no NaN (nor NaN gradient) at the zeros of a norm."""
    return jnp.where(v > 0, jnp.log(jnp.where(v > 0, v, 1)), -jnp.inf)


def unit_rows(f: jax.Array) -> tuple[jax.Array, jax.Array]:
    """``(f / ||f_i||, log ||f_i||)`` row by row; a zero row stays zero with log norm -inf."""
    norm = jnp.linalg.norm(f, axis=-1)
    return f / jnp.where(norm > 0, norm, 1)[:, None], log0(norm)


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
    m: jax.Array  # (n, k): orthonormal columns after a matrix step, rows scaled by diag steps
    s: jax.Array  # (k,) log scales
    t: jax.Array  # (k, n0) unit rows


class _Lyapunov(NamedTuple):
    m: jax.Array  # (n, k)
    s: jax.Array  # (k,) accumulated log|diag R|


def accumulator(method: str, *, fixed_rank: bool = False) -> Accumulator:
    """The :class:`Accumulator` of ``method`` ("exact" or "lyapunov").

    Args:
      method: "exact" (graded QR, then :func:`jacobi_log_svd`) or "lyapunov" (QR diagonal).
      fixed_rank: keep the running rank at n_0 (zero-padding) so the state's shapes never change.
    """
    if method not in ("exact", "lyapunov"):
        raise ValueError(f"unknown accumulator {method!r}; choose 'exact' or 'lyapunov'")

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

    def scale(state, d):
        return state._replace(m=d.astype(state.m.dtype)[:, None] * state.m)

    if method == "lyapunov":

        def fold(state):
            q, r = jnp.linalg.qr(state.m)
            s = state.s[: r.shape[0]] + log0(jnp.abs(jnp.diagonal(r)))
            q, s, _ = pad(q, s, None, state.s.shape[0])
            return _Lyapunov(q, s)

        def init(n0, dtype):
            return _Lyapunov(jnp.eye(n0, dtype=dtype), jnp.zeros((n0,), dtype))

        def matrix(state, jac):
            return fold(state._replace(m=jac.astype(state.m.dtype) @ state.m))

        def log_sv(state):
            return -jnp.sort(-fold(state).s)

        return Accumulator(init, matrix, scale, log_sv)

    def fold(state):
        q, s, t = _graded_fold(state.m, state.s, state.t)
        return _Graded(*pad(q, s, t, state.s.shape[0]))

    def init(n0, dtype):
        eye = jnp.eye(n0, dtype=dtype)
        return _Graded(eye, jnp.zeros((n0,), dtype), eye)

    def matrix(state, jac):
        return fold(state._replace(m=jac.astype(state.m.dtype) @ state.m))

    def log_sv(state):
        state = fold(state)  # absorbs trailing diag steps
        s, t = state.s, state.t
        live = min(s.shape[0], state.m.shape[0])  # rank <= n_L: with fixed_rank, drop the padding
        if live < s.shape[0]:
            keep = jnp.argsort(-s)[:live]
            s, t = s[keep], t[keep]
        return jacobi_log_svd(s, t)

    return Accumulator(init, matrix, scale, log_sv)


def _graded_fold(a, s, t):
    """``A diag(e^s) T = Q' diag(e^s') T'`` exactly, using only non-positive exponents.

    Args: a (n, k), s (k,), t (k, n0). Returns q (n, k'), s' (k',), t' (k', n0), k' = min(n, k).
    """
    c = jnp.linalg.norm(a, axis=0)
    order = jnp.argsort(-(s + log0(c)))  # pre-pivoting: the largest column of A diag(e^s) first
    a, s, t, c = a[:, order], s[order], t[order], c[order]
    key = s + log0(c)  # descending, -inf last; never +inf or NaN
    q, r = jnp.linalg.qr(a)
    k = r.shape[0]
    # E_ij = r_ij e^{s_j - s_i} (j >= i) = (r_ij / c_j) e^{key_j - key_i} c_i: the first factor
    # is <= 1 (|r_ij| <= ||A_j||), the exponent <= 0 by the ordering, so E never overflows.
    # -inf - -inf (zero rows/columns) is NaN: those terms are exactly 0.
    diff = key[None, :] - key[:k, None]
    upper = jnp.triu(jnp.ones(r.shape, dtype=bool))
    diff = jnp.where(upper & ~jnp.isnan(diff), jnp.minimum(diff, 0), -jnp.inf)
    e = r / jnp.where(c > 0, c, 1)[None, :] * jnp.exp(diff) * c[:k, None]
    t, log_norm = unit_rows(e @ t)
    return q, s[:k] + log_norm, t


# --------------------------------------------------------------------------------------------
# One-sided Jacobi SVD in the log domain


def _shuffle(top, bot):
    """Round-robin step: top' = [top0, bot0, top1..top_{h-2}], bot' = [bot1..bot_{h-1}, top_{h-1}].

    With pair i = (top[i], bot[i]), m - 1 steps meet every pair of the m = 2h slots once (the
    circle method; Brent & Luk 1985).
    """
    h = top.shape[0]
    if h == 1:
        return top, bot
    return (
        jnp.concatenate([top[:1], bot[:1], top[1 : h - 1]]),
        jnp.concatenate([bot[1:], top[h - 1 :]]),
    )


def jacobi_log_svd(s: jax.Array, t: jax.Array) -> jax.Array:
    """Log singular values of ``diag(e^s) T`` (k, n), descending, by one-sided Jacobi on the rows.

    Rows are kept as ``e^{s_i} u_i`` with ``||u_i|| = 1``. For a pair with ``s_p >= s_q``,
    ``rho = e^{s_q - s_p} <= 1`` and cosine ``g = u_p . u_q``, the Jacobi rotation that
    orthogonalises the rows has ``tan = rho w`` with
    ``w = -2 g / (1 - rho^2 + sqrt((1 - rho^2)^2 + 4 rho^2 g^2))``, finite for every rho: as
    rho -> 0 the small row becomes ``u_q - g u_p`` (Gram-Schmidt), as it must, instead of being
    lost to underflow. Pairs follow the round-robin (Brent & Luk 1985) order: the rows sit in
    two halves, pair i is (top[i], bottom[i]), and a fixed shuffle between rounds meets every
    pair once per sweep of m - 1 rounds. Stops when every cosine is below 8 eps sqrt(m).

    Args:
      s: log scales, shape (k,) (-inf for a zero row).
      t: unit (or zero) rows, shape (k, n).

    Returns:
      Shape (k,): ``log sigma_i`` descending (-inf for zeros). Needs k <= n.
    """
    k, n = t.shape
    m = k + k % 2  # pad to an even count with a zero row
    h = m // 2
    s = jnp.concatenate([s, jnp.full((m - k,), -jnp.inf, s.dtype)])
    t = jnp.concatenate([t, jnp.zeros((m - k, n), t.dtype)])
    dtype = t.dtype
    tol = 8 * jnp.finfo(dtype).eps * np.sqrt(m)

    def rotate(carry, _):
        (s_top, s_bot), (t_top, t_bot), off = carry
        swap = s_bot > s_top  # work with (hi, lo) = (larger, smaller) scale
        hi, lo = jnp.maximum(s_top, s_bot), jnp.minimum(s_top, s_bot)
        u = jnp.where(swap[:, None], t_bot, t_top)
        v = jnp.where(swap[:, None], t_top, t_bot)
        g = jnp.sum(u * v, axis=1)
        d = jnp.where(jnp.isneginf(hi), -jnp.inf, lo - hi)  # <= 0
        rho, one_m_rho2 = jnp.exp(d), -jnp.expm1(2 * d)
        den = one_m_rho2 + jnp.sqrt(one_m_rho2**2 + (2 * rho * g) ** 2)
        w = jnp.where(den > 0, -2 * g / jnp.where(den > 0, den, 1), 0)
        c = lax.rsqrt(1 + (rho * w) ** 2)
        u, v = c[:, None] * (u - (w * rho**2)[:, None] * v), c[:, None] * (w[:, None] * u + v)
        (u, log_u), (v, log_v) = unit_rows(u), unit_rows(v)
        hi, lo = hi + log_u, lo + log_v
        # Each row goes back to its own slot: near convergence the rotations are small, so rows
        # keep their identity and the schedule meets every pair of rows.
        s_top, s_bot = jnp.where(swap, lo, hi), jnp.where(swap, hi, lo)
        t_top = jnp.where(swap[:, None], v, u)
        t_bot = jnp.where(swap[:, None], u, v)
        off = jnp.maximum(off, jnp.max(jnp.abs(g)))
        return (_shuffle(s_top, s_bot), _shuffle(t_top, t_bot), off), None

    def sweep(carry):
        s, t, _, i = carry
        (s, t, off), _ = lax.scan(rotate, (s, t, jnp.zeros((), dtype)), None, length=m - 1)
        return s, t, off, i + 1

    def more(carry):
        return (carry[2] > tol) & (carry[3] < MAX_SWEEPS)

    halves = lambda a: (a[:h], a[h:])  # noqa: E731
    init = (halves(s), halves(t), jnp.asarray(jnp.inf, dtype), 0)
    (s_top, s_bot), *_ = lax.while_loop(more, sweep, init)
    # Descending; the zero padding row is never rotated (cosine 0), so it sorts last.
    return -jnp.sort(-jnp.concatenate([s_top, s_bot]))[:k]


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
