"""Exact per-layer gradient probes for one network (one ``params``), via one backward pass.

"Vanishing gradient" is a statement about *these* numbers: the gradient of the loss with respect
to the parameters of early layers, ``||dC/dW^1||``, ``||dC/db^1||``, being far smaller than that
of later layers. Nielsen (2015, ch. 5) calls ``delta^l = dC/db^l`` the "speed of learning" of
layer l. Each function here takes one parameter pytree; ``gradflow.sweep`` adds the seed axis.

Notation: batch loss ``C = mean_x C_x``; ``z^l = a^{l-1} W^l + b^l`` is the pre-activation of
layer l (the "hidden units" before the nonlinearity), l = 1..L.
"""

from __future__ import annotations

from functools import wraps
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax import lax

from gradflow.losses import check_targets, get_loss
from gradflow.models import MLPConfig, Model, RNNConfig, check_inputs, mlp_forward


class LayerGradNorms(NamedTuple):
    """Per-layer gradient statistics; every field has shape (L,), index l-1 for layer l.

    Attributes:
      weights: ``||dC/dW^l||_F``, the gradient of the batch-mean loss w.r.t. layer l's weights.
      biases: ``||dC/db^l||_2`` = ``||mean_x dC_x/dz^l_x||`` (Nielsen's ||delta^l||: the norm of
        the batch-mean gradient, as in his generate_gradient.py).
      preacts: ``sqrt(mean_x ||dC_x/dz^l_x||^2)``: the gradient of each example's loss w.r.t. that
        example's pre-activations (hidden units), root-mean-square over the batch.
      weights_per_example: ``sqrt(mean_x ||dC_x/dW^l||_F^2)``; exact and cheap because the
        per-example weight gradient is the outer product ``a^{l-1}_x (dC_x/dz^l_x)^T``.
      weight_norms: ``||W^l||_F``.
      update_ratio: ``||dC/dW^l||_F / ||W^l||_F``, the relative size of a unit-rate SGD step.
      zero_fraction: fraction of the (example, unit) entries of ``dC_x/dz^l_x`` that are exactly
        0 (dead ReLUs, saturated-to-underflow sigmoids): tells a zero gradient from a small one.
      loss: the batch loss C, broadcast to shape (L,) so all fields stack alike.
    """

    weights: jax.Array
    biases: jax.Array
    preacts: jax.Array
    weights_per_example: jax.Array
    weight_norms: jax.Array
    update_ratio: jax.Array
    zero_fraction: jax.Array
    loss: jax.Array


class TimeGradNorms(NamedTuple):
    """Gradient with respect to a recurrent net's state at each time step; shapes (T,).

    Attributes:
      hidden: ``sqrt(mean_x ||dC_x/dh_t||^2)``, the gradient of each example's loss w.r.t. its
        hidden state h_t, root-mean-square over the batch. Vanishing through time means
        ``hidden[t] << hidden[T-1]`` for early t.
      cell: the same for the LSTM cell state c_t (zeros for a vanilla RNN).
      loss: the batch loss, broadcast to (T,).
    """

    hidden: jax.Array
    cell: jax.Array
    loss: jax.Array


def _jit_probe(needs: type | None = None, hint: str = ""):
    """Decorate a probe ``fn(model, params, x, y, loss)``: check its inputs in Python, then run
    it as one jitted program per (model, loss, shapes).

    Called eagerly, op-by-op autodiff took seconds per call (0.4 s for a 784-30-30-30-10 net on
    100 digits, 3.7 s the first time; jitted: 1 ms). Under an outer ``jit``/``vmap`` (as in
    :func:`gradflow.sweep`) the inner jit is inlined, so the swept program does not change. The
    checks run before tracing, so concrete labels are range-checked too (see :func:`validate`).
    """

    def decorate(fn):
        jitted = jax.jit(fn, static_argnames=("model", "loss"))

        @wraps(fn)
        def probe(model: Model, params, x: jax.Array, y: jax.Array, loss: str = "mse"):
            if needs is not None and not isinstance(model.config, needs):
                raise ValueError(hint)
            validate(model, x, y, loss)
            return jitted(model, params, x, y, loss=loss)

        return probe

    return decorate


