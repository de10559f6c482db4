"""Mean-field theory of signal and gradient propagation in wide random networks (numpy float64).

Setup (Poole et al. 2016; Schoenholz et al. 2017): ``z^l = W^l phi(z^{l-1}) + b^l`` with
``W^l_ij ~ N(0, sigma_w2 / n_{l-1})``, ``b^l_i ~ N(0, sigma_b2)`` (``models.mlp`` with
``init="gaussian"``; neural-tangents' ``W_std**2, b_std**2`` are our ``sigma_w2, sigma_b2``). At
infinite width each pre-activation is Gaussian with variance ``q^l``, and two inputs have
correlation ``c^l``. Names follow the papers: ``q_star`` (q*), ``c_star``, ``chi1``, ``xi_c``...

Quadrature. Gauss-Hermite fails where ``phi(sqrt(q) z)`` is kinked (relu, leaky_relu, selu) or
nearly a step (tanh at q = 10: error 1e-5 with 201 nodes). So 1-D expectations are split at z = 0
and each half-line uses Gauss-Legendre in r = R s^2 (nodes graded towards the kink), and 2-D ones
use polar coordinates with the angle split where u1 = 0 or u2 = 0: both are accurate to ~1e-13
for q <= 30. Closed forms are used for two-slope piecewise-linear phi (linear, relu, leaky_relu)
and for erf; the tests check them against the quadrature.

Conventions. Depth scales are ``xi = -1 / log(chi)``: positive for chi < 1 (shrinks by e every xi
layers), ``inf`` at chi = 1, negative for chi > 1 (|xi| layers per e-fold of growth). Kinked phi
are one-sided at 0 (``phi'(+0.0)`` the right slope, ``phi'(-0.0)`` the left), so q -> 0 limits
are right; their delta-function phi'' is dropped, which is exact because phi(0) = 0 for them.
Where q* = inf (unbounded phi, chaotic) or q* = 0 with sigma_b2 = 0, the normalised maps are
those of the limiting two-slope phi (the slopes at infinity, or at 0).
"""

from __future__ import annotations

import math

import numpy as np
from numpy.polynomial.legendre import leggauss
from scipy import optimize

from gradflow.activations import ACTIVATIONS, _pdf
from gradflow.theory_norm import batchnorm_grad_rate, batchnorm_grad_rate_mc  # noqa: F401

PHI = {name: a.numpy for name, a in ACTIVATIONS.items()}
"""Name (as in :data:`gradflow.activations.ACTIVATIONS`) -> numpy ``f(x) -> (phi, phi', phi'')``."""

# (a+, a-) of the two-slope phi(x) = a+ x (x > 0), a- x (x < 0) with closed forms, and the slopes
# each unbounded phi approaches as q -> inf (both from the one activation table).
_TWO_SLOPE = {n: a.two_slope for n, a in ACTIVATIONS.items() if a.two_slope is not None}
_ASYMPTOTIC = {n: a.asymptotic for n, a in ACTIVATIONS.items() if a.asymptotic is not None}


def _graded(n, radius=11.0):  # radius 11: the Gaussian tail beyond is below 1e-24
    t, w = leggauss(n)
    s = (t + 1) / 2
    return radius * s * s, w * radius * s  # r = R s^2 on s in [0, 1]; dr = 2 R s ds


_R1, _W1 = _graded(100)
_W1 = _W1 * _pdf(_R1)
_R2, _W2 = _graded(80)
_W2 = _W2 * _R2 * np.exp(-0.5 * _R2**2) / (2 * math.pi)
_T2, _V2 = leggauss(64)


def _check(activation, sigma_w2, sigma_b2):
    if activation not in PHI:
        raise ValueError(f"unknown activation {activation!r}; choose one of: {', '.join(PHI)}")
    if not (np.isfinite(sigma_w2) and sigma_w2 > 0):
        raise ValueError(f"sigma_w2 must be finite and > 0, got {sigma_w2!r}")
    if not (np.isfinite(sigma_b2) and sigma_b2 >= 0):
        raise ValueError(f"sigma_b2 must be finite and >= 0, got {sigma_b2!r}")
    return float(sigma_w2), float(sigma_b2)


def _two_slope(slopes, what, q, c):
    """Closed forms for the two-slope phi via the arc-cosine kernel (Cho & Saul 2009)."""
    ap, am = slopes
    b2 = (ap - am) ** 2
    c = np.clip(c, -1.0, 1.0)
    theta = np.arccos(c)
    if what == "k":  # E[phi(u1) phi(u2)]
        return q * (ap * am * c + b2 * (np.sqrt(1 - c * c) + (np.pi - theta) * c) / (2 * np.pi))
    if what == "kd":  # E[phi'(u1) phi'(u2)]
        return ap * am + b2 * (np.pi - theta) / (2 * np.pi) + 0 * q
    return ((ap**4 + am**4) / 2 if what == "d4" else 0.0) + 0 * q  # pdd: phi = 0 where phi'' is


