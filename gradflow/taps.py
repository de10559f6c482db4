"""Taps: mark hidden units inside any ``apply`` for the probes.

``h = gf.tap(h, "block3")`` is the identity function, except while a probe traces the model: then
it adds an explicit zero perturbation ``p`` to ``h`` and records ``h``. ``jax.grad`` of the batch
loss with respect to ``p`` is exactly ``dC/dh`` at every tap, all from the one backward pass that
also gives the parameter gradients (the zero-perturbation trick). Outside a probe a tap costs one
Python call at trace time and nothing at run time.

The state lives in a stack of frames that exists only while a probe traces (never while a
compiled program runs), so it cannot leak between calls. A ``lax.scan`` over identical layers
(:func:`gradflow.layers.serial`) pushes a :class:`ScanFrame`: the taps of its body become stacked
taps, one per iteration, with per-iteration zero perturbations passed as the scan's inputs. A
run's perturbation, tapped values, records and gradient stay one (k, ...) array under one key
(:func:`zeros`, :func:`get`, :func:`rows`): ``layer_grad_norms``, ``diagnose`` and ``train``
trace no per-layer operation, and compile at depth 1,000 as at depth 10 (``preact_grads`` and
the coordinate check still return or reduce one array per tap).

Limitation: a tap inside a user's own ``lax.scan``/``fori_loop`` body is traced once but runs many
times; the probe would see one perturbation shared by all iterations. Tap the stacked outputs after
the loop instead (or build the loop from :func:`gradflow.layers.serial`, which scans for you).
"""

from __future__ import annotations

import collections
import contextlib
import itertools
import threading
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

_state = threading.local()


class TapSpec(NamedTuple):
    """What discovery learned about one tap: its full name, shape, dtype and metadata; ``stack``
    is ``(key, i)`` for the i-th tap of a scanned run (its perturbation, value and gradient are
    row i of one stacked array stored under ``key``, see :func:`get`), None otherwise."""

    name: str
    shape: tuple[int, ...]
    dtype: Any
    batch_axis: int
    meta: tuple  # sorted (key, value) pairs, e.g. (("activation", "tanh"),)
    stack: tuple[str, int] | None = None


STACK = "\x00stack:"
"""Prefix of the keys under which a scanned run's taps (and records) are stored as one array
(the first tap's name after it); no tap name may start with it (:meth:`ProbeFrame._claim`)."""


def zeros(specs: dict[str, TapSpec]) -> dict:
    """The zero perturbations of the taps ``specs``: one array per tap, or one (k, ...) array per
    scanned run of k taps (under its :data:`STACK` key)."""
    runs = collections.Counter(s.stack[0] for s in specs.values() if s.stack is not None)
    out = {}
    for name, s in specs.items():
        if s.stack is None:
            out[name] = jnp.zeros(s.shape, s.dtype)
        elif s.stack[1] == 0:
            out[s.stack[0]] = jnp.zeros((runs[s.stack[0]], *s.shape), s.dtype)
    return out


def get(store: dict, specs: dict[str, TapSpec], name: str):
    """Tap ``name`` from a store keyed like :func:`zeros` (perturbations, their gradients, the
    tapped values): its own entry, or its row of its scanned run's stacked array."""
    if name in store:
        return store[name]
    spec = specs[name]
    if spec.stack is None:
        raise KeyError(name)
    return store[spec.stack[0]][spec.stack[1]]


def has_record(records: dict, specs: dict[str, TapSpec], tap: str, suffix: str) -> bool:
    """Whether tap ``tap`` has the record ``tap + suffix`` (e.g. ``"/input_sq"``), by itself or
    in its scanned run's stacked records."""
    stack = specs[tap].stack
    return tap + suffix in records or (stack is not None and stack[0] + suffix in records)


def runs(specs: dict[str, TapSpec], key=lambda name: None):
    """Runs of consecutive taps that stack, in call order: ``(spec, names, key(name))`` for each
    run of taps of one shape, dtype and batch axis (a scanned run's layers, or equal unscanned
    ones) whose ``key`` is equal too; ``spec`` is the first tap's. Read a run with :func:`rows`."""
    same = lambda n: (specs[n].shape, specs[n].dtype, specs[n].batch_axis, key(n))  # noqa: E731
    for (*_, k), names in itertools.groupby(specs, key=same):
        names = list(names)
        yield specs[names[0]], names, k


def rows(store: dict, specs: dict[str, TapSpec], names: list[str], suffix: str = ""):
    """The entries ``name + suffix`` of ``names`` stacked on a new leading axis, (k, ...): a
    scanned run's stacked array is used whole (or sliced), so a run of k taps costs no per-tap
    operation. ``suffix`` reads their records (``"/input_sq"``) instead of the taps."""
    pieces, i = [], 0
    while i < len(names):
        stack = specs[names[i]].stack
        if stack is None or names[i] + suffix in store:
            pieces.append(store[names[i] + suffix][None])
            i += 1
            continue
        (key, start), n = stack, 1
        while i + n < len(names) and specs[names[i + n]].stack == (key, start + n):
            n += 1
        whole = store[key + suffix]
        pieces.append(whole if start == 0 and n == whole.shape[0] else whole[start : start + n])
        i += n
    return pieces[0] if len(pieces) == 1 else jnp.concatenate(pieces)


