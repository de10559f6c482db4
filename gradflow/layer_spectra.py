"""Per-layer Jacobians of gf-layer models and their spectra, and the checks gradflow.spectra shares.

A *layer* is a leaf of ``model.net`` (see :func:`gradflow.layers.walk`) whose Jacobian is a matrix,
with the elementwise leaves after it folded in on the left; for :func:`gradflow.mlp`
``J^l = diag(phi'(z^l)) (W^l)^T`` acting on column vectors (the :mod:`gradflow.spectra` docstring
lists the others). The walk hands out one leaf Jacobian at a time, inside ``lax.scan`` for runs of
identical layers, so :func:`_plan` first finds (from the jaxpr, once per structure and shapes) how
the leaves group into layers, and :func:`_layer_arrays` then stacks them by shape class in one
jitted program. :mod:`gradflow.spectra` re-exports :func:`layer_jacobians` and
:func:`layer_singular_values`.

References: Glorot & Bengio 2010 (layer Jacobians at initialisation).
"""

from __future__ import annotations

import functools
from functools import partial
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from gradflow import layers as gl
from gradflow.models import Model, check_inputs, path_str

__all__ = ["layer_jacobians", "layer_singular_values"]

# --------------------------------------------------------------------------------------------
# Validation


class _Net:
    """A gf layer as a static ``jit`` argument, equal by its spec (equal specs and input shapes
    mean equal computations), so models differing only in init or names share one program."""

    __slots__ = ("layer",)

    def __init__(self, layer: gl.Layer):
        self.layer = layer

    def __eq__(self, other):
        return isinstance(other, _Net) and self.layer.spec == other.layer.spec

    def __hash__(self):
        return hash(self.layer.spec)


def _net(model, fn: str, hint: str = "use method='dense' or ") -> gl.Layer:
    """The model's gf layer composition, or a ValueError saying what to do instead."""
    if not isinstance(model, Model):
        raise ValueError(f"{fn} takes a gradflow Model (gf.mlp, gf.from_layers, gf.from_apply)")
    if model.net is None:
        raise ValueError(
            f"{fn} needs a model built from gf layers (gf.mlp, gf.from_layers), and this model "
            f"has no .net (e.g. gf.from_apply): {hint}build it from gf layers"
        )
    return model.net


@functools.lru_cache(maxsize=32)
def _init_shapes(model: Model):
    flat, tree = jax.tree_util.tree_flatten_with_path(jax.eval_shape(model.init, jax.random.key(0)))
    return tree, tuple((path_str(p), a.shape) for p, a in flat)


def _check(model: Model, params, x, fn: str, batch: bool = True) -> None:
    """Fail early: x a floating batch (or one example) of the model's input shape, and params
    with the tree and leaf shapes ``model.init`` gives."""
    if not isinstance(model, Model):
        raise ValueError(f"{fn} takes a gradflow Model (gf.mlp, gf.from_layers, gf.from_apply)")
    if batch:
        check_inputs(model, x)
    else:
        shape, want = tuple(jnp.shape(x)), model.in_shape
        if len(shape) != len(want) or any(
            w not in (None, d) for w, d in zip(want, shape, strict=True)
        ):
            raise ValueError(
                f"{fn} takes one example x of shape {want}, got {shape}; vmap it for a batch"
            )
    if not jnp.issubdtype(jnp.result_type(x), jnp.floating):
        raise ValueError(
            f"{fn} differentiates with respect to x: it must be floating, not {x.dtype}"
        )
    if model.net is None:
        return
    tree, want = _init_shapes(model)
    flat, got = jax.tree_util.tree_flatten_with_path(params)
    if got != tree:
        raise ValueError(
            f"{fn}: params do not match this model: model.init gives {str(tree)[:120]}, got "
            f"{str(got)[:120]}; pass what model.init returned (one seed)"
        )
    for (path, shape), (_, leaf) in zip(want, flat, strict=True):
        if jnp.shape(leaf) != shape:
            raise ValueError(
                f"{fn}: params leaf {path!r} has shape {jnp.shape(leaf)}, model.init gives {shape}"
            )


def _dtype(params, x1):
    return jnp.result_type(*(leaf.dtype for leaf in jax.tree.leaves(params)), x1.dtype)


# --------------------------------------------------------------------------------------------
# The walk's leaf Jacobians, unrolled

_MARK = 0x5EC70000  # step markers in the discovery jaxpr: an int32 xor with _MARK + position


