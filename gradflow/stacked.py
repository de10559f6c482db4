"""A deep MLP with its layers stacked, for mean-field measurements at any depth.

``stacked_mlp(depth, width, activation)`` is ``gradflow.mlp([width] * (depth + 1), activation,
"gaussian")`` (linear output) with the parameters stacked, ``{"w": (L, n, n), "b": (L, n)}``:
the init draws layer l exactly as ``mlp(...).init`` does, so seed i is the same network, but
the draws are vmapped over layers and the forward pass is one ``lax.scan``, so compile time does
not grow with depth (the unrolled init alone compiles for ~70 s at depth 200 on 2 CPU cores).

Two probes that stay in range at depth 1,000, where gradients and Jacobians leave float32:

* :func:`stacked_log_grad_sq`: log of the batch mean of ``||dC_x/dz^l_x||^2`` per layer, by
  backpropagation written out with each example's backward vector renormalised every layer;
* :func:`jacobian_log_moments`: log of the first two moments of the squared singular values of
  df/dx (this or a plain ``gradflow.mlp``), by the layer product renormalised every layer.

Both take one ``params`` (one seed); ``gradflow.sweep`` adds the seed axis.
"""

from __future__ import annotations

import dataclasses
import math
from functools import partial

import jax
import jax.numpy as jnp
from jax import lax

from gradflow.models import ACTIVATIONS, MLPConfig, Model, check_inputs, init_dense


@dataclasses.dataclass(frozen=True, kw_only=True)
class StackedMLPConfig:
    """An MLP of ``depth`` equal ``width`` x ``width`` layers, init "gaussian", linear output,
    with its parameters stacked: ``{"w": (depth, n, n), "b": (depth, n)}``."""

    depth: int
    width: int
    activation: str = "tanh"

    def to_dict(self) -> dict:
        return {"kind": "stacked_mlp", **dataclasses.asdict(self)}


def stacked_mlp(depth: int, width: int, activation: str = "tanh") -> Model:
    """The network ``compare`` measures, with its layers stacked so depth costs no compile time.

    ``init(key, *, sigma_w2, sigma_b2)`` draws layer l exactly as ``gradflow.mlp([width] *
    (depth + 1), activation, "gaussian").init(key)[l]`` does (the same keys and draws, vmapped
    over layers), so seed i is the same network in both; the forward pass and the probes here
    are one ``lax.scan``. (The unrolled init and probes compile in time growing with depth:
    ~70 s at depth 200 on 2 CPU cores.)

    Returns:
      A :class:`gradflow.Model` whose params are ``{"w": (depth, n, n), "b": (depth, n)}``;
      ``forward`` returns the pre-activations stacked, shape (depth, batch, n).
    """
    config = StackedMLPConfig(depth=depth, width=width, activation=activation)
    phi = ACTIVATIONS[activation]

    def init(key, *, sigma_w2=1.0, sigma_b2=0.0):
        keys = jax.random.split(key, depth)  # as models.mlp: layer l gets keys[l]
        draw = lambda k: init_dense(k, width, width, "gaussian", sigma_w2, sigma_b2)  # noqa: E731
        return jax.vmap(draw)(keys)

    def forward(params, x, perturb=None):
        if perturb is None:
            perturb = jnp.zeros((depth, *x.shape), x.dtype)

        def body(a, layer):
            w, b, p = layer
            z = a @ w + b[None, :] + p
            return phi(z), z

        w, b = params["w"], params["b"]
        a, zs = lax.scan(body, x, (w[:-1], b[:-1], perturb[:-1]))
        out = a @ w[-1] + b[-1][None, :] + perturb[-1]  # linear output layer
        return out, jnp.concatenate([zs, out[None]])

    def apply(params, x):
        return forward(params, x)[0]

    return Model(init=init, apply=apply, forward=forward, config=config)


def stacked_log_grad_sq(model: Model, params, x: jax.Array, v: jax.Array, readout: str = "linear"):
    """log of the batch mean of ``||dC_x/dz^l_x||^2`` for every layer of a :func:`stacked_mlp`.

    Backpropagation written out, ``dC/dz^l = (dC/dz^{l+1} (W^{l+1})^T) * phi'(z^l)``, with each
    example's backward vector renormalised at every layer and the log of its norm carried: at
    depth 1,000 the gradients themselves leave the float32 range (chi1^1000 = e^-63 at
    sigma_w2 = 1.5), their logs do not. The tests check it against ``jax.grad``.

    Args:
      x: inputs (batch, n). v: the readout vectors (``"linear"``: ``C_x = <f(x), v_x>``, so
        ``dC_x/dz^l_x = J_{l->L}(x)^T v_x``) or the targets (``"mse"``: ``C_x = 0.5 ||f(x) -
        v_x||^2``, as ``gradflow.layer_grad_norms`` with ``loss="mse"``).

    Returns:
      Shape (L,), natural log; ``-inf`` for a zero gradient.
    """
    phi = ACTIVATIONS[model.config.activation]
    w, b = params["w"], params["b"]

    def forward(a, layer):
        z = a @ layer[0] + layer[1][None, :]
        a, d = jax.jvp(phi, (z,), (jnp.ones_like(z),))  # phi'(z^l), kept for the backward pass
        return a, d

    a, dphi = lax.scan(forward, x, (w[:-1], b[:-1]))
    out = a @ w[-1] + b[-1][None, :]  # linear output layer: dC/dz^L = dC/df
    g = v if readout == "linear" else out - v

    def unit(g, log_sq):
        sq = jnp.sum(jnp.square(g), axis=-1)
        return g / jnp.sqrt(jnp.where(sq > 0, sq, 1))[:, None], log_sq + _log0(sq)

    def backward(carry, layer):
        g, log_sq = unit(carry[0] @ layer[0].T * layer[1], carry[1])
        return (g, log_sq), log_sq

    top = unit(g, jnp.zeros(x.shape[0], x.dtype))
    _, log_sq = lax.scan(backward, top, (w[1:], dphi), reverse=True)  # layers 1..L-1
    log_sq = jnp.concatenate([log_sq, top[1][None]])  # (L, batch)
    return jax.nn.logsumexp(log_sq, axis=1) - math.log(x.shape[0])


