"""Gradient explosion under BatchNorm at initialisation (Yang et al. 2019), numpy float64.

Setup (Yang, Pennington, Rao, Sohl-Dickstein & Schoenholz 2019, "A Mean Field Theory of Batch
Normalization", arXiv:1902.08129): ``h^l = W^l x^{l-1}``, ``x^l = phi(BN(h^l))`` with
``W^l_ij ~ N(0, sigma_w2 / n)``, one batch of B examples, BN with batch statistics, gain 1, offset
0 and eps 0, width n -> inf. Per neuron, BN maps the batch vector h in R^B to
``sqrt(B) G h / ||G h||`` with ``G = I - 1 1^T / B``; its Jacobian is

    J = sqrt(B) / ||G h|| * P,   P = G - y y^T,   y = G h / ||G h||,

so the back-propagated gradient (per neuron, a B-vector) always lies in range(G), and the
expected squared gradient norm grows by the same factor ``rate`` per layer going back, for the
weights too (Theorem 3.10). BN is scale invariant, so ``rate`` does not depend on sigma_w2, and at
the permutation-symmetric fixed point ``G h ~ N(0, a G)``: y is uniform on the unit sphere of
1^perp, independent of ``||G h||^2 = a chi^2_{B-1}``. With ``u = sqrt(B) y`` (BN's output),
``x = phi(u)``, ``D = diag(phi'(u))`` and ``E[1/chi^2_{B-1}] = 1/(B-3)``, the gradient-independence
recursion on the gradient's batch covariance has the eigenvector G with eigenvalue

    rate = B E[tr(P D G D P)] / ((B - 3) E[||G x||^2])                          (*)

(a = sigma_w2 E||Gx||^2 / (B - 1) from the forward pass). Linear phi: ``tr(P) = B - 2`` and
``||G x||^2 = B``, so rate = (B - 2)/(B - 3) exactly. ReLU has the closed form of the paper's
draft Theorem 8 (REFERENCES 7.2), decreasing from 3.084 at B = 4 to pi/(pi - 1) as B -> inf;
:func:`batchnorm_grad_rate_mc` evaluates (*) by Monte Carlo for any activation, an independent
check of both. The gradient norm itself (not squared) grows by ``sqrt(rate)`` per layer.
"""

from __future__ import annotations

import math

import numpy as np

from gradflow.activations import ACTIVATIONS

CLOSED_FORMS = ("linear", "relu")
"""Activations with a closed-form BatchNorm gradient rate."""


def _check_batch(batch_size, allow_inf: bool) -> np.ndarray:
    b = np.asarray(batch_size, dtype=np.float64)
    integer = np.isfinite(b) & (b == np.round(b))
    ok = (b >= 4) & (integer | (np.isposinf(b) & allow_inf))
    if not np.all(ok):
        more = " or inf" if allow_inf else ""
        raise ValueError(
            f"batch_size must be an int >= 4{more} (the rate is infinite for B <= 3), got "
            f"{batch_size!r}"
        )
    return b


def batchnorm_grad_rate(activation: str, batch_size):
    """Per-layer growth of E||dC/dW^l||^2 (going back) in a BatchNorm net at init, closed form.

    Args:
      activation: ``"linear"`` or ``"relu"`` (others: :func:`batchnorm_grad_rate_mc`).
      batch_size: B >= 4, an int, ``math.inf`` (the large-batch limit) or an array of them.

    Returns:
      float64 rate (shape of ``batch_size``): linear ``(B - 2)/(B - 3)`` (-> 1); relu
      ``(J'(c) + B - 1) / ((B - 3)(1 - J(c))) - 1/(B - 3)`` with ``c = -1/(B - 1)``,
      ``J(c) = (sqrt(1 - c^2) + (pi - arccos c) c) / pi`` and ``J'(c) = (pi - arccos c) / pi``
      (the normalised arc-cosine kernel), -> ``pi / (pi - 1)`` = 1.4669 as B -> inf.

    References:
      Yang et al. 2019 (arXiv:1902.08129), Theorem 3.10 and the draft's Theorem 8.
    """
    if activation not in CLOSED_FORMS:
        raise ValueError(
            f"no closed form for activation {activation!r} (have: {', '.join(CLOSED_FORMS)}); "
            "use batchnorm_grad_rate_mc"
        )
    b = _check_batch(batch_size, allow_inf=True)
    finite = np.where(np.isinf(b), 4.0, b)  # placeholder where B = inf; replaced below
    with np.errstate(divide="ignore"):
        if activation == "linear":
            rate = np.where(np.isinf(b), 1.0, (finite - 2) / (finite - 3))
        else:
            c = -1.0 / (finite - 1)
            theta = np.arccos(c)
            j = (np.sqrt(1 - c * c) + (np.pi - theta) * c) / np.pi
            dj = (np.pi - theta) / np.pi
            rate = (dj + finite - 1) / ((finite - 3) * (1 - j)) - 1 / (finite - 3)
            rate = np.where(np.isinf(b), np.pi / (np.pi - 1), rate)
    return rate[()] if rate.ndim == 0 else rate


def batchnorm_grad_rate_mc(
    activation: str, batch_size: int, *, n_samples: int = 200_000, seed: int = 0
) -> tuple[float, float]:
    """Monte Carlo estimate of the BatchNorm gradient rate (*) for any activation, float64.

    Draws ``n_samples`` batches z ~ N(0, I_B), sets ``y = G z / ||G z||`` (uniform on the unit
    sphere of 1^perp) and averages the numerator and denominator of (*) in the module docstring.

    Args:
      activation: a key of :data:`gradflow.ACTIVATIONS`. batch_size: B >= 4.
      n_samples: Monte Carlo batches. seed: the numpy Generator's seed (same seed, same result).

    Returns:
      ``(rate, standard_error)``: the ratio estimate and its delta-method standard error.
    """
    if activation not in ACTIVATIONS:
        raise ValueError(
            f"unknown activation {activation!r}; choose one of: {', '.join(ACTIVATIONS)}"
        )
    b = int(_check_batch(batch_size, allow_inf=False))
    if not (isinstance(n_samples, int) and n_samples >= 2):
        raise ValueError(f"n_samples must be an int >= 2, got {n_samples!r}")
    z = np.random.default_rng(seed).standard_normal((n_samples, b))
    gz = z - z.mean(axis=1, keepdims=True)
    y = gz / np.linalg.norm(gz, axis=1, keepdims=True)
    x, d, _ = ACTIVATIONS[activation].numpy(math.sqrt(b) * y)
    d2 = np.sum(d * d, axis=1)
    # tr(P D G D P) = tr(D G D P) (P is a projector) with G = I - 1 1^T/B, P = G - y y^T:
    num = (
        d2 * (1 - 2 / b)
        - np.sum(d * d * y * y, axis=1)
        + np.sum(d, axis=1) ** 2 / b**2
        + np.sum(d * y, axis=1) ** 2 / b
    )
    den = np.sum(x * x, axis=1) - np.sum(x, axis=1) ** 2 / b  # ||G x||^2
    m_num, m_den = num.mean(), den.mean()
    ratio = m_num / m_den
    # delta method for a ratio of means: var(num - ratio den) / (n m_den^2)
    se = np.std(num - ratio * den, ddof=1) / (math.sqrt(n_samples) * m_den)
    scale = b / (b - 3)
    return float(scale * ratio), float(scale * se)