def _erf_closed(what, q, c):
    """Closed forms for erf (Williams 1998): Gaussian integrals of erf and exp(-x^2)."""
    if what == "k":
        return 2 / np.pi * np.arcsin(2 * q * c / (1 + 2 * q))
    if what == "kd":
        return 4 / np.pi / np.sqrt((1 + 2 * q) ** 2 - 4 * q * q * c * c)
    if what == "d4":
        return 16 / np.pi**2 / np.sqrt(1 + 8 * q)
    return -8 * q / (np.pi * (1 + 2 * q) * np.sqrt(1 + 4 * q))  # pdd


def _integrand(activation, what, u, v):
    a, b = PHI[activation](u), PHI[activation](v)
    return {"k": a[0] * b[0], "kd": a[1] * b[1], "d4": a[1] ** 4, "pdd": a[0] * a[2]}[what]


def _expect(activation, what, q, c=1.0, method="auto"):
    """Gaussian expectations with u1, u2 ~ N(0, q), corr(u1, u2) = c; broadcasts over q and c.

    what: "k" E[phi(u1) phi(u2)], "kd" E[phi'(u1) phi'(u2)], and at c = 1 "d4" E[phi'(u)^4],
    "pdd" E[phi(u) phi''(u)]. method: "auto" (closed form if any), "closed" or "quadrature".
    """
    q, c = np.asarray(q, dtype=float), np.asarray(c, dtype=float)
    if np.any(np.isinf(q)):
        if activation not in _ASYMPTOTIC:
            raise ValueError(f"q = inf has no limit for the bounded activation {activation!r}")
        return _two_slope(_ASYMPTOTIC[activation], what, np.where(np.isinf(q), 1.0, q), c)
    if method != "quadrature" and activation in _TWO_SLOPE:
        return _two_slope(_TWO_SLOPE[activation], what, q, c)
    if method != "quadrature" and activation == "erf":
        return _erf_closed(what, q, c)
    if method == "closed":
        raise ValueError(f"no closed form for {activation!r}; use method='quadrature'")
    sq = np.sqrt(q)[..., None]
    if np.all(c == 1.0):  # 1-D: the two half-lines
        x = sq * _R1
        return np.sum(
            _W1 * (_integrand(activation, what, x, x) + _integrand(activation, what, -x, -x)), -1
        )
    # 2-D in polar coordinates: u1 = sqrt(q) r cos(t), u2 = sqrt(q) r cos(t - t0), cos(t0) = c;
    # the integrand is smooth on each arc between the lines u1 = 0 and u2 = 0.
    t0 = np.arccos(np.clip(c, -1.0, 1.0))[..., None]
    fixed = np.broadcast_to(np.array([0, np.pi / 2, 1.5 * np.pi, 2 * np.pi]), t0.shape[:-1] + (4,))
    cuts = np.concatenate(
        [fixed, (t0 + np.pi / 2) % (2 * np.pi), (t0 - np.pi / 2) % (2 * np.pi)], -1
    )
    cuts = np.sort(cuts, axis=-1)
    lo, hi = cuts[..., :-1, None], cuts[..., 1:, None]
    t = (lo + (hi - lo) * (_T2 + 1) / 2).reshape(*lo.shape[:-2], -1)  # (..., 5 arcs * 64)
    wt = ((hi - lo) / 2 * _V2).reshape(t.shape)
    r = sq[..., None] * _R2
    vals = _integrand(activation, what, r * np.cos(t)[..., None], r * np.cos(t - t0)[..., None])
    return np.einsum("...i,j,...ij->...", wt, _W2, vals)


def _limit_slopes(activation, q, sigma_b2):
    """Two-slope phi governing the normalised maps at q = inf, or at q = 0 when it is 0/0."""
    if np.isinf(q):
        return _ASYMPTOTIC[activation]
    if q == 0 and sigma_b2 == 0 and PHI[activation](0.0)[0] == 0:
        return tuple(float(PHI[activation](x)[1]) for x in (0.0, -0.0))
    return None