def validate(model: Model, x, y, loss: str) -> None:
    """Check ``x``, ``y`` and ``loss`` against ``model`` in Python, before any tracing.

    Raises:
      ValueError: naming the argument, what was expected and what was received.
    """
    get_loss(loss)
    check_inputs(model, x)
    config = model.config
    if isinstance(config, MLPConfig):
        out_shape = (x.shape[0], config.widths[-1])
        if loss in ("xent", "sigmoid_xent") and config.output_activation is not None:
            raise ValueError(
                f"loss {loss!r} takes logits and applies its own sigmoid/softmax, but the model "
                f"has output_activation={config.output_activation!r}; build it with "
                "output_activation=None"
            )
    else:
        out_shape = (x.shape[0], config.n_out)
    check_targets(loss, out_shape, y)


def _row_sums(*arrays: jax.Array) -> tuple[jax.Array, ...]:
    """Sums over the last axis of equal-shape arrays, all in one pass.

    One variadic reduction, on purpose: XLA:CPU rewrites a single-operand sum over 32 or more
    elements as a tree of partial sums over a materialised copy of its input (for accuracy), and
    those copies made the statistics below cost as much as the backward pass (bench/run.py).
    Variadic reductions are left alone, so the squares and comparisons fuse into one read of
    each array. A row is one layer's width, so accuracy is that of a plain sum of n_l terms.
    """
    operands = arrays if len(arrays) > 1 else (*arrays, jnp.ones_like(arrays[0]))
    init = tuple(jnp.zeros((), a.dtype) for a in operands)
    add = lambda xs, ys: tuple(x + y for x, y in zip(xs, ys, strict=True))  # noqa: E731
    return tuple(lax.reduce(operands, init, add, (operands[0].ndim - 1,)))[: len(arrays)]


def _totals(rows: list[jax.Array]) -> jax.Array:
    """``[r.sum() for r in rows]`` for 1-d arrays of one length, as one small reduction."""
    return jnp.sum(jnp.stack(rows), axis=-1)


@_jit_probe(MLPConfig, "layer_grad_norms needs an MLP; use time_grad_norms for an RNN/LSTM")
def layer_grad_norms(model: Model, params, x: jax.Array, y: jax.Array, loss: str = "mse"):
    """Exact per-layer gradient norms of an MLP at ``params``, from one forward/backward pass.

    The pre-activation gradients come from ``jax.grad`` with respect to an explicit zero
    perturbation added to every ``z^l``; scaling by the batch size turns the gradient of the mean
    loss into each example's own ``dC_x/dz^l_x``.

    Args:
      model: an MLP built by :func:`gradflow.mlp`.
      params: its parameters (one seed).
      x: inputs, shape (batch, n_0).
      y: integer labels (batch,) or targets (batch, n_L).
      loss: ``"mse"``, ``"xent"`` or ``"sigmoid_xent"``.

    Returns:
      :class:`LayerGradNorms`, each field of shape (L,).

    References:
      Nielsen 2015, *Neural Networks and Deep Learning*, ch. 5; Glorot & Bengio 2010.
    """
    loss_fn = get_loss(loss)
    config = model.config
    batch = x.shape[0]
    zeros = [jnp.zeros((batch, n), x.dtype) for n in config.widths[1:]]

    def batch_loss(params, perturb):
        out, _, inputs = mlp_forward(config, params, x, perturb)
        return jnp.mean(loss_fn(out, y)), inputs

    (value, inputs), (g_params, g_z) = jax.value_and_grad(batch_loss, argnums=(0, 1), has_aux=True)(
        params, zeros
    )
    # Every statistic is a sum of squares (or a count): per-example (or per-row) sums first,
    # then one small reduction per layer, see _row_sums.
    per_example, weight_sq = [], []
    for a, g, p, gp in zip(inputs, g_z, params, g_params, strict=True):
        d = batch * g  # dC_x/dz^l_x, (batch, n_l)
        d_sq, n_zero = _row_sums(jnp.square(d), (d == 0).astype(d.dtype))  # (batch,)
        (a_sq,) = _row_sums(jnp.square(a))
        per_example += [d_sq, a_sq * d_sq, n_zero]
        weight_sq.append(_totals([*_row_sums(jnp.square(p["w"]), jnp.square(gp["w"]))]))
    d_sq, wpe_sq, n_zero = jnp.reshape(_totals(per_example), (-1, 3)).T  # (L,) each
    weight_norms, weights = jnp.sqrt(jnp.stack(weight_sq)).T
    sizes = jnp.asarray([batch * n for n in config.widths[1:]], d_sq.dtype)
    return LayerGradNorms(
        weights=weights,
        biases=jnp.stack([jnp.sqrt(jnp.sum(jnp.square(g["b"]))) for g in g_params]),
        preacts=jnp.sqrt(d_sq / batch),
        weights_per_example=jnp.sqrt(wpe_sq / batch),
        weight_norms=weight_norms,
        update_ratio=weights / weight_norms,
        zero_fraction=n_zero / sizes,
        loss=jnp.full((len(params),), value),
    )


