"""Flax NNX and Equinox modules as gradflow models.

    model = gf.from_nnx(lambda rngs: MyNet(..., rngs=rngs))    # make(rngs) -> nnx.Module
    model = gf.from_equinox(lambda key: MyNet(..., key=key))   # make(key) -> eqx.Module

Both give a :class:`gradflow.Model` whose ``init(key)`` builds the module from the key (so every
seed draws its own weights) and keeps its parameters as a plain pytree, and whose ``apply`` puts
them back into the module and calls it. Layers are found by pytree path as for
:func:`gradflow.from_apply`: one group per innermost module holding parameters, named by its
attribute path (``"layers/0"`` for ``self.layers[0]``, ``"encoder/dense"`` for
``self.encoder.dense``), in order of use; with ``groups=None`` the outermost module's own
parameters form one group named after its class. Mark hidden units inside ``__call__`` with
``gf.tap(h, name)``.

Neither flax nor equinox is imported until an adapter is built (``pip install gradflow[flax]``,
``gradflow[equinox]``).
"""

from __future__ import annotations

import dataclasses
import importlib
from collections.abc import Callable

import jax
import jax.numpy as jnp

from gradflow import taps
from gradflow.models import Model, check_params, code_fingerprint, from_apply


@dataclasses.dataclass(frozen=True)
class AdapterConfig:
    """What an adapter was built from (``Model.config``; ``to_dict`` identifies it in run dirs)."""

    kind: str  # "nnx" or "equinox"
    make: Callable
    groups: object = None
    logits: bool = True
    per_example: bool | None = None  # Equinox only

    def to_dict(self) -> dict:
        groups = self.groups if not callable(self.groups) else code_fingerprint(self.groups)
        return {
            "kind": self.kind, "make": code_fingerprint(self.make), "groups": groups,
            "logits": self.logits, "per_example": self.per_example,
        }  # fmt: skip


def from_nnx(make: Callable, *, groups=None, logits: bool = True) -> Model:
    """A model from a Flax NNX module constructor.

    Args:
      make: ``make(rngs: nnx.Rngs) -> nnx.Module``, called with ``nnx.Rngs(key)`` (the seed's key
        is the stream ``"default"``; ``rngs.params()`` etc. draw from it). Not a built module:
        the seeds' weights must come from their keys.
      groups: as for :func:`gradflow.from_apply` (paths look like ``"layers/0/kernel"``).
      logits: whether the module's output is logits.

    Returns:
      A :class:`gradflow.Model`: params are the ``nnx.Param`` variables as a nested dict of arrays
      (``nnx.to_pure_dict``), e.g. ``{"layers": {0: {"kernel": (n_in, n_out), "bias":
      (n_out,)}}}``. Every other variable (``BatchStat``, RNG keys and counts, custom variable
      types) is not a parameter: ``apply`` takes it from one build with ``key(0)``, made once,
      so it is the same for every seed (batch statistics at init are 0 and 1 anyway; dropout
      masks would be shared, so probe with dropout off), and any update ``__call__`` makes to it
      (BatchNorm's running averages, RNG counts) is discarded: ``apply`` is pure.
    """
    nnx = _import("flax.nnx", "from_nnx", "flax")
    if isinstance(make, nnx.Module) or not callable(make):
        raise ValueError(
            f"from_nnx needs a constructor make(rngs) -> nnx.Module, got {_what(make)}; pass "
            "e.g. lambda rngs: MyNet(..., rngs=rngs) so that every seed draws its own weights"
        )

    def build(key):
        module = make(nnx.Rngs(key))
        if not isinstance(module, nnx.Module):
            raise ValueError(f"from_nnx: make(rngs) must return an nnx.Module, got {_what(module)}")
        return module

    def split(module):  # (graphdef, the nnx.Param state, every other variable)
        return nnx.split(module, nnx.Param, ...)

    abstract = nnx.eval_shape(lambda: build(jax.random.key(0)))
    graphdef, abs_state, abs_rest = split(abstract)
    rest_def = jax.tree.structure(abs_rest)
    abs_params = nnx.to_pure_dict(abs_state)
    pure_def = jax.tree.structure(abs_params)
    _check_abstract(abs_params, "from_nnx", "nnx.Param")
    rest = _Once(lambda: jax.tree.leaves(split(build(jax.random.key(0)))[2]))

    def init(key):
        return nnx.to_pure_dict(split(build(key))[1])

    def apply(params, x):
        _check_structure(params, pure_def, "from_nnx")
        # Fresh Variables on every call: an update __call__ makes cannot reach the cached rest.
        other = jax.tree.unflatten(rest_def, rest() if rest_def.num_leaves else [])
        return nnx.merge(graphdef, params, other)(x)

    config = AdapterConfig("nnx", make, groups, logits)
    return _model(init, apply, groups, logits, type(abstract).__name__, config)