def q_map(q, activation: str, sigma_w2: float, sigma_b2: float):
    """Length map q^l = sigma_w2 E[phi(sqrt(q^{l-1}) z)^2] + sigma_b2, z ~ N(0, 1).

    Args:
      q: pre-activation variance q^{l-1} >= 0, scalar or array (any shape).
      activation: a key of ``PHI`` (the names of ``models.ACTIVATIONS``).
      sigma_w2, sigma_b2: weight (times fan-in) and bias variances.

    Returns:
      q^l, shaped like ``q``.

    References:
      Poole, Lahiri, Raghu, Sohl-Dickstein, Ganguli 2016 (arXiv:1606.05340).
    """
    sigma_w2, sigma_b2 = _check(activation, sigma_w2, sigma_b2)
    q = np.asarray(_q(activation, sigma_w2, sigma_b2, q), dtype=float)
    return np.where(np.isinf(q), np.inf, sigma_w2 * _expect(activation, "k", q) + sigma_b2)


def q_star(activation: str, sigma_w2: float, sigma_b2: float, *, q0: float = 1.0) -> float:
    """Fixed point q* = q_map(q*) reached by iterating the length map from q^1 = q0.

    Fixed-point iteration moves into q0's basin, then the root is bracketed in the direction the
    map moves and polished by brentq (~1e-15 relative). Returns

    - ``0.0`` if the map contracts to the origin (sigma_b2 = 0 and phi(0) = 0: tanh with
      sigma_w2 <= 1, relu with sigma_w2 < 2; q* ~ 1e-16 is numerically 0 right at sigma_w2 = 1);
    - ``inf`` if q grows without bound (unbounded phi, chaotic: relu with sigma_w2 > 2, or
      sigma_w2 = 2 and sigma_b2 > 0; linear with sigma_w2 >= 1 and sigma_b2 > 0);
    - ``q0`` if every q is fixed (two-slope phi at its critical sigma_w2 with sigma_b2 = 0, e.g.
      relu at He init): the length of the input is preserved.

    References:
      Poole et al. 2016 (arXiv:1606.05340); Schoenholz, Gilmer, Ganguli, Sohl-Dickstein 2017
      (arXiv:1611.01232).
    """
    sigma_w2, sigma_b2 = _check(activation, sigma_w2, sigma_b2)
    if not (np.isfinite(q0) and q0 >= 0):
        raise ValueError(f"q0 must be finite and >= 0, got {q0!r}")
    if activation in _TWO_SLOPE:  # q_map is affine: q -> sigma_w2 m q + sigma_b2
        slope = sigma_w2 * sum(a * a for a in _TWO_SLOPE[activation]) / 2
        if slope < 1:
            return sigma_b2 / (1 - slope)
        return float(q0) if slope == 1 and sigma_b2 == 0 else math.inf
    cap = 1e12 * (1 + sigma_w2 + sigma_b2)

    def f(q):
        return float(sigma_w2 * _expect(activation, "k", q) + sigma_b2)

    q = float(q0)
    for _ in range(50):
        q = f(q)
        if q > cap:
            return math.inf
    if (fq := f(q)) == q:
        return q
    ratio, b = fq / q, fq  # a monotone map does not overshoot q*: search on from f(q)
    while (fb := f(b) - b) != 0 and (fb > 0) == (ratio > 1):
        if b > cap:
            return math.inf
        if b < 1e-300:
            return 0.0  # contracts all the way to q* = 0
        ratio *= ratio
        b = q * ratio
    if fb == 0:
        return b
    return optimize.brentq(lambda x: f(x) - x, min(q, b), max(q, b), xtol=1e-300, rtol=1e-15)


def _q(activation, sigma_w2, sigma_b2, q):
    if q is None:
        return q_star(activation, sigma_w2, sigma_b2)
    if np.any(np.asarray(q) < 0) or np.any(np.isnan(q)):
        raise ValueError(f"q must be >= 0, got {q}")
    return q


def c_map(c, activation: str, sigma_w2: float, sigma_b2: float, q=None):
    """Correlation map c^l = (sigma_w2 E[phi(u1) phi(u2)] + sigma_b2) / q_map(q).

    u1 = sqrt(q) z1, u2 = sqrt(q) (c z1 + sqrt(1 - c^2) z2): two inputs of length q with
    correlation c. At q = q* the denominator is q*, the papers' form.

    Args:
      c: correlation(s) in [-1, 1], scalar or array.
      q: the inputs' variance (a scalar); default q*.

    Returns:
      c^l, shaped like ``c``.

    References:
      Poole et al. 2016 (arXiv:1606.05340); Schoenholz et al. 2017.
    """
    sigma_w2, sigma_b2 = _check(activation, sigma_w2, sigma_b2)
    c = np.asarray(c, dtype=float)
    if np.any(np.abs(c) > 1) or np.any(np.isnan(c)):
        raise ValueError(f"c must lie in [-1, 1], got {c}")
    q = float(_q(activation, sigma_w2, sigma_b2, q))
    if (slopes := _limit_slopes(activation, q, sigma_b2)) is not None:
        return _two_slope(slopes, "k", 1.0, c) / _two_slope(slopes, "k", 1.0, 1.0)
    num = sigma_w2 * _expect(activation, "k", q, c) + sigma_b2
    return num / (sigma_w2 * _expect(activation, "k", q) + sigma_b2)


