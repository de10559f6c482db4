"""Exact per-layer norms inside your own training loop, and writers that log them.

:func:`layer_norms` is called inside a user's jitted train step, on the gradients, parameters
and optimizer updates that step already holds, and returns a flat ``{key: scalar}`` dict:

============================  =================================================================
``grad_norm/<layer>``         ``||g_l|| = sqrt(sum_{leaves i of l} sum g_i^2)`` (all parameters)
``weight_grad_norm/<layer>``  the same over the layer's weights  } only for layers holding
``bias_grad_norm/<layer>``    the same over its biases            } both weights and biases
``param_norm/<layer>``        ``||theta_l||`` (needs ``params``)
``update_norm/<layer>``       ``||u_l||`` (needs ``updates``)
``update_ratio/<layer>``      ``||u_l|| / ||theta_l||`` (needs both)
``global/grad_norm`` ...      the same over all leaves (``global/param_norm``,
                              ``global/update_norm``, ``global/update_ratio``)
============================  =================================================================

Every norm, per layer and global, is the square root of a sum of squares over the leaves
(``global/grad_norm`` is ``optax.tree.norm(grads)``, formerly ``optax.global_norm``), never
a sum of per-leaf norms (which overstates it by up to sqrt(#leaves)). A "layer"
is a group of parameter leaves (:class:`gradflow.groups.LeafGroup`): with ``model=`` the model's
own grouping, so names equal ``gf.layer_grad_norms(...).names`` (a scanned run of k layers is
one stacked group whose leaves carry the k layers on axis 0, giving k entries); for a bare
pytree, one layer per innermost dict/module holding arrays (``"params/Dense_0"`` for Flax), in
natural order of the names (``Dense_2`` before ``Dense_10``).
Leaves named ``b``/``bias``/``beta``/``offset`` are biases (:data:`gradflow.probes.BIAS_NAMES`).

The writers (:mod:`gradflow.writers`: ``JsonlWriter``, ``TensorBoardWriter``, re-exported here)
take that dict of device arrays and write one record per step with one ``jax.device_get``.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from gradflow.groups import LeafGroup, path_groups, path_str
from gradflow.models import Model, leaf_groups
from gradflow.probes import _is_bias, _use_order
from gradflow.reduce import square_sums
from gradflow.writers import JsonlWriter, TensorBoardWriter  # noqa: F401  (re-exported)

GLOBAL = "global"
"""Prefix of the whole-network keys (``global/grad_norm``); never a layer key's prefix."""

Groups = str | Callable[[str], str | None] | Sequence[LeafGroup] | None


