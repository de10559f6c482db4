"""Memory budgets for chunked sweeps: parse ``"4GiB"``, measure a compiled chunk, pick its size.

XLA reports what a compiled program needs (``compiled.memory_analysis()``: arguments, outputs
and temporaries, per device). A sweep's chunk needs about ``a + b * seeds_per_device`` bytes, so
two small compilations give the line and the budget gives the largest chunk on it.
"""

from __future__ import annotations

import math
import os
import re
import warnings
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import numpy as np


class ChunkChoice(NamedTuple):
    """What ``chunk_size="auto"`` chose, and why. Byte counts are per device.

    Attributes:
      chunk_size: seeds per compiled call, a multiple of the device count.
      budget: the per-device budget in bytes.
      fixed_bytes: ``a``, the part that does not grow with the chunk (data, code).
      per_seed_bytes: ``b``, bytes per seed on the device that computes it.
      predicted_bytes: ``a + b * chunk_size / n_devices``, or the measured bytes at the chosen
        chunk when XLA's accounting is available.
      method: ``"memory_analysis"`` (XLA's accounting of the compiled program) or
        ``"traced estimate"`` (fallback: every intermediate of the traced program alive at once,
        an overestimate).
    """

    chunk_size: int
    budget: int
    fixed_bytes: float
    per_seed_bytes: float
    predicted_bytes: float
    method: str


def parse_bytes(memory) -> int:
    """Bytes from ``"4GiB"`` (4 * 2**30), ``"500MB"`` (5 * 10**8) or a number; ``iB`` = 1024."""
    value = memory
    if isinstance(memory, str):
        m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+(?:[eE][0-9]+)?)\s*([kKmMgGtT]?)(i?)[bB]?\s*", memory)
        if m is None:
            raise ValueError(
                f"memory (--memory) must look like 4GiB, 512MB or 1e9 bytes, got {memory!r}"
            )
        power = " KMGT".index(m.group(2).upper() or " ")
        value = float(m.group(1)) * (1024 if m.group(3) else 1000) ** power
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise ValueError(f"memory (--memory) must be bytes or a string like '4GiB', got {memory!r}")
    if not math.isfinite(value) or not value >= 1:
        raise ValueError(f"memory (--memory) must be a positive number of bytes, got {memory!r}")
    return int(value)


def available_bytes() -> int:
    """Host memory available now (``MemAvailable`` on Linux, else the physical RAM)."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def default_budget(device, n_devices: int) -> int:
    """80% of an accelerator's memory; on CPU, half the RAM split across the (simulated) devices."""
    stats = device.memory_stats() or {}
    if stats.get("bytes_limit"):
        return int(0.8 * stats["bytes_limit"])
    ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    return ram // 2 // n_devices


def compiled_bytes(compiled) -> int | None:
    """Per-device bytes of a compiled program (arguments + outputs + temporaries + code), or None
    if the backend does not report them."""
    try:
        m = compiled.memory_analysis()
    except Exception:  # noqa: BLE001 - unimplemented on some backends; the caller falls back
        return None
    if m is None:
        return None
    return int(
        m.argument_size_in_bytes + m.output_size_in_bytes + m.temp_size_in_bytes
        - m.alias_size_in_bytes + m.generated_code_size_in_bytes
    )  # fmt: skip


def sub_jaxprs(eqn):
    """The jaxprs nested in one equation's params: a scan's or while loop's body, a cond's
    branches, a pjit's or custom rule's function (closed jaxprs unwrapped)."""
    for p in eqn.params.values():
        for sub in p if isinstance(p, (tuple, list)) else (p,):
            sub = getattr(sub, "jaxpr", sub)
            if hasattr(sub, "eqns"):
                yield sub


