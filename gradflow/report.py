"""Verdicts with numbers: what a small (or huge) gradient is, from a :class:`Diagnosis`.

:func:`report` turns the measurements of :func:`gradflow.diagnose.diagnose` (one network, or a
sweep of them) into a :class:`Report`: ``kinds``, a set drawn from :data:`KINDS`, every number
it used (``to_dict()``), and a text with the numbers and the fixes that address each kind.

    vanishing   ||dC/dW^1|| / ||dC/dW^L|| < vanishing_ratio: early layers learn far slower
    exploding   that ratio > 1 / vanishing_ratio, or a non-finite gradient
    healthy     neither, and no dead units, saturation or underflow
    dead_units  some layer has >= dead_fraction of its units with zero gradient on every example
    saturated   some layer has >= saturated_fraction of (example, unit) pairs with phi' < 1% max
    underflow   >= underflow_fraction of the nonzero hidden-unit gradients are subnormal
    plateau     the loss sits at the label-prior loss (predicting the class frequencies), or has
                not moved over the last ``window`` recorded losses while ||grad|| is small
    saddle      ||grad|| < critical_grad and the Hessian has a clearly negative eigenvalue
    minimum     ||grad|| < critical_grad, no negative curvature, and not a plateau

A plateau is never called a minimum: a deep sigmoid classifier stalled at the loss of
predicting the label frequencies has a small gradient but is not at a minimum of the loss.
All thresholds are fields of :class:`Thresholds`, documented there.
"""

from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple

import numpy as np

KINDS = (
    "vanishing", "exploding", "healthy", "dead_units", "saturated", "underflow",
    "plateau", "saddle", "minimum",
)  # fmt: skip


class Thresholds(NamedTuple):
    """The named, documented thresholds of :func:`report`.

    Attributes:
      vanishing_ratio: first/last layer weight-gradient ratio below this is ``vanishing``,
        above its inverse ``exploding`` (0.1: one order of magnitude).
      dead_fraction: a layer with at least this fraction of dead units has ``dead_units``
        (0.5: a healthy relu/He net of depth 10 at initialisation already has ~20% of a deep
        layer off on a whole batch of 64, as the inputs' correlations grow with depth).
      saturated_fraction: a layer with at least this fraction of saturated (example, unit)
        pairs is ``saturated``.
      underflow_fraction: at least this fraction of subnormal hidden-unit gradients is
        ``underflow``.
      critical_grad: ``||dC/dtheta||`` below this is near a critical point.
      saddle_curvature: ``lambda_min < -saddle_curvature * max(|lambda_max|, tiny)`` is
        clearly negative curvature (Lanczos estimates carry rounding of that relative size).
      prior_rtol: ``|loss - prior_loss| <= prior_rtol * prior_loss`` is "at the label prior".
      plateau_grad: with a loss history, a plateau needs ``||grad||`` below this ...
      plateau_rtol: ... and the last ``window`` losses within this relative range.
      window: how many recorded losses the plateau test looks back over.
    """

    vanishing_ratio: float = 0.1
    dead_fraction: float = 0.5
    saturated_fraction: float = 0.25
    underflow_fraction: float = 0.01
    critical_grad: float = 1e-3
    saddle_curvature: float = 1e-3
    prior_rtol: float = 0.01
    plateau_grad: float = 0.05
    plateau_rtol: float = 1e-3
    window: int = 50


FIXES = {
    "vanishing": "initialise on the critical line (gf.theory: sigma_w2 with chi_1 = 1; He init "
    "for relu), a non-saturating activation (relu/gelu instead of sigmoid), residual "
    "connections with a branch scale (gf.mlp(residual=True)), or normalisation (LayerNorm)",
    "exploding": "lower the weight scale to the critical line (chi_1 = 1), clip gradients "
    "(optax.clip_by_global_norm; the standard fix for RNNs, Pascanu et al. 2013), or normalise",
    "dead_units": "a smaller learning rate, positive bias init, or leaky relu/gelu",
    "saturated": "a smaller init (sigma_w2 on the critical line), relu/gelu, or normalisation",
    "underflow": "rescale the loss (loss scaling) or compute in float32/float64",
    "plateau": "the loss equals predicting class frequencies (or has stopped moving): fix the "
    "gradient flow first (see vanishing); a larger learning rate, momentum or Adam; check labels",
    "saddle": "keep training: noise (SGD), momentum or Adam escape saddles (Dauphin et al. 2014)",
    "minimum": "training converged here; what is left is a generalisation question",
}