def _class(jac) -> tuple[str, tuple[int, ...]]:
    """A leaf Jacobian's shape class ("d8": diagonal, "m8x4": matrix) and stored shape."""
    if isinstance(jac, gl.Diag):
        return f"d{jac.d.shape[0]}", jac.d.shape
    return f"m{jac.shape[0]}x{jac.shape[1]}", jac.shape


def _leaf_classes(layer: gl.Layer, params, x1) -> list[tuple]:
    """:func:`_class` of every leaf Jacobian the walk of one example hands out, in order.

    ``walk`` returns no per-step outputs and calls ``step`` once per leaf *at trace time*, once
    per run of a ``lax.scan``. So each traced call xors a marker into the state, and the jaxpr
    says where the markers sit and how often each scan runs (:func:`_unroll`).
    """
    seen = []

    def step(tag, jac):
        seen.append(_class(jac))
        return lax.bitwise_xor(tag, np.int32(_MARK + len(seen) - 1))

    tag = jax.ShapeDtypeStruct((), jnp.int32)  # an input, so no xor is constant-folded
    closed = jax.make_jaxpr(lambda p, x, t: gl.walk(layer, p, x, step, t)[1])(params, x1, tag)
    return [seen[i] for i in _unroll(closed.jaxpr, len(seen))]


def _unroll(jaxpr, n: int) -> list[int]:
    """Marker positions in execution order: a scan's body repeated ``length`` times."""
    out = []
    for eqn in jaxpr.eqns:
        name = eqn.primitive.name
        if name == "xor":
            vals = [np.asarray(getattr(v, "val", 0.5)) for v in eqn.invars]  # literals: .val
            ids = [int(v) - _MARK for v in vals if v.ndim == 0 and v.dtype.kind in "iu"]
            out += [i for i in ids if 0 <= i < n]
            continue
        subs = [
            getattr(v, "jaxpr", v)
            for p in eqn.params.values()
            for v in (p if isinstance(p, (tuple, list)) else (p,))
            if hasattr(getattr(v, "jaxpr", v), "eqns")
        ]
        inner = [i for sub in subs for i in _unroll(sub, n)]
        if inner and name == "scan":
            out += inner * int(eqn.params["length"])
        elif inner and len(subs) == 1 and name not in ("while", "cond"):  # a call: jit, remat
            out += inner
        elif inner:
            raise ValueError(
                f"a gf layer's walk steps inside a {name!r}; per-layer spectra can only count "
                "the steps of plain and scanned (lax.scan) walks"
            )
    return out


class _Plan(NamedTuple):
    """How one example's leaf Jacobians group into layers (see :func:`layer_jacobians`).

    ``shapes``: per class, (count, *shape) of its buffer; ``groups``: per layer, its matrix leaf
    and the diagonal leaves after it, as (class, index); ``lead``: diagonal leaves before the
    first matrix leaf; ``order``: where each layer sits in :func:`_layer_arrays`' output.
    """

    shapes: dict
    groups: list
    lead: list
    order: list


@functools.lru_cache(maxsize=32)
def _plan(net: _Net, tree, avals: tuple) -> _Plan:
    shapes, groups, lead = {}, [], []
    for cls, shape in _leaf_classes(net.layer, jax.tree.unflatten(tree, avals[:-1]), avals[-1]):
        step = (cls, shapes.get(cls, (0,))[0])
        shapes[cls] = (step[1] + 1, *shape)
        if cls[0] == "m":
            groups.append((step, []))
        else:
            (groups[-1][1] if groups else lead).append(step)
    return _Plan(shapes, groups, lead, [g[0] for g in groups] if groups else [("diag", 0)])


def _plan_of(net: _Net, params, x1) -> _Plan:
    """The cached plan for these shapes (traced once per structure and shapes)."""
    leaves, tree = jax.tree.flatten(params)
    dtype = jax.dtypes.canonicalize_dtype
    avals = tuple(jax.ShapeDtypeStruct(jnp.shape(a), dtype(a.dtype)) for a in (*leaves, x1))
    return _plan(net, tree, avals)