def traced_bytes(closed_jaxpr) -> int:
    """Bytes of every intermediate of a traced program, as if all were alive at once."""

    def total(jaxpr) -> int:
        n = 0
        for eqn in jaxpr.eqns:
            for v in eqn.outvars:
                n += int(np.prod(v.aval.shape)) * getattr(v.aval.dtype, "itemsize", 8)
            n += sum(total(sub) for sub in sub_jaxprs(eqn))
        return n

    return total(closed_jaxpr.jaxpr)


def choose_chunk(
    compile_at: Callable[[int], Any],
    trace_at: Callable[[int], Any],
    n_items: int,
    n_devices: int,
    budget: int,
    multiple: int | None = None,
    seed_bound: float | None = None,
) -> tuple[ChunkChoice, Any]:
    """The largest chunk (a multiple of ``multiple``, at most ``n_items`` rounded up) in budget.

    When ``seed_bound`` says every seed fits at once, one compile at that size decides (it is
    the program the sweep runs anyway): nothing else is compiled unless XLA reports it over
    budget. Otherwise two small chunks are compiled and their measured bytes fitted by a line.

    Args:
      compile_at: chunk size -> compiled program (``jit(f).lower(...).compile()``).
      trace_at: chunk size -> closed jaxpr, used only when ``memory_analysis()`` is unavailable.
      n_items: seeds (or grid point x seed pairs) in the sweep.
      n_devices: devices a chunk is sharded over.
      budget: per-device bytes.
      multiple: the chunk's granularity, a multiple of ``n_devices`` (default ``n_devices``; a
        sweep with ``vmap_size`` passes the vmapped group size).
      seed_bound: an upper bound on one seed's bytes (:attr:`SeedCost.traced_bytes`: every
        intermediate alive at once), or None.

    Returns:
      ``(ChunkChoice, compiled program at the chosen chunk)``.

    Raises:
      ValueError: if one seed per device does not fit the budget.
    """
    multiple = n_devices if multiple is None else multiple
    method = "memory_analysis"
    per_full = -(-n_items // multiple)  # units of `multiple` seeds if all ran at once
    compiled = {}
    if seed_bound is not None and per_full * multiple * seed_bound / n_devices <= budget:
        compiled[per_full] = compile_at(per_full * multiple)
        got = compiled_bytes(compiled[per_full])
        if got is not None and got <= budget:
            per_seed = got * n_devices / (per_full * multiple)  # a bound: includes the fixed part
            choice = ChunkChoice(per_full * multiple, budget, 0.0, per_seed, float(got), method)
            return choice, compiled[per_full]
    sizes = sorted({max(1, min(4, per_full // 2)), min(16, per_full)})
    compiled.update({p: compile_at(p * multiple) for p in sizes if p not in compiled})
    measured = {p: compiled_bytes(compiled[p]) for p in sizes}
    if any(m is None for m in measured.values()):
        method = "traced estimate"
        measured = {p: traced_bytes(trace_at(p * multiple)) // n_devices for p in sizes}
        warnings.warn(
            "chunk_size='auto': this backend's memory_analysis() is unavailable, so the chunk "
            "comes from a conservative estimate (all intermediates alive at once); pass an int "
            "chunk_size to override",
            RuntimeWarning,
            stacklevel=4,
        )
    lo, hi = sizes[0], sizes[-1]
    b = (measured[hi] - measured[lo]) / (hi - lo) if hi > lo else measured[hi] / hi
    a = measured[lo] - b * lo
    per = per_full if b <= 0 else int(min(per_full, max(1, (budget - a) // b)))
    got = a + b * per
    while True:  # check the chosen size itself: XLA's memory need not be exactly linear
        if per not in compiled:
            compiled[per] = compile_at(per * multiple)
        if method == "memory_analysis":
            got = compiled_bytes(compiled[per])
        if got <= budget or per == 1:
            break
        per = max(1, min(per - 1, int(per * budget / got * 0.95)))
    if got > budget:
        raise ValueError(
            f"memory budget {budget:,} B per device is below the ~{int(got):,} B that "
            + (
                "one seed per device needs"
                if multiple == n_devices
                else f"one group of {multiple} seeds (vmap_size) over {n_devices} device(s) needs"
            )
            + "; raise the budget (memory=, --memory) or shrink the batch"
        )
    per_seed = b * n_devices / multiple  # b is per unit of `multiple` seeds
    choice = ChunkChoice(per * multiple, budget, float(a), float(per_seed), float(got), method)
    return choice, compiled[per]


class SeedCost(NamedTuple):
    """What one seed of a sweep costs, read off one trace of its program (no compilation).

    Attributes:
      result_bytes: bytes of one seed's result (plus its key) on the host.
      traced_bytes: bytes of every intermediate of one seed's program, as if all were alive at
        once (an overestimate of its working set).
      flops: matmul-equivalent floating-point operations: its matrix products and
        convolutions, and its dense factorisations times :data:`FACTOR_WEIGHT` (scan bodies
        times their length); elementwise work is not counted.
      step_flops: the FLOPs of one training step (:func:`training_step`), which is what one
        vectorised group's kernels hold at a time in a training run; ``flops`` for a program
        that marks no step.
    """

    result_bytes: int
    traced_bytes: int
    flops: float
    step_flops: float | None = None  # None: as flops


def seed_cost(closed_jaxpr) -> SeedCost:
    """One seed's :class:`SeedCost`, read off the closed jaxpr of its program."""
    out = sum(math.prod(a.shape) * a.dtype.itemsize for a in closed_jaxpr.out_avals) + 8
    jaxpr = closed_jaxpr.jaxpr
    flops = jaxpr_flops(jaxpr)
    steps = [jaxpr_flops(sub, skip_steps=True) for sub in _marked_steps(jaxpr)]
    return SeedCost(out, traced_bytes(closed_jaxpr), flops, max(steps, default=flops))


TRAINING_STEP = "gradflow_training_step"
"""The name :func:`training_step` gives a step's nested ``jit``: how :func:`seed_cost` finds it."""


def training_step(step: Callable) -> Callable:
    """``step`` as a nested ``jit`` named :data:`TRAINING_STEP`, for a loop of training steps.

    It marks one step for the sweep's plan: a training run of many steps is one long program,
    but each step's kernels are as small as one step's work, so :func:`default_plan` sizes its
    group by one step (:attr:`SeedCost.step_flops`). A probe's scans over layers or time
    steps are not marked: their plan stays that of the whole program. XLA inlines the nested
    call: the compiled program is the same arithmetic.
    """

    def gradflow_training_step(*args):  # the pjit equation's name: TRAINING_STEP
        return step(*args)

    return jax.jit(gradflow_training_step)


def _marked_steps(jaxpr):
    """The sub-jaxprs of nested-``jit`` equations named :data:`TRAINING_STEP`, at any depth
    (a recording step that runs plain steps holds them)."""
    for eqn in jaxpr.eqns:
        if _is_step(eqn):
            yield from sub_jaxprs(eqn)
        for sub in sub_jaxprs(eqn):
            yield from _marked_steps(sub)


def _is_step(eqn) -> bool:
    return eqn.primitive.name in ("jit", "pjit") and eqn.params.get("name") == TRAINING_STEP


FACTOR_WEIGHT = 3.0
"""Matmul FLOPs that one FLOP of a dense factorisation (QR, SVD, eigh, eig, Cholesky, LU,
triangular solve) counts for. Per FLOP, LAPACK's QR of 256 x 256 runs ~8x slower than a
matmul on CPU (~13 against ~100 GFLOP/s a core). Uncounted, the stable spectra (mostly QRs)
looked that much cheaper, got groups of 16 seeds where they ran best in groups of 2-4, and a
sweep of fewer seeds than one group paid for the padding (8 seeds x 2 inputs, depth 50, width
128: lyapunov 1.56 s, 0.80 s counted). 3 rather than 8: larger batches amortise each LAPACK
call, and one seed per group was the slowest split measured (bench/README.md, stop 21)."""


FACTORISATIONS = ("qr", "svd", "eigh", "eig", "cholesky", "triangular_solve", "lu")


def _factor_flops(name: str, eqn) -> float:
    """Nominal FLOPs of one dense factorisation equation (the leading terms of LAPACK Working
    Note 41: geqrf, orgqr, gesdd, syevd, potrf, trsm, getrf, geev), its batch dimensions
    included; 0 for any other primitive."""
    if name not in FACTORISATIONS:
        return 0.0
    shape = eqn.invars[0].aval.shape
    batch, (m, n) = math.prod(shape[:-2]), shape[-2:]
    big, k = max(m, n), min(m, n)
    if name == "qr":  # Householder factorisation, and forming Q unless it is dropped (mode="r")
        f = 2.0 * big * k * k - 2.0 * k**3 / 3
        if type(eqn.outvars[0]).__name__ != "DropVar":
            cols = m if eqn.params.get("full_matrices", False) else k  # Q is (m, cols)
            f += 4.0 * m * cols * k - 2.0 * (m + cols) * k * k + 4.0 * k**3 / 3
    elif name == "svd":  # bidiagonalisation, then the vectors' accumulation
        f = 4.0 * big * k * k - 4.0 * k**3 / 3
        if eqn.params.get("compute_uv", True):
            wide = big if eqn.params.get("full_matrices", True) else k
            f += 4.0 * big * wide * k + 4.0 * big * k * k + 9.0 * k**3
    elif name == "eigh":  # tridiagonalisation and the eigenvectors
        f = 4.0 * n**3 / 3 + 6.0 * n**3
    elif name == "eig":  # Hessenberg QR iterations (Golub & Van Loan: ~10 n^3, 25 with vectors)
        vectors = eqn.params.get("compute_left_eigenvectors", True) or eqn.params.get(
            "compute_right_eigenvectors", True
        )
        f = (25.0 if vectors else 10.0) * n**3
    elif name == "cholesky":
        f = n**3 / 3.0
    elif name == "lu":
        f = 1.0 * big * k * k - k**3 / 3.0
    else:  # triangular_solve: a (.., m, m) against b (.., m, k) or (.., k, m)
        rhs = eqn.invars[1].aval.shape
        f = float(m) * m * (rhs[-1] if rhs[-2] == m else rhs[-2])
    return batch * f


def jaxpr_flops(jaxpr, skip_steps: bool = False) -> float:
    """Matmul-equivalent FLOPs of a jaxpr: its ``dot_general`` and convolution equations, plus
    its dense factorisations weighted by :data:`FACTOR_WEIGHT`; sub-jaxprs included (a scan's
    body counted ``length`` times; both branches of a ``cond``; a while loop's body once), but
    not the training steps nested in it with ``skip_steps`` (:func:`training_step`)."""
    n = 0.0
    for eqn in jaxpr.eqns:
        name = eqn.primitive.name
        if skip_steps and _is_step(eqn):
            continue
        if name == "dot_general":
            (contract, _), _ = eqn.params["dimension_numbers"]
            lhs = eqn.invars[0].aval.shape
            k = math.prod(lhs[d] for d in contract)
            n += 2.0 * math.prod(eqn.outvars[0].aval.shape) * k
        elif name == "conv_general_dilated":
            rhs = eqn.invars[1].aval.shape  # kernel: its size / output features = per output
            n += (
                2.0
                * math.prod(eqn.outvars[0].aval.shape)
                * math.prod(rhs)
                / max(rhs[eqn.params["dimension_numbers"].rhs_spec[0]], 1)
            )
        else:
            n += FACTOR_WEIGHT * _factor_flops(name, eqn)
        times = eqn.params.get("length", 1) if name == "scan" else 1
        n += sum(times * jaxpr_flops(sub, skip_steps) for sub in sub_jaxprs(eqn))
    return n


GROUP_FLOPS = 8e9
"""Matmul FLOPs a vmapped group of seeds should hold: enough that small per-seed matmuls
(Nielsen's nets: 0.15 GFLOP a seed) are batched into efficient ones, few enough that a seed
whose matmuls already fill the device (depth 50, width 256: 2.5 GFLOP) is not widened into
memory-bound ones (bench/README.md: groups of 32 and 4 were the best measured there). Held
by one step of a training run (:attr:`SeedCost.step_flops`)."""

PAD_FLOPS = 64e9
"""Bound on a group's whole work (:attr:`SeedCost.flops`), so the padding a sweep of fewer
seeds than a group pays stays bounded for long loops: a training run of 32 Adam steps of a
width-256 MLP (5.4 GFLOP a seed, 0.17 a step) runs in groups of 8, not of the 2 its total
alone gave (16 seeds: 0.89 s against 1.17 s; bench/README.md, stop 24)."""

MAX_GROUP = 64  # the most padding a sweep of fewer seeds pays (tiny models: negligible)
GROUPS_PER_CHUNK = 8
"""Groups run one after another inside one compiled call (``lax.map``): fewer dispatches,
and the host copies a chunk's results while the next chunk runs. Bounds a chunk, so memory is
flat in the number of seeds."""


class Plan(NamedTuple):
    """The default split of a sweep: ``vmap_size`` seeds vectorised together, ``chunk_size``
    seeds per compiled call (a multiple of ``vmap_size``)."""

    chunk_size: int
    vmap_size: int


def default_plan(cost: SeedCost, n_items: int, n_devices: int, budget: int) -> Plan:
    """Chunk and group sizes from one seed's cost alone: no candidate is compiled.

    The group (``vmap_size``) is the power of two nearest ``GROUP_FLOPS / cost.step_flops`` (one
    training step's work; the whole program's when it marks no step), at most ``MAX_GROUP`` and at
    most the power of two below ``PAD_FLOPS / cost.flops`` (the whole run's work), shrunk until
    ``group * cost.traced_bytes`` (an overestimate) fits the budget, and a multiple of the device
    count (rounded down, at least one seed a device). It depends on the program, never on
    ``n_items``, so a seed's numbers are the same whatever the number of seeds or the chunk (XLA
    picks its matmul kernels by shape: a different group size can move results by float rounding). A
    chunk holds up to ``GROUPS_PER_CHUNK`` groups.
    """
    step = cost.flops if cost.step_flops is None else cost.step_flops
    ratio = GROUP_FLOPS / max(step, 1.0)
    group = int(min(MAX_GROUP, 2 ** max(0, round(math.log2(ratio))))) if ratio > 1 else 1
    pad = PAD_FLOPS / max(cost.flops, 1.0)
    group = min(group, 2 ** max(0, math.floor(math.log2(pad))))
    while group > 1 and group * cost.traced_bytes / n_devices > budget:
        group //= 2
    group = max(n_devices, group // n_devices * n_devices)  # down: within the bounds above
    groups = min(GROUPS_PER_CHUNK, max(1, -(-n_items // group)))
    return Plan(group * groups, group)


def check_results_fit(cost: SeedCost, n_items: int) -> None:
    """Refuse a sweep whose results (plus the seeds' keys) cannot fit in host memory, from one
    seed's result size and the number of (grid point, seed) items."""
    per_item = cost.result_bytes
    need, free = n_items * per_item, available_bytes()
    if need > free:
        raise ValueError(
            f"the results of {n_items:,} seeds (x grid points) need {need / 2**30:,.1f} GiB of "
            f"host memory ({per_item} B each), more than the {free / 2**30:,.1f} GiB available; "
            "run fewer seeds per call (seed i is the same network in any call: split the range)"
        )