@dataclasses.dataclass(frozen=True)
class Report:
    """One network's verdict.

    Attributes:
      kinds: the diagnosed kinds (a subset of :data:`KINDS`).
      numbers: every number the verdict used (Python floats / lists).
      text: the rendered verdict with numbers and suggested fixes.
    """

    kinds: frozenset
    numbers: dict
    text: str

    def to_dict(self) -> dict:
        return {"kinds": sorted(self.kinds), "numbers": self.numbers, "text": self.text}

    def __str__(self) -> str:
        return self.text


@dataclasses.dataclass(frozen=True)
class SweepReport:
    """Verdicts of a sweep: one :class:`Report` per seed and a summary across seeds.

    Attributes:
      reports: per seed (flattened over any grid axes), in seed order.
      counts: kind -> number of seeds diagnosed with it.
      text: the summary: how many seeds have each kind, with medians of the key numbers.
    """

    reports: tuple
    counts: dict
    text: str

    @property
    def kinds(self) -> frozenset:
        """Kinds found in at least half of the seeds."""
        n = len(self.reports)
        return frozenset(k for k, c in self.counts.items() if 2 * c >= n)

    def to_dict(self) -> dict:
        return {
            "counts": self.counts,
            "kinds": sorted(self.kinds),
            "seeds": [r.to_dict() for r in self.reports],
            "text": self.text,
        }

    def __str__(self) -> str:
        return self.text


def report(d, losses=None, thresholds: Thresholds | None = None) -> Report | SweepReport:
    """The verdict for a :class:`gradflow.diagnose.Diagnosis`.

    Args:
      d: one network's Diagnosis, or a swept one (``gf.sweep(gf.diagnose.diagnose, ...)``:
        leading seed/grid axes on every field), giving a :class:`SweepReport`.
      losses: optional loss history (steps,), or (seeds, steps) for a sweep, e.g. a training
        trajectory's losses: enables the "has not moved" plateau test.
      thresholds: see :class:`Thresholds` (default: its documented defaults).
    """
    thresholds = Thresholds() if thresholds is None else thresholds
    fields = {k: np.asarray(v, np.float64) for k, v in d._asdict().items()}
    lead = fields["loss"].shape
    if not lead:
        return _one(fields, None if losses is None else np.asarray(losses, float), thresholds)
    n = int(np.prod(lead))
    flat = {k: v.reshape(n, *v.shape[len(lead) :]) for k, v in fields.items()}
    hist = None if losses is None else np.asarray(losses, float).reshape(n, -1)
    reports = tuple(
        _one({k: v[i] for k, v in flat.items()}, None if hist is None else hist[i], thresholds)
        for i in range(n)
    )
    counts = {k: sum(k in r.kinds for r in reports) for k in KINDS}
    counts = {k: c for k, c in counts.items() if c}
    med = {k: float(np.nanmedian(flat[k])) for k in ("ratio_first_last", "grad_norm", "loss")}
    lines = [f"{n} seeds: " + ", ".join(f"{k} {c}/{n}" for k, c in counts.items())]
    lines.append(
        f"medians: ||dC/dW^1|| / ||dC/dW^L|| = {med['ratio_first_last']:.3g}, "
        f"||grad|| = {med['grad_norm']:.3g}, loss = {med['loss']:.4g}"
    )
    common = [k for k, c in counts.items() if 2 * c >= n and k in FIXES and k != "healthy"]
    lines += [f"fix ({k}): {FIXES[k]}" for k in common]
    return SweepReport(reports, counts, "\n".join(lines))


