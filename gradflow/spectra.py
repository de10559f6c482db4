"""Jacobian spectra of any model: layer Jacobians and the input-output spectrum at any depth.

The input-output Jacobian of one example is ``J = df(x)/dx`` of ``model.apply`` (n_out, n_in),
the example's input and output flattened. For a model built from gf layers (``model.net``:
:func:`gradflow.mlp`, :func:`gradflow.from_layers`) J is the product of the leaf Jacobians that
:func:`gradflow.layers.walk` hands out: matrices (dense, residual ``I + s J_branch``, others by
``jax.jacfwd``) and diagonals (activations, taps). For :func:`gradflow.mlp` (row vectors,
``z^l = a^{l-1} W^l + b^l``, ``a^l = phi(z^l)``, or ``a^{l-1} + s phi(z^l)`` if residual, output
``a^L = phi_out(z^L)``) the layer Jacobians, acting on column vectors, are::

    J^l = da^l/da^{l-1} = diag(phi'(z^l)) (W^l)^T           hidden layer
    J^l = I + s diag(phi'(z^l)) (W^l)^T                     residual layer (n_l = n_{l-1})
    J^L = diag(phi_out'(z^L)) (W^L)^T                       output layer (phi_out' = 1 if None)

and ``J = J^L ... J^1`` includes the output activation.

Input-output singular values (``method=``):

* ``"dense"``: ``jax.jacfwd`` of ``model.apply`` at one example, then an SVD; any model (also
  :func:`gradflow.from_apply`). Exact up to rounding while J fits the float range, but values
  below ~eps * sigma_max are noise, and in float32 a few hundred non-isometric layers overflow.
* ``"lyapunov"`` (gf-layer models): the classic QR method, a matmul per matrix layer and a QR
  per block of layers. The values sum to ``log|det J|`` exactly and estimate each
  ``log sigma_i`` to O(1) at any depth (Lyapunov exponents with an O(1/L) bias). Cheapest.
* ``"exact"`` (default; gf-layer models): graded, pre-pivoted QR accumulation, then a float64
  SVD of the graded factor, window by window: the true ``log sigma_i`` at any depth, to ~eps
  per QR (absolute) whatever sigma_i's magnitude. A matmul per matrix layer; a QR and one more
  matmul per block.

Both re-orthogonalise (QR) after blocks of layers as long as float32 rounding allows
(``reorth_every``; :mod:`gradflow.linalg`): every layer for Gaussian weights, every 16 for
orthogonal ones. On 2 shared CPU cores at depth 50, width 256 (tanh, Gaussian; bench/run.py)
``"exact"`` takes ~5-6x and ``"lyapunov"`` ~4.3-5x the time of ``jax.jacfwd`` + SVD, most of it
in the per-layer QRs: LAPACK factors a 256 x 256 matrix at ~13 GFLOP/s on one core, so even with
a vmapped batch split over the cores (:mod:`gradflow.per_core`) a QR costs ~4 batched matmuls. A
Gaussian layer pollutes too much for float32 blocks, so a fold per layer is the floor in float32.

:mod:`gradflow.linalg` holds the factorisations (and says when each is exact) and the summaries
(:func:`spectrum_summary`, :func:`spectral_density`, re-exported here). Diagonal factors
scale the running factor without a QR, so an MLP layer (dense, tap, phi) costs one QR. Runs of
identical layers, scanned or not (the walk stacks an unscanned run's params), are walked by one
``lax.scan`` (depth 10,000 compiles to one loop, depth 50 like depth 1), and each function is
one jitted program per structure (``model.net.spec``) and input shape. Every public function
takes ``(model, params, x, ...)`` for one seed; ``gradflow.sweep`` adds seeds.

References: Pennington, Schoenholz & Ganguli 2017 (arXiv:1711.04735); Saxe et al. 2014
(arXiv:1312.6120); Newman 1986 and Cohen & Newman 1984 (Lyapunov exponents of Gaussian
products); Glorot & Bengio 2010 (layer Jacobians at initialisation).
"""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp

from gradflow import layers as gl
from gradflow import linalg
from gradflow.layer_spectra import (
    _check,
    _dtype,
    _Net,
    _net,
    layer_jacobians,
    layer_singular_values,
)
from gradflow.linalg import SpectrumSummary, spectral_density, spectrum_summary
from gradflow.models import Model

__all__ = [
    "METHODS",
    "SpectrumSummary",
    "jacobian_singular_values",
    "layer_jacobians",
    "layer_singular_values",
    "spectral_density",
    "spectrum_summary",
]

METHODS = ("exact", "lyapunov", "dense")
"""Input-output spectrum methods, see the module docstring."""


# --------------------------------------------------------------------------------------------
# Input-output spectrum