def from_equinox(
    make: Callable, *, groups=None, logits: bool = True, per_example: bool = True
) -> Model:
    """A model from an Equinox module constructor.

    Args:
      make: ``make(key) -> eqx.Module`` (not a built module: the seeds' weights must come from
        their keys).
      groups: as for :func:`gradflow.from_apply` (paths look like ``"layers/0/weight"``).
      logits: whether the module's output is logits.
      per_example: the module takes one example (Equinox's convention) and ``apply`` vmaps it
        over the batch; False: it takes the whole batch.

    Returns:
      A :class:`gradflow.Model`: params are ``eqx.partition(module, eqx.is_inexact_array)[0]``
      (the module with every non-float leaf replaced by None). The rest (static fields,
      functions, integer arrays) comes from one build with ``key(0)``, the same for every seed.
      Stateful layers (``eqx.nn.BatchNorm`` with ``eqx.nn.State``) and call-time keys
      (``eqx.nn.Dropout``) are not supported: ``apply`` calls ``module(x)``.

    Taps under ``per_example=True``: ``gf.tap(h, name)`` inside ``__call__`` sees one example's
    ``h`` (no batch axis). ``apply`` registers each such tap with the batch axis added in front
    and hands every example its own slice of the probe's perturbation, so per-example hidden
    gradients are exact (``batch_axis`` given to a tap inside the module is ignored). With
    ``per_example=False``, a tap inside the module's own ``jax.vmap`` over examples would be
    silently wrong (one perturbation shared by the batch): vmap with :func:`per_example_apply`.
    """
    eqx = _import("equinox", "from_equinox", "equinox")
    if (isinstance(make, eqx.Module) and not isinstance(make, eqx.Partial)) or not callable(make):
        raise ValueError(
            f"from_equinox needs a constructor make(key) -> eqx.Module, got {_what(make)}; pass "
            "e.g. lambda key: MyNet(..., key=key) so that every seed draws its own weights"
        )

    def build(key):
        module = make(key)
        if not isinstance(module, eqx.Module):
            raise ValueError(
                f"from_equinox: make(key) must return an eqx.Module, got {_what(module)}"
            )
        return module

    def is_abstract_param(leaf):
        return isinstance(leaf, jax.ShapeDtypeStruct) and jnp.issubdtype(leaf.dtype, jnp.inexact)

    abstract = eqx.filter_eval_shape(build, jax.random.key(0))
    abs_params, abs_static = eqx.partition(abstract, is_abstract_param)
    params_def = jax.tree.structure(abs_params)
    _check_abstract(abs_params, "from_equinox", "floating-point array")
    if any(isinstance(leaf, jax.ShapeDtypeStruct) for leaf in jax.tree.leaves(abs_static)):
        # Non-float arrays (integer buffers, keys) need values: one concrete build.
        static = _Once(lambda: eqx.partition(build(jax.random.key(0)), eqx.is_inexact_array)[1])
    else:
        static = lambda: abs_static  # noqa: E731

    def init(key):
        return eqx.partition(build(key), eqx.is_inexact_array)[0]

    def apply(params, x):
        _check_structure(params, params_def, "from_equinox")
        module = eqx.combine(params, static())
        return per_example_apply(module, x) if per_example else module(x)

    config = AdapterConfig("equinox", make, groups, logits, bool(per_example))
    return _model(init, apply, groups, logits, type(abstract).__name__, config)


