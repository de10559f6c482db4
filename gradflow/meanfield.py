"""Mean-field theory side by side with measurement, over many seeds of finite networks.

``compare`` builds the network the theory describes (:mod:`gradflow.theory`): an MLP of widths
``[width] * (depth + 1)``, init ``"gaussian"`` (W ~ N(0, sigma_w2 / n), b ~ N(0, sigma_b2)),
linear output, fed Gaussian inputs on the shell where the first pre-activation variance is
``q^1 = sigma_w2 ||x||^2 / n + sigma_b2 = q*``. It measures, through :func:`gradflow.sweep`:

* the per-layer gradient growth ``E||dC/dz^l||^2 / E||dC/dz^{l+1}||^2`` going back from the
  output, predicted to be ``chi1`` (``chi1^l`` at q^l along a transient);
* the first two moments of the squared singular values of the input-output Jacobian df/dx,
  predicted by :func:`gradflow.theory.jacobian_moments` (with ``linear_readout=True``: the last
  layer has no phi, so its factor is sigma_w2, not chi1);

and says whether they agree within ``Z`` standard errors plus a stated finite-width tolerance.

The readout. With ``readout="linear"`` (default) the loss is ``C = sum_x <f(x), v_x>`` with a
fixed Gaussian v, so dC/dz^L = v does not depend on the network and ``dC/dz^l = J_{l->L}^T v``
exactly: the backward signal is generic, the gradient-independence assumption behind chi1 holds
(Yang 2019, arXiv:1902.04760) and every layer follows chi1. ``readout="mse"`` is the loss of
``gradflow.layer_grad_norms(..., loss="mse")``, 0.5 ||f(x) - y||^2 with y ~ N(0, I) (the tests
check the two give the same numbers): there dC/dz^L = f(x) - y depends on W^L, which breaks the
assumption at O(1) for the last two or three layers (measured ratios ~1.06 and ~0.98 where
chi1 = 0.94), so those are left out of the fit.

The network is ``gradflow.mlp([width] * (depth + 1), activation, "gaussian")``: its equal
layers are stacked and run by one ``lax.scan`` (depth 1,000: ~2 s to the first result).

Estimators. Per seed s and layer l, ``rho_{s,l} = G_{s,l} / G_{s,l+1}`` with ``G_{s,l}`` the
batch mean of ``||dC_x/dz^l_x||^2``. Given everything above layer l, ``E[rho_{s,l}] = chi1^l``
exactly under gradient independence, so the seed-level estimate ``r_s = mean_l rho_{s,l}`` over
the fitted layers is unbiased, and the growth rate is ``mean_s r_s`` with standard error
``std_s(r_s) / sqrt(S)``. (A least-squares slope of ``log G_{s,l}`` would estimate
``E log rho = log chi1 - Var(rho) / (2 chi1^2) - ...``: biased low by ~(3 mu2/mu1^2 - 1) / (2 n B)
per layer, as large as the standard error at 256 seeds.) The Jacobian moments are exact per
(seed, input): ``m1 = ||J||_F^2 / k`` and ``m2 = ||J^T J||_F^2 / k`` (k = min(n_0, n_L)), from
the layer product rescaled to unit Frobenius norm at every layer with the log scale carried
(:func:`gradflow.deep.jacobian_log_moments`), so depth 1,000 neither overflows nor
underflows. They equal the moments of ``spectra.jacobian_singular_values`` to rounding (tested)
at a fraction of the cost (one matmul per layer, no QR or SVD).

Finite width. The theory is the n -> inf limit; corrections are O(1/n) per layer and add up
over depth (Hanin 2018, arXiv:1801.03744: of order sum_l 1/n_l). So the per-layer rate is allowed
``FINITE_WIDTH / n`` (relative) on top of ``Z`` standard errors, and the Jacobian moments
``FINITE_WIDTH * depth / n``.

References:
  Poole et al. 2016 (arXiv:1606.05340); Schoenholz et al. 2017 (arXiv:1611.01232); Pennington,
  Schoenholz & Ganguli 2017 (arXiv:1711.04735).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import jax
import numpy as np

from gradflow import theory
from gradflow.data import gaussian_inputs
from gradflow.deep import jacobian_log_moments, log_grad_sq
from gradflow.nets import mlp
from gradflow.seeds import seed_keys
from gradflow.sweep import sweep

Z = 3.0
"""Standard errors allowed between measurement and theory."""

FINITE_WIDTH = 1.0
"""Finite-width tolerance: FINITE_WIDTH / width per layer (relative), times depth for df/dx."""

READOUTS = ("linear", "mse")
"""``compare``'s readouts: see the module docstring."""