def _frames() -> list:
    if not hasattr(_state, "frames"):
        _state.frames = []
    return _state.frames


def _top():
    frames = _frames()
    return frames[-1] if frames else None


def active() -> bool:
    """Whether a probe is tracing (taps do something)."""
    return _top() is not None


@contextlib.contextmanager
def _push(frame):
    frames = _frames()
    frames.append(frame)
    try:
        yield frame
    finally:
        frames.pop()


@contextlib.contextmanager
def scope(name: str | None):
    """Prefix the names of taps and records made inside with ``name/`` (no-op outside probes)."""
    frame = _top()
    if frame is None or not name:
        yield
        return
    frame.prefix.append(name)
    try:
        yield
    finally:
        frame.prefix.pop()


def _full(frame, name: str) -> str:
    parts = [*frame.prefix, name] if name else list(frame.prefix)
    return "/".join(p for p in parts if p)


def tap(h: jax.Array, name: str = "", *, batch_axis: int = 0, **meta) -> jax.Array:
    """Mark ``h`` as hidden units called ``name``: identity, except under a probe.

    Args:
      h: an array whose axis ``batch_axis`` indexes the examples (e.g. (batch, n) or
        (batch, seq, d)).
      name: unique within one call of ``apply`` (a name used twice is an error under a probe).
        Inside :func:`gradflow.layers.serial` names are prefixed with the enclosing layers' names.
      batch_axis: the example axis of ``h`` (per-example gradient norms reduce over the others).
      **meta: static facts about these units the diagnosis may use (e.g. ``activation="tanh"``:
        the units are pre-activations of tanh).

    Returns:
      ``h`` (plus a zero perturbation while a probe differentiates with respect to it).
    """
    frame = _top()
    if frame is None:
        return h
    if not isinstance(name, str):
        raise ValueError(f"tap names must be strings, got {name!r}")
    full = _full(frame, name)
    h = jnp.asarray(h)
    spec = _spec(full, h.shape, h.dtype, batch_axis, meta)
    return frame.tap(h, spec)


def _spec(full_name: str, shape, dtype, batch_axis: int, meta: dict) -> TapSpec:
    """A tap's spec, its batch axis normalised (a negative one counts from the end)."""
    axis = batch_axis % max(len(shape), 1)
    return TapSpec(full_name, tuple(shape), dtype, axis, tuple(sorted(meta.items())))


def record(name: str, value: jax.Array) -> None:
    """Record an auxiliary value under a probe (e.g. a dense layer's per-example input norms)."""
    frame = _top()
    if frame is not None:
        frame.record(_full(frame, name), value)


def perturbation(name: str, shape, dtype, *, batch_axis: int = 0, **meta):
    """For layers that add the perturbation themselves (inside their own ``lax.scan``, as the
    recurrent cells do at every time step): register a tap of ``shape`` and return its
    perturbation (zeros during discovery), or None outside a probe. Pair with :func:`set_value`.
    """
    frame = _top()
    if frame is None:
        return None
    if isinstance(frame, ScanFrame):
        raise ValueError(f"tap {name!r}: a recurrent layer inside a scanned run cannot be probed")
    spec = _spec(_full(frame, name), shape, dtype, batch_axis, meta)
    frame._claim(spec)
    if frame.perturb is None:
        return jnp.zeros(spec.shape, dtype)
    return frame.perturb[spec.name].astype(dtype)


def set_value(name: str, value) -> None:
    """The tapped value of a tap registered by :func:`perturbation`."""
    frame = _top()
    if frame is not None:
        frame.values[_full(frame, name)] = value


class ProbeFrame:
    """The top-level frame of a probe.

    ``perturb is None``: discovery (the taps' specs are collected, ``h`` passes through).
    Otherwise ``perturb[name]`` is added at tap ``name`` and the tapped values are kept.
    """

    def __init__(self, perturb: dict | None = None):
        self.perturb = perturb
        self.prefix: list[str] = []
        self.specs: dict[str, TapSpec] = {}
        self.values: dict[str, jax.Array] = {}
        self.records: dict[str, jax.Array] = {}

    def _claim(self, spec: TapSpec) -> None:
        if spec.name.startswith(STACK):
            raise ValueError(f"tap name {spec.name!r} starts with a NUL byte; pick another name")
        if spec.name in self.specs:
            raise ValueError(
                f"tap name {spec.name!r} is used twice in one call of apply; give each "
                "gf.tap a unique name (e.g. f'block{i}')"
            )
        self.specs[spec.name] = spec

    def tap(self, h, spec: TapSpec):
        self._claim(spec)
        if self.perturb is not None:
            h = h + self.perturb[spec.name].astype(h.dtype)
        self.values[spec.name] = h
        return h

    def tap_stacked(self, names: list[str], spec: TapSpec):
        """Register one stacked tap per name (a scanned run); returns the (k, ...) perturbation:
        the run's stacked entry (``perturb[STACK + names[0]]``), or per-name entries stacked."""
        key = STACK + names[0]
        for i, n in enumerate(names):
            self._claim(spec._replace(name=n, stack=(key, i)))
        if self.perturb is None:
            return jnp.zeros((len(names), *spec.shape), spec.dtype)
        if key in self.perturb:
            return self.perturb[key]
        return jnp.stack([self.perturb[n] for n in names])

    def set_stacked(self, names: list[str], values: jax.Array, store: dict) -> None:
        """Store a scanned run's (k, ...) values under its stacked key (:func:`get` reads a row)."""
        store[STACK + names[0]] = values

    def record(self, name: str, value) -> None:
        self.records[name] = value


