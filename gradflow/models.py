"""The model protocol: any JAX model is an ``init``/``apply`` pair over a pytree of parameters.

    model = gf.from_apply(init, apply)       # init(key) -> params; apply(params, x) -> output
    model = gf.from_layers(gf.layers.serial(...))     # a composition of gf layers
    model = gf.mlp([784, 30, 10], "sigmoid", "nielsen")  # built-ins (gradflow.nets)

A "layer" of a model, for the probes, is a group of parameter leaves (:class:`LeafGroup`): for gf
layer compositions one per layer holding parameters (a scanned run of k layers is one stacked
group with k names); for any other pytree, by default one group per innermost dict/module that
holds arrays, ordered by first use in ``apply``; ``groups=`` overrides it (a regex or a
function of the leaf's path). Hidden units are whatever ``apply`` marks with ``gf.tap``.

Identity: two models are equal only if their functions are (or, for built-ins, their builder and
config are): compiled programs and run directories are keyed by that, never by a config alone.
"""

from __future__ import annotations

import dataclasses
import hashlib
import inspect
import re
from collections.abc import Callable, Hashable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from gradflow import layers as gl
from gradflow.groups import LeafGroup, layer_leaf_groups, path_groups, path_str

Params = Any  # a pytree of arrays


@dataclasses.dataclass(frozen=True, eq=False)
class Model:
    """A pure-functional model.

    Attributes:
      init: ``init(key, **hyper) -> params`` (any pytree of arrays); ``hyper`` holds traced
        overrides named in ``hyper_names`` (e.g. ``sigma_w2`` for grid sweeps).
      apply: ``apply(params, x) -> output``; may mark hidden units with ``gf.tap``.
      groups: ``groups(params, x) -> list[LeafGroup]`` in order of use (see :func:`leaf_groups`).
      config: a description (a frozen dataclass with ``to_dict`` for built-ins, else anything).
      identity: hashable identity for ``==``/``hash`` (default: the functions themselves).
      net: the gf layer composition, when the model is one (stable spectra walk it).
      in_shape: one example's input shape when fixed (inputs are checked against it).
      hyper_names: the keyword overrides ``init`` accepts.
      logits: whether the output is logits (losses that apply their own softmax/sigmoid need it).
      feature_major: whether ``apply`` runs on ``x.T`` (features, batch): see
        :func:`loop_input`.
    """

    init: Callable[..., Params]
    apply: Callable[[Params, jax.Array], jax.Array]
    groups: Callable | None = None
    config: Any = None
    identity: Hashable = None
    net: gl.Layer | None = None
    in_shape: tuple[int, ...] | None = None
    hyper_names: frozenset = frozenset()
    logits: bool = True
    feature_major: bool = False

    def _key(self):
        # feature_major changes how gf.train feeds apply (loop_input), so it is part of the key.
        if self.identity is not None:
            return (self.identity, self.feature_major)
        return (self.init, self.apply, self.groups, self.feature_major)

    def __hash__(self):
        return hash(self._key())

    def __eq__(self, other):
        return isinstance(other, Model) and self._key() == other._key()

    def describe(self) -> dict:
        """A JSON-able description that identifies the model across processes (run dirs)."""
        if self.config is not None and hasattr(self.config, "to_dict") and self.identity:
            return self.config.to_dict()
        if (
            self.net is not None
            and isinstance(self.identity, tuple)
            and self.identity[0] == "layers"
        ):
            return {"layers": repr(self.net.spec), "in_shape": list(self.in_shape or ())}
        return {
            "init": code_fingerprint(self.init),
            "apply": code_fingerprint(self.apply),
            "groups": code_fingerprint(self.groups) if self.groups is not None else None,
            "config": repr(self.config)[:200],
        }


# --------------------------------------------------------------------------------------------
# Constructors


