"""Training with the probes switched on: how per-layer gradient norms evolve during training.

One function, :func:`train_trajectory`, for one seed: ``steps`` full-batch gradient-descent
steps run in a ``lax.scan``, recording :func:`gradflow.layer_grad_norms` *before* each step and
once after the last, so record 0 is the initialisation. It takes ``(model, params, x, y, ...)``
like every probe, so ``gradflow.sweep`` runs it for thousands of seeds, and the learning rate
may be a traced value (``sweep(..., hyper={"learning_rate": 0.1})`` or a grid).

The update is optax's: ``add_decayed_weights`` (weights only, never biases) then ``sgd``, i.e.
``W <- W - lr (dC/dW + weight_decay W)`` and ``b <- b - lr dC/db``. Nielsen's network2.py
regularised update ``W <- (1 - lr lmbda / n) W - lr dC/dW`` is ``weight_decay = lmbda / n``.

References: Nielsen 2015, ch. 5, ``fig/generate_gradient.py`` (500 epochs of full-batch GD on
1,000 images, lr 0.1, lmbda 5.0, norms recorded before each epoch).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from gradflow.losses import get_loss
from gradflow.models import Model
from gradflow.probes import LayerGradNorms, _is_bias, layer_grad_norms, validate


def _weights_mask(params):
    # Weights only: every leaf not named as a bias (probes.BIAS_NAMES), in any pytree.
    return jax.tree_util.tree_map_with_path(lambda path, _: not _is_bias(path), params)


def gd_optimizer(learning_rate, weight_decay: float = 0.0) -> optax.GradientTransformation:
    """Plain gradient descent with L2 weight decay on the weights only (Nielsen's network2.py).

    Args:
      learning_rate: a float or a traced scalar.
      weight_decay: the coefficient c in ``W <- W - lr (g + c W)``; Nielsen's ``lmbda / n``.
    """
    if isinstance(weight_decay, (int, float)) and weight_decay < 0:
        raise ValueError(f"weight_decay must be >= 0, got {weight_decay}")
    return optax.chain(
        optax.add_decayed_weights(weight_decay, mask=_weights_mask),
        optax.sgd(learning_rate),
    )


def train_trajectory(
    model: Model,
    params,
    x: jax.Array,
    y: jax.Array,
    loss: str = "mse",
    *,
    steps: int,
    learning_rate=0.1,
    weight_decay: float = 0.0,
) -> LayerGradNorms:
    """Per-layer gradient norms along ``steps`` full-batch gradient-descent steps on ``(x, y)``.

    Args:
      model: any :class:`gradflow.Model`. params: its initial parameters (one seed).
      x: inputs (batch, ...). y: labels (batch,) or targets shaped like the output.
      loss: loss name (as in :func:`gradflow.layer_grad_norms`).
      steps: number of gradient-descent steps (static).
      learning_rate: step size; may be traced (a sweep ``hyper``/``grid`` value).
      weight_decay: L2 coefficient on the weights, see :func:`gd_optimizer`.

    Returns:
      :class:`LayerGradNorms` whose fields have shape (steps + 1, L): record t is measured at the
      parameters after t steps (record 0: the initialisation), with ``loss`` the data loss there.
    """
    if not isinstance(steps, int) or isinstance(steps, bool) or steps < 0:
        raise ValueError(f"steps must be an int >= 0, got {steps!r}")
    validate(model, x, y, loss)
    loss_fn = get_loss(loss)
    optimizer = gd_optimizer(learning_rate, weight_decay)

    def batch_loss(params):
        return jnp.mean(loss_fn(model.apply(params, x), y))

    def step(carry, _):
        params, opt_state = carry
        record = layer_grad_norms(model, params, x, y, loss)
        grads = jax.grad(batch_loss)(params)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return (optax.apply_updates(params, updates), opt_state), record

    (final, _), records = jax.lax.scan(step, (params, optimizer.init(params)), None, length=steps)
    last = layer_grad_norms(model, final, x, y, loss)
    return jax.tree.map(lambda r, l: jnp.concatenate([r, l[None]]), records, last)