@_jit_probe()
def preact_grads(model: Model, params, x: jax.Array, y: jax.Array, loss: str = "mse"):
    """Per-example gradients w.r.t. the probed hidden variables: ``[dC_x/dz^l_x]``.

    Returns a pytree with the structure of ``model.forward``'s hidden output (for an MLP, a list
    of L arrays of shape (batch, n_l); for an RNN, (batch, time, n_hidden)).
    """
    loss_fn = get_loss(loss)
    batch = x.shape[0]
    hidden_shape = jax.eval_shape(lambda p: model.forward(p, x)[1], params)
    zeros = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), hidden_shape)

    def batch_loss(perturb):
        return jnp.mean(loss_fn(model.forward(params, x, perturb)[0], y))

    return jax.tree.map(lambda g: batch * g, jax.grad(batch_loss)(zeros))


@_jit_probe(RNNConfig, "time_grad_norms needs an RNN or LSTM; use layer_grad_norms for an MLP")
def time_grad_norms(model: Model, params, x: jax.Array, y: jax.Array, loss: str = "mse"):
    """Gradient norm w.r.t. a recurrent net's state at every time step (vanishing through time).

    Args:
      model: an RNN or LSTM (:func:`gradflow.rnn`, :func:`gradflow.lstm`).
      params: its parameters. x: (batch, time, n_in). y: labels (batch,) or targets (batch, n_out).
      loss: loss name; it is applied to the output read from the last hidden state h_T.

    Returns:
      :class:`TimeGradNorms` with fields of shape (time,).

    References: Bengio, Simard & Frasconi 1994; Pascanu, Mikolov & Bengio 2013.
    """
    loss_fn = get_loss(loss)
    batch, time = x.shape[:2]
    zeros = jnp.zeros((batch, time, model.config.n_hidden), x.dtype)
    perturb = {"h": zeros, "c": zeros} if model.config.cell == "lstm" else zeros

    def batch_loss(perturb):
        return jnp.mean(loss_fn(model.forward(params, x, perturb)[0], y))

    value, g = jax.value_and_grad(batch_loss)(perturb)
    rms = lambda g: jnp.sqrt(jnp.mean(jnp.sum(jnp.square(batch * g), axis=-1), axis=0))  # noqa: E731
    if model.config.cell == "lstm":
        hidden, cell = rms(g["h"]), rms(g["c"])
    else:
        hidden, cell = rms(g), jnp.zeros((time,), x.dtype)
    return TimeGradNorms(hidden=hidden, cell=cell, loss=jnp.full((time,), value))
