"""Groups: which parameter leaves form one "layer" for the probes.

For a gf layer composition (:mod:`gradflow.layers`), one group per layer holding parameters,
named by the layers above it (a scanned run of k layers is one stacked group with k names). For
any other pytree, one group per innermost dict/module holding arrays, in the order ``apply``
first reads them (from its jaxpr), with an override by regex or by a function of the leaf path.
"""

from __future__ import annotations

import re
from typing import NamedTuple

import jax
from jax.extend.core import Literal

from gradflow.layers import Layer
from gradflow.serial import _segments, _single, _visible

ROOT = "root"
"""The group name of parameter leaves held directly at the top of the params pytree."""


class LeafGroup(NamedTuple):
    """The leaves (indices into ``jax.tree.leaves(params)``) of one layer, or of k stacked
    layers (``stacked``: each leaf has a leading axis of length ``len(names)``)."""

    names: tuple[str, ...]
    leaves: tuple[int, ...]
    stacked: bool
    keys: tuple = ()  # per name, a sortable position in the order of use (see layers.Group)


class Group(NamedTuple):
    """One layer's parameters for the probes: its name(s) and the params paths below it.

    ``names`` has one entry, or k for a scanned run (whose leaves have a leading axis of k).
    ``path`` locates the layer's params subtree (a tuple of list indices / dict keys).
    """

    names: tuple[str, ...]
    path: tuple
    stacked: bool
    keys: tuple = ()  # per name, a sortable position: sorting by it gives the order of use


def param_groups(layer: Layer, in_shape, prefix: tuple[str, ...] = ("",)) -> list[Group]:
    """The parameter groups (one per layer holding parameters) of ``layer`` for ``in_shape``.

    Leaf layers holding parameters are one group each, named by the names of the containers
    above them (see the module docstring); a scanned run gives one stacked group per group of
    its layer, with one name per layer of the run (``keys`` sort all names into the order the
    layers run: block by block, also inside scanned runs).
    """
    groups = _groups(layer, tuple(in_shape), list(prefix), (), False)
    return [g._replace(names=tuple(n or layer.kind for n in g.names)) for g in groups]


def _join(prefix: str, name: str | None) -> str:
    if not name:
        return prefix
    return f"{prefix}/{name}" if prefix else name


def _groups(layer, in_shape, prefixes, path, stacked):
    if not layer.has_params:
        return []
    if layer.walk is None and len(layer.children) == 1:  # a wrapper (residual): its branch's
        return _groups(layer.children[0], in_shape, prefixes, path, stacked)
    if layer.walk is None or not layer.children:  # a leaf holding parameters
        return [Group(tuple(prefixes), path, stacked, tuple(() for _ in prefixes))]
    children = layer.children
    names = tuple(c.name or f"{c.kind}{i}" for i, c in enumerate(children))
    many = sum(c.has_params for c in children) > 1
    scan = layer.spec[1]
    out = []
    seg_list = _segments(children, in_shape, scan)
    single = _single(seg_list, children)
    held = [s for s in seg_list if children[s.start].has_params]
    for j, s in enumerate(held):
        child = children[s.start]
        sub_path = path if single else (*path, j)
        if s.scanned:
            if stacked:
                raise ValueError("a scanned run inside a scanned run is not supported")
            run = [[_join(p, names[i]) for i in range(s.start, s.stop)] for p in prefixes]
            sub = _groups(child, s.in_shape, [""], sub_path, True)
            for g in sub:
                full = tuple(_join(r, g.names[0]) for rs in run for r in rs)
                keys = tuple((j, i, *g.keys[0]) for _ in run for i in range(s.stop - s.start))
                out.append(Group(full, g.path, True, keys))
        else:
            shown = names[s.start] if _visible(child, many) else None
            child_prefixes = [_join(p, shown) for p in prefixes]
            for g in _groups(child, s.in_shape, child_prefixes, sub_path, stacked):
                out.append(g._replace(keys=tuple((j, *k) for k in g.keys)))
    return out


def path_str(path) -> str:
    """``"layers/0/w"`` for a jax key path."""
    parts = []
    for k in path:
        for attr in ("key", "name", "idx"):
            if hasattr(k, attr):
                parts.append(str(getattr(k, attr)))
                break
        else:
            parts.append(str(k))
    return "/".join(parts)


def leaf_paths(params) -> list[str]:
    """The path string of every leaf of ``params``, in ``jax.tree.leaves`` order."""
    flat, _ = jax.tree_util.tree_flatten_with_path(params)
    return [path_str(p) for p, _ in flat]


def layer_leaf_groups(net: Layer, params, in_shape) -> list[LeafGroup]:
    """:func:`param_groups` as leaf indices of ``params``."""
    flat, _ = jax.tree_util.tree_flatten_with_path(params)
    keys = [tuple(_key_of(k) for k in path) for path, _ in flat]
    out = []
    for g in param_groups(net, in_shape):
        ids = tuple(i for i, k in enumerate(keys) if k[: len(g.path)] == g.path)
        out.append(LeafGroup(g.names, ids, g.stacked, g.keys))
    return out


def _key_of(k):
    for attr in ("idx", "key", "name"):
        if hasattr(k, attr):
            return getattr(k, attr)
    return k


def path_groups(params, x, apply, override=None) -> list[LeafGroup]:
    """Default groups of any pytree: one per innermost container holding arrays (the leaf's path
    without its last key), ordered by first use in ``apply(params, x)``; ``override`` (a compiled
    regex or a function path -> name | None) reassigns leaves."""
    paths = leaf_paths(params)
    if not paths:
        return []
    owners = []
    for p in paths:
        owner = p.rsplit("/", 1)[0] if "/" in p else ROOT  # leaves at the root: one layer
        if override is not None:
            if isinstance(override, re.Pattern):
                m = override.search(p)
                owner = m.group(0) if m else owner
            else:
                named = override(p)
                owner = owner if named is None else str(named)
        owners.append(owner)
    if isinstance(override, re.Pattern) and not any(override.search(p) for p in paths):
        raise ValueError(
            f"groups pattern {override.pattern!r} matches no parameter path; paths look like "
            f"{', '.join(repr(p) for p in paths[:4])}"
        )
    order = first_use(apply, params, x)
    by_owner: dict[str, list[int]] = {}
    for i, owner in enumerate(owners):
        by_owner.setdefault(owner, []).append(i)
    ranked = sorted(by_owner.items(), key=lambda kv: (min(order[i] for i in kv[1]), kv[1][0]))
    return [LeafGroup((name,), tuple(ids), False, ((i,),)) for i, (name, ids) in enumerate(ranked)]


def first_use(apply, params, x) -> list[float]:
    """For each leaf of ``params``: the index of the first equation of ``apply``'s jaxpr that
    reads it (``inf`` if unused): the order the layers are used in."""
    n = len(jax.tree.leaves(params))
    closed = jax.make_jaxpr(lambda p: apply(p, x))(params)
    invars = closed.jaxpr.invars[:n]
    index = {v: i for i, v in enumerate(invars)}
    order = [float("inf")] * n
    for e, eqn in enumerate(closed.jaxpr.eqns):
        for v in eqn.invars:
            i = None if isinstance(v, Literal) else index.get(v)
            if i is not None and order[i] == float("inf"):
                order[i] = e
    return order