def layer_norms(
    grads,
    params=None,
    updates=None,
    *,
    model: Model | None = None,
    x=None,
    groups: Groups = None,
) -> dict[str, jax.Array]:
    """Exact per-layer and global norms of gradients, parameters and updates, for logging.

    Pure and free of host callbacks: call it inside a jitted (or vmapped) train step and return
    the dict with the step's outputs. Grouping is Python work done once per tree structure.

    Args:
      grads: the gradient pytree (same structure and shapes as ``params``).
      params: the parameters the gradient was taken at (adds ``param_norm``, and with
        ``updates`` ``update_ratio``); None to skip.
      updates: the optimizer's updates, ``optimizer.update(grads, state, params)[0]``: the step
        ``params_new - params`` (adds ``update_norm``); None to skip.
      model: a :class:`gradflow.Model` whose layer grouping to use (names then match
        :func:`gradflow.layer_grad_norms`); None groups a bare pytree (see ``groups``).
      x: an input batch of ``model``, shape (batch, ...): the grouping of ``gf.from_apply``,
        Flax and Equinox models follows ``apply`` on it (only its shape and dtype are used). Not
        needed for gf layer models with a fixed input shape (``gf.mlp``, ``gf.from_layers``).
      groups: override the grouping: a regex (a leaf whose path ``"a/b/c"`` it matches belongs
        to the group named by the match, e.g. ``r"blocks/\\d+"``), a function ``path -> name``
        (None keeps the default), or a sequence of :class:`gradflow.groups.LeafGroup`.

    Returns:
      ``{key: scalar}`` with the keys listed in the module docstring; under ``vmap`` each value
      gains the mapped axis. (``jit`` returns dicts with sorted keys: :func:`layer_names` gives
      the layers in order of use.) Squares are summed in at least float32 (bfloat16 leaves are
      widened first).

    Raises:
      ValueError: if ``grads``/``params``/``updates`` differ in structure or shapes, a leaf is
        not a floating array, or a layer of the grouping has no leaves in ``grads``.

    Example, in an optax loop::

        @jax.jit
        def train_step(params, opt_state, x, y):
            loss, grads = jax.value_and_grad(loss_fn)(params, x, y)
            updates, opt_state = optimizer.update(grads, opt_state, params)
            norms = gf.monitor.layer_norms(grads, params, updates)   # model=, x= for gf models
            return optax.apply_updates(params, updates), opt_state, {"loss": loss, **norms}

        with gf.monitor.JsonlWriter("run/norms.jsonl") as log:
            for step, (x, y) in enumerate(batches):
                params, opt_state, metrics = train_step(params, opt_state, x, y)
                if step % 100 == 0:
                    log.write(step, metrics)

    References:
      Pascanu, Mikolov & Bengio 2013, arXiv:1211.5063 (global-norm clipping); Karpathy's
      update/data ratio (CS231n notes, "ratio of updates to weights", about 1e-3).
    """
    flat_g, treedef = jax.tree_util.tree_flatten_with_path(grads)
    others = {"params": params, "updates": updates}
    leaves = {"grads": [leaf for _, leaf in flat_g]}
    for name, tree in others.items():
        if tree is not None:
            leaves[name] = _matching_leaves(name, tree, treedef, flat_g)
    _check_floating(flat_g)
    layer_groups = _groups(grads, _check_model(model), x, groups)
    _check_groups(layer_groups, flat_g)

    in_group = {i for g in layer_groups for i in g.leaves}
    kinds = tuple(leaves)  # "grads", then "params", "updates" when given
    per_leaf = {}  # leaf index -> tuple of sums of squares, one per kind ((k,) when stacked)
    for g in layer_groups:
        for i in g.leaves:
            per_leaf[i] = _leaf_sums([leaves[k][i] for k in kinds], g.stacked)
    for i in range(len(flat_g)):  # leaves outside every group still count in the global norms
        if i not in in_group:
            per_leaf[i] = _leaf_sums([leaves[k][i] for k in kinds], False)

    rows = []  # (layer name, {quantity: sum of squares}, has weights and biases)
    for g in layer_groups:
        acc: dict[str, jax.Array] = {}
        biases = [_is_bias(flat_g[i][0]) for i in g.leaves]
        for i, is_bias in zip(g.leaves, biases, strict=True):
            sums = dict(zip(kinds, per_leaf[i], strict=True))
            sums["weight_grads" if not is_bias else "bias_grads"] = sums["grads"]
            for q, s in sums.items():
                acc[q] = acc[q] + s if q in acc else s
        split = any(biases) and not all(biases)
        for j, name in enumerate(g.names):
            rows.append((name, {q: s[j] if g.stacked else s for q, s in acc.items()}, split))
    order = _use_order(layer_groups)
    if order is not None:  # scanned runs: stacked groups interleaved block by block
        rows = [rows[i] for i in order]

    out: dict[str, jax.Array] = {}
    _put(out, "grad_norm", [(n, s["grads"]) for n, s, _ in rows])
    _put(out, "weight_grad_norm", [(n, s["weight_grads"]) for n, s, split in rows if split])
    _put(out, "bias_grad_norm", [(n, s["bias_grads"]) for n, s, split in rows if split])
    for q, key in (("params", "param_norm"), ("updates", "update_norm")):
        if q in leaves:
            _put(out, key, [(n, s[q]) for n, s, _ in rows])
    if "params" in leaves and "updates" in leaves:
        for n, s, _ in rows:
            out[f"update_ratio/{n}"] = jnp.sqrt(s["updates"]) / jnp.sqrt(s["params"])

    total = {k: sum(jnp.sum(per_leaf[i][j]) for i in per_leaf) for j, k in enumerate(kinds)}
    zero = jnp.zeros((), jnp.float32)
    for q, key in (("grads", "grad_norm"), ("params", "param_norm"), ("updates", "update_norm")):
        if q in total:
            out[f"{GLOBAL}/{key}"] = jnp.sqrt(total[q] if per_leaf else zero)
    if "params" in total and "updates" in total:
        out[f"{GLOBAL}/update_ratio"] = out[f"{GLOBAL}/update_norm"] / out[f"{GLOBAL}/param_norm"]
    return out


