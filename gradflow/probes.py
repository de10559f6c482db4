"""Exact per-layer gradient probes for one network (one ``params``) of any model, one backward pass.

"Vanishing gradient" is a statement about *these* numbers: the gradient of the loss with respect
to the parameters of early layers, ``||dC/dtheta_1||``, being far smaller than that of later
layers. Nielsen (2015, ch. 5) calls ``delta^l = dC/db^l`` the "speed of learning" of layer l.
Each function here takes one parameter pytree; ``gradflow.sweep`` adds the seed axis.

Layers are groups of parameter leaves (:class:`gradflow.groups.LeafGroup`); hidden units are the
model's taps (``gf.tap``). One ``jax.value_and_grad`` with respect to the parameters and to a
zero perturbation at every tap gives all of them: ``dC/dp_t`` at the zero perturbation is exactly
``dC/dh_t``, and scaling by the batch size turns the gradient of the mean loss into each
example's own ``dC_x/dh_x`` (exact for models whose examples do not interact; under BatchNorm
it is the example's share of the batch gradient).
"""

from __future__ import annotations

import dataclasses
import math
from functools import wraps

import jax
import jax.numpy as jnp
import numpy as np

from gradflow import precision, taps
from gradflow.losses import check_targets, get_loss
from gradflow.models import Model, check_inputs, check_params, leaf_groups
from gradflow.reduce import square_sums
from gradflow.reduce import sums as _sums

BIAS_NAMES = frozenset({"b", "bias", "beta", "offset"})
"""Leaf names counted as biases (the rest are weights) when a layer has both."""


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class LayerGradNorms:
    """Per-layer gradient statistics of one network; L layers (parameter groups), T taps.

    Attributes:
      names: the L layer names, in order of use (static).
      hidden_names: the T tap names, in call order (static).
      params: (L,) ``||dC/dtheta_l||_2`` over all parameters of layer l.
      weights: (L,) the same over the layer's weights (leaves not named as biases).
      biases: (L,) over its biases (``||dC/db^l||`` = Nielsen's ``||delta^l||``); NaN where a
        layer has none.
      weights_per_example: (L,) ``sqrt(mean_x ||dC_x/dW^l||_F^2)`` for dense layers whose output
        is tapped under the layer's name (exact and cheap: the per-example gradient is the outer
        product ``a^{l-1}_x (dC_x/dz^l_x)^T``); NaN for other layers.
      weight_norms: (L,) ``||W^l||`` (weights only); param_norms: (L,) ``||theta_l||``.
      update_ratio: (L,) ``weights / weight_norms``: the relative size of a unit-rate SGD step.
      hidden: (T,) ``sqrt(mean_x ||dC_x/dh_t||^2)`` at each tap (for the built-in MLP: the
        pre-activations z^l, so ``hidden`` is the old ``preacts``).
      zero_fraction: (T,) fraction of exactly-zero entries of ``dC_x/dh_t`` (dead units,
        saturated-to-underflow sigmoids): tells a zero gradient from a small one.
      loss: (L,) the batch loss C, broadcast so all per-layer fields stack alike.
    """

    params: jax.Array
    weights: jax.Array
    biases: jax.Array
    weights_per_example: jax.Array
    weight_norms: jax.Array
    param_norms: jax.Array
    update_ratio: jax.Array
    hidden: jax.Array
    zero_fraction: jax.Array
    loss: jax.Array
    names: tuple[str, ...] = dataclasses.field(default=(), metadata=dict(static=True))
    hidden_names: tuple[str, ...] = dataclasses.field(default=(), metadata=dict(static=True))

    @property
    def preacts(self) -> jax.Array:
        """``hidden`` (the built-in MLP's taps sit at its pre-activations)."""
        return self.hidden

    def _asdict(self) -> dict:
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class TimeGradNorms:
    """Gradient with respect to a recurrent net's state at each time step; shapes (T,).

    Attributes:
      hidden: ``sqrt(mean_x ||dC_x/dh_t||^2)``. Vanishing through time: ``hidden[t] <<
        hidden[T-1]`` for early t.
      cell: the same for the LSTM cell state c_t (zeros for a vanilla RNN).
      loss: the batch loss, broadcast to (T,).
    """

    hidden: jax.Array
    cell: jax.Array
    loss: jax.Array


