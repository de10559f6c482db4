"""Log-domain probes of deep MLPs: they stay in range at depth 1,000, where gradients and
Jacobians leave float32.

* :func:`log_grad_sq`: log of the batch mean of ``||dC_x/dz^l_x||^2`` per layer, by
  backpropagation written out with each example's backward vector renormalised every layer;
* :func:`jacobian_log_moments`: log of the first two moments of the squared singular values of
  df/dx, by the layer product renormalised every layer.

Both take one ``params`` of a plain (non-residual) :func:`gradflow.mlp` and walk its segments:
a run of equal hidden layers (stacked by :func:`gradflow.layers.serial`) is one ``lax.scan``, so
compile time does not grow with depth. ``gradflow.sweep`` adds the seed axis.
"""

from __future__ import annotations

import math
from functools import partial

import jax
import jax.numpy as jnp
from jax import lax

from gradflow import activations
from gradflow.models import Model, check_inputs
from gradflow.nets import mlp_segments


def _log0(v):
    return jnp.where(v > 0, jnp.log(jnp.where(v > 0, v, 1)), -jnp.inf)


def log_grad_sq(model: Model, params, x: jax.Array, v: jax.Array, readout: str = "linear"):
    """log of the batch mean of ``||dC_x/dz^l_x||^2`` for every layer of an MLP.

    Backpropagation written out, ``dC/dz^l = (dC/dz^{l+1} (W^{l+1})^T) * phi'(z^l)``, with each
    example's backward vector renormalised at every layer and the log of its norm carried: at
    depth 1,000 the gradients themselves leave the float32 range (chi1^1000 = e^-63 at
    sigma_w2 = 1.5), their logs do not. The tests check it against ``jax.grad``.

    Args:
      model: a plain MLP with a linear output (:func:`gradflow.mlp`).
      x: inputs (batch, n_0). v: the readout vectors (``"linear"``: ``C_x = <f(x), v_x>``, so
        ``dC_x/dz^l_x = J_{l->L}(x)^T v_x``) or the targets (``"mse"``: ``C_x = 0.5 ||f(x) -
        v_x||^2``, as ``gradflow.layer_grad_norms`` with ``loss="mse"``).

    Returns:
      Shape (L,), natural log; ``-inf`` for a zero gradient.
    """
    segs = mlp_segments(model, params, "log_grad_sq")
    if model.config.output_activation is not None:
        raise ValueError("log_grad_sq needs an MLP with a linear output (output_activation=None)")
    check_inputs(model, x)
    return _log_grad_sq(segs, x, v, readout)


def _log_grad_sq(segs, x, v, readout):
    def layer(a, w, b, name):
        z = a @ w + b[None, :]
        return activations.derivative(name, z)  # (phi(z), phi'(z)), phi' kept for backward

    a, saved = x, []  # saved[i]: (w, phi') of segment i, stacked for runs
    for w, b, name, stacked in segs:
        if stacked:
            a, d = lax.scan(lambda a, wb, n=name: layer(a, wb[0], wb[1], n), a, (w, b))
        else:
            a, d = layer(a, w, b, name)
        saved.append((w, d, stacked))
    g = v if readout == "linear" else a - v  # linear output layer: dC/dz^L = dC/df

    def unit(g, log_sq):
        sq = jnp.sum(jnp.square(g), axis=-1)
        return g / jnp.sqrt(jnp.where(sq > 0, sq, 1))[:, None], log_sq + _log0(sq)

    def back(carry, w_next, d):
        g, log_sq = carry
        return unit(g @ w_next.T * d, log_sq)

    # Layers L..1: the carry is the unit gradient at z^{l+1} and its log scale; layer l's needs
    # W^{l+1} (the next layer's weights) and phi'(z^l). A run's own weights serve all but its
    # last layer, which takes the next segment's first weights.
    carry = unit(g, jnp.zeros(x.shape[0], x.dtype))
    logs = []
    for i in range(len(saved) - 1, -1, -1):
        w, d, stacked = saved[i]
        top = i == len(saved) - 1  # holds the output layer, whose gradient is g itself
        nxt = None if top else (saved[i + 1][0][0] if saved[i + 1][2] else saved[i + 1][0])
        last_d = d[-1] if stacked else d
        carry = carry if top else back(carry, nxt, last_d)
        seg = [carry[1][None]]
        if stacked:  # the run's other layers, from its second-to-last down
            carry, run = _scan_back(back, carry, w[1:], d[:-1])
            seg.insert(0, run)
        logs.append(jnp.concatenate(seg))
    log_sq = jnp.concatenate(logs[::-1])  # (L, batch)
    return jax.nn.logsumexp(log_sq, axis=1) - math.log(x.shape[0])