def per_example_apply(fn: Callable, x: jax.Array):
    """``jax.vmap(fn)(x)`` for a function of one example, with the taps inside made per-example.

    Under a probe, a tap inside ``fn`` sees one example's ``h``; here it becomes a tap of shape
    ``(batch, *h.shape)`` (batch axis 0) whose perturbation is vmapped with ``x``, so each
    example gets its own zero perturbation and ``dC/dp`` is each example's ``dC/dh``. (A plain
    ``jax.vmap`` would add one perturbation, shared by all examples, and its gradient would be
    the sum over the batch.) The same construction as :func:`gradflow.taps.scanned`.
    """
    parent = taps._top()
    if parent is None:
        return jax.vmap(fn)(x)
    if isinstance(parent, taps.ScanFrame):
        raise ValueError("a per-example (vmapped) model inside a scanned run cannot be probed")
    found: dict[str, taps.TapSpec] = {}

    def discover(x1):
        with taps._push(taps.ScanFrame(None, found)):
            fn(x1)

    jax.eval_shape(discover, jax.ShapeDtypeStruct(x.shape[1:], x.dtype))
    perturb = {
        rel: taps.perturbation(rel, (x.shape[0], *s.shape), s.dtype, batch_axis=0, **dict(s.meta))
        for rel, s in found.items()
    }

    def one(x1, p1):
        frame = taps.ScanFrame(p1)
        with taps._push(frame):
            out = fn(x1)
        return out, frame.values, frame.records

    out, values, records = jax.vmap(one)(x, perturb)
    for rel, v in values.items():
        taps.set_value(rel, v)
    for rel, v in records.items():
        taps.record(rel, v)
    return out


# --------------------------------------------------------------------------------------------
# Helpers


def _model(init, apply, groups, logits, root: str, config: AdapterConfig) -> Model:
    # Parameters held by the outermost module itself (paths without "/") form one group named
    # after its class, not one group per leaf.
    grouping = groups if groups is not None else (lambda p: None if "/" in p else root)
    model = from_apply(init, apply, groups=grouping, logits=logits)
    # Equal adapters are those of the same make (the closures above are new on every call).
    identity = (config.kind, config.make, groups, logits, config.per_example)
    return dataclasses.replace(model, identity=identity, config=config)


class _Once:
    """A value computed on first use, eagerly (concrete even when first asked under ``jit``)."""

    def __init__(self, compute):
        self._compute, self._value = compute, None

    def __call__(self):
        if self._value is None:
            with jax.ensure_compile_time_eval():
                self._value = (self._compute(),)
        return self._value[0]


def _import(module: str, fn: str, extra: str):
    try:
        return importlib.import_module(module)
    except ImportError:
        raise ImportError(f"{fn} needs {extra}: pip install gradflow[{extra}]") from None


def _what(obj) -> str:
    return f"a {type(obj).__name__} instance" if callable(obj) else f"a {type(obj).__name__}"


def _check_abstract(abs_params, fn: str, what: str) -> None:
    if not jax.tree.leaves(abs_params):
        raise ValueError(f"{fn}: the module has no {what} leaves; there is nothing to probe")
    check_params(abs_params)


def _check_structure(params, expected, fn: str) -> None:
    got = jax.tree.structure(params)
    if got != expected:
        raise ValueError(
            f"{fn}: params do not have the structure init returns ({got.num_leaves} leaves, "
            f"expected {expected.num_leaves}); pass the pytree from model.init"
        )