def _jit_probe(fn):
    """Check a probe's inputs in Python, then run it as one jitted program per (model, loss,
    shapes). Under an outer ``jit``/``vmap`` (``gradflow.sweep``) the inner jit is inlined."""
    jitted = jax.jit(fn, static_argnames=("model", "loss"))

    @wraps(fn)
    def probe(model: Model, params, x: jax.Array, y: jax.Array, loss: str = "mse"):
        validate(model, x, y, loss, params)
        with precision.full_unless_chosen():  # full float32 matmuls on GPU/TPU too
            return jitted(model, params, x, y, loss=loss)

    return probe


def validate(model: Model, x, y, loss: str, params=None) -> None:
    """Check ``x``, ``y``, ``loss`` (and ``params``) against ``model`` in Python, before tracing.

    Raises:
      ValueError: naming the argument, what was expected and what was received.
    """
    if not isinstance(model, Model):
        raise ValueError(
            f"model must be a gradflow Model (gf.mlp, gf.from_apply, ...), got "
            f"{type(model).__name__}"
        )
    get_loss(loss)
    check_inputs(model, x)
    if loss in ("xent", "sigmoid_xent") and not model.logits:
        raise ValueError(
            f"loss {loss!r} takes logits and applies its own sigmoid/softmax, but the model's "
            "output is not logits (output_activation is set); build it with "
            "output_activation=None"
        )
    if params is None:
        params = jax.eval_shape(model.init, jax.random.key(0))
    check_params(params)
    out = output_shape(model, params, x)
    check_targets(loss, out.shape, y)


def output_shape(model: Model, params, x):
    """``apply``'s output shape on ``x`` (abstract evaluation), or a one-line ValueError."""
    try:
        out = jax.eval_shape(model.apply, params, x)
    except ValueError as e:
        if "tap name" in str(e) or "scanned run" in str(e):
            raise
        raise _apply_error(x, e) from None
    except (TypeError, IndexError, KeyError, AttributeError) as e:
        raise _apply_error(x, e) from None
    if not hasattr(out, "shape") or len(out.shape) < 1 or out.shape[0] != x.shape[0]:
        raise ValueError(
            "model.apply must return one array with the batch on axis 0, got "
            f"{jax.tree.map(lambda a: a.shape, out)} for x of shape {x.shape}"
        )
    return out


def _apply_error(x, e) -> ValueError:
    first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    return ValueError(
        f"model.apply failed on x of shape {tuple(x.shape)} ({type(e).__name__}: {first[:200]}); "
        "check that the data fits the model"
    )


# --------------------------------------------------------------------------------------------
# The one backward pass


def backward(model: Model, params, x, y, loss: str):
    """The loss, parameter gradients and per-example tap gradients from one backward pass.

    Returns:
      ``(value, g_params, g_taps, values, records, specs)``: ``g_taps`` holds ``batch * dC/dp``
      (each example's ``dC_x/dh_x``), ``values``/``records`` the tapped values and auxiliary
      records, keyed like :func:`gradflow.taps.zeros` (a scanned run's taps as one stacked
      array: read tap ``name`` with ``taps.get(g_taps, specs, name)``), ``specs`` the taps'
      :class:`gradflow.taps.TapSpec` in call order.
    """
    return backward_with_output(model, params, x, y, loss)[1]


def backward_with_output(model: Model, params, x, y, loss: str):
    """``(output, back)``: the model's output (e.g. for an accuracy) and :func:`backward`'s
    tuple ``back``, from the same one pass."""
    loss_fn = get_loss(loss)
    specs, _ = taps.discover(model.apply, params, x)

    def batch_loss(params, perturb):
        out, values, records = taps.run_tapped(model.apply, params, x, perturb)
        return jnp.mean(loss_fn(out, y)), (out, values, records)

    (value, (out, values, records)), (g_params, g_taps) = jax.value_and_grad(
        batch_loss, argnums=(0, 1), has_aux=True
    )(params, taps.zeros(specs))
    batch = x.shape[0]
    g_taps = {name: batch * g for name, g in g_taps.items()}  # each example's dC_x/dh_x
    return out, (value, g_params, g_taps, values, records, specs)


def _is_bias(path) -> bool:
    last = path[-1] if path else None
    key = getattr(last, "key", getattr(last, "name", None))
    return isinstance(key, str) and key in BIAS_NAMES