def _scan_back(back, carry, w_next, d):
    def body(c, wd):
        c = back(c, wd[0], wd[1])
        return c, c[1]

    carry, logs = lax.scan(body, carry, (w_next, d), reverse=True)
    return carry, logs


def jacobian_log_moments(model: Model, params, x: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Log of the first two moments of the squared singular values of df/dx, per input.

    ``m1 = tr(J J^T) / k = ||J||_F^2 / k`` and ``m2 = tr((J J^T)^2) / k = ||J^T J||_F^2 / k``
    with ``k = min(n_0, n_L)`` (the mean and mean square of ``spectra.jacobian_singular_values``
    squared). The product ``W^1 D^1 ... W^L D^L`` (row convention) is renormalised to unit
    Frobenius norm after every layer and the log of the scale summed, so any depth stays in
    range; runs of equal layers are one ``lax.scan``. Cost: one (n_0, n) x (n, n) matmul per
    layer, against ~3 matmuls, a QR per layer and a final SVD for the spectrum itself.

    Args:
      model: a plain (non-residual) :func:`gradflow.mlp`, any widths and output activation.
      params: its parameters (one seed). x: inputs, shape (batch, n_0).

    Returns:
      ``(log_m1, log_m2)``, each of shape (batch,); ``-inf`` where J = 0 (e.g. dead relus).

    References: Pennington, Schoenholz & Ganguli 2017 (arXiv:1711.04735).
    """
    segs = mlp_segments(model, params, "jacobian_log_moments")
    check_inputs(model, x)
    names = tuple((name, stacked) for _, _, name, stacked in segs)
    arrays = tuple((w, b) for w, b, _, _ in segs)
    return _log_moments(names, arrays, x)


@partial(jax.jit, static_argnums=(0,))
def _log_moments(names, arrays, x):
    def layer(name, carry, w, b):
        a, m, log_scale = carry
        z = a @ w + b
        a, d = activations.derivative(name, z)  # phi'(z) as autodiff defines it
        m = (m @ w) * d[None, :]
        norm = jnp.linalg.norm(m)
        return a, m / jnp.where(norm > 0, norm, 1), log_scale + _log0(norm)

    def one(x1):
        carry = (x1, jnp.eye(x1.shape[0], dtype=x1.dtype), jnp.zeros((), x1.dtype))
        for (name, stacked), (w, b) in zip(names, arrays, strict=True):
            if stacked:
                step = lambda c, wb, n=name: (layer(n, c, *wb), None)  # noqa: E731
                carry, _ = lax.scan(step, carry, (w, b))
            else:
                carry = layer(name, carry, w, b)
        _, m, log_scale = carry
        gram = m.T @ m if m.shape[1] <= m.shape[0] else m @ m.T
        log_k = math.log(min(m.shape))
        # ||m||_F = 1 unless J = 0 (then log_scale = -inf and both moments are -inf)
        log_m1 = 2 * log_scale + _log0(jnp.sum(jnp.square(m))) - log_k
        log_m2 = 4 * log_scale + _log0(jnp.sum(jnp.square(gram))) - log_k
        return log_m1, log_m2

    return jax.vmap(one)(x)
