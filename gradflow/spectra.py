"""Jacobian spectra of MLPs: layer Jacobians and the input-output spectrum, stable at any depth.

Notation (as in :mod:`gradflow.models`, row vectors): ``z^l = a^{l-1} W^l + b^l``, ``a^0 = x``,
hidden ``a^l = phi(z^l)`` (``a^{l-1} + phi(z^l)`` for a residual layer) and the output
``f(x) = a^L = phi_out(z^L)``. The variable differentiated is the post-activation ``a^l``. As a
matrix acting on column vectors, shape (n_l, n_{l-1}), the layer Jacobian is::

    J^l = da^l/da^{l-1} = diag(phi'(z^l)) (W^l)^T           hidden layer
    J^l = I + diag(phi'(z^l)) (W^l)^T                       residual layer (n_l = n_{l-1})
    J^L = diag(phi_out'(z^L)) (W^L)^T                       output layer (phi_out' = 1 if None)

and the input-output Jacobian ``df/dx = J^L ... J^1`` (n_L, n_0) is the Jacobian of
``model.apply``: it includes the output activation.

How the input-output singular values are computed (``method=``):

* ``"dense"``: multiply the J^l, then SVD. Exact up to rounding while the product stays inside
  the float range, but singular values below ~eps * sigma_max are rounding noise, and in float32
  a few hundred non-isometric layers overflow or underflow.
* ``"lyapunov"``: the classic QR method (Benettin et al. 1980; Shimada & Nagashima 1979):
  ``Q_0 = I``, ``J^l Q_{l-1} = Q_l R_l``, returning the sorted ``sum_l log|diag R_l|``. Exact:
  ``J = Q_L (R_L ... R_1)``, so for square layers the *sum* of the values is exactly
  ``log|det J|``, and each value is exact when the triangular product is diagonal (every J^l
  orthogonal: all 0). In general the values are Lyapunov-style estimates: writing the product
  as ``diag(e^tau) N`` with N unit upper triangular, ``|log sigma_i - tau_(i)| <= log cond(N)``,
  which stays O(1) as depth grows when the exponents are distinct (Oseledets), so
  ``tau_i / L`` converges to the Lyapunov exponents with an O(1/L) bias, while ``log sigma_i``
  itself can be off by O(1) at any depth. Cheapest (one matmul and one QR per layer).
* ``"exact"`` (default): keeps ``J^l ... J^1 = Q diag(e^s) T`` *exactly* at every depth (Q
  orthonormal columns, log-scales s, T with unit-norm rows) by graded, pre-pivoted QR (the
  "UDT" stabilisation of Loh et al. 1992 and Bai et al. 2011): each layer forms
  ``A = J^l Q``, orders its columns by ``s_j + log||A_j||``, factors ``A = Q' R`` and folds
  ``R diag(e^s)`` into the rows of T using only exponentials of non-positive differences (no
  overflow, underflow only of negligible terms). At the end a one-sided Jacobi SVD of the
  rows of ``diag(e^s) T``, with every rotation computed from ``e^{s_q - s_p} <= 1`` and
  cosines, returns the true singular values in log form at any depth. Jacobi is accurate in
  the relative sense for such graded matrices (Demmel & Veselic 1992), so the error in
  ``log sigma_i`` is absolute, ~eps per layer, whatever the magnitude of sigma_i. There is no
  approximation regime beyond rounding: what grows with depth is the rounding error (up to
  ~L * eps * cond(J^l) in log sigma), not a truncation. Cost ~3 matmuls and 1 QR per layer.

Equal-shape layers are stacked and run through ``lax.scan``, so depth 10,000 compiles to one
loop. Every public function takes ``(model, params, x, ...)``, so ``gradflow.sweep`` can add a
seed axis.

References: Pennington, Schoenholz & Ganguli 2017 (arXiv:1711.04735); Saxe et al. 2014
(arXiv:1312.6120); Newman 1986 and Cohen & Newman 1984 (Lyapunov exponents of Gaussian
products); Demmel & Veselic 1992 (SIAM J. Matrix Anal. Appl. 13, 1204).
"""

from __future__ import annotations

from functools import partial
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from gradflow.models import ACTIVATIONS, MLPConfig, Model, check_inputs

METHODS = ("exact", "lyapunov", "dense")
"""Input-output spectrum methods, see the module docstring."""

_MAX_SWEEPS = 40  # Jacobi converges quadratically; typically 6-12 sweeps


# --------------------------------------------------------------------------------------------
# Validation and the layer walk


