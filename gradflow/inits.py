"""Weight initialisations: every init written out, untruncated, so papers reproduce exactly.

:func:`init_dense` draws one dense layer ``{"w": (n_in, n_out), "b": (n_out,)}``; the draws are
``jax.random.normal``/``uniform``'s bit for bit (via :mod:`gradflow.rng`).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from gradflow import rng

INIT_FORMULAS = {
    "nielsen": "W ~ N(0, 1/n_in), b ~ N(0, 1) (Nielsen's network2.py default_weight_initializer)",
    "standard_normal": "W ~ N(0, 1), b ~ N(0, 1) (network2.py's large_weight_initializer)",
    "glorot_uniform": "W ~ U[+-sqrt(6/(n_in+n_out))], b = 0 (Glorot & Bengio 2010 Eq. 16, "
    "'normalized'; Keras glorot_uniform)",
    "glorot_normal": "W ~ N(0, 2/(n_in+n_out)) untruncated, b = 0 (Keras-style glorot_normal, "
    "which truncates at 2 sd; same variance as glorot_uniform)",
    "glorot_standard": "W ~ U[+-1/sqrt(n_in)], b = 0 (Glorot & Bengio 2010 Eq. 1: the 'standard' "
    "heuristic they criticise, Var W = 1/(3 n_in); not Keras's glorot_*)",
    "lecun": "W ~ N(0, 1/n_in), b = 0 (LeCun et al. 1998)",
    "he": "W ~ N(0, 2/n_in), b = 0 (He et al. 2015)",
    "orthogonal": "W = sqrt(sigma_w2) Q, Q Haar (semi-)orthogonal (W^T W = sigma_w2 I when n_in >= "
    "n_out), b ~ N(0, sigma_b2) (Saxe et al. 2014; Pennington et al. 2017)",
    "gaussian": "W ~ N(0, sigma_w2/n_in), b ~ N(0, sigma_b2) (mean-field convention of Poole "
    "et al. 2016 and Schoenholz et al. 2017; neural-tangents' W_std**2 is sigma_w2)",
}
"""Every initialisation and its formula (the ``--init`` help prints this table). All are
untruncated, so papers reproduce exactly; sigma_w2/sigma_b2 default to 1 and 0."""

INITS = tuple(INIT_FORMULAS)
"""Initialisation names; formulas in :data:`INIT_FORMULAS`."""

_SIGMA_INITS = ("gaussian", "orthogonal")


def check_init(name: str) -> None:
    if name not in INITS:
        raise ValueError(f"unknown init {name!r}; choose one of: {', '.join(INITS)}")


def check_sigmas(init: str, sigma_w2, sigma_b2) -> tuple[float, float]:
    if init not in _SIGMA_INITS and (sigma_w2 is not None or sigma_b2 is not None):
        raise ValueError(
            f"sigma_w2/sigma_b2 only apply to init='gaussian' or 'orthogonal', not {init!r}; "
            "drop them or switch the init"
        )
    sigma_w2 = 1.0 if sigma_w2 is None else float(sigma_w2)
    sigma_b2 = 0.0 if sigma_b2 is None else float(sigma_b2)
    if not sigma_w2 > 0 or not sigma_b2 >= 0 or not math.isfinite(sigma_w2 + sigma_b2):
        raise ValueError(
            f"need sigma_w2 > 0 and sigma_b2 >= 0 (both finite), got {sigma_w2}, {sigma_b2}"
        )
    return sigma_w2, sigma_b2


def check_override(init: str, sigma_w2, sigma_b2) -> None:
    # init(key, sigma_w2=...) overrides (sweep grids) would be silently ignored by other inits.
    if init not in _SIGMA_INITS and (sigma_w2 is not None or sigma_b2 is not None):
        raise ValueError(
            f"sigma_w2/sigma_b2 only apply to init='gaussian' or 'orthogonal', not {init!r}; "
            "drop the override (hyper=) or build the model with one of those inits"
        )


def orthogonal(key: jax.Array, n_in: int, n_out: int, dtype=jnp.float32) -> jax.Array:
    """A Haar-random (semi-)orthogonal matrix of shape (n_in, n_out).

    QR of a Gaussian matrix with the signs of diag(R) folded into Q (Mezzadri 2007), so the
    distribution is exactly Haar. Q^T Q = I if n_in >= n_out, else Q Q^T = I.
    """
    n, m = max(n_in, n_out), min(n_in, n_out)
    a = rng.normal(key, (n, m), dtype)
    q, r = jnp.linalg.qr(a)
    q = q * jnp.sign(jnp.diagonal(r))[None, :]
    return q if n_in >= n_out else q.T


def init_dense(
    key: jax.Array,
    n_in: int,
    n_out: int,
    init: str,
    sigma_w2=1.0,
    sigma_b2=0.0,
    dtype=jnp.float32,
    *,
    transposed: bool = False,
) -> dict[str, jax.Array]:
    """Draw one dense layer ``{"w": (n_in, n_out), "b": (n_out,)}`` with the named init
    (formulas: :data:`INIT_FORMULAS`).

    ``sigma_w2`` and ``sigma_b2`` are used by ``gaussian`` and ``orthogonal`` only; they may be
    traced arrays, so a grid of them is one compiled function (no recompilation per value).
    Draws are ``jax.random.normal``/``uniform``'s, bit for bit (via :mod:`gradflow.rng`, which
    computes them about twice as fast on CPU). ``transposed=True`` draws the same W in the
    memory order of W^T, the order a feature-major forward pass reads (see ``mlp_forward``),
    so XLA need not copy it.
    """
    kw, kb = rng.split(key)
    shape = (n_in, n_out)  # w below is W, or W^T if transposed: the same numbers either way
    normal = lambda: rng.normal(kw, shape, dtype, transpose=transposed)  # noqa: E731
    uniform = lambda lim: rng.uniform(kw, shape, dtype, -lim, lim, transpose=transposed)  # noqa: E731
    if init == "nielsen":
        w = normal() / math.sqrt(n_in)
        b = rng.normal(kb, (n_out,), dtype)
    elif init == "standard_normal":
        w = normal()
        b = rng.normal(kb, (n_out,), dtype)
    elif init == "glorot_uniform":
        w = uniform(math.sqrt(6.0 / (n_in + n_out)))
        b = jnp.zeros((n_out,), dtype)
    elif init == "glorot_normal":
        w = normal() * math.sqrt(2.0 / (n_in + n_out))
        b = jnp.zeros((n_out,), dtype)
    elif init == "glorot_standard":
        w = uniform(1.0 / math.sqrt(n_in))
        b = jnp.zeros((n_out,), dtype)
    elif init == "lecun":
        w = normal() / math.sqrt(n_in)
        b = jnp.zeros((n_out,), dtype)
    elif init == "he":
        w = normal() * math.sqrt(2.0 / n_in)
        b = jnp.zeros((n_out,), dtype)
    elif init == "gaussian":
        w = normal() * jnp.sqrt(sigma_w2 / n_in).astype(dtype)
        b = rng.normal(kb, (n_out,), dtype) * jnp.sqrt(sigma_b2).astype(dtype)
    elif init == "orthogonal":
        w = orthogonal(kw, n_in, n_out, dtype) * jnp.sqrt(sigma_w2).astype(dtype)
        w = w.T if transposed else w
        b = rng.normal(kb, (n_out,), dtype) * jnp.sqrt(sigma_b2).astype(dtype)
    else:
        check_init(init)
        raise AssertionError(init)
    # Drawn once: XLA would otherwise recompute the draw inside every consumer (b is broadcast
    # over the batch in z = a W + b; w is read by two matmuls and a norm), see rng.once.
    w = rng.once(w)
    return {"w": w.T if transposed else w, "b": rng.once(b)}
