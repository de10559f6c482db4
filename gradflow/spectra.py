"""Jacobian spectra of any model: layer Jacobians and the input-output spectrum at any depth.

The input-output Jacobian of one example is ``J = df(x)/dx`` of ``model.apply`` (n_out, n_in),
the example's input and output flattened. For a model built from gf layers (``model.net``:
:func:`gradflow.mlp`, :func:`gradflow.from_layers`) J is the product of the leaf Jacobians that
:func:`gradflow.layers.walk` hands out: matrices (dense, residual ``I + s J_branch``, others by
``jax.jacfwd``) and diagonals (activations, taps). For :func:`gradflow.mlp` (row vectors,
``z^l = a^{l-1} W^l + b^l``, ``a^l = phi(z^l)``, or ``a^{l-1} + s phi(z^l)`` if residual, output
``a^L = phi_out(z^L)``) the layer Jacobians, acting on column vectors, are::

    J^l = da^l/da^{l-1} = diag(phi'(z^l)) (W^l)^T           hidden layer
    J^l = I + s diag(phi'(z^l)) (W^l)^T                     residual layer (n_l = n_{l-1})
    J^L = diag(phi_out'(z^L)) (W^L)^T                       output layer (phi_out' = 1 if None)

and ``J = J^L ... J^1`` includes the output activation.

Input-output singular values (``method=``):

* ``"dense"``: ``jax.jacfwd`` of ``model.apply`` at one example, then an SVD; any model (also
  :func:`gradflow.from_apply`). Exact up to rounding while J fits the float range, but values
  below ~eps * sigma_max are noise, and in float32 a few hundred non-isometric layers overflow.
* ``"lyapunov"`` (gf-layer models): the classic QR method, one QR per matrix layer. The values
  sum to ``log|det J|`` exactly and estimate each ``log sigma_i`` to O(1) at any depth
  (Lyapunov exponents with an O(1/L) bias). Cheapest.
* ``"exact"`` (default; gf-layer models): graded, pre-pivoted QR accumulation and a one-sided
  Jacobi SVD in the log domain: the true ``log sigma_i`` at any depth, to ~eps per layer
  (absolute) whatever sigma_i's magnitude. ~3 matmuls and 1 QR per matrix layer.

:mod:`gradflow.linalg` holds the factorisations (and says when each is exact) and the summaries
(:func:`spectrum_summary`, :func:`spectral_density`, re-exported here). Diagonal factors
scale the running factor without a QR, so an MLP layer (dense, tap, phi) costs one QR. Scanned
runs of identical layers are walked by one ``lax.scan`` (depth 10,000 compiles to one loop), and
each function is one jitted program per structure (``model.net.spec``) and input shape. Every
public function takes ``(model, params, x, ...)`` for one seed; ``gradflow.sweep`` adds seeds.

References: Pennington, Schoenholz & Ganguli 2017 (arXiv:1711.04735); Saxe et al. 2014
(arXiv:1312.6120); Newman 1986 and Cohen & Newman 1984 (Lyapunov exponents of Gaussian
products); Glorot & Bengio 2010 (layer Jacobians at initialisation).
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
from gradflow import linalg
from gradflow.linalg import SpectrumSummary, spectral_density, spectrum_summary
from gradflow.models import Model, check_inputs, path_str

__all__ = [
    "METHODS",
    "SpectrumSummary",
    "jacobian_singular_values",
    "layer_jacobians",
    "layer_singular_values",
    "spectral_density",
    "spectrum_summary",
]

METHODS = ("exact", "lyapunov", "dense")
"""Input-output spectrum methods, see the module docstring."""


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


# --------------------------------------------------------------------------------------------
# Input-output spectrum


def _log_spectrum(layer: gl.Layer, params, x1, method: str, fixed_rank: bool):
    """Descending log singular values of df/dx at one example x1: (min(in_size, out_size),)."""
    acc = linalg.accumulator(method, fixed_rank=fixed_rank)

    def step(state, jac):
        return acc.diag(state, jac.d) if isinstance(jac, gl.Diag) else acc.matrix(state, jac)

    y1, state = gl.walk(layer, params, x1, step, acc.init(x1.size, _dtype(params, x1)))
    s = acc.log_sv(state)
    # A layer narrower than input and output bounds the rank: the missing values are 0.
    k = min(x1.size, y1.size)
    return jnp.concatenate([s[:k], jnp.full((k - min(k, s.shape[0]),), -jnp.inf, s.dtype)])


@partial(jax.jit, static_argnames=("net", "method"))
def _stable_log_spectra(net: _Net, params, x, method: str):
    def run(fixed_rank):
        return jax.vmap(lambda xi: _log_spectrum(net.layer, params, xi, method, fixed_rank))(x)

    try:
        return run(False)
    except TypeError as e:
        # A scanned block that narrows below the running rank changes the state's shapes
        # between iterations (the rank shrinks in the first): keep the rank fixed instead.
        if "carry" not in str(e):
            raise
        return run(True)


@partial(jax.jit, static_argnames=("model",))
def _dense_log_spectra(model: Model, params, x):
    def one(x1):
        def f(v):
            y = model.apply(params, v.reshape(x1.shape)[None])
            if not hasattr(y, "shape") or y.ndim < 1 or y.shape[0] != 1:
                raise ValueError(
                    "method='dense' needs model.apply to return one array with the batch axis "
                    f"first; for a batch of 1 it returned {getattr(y, 'shape', type(y).__name__)}"
                )
            return y[0].ravel()

        jac = jax.jacfwd(f)(x1.ravel())  # (out_size, in_size)
        return linalg.log0(jnp.linalg.svd(jac, compute_uv=False))

    return jax.vmap(one)(x)


def jacobian_singular_values(
    model: Model, params, x: jax.Array, *, log: bool = False, method: str = "exact"
) -> jax.Array:
    """Singular values of the input-output Jacobian ``df(x)/dx``, per example, descending.

    Args:
      model: any model for ``method="dense"``; a model built from gf layers (``model.net``:
        :func:`gradflow.mlp`, :func:`gradflow.from_layers`) for ``"exact"`` and ``"lyapunov"``.
        The Jacobian is that of ``model.apply`` (output activation included), one example's
        input and output flattened.
      params: its parameters (one seed); ``gradflow.sweep`` adds the seed axis.
      x: inputs, shape (batch, ``*in_shape``).
      log: return ``log sigma`` (``-inf`` for an exact zero). Computed stably by the
        ``"exact"`` and ``"lyapunov"`` methods, so it stays finite at depth 10,000 in float32,
        where ``sigma`` itself (``log=False`` is ``exp`` of it) may overflow or underflow.
      method: ``"exact"`` (default), ``"lyapunov"`` or ``"dense"``; the module docstring states
        when each is exact.

    Returns:
      Shape (batch, min(in_size, out_size)).

    References: Pennington, Schoenholz & Ganguli 2017 (arXiv:1711.04735).
    """
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; choose one of: {', '.join(METHODS)}")
    if method == "dense":
        _check(model, params, x, "jacobian_singular_values")
        out = _dense_log_spectra(model, params, x)
    else:
        net = _Net(_net(model, f"jacobian_singular_values(method={method!r})"))
        _check(model, params, x, "jacobian_singular_values")
        out = _stable_log_spectra(net, params, x, method)
    return out if log else jnp.exp(out)