_SKIP_LAST = {"linear": 0, "mse": 3}  # output-near layers left out of the fit (docstring)
_Q_CONVERGED = 1e-3  # |q^l - q*| <= this * q*: the q transient is over


class Comparison(NamedTuple):
    """Theory and measurement for one (activation, sigma_w2, sigma_b2, depth, width).

    Scalars are Python floats/ints/strs; ``grad_log_sq`` and the ``jac_*`` arrays keep the per-seed
    data (numpy). Layers are numbered 1..depth; ratio l is ``E||dC/dz^l||^2 / E||dC/dz^{l+1}||^2``.

    Attributes:
      activation, sigma_w2, sigma_b2, depth, width, seeds, batch, jacobian_seeds, readout, q1:
        the setup (q1: the first pre-activation variance, q* unless given).
      q_star, chi1, xi_q, xi_c, xi_grad, critical_sigma_w2, phase: theory at (sigma_w2,
        sigma_b2); ``critical_sigma_w2`` is the chi1 = 1 point at this sigma_b2 (NaN if none).
      fit_layers: (first, last) ratio l in the fit: past the q transient, short of the skipped
        output-near layers.
      grad_rate, grad_rate_se, grad_rate_pred: measured mean per-layer ratio over the fit, its
        standard error across seeds, and the predicted mean of chi1^l over the same layers.
      grad_log_profile, grad_log_profile_pred: (depth,) log(E||dC/dz^l||^2 / E||dC/dz^L||^2),
        measured (seed means) and predicted (``theory.predicted_grad_ratios``).
      jac_mean_pred, jac_mean_ratio, jac_mean_ratio_se: predicted mean squared singular value
        of df/dx, and measured / predicted (mean over seeds, SE); NaN without Jacobian seeds.
      jac_rel_var_pred, jac_rel_var, jac_rel_var_se: variance / mean^2 of the squared singular
        values, predicted and measured per (seed, input) then averaged (scale-free at any depth;
        Pennington et al.'s sigma^2_JJ^T where the mean is 1).
      grad_tol, jac_tol: the finite-width tolerances used (relative).
      grad_agrees, jac_agrees: |measured - predicted| <= Z SE + tolerance (jac: both moments).
      measured_phase: "ordered", "chaotic" or "critical" from grad_rate: below / above 1 by more
        than Z SE + tolerance, or neither.
      grad_log_sq: (seeds, depth) log of the batch mean of ||dC_x/dz^l_x||^2 per seed, layer.
      jac_log_m1, jac_log_m2: (jacobian_seeds, 1) log m1, log m2 per seed and input.
    """

    activation: str
    sigma_w2: float
    sigma_b2: float
    depth: int
    width: int
    seeds: int
    batch: int
    jacobian_seeds: int
    readout: str
    q1: float
    q_star: float
    chi1: float
    xi_q: float
    xi_c: float
    xi_grad: float
    critical_sigma_w2: float
    phase: str
    fit_layers: tuple[int, int]
    grad_rate: float
    grad_rate_se: float
    grad_rate_pred: float
    grad_log_profile: np.ndarray
    grad_log_profile_pred: np.ndarray
    jac_mean_pred: float
    jac_mean_ratio: float
    jac_mean_ratio_se: float
    jac_rel_var_pred: float
    jac_rel_var: float
    jac_rel_var_se: float
    grad_tol: float
    jac_tol: float
    grad_agrees: bool
    jac_agrees: bool
    measured_phase: str
    grad_log_sq: np.ndarray
    jac_log_m1: np.ndarray
    jac_log_m2: np.ndarray


# --------------------------------------------------------------------------------------------
# compare