def _log_spectrum(layer: gl.Layer, params, x1, method: str, fixed_rank: bool, reorth_every):
    """Descending log singular values of df/dx at one example x1: (min(in_size, out_size),)."""
    acc = linalg.accumulator(method, fixed_rank=fixed_rank, reorth_every=reorth_every)

    def step(state, jac):
        return acc.diag(state, jac.d) if isinstance(jac, gl.Diag) else acc.matrix(state, jac)

    y1, state = gl.walk(layer, params, x1, step, acc.init(x1.size, _dtype(params, x1)))
    s = acc.log_sv(state)
    # A layer narrower than input and output bounds the rank: the missing values are 0.
    k = min(x1.size, y1.size)
    return jnp.concatenate([s[:k], jnp.full((k - min(k, s.shape[0]),), -jnp.inf, s.dtype)])


@partial(jax.jit, static_argnames=("net", "method", "reorth_every"))
def _stable_log_spectra(net: _Net, params, x, method: str, reorth_every):
    def run(fixed_rank):
        one = lambda xi: _log_spectrum(net.layer, params, xi, method, fixed_rank, reorth_every)  # noqa: E731
        return jax.vmap(one)(x)

    try:
        return run(False)
    except TypeError as e:
        # A scanned block that narrows below the running rank changes the state's shapes
        # between iterations (the rank shrinks in the first): keep the rank fixed instead.
        if "carry" not in str(e):
            raise
        return run(True)


@partial(jax.jit, static_argnames=("model",))
def _dense_log_spectra(model: Model, params, x):
    def one(x1):
        def f(v):
            y = model.apply(params, v.reshape(x1.shape)[None])
            if not hasattr(y, "shape") or y.ndim < 1 or y.shape[0] != 1:
                raise ValueError(
                    "method='dense' needs model.apply to return one array with the batch axis "
                    f"first; for a batch of 1 it returned {getattr(y, 'shape', type(y).__name__)}"
                )
            return y[0].ravel()

        jac = jax.jacfwd(f)(x1.ravel())  # (out_size, in_size)
        return linalg.log0(jnp.linalg.svd(jac, compute_uv=False))

    return jax.vmap(one)(x)


def jacobian_singular_values(
    model: Model,
    params,
    x: jax.Array,
    *,
    log: bool = False,
    method: str = "exact",
    reorth_every: int | None = None,
) -> jax.Array:
    """Singular values of the input-output Jacobian ``df(x)/dx``, per example, descending.

    Args:
      model: any model for ``method="dense"``; a model built from gf layers (``model.net``:
        :func:`gradflow.mlp`, :func:`gradflow.from_layers`) for ``"exact"`` and ``"lyapunov"``.
        The Jacobian is that of ``model.apply`` (output activation included), one example's
        input and output flattened.
      params: its parameters (one seed); ``gradflow.sweep`` adds the seed axis.
      x: inputs, shape (batch, ``*in_shape``).
      log: return ``log sigma`` (``-inf`` for an exact zero). Computed stably by the
        ``"exact"`` and ``"lyapunov"`` methods, so it stays finite at depth 10,000 in float32,
        where ``sigma`` itself (``log=False`` is ``exp`` of it) may overflow or underflow.
      method: ``"exact"`` (default), ``"lyapunov"`` or ``"dense"``; the module docstring states
        when each is exact.
      reorth_every: ``"exact"`` and ``"lyapunov"`` only: re-orthogonalise (QR) after every k
        matrix layers. None (default) picks k at run time, as large as keeps float32 rounding
        within the error of folding every layer (:mod:`gradflow.linalg`): 1 for a Gaussian
        tanh MLP, up to 16 for orthogonal or near-isometric ones. A fixed k > 1 is faster and
        loses accuracy in the smallest values first (depth 50, width 256, tanh: k = 2 moves the
        smallest log sigma by ~0.2, k = 3 by ~3).

    Returns:
      Shape (batch, min(in_size, out_size)).

    References: Pennington, Schoenholz & Ganguli 2017 (arXiv:1711.04735).
    """
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; choose one of: {', '.join(METHODS)}")
    if reorth_every is not None and method == "dense":
        raise ValueError("reorth_every applies to method='exact' or 'lyapunov', not 'dense'")
    linalg.accumulator("exact", reorth_every=reorth_every)  # validates reorth_every
    if method == "dense":
        _check(model, params, x, "jacobian_singular_values")
        out = _dense_log_spectra(model, params, x)
    else:
        net = _Net(_net(model, f"jacobian_singular_values(method={method!r})"))
        _check(model, params, x, "jacobian_singular_values")
        out = _stable_log_spectra(net, params, x, method, reorth_every)
    return out if log else jnp.exp(out)