def _check(model: Model, params, fn: str) -> MLPConfig:
    config = getattr(model, "config", None)
    if not isinstance(config, MLPConfig):
        raise ValueError(
            f"{fn} needs an MLP built by gradflow.mlp, got a model with config "
            f"{type(config).__name__}; Jacobian spectra of RNNs/LSTMs are not supported"
        )
    widths = config.widths
    if not isinstance(params, (list, tuple)) or len(params) != config.n_layers:
        n = len(params) if isinstance(params, (list, tuple)) else type(params).__name__
        raise ValueError(f"params must be a list of {config.n_layers} layer dicts, got {n}")
    for l, layer in enumerate(params):
        want = ((widths[l], widths[l + 1]), (widths[l + 1],))
        got = (jnp.shape(layer["w"]), jnp.shape(layer["b"]))
        if got != want:
            raise ValueError(f"params[{l}] w/b have shapes {got}, expected {want} from widths")
    return config


def _check_method(method: str) -> None:
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; choose one of: {', '.join(METHODS)}")


def _runs(config: MLPConfig) -> list[tuple[int, int, str]]:
    """Maximal runs ``(start, stop, kind)`` of consecutive layers with the same shape and kind."""
    widths, n = config.widths, config.n_layers

    def sig(l):
        if l == n - 1:
            kind = "output"
        elif config.residual and widths[l] == widths[l + 1]:
            kind = "residual"
        else:
            kind = "plain"
        return kind, widths[l], widths[l + 1]

    runs, start = [], 0
    for l in range(1, n + 1):
        if l == n or sig(l) != sig(start):
            runs.append((start, l, sig(start)[0]))
            start = l
    return runs


def _layer(config: MLPConfig, kind: str, a, w, b):
    """One example through one layer: ``(a^l, J^l)`` with ``J^l`` of shape (n_l, n_{l-1})."""
    name = (config.output_activation or "linear") if kind == "output" else config.activation
    z = a @ w + b
    # phi is elementwise, so a JVP with ones gives phi'(z) exactly as autodiff defines it (e.g.
    # relu'(0) = 0), matching jax.jacfwd.
    h, dphi = jax.jvp(ACTIVATIONS[name], (z,), (jnp.ones_like(z),))
    jac = dphi[:, None] * w.T
    if kind == "residual":
        return a + h, jac + jnp.eye(w.shape[0], dtype=jac.dtype)
    return h, jac


def _structure(config: MLPConfig) -> MLPConfig:
    """The config with only what the Jacobians depend on (init and variances reset), so nets
    that differ only in their init share one compiled program."""
    return MLPConfig(
        widths=config.widths,
        activation=config.activation,
        output_activation=config.output_activation,
        residual=config.residual,
    )


def _stack(config: MLPConfig, params) -> list[tuple[jax.Array, jax.Array]]:
    """``(w, b)`` of each run of equal-shape layers, stacked on a new leading axis.

    Concrete params are stacked with numpy: jitting a 10,000-operand concatenate takes minutes,
    copying 10,000 small arrays takes milliseconds. Traced params (inside ``sweep``) must use
    ``jnp.stack``.
    """
    stacked = []
    for start, stop, _ in _runs(config):
        layers = params[start:stop]
        try:
            w = jnp.asarray(np.stack([np.asarray(p["w"]) for p in layers]))
            b = jnp.asarray(np.stack([np.asarray(p["b"]) for p in layers]))
        except jax.errors.TracerArrayConversionError:
            w, b = jnp.stack([p["w"] for p in layers]), jnp.stack([p["b"] for p in layers])
        stacked.append((w, b))
    return stacked


def _walk(config: MLPConfig, stacked, x, step, state):
    """Run one example x (n_0,) forward, ``state, out = step(state, J^l)`` at every layer.

    Each run of equal-shape layers is one ``lax.scan`` over its stacked params (from
    :func:`_stack`); within a run the state's shapes cannot change (a run longer than one layer
    has n_in = n_out), while a single layer may shrink them (a narrower layer).

    Returns:
      ``(state, outs)`` with ``outs`` the list of the L per-layer ``out`` (empty if None).
    """
    a, outs = x, []
    for (start, stop, kind), (w, b) in zip(_runs(config), stacked, strict=True):

        def body(carry, wb, kind=kind):
            a, state = carry
            a, jac = _layer(config, kind, a, *wb)
            state, out = step(state, jac)
            return (a, state), out

        if stop - start == 1:
            (a, state), out = body((a, state), (w[0], b[0]))
            outs.append(out)
        else:
            (a, state), out = lax.scan(body, (a, state), (w, b))
            outs.extend(jax.tree.map(lambda o, i=i: o[i], out) for i in range(stop - start))
    return state, [o for o in outs if o is not None]