def from_apply(
    init: Callable[..., Params],
    apply: Callable[[Params, jax.Array], jax.Array],
    *,
    groups: str | Callable[[str], str | None] | None = None,
    logits: bool = True,
    config: Any = None,
    identity: Hashable = None,
) -> Model:
    """A model from plain functions: ``init(key) -> params`` and ``apply(params, x) -> output``.

    Args:
      init: draws the parameters from a typed key (any pytree of arrays).
      apply: the forward pass on a batch; mark hidden units with ``h = gf.tap(h, name)``.
      groups: how parameter leaves form layers: None (one group per innermost dict/module
        holding arrays, e.g. ``"layers/0"`` for ``params["layers"][0]["w"]``), a regex (a leaf
        whose path ``"a/b/c"`` it matches belongs to the group named by the match, e.g.
        ``r"blocks/\\d+"``; other leaves keep the default) or a function ``path -> name`` (None
        keeps the default).
      logits: whether the output is logits (``loss="xent"`` and ``"sigmoid_xent"`` need it).
      config: a description kept with the model (a frozen dataclass with ``to_dict`` is written
        to run directories as is).
      identity: what makes two models equal (default: the functions and options above); give
        one when wrappers rebuild the functions for the same model (adapters do).
    """
    if not callable(init) or not callable(apply):
        raise ValueError("from_apply needs two functions: init(key) -> params, apply(params, x)")
    if groups is not None and not (isinstance(groups, str) or callable(groups)):
        raise ValueError(f"groups must be None, a regex string or a function, got {groups!r:.60}")
    pattern = None
    if isinstance(groups, str):
        try:
            pattern = re.compile(groups)
        except re.error as e:
            raise ValueError(f"groups={groups!r} is not a valid regex: {e}") from None

    def grouping(params, x):
        return path_groups(params, x, apply, pattern if pattern is not None else groups)

    if identity is None:
        identity = ("from_apply", init, apply, groups, logits)
    return Model(
        init=init, apply=apply, groups=grouping, identity=identity, logits=logits, config=config
    )


def from_layers(
    net: gl.Layer,
    in_shape,
    *,
    config: Any = None,
    logits: bool = True,
    feature_major: bool = False,
    identity: Hashable = None,
) -> Model:
    """A model from a gf layer composition (usually :func:`gradflow.layers.serial`).

    Args:
      net: the layer. in_shape: one example's input shape (e.g. ``(784,)`` or ``(seq, d)``).
      feature_major: run the net on ``x.T`` (features, batch) -- only for nets of dense,
        elementwise and mark layers; see :mod:`gradflow.nets` for when it pays.
      identity: equality key (default: the net's structure and in_shape -- two nets of the same
        gf layers with the same settings are the same model).
    """
    in_shape = tuple(None if d is None else int(d) for d in in_shape)
    if feature_major and net.apply_fm is None:
        raise ValueError("feature_major needs a net of dense, activation and mark layers only")
    hyper_names = frozenset({"sigma_w2", "sigma_b2"})

    def init(key, **hyper):
        unknown = set(hyper) - hyper_names
        if unknown:
            raise ValueError(
                f"init takes the overrides {sorted(hyper_names)}, got {sorted(unknown)}"
            )
        hyper = {k: v for k, v in hyper.items() if v is not None}
        return net.init(key, in_shape, hyper) if net.has_params else []

    if feature_major:

        def apply(params, x):
            return net.apply_fm(params, x.T).T

    else:

        def apply(params, x):
            return net.apply(params, x)

    def grouping(params, x):
        return layer_leaf_groups(net, params, tuple(x.shape[1:]))

    identity = identity if identity is not None else ("layers", net.spec, in_shape, feature_major)
    return Model(
        init=init, apply=apply, groups=grouping, config=config, identity=identity, net=net,
        in_shape=in_shape, hyper_names=hyper_names, logits=logits, feature_major=feature_major,
    )  # fmt: skip


def loop_input(model: Model, x: jax.Array) -> Callable[[], jax.Array]:
    """``get`` with ``get() == x``, for a loop whose every trip applies ``model`` to the same x
    (full-batch training): call ``loop_input`` before the loop and ``get`` inside it.

    A feature-major model's first operation is ``x.T``, which XLA folds into the matrix
    products, so they read x (batch, n) against its memory order: the weight gradient
    ``x^T dC/dz`` contracts x's major axis, which XLA:CPU runs ~2x slower than a product of a
    stored (n, batch) x.T. Here x.T is stored once, before the loop (an optimisation barrier
    keeps XLA from folding it back), and ``get`` returns its transpose, which cancels against
    the model's own. Full-batch gradient descent on Nielsen's net, 200 steps of 1,000 digits:
    280 -> 199 ms on 2 CPU cores, 359 -> 228 ms on one (bench/README.md, stop 24). Any other
    model gets x itself.
    """
    if not model.feature_major or x.ndim != 2:
        return lambda: x
    xt = lax.optimization_barrier(x.T)
    return lambda: xt.T


