"""``serial``: a list of layers run in order, with runs of identical layers as one ``lax.scan``.

A run of two or more identical layers (same structure and same input shape, shape-preserving,
holding parameters) executes as one ``lax.scan`` with its parameters stacked along a leading
axis, so compile time does not grow with depth; taps inside the run become one tap per layer
(:func:`gradflow.taps.scanned`). The parameters of a serial are a list with one entry per
*segment* (:func:`segments`): a single layer's params, or a run's params stacked.

Re-exported by :mod:`gradflow.layers` (``gl.serial``), where the layer record lives.
"""

from __future__ import annotations

import functools
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp

from gradflow import rng, taps
from gradflow.layers import Layer, walk


class Segment(NamedTuple):
    """Children ``start..stop-1`` of a serial: one layer, or a scanned run (two or more)."""

    start: int
    stop: int
    in_shape: tuple[int, ...]

    @property
    def scanned(self) -> bool:
        return self.stop - self.start > 1


SCAN_MIN = 64
"""Default shortest run of identical layers that :func:`serial` executes as one ``lax.scan``.

Why not 2: on XLA:CPU a vmapped seed sweep of a depth-50 tanh MLP ran 1.5x slower scanned than
unrolled (under ``vmap`` the stacked weights are transposed into the scan's layout and the
gradients back, a full copy each way), and compiled no faster. Runs of 64 and more layers are
where unrolled compile time starts to dominate (the deep mean-field nets, depth 1,000).
"""


def serial(*layers: Layer, name: str | None = None, scan: bool | int = "auto") -> Layer:
    """Compose layers: ``y = layers[-1](...layers[0](x))``.

    Args:
      *layers: the layers, in order.
      name: this serial's name in a parent serial.
      scan: which runs of identical parameterised layers execute as one ``lax.scan`` (their
        params stacked): ``"auto"`` (default) runs of at least :data:`SCAN_MIN` layers, an int
        k runs of at least k (True: 2), False none (params: one entry per layer).

    Returns:
      A :class:`Layer` whose params are a list with one entry per segment (see
      :func:`segments`): a layer's params (None for layers without), or a run's params stacked
      along a new leading axis.
    """
    _scan_min(scan)  # validates
    layers = tuple(layers)
    if not layers or not all(isinstance(l, Layer) for l in layers):
        raise ValueError("serial takes one or more gf layers (gradflow.layers.*)")
    names = tuple(l.name or f"{l.kind}{i}" for i, l in enumerate(layers))
    if len(set(names)) != len(names):
        raise ValueError(f"serial's layer names must be unique, got {list(names)}")
    with_params = [i for i, l in enumerate(layers) if l.has_params]
    many = len(with_params) > 1  # then default names of children holding params count too
    segs = functools.lru_cache(maxsize=64)(
        lambda in_shape: tuple(_segments(layers, in_shape, scan))
    )

    def scope_name(i):
        return names[i] if _visible(layers[i], many) else None

    def init_fn(key, in_shape, hyper):
        keys = {}
        if len(with_params) == 1:
            keys[with_params[0]] = key
        elif with_params:
            split = rng.split(key, len(with_params))
            keys = {i: split[j] for j, i in enumerate(with_params)}
        seg_list = segs(tuple(in_shape))
        drawn = {}  # segment index -> its params
        for run in _identical_runs(seg_list, layers):
            first = seg_list[run[0]]
            child = layers[first.start]
            if not child.has_params:
                continue
            draw = lambda k, c=child, sh=first: c.init(k, sh.in_shape, hyper)  # noqa: E731
            if not first.scanned and (len(run) == 1 or not _small(draw, keys[first.start])):
                for j in run:
                    drawn[j] = draw(keys[seg_list[j].start])
                continue
            starts = [i for j in run for i in range(seg_list[j].start, seg_list[j].stop)]
            stacked = jax.vmap(draw)(jnp.stack([keys[i] for i in starts]))
            if first.scanned:
                drawn[run[0]] = stacked
            else:
                for n, j in enumerate(run):
                    drawn[j] = jax.tree.map(lambda a, n=n: a[n], stacked)
        params = [drawn[j] for j in range(len(seg_list)) if j in drawn]
        return _pack(params, seg_list, layers)

    def run(params, x, fm):
        in_shape = tuple(x.shape[:-1] if fm else x.shape[1:])
        if fm:
            in_shape = in_shape[::-1]
        seg_list = segs(in_shape)
        for s, p in zip(seg_list, unpack_params(params, seg_list, layers), strict=True):
            child = layers[s.start]
            fn = child.apply_fm if fm else child.apply
            if s.scanned:
                run_names = [names[i] for i in range(s.start, s.stop)]
                x = taps.scanned(fn, x, p, run_names)
            else:
                with taps.scope(scope_name(s.start)):
                    x = fn(p, x)
        return x

    def apply(params, x):
        return run(params, x, False)

    def apply_fm(params, x):
        return run(params, x, True)

    def out_shape(in_shape):
        shape = tuple(in_shape)
        for l in layers:
            shape = tuple(l.out_shape(shape))
        return shape

    def walk_fn(params, x1, step, state):
        seg_list = segs(tuple(x1.shape))
        seg_params = unpack_params(params, seg_list, layers)
        # A scanned run, and a run of identical unscanned layers (params stacked for the walk),
        # walk as one lax.scan: the program holds one copy of the step (a QR fold for the
        # spectra), so a depth-50 walk compiles like a depth-1 one.
        for run in _identical_runs(seg_list, layers):
            first = seg_list[run[0]]
            child = layers[first.start]
            if first.scanned:
                p = seg_params[run[0]]
            elif len(run) > 1 and child.has_params:
                p = jax.tree.map(lambda *a: jnp.stack(a), *(seg_params[j] for j in run))
            else:
                for j in run:
                    x1, state = walk(layers[seg_list[j].start], seg_params[j], x1, step, state)
                continue

            def body(carry, p_i, child=child):
                return walk(child, p_i, carry[0], step, carry[1]), None

            (x1, state), _ = jax.lax.scan(body, (x1, state), p)
        return x1, state

    fm_ok = all(l.apply_fm is not None for l in layers)
    spec = ("serial", scan, tuple(l.spec for l in layers))
    return Layer(
        "serial", init_fn if with_params else None, apply, out_shape, spec, name,
        bool(with_params), None, apply_fm if fm_ok else None, walk_fn, layers,
    )  # fmt: skip


