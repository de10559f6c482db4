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
from jax.flatten_util import ravel_pytree

from gradflow import activations, taps
from gradflow.curvature import hessian_vector_product, lanczos_extremes
from gradflow.losses import get_loss, prior_loss
from gradflow.models import Model
from gradflow.probes import backward, norms_from_backward, validate
from gradflow.report import Report, SweepReport, Thresholds, report  # noqa: F401  (re-exported)

SATURATION = 0.01  # a unit is saturated when phi'(z) < SATURATION * max phi'


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
      prior_loss: the loss of the best constant prediction (the class frequencies; the mean
        target for mse): a loss here means nothing was learned from the inputs.
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
    prior_loss: jax.Array


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
    underflow, dead, saturated = _unit_fractions(g_taps, values, specs, dtype)
    grad_norm = jnp.linalg.norm(ravel_pytree(g_params)[0])

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
        saturated_fraction=saturated,
        hessian_min=h_min,
        hessian_max=h_max,
        loss=norms.loss[0],
        prior_loss=prior_loss(loss, jax.eval_shape(model.apply, params, x), y).astype(dtype),
    )


def _unit_fractions(g_taps, values, specs, dtype):
    """``(underflow, dead, saturated)``, each (T,) in tap order (see :class:`Diagnosis`).

    Consecutive taps of one shape, dtype, batch axis and activation (a scanned run's layers) are
    read as one array (:func:`gradflow.taps.runs`, :func:`gradflow.taps.rows`) and measured
    together: a few operations per run, so a depth-1,000 scanned net is diagnosed like a
    shallow one.
    """
    tiny = jnp.finfo(dtype).tiny
    activation = lambda name: dict(specs[name].meta).get("activation")  # noqa: E731
    underflow, dead, saturated = [], [], []
    for spec, run, act_name in taps.runs(specs, activation):
        d = jnp.moveaxis(taps.rows(g_taps, specs, run), spec.batch_axis + 1, 1)  # (k, batch, ..)
        units = tuple(range(1, d.ndim))
        nz = d != 0
        n_small = jnp.sum(nz & (jnp.abs(d) < tiny), axis=units)
        underflow.append(n_small / jnp.maximum(jnp.sum(nz, axis=units), 1))
        dead.append(jnp.mean(~jnp.any(nz, axis=1), axis=units[:-1]))
        act = activations.ACTIVATIONS.get(act_name)
        if act is not None and act.derivative_max is not None:
            dphi = activations.derivative(act.name, taps.rows(values, specs, run))[1]
            below = dphi < SATURATION * act.derivative_max
            saturated.append(jnp.mean(below, axis=tuple(range(1, below.ndim))))
        else:
            saturated.append(jnp.zeros((len(run),), dtype))
    cat = lambda v: jnp.concatenate(v).astype(dtype) if v else jnp.zeros((0,), dtype)  # noqa: E731
    return cat(underflow), cat(dead), cat(saturated)


def verdict(d: Diagnosis, losses=None, thresholds: Thresholds | None = None) -> str:
    """The text of :func:`gradflow.report.report`: kinds, numbers and fixes, one per line."""
    return report(d, losses, thresholds).text