# --------------------------------------------------------------------------------------------
# Groups


def leaf_groups(model: Model, params, x) -> list[LeafGroup]:
    """The model's layers as groups of parameter leaves: ``model.groups`` or, when it has none,
    the default grouping of any pytree (:func:`path_groups`)."""
    if model.groups is not None:
        return model.groups(params, x)
    return path_groups(params, x, model.apply)


# --------------------------------------------------------------------------------------------
# Checks and fingerprints


def check_params(params) -> None:
    """Raise a ValueError if ``params`` holds anything but arrays (and None)."""
    for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]:
        if not hasattr(leaf, "shape") or not hasattr(leaf, "dtype"):
            raise ValueError(
                f"params leaf {path_str(path) or '(root)'} is a {type(leaf).__name__}, not an "
                "array; init must return a pytree of arrays (keep static settings in the closure)"
            )
        if not jnp.issubdtype(leaf.dtype, jnp.inexact):
            raise ValueError(
                f"params leaf {path_str(path)} has dtype {leaf.dtype}; parameters must be floating "
                "(integer settings belong in the closure, not in params)"
            )


def check_inputs(model: Model, x, name: str = "x") -> None:
    """Raise a ValueError naming the problem if ``x`` cannot be an input batch of ``model``."""
    shape = getattr(x, "shape", None)
    if shape is None:
        raise ValueError(f"{name} must be an array, got {type(x).__name__}")
    if len(shape) == 0 or shape[0] == 0:
        raise ValueError(f"{name} must be a batch with at least one example, got shape {shape}")
    want_shape = model.in_shape
    if want_shape is not None and (
        len(shape) != len(want_shape) + 1
        or any(w is not None and w != d for w, d in zip(want_shape, shape[1:], strict=False))
    ):
        want = ", ".join("any" if d is None else str(d) for d in want_shape)
        raise ValueError(
            f"{name} must have shape (batch, {want}) for this model, got {tuple(shape)}; "
            "reshape the data or build the model for this input size"
        )


def code_fingerprint(fn) -> str | None:
    """``module.qualname`` and a hash of the function's code and closure: stable across
    processes, different for different code or closed-over values."""
    if fn is None:
        return None
    h = hashlib.sha256()
    _hash_callable(fn, h, depth=0)
    name = f"{getattr(fn, '__module__', '?')}.{getattr(fn, '__qualname__', type(fn).__name__)}"
    return f"{name} sha256 {h.hexdigest()[:16]}"


def _hash_callable(fn, h, depth):
    if depth > 4:
        return
    code = getattr(fn, "__code__", None)
    if code is None:
        fn = type(fn).__call__ if callable(fn) else None
        code = getattr(fn, "__code__", None)
        if code is None:
            h.update(repr(type(fn)).encode())
            return
    _hash_code(code, h)
    for cell in getattr(fn, "__closure__", None) or ():
        try:
            value = cell.cell_contents
        except ValueError:  # an empty cell
            continue
        _hash_value(value, h, depth)


def _hash_code(code, h):
    h.update(code.co_code)
    h.update(repr(code.co_names).encode())
    for c in code.co_consts:
        if inspect.iscode(c):
            _hash_code(c, h)
        else:
            h.update(repr(c).encode())


def _hash_value(value, h, depth):
    if callable(value) and not isinstance(value, type):
        _hash_callable(value, h, depth + 1)
    elif hasattr(value, "shape") and hasattr(value, "dtype"):
        h.update(np.ascontiguousarray(np.asarray(value)).tobytes())
    elif isinstance(value, (list, tuple)):
        for v in value:
            _hash_value(v, h, depth + 1)
    elif isinstance(value, dict):
        for k in sorted(value, key=repr):
            h.update(repr(k).encode())
            _hash_value(value[k], h, depth + 1)
    else:
        h.update(repr(value).encode())