class ScanFrame:
    """Collects the taps and records of one scan body (relative names); see :func:`scanned`."""

    def __init__(self, perturb: dict | None, specs: dict[str, TapSpec] | None = None):
        self.perturb = perturb  # relative name -> this iteration's perturbation
        self.prefix: list[str] = []
        self.specs: dict[str, TapSpec] = {} if specs is None else specs
        self.values: dict[str, jax.Array] = {}
        self.records: dict[str, jax.Array] = {}

    def tap(self, h, spec: TapSpec):
        if spec.name in self.values:
            raise ValueError(
                f"tap name {spec.name!r} is used twice in one layer; give each gf.tap a unique name"
            )
        self.specs[spec.name] = spec
        if self.perturb is not None:
            h = h + self.perturb[spec.name].astype(h.dtype)
        self.values[spec.name] = h
        return h

    def record(self, name: str, value) -> None:
        self.records[name] = value


def _join(prefix: str, rel: str) -> str:
    return f"{prefix}/{rel}" if rel else prefix


def scan_layers(step, carry, stacked, extra):
    """``lax.scan`` over the leading axis of ``stacked`` (and ``extra``):
    ``step(carry, params_i, extra_i) -> (carry, out_i)``."""
    return jax.lax.scan(lambda c, xs: step(c, *xs), carry, (stacked, extra))


def scanned(body, carry, stacked_params, names: list[str]):
    """``lax.scan(body, carry, stacked_params)`` with the taps inside ``body`` made per-iteration.

    ``body(params_i, carry) -> carry`` is one layer; ``names[i]`` is iteration i's layer name. A
    tap ``rel`` inside the body becomes the taps ``names[i] + "/" + rel`` (``names[i]`` when rel is
    empty), exactly as if the layers had been applied one after another.
    """
    parent = _top()
    if isinstance(parent, ScanFrame):
        raise ValueError(
            "a scanned run of layers inside another scanned run cannot be probed; build the "
            "inner serial with scan=False"
        )
    if parent is None:
        return scan_layers(lambda c, p, _: (body(p, c), None), carry, stacked_params, None)[0]
    # Discovery of the body's taps (relative names, shapes) on one iteration's abstract inputs.
    first = jax.tree.map(lambda a: a[0], stacked_params)
    probe_specs: dict[str, TapSpec] = {}

    def discover(p, c):
        frame = ScanFrame(None, probe_specs)
        with _push(frame):
            body(p, c)

    jax.eval_shape(discover, first, carry)
    full_names = {rel: [_join(_full(parent, n), rel) for n in names] for rel in probe_specs}
    perturb = {
        rel: parent.tap_stacked(full_names[rel], spec._replace(name=full_names[rel][0]))
        for rel, spec in probe_specs.items()
    }

    def step(c, p, pert):
        frame = ScanFrame(pert)
        with _push(frame):
            c = body(p, c)
        return c, (frame.values, frame.records)

    carry, (values, records) = scan_layers(step, carry, stacked_params, perturb)
    for rel, v in values.items():
        parent.set_stacked(full_names[rel], v, parent.values)
    for rel, v in records.items():
        names_r = [_join(_full(parent, n), rel) for n in names]
        parent.set_stacked(names_r, v, parent.records)
    return carry


def discover(apply, params, x) -> tuple[dict[str, TapSpec], Any]:
    """The taps ``apply(params, x)`` makes (name -> :class:`TapSpec`, in call order) and its
    output's shape, by abstract evaluation (no FLOPs)."""
    frame = ProbeFrame(None)

    def run(p, x):
        with _push(frame):
            return apply(p, x)

    out = jax.eval_shape(run, params, x)
    return dict(frame.specs), out


def run_tapped(apply, params, x, perturb: dict):
    """``apply(params, x)`` with the perturbations ``perturb`` (keyed like :func:`zeros`; a
    scanned run's taps also accept one entry per name) added at the taps.

    Returns: ``(output, values, records)``: the tapped values (after the perturbation) and the
    auxiliary records, keyed like :func:`zeros`: by full name, except a scanned run's, stored
    as one (k, ...) array under its :data:`STACK` key (read them with :func:`get`,
    :func:`rows`).
    """
    frame = ProbeFrame(perturb)
    with _push(frame):
        out = apply(params, x)
    return out, frame.values, frame.records