def _layer_arrays(layer, plan: _Plan, params, x1, svd: bool) -> dict:
    """One example's layer Jacobians stacked by shape class (``plan.order`` indexes them), or
    their singular values if ``svd``. The walk writes every leaf into its class's buffer (a
    scan-safe state), then each class folds its diagonals in at once."""
    dtype = _dtype(params, x1)

    def record(state, jac):
        index, bufs = state
        cls, _ = _class(jac)
        value = (jac.d if isinstance(jac, gl.Diag) else jac).astype(dtype)
        return {**index, cls: index[cls] + 1}, {**bufs, cls: bufs[cls].at[index[cls]].set(value)}

    index = {c: jnp.zeros((), jnp.int32) for c in plan.shapes}
    bufs = {c: jnp.zeros(shape, dtype) for c, shape in plan.shapes.items()}
    _, (_, bufs) = gl.walk(layer, params, x1, record, (index, bufs))

    def diag_product(steps, n):
        return jnp.prod(jnp.stack([jnp.ones((n,), dtype)] + [bufs[c][i] for c, i in steps]), 0)

    arrays = {}
    if not plan.groups:  # elementwise layers only: one diagonal layer
        arrays["diag"] = jnp.diag(diag_product(plan.lead, x1.size))[None]
    for cls in dict.fromkeys(g[0][0] for g in plan.groups):
        mine = [g[1] for g in plan.groups if g[0][0] == cls]  # diagonals per layer, in order
        n_out, width = plan.shapes[cls][1], max(map(len, mine))
        arrays[cls] = bufs[cls]
        if width:  # gather all diagonals at once; the padding index reads a row of ones
            diags = jnp.concatenate([bufs[f"d{n_out}"], jnp.ones((1, n_out), dtype)])
            pad = diags.shape[0] - 1
            idx = np.array([[i for _, i in d] + [pad] * (width - len(d)) for d in mine])
            arrays[cls] = jnp.prod(diags[idx], axis=1)[:, :, None] * bufs[cls]
    if plan.lead and plan.groups:
        cls, first = plan.groups[0][0]
        lead = diag_product(plan.lead, plan.shapes[cls][2])
        arrays[cls] = arrays[cls].at[first].multiply(lead[None, :])
    if svd:
        arrays = {c: jnp.linalg.svd(a, compute_uv=False) for c, a in arrays.items()}
    return arrays


@partial(jax.jit, static_argnames=("net", "what"))
def _per_layer(net: _Net, params, x, what: str) -> dict:
    """``what="jacobian"``: the layer Jacobians at one example x; ``"svd"``: their singular
    values for a batch x. Stacked by class: the caller splits them (a program with one output
    per layer compiles very slowly at depth 1,000)."""
    if what == "jacobian":
        return _layer_arrays(net.layer, _plan_of(net, params, x), params, x, False)
    plan = _plan_of(net, params, x[0])
    return jax.vmap(lambda xi: _layer_arrays(net.layer, plan, params, xi, True))(x)


# --------------------------------------------------------------------------------------------
# Layer Jacobians


def layer_jacobians(model: Model, params, x: jax.Array) -> list[jax.Array]:
    """The layer Jacobians of a gf-layer model at one example, in order.

    A *layer* here is a leaf of ``model.net`` whose Jacobian is a matrix (dense, residual, any
    layer without a closed-form diagonal), with the elementwise leaves after it folded in on the
    left: for :func:`gradflow.mlp` ``J^l = diag(phi'(z^l)) (W^l)^T`` (plus I for a residual
    layer, ``phi_out`` for the last), as in the module docstring. Elementwise leaves before the
    first matrix leaf fold into the first layer on the right.

    Args:
      model: a model built from gf layers (``model.net``), e.g. :func:`gradflow.mlp`.
      params: its parameters (one seed).
      x: one example, shape ``model.in_shape`` (e.g. (n_0,)); vmap for a batch.

    Returns:
      A list of arrays (n_out, n_in) acting on column vectors (inputs and outputs flattened);
      their product ``J^L ... J^1`` is ``jax.jacfwd`` of ``model.apply`` at x.
    """
    net = _Net(_net(model, "layer_jacobians", ""))
    _check(model, params, x, "layer_jacobians", batch=False)
    arrays = _per_layer(net, params, x, "jacobian")
    return [arrays[c][i] for c, i in _plan_of(net, params, x).order]


def layer_singular_values(model: Model, params, x: jax.Array) -> list[jax.Array]:
    """Singular values of every layer Jacobian (see :func:`layer_jacobians`), per example.

    Args:
      model, params: a gf-layer model and its parameters (one seed).
      x: inputs, shape (batch, ``*model.in_shape``).

    Returns:
      A list with one array per layer, shape (batch, min(n_in, n_out)), descending.

    References: Glorot & Bengio 2010 (Sec. 4.2.2: mean singular value of the layer Jacobian).
    """
    net = _Net(_net(model, "layer_singular_values", ""))
    _check(model, params, x, "layer_singular_values")
    arrays = _per_layer(net, params, x, "svd")
    return [arrays[c][:, i] for c, i in _plan_of(net, params, x[0]).order]
