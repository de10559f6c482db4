"""muP (maximal update parametrisation) for the built-in models, as params and optax transforms.

A parametrisation says how initialisation and learning rates change with the width n of a model
family. Here it is applied to the params a built-in model draws and to the optimizer, leaf by
leaf, so no model is rewritten:

    p = Parametrisation(kind="mup", base_width=64)
    pm = parametrise(mlp_family(784, 10), 1024, p)
    params = pm.init(key)                                  # readout rescaled
    opt = optimizer(1e-3, pm.lr_multipliers, p.optimizer)  # per-leaf Adam learning rates

Every leaf falls in one column of Tensor Programs V's Table 3 (Yang et al. 2022), decided from
which of its two trailing axes (fan_in = axis -2, fan_out = axis -1, the ``x @ W`` layout of every
gf layer) grow with width, found by comparing the leaf's shape at two widths (mup's base and
"delta" models):

    role     inf axes           examples                       Table 3 column
    fixed    none               output bias (n_out,)           (constant in width)
    input    fan_out only       first dense W, biases, LN      "input weights & all biases"
                                gains, embeddings, positions
    output   fan_in only        readout W (n, n_out)           "output weights"
    hidden   fan_in and fan_out W (n, n), attention, FFN       "hidden weights"

With the width multiplier m = n / n0 (n0 = ``base_width``, where muP equals SP), Table 3 reads
(global learning rate eta, SP's init variance v = 1/fan_in, here that of the built-in init):

    muP                 fixed   input      output             hidden
    init variance       v       v          v / m  (or 0)      v
    SGD learning rate   eta     eta m      eta / m            eta
    Adam learning rate  eta     eta        eta / m            eta / m

Table 3's "1/fan_in^2" output variance is v / m with v = 1/fan_in and the constant n0 absorbed;
its SGD "eta fan_out" (input) and "eta / fan_in" (output) are eta m and eta / m likewise. The
standard parametrisation (SP) keeps every leaf's init and one global learning rate. The
transformer's attention logits use ``s = sqrt(d_h0) / d_h`` (d_h = n / heads, heads fixed)
instead of ``1/sqrt(d_h)`` (TP5's muP attention rule; mup's README uses ``8 / d_h``):
equal to SP at the base width, ``1/d_h`` in scaling.

These are the same rules as microsoft/mup's MuAdam (lr / width_mult for leaves with two infinite
axes) and MuSGD (lr x width_mult for leaves with one; lr / (fan_in mult / fan_out mult) for two)
with the readout's ``1/width_mult`` output multiplier folded into its init and learning rate
(the abc-parametrisation symmetry behind TP5's equivalent tables: W = a w with init std b and
lr c is invariant under a -> a t, b -> b / t, c_SGD -> c / t^2, c_Adam -> c / t).

Not done: muP's zero init of the query matrix (TP5 recommends it; not needed for the scaling),
and the depth extensions (depth-muP).

References:
  Yang, Hu, Babuschkin, Sidor, Liu, Farhi, Ryder, Pachocki, Chen, Gao 2022, "Tensor Programs V:
    Tuning Large Neural Networks via Zero-Shot Hyperparameter Transfer" (arXiv:2203.03466),
    Table 3; microsoft/mup (MuAdam, MuSGD, MuReadout).
  Yang & Hu 2021, "Tensor Programs IV: Feature Learning in Infinite-Width Neural Networks"
    (arXiv:2011.14522).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from gradflow.groups import path_str
from gradflow.models import Model
from gradflow.nets import mlp
from gradflow.transformer import transformer

KINDS = ("sp", "mup")
OPTIMIZERS = ("adam", "sgd")
READOUTS = ("scaled", "zero")
ROLES = ("fixed", "input", "output", "hidden")


@dataclasses.dataclass(frozen=True, kw_only=True)
class Parametrisation:
    """How a width family is initialised and trained.

    Attributes:
      kind: ``"sp"`` (the built-ins' init, one learning rate) or ``"mup"`` (Table 3 above).
      base_width: n0, the width where muP equals SP (None: the smallest width a coord check
        uses; :func:`parametrise` needs it set for muP).
      optimizer: ``"adam"`` or ``"sgd"``: Table 3's learning-rate rows differ between them.
      readout: muP's readout init: ``"scaled"`` (variance v / m) or ``"zero"``.
    """

    kind: str = "mup"
    base_width: int | None = None
    optimizer: str = "adam"
    readout: str = "scaled"

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"parametrisation kind must be 'sp' or 'mup', got {self.kind!r}")
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"optimizer must be 'adam' or 'sgd', got {self.optimizer!r}")
        if self.readout not in READOUTS:
            raise ValueError(f"readout must be 'scaled' or 'zero', got {self.readout!r}")
        b = self.base_width
        if b is not None and (isinstance(b, bool) or not isinstance(b, int) or b < 1):
            raise ValueError(f"base_width must be a positive int (or None), got {b!r}")


Family = Callable[[int, Parametrisation], Model]
"""``family(width, parametrisation) -> Model``: the model of one width (the transformer's
attention-logit scale depends on the parametrisation; the MLP ignores it)."""


class Parametrised(NamedTuple):
    """One width of a family under a parametrisation.

    Attributes:
      model: the family's model at this width.
      init: ``init(key) -> params``: the model's draw with muP's init multipliers applied.
      roles: pytree like params: each leaf's Table 3 role (a string of :data:`ROLES`).
      lr_multipliers: pytree like params: each leaf's learning-rate factor (floats).
      init_multipliers: pytree like params: each leaf's init standard-deviation factor.
      width_mult: m = width / base_width.
    """

    model: Model
    init: Callable[[jax.Array], Any]
    roles: Any
    lr_multipliers: Any
    init_multipliers: Any
    width_mult: float


# --------------------------------------------------------------------------------------------
# Roles and multipliers (Table 3)


def leaf_roles(base_shapes, delta_shapes):
    """Each leaf's Table 3 role from its shapes at two different widths.

    Args:
      base_shapes, delta_shapes: params (or ``jax.eval_shape`` structs) of the same family at
        two widths; the axes whose sizes differ are the "infinite" ones.

    Returns:
      A pytree like the params with one of ``"fixed"``, ``"input"``, ``"output"``,
      ``"hidden"`` per leaf: by whether fan_in (axis -2) and fan_out (axis -1) are infinite; a
      1-d leaf (a bias or gain) has only fan_out.

    Raises:
      ValueError: the two trees differ in structure or rank, or a leading axis (other than the
        last two) grows with width (no Table 3 column fits it).
    """
    a_leaves, a_tree = jax.tree_util.tree_flatten_with_path(base_shapes)
    if a_tree != jax.tree.structure(delta_shapes):
        raise ValueError("the params at the two widths differ in structure; is it one family?")
    roles = []
    for (path, a), b in zip(a_leaves, jax.tree.leaves(delta_shapes), strict=True):
        if len(a.shape) != len(b.shape):
            raise ValueError(f"leaf {path_str(path)} changes rank with width: {a.shape}, {b.shape}")
        inf = [m != n for m, n in zip(a.shape, b.shape, strict=True)]
        if any(inf[:-2]):
            raise ValueError(
                f"leaf {path_str(path)} grows with width along a leading axis ({a.shape} vs "
                f"{b.shape}); muP roles need width on the last two axes (fan_in, fan_out)"
            )
        fan_in, fan_out = len(inf) >= 2 and inf[-2], len(inf) >= 1 and inf[-1]
        roles.append(_ROLE_OF_INF_AXES[(fan_in, fan_out)])
    return jax.tree.unflatten(a_tree, roles)


_ROLE_OF_INF_AXES = {
    (False, False): "fixed",
    (False, True): "input",
    (True, False): "output",
    (True, True): "hidden",
}


def lr_multiplier(role: str, width_mult: float, kind: str, optimizer: str) -> float:
    """The learning-rate factor of one leaf (Table 3's learning-rate rows; 1 under SP)."""
    if kind == "sp":
        return 1.0
    m = float(width_mult)
    if optimizer == "adam":
        return {"fixed": 1.0, "input": 1.0, "output": 1 / m, "hidden": 1 / m}[role]
    return {"fixed": 1.0, "input": m, "output": 1 / m, "hidden": 1.0}[role]


def init_multiplier(role: str, width_mult: float, kind: str, readout: str) -> float:
    """The init standard-deviation factor of one leaf: ``1/sqrt(m)`` (or 0) for muP's readout
    (variance v / m, Table 3's 1/fan_in^2), 1 otherwise."""
    if kind == "sp" or role != "output":
        return 1.0
    return 0.0 if readout == "zero" else 1 / math.sqrt(float(width_mult))


def lr_multipliers(roles, width_mult: float, p: Parametrisation):
    """Pytree of per-leaf learning-rate factors (see :func:`lr_multiplier`)."""
    return jax.tree.map(lambda r: lr_multiplier(r, width_mult, p.kind, p.optimizer), roles)


def init_multipliers(roles, width_mult: float, p: Parametrisation):
    """Pytree of per-leaf init standard-deviation factors (see :func:`init_multiplier`)."""
    return jax.tree.map(lambda r: init_multiplier(r, width_mult, p.kind, p.readout), roles)


def rescale(params, multipliers):
    """``params`` with every leaf multiplied by its factor (muP's init from SP's draw).

    ``multipliers`` may be floats or traced scalars (so SP and muP share one compiled program);
    a factor of 1 leaves a leaf bit for bit as it was.
    """
    return jax.tree.map(lambda w, c: w * jnp.asarray(c, w.dtype), params, multipliers)


# --------------------------------------------------------------------------------------------
# Optimizers


def scale_by_tree(multipliers) -> optax.GradientTransformation:
    """Multiply each update leaf by its factor in ``multipliers`` (a pytree like the params).

    Placed after Adam's normalisation, so that the factor scales the step itself (Adam is
    invariant to rescaling the gradient, so a factor before it would do nothing).
    """

    def update(updates, state, params=None):
        del params
        return jax.tree.map(lambda u, c: u * jnp.asarray(c, u.dtype), updates, multipliers), state

    return optax.GradientTransformation(lambda params: optax.EmptyState(), update)


def optimizer(learning_rate, multipliers, name: str = "adam") -> optax.GradientTransformation:
    """Adam or SGD with a per-leaf learning rate ``learning_rate * multipliers[leaf]``.

    Args:
      learning_rate: the global eta (a float or a traced scalar: sweeps do not recompile).
      multipliers: pytree like the params (:attr:`Parametrised.lr_multipliers`).
      name: ``"adam"`` (optax defaults b1 = 0.9, b2 = 0.999, eps = 1e-8) or ``"sgd"``.
    """
    if name not in OPTIMIZERS:
        raise ValueError(f"optimizer must be 'adam' or 'sgd', got {name!r}")
    base = [optax.scale_by_adam()] if name == "adam" else []
    return optax.chain(*base, scale_by_tree(multipliers), optax.scale_by_learning_rate(
        learning_rate))  # fmt: skip


# --------------------------------------------------------------------------------------------
# Families


def parametrise(family: Family, width: int, p: Parametrisation) -> Parametrised:
    """The model of ``family`` at ``width`` with ``p``'s init and learning-rate multipliers.

    Roles come from the params' shapes at ``base_width`` and ``2 * base_width`` (abstract
    evaluation, no draws), so a width equal to the base still knows which axes scale.
    """
    if p.kind == "mup" and p.base_width is None:
        raise ValueError("muP needs base_width (the width where muP equals SP); set it")
    base = p.base_width if p.base_width is not None else width
    model = family(width, p)
    key = jax.random.key(0)
    roles = leaf_roles(
        jax.eval_shape(family(base, p).init, key), jax.eval_shape(family(2 * base, p).init, key)
    )
    width_mult = width / base
    lr = lr_multipliers(roles, width_mult, p)
    std = init_multipliers(roles, width_mult, p)

    def init(key):
        return rescale(model.init(key), std)

    return Parametrised(model, init, roles, lr, std, width_mult)


def mlp_family(
    d_in: int, d_out: int, *, depth: int = 3, activation: str = "relu", init: str = "he"
) -> Family:
    """MLPs ``[d_in, n, ..., n, d_out]`` with ``depth`` hidden layers of width n.

    The parametrisation does not change the model (muP acts on init and learning rates only).
    ``init`` must be fan-in scaled (``"lecun"``: 1/fan_in, ``"he"``: 2/fan_in), the SP variance
    Table 3 keeps for input and hidden weights (Glorot's fan_avg or an orthogonal input layer
    would shrink the input layer's output with width).
    """
    if isinstance(depth, bool) or not isinstance(depth, int) or depth < 1:
        raise ValueError(f"depth must be an int >= 1 (hidden layers), got {depth!r}")
    if init not in ("lecun", "he"):
        raise ValueError(f"mlp_family needs a fan-in init, 'lecun' or 'he'; got {init!r}")

    def family(width: int, p: Parametrisation) -> Model:
        return mlp([d_in, *([width] * depth), d_out], activation, init)

    return family


def transformer_family(
    *,
    depth: int,
    heads: int,
    seq_len: int,
    n_out: int,
    n_in: int | None = None,
    vocab: int | None = None,
    **kwargs,
) -> Family:
    """Transformers of width n = d_model with a FIXED number of heads (head size d_h = n/heads).

    Heads fixed, so d_h grows with width and muP's attention-logit scale ``sqrt(d_h0) / d_h``
    (d_h0 = base_width / heads) differs from SP's ``1/sqrt(d_h)`` away from the base width. The
    FFN width ``ffn_mult * n`` scales too. ``kwargs`` go to :func:`gradflow.transformer`.
    """

    def family(width: int, p: Parametrisation) -> Model:
        scale = None
        if p.kind == "mup" and p.base_width is not None and width != p.base_width:
            d_h0, d_h = p.base_width / heads, width / heads
            scale = math.sqrt(d_h0) / d_h
        return transformer(depth, width, heads, seq_len, n_in=n_in, vocab=vocab, n_out=n_out,
                           attn_scale=scale, **kwargs)  # fmt: skip

    return family
