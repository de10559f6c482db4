"""Normalisation layers: LayerNorm, RMSNorm (per example, closed-form Jacobians) and BatchNorm.

All three normalise over the last axis of ``x`` (features, size d) and take a learned gain
``scale`` (init 1) and, except RMSNorm, a learned ``offset`` (init 0; counted as a bias by the
probes). LayerNorm and RMSNorm act on each position of each example on its own, so an example of
shape (seq, d) has a block-diagonal Jacobian, one (d, d) block per position. BatchNorm's
statistics come from the whole batch, so one example's output depends on the others: it has no
per-example Jacobian and its ``jac`` says so.

References:
  Ba, Kiros & Hinton 2016, "Layer Normalization" (arXiv:1607.06450).
  Zhang & Sennrich 2019, "Root Mean Square Layer Normalization" (arXiv:1910.07467).
  Ioffe & Szegedy 2015, "Batch Normalization" (arXiv:1502.03167).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from gradflow.layers import Layer


def _row(v: jax.Array, ndim: int) -> jax.Array:
    """A (d,) parameter shaped (1, ..., 1, d) so it broadcasts against an ndim-array explicitly."""
    return v.reshape((1,) * (ndim - 1) + v.shape)


def _check_eps(eps) -> float:
    eps = float(eps)
    if not eps >= 0:
        raise ValueError(f"eps must be a float >= 0, got {eps}")
    return eps


def _check_features(kind: str, in_shape) -> tuple[int, ...]:
    in_shape = tuple(in_shape)
    if len(in_shape) == 0 or in_shape[-1] is None or in_shape[-1] < 1:
        raise ValueError(
            f"{kind} normalises over the last axis; it needs inputs of shape (..., d) with d >= 1,"
            f" got one example of shape {in_shape}"
        )
    return in_shape


def _scale_offset(d: int, *, offset: bool = True) -> dict[str, jax.Array]:
    params = {"scale": jnp.ones((d,), jnp.float32)}
    if offset:
        params["offset"] = jnp.zeros((d,), jnp.float32)
    return params


def _block_diagonal(blocks: jax.Array) -> jax.Array:
    """(P, d, d) per-position blocks -> the (P d, P d) block-diagonal Jacobian."""
    p, d, _ = blocks.shape
    eye = jnp.eye(p, dtype=blocks.dtype)
    return jnp.einsum("tu,tij->tiuj", eye, blocks).reshape(p * d, p * d)


def _per_position(block_fn, params, x1: jax.Array) -> jax.Array:
    """Jacobian of one example of any shape (..., d) from ``block_fn(params, row) -> (d, d)``."""
    if x1.ndim == 1:
        return block_fn(params, x1)
    rows = x1.reshape(-1, x1.shape[-1])
    return _block_diagonal(jax.vmap(lambda r: block_fn(params, r))(rows))


# --------------------------------------------------------------------------------------------
# LayerNorm


def layer_norm(*, eps: float = 1e-5, name: str | None = None) -> Layer:
    """LayerNorm over the last axis: ``y = scale * (x - mu) / s + offset``.

    ``mu = mean_i x_i`` and ``s = sqrt(var + eps)`` with ``var = mean_i (x_i - mu)^2`` (the biased
    variance, as in PyTorch and Flax), taken over the d features of each position.

    Args:
      eps: added to the variance. name: the layer's name in its serial.

    Params: ``{"scale": (d,) ones, "offset": (d,) zeros}``.
    Shapes: x (batch, ..., d) -> y of the same shape.

    Jacobian (closed form), for one position with ``xhat = (x - mu) / s``::

        dy/dx = diag(scale) / s * (I - 1 1^T / d - xhat xhat^T / d)

    (exact with eps: ``ds/dx_j = (x_j - mu) / (d s)``). An example of shape (seq, d) gets the
    block-diagonal (seq d, seq d) matrix, one block per position.

    References: Ba, Kiros & Hinton 2016 (arXiv:1607.06450).
    """
    eps = _check_eps(eps)

    def init(key, in_shape, hyper):
        return _scale_offset(_check_features("layer_norm", in_shape)[-1])

    def apply(params, x):
        mu = jnp.mean(x, axis=-1, keepdims=True)
        xc = x - mu
        s = jnp.sqrt(jnp.mean(jnp.square(xc), axis=-1, keepdims=True) + eps)
        return _row(params["scale"], x.ndim) * (xc / s) + _row(params["offset"], x.ndim)

    def block(params, x1):
        d = x1.shape[-1]
        xc = x1 - jnp.mean(x1)
        s = jnp.sqrt(jnp.mean(jnp.square(xc)) + eps)
        xhat = xc / s
        inner = jnp.eye(d, dtype=x1.dtype) - (1.0 + jnp.outer(xhat, xhat)) / d
        return (params["scale"] / s)[:, None] * inner

    def jac(params, x1):
        return _per_position(block, params, x1)

    def out_shape(in_shape):
        return _check_features("layer_norm", in_shape)

    return Layer("layer_norm", init, apply, out_shape, ("layer_norm", eps), name, True, jac)


# --------------------------------------------------------------------------------------------
# RMSNorm


def rms_norm(*, eps: float = 1e-6, name: str | None = None) -> Layer:
    """RMSNorm over the last axis: ``y = scale * x / r``, ``r = sqrt(mean_i x_i^2 + eps)``.

    No centring and no offset (Zhang & Sennrich 2019's form, as in T5 and LLaMA).

    Args:
      eps: added to the mean square. name: the layer's name in its serial.

    Params: ``{"scale": (d,) ones}`` (no bias: the probes report its bias norm as NaN).
    Shapes: x (batch, ..., d) -> y of the same shape.

    Jacobian (closed form), for one position with ``xhat = x / r``::

        dy/dx = diag(scale) / r * (I - xhat xhat^T / d)

    block-diagonal over positions for an example of shape (seq, d).

    References: Zhang & Sennrich 2019 (arXiv:1910.07467).
    """
    eps = _check_eps(eps)

    def init(key, in_shape, hyper):
        return _scale_offset(_check_features("rms_norm", in_shape)[-1], offset=False)

    def apply(params, x):
        r = jnp.sqrt(jnp.mean(jnp.square(x), axis=-1, keepdims=True) + eps)
        return _row(params["scale"], x.ndim) * (x / r)

    def block(params, x1):
        d = x1.shape[-1]
        r = jnp.sqrt(jnp.mean(jnp.square(x1)) + eps)
        xhat = x1 / r
        inner = jnp.eye(d, dtype=x1.dtype) - jnp.outer(xhat, xhat) / d
        return (params["scale"] / r)[:, None] * inner

    def jac(params, x1):
        return _per_position(block, params, x1)

    def out_shape(in_shape):
        return _check_features("rms_norm", in_shape)

    return Layer("rms_norm", init, apply, out_shape, ("rms_norm", eps), name, True, jac)


# --------------------------------------------------------------------------------------------
# BatchNorm


def batch_norm(*, eps: float = 1e-5, name: str | None = None) -> Layer:
    """BatchNorm with batch statistics: ``y = scale * (x - mu_B) / sqrt(var_B + eps) + offset``.

    ``mu_B`` and ``var_B`` (biased) are taken over every axis but the last: the batch and, for
    sequences (batch, seq, d), the positions too -- the statistics of training and of a network
    at initialisation. There are no running averages (gradflow measures networks, it does not
    deploy them).

    Args:
      eps: added to the variance. name: the layer's name in its serial.

    Params: ``{"scale": (d,) ones, "offset": (d,) zeros}``.
    Shapes: x (batch, ..., d) -> y of the same shape.

    Jacobian: none per example. Each output depends on every example of the batch through
    ``mu_B`` and ``var_B``, so ``jac`` raises a ValueError. The probes' per-example tap gradients
    are each example's share of the batch gradient (Yang et al. 2019 study exactly this
    coupling: gradients explode with depth under BatchNorm, REFERENCES 7.2).

    References: Ioffe & Szegedy 2015 (arXiv:1502.03167); Yang et al. 2019 (arXiv:1902.08129).
    """
    eps = _check_eps(eps)

    def init(key, in_shape, hyper):
        return _scale_offset(_check_features("batch_norm", in_shape)[-1])

    def apply(params, x):
        axes = tuple(range(x.ndim - 1))
        mu = jnp.mean(x, axis=axes, keepdims=True)
        xc = x - mu
        s = jnp.sqrt(jnp.mean(jnp.square(xc), axis=axes, keepdims=True) + eps)
        return _row(params["scale"], x.ndim) * (xc / s) + _row(params["offset"], x.ndim)

    def jac(params, x1):
        raise ValueError(
            "batch_norm has no per-example Jacobian (its batch statistics couple the examples); "
            "use layer_norm/rms_norm, or differentiate the whole batch yourself"
        )

    def out_shape(in_shape):
        return _check_features("batch_norm", in_shape)

    return Layer("batch_norm", init, apply, out_shape, ("batch_norm", eps), name, True, jac)
