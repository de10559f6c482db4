"""Optimizers for :func:`gradflow.train.train`: named optax chains whose weight decay never
touches biases, and the checks that run before tracing.

``train`` takes a name from :data:`OPTIMIZERS`, an ``optax.GradientTransformation``, or a function
``(learning_rate, weight_decay) -> GradientTransformation``; :func:`rates_of` checks it in Python
and returns the rates to trace, :func:`optimizer_from` builds it inside the trace (the rates may be
traced: sweeps and grids over the learning rate compile once).

References: Nielsen 2015, ch. 3 (network2.py, L2 regularisation); Kingma & Ba 2014
(arXiv:1412.6980); Loshchilov & Hutter 2017 (arXiv:1711.05101).
"""

from __future__ import annotations

import jax
import optax

from gradflow.probes import _is_bias

OPTIMIZERS = ("sgd", "momentum", "adam", "adamw", "network2")
"""Optimizer names :func:`make_optimizer` knows (see there for each one's update)."""

MOMENTUM = 0.9
"""The momentum coefficient of ``"momentum"`` (pass an optax transformation for another)."""


def _weights_mask(params):
    # Weights only: every leaf not named as a bias (probes.BIAS_NAMES), in any pytree.
    return jax.tree_util.tree_map_with_path(lambda path, _: not _is_bias(path), params)


def _check_weight_decay(weight_decay) -> None:
    if isinstance(weight_decay, (int, float)) and weight_decay < 0:
        raise ValueError(f"weight_decay must be >= 0, got {weight_decay}")


def gd_optimizer(learning_rate, weight_decay: float = 0.0) -> optax.GradientTransformation:
    """Plain gradient descent with L2 weight decay on the weights only (Nielsen's network2.py).

    ``W <- W - lr (dC/dW + c W) = (1 - lr c) W - lr dC/dW`` and ``b <- b - lr dC/db``.

    Args:
      learning_rate: a float or a traced scalar.
      weight_decay: the coefficient c; Nielsen's ``lmbda / n`` (n: training-set size).
    """
    _check_weight_decay(weight_decay)
    return optax.chain(
        optax.add_decayed_weights(weight_decay, mask=_weights_mask),
        optax.sgd(learning_rate),
    )


def make_optimizer(name: str, learning_rate, weight_decay=0.0) -> optax.GradientTransformation:
    """A named optimizer as an optax chain; ``weight_decay`` never touches biases.

    Names (g: the gradient, c: ``weight_decay`` on weights, 0 on biases, lr: ``learning_rate``):
      ``"sgd"``, ``"network2"``: ``W <- W - lr (g + c W)`` (:func:`gd_optimizer`); ``"network2"``
        names Nielsen's update ``W <- (1 - lr lmbda/n) W - lr g``: pass ``c = lmbda / n``.
      ``"momentum"``: heavy ball, ``v <- 0.9 v + g + c W``, ``W <- W - lr v``.
      ``"adam"``: Adam on ``g + c W`` (coupled L2, as torch.optim.Adam's weight_decay).
      ``"adamw"``: ``optax.adamw``: Adam on g, plus the decoupled ``- lr c W``.

    Args:
      name: one of :data:`OPTIMIZERS`.
      learning_rate, weight_decay: floats or traced scalars (sweep ``hyper``/``grid`` values).

    References: Kingma & Ba 2014 (arXiv:1412.6980); Loshchilov & Hutter 2017 (arXiv:1711.05101).
    """
    _check_weight_decay(weight_decay)
    decay = optax.add_decayed_weights(weight_decay, mask=_weights_mask)
    if name in ("sgd", "network2"):
        return gd_optimizer(learning_rate, weight_decay)
    if name == "momentum":
        return optax.chain(decay, optax.sgd(learning_rate, momentum=MOMENTUM))
    if name == "adam":
        return optax.chain(decay, optax.adam(learning_rate))
    if name == "adamw":
        return optax.adamw(learning_rate, weight_decay=weight_decay, mask=_weights_mask)
    raise ValueError(
        f"unknown optimizer {name!r}; choose one of {', '.join(OPTIMIZERS)}, or pass an "
        "optax.GradientTransformation"
    )


def rates_of(optimizer, learning_rate, weight_decay):
    """Check ``optimizer`` in Python; the (learning_rate, weight_decay) to trace."""
    if isinstance(optimizer, optax.GradientTransformation):
        if learning_rate is not None or weight_decay is not None:
            raise ValueError(
                "learning_rate/weight_decay cannot be set beside an optax.GradientTransformation "
                "(it carries its own); pass a name or a function (lr, wd) -> transformation"
            )
        return None
    if isinstance(optimizer, str):
        make_optimizer(optimizer, 0.1)  # an unknown name fails here, before tracing
    elif not callable(optimizer):
        raise ValueError(
            f"optimizer must be a name ({', '.join(OPTIMIZERS)}), an optax.GradientTransformation "
            f"or a function (learning_rate, weight_decay) -> transformation, got {optimizer!r:.60}"
        )
    weight_decay = 0.0 if weight_decay is None else weight_decay
    _check_weight_decay(weight_decay)
    return (0.1 if learning_rate is None else learning_rate, weight_decay)


def optimizer_from(optimizer, rates) -> optax.GradientTransformation:
    """The transformation :func:`rates_of` checked, built with ``rates`` (traced or not)."""
    if isinstance(optimizer, optax.GradientTransformation):
        return optimizer
    if isinstance(optimizer, str):
        return make_optimizer(optimizer, *rates)
    return optimizer(*rates)