BATCH_INIT_MAX = 2**14
"""Largest parameter leaf (elements) of a layer whose identical unscanned neighbours
:func:`serial` draws together. One vectorised draw (``vmap`` over the layers' keys, then split
per layer) gives the same numbers as one draw per layer, and compiles one Threefry kernel in
place of one per leaf and layer: a vmapped init of 16 seeds of a depth-30 width-64 tanh MLP
compiled in 3.9 s instead of 6.7 s. The split copies every leaf once, which costs more than it
saves on large layers (a depth-50 width-256 sweep with its init, workload B of bench/run.py,
ran 5-10% slower), so layers with a larger leaf are drawn one by one."""


def _small(draw, key) -> bool:
    """Whether every parameter leaf ``draw(key)`` returns has at most BATCH_INIT_MAX elements."""
    shapes = jax.eval_shape(draw, key)
    return all(math.prod(a.shape) <= BATCH_INIT_MAX for a in jax.tree.leaves(shapes))


def _identical_runs(seg_list, layers):
    """Indices of consecutive unscanned segments whose layers are identical (same spec and input
    shape), grouped; a scanned segment is a group of its own. The init draws such a run in one
    vectorised draw; the walk scans it."""
    runs = []
    for j, s in enumerate(seg_list):
        prev = seg_list[runs[-1][-1]] if runs else None
        same = (
            prev is not None and not s.scanned and not prev.scanned
            and layers[s.start].spec == layers[prev.start].spec and s.in_shape == prev.in_shape
        )  # fmt: skip
        if same:
            runs[-1].append(j)
        else:
            runs.append([j])
    return runs


def _visible(child: Layer, many: bool) -> bool:
    """Whether a child's name enters the names of groups and taps below it: an explicit name
    always does; a default one when its serial has several children holding parameters."""
    return child.name is not None or (many and child.has_params)


def _single(seg_list, layers) -> bool:
    """Whether exactly one unscanned segment holds parameters (its params are the serial's)."""
    held = [s for s in seg_list if layers[s.start].has_params]
    return len(held) == 1 and not held[0].scanned


def _pack(params: list, seg_list, layers):
    return params[0] if _single(seg_list, layers) else params


def unpack_params(params, seg_list, layers) -> list:
    """One entry per segment (None for segments without parameters)."""
    held = [s for s in seg_list if layers[s.start].has_params]
    if _single(seg_list, layers):
        params = [params]
    elif not isinstance(params, (list, tuple)) or len(params) != len(held):
        got = len(params) if isinstance(params, (list, tuple)) else type(params).__name__
        raise ValueError(
            f"params do not match this serial: expected a list of {len(held)} entries (one per "
            f"layer or scanned run holding parameters), got {got}; pass what model.init returned"
        )
    it = iter(params)
    return [next(it) if layers[s.start].has_params else None for s in seg_list]


def segments(layers: tuple[Layer, ...], in_shape, scan: bool | int | str = "auto") -> list[Segment]:
    """Split ``layers`` into segments for input shape ``in_shape`` (one example)."""
    return _segments(tuple(layers), tuple(in_shape), scan)


def _scan_min(scan) -> int | None:
    if scan == "auto":
        return SCAN_MIN
    if scan is True:
        return 2
    if scan is False or scan is None:
        return None
    if isinstance(scan, int) and scan >= 2:
        return scan
    raise ValueError(f"scan must be 'auto', True, False or an int >= 2, got {scan!r}")


def _segments(layers, in_shape, scan):
    shortest = _scan_min(scan)
    out, shape, i = [], tuple(in_shape), 0
    while i < len(layers):
        layer = layers[i]
        stop = i + 1
        out_shape = tuple(layer.out_shape(shape))
        if shortest is not None and layer.has_params and out_shape == shape:
            while stop < len(layers) and layers[stop].spec == layer.spec:
                stop += 1
            if stop - i < shortest:
                stop = i + 1
        out.append(Segment(i, stop, shape))
        for _ in range(i, stop):
            shape = out_shape
        i = stop
    return out
