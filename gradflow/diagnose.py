"""Diagnosis: tell a vanishing gradient apart from a zero one, saturation, and critical points.

"My gradient is tiny" has several distinct causes, and each has its own measurement:

* **vanishing (or exploding) gradient** -- the early layers' parameter gradients are orders of
  magnitude smaller (larger) than the last layer's: ``||dC/dW^1|| / ||dC/dW^L||`` far from 1.
  The network is not at a critical point; the whole gradient is not small.
* **zero gradient** -- entries of ``dC_x/dz^l_x`` that are exactly 0: ReLU units that are off
  for an example (dead if off for every example), or float underflow. Measured as fractions.
* **saturation** -- sigmoid/tanh units whose derivative ``phi'(z)`` is below 1% of its maximum:
  the unit passes almost no gradient (the cause of Glorot & Bengio's sigmoid plateaus).
* **critical point** (minimum or saddle) -- the *whole* gradient is small, and the Hessian's
  extreme eigenvalues tell a minimum (``lambda_min >= 0``) from a saddle (``lambda_min < 0``).
  They are computed by Lanczos iteration with Hessian-vector products (``jax.jvp`` of
  ``jax.grad``; Pearlmutter 1994), never forming the Hessian.

References: Nielsen 2015 ch. 5; Glorot & Bengio 2010; Dauphin et al. 2014 (arXiv:1406.2572,
saddle points); Ghorbani, Krishnan & Xiao 2019 (arXiv:1901.10159, Lanczos Hessian spectra).
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree

from gradflow import activations
from gradflow.losses import get_loss
from gradflow.models import Model
from gradflow.probes import backward, norms_from_backward, validate

SATURATION = 0.01  # a unit is saturated when phi'(z) < SATURATION * max phi'


def hessian_vector_product(loss_fn, params):
    """``v -> H v`` for the Hessian of ``loss_fn`` at ``params`` (forward-over-reverse).

    Args:
      loss_fn: scalar function of a parameter pytree.
      params: where the Hessian is taken.
    Returns: a function of a flat vector of size ``n_params`` returning a flat vector.
    """
    flat, unravel = ravel_pytree(params)
    grad = jax.grad(lambda f: loss_fn(unravel(f)))
    return lambda v: jax.jvp(grad, (flat,), (v,))[1]


def lanczos_extremes(
    matvec, n: int, key: jax.Array, iterations: int = 40, dtype=jnp.float32
) -> jax.Array:
    """Ritz values of a symmetric operator from Lanczos with full reorthogonalisation.

    The extreme Ritz values converge to the extreme eigenvalues first (Kaniel-Paige); with
    ``iterations >= n`` they are all the eigenvalues (up to rounding).

    Args:
      matvec: ``v -> A v`` on vectors of shape (n,), A symmetric.
      n: the dimension. key: for the random start vector.
      iterations: Krylov dimension k (clipped to n).
    Returns: the k Ritz values, ascending, shape (k,).

    References: Golub & Van Loan, *Matrix Computations*, 4th ed., Sec. 10.1.
    """
    k = min(int(iterations), n)
    if k < 1:
        raise ValueError(f"iterations must be >= 1, got {iterations}")
    v0 = jax.random.normal(key, (n,), dtype)
    v0 = v0 / jnp.linalg.norm(v0)

    def step(carry, i):
        basis, alphas, betas = carry
        v = basis[i]
        w = matvec(v)
        alpha = jnp.vdot(w, v)
        # Full reorthogonalisation (twice is enough, Kahan-Parlett) keeps the Ritz values clean.
        w = w - basis.T @ (basis @ w)
        w = w - basis.T @ (basis @ w)
        beta = jnp.linalg.norm(w)
        nxt = jnp.where(beta > 0, w / jnp.where(beta > 0, beta, 1), 0.0)
        basis = basis.at[i + 1].set(jnp.where(i + 1 < k, nxt, basis[i + 1]))
        return (basis, alphas.at[i].set(alpha), betas.at[i].set(beta)), None

    basis = jnp.zeros((k + 1, n), dtype).at[0].set(v0)
    init = (basis, jnp.zeros((k,), dtype), jnp.zeros((k,), dtype))
    (_, alphas, betas), _ = jax.lax.scan(step, init, jnp.arange(k))
    tridiagonal = jnp.diag(alphas) + jnp.diag(betas[:-1], 1) + jnp.diag(betas[:-1], -1)
    return jnp.linalg.eigvalsh(tridiagonal)


class Diagnosis(NamedTuple):
    """What a small gradient is, for one network and batch. Per-layer fields have shape (L,).

    Attributes:
      weight_grads: ``||dC/dW^l||_F``.
      ratio_first_last: ``||dC/dW^1|| / ||dC/dW^L||``: << 1 vanishing, >> 1 exploding.
      grad_norm: the whole gradient's norm ``||dC/dtheta||`` (small only near a critical point).
      zero_fraction: fraction of exactly-zero entries of ``dC_x/dz^l_x``.
      dead_fraction: fraction of units of layer l whose ``dC_x/dz^l_x`` is 0 for every example.
      underflow_fraction: fraction of nonzero entries of ``dC_x/dz^l_x`` below float's smallest
        normal number (subnormal: precision is being lost).
      saturated_fraction: fraction of (example, unit) pairs with ``phi'(z) < 1% max phi'``
        (sigmoid, tanh, erf, softplus; 0 for other activations).
      hessian_min, hessian_max: extreme eigenvalues of the loss Hessian (Lanczos estimates).
      loss: the batch loss.
    """

    weight_grads: jax.Array
    ratio_first_last: jax.Array
    grad_norm: jax.Array
    zero_fraction: jax.Array
    dead_fraction: jax.Array
    underflow_fraction: jax.Array
    saturated_fraction: jax.Array
    hessian_min: jax.Array
    hessian_max: jax.Array
    loss: jax.Array


def diagnose(
    model: Model,
    params,
    x: jax.Array,
    y: jax.Array,
    loss: str = "mse",
    *,
    hessian_iterations: int = 30,
    key: jax.Array | None = None,
) -> Diagnosis:
    """Measure every cause of a small gradient for any model at ``params`` on the batch ``(x, y)``.

    Per-layer fields come from the model's parameter groups; the unit-level fractions (zeros,
    dead, underflow, saturation) from its taps (for the built-in MLP: the pre-activations z^l).
    Saturation needs to know the activation a tap feeds: taps made with ``activation=`` meta
    (``gf.tap(h, name, activation="tanh")``, as the built-ins do); 0 elsewhere.

    Args:
      model: any :class:`gradflow.Model`. params: its parameters (one seed; ``gradflow.sweep``
        adds the seed axis).
      x: (batch, ...). y: labels (batch,) or targets shaped like the output. loss: loss name.
      hessian_iterations: Lanczos steps for the Hessian extremes (0 skips them: NaN).
      key: start vector of Lanczos (default ``jax.random.key(0)``).
    Returns: :class:`Diagnosis`; :func:`verdict` turns it into words.
    """
    validate(model, x, y, loss, params)
    loss_fn = get_loss(loss)
    back = backward(model, params, x, y, loss)
    norms = norms_from_backward(model, params, x, back)
    _, g_params, g_taps, values, _, specs = back

    def batch_loss(params):
        return jnp.mean(loss_fn(model.apply(params, x), y))

    dtype = norms.loss.dtype  # floating even when x holds token ids
    tiny = jnp.finfo(dtype).tiny
    underflow, dead, saturated = [], [], []
    for name, spec in specs.items():
        d = jnp.moveaxis(g_taps[name], spec.batch_axis, 0)
        nz = d != 0
        underflow.append(jnp.sum(nz & (jnp.abs(d) < tiny)) / jnp.maximum(jnp.sum(nz), 1))
        dead.append(jnp.mean(~jnp.any(nz, axis=0)))
        act = activations.ACTIVATIONS.get(dict(spec.meta).get("activation"))
        if act is not None and act.derivative_max is not None:
            dphi = activations.derivative(act.name, values[name])[1]
            saturated.append(jnp.mean(dphi < SATURATION * act.derivative_max))
        else:
            saturated.append(jnp.zeros((), dtype))
    stack = lambda v: jnp.stack(v).astype(dtype) if v else jnp.zeros((0,), dtype)  # noqa: E731
    grad_norm = jnp.linalg.norm(ravel_pytree(g_params)[0])
    underflow, dead = stack(underflow), stack(dead)

    if hessian_iterations > 0:
        key = jax.random.key(0) if key is None else key
        n_params = ravel_pytree(params)[0].size
        ritz = lanczos_extremes(
            hessian_vector_product(batch_loss, params), n_params, key, hessian_iterations, dtype
        )
        h_min, h_max = ritz[0], ritz[-1]
    else:
        h_min = h_max = jnp.array(jnp.nan, dtype)
    return Diagnosis(
        weight_grads=norms.weights,
        ratio_first_last=norms.weights[0] / norms.weights[-1],
        grad_norm=grad_norm,
        zero_fraction=norms.zero_fraction,
        dead_fraction=dead,
        underflow_fraction=underflow,
        saturated_fraction=stack(saturated),
        hessian_min=h_min,
        hessian_max=h_max,
        loss=norms.loss[0],
    )


def verdict(d: Diagnosis, *, vanishing_ratio: float = 0.1, critical_grad: float = 1e-4) -> str:
    """Words for a :class:`Diagnosis` of one network (numpy or jax scalars).

    Args:
      vanishing_ratio: ``||dC/dW^1|| / ||dC/dW^L||`` below this is vanishing, above its
        inverse exploding.
      critical_grad: a whole-gradient norm below this is "near a critical point".
    """
    lines = []
    ratio = float(d.ratio_first_last)
    if float(d.grad_norm) == 0:
        lines.append("the whole gradient is exactly zero (not a vanishing gradient)")
    elif not np.isfinite(ratio):
        lines.append("non-finite gradient: the network overflowed (exploding activations)")
    elif ratio < vanishing_ratio:
        lines.append(f"VANISHING: layer 1's weight gradient is {1 / ratio:.3g}x smaller than the "
                     "last layer's")  # fmt: skip
    elif ratio > 1 / vanishing_ratio:
        lines.append(f"EXPLODING: layer 1's weight gradient is {ratio:.3g}x larger than the last "
                     "layer's")  # fmt: skip
    else:
        lines.append(f"balanced: ||dC/dW^1|| / ||dC/dW^L|| = {ratio:.3g}")
    dead = np.asarray(d.dead_fraction)
    if dead.max() > 0:
        lines.append(f"dead units (zero gradient for every example): up to {dead.max():.1%} of a "
                     f"layer (layer {int(dead.argmax()) + 1})")  # fmt: skip
    zero = np.asarray(d.zero_fraction)
    if zero.max() > 0:
        lines.append(f"exact zeros in dC_x/dz^l: up to {zero.max():.1%} (inactive units)")
    under = np.asarray(d.underflow_fraction)
    if under.max() > 0:
        lines.append(f"float underflow: {under.max():.1%} of nonzero hidden-unit gradients are "
                     "subnormal")  # fmt: skip
    sat = np.asarray(d.saturated_fraction)
    if sat.max() > 0.05:
        lines.append(f"saturation: up to {sat.max():.1%} of units have phi' < 1% of its maximum "
                     f"(layer {int(sat.argmax()) + 1})")  # fmt: skip
    g = float(d.grad_norm)
    h_min, h_max = float(d.hessian_min), float(d.hessian_max)
    curvature = f"Hessian eigenvalues in [{h_min:.3g}, {h_max:.3g}]" if np.isfinite(h_min) else ""
    if g < critical_grad:
        kind = "a SADDLE point" if h_min < -1e-3 * abs(h_max) else "a MINIMUM (or flat region)"
        lines.append(f"near a critical point (||grad|| = {g:.3g}): {kind}; {curvature}")
    else:
        lines.append(f"not a critical point: ||grad|| = {g:.3g}. {curvature}".rstrip(". "))
    return "\n".join(lines)