def _log0(v):
    return jnp.where(v > 0, jnp.log(jnp.where(v > 0, v, 1)), -jnp.inf)


def jacobian_log_moments(model: Model, params, x: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Log of the first two moments of the squared singular values of df/dx, per input.

    ``m1 = tr(J J^T) / k = ||J||_F^2 / k`` and ``m2 = tr((J J^T)^2) / k = ||J^T J||_F^2 / k``
    with ``k = min(n_0, n_L)`` (the mean and mean square of ``spectra.jacobian_singular_values``
    squared). The product ``W^1 D^1 ... W^L D^L`` (row convention) is renormalised to unit
    Frobenius norm after every layer and the log of the scale summed, so any depth stays in
    range; equal-shape layers run in one ``lax.scan``. Cost: one (n_0, n) x (n, n) matmul per
    layer, against ~3 matmuls, a QR per layer and a final SVD for the spectrum itself.

    Args:
      model: a plain MLP with equal hidden widths (``gradflow.mlp``, any output activation) or
        a :func:`stacked_mlp`.
      params: its parameters (one seed). x: inputs, shape (batch, n_0).

    Returns:
      ``(log_m1, log_m2)``, each of shape (batch,); ``-inf`` where J = 0 (e.g. dead relus).

    References: Pennington, Schoenholz & Ganguli 2017 (arXiv:1711.04735).
    """
    config = model.config
    if isinstance(config, StackedMLPConfig):
        if jnp.ndim(x) != 2 or jnp.shape(x)[1] != config.width:
            raise ValueError(f"x must have shape (batch, {config.width}), got {jnp.shape(x)}")
        w, b = params["w"], params["b"]
        layers = (None, (w[:-1], b[:-1]), (w[-1], b[-1]))
        return _log_moments(config.activation, None, layers, x)
    if not isinstance(config, MLPConfig) or config.residual:
        raise ValueError("jacobian_log_moments needs a plain (non-residual) MLP")
    if len(set(config.widths[1:-1])) > 1:
        raise ValueError(f"jacobian_log_moments needs equal hidden widths, got {config.widths}")
    check_inputs(model, x)
    hidden = params[:-1]
    first = (hidden[0]["w"], hidden[0]["b"]) if hidden else None
    rest = None
    if len(hidden) > 1:
        rest = tuple(jnp.stack([p[k] for p in hidden[1:]]) for k in ("w", "b"))
    last = (params[-1]["w"], params[-1]["b"])
    return _log_moments(config.activation, config.output_activation, (first, rest, last), x)


@partial(jax.jit, static_argnums=(0, 1))
def _log_moments(activation: str, output_activation: str | None, layers, x):
    """``layers = (first, rest, last)``: (w, b) of the first hidden layer (or None), the other
    hidden layers stacked (or None), and the output layer."""
    phi = ACTIVATIONS[activation]
    phi_out = ACTIVATIONS[output_activation or "linear"]
    first, rest, last = layers

    def layer(act, carry, w, b):
        a, m, log_scale = carry
        z = a @ w + b
        a, d = jax.jvp(act, (z,), (jnp.ones_like(z),))  # phi'(z) as autodiff defines it
        m = (m @ w) * d[None, :]
        norm = jnp.linalg.norm(m)
        return a, m / jnp.where(norm > 0, norm, 1), log_scale + _log0(norm)

    def one(x1):
        carry = (x1, jnp.eye(x1.shape[0], dtype=x1.dtype), jnp.zeros((), x1.dtype))
        if first is not None:
            carry = layer(phi, carry, *first)
        if rest is not None:
            carry, _ = lax.scan(lambda c, wb: (layer(phi, c, *wb), None), carry, rest)
        _, m, log_scale = layer(phi_out, carry, *last)
        gram = m.T @ m if m.shape[1] <= m.shape[0] else m @ m.T
        log_k = math.log(min(m.shape))
        # ||m||_F = 1 unless J = 0 (then log_scale = -inf and both moments are -inf)
        log_m1 = 2 * log_scale + _log0(jnp.sum(jnp.square(m))) - log_k
        log_m2 = 4 * log_scale + _log0(jnp.sum(jnp.square(gram))) - log_k
        return log_m1, log_m2

    return jax.vmap(one)(x)