def layer_names(grads, *, model: Model | None = None, x=None, groups: Groups = None):
    """The layer names of :func:`layer_norms`'s keys, in order of use (a tuple of str).

    Takes the same grouping arguments as :func:`layer_norms` (``params`` may stand in for
    ``grads``: only the structure and shapes are read). For gf models this is
    ``gf.layer_grad_norms(...).names``; use it to stack logged values into an (L,) array.
    """
    flat_g = jax.tree_util.tree_flatten_with_path(grads)[0]
    _check_floating(flat_g)
    layer_groups = _groups(grads, _check_model(model), x, groups)
    _check_groups(layer_groups, flat_g)
    names = [n for g in layer_groups for n in g.names]
    order = _use_order(layer_groups)
    return tuple(names) if order is None else tuple(names[i] for i in order)


def _check_model(model):
    return model


def _put(out, prefix, named_sq):
    for name, sq in named_sq:
        out[f"{prefix}/{name}"] = jnp.sqrt(sq)


def _widen(a):
    # bfloat16/float16 squares lose most of their bits when summed; float32 at least.
    return a.astype(jnp.promote_types(a.dtype, jnp.float32))


def _leaf_sums(arrays, stacked: bool) -> tuple[jax.Array, ...]:
    """Sums of squares of same-shape leaves, widened to float32 at least: per layer (shape (k,))
    of a stacked leaf, else ()."""
    return square_sums([_widen(a) for a in arrays], int(stacked))


# --------------------------------------------------------------------------------------------
# Checks and grouping (Python, at trace time)


def _matching_leaves(name, tree, treedef, flat_g) -> list:
    flat, other = jax.tree_util.tree_flatten_with_path(tree)
    if other != treedef:
        paths_g = [path_str(p) for p, _ in flat_g]
        paths_o = [path_str(p) for p, _ in flat]
        diff = next(
            (f"{a!r} vs {b!r}" for a, b in zip(paths_g, paths_o, strict=False) if a != b),
            f"{len(paths_g)} vs {len(paths_o)} leaves",
        )
        raise ValueError(
            f"grads and {name} have different tree structures (first difference: {diff}); pass "
            f"grads = jax.grad(loss)(params) and {name} of the same structure"
        )
    for (path, g), (_, o) in zip(flat_g, flat, strict=True):
        if np.shape(g) != np.shape(o):
            raise ValueError(
                f"grads and {name} differ in shape at {path_str(path) or '(root)'}: "
                f"{np.shape(g)} vs {np.shape(o)}; pass matching pytrees"
            )
    return [leaf for _, leaf in flat]


def _check_floating(flat_g) -> None:
    for path, leaf in flat_g:
        dtype = getattr(leaf, "dtype", None)
        if dtype is None or not jnp.issubdtype(dtype, jnp.floating):
            raise ValueError(
                f"grads leaf {path_str(path) or '(root)'} is {type(leaf).__name__} of dtype "
                f"{dtype}, not a floating array; keep non-trainable state out of the pytree"
            )


