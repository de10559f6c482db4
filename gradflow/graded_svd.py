"""Singular values of a row-graded factor ``diag(e^s) T``: the last step of ``method="exact"``.

:mod:`gradflow.linalg` keeps a product of many Jacobians as ``Q diag(e^s) T`` with T's rows of
unit norm and s spanning thousands of nats; its singular values are those of ``diag(e^s) T``.
Two ways to get each ``log sigma_i`` to relative accuracy, whatever its magnitude:

* :func:`graded_log_svd`: float64 LAPACK SVDs of the rescaled LQ factor, window by window
  (the default where the backend has float64: CPU and GPU);
* :func:`jacobi_log_svd`: one-sided Jacobi in the log domain, in the working dtype (float32):
  the fallback on backends without float64 (TPU), about 3x slower on CPU.

:func:`log_svd` picks between them.

References: Demmel & Veselic 1992 (SIAM J. Matrix Anal. Appl. 13, 1204); Demmel et al. 1999
(Computing the SVD with high relative accuracy, LAA 299, 21); Cox & Higham 1998 (BIT 38, 354);
Brent & Luk 1985 (SIAM J. Sci. Stat. Comput. 6, 69).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from gradflow import per_core

MAX_SWEEPS = 40
"""Jacobi sweeps at most; it converges quadratically (typically 6-12 sweeps)."""

MARGIN = 40.0
"""Nats between two rows of a graded factor beyond which they do not interact: the coupling
changes a singular value by ~e^{-2 * 40} cond(T)^2 (relative), below float64's eps."""

WINDOW = 200.0
"""Nats of singular values one float64 SVD resolves; with both margins the scaled rows span 280
nats, so even their squares (LAPACK's dqds works on squares) stay above float64's e^-708."""


def log0(v: jax.Array) -> jax.Array:
    """``log v`` with ``log 0 = -inf`` and no NaN (nor NaN gradient) at the zeros of a norm."""
    return jnp.where(v > 0, jnp.log(jnp.where(v > 0, v, 1)), -jnp.inf)


def unit_rows(f: jax.Array) -> tuple[jax.Array, jax.Array]:
    """``(f / ||f_i||, log ||f_i||)`` row by row; a zero row stays zero with log norm -inf."""
    norm = jnp.linalg.norm(f, axis=-1)
    return f / jnp.where(norm > 0, norm, 1)[:, None], log0(norm)


def has_float64() -> bool:
    """Whether the default backend computes in float64 (TPUs do not)."""
    return jax.default_backend() != "tpu"


def log_svd(s: jax.Array, t: jax.Array) -> jax.Array:
    """Log singular values of ``diag(e^s) T``, descending: :func:`graded_log_svd` where the
    backend has float64 (:func:`has_float64`), else :func:`jacobi_log_svd`."""
    return graded_log_svd(s, t) if has_float64() else jacobi_log_svd(s, t)


def graded_log_svd(s: jax.Array, t: jax.Array) -> jax.Array:
    """Log singular values of ``diag(e^s) T`` (k, n), descending, each to relative accuracy.

    With the rows sorted by s, ``T = Y Q^T`` (Householder QR of T^T) gives the lower triangular
    ``L = diag(e^s) Y`` with the same singular values, Y's rows of unit norm. When Y is well
    conditioned, each singular value of such a row-graded matrix is fixed to relative accuracy
    ~eps cond(Y) by its rows (Demmel et al. 1999), and a float64 LAPACK SVD of the rescaled rows
    attains it (Householder reductions are row-wise backward stable on rows sorted by norm, Cox &
    Higham 1998; the bidiagonal SVD is relatively accurate), as long as the rows fit float64:

    * a gap of more than MARGIN nats between consecutive s decouples the rows above it from those
      below, so it is shrunk to MARGIN (each value keeps its distance to its own s);
    * if the shrunk s still span more than WINDOW nats, the values come WINDOW nats at a time,
      each batch from the block ``L[a:b, a:b]`` of the rows within MARGIN nats above and below
      it: ``L[a:, a:]`` is exactly the Schur complement of the rows above in ``L L^T`` (whose
      small eigenvalues are its own, up to ~e^{-2 MARGIN}), and rows far below change a value by
      as little.

    The float64 work is a QR and one SVD of a k x k matrix per window (one below ~200 nats of
    spread); the previous one-sided Jacobi took 8 sweeps of k^2 / 2 rotations.

    Args:
      s: log scales, shape (k,) (-inf for a zero row).
      t: unit (or zero) rows, shape (k, n), k <= n.

    Returns:
      Shape (k,), the dtype of s: ``log sigma_i`` descending (-inf for zeros).
    """
    k, dtype = s.shape[0], s.dtype
    order = jnp.argsort(-s)  # -inf (zero rows) last
    s, t = s[order], t[order]
    index = jnp.arange(k, dtype=jnp.int32)  # integers made here: int64 is unknown outside x64
    with jax.enable_x64(True):
        s, t = s.astype(jnp.float64), t.astype(jnp.float64)
        live = s > -jnp.inf
        y = per_core.qr_r(jnp.where(live[:, None], t, 0).T).T  # (k, k) lower
        gaps = jnp.minimum(jnp.where(live[1:], s[:-1] - s[1:], MARGIN), MARGIN)
        shrunk = jnp.where(live[0], s[0], 0) - jnp.concatenate([jnp.zeros(1), jnp.cumsum(gaps)])
        shift = s - shrunk  # -inf for zero rows

        def window(carry):
            p, out = carry
            anchor = shrunk[p]
            rows = live & (shrunk <= anchor + MARGIN) & (shrunk > anchor - WINDOW - MARGIN)
            batch = live & (index >= p) & (shrunk > anchor - WINDOW)
            scale = jnp.where(rows, jnp.exp(jnp.where(rows, shrunk - anchor, 0)), 0)
            sv = per_core.svd_values(scale[:, None] * jnp.where(rows[None, :], y, 0))
            rank = jnp.clip(index - jnp.min(jnp.where(rows, index, k)), 0, k - 1)  # from row a
            value = log0(sv[rank]) + anchor + shift
            return p + jnp.sum(batch, dtype=jnp.int32), jnp.where(batch, value, out)

        n_live = jnp.sum(live, dtype=jnp.int32)
        init = (jnp.zeros((), jnp.int32), jnp.full((k,), -jnp.inf, jnp.float64))
        _, out = lax.while_loop(lambda carry: carry[0] < n_live, window, init)
        return (-jnp.sort(-out)).astype(dtype)


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
