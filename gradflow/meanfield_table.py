"""The side-by-side table ``gradflow theory`` prints for a :class:`gradflow.meanfield.Comparison`:
mean-field prediction, measurement +- SE, z-score and verdict, and the gradient profile.
Re-exported by :mod:`gradflow.meanfield`.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np

# gradflow.meanfield imports this module after defining Z (its last statement).
from gradflow.meanfield import Z

if TYPE_CHECKING:
    from gradflow.meanfield import Comparison


def _describe(phase: str, xi_grad: float) -> str:
    if phase == "ordered":
        return f"gradients vanish going back, by e every {xi_grad:.3g} layers"
    if phase == "chaotic":
        return f"gradients explode going back, by e every {-xi_grad:.3g} layers"
    return "gradients neither vanish nor explode (|xi_grad| > 1000 layers)"


def _row(label: str, pred: float, meas: float, se: float, agrees: bool | None) -> str:
    z = (meas - pred) / se if se > 0 else math.nan
    verdict = "" if agrees is None else ("yes" if agrees else "NO")
    return f"  {label:<46}{pred:>11.5g}  {meas:>11.5g} ± {se:<9.2g}{z:>+7.1f}  {verdict}"


def format_comparison(c: Comparison, profile_rows: int = 8) -> str:
    """The side-by-side table ``gradflow theory`` prints: theory, measurement +- SE, verdict."""
    readout = (
        "linear readout C = sum_x <f(x), v_x>, v ~ N(0, I)"
        if c.readout == "linear"
        else "MSE loss with Gaussian targets (layer_grad_norms)"
    )
    start = "on the q* shell" if c.q1 == c.q_star else f"at q^1 = {c.q1:.4g} (q* = {c.q_star:.4g})"
    crit = (
        f"{c.critical_sigma_w2:.6g} at sigma_b2 = {c.sigma_b2:g} (chi1 = 1)"
        if math.isfinite(c.critical_sigma_w2)
        else f"none: chi1 < 1 for every sigma_w2 at sigma_b2 = {c.sigma_b2:g}"
    )
    lines = [
        f"mean-field theory vs measurement: {c.activation} MLP, {c.depth} layers x {c.width} "
        f"units, sigma_w2 = {c.sigma_w2:g}, sigma_b2 = {c.sigma_b2:g}",
        f"{c.seeds} seeds x {c.batch} Gaussian inputs {start}; {readout}",
        "",
        "theory (infinite width)",
        f"  q*                    {c.q_star:.6g}",
        f"  chi1                  {c.chi1:.6g}   phase: {c.phase}",
        f"  depth scales          xi_q = {c.xi_q:.3g}, xi_c = {c.xi_c:.3g}, "
        f"xi_grad = {c.xi_grad:.3g} layers",
        f"  critical sigma_w2     {crit}",
        "",
        f"  {'':<46}{'predicted':>11}  {'measured':>11}   {'SE':<9}{'dev/SE':>7}  agrees",
        f"gradient growth per layer, ratios l = {c.fit_layers[0]}..{c.fit_layers[1]} (all seeds)",
        _row(
            "E||dC/dz^l||^2 / E||dC/dz^{l+1}||^2",
            c.grad_rate_pred,
            c.grad_rate,
            c.grad_rate_se,
            c.grad_agrees,
        ),
    ]
    if c.jacobian_seeds:
        agrees = c.jac_agrees if c.jacobian_seeds >= 2 else None
        lines += [
            f"input-output Jacobian df/dx ({c.jacobian_seeds} seeds x 1 input, exact moments)",
            _row(
                "mean squared singular value",
                c.jac_mean_pred,
                c.jac_mean_ratio * c.jac_mean_pred,
                c.jac_mean_ratio_se * c.jac_mean_pred,
                agrees,
            ),
            _row(
                "variance / mean^2 of squared singular values",
                c.jac_rel_var_pred,
                c.jac_rel_var,
                c.jac_rel_var_se,
                agrees,
            ),
        ]
    layers = np.unique(np.linspace(1, c.depth, min(profile_rows, c.depth)).round().astype(int))
    lines += ["", "gradient profile log(E||dC/dz^l||^2 / E||dC/dz^L||^2), seed means"]
    lines.append(f"  {'layer':>5}  {'predicted':>10}  {'measured':>10}")
    for l in layers:
        pred, meas = c.grad_log_profile_pred[l - 1], c.grad_log_profile[l - 1]
        lines.append(f"  {l:>5}  {pred:>10.4g}  {meas:>10.4g}")
    checks = (
        f"gradient rate {'agrees' if c.grad_agrees else 'DISAGREES'} with theory within "
        f"{Z:g} SE + 1/width ({c.grad_tol:.2%})"
    )
    if c.jacobian_seeds >= 2:
        checks += (
            f";\n  Jacobian moments {'agree' if c.jac_agrees else 'DISAGREE'} within {Z:g} SE + "
            f"depth/width ({c.jac_tol:.2%})"
        )
    lines += [
        "",
        f"verdict: {c.phase} phase (chi1 = {c.chi1:.4g}): {_describe(c.phase, c.xi_grad)}",
        f"  measured: {c.measured_phase} (rate {c.grad_rate:.4g} ± {c.grad_rate_se:.2g})",
        f"  {checks}",
    ]
    return "\n".join(lines)
