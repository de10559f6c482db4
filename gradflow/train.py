"""Training any model with the probes switched on: per-layer gradient norms recorded on device.

:func:`train` runs ``steps`` optimizer steps of any :class:`gradflow.Model` in one jitted
program: an outer ``lax.scan`` over records and an inner loop over the ``record_every - 1``
plain steps between them, so nothing leaves the device until the end. A recording step takes
its update from the same backward pass that gives the probes
(:func:`gradflow.probes.norms_from_backward`): recording adds the statistics' reductions and no
second backward pass, with sums that run at memory speed (:mod:`gradflow.reduce`). On 2 (noisy)
CPU cores, recording every step takes 1.18-1.25x the time of not recording on Nielsen's net at
batch 10 (a recording step runs ~110 kernels to a plain step's 36 on a 0.07-0.09 ms step; the
sums of squares of the parameters, gradients and updates are 9 of its 14 extra microseconds,
1 core), 1.03-1.08x at batch 100, 1.18x on its full-batch steps (1.0-1.3 ms each, stored x.T:
:func:`gradflow.models.loop_input`), 1.26x on 8 x 256 tanh nets under Adam over 16 seeds (the
extra reads of every parameter, gradient and update), and ~1.0x when recording once an epoch
(``bench/train_bench.py``). It
takes ``(model, params, x, y, ...)`` like every probe, so ``gradflow.sweep`` trains thousands
of seeds at once, with ``learning_rate``/``weight_decay`` (and ``sigma_w2``) traced.

Mini-batches: epoch e visits the examples in the order ``jax.random.permutation(fold_in(key,
e), n)``, ``n // batch_size`` batches per epoch (the last ``n % batch_size`` of each permutation
are skipped, a different few each epoch), so the batches are a function of ``key`` alone.

References: Nielsen 2015, ch. 3 (network2.py, L2 regularisation) and ch. 5
(``fig/generate_gradient.py``: norms recorded along full-batch gradient descent).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from functools import partial

import jax
import jax.numpy as jnp
import optax
from jax import lax

from gradflow.losses import get_loss
from gradflow.memory import training_step
from gradflow.models import Model, loop_input
from gradflow.optimizers import (  # noqa: F401 -- OPTIMIZERS and the builders re-exported
    MOMENTUM,
    OPTIMIZERS,
    gd_optimizer,
    make_optimizer,
    optimizer_from,
    rates_of,
)
from gradflow.probes import (
    LayerGradNorms,
    backward_with_output,
    layer_square_sums,
    norms_from_backward,
    validate,
)

# --------------------------------------------------------------------------------------------
# Results


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class Trajectory:
    """What :func:`train` records; R = steps / record_every + 1 records, L layers.

    Record r is taken at the parameters after ``step[r] = r * record_every`` steps (record 0: the
    initialisation), on the batch step ``step[r]`` trains on (the full data without
    ``batch_size``), from the backward pass that step's update uses.

    Attributes:
      step: (R,) the number of steps taken before each record.
      loss: (R,) the batch loss there.
      accuracy: (R,) the batch accuracy ``mean(argmax(out) == label)`` where the targets are
        classes (integer labels, or one-hot/probability targets with ``xent``/``sigmoid_xent``)
        and the model has >= 2 outputs; NaN otherwise.
      norms: :class:`gradflow.LayerGradNorms` with fields of shape (R, L) and (R, T).
      update_ratio: (R, L) ``||Delta W^l|| / ||W^l||`` (weights only) of the step taken from
        each record: the optimizer's actual relative step (``norms.update_ratio`` is
        ``||dC/dW^l|| / ||W^l||``, a unit-rate SGD step); NaN at the last record (no step).
      eval_loss, eval_accuracy: (R,) the same on ``(eval_x, eval_y)`` (NaN without them).
    """

    step: jax.Array
    loss: jax.Array
    accuracy: jax.Array
    norms: LayerGradNorms
    update_ratio: jax.Array
    eval_loss: jax.Array
    eval_accuracy: jax.Array


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class TrainResult:
    """:func:`train`'s result: final ``params`` and optimizer state ``opt_state``, and the
    :class:`Trajectory` (None when ``record_every=0``)."""

    params: object
    opt_state: object
    trajectory: Trajectory | None


# --------------------------------------------------------------------------------------------
# Training


def train(
    model: Model,
    params,
    x: jax.Array,
    y: jax.Array,
    loss: str = "mse",
    *,
    steps: int,
    optimizer: str | optax.GradientTransformation | Callable = "sgd",
    learning_rate=None,
    weight_decay=None,
    batch_size: int | None = None,
    key: jax.Array | int | None = None,
    record_every: int = 1,
    eval_x: jax.Array | None = None,
    eval_y: jax.Array | None = None,
) -> TrainResult:
    """Train ``params`` for ``steps`` steps, recording per-layer probes every ``record_every``.

    Args:
      model: any :class:`gradflow.Model`. params: its initial parameters (one seed).
      x: training inputs (n, ...). y: labels (n,) or targets (n, n_out).
      loss: loss name (as in :func:`gradflow.layer_grad_norms`).
      steps: optimizer steps (static, >= 0).
      optimizer: a name in :data:`OPTIMIZERS` (see :func:`make_optimizer`), an
        ``optax.GradientTransformation`` (it carries its own rates), or a function
        ``(learning_rate, weight_decay) -> GradientTransformation``.
      learning_rate: default 0.1; weight_decay: default 0. Floats or traced scalars (under
        ``gf.sweep``: ``hyper={"learning_rate": ...}`` or a ``grid_sweep`` axis). Not with a
        GradientTransformation.
      batch_size: examples per step; None: the full batch every step.
      key: the mini-batch order (a typed key or an int seed); needed with ``batch_size``.
        Under ``gf.sweep`` pass an int: every seed then sees the same batches.
      record_every: record every k-th step (k must divide ``steps``); 0: record nothing.
      eval_x, eval_y: held-out data, its loss/accuracy recorded (one forward pass a record);
        under ``gf.sweep`` bind them first: ``functools.partial(train, eval_x=..., eval_y=...)``.

    Returns:
      :class:`TrainResult` (final params and optimizer state, the :class:`Trajectory`).
    """
    rates = rates_of(optimizer, learning_rate, weight_decay)
    _check_int("steps", steps, 0)
    _check_int("record_every", record_every, 0)
    if record_every and steps % record_every:
        raise ValueError(
            f"record_every={record_every} must divide steps={steps}; pick a divisor or round steps"
        )
    validate(model, x, y, loss, params)
    n = x.shape[0]
    if batch_size is not None:
        _check_int("batch_size", batch_size, 1)
        if batch_size > n:
            raise ValueError(f"batch_size={batch_size} exceeds the {n} training examples")
        if key is None:
            raise ValueError("batch_size needs key= (a jax.random.key or an int) to draw batches")
        key = _as_key(key)
    if (eval_x is None) != (eval_y is None):
        raise ValueError("give both eval_x and eval_y, or neither")
    if eval_x is not None:
        validate(model, eval_x, eval_y, loss)
    evals = None if eval_x is None else (eval_x, eval_y)
    return _train(
        model, params, x, y, key, evals, rates, optimizer=optimizer, loss=loss, steps=steps,
        batch_size=batch_size, record_every=record_every,
    )  # fmt: skip


@partial(
    jax.jit,
    static_argnames=("model", "optimizer", "loss", "steps", "batch_size", "record_every"),
)
def _train(
    model, params, x, y, key, evals, rates, *, optimizer, loss, steps, batch_size, record_every
):
    tx = optimizer_from(optimizer, rates)  # inside the trace: the rates may be traced
    loss_fn = get_loss(loss)
    if batch_size is None:  # the same x every step: a feature-major model's x.T stored once
        get_x = loop_input(model, x)
        batch = lambda s, perm: (get_x(), y, perm)  # noqa: E731
    else:
        batch = partial(_batch, x, y, key, batch_size)

    @training_step
    def plain_step(carry, s):
        params, opt_state, perm = carry
        xb, yb, perm = batch(s, perm)
        grads = jax.grad(lambda p: jnp.mean(loss_fn(model.apply(p, xb), yb)))(params)
        params, opt_state, _ = _update(tx, grads, opt_state, params)
        return (params, opt_state, perm), None

    perm = jnp.arange(x.shape[0])  # replaced at step 0 (i == 0): only its shape matters
    carry = (params, tx.init(params), perm)
    if not record_every:
        (params, opt_state, _), _ = _scan(plain_step, carry, jnp.arange(steps))
        return TrainResult(params, opt_state, None)

    def probe(params, s, perm):
        """Step s's batch, gradient and records (without the update ratio), from one pass."""
        xb, yb, perm = batch(s, perm)
        out, back = backward_with_output(model, params, xb, yb, loss)
        norms = norms_from_backward(model, params, xb, back)
        rec = (norms, _accuracy(out, yb, loss), *_evaluate(model, params, evals, loss))
        return xb, back[1], rec, perm

    @training_step
    def record_step(carry, s):
        params, opt_state, perm = carry
        xb, grads, (norms, *rec), perm = probe(params, s, perm)
        new_params, opt_state, updates = _update(tx, grads, opt_state, params)
        # ||Delta W^l||^2 by the probes' own grouping (weights only).
        _, ((moved_sq, _),) = layer_square_sums(model, (updates,), xb, norms.loss.dtype)
        carry = (new_params, opt_state, perm)
        if record_every > 1:  # a scan (not a while loop): the sweep's plan counts its steps
            carry, _ = _scan(plain_step, carry, s + jnp.arange(1, record_every))
        return carry, (norms, *rec, jnp.sqrt(moved_sq) / norms.weight_norms)

    starts = record_every * jnp.arange(steps // record_every)
    (params, opt_state, perm), recs = _scan(record_step, carry, starts)
    _, _, (norms, *rec), _ = probe(params, jnp.asarray(steps), perm)
    last = (norms, *rec, jnp.full_like(norms.weight_norms, jnp.nan))
    recs = jax.tree.map(lambda r, l: jnp.concatenate([r, l[None]]), recs, last)
    norms, accuracy, eval_loss, eval_accuracy, update_ratio = recs
    trajectory = Trajectory(
        step=record_every * jnp.arange(steps // record_every + 1), loss=norms.loss[:, 0],
        accuracy=accuracy, norms=norms, update_ratio=update_ratio,
        eval_loss=eval_loss, eval_accuracy=eval_accuracy,
    )  # fmt: skip
    return TrainResult(params, opt_state, trajectory)


def _scan(step, carry, xs):
    """``lax.scan(step, carry, xs)``, except that a scan of one trip runs as a loop whose trip
    count XLA cannot see (bounds behind a barrier): XLA inlines a loop it can count to one trip
    and compiles the step together with its surroundings, which moved the last bits of Adam's
    parameters (a plain step next to a recording one, ``record_every=2``) and of every
    optimizer's (the one recording step of ``record_every=steps`` next to the last probe, or
    the one plain step of ``steps=1`` next to the initialisation)."""
    if xs.shape[0] != 1:
        return lax.scan(step, carry, xs)
    shapes = jax.eval_shape(step, carry, xs[0])[1]  # the step's per-trip output
    out = jax.tree.map(lambda a: jnp.zeros(a.shape, a.dtype), shapes)
    start, stop = lax.optimization_barrier((0, 1))
    carry, out = lax.fori_loop(start, stop, lambda i, c: step(c[0], xs[i]), (carry, out))
    return carry, jax.tree.map(lambda a: a[None], out)


def _update(tx, grads, opt_state, params):
    """``(new params, new optimizer state, updates)``: one optimizer step, fenced off.

    The barriers make the step the same arithmetic whether or not probes are recorded: without
    them XLA compiles the update together with its surroundings, which differ (a recording step
    also reads the updates; a loop of one trip is inlined next to the previous step), and
    Adam's final parameters differed in the last bit (tests/test_train.py).
    """
    grads, opt_state, params = lax.optimization_barrier((grads, opt_state, params))
    updates, opt_state = tx.update(grads, opt_state, params)
    updates = lax.optimization_barrier(updates)
    return optax.apply_updates(params, updates), opt_state, updates


def _batch(x, y, key, batch_size, s, perm):
    """Step ``s``'s mini-batch ``(x_b, y_b)`` and the current epoch's permutation."""
    n = x.shape[0]
    per_epoch = n // batch_size
    epoch, i = s // per_epoch, s % per_epoch
    # A new permutation only at an epoch's first batch: one sort of n per epoch, not per step.
    perm = lax.cond(
        i == 0, lambda: jax.random.permutation(jax.random.fold_in(key, epoch), n), lambda: perm
    )
    idx = lax.dynamic_slice_in_dim(perm, i * batch_size, batch_size)
    return x[idx], y[idx], perm


def _accuracy(out, y, loss: str):
    """``mean(argmax(out) == label)`` for class targets (see :class:`Trajectory`), else NaN."""
    if out.ndim != 2 or out.shape[-1] < 2:
        return jnp.full((), jnp.nan, out.dtype)
    if y.ndim == 1 and jnp.issubdtype(y.dtype, jnp.integer):
        labels = y
    elif loss in ("xent", "sigmoid_xent") and y.shape == out.shape:
        labels = jnp.argmax(y, axis=-1)
    else:
        return jnp.full((), jnp.nan, out.dtype)
    return jnp.mean((jnp.argmax(out, axis=-1) == labels).astype(out.dtype))


def _evaluate(model, params, evals, loss: str):
    """(loss, accuracy) on the held-out data, or NaNs without it."""
    if evals is None:
        nan = jnp.full((), jnp.nan, jax.tree.leaves(params)[0].dtype)
        return nan, nan
    ex, ey = evals
    out = model.apply(params, ex)
    return jnp.mean(get_loss(loss)(out, ey)), _accuracy(out, ey, loss)


def _check_int(name: str, value, low: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < low:
        raise ValueError(f"{name} must be an int >= {low}, got {value!r}")


def _as_key(key):
    if isinstance(key, int) and not isinstance(key, bool):
        return jax.random.key(key)
    if isinstance(key, jax.Array) and jnp.issubdtype(key.dtype, jax.dtypes.prng_key):
        return key
    raise ValueError(f"key must be a jax.random.key(...) or an int seed, got {key!r:.60}")


# --------------------------------------------------------------------------------------------
# The first API, kept


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

    ``train(..., optimizer="network2", record_every=1).trajectory.norms``: Nielsen's
    ``fig/generate_gradient.py`` (full-batch GD with L2 on the weights, norms before each step).

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
    _check_int("steps", steps, 0)
    result = train(
        model, params, x, y, loss, steps=steps, optimizer="network2",
        learning_rate=learning_rate, weight_decay=weight_decay,
    )  # fmt: skip
    return result.trajectory.norms