def _one(f: dict[str, Any], losses, th: Thresholds) -> Report:
    ratio, g = float(f["ratio_first_last"]), float(f["grad_norm"])
    loss, prior = float(f["loss"]), float(f["prior_loss"])
    h_min, h_max = float(f["hessian_min"]), float(f["hessian_max"])
    peak = lambda name: float(np.max(f[name])) if np.size(f[name]) else 0.0  # noqa: E731
    where = lambda name: int(np.argmax(f[name])) + 1 if np.size(f[name]) else 0  # noqa: E731
    kinds, lines = set(), []
    if not (np.isfinite(ratio) and np.isfinite(g)):
        kinds.add("exploding")
        lines.append("EXPLODING: the gradient is not finite (the network overflowed)")
    elif g == 0:
        lines.append("the whole gradient is exactly zero (not a vanishing gradient)")
    elif ratio < th.vanishing_ratio:
        kinds.add("vanishing")
        lines.append(f"VANISHING: layer 1's weight gradient is {1 / ratio:.3g}x smaller than the "
                     f"last layer's (||dC/dW^1|| / ||dC/dW^L|| = {ratio:.3g})")  # fmt: skip
    elif ratio > 1 / th.vanishing_ratio:
        kinds.add("exploding")
        lines.append(f"EXPLODING: layer 1's weight gradient is {ratio:.3g}x larger than the last "
                     "layer's")  # fmt: skip
    else:
        lines.append(f"balanced gradients: ||dC/dW^1|| / ||dC/dW^L|| = {ratio:.3g}")
    if peak("dead_fraction") >= th.dead_fraction:
        kinds.add("dead_units")
        lines.append(f"DEAD UNITS: {peak('dead_fraction'):.1%} of layer {where('dead_fraction')}'s "
                     "units have zero gradient on every example")  # fmt: skip
    if peak("saturated_fraction") >= th.saturated_fraction:
        kinds.add("saturated")
        share, layer = peak("saturated_fraction"), where("saturated_fraction")
        lines.append(f"SATURATED: {share:.1%} of layer {layer}'s units have phi' < 1% of its "
                     "maximum")  # fmt: skip
    if peak("underflow_fraction") >= th.underflow_fraction:
        kinds.add("underflow")
        lines.append(f"UNDERFLOW: {peak('underflow_fraction'):.1%} of nonzero hidden-unit "
                     "gradients are subnormal floats")  # fmt: skip
    if not kinds and g > 0:
        kinds.add("healthy")
    at_prior = np.isfinite(prior) and abs(loss - prior) <= th.prior_rtol * abs(prior)
    still = False
    if losses is not None and losses.size >= th.window:
        last = losses[-th.window :]
        spread = (np.max(last) - np.min(last)) / max(abs(float(np.mean(last))), 1e-30)
        still = bool(spread <= th.plateau_rtol and g < th.plateau_grad)
    if at_prior or still:
        kinds.add("plateau")
        why = (
            f"the loss {loss:.4g} equals the label-prior loss {prior:.4g} (predicting the "
            "class frequencies)"
            if at_prior
            # fmt: skip
            else f"the loss has not moved over the last {th.window} records"
        )
        lines.append(f"PLATEAU: {why}; ||grad|| = {g:.3g}. Not a minimum")
    curvature = (
        f"Hessian eigenvalues in [{h_min:.3g}, {h_max:.3g}]" if np.isfinite(h_min) else
        "Hessian not probed"
    )  # fmt: skip
    if g < th.critical_grad:
        if np.isfinite(h_min) and h_min < -th.saddle_curvature * max(abs(h_max), 1e-30):
            kinds.add("saddle")
            lines.append(f"SADDLE point: ||grad|| = {g:.3g} and negative curvature; {curvature}")
        elif "plateau" not in kinds and np.isfinite(h_min):
            kinds.add("minimum")
            lines.append(f"MINIMUM: ||grad|| = {g:.3g}, no negative curvature; {curvature}")
        else:
            lines.append(f"near a critical point: ||grad|| = {g:.3g}; {curvature}")
    else:
        lines.append(f"not a critical point: ||grad|| = {g:.3g}; {curvature}")
    lines += [f"fix ({k}): {FIXES[k]}" for k in KINDS if k in kinds and k in FIXES]
    numbers = {k: _plain(v) for k, v in f.items()}
    numbers["thresholds"] = th._asdict()
    return Report(frozenset(kinds), numbers, "\n".join(lines))


def _plain(v):
    v = np.asarray(v)
    out = v.tolist()
    if v.ndim == 0:
        return None if not np.isfinite(out) else out
    return [None if not np.isfinite(x) else x for x in np.ravel(v).tolist()]