def _spec(a) -> jax.ShapeDtypeStruct:
    return jax.ShapeDtypeStruct(np.shape(a), a.dtype)


def _groups(grads, model, x, override) -> list[LeafGroup]:
    """The grouping of ``grads`` (a list of LeafGroup), computed on shapes and cached."""
    if override is not None and not isinstance(override, (str, Callable)):
        try:
            override = tuple(override)
        except TypeError:
            override = None
        if override is None or not all(isinstance(g, LeafGroup) for g in override):
            raise ValueError(
                "groups must be None, a regex string, a function path -> name or a sequence "
                "of gradflow.groups.LeafGroup"
            )
        return list(override)
    if isinstance(override, str):
        try:
            override = re.compile(override)
        except re.error as e:
            raise ValueError(f"groups={override!r} is not a valid regex: {e}") from None
    leaves, treedef = jax.tree.flatten(grads)
    x_spec = None
    if model is not None:
        if x is not None:
            x_spec = _spec(x)
        elif model.net is not None and model.in_shape and None not in model.in_shape:
            x_spec = jax.ShapeDtypeStruct((1, *model.in_shape), jnp.float32)  # shapes only
        else:
            raise ValueError(
                "layer_norms needs x= (an input batch) to group this model's parameters: its "
                "layers are ordered by use in apply"
            )
    key = (model, override, treedef, tuple(_spec(a) for a in leaves), x_spec)
    try:
        hash(key)
    except TypeError:  # an unhashable model identity or override: no cache
        return _compute_groups(*key)
    return list(_cached_groups(*key))


def _compute_groups(model, override, treedef, leaf_specs, x_spec) -> tuple[LeafGroup, ...]:
    specs = jax.tree.unflatten(treedef, leaf_specs)
    if model is None:  # no apply to order the layers by: natural order of their names
        found = path_groups(specs, None, lambda p, _: 0.0, override)
        found = sorted(found, key=lambda g: _natural_key(g.names[0]))
        return tuple(g._replace(keys=((j,),)) for j, g in enumerate(found))
    found = []

    def trace(p, x):  # the grouping may trace apply: on shapes only, never on real data
        if override is None:
            found.append(leaf_groups(model, p, x))
        else:
            found.append(path_groups(p, x, model.apply, override))
        return jnp.zeros(())

    jax.eval_shape(trace, specs, x_spec)
    return tuple(found[0])


def _natural_key(name: str) -> tuple:
    # "Dense_2" before "Dense_10" (Flax's module names), as a reader expects.
    return tuple((0, int(t), "") if t.isdigit() else (1, 0, t) for t in re.split(r"(\d+)", name))


_cached_groups = functools.lru_cache(maxsize=64)(_compute_groups)


def _check_groups(groups, flat_g) -> None:
    n = len(flat_g)
    seen = set()
    for g in groups:
        if not g.leaves:
            raise ValueError(
                f"layer {g.names[0]!r} has no leaves in grads; pass the gradients of this "
                "model's full params (or groups= that fit the pytree)"
            )
        for i in g.leaves:
            if not 0 <= i < n:
                raise ValueError(
                    f"group {g.names[0]!r} names leaf {i}, but grads has {n} leaves; build "
                    "groups from jax.tree.leaves(grads)"
                )
            if g.stacked and (
                np.ndim(flat_g[i][1]) < 1 or np.shape(flat_g[i][1])[0] != len(g.names)
            ):
                raise ValueError(
                    f"stacked group {g.names[0]!r} has {len(g.names)} names but leaf "
                    f"{path_str(flat_g[i][0])} has shape {np.shape(flat_g[i][1])}; the leading "
                    "axis must hold one layer per name"
                )
        dup = seen.intersection(g.names)
        if dup:
            raise ValueError(f"layer name {sorted(dup)[0]!r} is used by two groups; rename one")
        seen.update(g.names)