def c_star(activation: str, sigma_w2: float, sigma_b2: float) -> float:
    """Stable fixed point c* of the correlation map at q*.

    1.0 where c = 1 attracts: the ordered phase and the critical line (chi1 <= 1), and where q*
    is 0 or inf (the limiting two-slope map has c^l >= c^{l-1}). In the chaotic phase, the root of
    c_map(c) = c in [0, 1) (brentq): the map increases on [0, 1] from c_map(0) >= 0, so this is
    the point reached from uncorrelated inputs.

    References:
      Poole et al. 2016 (arXiv:1606.05340); Schoenholz et al. 2017.
    """
    sigma_w2, sigma_b2 = _check(activation, sigma_w2, sigma_b2)
    q = q_star(activation, sigma_w2, sigma_b2)
    if _limit_slopes(activation, q, sigma_b2) or chi1(activation, sigma_w2, sigma_b2, q=q) <= 1:
        return 1.0

    def g(c):
        return float(c_map(c, activation, sigma_w2, sigma_b2, q)) - c

    if g(0.0) <= 0:  # c_map(0) = (sigma_w2 E[phi]^2 + sigma_b2) / q* >= 0, so it is 0 here
        return 0.0
    delta = 0.5
    while g(1 - delta) >= 0:  # c* is within delta of 1 (near-critical): move the bracket up
        delta /= 8
        if delta < 1e-13:
            return 1.0
    return optimize.brentq(g, 0.0, 1 - delta, xtol=1e-15)


def chi1(activation: str, sigma_w2: float, sigma_b2: float, *, q=None):
    """chi_1 = sigma_w2 E[phi'(sqrt(q*) z)^2], the slope of the c-map at c = 1.

    Also the growth factor of E||dC/dz^l||^2 per layer going backwards, and the mean squared
    singular value of one layer Jacobian D^l W^l. chi1 < 1: ordered (gradients vanish);
    chi1 > 1: chaotic (explode); chi1 = 1: critical.

    Args:
      q: variance(s) at which to evaluate (any shape), default q*; pass ``q_sequence(...)`` for
        the per-layer chi1^l along the q transient.

    Returns:
      chi1: a float, or an array shaped like ``q``.

    References:
      Poole et al. 2016; Schoenholz et al. 2017 (arXiv:1611.01232).
    """
    sigma_w2, sigma_b2 = _check(activation, sigma_w2, sigma_b2)
    out = sigma_w2 * _expect(activation, "kd", _q(activation, sigma_w2, sigma_b2, q))
    return float(out) if np.ndim(out) == 0 else out


def chi_c(activation: str, sigma_w2: float, sigma_b2: float) -> float:
    """chi_c = sigma_w2 E[phi'(u1) phi'(u2)] at (q*, c*): the slope of the c-map at c*.

    Equals chi1 in the ordered phase (c* = 1). Where q* is 0 or inf it is the slope of the
    limiting two-slope map, 1 at c* = 1: correlations then converge only algebraically.

    References:
      Schoenholz et al. 2017 (arXiv:1611.01232).
    """
    sigma_w2, sigma_b2 = _check(activation, sigma_w2, sigma_b2)
    q, c = q_star(activation, sigma_w2, sigma_b2), c_star(activation, sigma_w2, sigma_b2)
    if (slopes := _limit_slopes(activation, q, sigma_b2)) is not None:
        return float(_two_slope(slopes, "kd", 1.0, c) / _two_slope(slopes, "k", 1.0, 1.0))
    return float(sigma_w2 * _expect(activation, "kd", q, c))


def _xi(chi):
    log = np.log(chi)
    return math.inf if log == 0 else float(-1 / log)


def xi_q(activation: str, sigma_w2: float, sigma_b2: float) -> float:
    """Length depth scale xi_q = -1 / log(chi1 + sigma_w2 E[phi''(u) phi(u)]), u ~ N(0, q*).

    The argument of the log is d q_map / dq at q* (Stein's lemma): |q^l - q*| ~ exp(-l / xi_q).
    Negative where q* = inf: q then grows by e every |xi_q| layers.

    References:
      Schoenholz et al. 2017 (arXiv:1611.01232).
    """
    sigma_w2, sigma_b2 = _check(activation, sigma_w2, sigma_b2)
    q = q_star(activation, sigma_w2, sigma_b2)
    pdd = 0.0 if np.isinf(q) else float(_expect(activation, "pdd", q))
    return _xi(chi1(activation, sigma_w2, sigma_b2, q=q) + sigma_w2 * pdd)


