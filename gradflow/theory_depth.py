"""Mean-field predictions layer by layer at finite depth (numpy float64), from the maps of
:mod:`gradflow.theory` (which re-exports everything here).

* :func:`q_sequence`: the pre-activation variances q^1..q^L, following the transient from q^1;
* :func:`predicted_grad_ratios`: E||dC/dz^l||^2 / E||dC/dz^L||^2 as products of chi1^l;
* :func:`jacobian_moments`: mean and variance of the input-output Jacobian's squared singular
  values (free probability, Pennington et al. 2017/2018).
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

# gradflow.theory imports this module after defining these names (its last statement).
from gradflow.theory import _check, _expect, _q, chi1, q_map


def q_sequence(activation: str, sigma_w2: float, sigma_b2: float, depth: int, q1=None):
    """Pre-activation variances q^1..q^depth, q^{l+1} = q_map(q^l), shape (depth,).

    q1 = q^1 = sigma_w2 mean(x^2) + sigma_b2 for an input x; None starts at q* (constant).
    """
    _check(activation, sigma_w2, sigma_b2)
    if not (isinstance(depth, int | np.integer) and depth >= 1):
        raise ValueError(f"depth must be an int >= 1, got {depth!r}")
    qs = np.full(depth, float(_q(activation, sigma_w2, sigma_b2, q1)))
    for l in range(1, depth if q1 is not None else 0):
        qs[l] = q_map(qs[l - 1], activation, sigma_w2, sigma_b2)
        if abs(qs[l] - qs[l - 1]) <= 1e-15 * qs[l]:  # converged: the rest is constant
            qs[l:] = qs[l]
            break
    return qs


def predicted_grad_ratios(
    activation: str, sigma_w2: float, sigma_b2: float, depth: int, *, q1=None, log: bool = True
) -> np.ndarray:
    """Predicted log(E||dC/dz^l||^2 / E||dC/dz^L||^2) for layers l = 1..L = depth, shape (L,).

    dC/dz^l = D^l W^{l+1 T} dC/dz^{l+1}, D^l = diag(phi'(z^l)), so under gradient independence
    E||dC/dz^l||^2 = chi1^l E||dC/dz^{l+1}||^2 with chi1^l = sigma_w2 E[phi'(sqrt(q^l) z)^2], for
    any widths (fan-in scaling). Entry l-1 is sum_{k=l}^{L-1} log chi1^k, so the last is 0; at q*
    it is (L - l) log chi1 = -(L - l) / xi_grad. z^L is the output of ``models.mlp``. Weight
    gradients (||a^{l-1}||^2 ||dC/dz^l||^2) share the ratios once q has converged, widths equal.

    Args:
      depth: L, the number of layers (weight matrices).
      q1: the first layer's pre-activation variance (see ``q_sequence``), to follow the q
        transient layer by layer as finite-depth measurements do; None: q = q* throughout.
      log: natural-log ratios (default) or the ratios themselves.

    References:
      Schoenholz et al. 2017 (arXiv:1611.01232).
    """
    qs = q_sequence(activation, sigma_w2, sigma_b2, depth, q1)
    logchi = np.log(chi1(activation, sigma_w2, sigma_b2, q=qs[:-1]))
    out = np.append(np.cumsum(logchi[::-1])[::-1], 0.0)
    return out if log else np.exp(out)


class JacobianMoments(NamedTuple):
    """Moments of the squared singular values of the input-output Jacobian (eigenvalues of JJ^T).

    Attributes:
      mean: m1 = tr(JJ^T) / N, the mean squared singular value.
      variance: m2 - m1^2, the variance of the squared singular values.
    """

    mean: float
    variance: float


def jacobian_moments(
    activation: str,
    sigma_w2: float,
    sigma_b2: float,
    depth: int,
    *,
    weights: str = "gaussian",
    q1=None,
    linear_readout: bool = False,
) -> JacobianMoments:
    """Mean and variance of the squared singular values of J = D^L W^L ... D^1 W^1 (N -> inf).

    The D^l and W^l are asymptotically free, and normalised variances v = m2 / m1^2 - 1 add
    under free products (m1(AB) = m1(A) m1(B), m2(AB) = m2(A) m1(B)^2 + m1(A)^2 m2(B)
    - m1(A)^2 m1(B)^2). So with mu_k^l = E[(sigma_w2 phi'(sqrt(q^l) z)^2)^k]:

        mean = prod_l mu_1^l = prod_l chi1^l,
        variance = mean^2 sum_l (mu_2^l / (mu_1^l)^2 - 1 - s1),

    s1 = -1 for Gaussian W (v(W W^T) = 1, Marchenko-Pastur) and 0 for orthogonal W. At
    criticality with q = q* this is Pennington et al.'s sigma^2_JJ^T = L (mu2/mu1^2 - 1 - s1):
    variance / L = 1 linear Gaussian, 0 linear orthogonal, 2 relu Gaussian, 1 relu orthogonal.

    Args:
      depth: L, the number of layers.
      weights: "gaussian" or "orthogonal" (the ``models`` init names).
      q1: follow the q transient from q^1 = q1 (see ``q_sequence``); None: q = q* throughout.
      linear_readout: the last layer has no phi (D^L = I), as in ``models.mlp`` by default.

    References:
      Pennington, Schoenholz, Ganguli 2017 (arXiv:1711.04735) and 2018 (arXiv:1802.09979).
    """
    if weights not in ("gaussian", "orthogonal"):
        raise ValueError(f"weights must be 'gaussian' or 'orthogonal', got {weights!r}")
    qs = q_sequence(activation, sigma_w2, sigma_b2, depth, q1)
    mu1 = sigma_w2 * _expect(activation, "kd", qs)
    mu2 = sigma_w2**2 * _expect(activation, "d4", qs)
    if linear_readout:
        mu1[-1], mu2[-1] = sigma_w2, sigma_w2**2
    rel_var = float(np.sum(mu2 / mu1**2 - 1 - (-1.0 if weights == "gaussian" else 0.0)))
    with np.errstate(over="ignore", under="ignore"):  # very deep nets: inf and 0 are the answers
        mean = float(np.exp(np.sum(np.log(mu1))))
        return JacobianMoments(mean, 0.0 if rel_var == 0 else mean**2 * rel_var)
