"""Per-example losses C_x(output, target); the batch loss is their mean over examples.

All losses take the model's raw output (``output_activation=None``: logits for the two
cross-entropies) and compute any sigmoid/softmax themselves, stably.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np


def mse(output: jax.Array, target: jax.Array) -> jax.Array:
    """Nielsen's quadratic cost C_x = 0.5 ||a - y||^2.

    Args:
      output: (batch, n_out). target: (batch, n_out), or integer labels (batch,) taken one-hot.
    Returns: (batch,).
    """
    target = _targets_like(output, target)
    return 0.5 * jnp.sum((output - target) ** 2, axis=-1)


def xent(logits: jax.Array, target: jax.Array) -> jax.Array:
    """Softmax cross-entropy C_x = -sum_k y_k log softmax(z)_k.

    Args:
      logits: (batch, n_out). target: integer labels (batch,) or one-hot/probabilities
        (batch, n_out).
    Returns: (batch,).
    """
    target = _targets_like(logits, target)
    return -jnp.sum(target * jax.nn.log_softmax(logits, axis=-1), axis=-1)


def sigmoid_xent(logits: jax.Array, target: jax.Array) -> jax.Array:
    """Nielsen's CrossEntropyCost on a = sigmoid(z): -sum_k [y_k ln a_k + (1-y_k) ln(1-a_k)].

    Computed from the logits z (``log sigmoid``), so it is finite where network2.py's
    ``nan_to_num`` is needed. A net with identity output and this loss is exactly Nielsen's
    sigmoid-output net with CrossEntropyCost: the output error is dC/dz^L = a - y.

    Args:
      logits: (batch, n_out). target: integer labels (batch,) or (batch, n_out) in [0, 1].
    Returns: (batch,).
    """
    target = _targets_like(logits, target)
    # -y log a - (1 - y) log(1 - a) = max(z, 0) - y z + log(1 + e^{-|z|}): one exp and one log
    # per unit instead of two of each (log_sigmoid(z) and log_sigmoid(-z)), never overflowing.
    # max and |z| are written as selects so that autodiff gives a - y exactly at z = 0 too (a
    # pre-activation can be exactly 0: a few in 10^7 are); the kinks' own rules give 0 or -y.
    z = logits
    positive = z > 0
    relu, minus_abs = jnp.where(positive, z, 0.0), jnp.where(positive, -z, z)
    return jnp.sum(relu - target * z + jnp.log1p(jnp.exp(minus_abs)), axis=-1)


LOSSES: dict[str, Callable[[jax.Array, jax.Array], jax.Array]] = {
    "mse": mse,
    "xent": xent,
    "sigmoid_xent": sigmoid_xent,
}


def get_loss(name: str) -> Callable[[jax.Array, jax.Array], jax.Array]:
    """Look up a per-example loss by name, with an error listing the valid names."""
    if name not in LOSSES:
        raise ValueError(f"unknown loss {name!r}; choose one of: {', '.join(LOSSES)}")
    return LOSSES[name]


def _targets_like(output: jax.Array, target: jax.Array) -> jax.Array:
    if target.ndim == output.ndim - 1 and jnp.issubdtype(target.dtype, jnp.integer):
        return jax.nn.one_hot(target, output.shape[-1], dtype=output.dtype)
    return target.astype(output.dtype)


def check_targets(loss: str, output_shape: tuple[int, ...], y, name: str = "y") -> None:
    """Raise a ValueError naming the problem if targets ``y`` do not fit the output and loss."""
    get_loss(loss)
    shape = tuple(getattr(y, "shape", ()))
    batch, n_out = output_shape[0], output_shape[-1]
    integer = jnp.issubdtype(getattr(y, "dtype", jnp.float32), jnp.integer)
    if shape == (batch,) and integer:
        # one_hot maps an out-of-range label to an all-zero target, silently; check concrete
        # labels here (traced ones were checked at the API boundary).
        if not isinstance(y, jax.core.Tracer) and shape[0] > 0:
            labels = np.asarray(y)  # numpy: no tracing even inside a jit/scan trace
            lo, hi = int(labels.min()), int(labels.max())
            if lo < 0 or hi >= n_out:
                raise ValueError(
                    f"{name}: labels must lie in 0..{n_out - 1} for {n_out} outputs, got labels "
                    f"from {lo} to {hi}; fix widths[-1]/n_out or the labels"
                )
        return
    if shape == (batch, n_out):
        return
    raise ValueError(
        f"{name} must be integer labels of shape ({batch},) or targets of shape ({batch}, {n_out})"
        f" for loss {loss!r}, got shape {shape} and dtype {getattr(y, 'dtype', type(y))}"
    )


def prior_loss(name: str, output: jax.Array, target: jax.Array) -> jax.Array:
    """The batch loss of the best constant prediction: the loss of "predicting the label
    frequencies" (cross-entropies: the entropy of the empirical class distribution p) or the
    mean target (mse). A classifier stalled at this loss has learned nothing from its inputs.

    Args:
      name: loss name. output: the model's output (batch, ..., n_out), for its shape and dtype.
      target: labels or targets as the loss takes them.
    Returns: a scalar.
    """
    loss_fn = get_loss(name)
    t = _targets_like(output, target)
    p = jnp.mean(t.reshape(-1, t.shape[-1]), axis=0)  # class frequencies / mean target
    eps = jnp.finfo(output.dtype).eps
    if name == "mse":
        best = p
    elif name == "xent":  # softmax(log p) = p; absent classes never weigh in (t = 0 there)
        best = jnp.log(jnp.maximum(p, jnp.finfo(output.dtype).tiny))
    else:  # sigmoid_xent: sigmoid(logit p) = p per output
        q = jnp.clip(p, eps, 1 - eps)
        best = jnp.log(q) - jnp.log1p(-q)
    return jnp.mean(loss_fn(jnp.broadcast_to(best, t.shape), t))