@_jit_probe
def layer_grad_norms(model: Model, params, x: jax.Array, y: jax.Array, loss: str = "mse"):
    """Exact per-layer gradient norms of any model at ``params``, from one backward pass.

    Args:
      model: a :class:`gradflow.Model` (built-in, ``gf.from_apply``, Flax, Equinox).
      params: its parameters (one seed).
      x: inputs, shape (batch, ...). y: integer labels (batch,) or targets shaped like the output.
      loss: ``"mse"``, ``"xent"`` or ``"sigmoid_xent"``.

    Returns:
      :class:`LayerGradNorms`: per-layer fields of shape (L,), per-tap fields of shape (T,).

    References:
      Nielsen 2015, *Neural Networks and Deep Learning*, ch. 5; Glorot & Bengio 2010.
    """
    return norms_from_backward(model, params, x, backward(model, params, x, y, loss))


def layer_square_sums(model: Model, trees, x, dtype=jnp.float32):
    """Per-layer sums of squares of the weights and of the biases of parameter-shaped trees.

    Args:
      model: the model whose layer grouping (:func:`gradflow.models.leaf_groups`) to use.
      trees: pytrees with the structure of the model's parameters (parameters, gradients,
        optimizer updates), read in one pass per leaf.
      x: an input batch (its shape fixes the grouping of models that need one).
      dtype: the accumulators' dtype (the squares are added into it).

    Returns:
      ``(names, sums)``: the L layer names in order of use, and for each tree a pair ``(w_sq,
      b_sq)`` of (L,) arrays: ``sum ||W||^2`` over the layer's weight leaves and over its
      biases (NaN where the layer has none).
    """
    groups = leaf_groups(model, trees[0], x)
    flat = [jax.tree_util.tree_flatten_with_path(t)[0] for t in trees]
    rows = [([], []) for _ in trees]
    names = []
    for group in groups:
        k = len(group.names)
        zero = jnp.zeros((k,) if group.stacked else (), dtype)
        acc = [[zero, zero] for _ in trees]
        has_bias = False
        for i in group.leaves:
            is_bias = _is_bias(flat[0][i][0])
            has_bias |= is_bias
            for t, sq in enumerate(square_sums([f[i][1] for f in flat], int(group.stacked))):
                acc[t][is_bias] = acc[t][is_bias] + sq
        for t, (w_sq, b_sq) in enumerate(acc):
            if not has_bias:
                b_sq = jnp.full_like(b_sq, jnp.nan)
            rows[t][0].append(jnp.reshape(w_sq, (k,)))
            rows[t][1].append(jnp.reshape(b_sq, (k,)))
        names.extend(group.names)
    order = _use_order(groups)
    if order is not None:  # scanned runs: their stacked groups interleaved block by block
        names = [names[i] for i in order]

    def cat(parts):
        if not parts:
            return jnp.zeros((0,), dtype)
        joined = jnp.concatenate(parts)
        return joined if order is None else joined[order]

    return tuple(names), [(cat(w), cat(b)) for w, b in rows]


def norms_from_backward(model: Model, params, x: jax.Array, back) -> LayerGradNorms:
    """:class:`LayerGradNorms` from the outputs of :func:`backward` (callers that also need the
    raw gradients, as :func:`gradflow.diagnose.diagnose` does, run the backward pass once)."""
    value, g_params, g_taps, _, records, specs = back
    dtype = value.dtype  # floating even when x holds token ids
    names, ((w_sq, b_sq), (gw_sq, gb_sq)) = layer_square_sums(model, (params, g_params), x, dtype)
    hidden, zeros, wpe_taps = _tap_statistics(g_taps, records, specs, dtype)
    # Per-example weight gradients of dense layers tapped under their name: the tap's entry,
    # or NaN (the extra last entry) for the other layers. One gather, whatever the depth.
    position = {name: i for i, name in enumerate(specs)}
    index = np.asarray([position.get(name, len(specs)) for name in names], np.int32)
    wpe = jnp.concatenate([wpe_taps, jnp.full((1,), jnp.nan, dtype)])[index]
    weights = jnp.sqrt(gw_sq)
    weight_norms = jnp.sqrt(w_sq)
    return LayerGradNorms(
        params=jnp.sqrt(gw_sq + jnp.nan_to_num(gb_sq)),
        weights=weights,
        biases=jnp.sqrt(gb_sq),
        weights_per_example=wpe,
        weight_norms=weight_norms,
        param_norms=jnp.sqrt(w_sq + jnp.nan_to_num(b_sq)),
        update_ratio=weights / weight_norms,
        hidden=hidden,
        zero_fraction=zeros,
        loss=jnp.full((len(names),), value),
        names=names,
        hidden_names=tuple(specs),
    )