@partial(jax.jit, static_argnames=("config", "what"))
def _per_layer(config: MLPConfig, stacked, x, what: str):
    """``what="jacobian"``: the J^l at one example x; ``"svd"``: their singular values."""
    if what == "jacobian":
        return _walk(config, stacked, x, lambda state, jac: (state, jac), None)[1]
    svd = lambda state, jac: (state, jnp.linalg.svd(jac, compute_uv=False))  # noqa: E731
    return jax.vmap(lambda xi: _walk(config, stacked, xi, svd, None)[1])(x)


# --------------------------------------------------------------------------------------------
# Layer Jacobians


def layer_jacobians(model: Model, params, x: jax.Array) -> list[jax.Array]:
    """Analytic layer Jacobians ``J^l = da^l/da^{l-1}`` of an MLP at one example.

    Args:
      model: an MLP from :func:`gradflow.mlp` (plain or residual).
      params: its parameters (one seed).
      x: one input, shape (n_0,); vmap for a batch.

    Returns:
      A list of L arrays, ``J^l`` of shape (n_l, n_{l-1}) acting on column vectors:
      ``diag(phi'(z^l)) (W^l)^T``, plus I for a residual layer, with ``phi_out`` for the last
      layer (see the module docstring). Their product ``J^L ... J^1`` is ``jax.jacfwd`` of
      ``model.apply`` at x.
    """
    config = _check(model, params, "layer_jacobians")
    if jnp.ndim(x) != 1 or jnp.shape(x)[0] != config.widths[0]:
        raise ValueError(
            f"layer_jacobians takes one example x of shape ({config.widths[0]},), got "
            f"{jnp.shape(x)}; vmap it for a batch"
        )
    return _per_layer(_structure(config), _stack(config, params), x, "jacobian")


def layer_singular_values(model: Model, params, x: jax.Array) -> list[jax.Array]:
    """Singular values of every layer Jacobian ``J^l``, per example.

    Args:
      model, params: an MLP and its parameters (one seed).
      x: inputs, shape (batch, n_0).

    Returns:
      A list of L arrays of shape (batch, min(n_{l-1}, n_l)), descending.

    References: Glorot & Bengio 2010 (Sec. 4.2.2: mean singular value of the layer Jacobian).
    """
    config = _check(model, params, "layer_singular_values")
    check_inputs(model, x)
    return _per_layer(_structure(config), _stack(config, params), x, "svd")


# --------------------------------------------------------------------------------------------
# Input-output spectrum


def _log0(v):
    """log with log(0) = -inf and no NaN for the zeros of a norm."""
    return jnp.where(v > 0, jnp.log(jnp.where(v > 0, v, 1)), -jnp.inf)


def _unit_rows(f):
    norm = jnp.linalg.norm(f, axis=-1)
    return f / jnp.where(norm > 0, norm, 1)[:, None], _log0(norm)


def _lyapunov_step(state, jac):
    q, s = state
    q, r = jnp.linalg.qr(jac @ q)
    k = r.shape[0]
    return (q, s[:k] + _log0(jnp.abs(jnp.diagonal(r)))), None


def _graded_step(state, jac):
    """``J Q diag(e^s) T = Q' diag(e^s') T'`` exactly, with only non-positive exponents."""
    q, s, t = state  # (n_in, k), (k,), (k, n_0)
    a = jac @ q
    c = jnp.linalg.norm(a, axis=0)
    order = jnp.argsort(-(s + _log0(c)))  # pre-pivoting: the largest column of A diag(e^s) first
    a, s, t, c = a[:, order], s[order], t[order], c[order]
    key = s + _log0(c)  # descending, -inf last; never +inf or NaN
    q, r = jnp.linalg.qr(a)
    k = r.shape[0]
    # E_ij = r_ij e^{s_j - s_i} (j >= i) = (r_ij / c_j) e^{key_j - key_i} c_i: the first factor
    # is <= 1 (|r_ij| <= ||A_j||), the exponent <= 0 by the ordering, so E never overflows.
    # -inf - -inf (zero rows/columns) is NaN: those terms are exactly 0.
    diff = key[None, :] - key[:k, None]
    upper = jnp.triu(jnp.ones(r.shape, dtype=bool))
    diff = jnp.where(upper & ~jnp.isnan(diff), jnp.minimum(diff, 0), -jnp.inf)
    e = r / jnp.where(c > 0, c, 1)[None, :] * jnp.exp(diff) * c[:k, None]
    t, log_norm = _unit_rows(e @ t)
    return (q, s[:k] + log_norm, t), None


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