def _check_int(name: str, value, lo: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < lo:
        raise ValueError(f"{name} must be an int >= {lo}, got {value!r}")
    return int(value)


def _mean_se(v: np.ndarray) -> tuple[float, float]:
    v = np.asarray(v, dtype=np.float64)
    return float(v.mean()), float(v.std(ddof=1) / math.sqrt(v.size))


def _critical(activation: str, sigma_b2: float) -> float:
    try:
        return theory.critical_sigma_w2(activation, sigma_b2)
    except ValueError:  # no chi1 = 1 point for this activation and sigma_b2
        return math.nan


def _within(measured, se, predicted, tol) -> bool:
    return bool(abs(measured - predicted) <= Z * se + tol * abs(predicted))


def compare(
    activation: str,
    sigma_w2: float,
    sigma_b2: float,
    depth: int,
    width: int,
    seeds: int,
    *,
    batch: int = 8,
    jacobian_seeds: int | None = None,
    readout: str = "linear",
    q1: float | None = None,
    skip_last: int | None = None,
    key: jax.Array | None = None,
    data_key: jax.Array | None = None,
    chunk_size: int | str | None = None,
    quiet: bool = True,
) -> Comparison:
    """Measure per-layer gradient growth and Jacobian moments over seeds, next to mean-field theory.

    Args:
      activation: a name in :data:`gradflow.activations.ACTIVATIONS`.
      sigma_w2, sigma_b2: weight and bias variances (``init="gaussian"``).
      depth: L >= 2 weight layers (the last is linear). width: n >= 2 units in every layer.
      seeds: networks for the gradient measurement (>= 2); seed i is
        ``fold_in(key, i)``, the same network whatever ``seeds`` is.
      batch: Gaussian inputs per network.
      jacobian_seeds: the first this many seeds (<= seeds; default min(32, seeds)) also give
        exact Jacobian moments of df/dx at the first input (0: skip; >= 2 for a standard error).
      readout: ``"linear"`` (generic backward signal, default) or ``"mse"`` (as
        ``layer_grad_norms`` with ``loss="mse"``); see the module docstring.
      q1: first-layer pre-activation variance (inputs scaled to it); default q*, so q^l = q*
        at every layer. Another value starts a transient, which the fit skips.
      skip_last: output-near ratios left out of the fit (default 0 linear, 3 mse).
      key: base key of the seeds (default ``jax.random.key(0)``). data_key: inputs and
        readout vector / targets (default ``jax.random.key(1)``).
      chunk_size: seeds per compiled call (int, "auto" or None: about 256 MiB of weights).
      quiet: no progress bar.

    Returns:
      :class:`Comparison`.

    References:
      Schoenholz et al. 2017 (arXiv:1611.01232); Pennington et al. 2017 (arXiv:1711.04735).
    """
    q_star = theory.q_star(activation, sigma_w2, sigma_b2)  # validates the three
    sigma_w2, sigma_b2 = float(sigma_w2), float(sigma_b2)
    depth = _check_int("depth", depth, 2)
    width = _check_int("width", width, 2)
    seeds = _check_int("seeds", seeds, 2)
    batch = _check_int("batch", batch, 1)
    if jacobian_seeds is None:
        jacobian_seeds = min(32, seeds)
    jacobian_seeds = _check_int("jacobian_seeds", jacobian_seeds, 0)
    if jacobian_seeds > seeds:
        raise ValueError(f"jacobian_seeds must be <= seeds ({seeds}), got {jacobian_seeds}")
    if readout not in READOUTS:
        raise ValueError(f"unknown readout {readout!r}; choose one of: {', '.join(READOUTS)}")
    skip = _SKIP_LAST[readout] if skip_last is None else _check_int("skip_last", skip_last, 0)

    q1 = q_star if q1 is None else float(q1)
    if not (math.isfinite(q1) and q1 > sigma_b2):
        what = "q* " if q1 == q_star else "q1 "
        raise ValueError(
            f"{what}= {q1:.4g} must be finite and > sigma_b2 = {sigma_b2:.4g} for inputs of "
            f"nonzero length (sigma_w2 ||x||^2 / n = q1 - sigma_b2); choose another sigma_w2, "
            "sigma_b2 or q1"
        )
    qs = theory.q_sequence(activation, sigma_w2, sigma_b2, depth, q1)
    chi_l = np.asarray(theory.chi1(activation, sigma_w2, sigma_b2, q=qs), dtype=np.float64)
    converged = np.abs(qs - q_star) <= _Q_CONVERGED * q_star
    first = int(np.argmax(converged)) + 1 if converged.any() else depth
    last = depth - 1 - skip
    if first > last:
        raise ValueError(
            f"no layers left to fit: ratios {first}..{last} (q converges at layer {first}, "
            f"skip_last={skip}); increase depth"
        )

    # One model per (activation, depth, width): the variances go in traced (hyper=), so phases
    # and grid points share one compilation.
    model = mlp([width] * (depth + 1), activation, "gaussian")
    hyper = {"sigma_w2": np.float32(sigma_w2), "sigma_b2": np.float32(sigma_b2)}
    kx, kv = jax.random.split(jax.random.key(1) if data_key is None else data_key)
    x = gaussian_inputs(kx, batch, width, (q1 - sigma_b2) / sigma_w2, on_shell=True)
    v = jax.random.normal(kv, (batch, width), x.dtype)
    keys = seed_keys(seeds, key)
    chunk = chunk_size if chunk_size is not None else _default_chunk(depth, width)
    # The Jacobian seeds also give their gradients, so no network is drawn twice.
    grads, log_m1, log_m2 = [], np.zeros((0, 1)), np.zeros((0, 1))
    run = dict(hyper=hyper, quiet=quiet)
    if jacobian_seeds:
        g, (log_m1, log_m2) = sweep(
            _grad_and_jacobian, model, keys[:jacobian_seeds], x, v, readout=readout,
            chunk_size=_min_chunk(chunk, jacobian_seeds), **run,
        )  # fmt: skip
        grads.append(g)
    if jacobian_seeds < seeds:
        rest = keys[jacobian_seeds:]
        grads.append(
            sweep(log_grad_sq, model, rest, x, v, readout=readout, chunk_size=chunk, **run)
        )
    grad_log_sq = np.concatenate(grads).astype(np.float64)
    log_m1, log_m2 = np.asarray(log_m1, np.float64), np.asarray(log_m2, np.float64)

    # Gradient growth per layer: seed-level mean of rho_{s,l} over the fit (docstring).
    with np.errstate(over="ignore", invalid="ignore"):
        rho = np.exp(grad_log_sq[:, :-1] - grad_log_sq[:, 1:])
        log_mean = np.logaddexp.reduce(grad_log_sq, axis=0)  # log sum_s G_{s,l}
        profile = log_mean - log_mean[-1]
    rate, rate_se = _mean_se(rho[:, first - 1 : last].mean(1))
    rate_pred = float(chi_l[first - 1 : last].mean())
    grad_tol = FINITE_WIDTH / width

    jac = theory.jacobian_moments(activation, sigma_w2, sigma_b2, depth, q1=q1, linear_readout=True)
    if not (0 < jac.mean < math.inf):
        raise ValueError(
            f"the predicted mean squared singular value chi1^L ~ {jac.mean:.3g} leaves the "
            "float64 range at this depth; use a smaller depth"
        )
    rel_var_pred = jac.variance / jac.mean / jac.mean
    jac_tol = FINITE_WIDTH * depth / width
    mean_ratio = mean_se = rel_var = rel_var_se = math.nan
    if jacobian_seeds:
        with np.errstate(over="ignore", invalid="ignore"):
            ratio = np.exp(log_m1 - math.log(jac.mean)).mean(1)
            rv = np.expm1(log_m2 - 2 * log_m1).mean(1)
        if jacobian_seeds >= 2:
            (mean_ratio, mean_se), (rel_var, rel_var_se) = _mean_se(ratio), _mean_se(rv)
        else:
            mean_ratio, rel_var = float(ratio[0]), float(rv[0])
    jac_agrees = jacobian_seeds >= 2 and (
        _within(mean_ratio, mean_se, 1.0, jac_tol)
        and _within(rel_var, rel_var_se, rel_var_pred, jac_tol)
    )

    margin = Z * rate_se + grad_tol * rate
    measured_phase = (
        "ordered" if rate + margin < 1 else "chaotic" if rate - margin > 1 else "critical"
    )
    return Comparison(
        activation=activation,
        sigma_w2=sigma_w2,
        sigma_b2=sigma_b2,
        depth=depth,
        width=width,
        seeds=seeds,
        batch=batch,
        jacobian_seeds=jacobian_seeds,
        readout=readout,
        q1=q1,
        q_star=q_star,
        chi1=theory.chi1(activation, sigma_w2, sigma_b2),
        xi_q=theory.xi_q(activation, sigma_w2, sigma_b2),
        xi_c=theory.xi_c(activation, sigma_w2, sigma_b2),
        xi_grad=theory.xi_grad(activation, sigma_w2, sigma_b2),
        critical_sigma_w2=_critical(activation, sigma_b2),
        phase=theory.phase(activation, sigma_w2, sigma_b2),
        fit_layers=(first, last),
        grad_rate=rate,
        grad_rate_se=rate_se,
        grad_rate_pred=rate_pred,
        grad_log_profile=profile,
        grad_log_profile_pred=theory.predicted_grad_ratios(
            activation, sigma_w2, sigma_b2, depth, q1=q1
        ),
        jac_mean_pred=jac.mean,
        jac_mean_ratio=mean_ratio,
        jac_mean_ratio_se=mean_se,
        jac_rel_var_pred=rel_var_pred,
        jac_rel_var=rel_var,
        jac_rel_var_se=rel_var_se,
        grad_tol=grad_tol,
        jac_tol=jac_tol,
        grad_agrees=_within(rate, rate_se, rate_pred, grad_tol),
        jac_agrees=bool(jac_agrees),
        measured_phase=measured_phase,
        grad_log_sq=grad_log_sq,
        jac_log_m1=log_m1,
        jac_log_m2=log_m2,
    )


def _grad_and_jacobian(model, params, x, v, *, readout):
    grads = log_grad_sq(model, params, x, v, readout)
    return grads, jacobian_log_moments(model, params, x[:1])


def _default_chunk(depth: int, width: int) -> int:
    # ~256 MiB of float32 weights per chunk: the init's random draws and the backward pass hold
    # a few copies, so a chunk peaks near 1 GiB; larger chunks barely speed up a CPU.
    return max(1, min(64, (256 << 20) // (4 * depth * width * width)))


def _min_chunk(chunk, n: int):
    return min(chunk, n) if isinstance(chunk, int) else chunk


# --------------------------------------------------------------------------------------------
# Phase diagram data


class PhaseDiagram(NamedTuple):
    """chi1 over a (sigma_w2, sigma_b2) grid, the chi1 = 1 line and measured points.

    Attributes:
      activation: the nonlinearity.
      sigma_w2s, sigma_b2s: grid axes, (n_w,) and (n_b,).
      chi1: (n_w, n_b) ``theory.chi1_grid``.
      critical_b2, critical_w2: the order-to-chaos line, critical_w2[i] =
        ``theory.critical_sigma_w2(activation, critical_b2[i])`` (NaN where there is none).
      points_w2, points_b2, points_rate, points_se, points_pred: measured points (P,): where,
        the measured per-layer gradient growth rate with its SE, and chi1 there.
    """

    activation: str
    sigma_w2s: np.ndarray
    sigma_b2s: np.ndarray
    chi1: np.ndarray
    critical_b2: np.ndarray
    critical_w2: np.ndarray
    points_w2: np.ndarray
    points_b2: np.ndarray
    points_rate: np.ndarray
    points_se: np.ndarray
    points_pred: np.ndarray


def phase_diagram_data(
    activation: str,
    sigma_w2s,
    sigma_b2s,
    points=(),
    *,
    measured: tuple[Comparison, ...] = (),
    **compare_kwargs,
) -> PhaseDiagram:
    """Theory on a grid plus ``compare`` at a few (sigma_w2, sigma_b2) points, for plotting.

    Args:
      sigma_w2s, sigma_b2s: 1-D grid axes.
      points: (sigma_w2, sigma_b2) pairs to measure with ``compare(activation, sw, sb,
        **compare_kwargs)`` (which must give depth, width and seeds; Jacobians are skipped unless
        ``jacobian_seeds`` is given). All points share one compilation.
      measured: comparisons already made, added as points.

    Returns:
      :class:`PhaseDiagram`.
    """
    sw, sb = np.asarray(sigma_w2s, dtype=float), np.asarray(sigma_b2s, dtype=float)
    grid = theory.chi1_grid(activation, sw, sb)
    # The line rises steeply at small sigma_b2 (tanh: 1 at 0, 1.42 at 0.01): sample it finely.
    line_b2 = sb
    if sb.size and sb.max() > 0:
        line_b2 = np.union1d(sb, sb.max() * np.geomspace(1e-4, 1, 30))
    line = np.array([_critical(activation, b) for b in line_b2])
    compare_kwargs.setdefault("jacobian_seeds", 0)
    runs = [compare(activation, w, b, **compare_kwargs) for w, b in points] + list(measured)

    def field(name):
        return np.array([getattr(r, name) for r in runs], dtype=float)

    return PhaseDiagram(
        activation, sw, sb, grid, line_b2, line, field("sigma_w2"), field("sigma_b2"),
        field("grad_rate"), field("grad_rate_se"), field("grad_rate_pred"),
    )  # fmt: skip


# The printed table reads Z from here (gradflow.meanfield_table imports this module).
from gradflow.meanfield_table import format_comparison  # noqa: E402, F401