def xi_c(activation: str, sigma_w2: float, sigma_b2: float) -> float:
    """Correlation depth scale xi_c = -1 / log chi_c; diverges on the critical line.

    Schoenholz et al. find networks trainable when the depth L <~ 6 xi_c.

    References:
      Schoenholz et al. 2017 (arXiv:1611.01232).
    """
    return _xi(chi_c(activation, sigma_w2, sigma_b2))


def xi_grad(activation: str, sigma_w2: float, sigma_b2: float) -> float:
    """Gradient depth scale xi_grad = -1 / log chi1: E||dC/dz^l||^2 ~ exp(-(L - l) / xi_grad).

    Positive: vanishing going back from the output (ordered); inf: critical; negative: exploding
    (chaotic), |xi_grad| layers per e-fold of growth.

    References:
      Schoenholz et al. 2017 (arXiv:1611.01232).
    """
    return _xi(chi1(activation, sigma_w2, sigma_b2))


def critical_sigma_w2(activation: str, sigma_b2: float) -> float:
    """The order-to-chaos line: the sigma_w2 at which chi1 = 1 for this sigma_b2 (brentq).

    Exact for two-slope phi: 2 / (a+^2 + a-^2) (relu 2, linear 1; q* = inf on the line if
    sigma_b2 > 0). For tanh at sigma_b2 = 0, chi1 - 1 ~ (sigma_w2 - 1)^2 / 3 just above the
    line, so float64 resolves the root to ~1e-7. Where q* (from q0 = 1) jumps to inf at a
    saddle-node of the length map (gelu with small sigma_b2), chi1 jumps across 1 and the jump
    is returned: still the edge between the ordered and the exploding phase.

    Raises:
      ValueError: if chi1 stays below 1 up to sigma_w2 = 1e6.

    References:
      Poole et al. 2016; Schoenholz et al. 2017 (arXiv:1611.01232).
    """
    _check(activation, 1.0, sigma_b2)
    if activation in _TWO_SLOPE:
        return 2 / sum(a * a for a in _TWO_SLOPE[activation])

    def h(s):
        return chi1(activation, s, sigma_b2) - 1

    lo = hi = 1.0
    if (h1 := h(1.0)) == 0:
        return 1.0
    while h1 > 0 and h(lo) > 0:  # chi1 increases with sigma_w2: halve or double to bracket
        hi, lo = lo, lo / 2
    while h1 < 0 and h(hi) < 0:
        lo, hi = hi, hi * 2
        if hi > 1e6:
            raise ValueError(f"{activation!r} has no chi1 = 1 point for sigma_b2={sigma_b2}")
    return optimize.brentq(h, lo, hi, xtol=1e-13)


def phase(activation: str, sigma_w2: float, sigma_b2: float, tol: float = 1e-3) -> str:
    """Phase from chi1: "ordered" (< 1 - tol), "critical" (|chi1 - 1| <= tol) or "chaotic".

    tol = 1e-3 calls a network critical when |xi_grad| > ~1000 layers; tol ~ 1 / depth says that
    the gradient changes by less than a factor e over a network of that depth.
    """
    x = chi1(activation, sigma_w2, sigma_b2)
    return "critical" if abs(x - 1) <= tol else ("ordered" if x < 1 else "chaotic")


def chi1_grid(activation: str, sigma_w2s, sigma_b2s) -> np.ndarray:
    """chi1 over a (sigma_w2, sigma_b2) grid for phase diagrams, shape (n_w2, n_b2).

    The chi1 = 1 contour is the order-to-chaos line (compare ``critical_sigma_w2``).
    """
    sw, sb = np.asarray(sigma_w2s, dtype=float), np.asarray(sigma_b2s, dtype=float)
    if sw.ndim != 1 or sb.ndim != 1:
        raise ValueError(f"sigma_w2s and sigma_b2s must be 1-D, got shapes {sw.shape}, {sb.shape}")
    return np.array([[chi1(activation, w, b) for b in sb] for w in sw]).reshape(sw.size, sb.size)


# Depth profiles (q^l, gradient ratios, Jacobian moments) build on the maps above.
from gradflow.theory_depth import (  # noqa: E402, F401
    JacobianMoments,
    jacobian_moments,
    predicted_grad_ratios,
    q_sequence,
)