def _tap_statistics(g_taps, records, specs, dtype):
    """``(hidden, zero_fraction, weights_per_example)``, each (T,) in tap order (see
    :class:`LayerGradNorms`; the last is NaN where a tap has no ``<name>/input_sq`` record).

    Each run of taps that stack (:func:`gradflow.taps.runs`: a scanned run's layers, or equal
    unscanned ones) is read as one (k, ...) array (:func:`gradflow.taps.rows`: a scanned run's
    stored array itself) and reduced together: a few operations per run instead of per layer,
    so a depth-1,000 scanned net compiles its statistics like a shallow one.
    """
    recorded = lambda name: taps.has_record(records, specs, name, "/input_sq")  # noqa: E731
    hidden, zeros, wpe = [], [], []
    for spec, run, has_input_sq in taps.runs(specs, recorded):
        shape, batch_axis = spec.shape, spec.batch_axis
        g = taps.rows(g_taps, specs, run)  # (k, *shape); the batch axis is batch_axis + 1
        # Per layer and example, (k, batch) each: sum of squares and count of exact zeros,
        # in one read.
        d_sq, n_zero = _sums(
            jnp.square(g),
            (g == 0).astype(dtype),
            axes=[a for a in range(g.ndim) if a not in (0, batch_axis + 1)],
        )
        hidden.append(jnp.sqrt(jnp.mean(d_sq, axis=1)))
        zeros.append(jnp.sum(n_zero, axis=1) / math.prod(shape))
        if has_input_sq:
            rec = taps.rows(records, specs, run, "/input_sq")
            wpe.append(jnp.sqrt(jnp.mean(rec * d_sq, axis=1)))
        else:
            wpe.append(jnp.full((len(run),), jnp.nan, dtype))
    cat = lambda v: jnp.concatenate(v) if v else jnp.zeros((0,), dtype)  # noqa: E731
    return cat(hidden), cat(zeros), cat(wpe)


def _use_order(groups):
    """The permutation that sorts the concatenated per-name rows of ``groups`` into the order
    the layers run, or None when they already are."""
    keys = [k for g in groups for k in (g.keys or ((),) * len(g.names))]
    if len(keys) != sum(len(g.names) for g in groups) or not all(keys):
        return None
    order = sorted(range(len(keys)), key=lambda i: keys[i])
    return None if order == list(range(len(keys))) else np.asarray(order)


@_jit_probe
def preact_grads(model: Model, params, x: jax.Array, y: jax.Array, loss: str = "mse"):
    """Per-example gradients at every tap: ``{name: dC_x/dh_x}``, batch on axis 0.

    For the built-in MLP the taps are the pre-activations: ``{"layer1": (batch, n_1), ...}``;
    for an RNN, ``{"rnn/h": (batch, time, n_hidden)}``.
    """
    _, _, g_taps, _, _, specs = backward(model, params, x, y, loss)
    return {n: jnp.moveaxis(taps.get(g_taps, specs, n), s.batch_axis, 0) for n, s in specs.items()}


@_jit_probe
def time_grad_norms(model: Model, params, x: jax.Array, y: jax.Array, loss: str = "mse"):
    """Gradient norm w.r.t. a recurrent net's state at every time step (vanishing through time).

    Args:
      model: a model with a recurrent layer (:func:`gradflow.rnn`, :func:`gradflow.lstm`, or
        :func:`gradflow.recurrent.recurrent` in a serial): its taps with ``role="state"``
        (and ``"cell"``) of shape (batch, time, n).
      params: its parameters. x: (batch, time, n_in). y: labels (batch,) or targets.
      loss: loss name, applied to the model's output.

    Returns:
      :class:`TimeGradNorms` with fields of shape (time,).

    References: Bengio, Simard & Frasconi 1994; Pascanu, Mikolov & Bengio 2013.
    """
    value, _, g_taps, _, _, specs = backward(model, params, x, y, loss)
    roles = {dict(s.meta).get("role"): n for n, s in specs.items()}
    if "state" not in roles:
        raise ValueError(
            "time_grad_norms needs a recurrent model (gf.rnn, gf.lstm); use layer_grad_norms "
            "for feed-forward models"
        )

    def rms(g):
        return jnp.sqrt(jnp.mean(jnp.sum(jnp.square(g), axis=-1), axis=0))

    state = lambda role: taps.get(g_taps, specs, roles[role])  # noqa: E731
    hidden = rms(state("state"))
    cell = rms(state("cell")) if "cell" in roles else jnp.zeros_like(hidden)
    return TimeGradNorms(hidden=hidden, cell=cell, loss=jnp.full(hidden.shape, value))
