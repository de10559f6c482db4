"""Layers: each one record that knows its init, apply and Jacobian; ``serial`` composes them.

In the spirit of stax's (init, apply) pairs and neural-tangents' per-layer rules, a
:class:`Layer` is a NamedTuple of pure functions over plain pytrees:

* ``init(key, in_shape, hyper) -> params`` (``in_shape`` is one example's shape; ``hyper`` holds
  traced overrides such as ``sigma_w2`` for grid sweeps);
* ``apply(params, x) -> y`` for a batch ``x`` of shape ``(batch, *in_shape)``;
* ``jac(params, x1)``: the Jacobian ``dy/dx`` of one example (shape ``(out_size, in_size)``, or a
  :class:`Diag` for elementwise layers), in closed form where one exists, else ``jax.jacfwd``.

:func:`serial` (:mod:`gradflow.serial`, re-exported here) runs a list of layers; runs of
identical layers execute as one ``lax.scan`` with their parameters stacked (see there). The
parameters of a serial are a list with one entry per *segment*: a single layer's params, or a
run's params stacked.

Naming: a child of a serial is named ``child.name`` or ``f"{kind}{index}"``. A child's name
becomes part of the layer (parameter group) and tap names below it when it was given explicitly
(:func:`named`), or when the serial has two or more children holding parameters; an unnamed only
child holding parameters is named by its parent. So in ``gf.mlp`` the block ``layer3 =
named(serial(dense, mark, activation), "layer3")`` gives the group ``"layer3"`` and the tap
``"layer3"``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from gradflow import activations, inits, taps
from gradflow.reduce import sums


class Diag(NamedTuple):
    """A diagonal Jacobian stored as its diagonal, shape (n,)."""

    d: jax.Array


class Layer(NamedTuple):
    """One layer: a record of pure functions (see the module docstring).

    Attributes:
      kind: "dense", "activation", "serial", ... (the default name prefix).
      init: ``init(key, in_shape, hyper) -> params`` (None for layers without parameters).
      apply: ``apply(params, x) -> y``, x batched along axis 0.
      out_shape: ``out_shape(in_shape) -> out_shape`` (one example's shapes).
      spec: hashable structure without the name: equal specs and input shapes mean equal
        computations up to the parameter values (what a scanned run needs).
      name: the layer's name in its parent serial, or None for the default.
      has_params: whether ``init`` returns arrays.
      jac: ``jac(params, x1) -> (out_size, in_size) array | Diag`` for one example, or None
        (then :func:`jacobian` uses ``jax.jacfwd``).
      apply_fm: ``apply`` in the feature-major layout (x of shape (n, batch)), or None if the
        layer does not support it (see :func:`serial`'s ``feature_major``).
      walk: ``walk(params, x1, step, state) -> (y1, state)`` for containers (see :func:`walk`).
      children: the sublayers of a container.
    """

    kind: str
    init: Callable | None
    apply: Callable
    out_shape: Callable
    spec: tuple
    name: str | None = None
    has_params: bool = False
    jac: Callable | None = None
    apply_fm: Callable | None = None
    walk: Callable | None = None
    children: tuple = ()


def named(layer: Layer, name: str) -> Layer:
    """``layer`` with its name set (the name of its parameter group and taps in a serial)."""
    if not isinstance(name, str) or not name or "/" in name:
        raise ValueError(f"a layer name must be a non-empty string without '/', got {name!r}")
    return layer._replace(name=name)


def _same(shape):
    return tuple(shape)


def _bias_shape(b, ndim):
    return b.reshape((1,) * (ndim - 1) + b.shape)


# --------------------------------------------------------------------------------------------
# Dense, activation, mark (tap), residual


def dense(
    n_out: int,
    init: str = "lecun",
    *,
    sigma_w2: float | None = None,
    sigma_b2: float | None = None,
    transposed: bool = False,
    name: str | None = None,
) -> Layer:
    """``y = x W + b`` on the last axis; ``W: (n_in, n_out)``, ``b: (n_out,)``.

    Args:
      n_out: output features. init: a name in :data:`gradflow.inits.INITS`.
      sigma_w2, sigma_b2: variances for ``init="gaussian"``/``"orthogonal"``; ``hyper``
        overrides of the same names (traced) take precedence in ``init``.
      transposed: draw W in the memory order of W^T (same numbers; what a feature-major
        forward pass reads, see :func:`serial`).

    Jacobian: ``dy/dx = W^T`` (closed form).
    """
    inits.check_init(init)
    sw2, sb2 = inits.check_sigmas(init, sigma_w2, sigma_b2)
    sweepable = init in ("gaussian", "orthogonal")

    def init_fn(key, in_shape, hyper):
        w2 = hyper.get("sigma_w2", sw2) if sweepable else sw2
        b2 = hyper.get("sigma_b2", sb2) if sweepable else sb2
        return inits.init_dense(key, in_shape[-1], n_out, init, w2, b2, transposed=transposed)

    def apply(params, x):
        # x @ w for a matrix (tensordot reshapes, and under vmap its copies made a depth-50
        # sweep 1.7x slower); einsum for more axes (rank promotion stays explicit).
        w = params["w"]
        y = x @ w if x.ndim == 2 else jnp.einsum("...i,io->...o", x, w)
        return y + _bias_shape(params["b"], y.ndim)

    def apply_fm(params, x):  # x: (n_in, batch) -> (n_out, batch)
        return params["w"].T @ x + params["b"][:, None]

    def out_shape(in_shape):
        return (*in_shape[:-1], n_out)

    def jac(params, x1):
        if x1.ndim != 1:
            return jax.jacfwd(lambda v: apply(params, v[None])[0])(x1).reshape(-1, x1.size)
        return params["w"].T

    return Layer(
        "dense", init_fn, _recording(apply), out_shape,
        ("dense", n_out, init, sw2, sb2, transposed), name, True, jac,
        _recording(apply_fm, batch_axis=1),
    )  # fmt: skip


def _recording(apply, batch_axis: int = 0):
    """Dense apply that records each example's squared input norm under a probe, so that the
    per-example weight gradient ``||a_x (dC_x/dz_x)^T||_F = ||a_x|| ||dC_x/dz_x||`` is exact
    and cheap (see :func:`gradflow.probes.layer_grad_norms`). Only for 2-d inputs (batch, n)
    (or (n, batch) feature-major): with more axes the per-example gradient is a sum of outer
    products and the shortcut does not hold."""

    def run(params, x):
        if taps.active() and x.ndim == 2:
            # A statistic, not differentiated: stop_gradient keeps autodiff out of the sum's
            # barrier (gradflow.reduce.lane_sums).
            x_sq = jnp.square(jax.lax.stop_gradient(x))
            taps.record("input_sq", sums(x_sq, axes=(1 - batch_axis,))[0])
        return apply(params, x)

    return run


def activation(name: str, *, layer_name: str | None = None) -> Layer:
    """Elementwise ``phi`` from :data:`gradflow.activations.ACTIVATIONS`; Jacobian diag(phi'(x))."""
    phi = activations.get(name).fn

    def apply(params, x):
        return phi(x)

    def jac(params, x1):
        return Diag(activations.derivative(name, x1.reshape(-1))[1])

    return Layer(
        "activation", None, apply, _same, ("activation", name), layer_name, False, jac, apply
    )


def mark(name: str = "", **meta) -> Layer:
    """A tap as a layer: ``gf.tap(x, name, **meta)`` (identity; the probes differentiate here).

    An empty name takes the enclosing layer's name (see the module docstring).
    """

    def apply(params, x):
        return taps.tap(x, name, **meta)

    def apply_fm(params, x):
        # Tapped batch-major, as everywhere else: the per-example statistics then reduce over
        # the minor axis (a feature-major tap made a Nielsen-scale sweep ~1.3x slower).
        return taps.tap(x.T, name, **meta).T

    def jac(params, x1):
        return Diag(jnp.ones((x1.size,), x1.dtype))

    spec = ("mark", name, tuple(sorted(meta.items())))
    return Layer("mark", None, apply, _same, spec, None, False, jac, apply_fm)


def residual(branch: Layer, scale: float = 1.0, *, name: str | None = None) -> Layer:
    """``y = x + scale * branch(x)``; e.g. ``scale = 1/sqrt(depth)`` keeps a deep stack stable.

    Jacobian: ``I + scale * J_branch`` (the branch's Jacobian formed from its own layers').
    """
    scale = float(scale)

    def init_fn(key, in_shape, hyper):
        return branch.init(key, in_shape, hyper) if branch.has_params else None

    def apply(params, x):
        return x + scale * branch.apply(params, x)

    def apply_fm(params, x):
        return x + scale * branch.apply_fm(params, x)

    def out_shape(in_shape):
        out = branch.out_shape(in_shape)
        if tuple(out) != tuple(in_shape):
            raise ValueError(
                f"residual branch maps shape {tuple(in_shape)} to {tuple(out)}; a residual "
                "branch must keep the shape"
            )
        return tuple(in_shape)

    def jac(params, x1):
        jb = jacobian(branch, params, x1)
        eye = jnp.eye(x1.size, dtype=x1.dtype)
        return eye + scale * (jnp.diag(jb.d) if isinstance(jb, Diag) else jb)

    return Layer(
        "residual", init_fn if branch.has_params else None, apply, out_shape,
        ("residual", scale, branch.spec), name, branch.has_params, jac,
        apply_fm if branch.apply_fm is not None else None, None, (branch,),
    )  # fmt: skip


# --------------------------------------------------------------------------------------------
# Jacobians


def jacobian(layer: Layer, params, x1: jax.Array):
    """``dy/dx`` of one example ``x1`` (unbatched): ``layer.jac`` or ``jax.jacfwd``.

    Returns: an array (out_size, in_size) or a :class:`Diag`.
    """
    if layer.walk is not None:
        return _dense_chain(layer, params, x1)
    if layer.jac is not None:
        return layer.jac(params, x1)
    j = jax.jacfwd(lambda v: layer.apply(params, v[None])[0])(x1)
    return j.reshape(-1, x1.size)


def _dense_chain(layer: Layer, params, x1):
    def step(prod, j):
        if prod is None:
            return j if not isinstance(j, Diag) else jnp.diag(j.d)
        return j.d[:, None] * prod if isinstance(j, Diag) else j @ prod

    eye = jnp.eye(x1.size, dtype=x1.dtype)
    _, prod = walk(layer, params, x1, step, eye)
    return prod


def _leaf_walk(layer, params, x1, step, state):
    j = jacobian(layer, params, x1)
    return layer.apply(params, x1[None])[0], step(state, j)


def walk(layer: Layer, params, x1: jax.Array, step: Callable, state: Any):
    """Run one example through ``layer``, ``state = step(state, J)`` at every leaf layer.

    ``J`` is the leaf's Jacobian (array (out, in) or :class:`Diag`); a serial's runs of identical
    layers (scanned, or unscanned with their params stacked) walk as one ``lax.scan``, so depth
    costs no compile time. Containers other than serial
    (residual) are leaves with their own closed-form Jacobian.

    Returns: ``(y1, state)``.
    """
    if layer.walk is not None:
        return layer.walk(params, x1, step, state)
    return _leaf_walk(layer, params, x1, step, state)


# serial lives in its own module; re-exported here so that ``gl.serial`` is where layers are.
from gradflow.serial import (  # noqa: E402, F401  (circular by design: serial uses Layer/walk)
    SCAN_MIN,
    Segment,
    segments,
    serial,
    unpack_params,
)