def _jacobi_log_svd(s, t):
    """Log singular values of ``diag(e^s) T`` (k, n), k <= n, by one-sided Jacobi on the rows.

    Rows are kept as ``e^{s_i} u_i`` with ``||u_i|| = 1``. For a pair with ``s_p >= s_q``,
    ``rho = e^{s_q - s_p} <= 1`` and cosine ``g = u_p . u_q``, the Jacobi rotation that
    orthogonalises the rows has ``tan = rho w`` with
    ``w = -2 g / (1 - rho^2 + sqrt((1 - rho^2)^2 + 4 rho^2 g^2))``, finite for every rho: as
    rho -> 0 the small row becomes ``u_q - g u_p`` (Gram-Schmidt), as it must, instead of being
    lost to underflow. Pairs follow the round-robin (Brent & Luk 1985) order: the rows sit in
    two halves, pair i is (top[i], bottom[i]), and a fixed shuffle between rounds meets every
    pair once per sweep of m - 1 rounds. Stops when every cosine is below 8 eps sqrt(m).
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
        (u, log_u), (v, log_v) = _unit_rows(u), _unit_rows(v)
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
        return (carry[2] > tol) & (carry[3] < _MAX_SWEEPS)

    halves = lambda a: (a[:h], a[h:])  # noqa: E731
    init = (halves(s), halves(t), jnp.asarray(jnp.inf, dtype), 0)
    (s_top, s_bot), *_ = lax.while_loop(more, sweep, init)
    # Descending; the zero padding row is never rotated (cosine 0), so it sorts last.
    return -jnp.sort(-jnp.concatenate([s_top, s_bot]))[:k]


def _log_spectrum(config: MLPConfig, stacked, x, method: str):
    """Descending log singular values of df/dx at one example x (n_0,): (min(n_0, n_L),)."""
    n0, n_out = config.widths[0], config.widths[-1]
    eye = jnp.eye(n0, dtype=jnp.result_type(x, stacked[0][0]))
    if method == "dense":
        prod, _ = _walk(config, stacked, x, lambda p, jac: (jac @ p, None), eye)
        return _log0(jnp.linalg.svd(prod, compute_uv=False))
    if method == "lyapunov":
        (_, s), _ = _walk(config, stacked, x, _lyapunov_step, (eye, jnp.zeros(n0, eye.dtype)))
    else:
        (_, s, t), _ = _walk(config, stacked, x, _graded_step, (eye, jnp.zeros(n0, eye.dtype), eye))
        s = _jacobi_log_svd(s, t)
    s = -jnp.sort(-s)  # descending (a no-op after Jacobi)
    # A layer narrower than n_0 and n_L bounds the rank: the missing singular values are 0.
    return jnp.concatenate([s, jnp.full((min(n0, n_out) - s.shape[0],), -jnp.inf, s.dtype)])


def jacobian_singular_values(
    model: Model, params, x: jax.Array, *, log: bool = False, method: str = "exact"
) -> jax.Array:
    """Singular values of the input-output Jacobian ``df(x)/dx``, per example, descending.

    Args:
      model: an MLP from :func:`gradflow.mlp` (plain or residual; the Jacobian includes the
        output activation).
      params: its parameters (one seed); ``gradflow.sweep`` adds the seed axis.
      x: inputs, shape (batch, n_0).
      log: return ``log sigma`` (``-inf`` for an exact zero). Computed stably by the
        ``"exact"`` and ``"lyapunov"`` methods, so it stays finite at depth 10,000 in float32,
        where ``sigma`` itself (``log=False`` is ``exp`` of it) may overflow or underflow.
      method: ``"exact"`` (default), ``"lyapunov"`` or ``"dense"``; the module docstring states
        when each is exact.

    Returns:
      Shape (batch, min(n_0, n_L)).

    References: Pennington, Schoenholz & Ganguli 2017 (arXiv:1711.04735).
    """
    config = _check(model, params, "jacobian_singular_values")
    check_inputs(model, x)
    _check_method(method)
    out = _batch_log_spectrum(_structure(config), _stack(config, params), x, method)
    return out if log else jnp.exp(out)


@partial(jax.jit, static_argnames=("config", "method"))
def _batch_log_spectrum(config, stacked, x, method):
    return jax.vmap(lambda xi: _log_spectrum(config, stacked, xi, method))(x)


# --------------------------------------------------------------------------------------------
# Summaries


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
