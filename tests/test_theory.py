"""Tests for gradflow.theory: closed forms vs quadrature vs scipy.integrate.quad, the numbers in
REFERENCES.md sections 3.1 and 4, Monte Carlo checks of the maps, and input validation."""

import math

import jax.numpy as jnp
import numpy as np
import pytest
from scipy import integrate, optimize

from gradflow import theory
from gradflow.activations import ACTIVATIONS


def test_numpy_activations_match_models_and_their_derivatives():
    assert list(theory.PHI) == list(ACTIVATIONS)
    x = np.concatenate([np.linspace(-6, -0.05, 60), np.linspace(0.05, 6, 60)])  # off the kink
    h = 1e-5
    for name, phi in theory.PHI.items():
        f, d1, d2 = phi(x)
        # jax runs in float32 here: 1e-6 is a few float32 ulps at |phi| <= 6.
        np.testing.assert_allclose(f, ACTIVATIONS[name].fn(jnp.asarray(x)), rtol=1e-6, atol=1e-6)
        # central differences in float64: truncation h^2 |phi'''| + rounding eps/h, both < 1e-9.
        np.testing.assert_allclose(d1, (phi(x + h)[0] - phi(x - h)[0]) / (2 * h), atol=1e-9)
        np.testing.assert_allclose(d2, (phi(x + h)[1] - phi(x - h)[1]) / (2 * h), atol=1e-9)


@pytest.mark.parametrize("activation", ["linear", "relu", "leaky_relu", "erf"])
@pytest.mark.parametrize("what", ["k", "kd", "d4", "pdd"])
def test_closed_forms_equal_quadrature(activation, what):
    cs = np.array([1.0]) if what in ("d4", "pdd") else np.array([-1, -0.6, 0, 0.5, 0.99, 1.0])
    for q in [0.0, 1e-3, 0.4, 1.0, 3.0, 20.0]:
        closed = theory._expect(activation, what, q, cs, method="closed")
        quad = np.array([theory._expect(activation, what, q, c, method="quadrature") for c in cs])
        # The quadrature is accurate to ~1e-13 for q <= 30 (module docstring); 1e-8 is the
        # brief's bar, relative to the size of the values (up to ~q).
        np.testing.assert_allclose(quad, closed, rtol=1e-8, atol=1e-8)


def _q_star_brute(activation, sigma_w2, sigma_b2):
    phi = theory.PHI[activation]

    def q_map(q):
        def g(z):
            return phi(math.sqrt(q) * z)[0] ** 2 * math.exp(-z * z / 2) / math.sqrt(2 * math.pi)

        # Split at the kink / steepest point z = 0; |z| > 12 carries < 1e-30 of the mass.
        halves = [
            integrate.quad(g, a, b, epsabs=1e-14, epsrel=1e-13)[0] for a, b in ((-12, 0), (0, 12))
        ]
        return sigma_w2 * sum(halves) + sigma_b2

    return optimize.brentq(lambda q: q_map(q) - q, 1e-9, 100.0, xtol=1e-14, rtol=1e-14)


@pytest.mark.parametrize(
    "activation, sigma_w2, sigma_b2",
    [("tanh", 1.5, 0.05), ("tanh", 4.0, 1.0), ("sigmoid", 2.0, 0.1), ("selu", 1.5, 0.05),
     ("gelu", 1.5, 0.05), ("erf", 2.0, 0.1), ("softplus", 1.0, 0.1), ("relu", 1.5, 0.2)],
)  # fmt: skip
def test_q_star_matches_brute_force_scipy_quad(activation, sigma_w2, sigma_b2):
    expected = _q_star_brute(activation, sigma_w2, sigma_b2)
    # quad's 1e-13 error in the map, amplified by 1 / (1 - d q_map / dq) <= ~10 at the root.
    assert theory.q_star(activation, sigma_w2, sigma_b2) == pytest.approx(expected, rel=1e-10)


# REFERENCES.md section 3.1, first table: (sigma_b2, critical sigma_w2, q* there) for tanh.
CRITICAL_TANH = [
    (1e-4, 1.0860, 0.0457), (0.01, 1.4242, 0.2733), (0.02, 1.5442, 0.3712),
    (0.05, 1.7610, 0.570), (0.09, 1.9477, 0.7635), (0.1, 1.9861, 0.8058),
    (0.2, 2.2852, 1.164), (0.5, 2.8432, 1.971), (1.0, 3.4432, 3.036),
]  # fmt: skip


@pytest.mark.parametrize("sigma_b2, sigma_w2, q", CRITICAL_TANH)
def test_tanh_critical_line_matches_references(sigma_b2, sigma_w2, q):
    s = theory.critical_sigma_w2("tanh", sigma_b2)
    assert abs(s - sigma_w2) < 1e-4  # the table is rounded to 4 decimals (issue asks 1e-3)
    assert abs(theory.q_star("tanh", s, sigma_b2) - q) < 1e-3  # rounded to 3-4 digits
    assert theory.chi1("tanh", s, sigma_b2) == pytest.approx(1.0, abs=1e-10)  # brentq's xtol
    assert theory.phase("tanh", s, sigma_b2) == "critical"


# REFERENCES.md section 3.1, second table (tanh, sigma_b2 = 0.05):
# sigma_w2, q*, chi1, c*, xi_c, xi_q, chi1^50.
SCHOENHOLZ_SLICE = [
    (1.00, 0.1936, 0.7590, 1, 3.63, 1.75, 1.0e-6),
    (1.25, 0.2921, 0.8632, 1, 6.80, 1.80, 6.4e-4),
    (1.50, 0.4180, 0.9386, 1, 15.8, 1.68, 0.042),
    (1.70, 0.5331, 0.9867, 1, 74.9, 1.56, 0.51),
    (1.75, 0.5633, 0.9977, 1, 426, 1.53, 0.89),
    (1.80, 0.5941, 1.0082, 0.9504, 126, 1.50, 1.51),
    (2.00, 0.7218, 1.0477, 0.7441, 25.2, 1.39, 10.3),
    (2.50, 1.0640, 1.1335, 0.4468, 11.8, 1.18, 526),
    (3.00, 1.4280, 1.2089, 0.2993, 9.05, 1.04, 1.3e4),
    (4.00, 2.1955, 1.3424, 0.1651, 6.98, 0.87, 2.5e6),
]


@pytest.mark.parametrize("sigma_w2, q, chi, c, xic, xiq, chi50", SCHOENHOLZ_SLICE)
def test_tanh_schoenholz_slice_matches_references(sigma_w2, q, chi, c, xic, xiq, chi50):
    args = ("tanh", sigma_w2, 0.05)
    # Tolerances are the table's rounding: 4 significant digits for q* and chi1, 4 decimals for
    # c*, 3 significant digits for xi_c, 2 decimals for xi_q and 2 significant digits for chi1^50.
    assert theory.q_star(*args) == pytest.approx(q, rel=5e-4)
    assert theory.chi1(*args) == pytest.approx(chi, rel=5e-4)
    assert theory.c_star(*args) == pytest.approx(c, abs=1e-4)
    assert theory.xi_c(*args) == pytest.approx(xic, rel=2e-3)
    assert theory.xi_q(*args) == pytest.approx(xiq, abs=5e-3)
    log_ratio = theory.predicted_grad_ratios(*args, depth=51)[0]  # layer 1 vs layer 51
    assert math.exp(log_ratio) == pytest.approx(chi50, rel=4e-2)
    assert theory.phase(*args) == ("ordered" if chi < 1 else "chaotic")


def test_relu_is_exactly_critical_at_two_and_scale_free():
    assert theory.critical_sigma_w2("relu", 0.0) == 2.0
    assert theory.critical_sigma_w2("relu", 0.3) == 2.0  # chi1 = sigma_w2 / 2 for every q
    for s in [0.5, 1.0, 2.0, 3.0]:
        assert theory.chi1("relu", s, 0.0) == s / 2
        assert theory.chi1("relu", s, 0.1) == s / 2
    assert theory.phase("relu", 2.0, 0.0) == "critical"
    assert theory.xi_grad("relu", 2.0, 0.0) == math.inf
    assert theory.xi_grad("relu", 1.0, 0.0) == pytest.approx(1 / math.log(2), rel=1e-15)
    assert theory.xi_grad("relu", 3.0, 0.0) < 0  # exploding
    # The length map is affine, q -> sigma_w2 q / 2 + sigma_b2.
    assert theory.q_star("relu", 1.5, 0.1) == pytest.approx(0.4, rel=1e-15)
    assert theory.q_star("relu", 1.0, 0.0) == 0.0
    assert theory.q_star("relu", 2.5, 0.1) == math.inf
    assert theory.q_star("relu", 2.0, 0.1) == math.inf
    assert theory.q_star("relu", 2.0, 0.0, q0=3.0) == 3.0  # He init preserves every length
    assert theory.critical_sigma_w2("leaky_relu", 0.0) == pytest.approx(2 / (1 + 1e-4), rel=1e-15)


def test_critical_sigma_w2_where_q_star_jumps_to_infinity():
    # gelu without bias: q* drops to 0 below the edge and is inf above it, so chi1 jumps across
    # 1 (from ~0.59 to ~1.18) instead of crossing it; the edge is still located (brentq xtol).
    s = theory.critical_sigma_w2("gelu", 0.0)
    below, above = s * (1 - 1e-9), s * (1 + 1e-9)
    assert (
        theory.q_star("gelu", below, 0.0) == 0.0 and theory.q_star("gelu", above, 0.0) == math.inf
    )
    assert theory.phase("gelu", below, 0.0) == "ordered"
    assert theory.phase("gelu", above, 0.0) == "chaotic"


def test_exact_critical_points_without_bias():
    # q* = 0 below the line, so chi1 = sigma_w2 phi'(0)^2 there: tanh at 1, erf at pi / 4.
    assert theory.q_star("tanh", 0.8, 0.0) == 0.0
    assert theory.chi1("tanh", 0.8, 0.0) == pytest.approx(0.8, rel=1e-15)
    # Just above the line chi1 - 1 ~ (sigma_w2 - 1)^2 / 3, so float64 resolves the root to ~1e-7.
    assert theory.critical_sigma_w2("tanh", 0.0) == pytest.approx(1.0, abs=1e-6)
    assert theory.critical_sigma_w2("erf", 0.0) == pytest.approx(math.pi / 4, abs=1e-6)
    assert theory.critical_sigma_w2("linear", 0.0) == 1.0
    # SELU's constants make N(0, 1) a fixed point at sigma_w2 = 1 (Klambauer et al. 2017).
    assert theory.q_star("selu", 1.0, 0.0) == pytest.approx(1.0, rel=1e-9)


@pytest.mark.parametrize("activation", ["tanh", "relu", "selu", "erf"])
def test_maps_match_monte_carlo_wide_layers(activation):
    rng = np.random.default_rng(0)
    sigma_w2, sigma_b2, q, c, n, m, reps = 1.7, 0.05, 0.7, 0.6, 256, 256, 200
    phi = theory.PHI[activation]
    # reps independent layers of width n -> m, each fed two inputs of variance q, correlation c.
    z1, z2 = rng.standard_normal((2, reps, n))
    h_a, h_b = math.sqrt(q) * z1, math.sqrt(q) * (c * z1 + math.sqrt(1 - c * c) * z2)
    w = rng.standard_normal((reps, n, m)) * math.sqrt(sigma_w2 / n)
    b = rng.standard_normal((reps, m)) * math.sqrt(sigma_b2)
    out_a = np.einsum("rn,rnm->rm", phi(h_a)[0], w) + b
    out_b = np.einsum("rn,rnm->rm", phi(h_b)[0], w) + b
    q_out = theory.q_map(q, activation, sigma_w2, sigma_b2)
    expected = {
        "q_map": q_out,  # E[out^2] is exact at any width
        "q_ab": theory.c_map(c, activation, sigma_w2, sigma_b2, q=q) * q_out,
        "chi1": theory.chi1(activation, sigma_w2, sigma_b2, q=q),
    }
    samples = {
        "q_map": np.mean(out_a**2, axis=1),
        "q_ab": np.mean(out_a * out_b, axis=1),
        "chi1": sigma_w2 * np.mean(phi(h_a)[1] ** 2, axis=1),
    }
    for key, x in samples.items():
        se = x.std(ddof=1) / math.sqrt(reps)
        # Fixed seed, independent replicate layers: 4 standard errors (deterministic, not flaky).
        assert abs(x.mean() - expected[key]) < 4 * se, (key, x.mean(), expected[key], se)


@pytest.mark.parametrize(
    "activation, sigma_w2, sigma_b2",
    [("tanh", 2.5, 0.1), ("erf", 1.5, 0.05), ("selu", 1.5, 0.05), ("tanh", 1.2, 0.05),
     ("sigmoid", 3.0, 0.2), ("gelu", 1.5, 0.05), ("softplus", 1.0, 0.1)],
)  # fmt: skip
def test_fixed_points_and_slopes_are_consistent(activation, sigma_w2, sigma_b2):
    args = (activation, sigma_w2, sigma_b2)
    q, c = theory.q_star(*args), theory.c_star(*args)
    assert theory.q_map(q, *args) == pytest.approx(q, rel=1e-13)  # brentq polishes to ~1e-15
    assert theory.c_map(c, *args) == pytest.approx(c, abs=1e-12)
    assert theory.c_map(1.0, *args) == pytest.approx(1.0, rel=1e-14)
    # Slopes by central differences (step 1e-5: error ~1e-10 relative) vs the closed expressions.
    h = 1e-5
    dq = (theory.q_map(q + h, *args) - theory.q_map(q - h, *args)) / (2 * h)
    assert -1 / math.log(dq) == pytest.approx(theory.xi_q(*args), rel=1e-6)
    lo, hi = max(c - h, -1.0), min(c + h, 1.0)
    dc = (theory.c_map(hi, *args) - theory.c_map(lo, *args)) / (hi - lo)
    assert dc == pytest.approx(theory.chi_c(*args), rel=1e-5)  # one-sided at c* = 1: O(h)
    assert theory.chi_c(*args) <= 1 + 1e-12  # c* is the stable fixed point


def test_chaotic_odd_activation_without_bias_decorrelates():
    assert theory.c_star("tanh", 2.0, 0.0) == pytest.approx(0.0, abs=1e-12)
    assert theory.c_star("tanh", 0.5, 0.0) == 1.0


def test_predicted_grad_ratios_converged_and_transient():
    args = ("tanh", 1.5, 0.05)
    chi, q = theory.chi1(*args), theory.q_star(*args)
    r = theory.predicted_grad_ratios(*args, depth=6)
    np.testing.assert_allclose(r, np.arange(5, -1, -1) * math.log(chi), rtol=1e-14)
    np.testing.assert_allclose(theory.predicted_grad_ratios(*args, depth=6, q1=q), r, rtol=1e-12)
    qs = theory.q_sequence(*args, depth=6, q1=3.0)
    assert qs[0] == 3.0 and qs[1] == pytest.approx(theory.q_map(3.0, *args), rel=1e-15)
    chis = theory.chi1(*args, q=qs)
    transient = theory.predicted_grad_ratios(*args, depth=6, q1=3.0)
    np.testing.assert_allclose(transient[:-1], np.cumsum(np.log(chis[:-1])[::-1])[::-1], rtol=1e-12)
    assert transient[-1] == 0.0
    np.testing.assert_allclose(
        theory.predicted_grad_ratios(*args, depth=6, log=False), np.exp(r), rtol=1e-14
    )


def test_jacobian_moments_at_criticality_match_pennington():
    # REFERENCES 4: sigma^2_JJ^T / L = mu2/mu1^2 - 1 - s1 exactly, for the analytic cases.
    for activation, sigma_w2, gaussian, orthogonal in [("linear", 1.0, 1, 0), ("relu", 2.0, 2, 1)]:
        for weights, per_layer in (("gaussian", gaussian), ("orthogonal", orthogonal)):
            m = theory.jacobian_moments(activation, sigma_w2, 0.0, 8, weights=weights)
            assert m.mean == pytest.approx(1.0, rel=1e-14)
            assert m.variance / 8 == pytest.approx(per_layer, abs=1e-14)
    # Section 4.1's random-matrix measurements (N = 400, L = 8, 6 seeds) carry finite-N bias and
    # seed noise of ~10%; the prediction must fall within 15% (orthogonal tanh: 0.0115 vs 0.012).
    for sigma_w2, sigma_b2, gaussian, orthogonal in [
        (1.086, 1e-4, 1.05, 0.012),
        (1.761, 0.05, 1.40, 0.37),
    ]:
        s = theory.critical_sigma_w2("tanh", sigma_b2)
        assert s == pytest.approx(sigma_w2, abs=1e-3)
        for weights, measured in (("gaussian", gaussian), ("orthogonal", orthogonal)):
            m = theory.jacobian_moments("tanh", s, sigma_b2, 8, weights=weights)
            assert m.variance / 8 == pytest.approx(measured, rel=0.15)


def test_jacobian_moments_off_criticality():
    args = ("tanh", 1.5, 0.05)
    chi = theory.chi1(*args)
    m = theory.jacobian_moments(*args, 10)
    assert m.mean == pytest.approx(chi**10, rel=1e-12)
    d4 = theory._expect("tanh", "d4", theory.q_star(*args)) * 1.5**2
    assert m.variance == pytest.approx(chi**20 * 10 * (d4 / chi**2 - 1 + 1), rel=1e-12)
    readout = theory.jacobian_moments(*args, 10, linear_readout=True)
    assert readout.mean == pytest.approx(1.5 * chi**9, rel=1e-12)
    deep = theory.jacobian_moments(*args, 20_000)  # underflows to 0 without a warning
    assert deep.mean == 0.0 and deep.variance == 0.0


def test_chi1_grid_matches_pointwise():
    sw, sb = np.array([1.0, 1.7610, 3.0]), np.array([0.0, 0.05])
    grid = theory.chi1_grid("tanh", sw, sb)
    assert grid.shape == (3, 2)
    expected = [[theory.chi1("tanh", w, b) for b in sb] for w in sw]
    np.testing.assert_array_equal(grid, expected)
    assert grid[1, 1] == pytest.approx(1.0, abs=1e-4)  # on the critical line (4-decimal input)


def test_bad_input_raises_helpful_errors():
    with pytest.raises(ValueError, match="unknown activation 'swish'.*tanh.*relu"):
        theory.q_star("swish", 1.0, 0.0)
    with pytest.raises(ValueError, match="sigma_w2 must be finite and > 0"):
        theory.chi1("tanh", -1.0, 0.0)
    with pytest.raises(ValueError, match="sigma_w2"):
        theory.q_map(1.0, "tanh", 0.0, 0.0)
    with pytest.raises(ValueError, match="sigma_b2 must be finite and >= 0"):
        theory.critical_sigma_w2("tanh", -0.1)
    with pytest.raises(ValueError, match="sigma_b2"):
        theory.phase("tanh", 1.0, float("nan"))
    with pytest.raises(ValueError, match="q must be >= 0"):
        theory.q_map(-1.0, "tanh", 1.0, 0.0)
    with pytest.raises(ValueError, match=r"c must lie in \[-1, 1\]"):
        theory.c_map(1.5, "tanh", 1.0, 0.05)
    with pytest.raises(ValueError, match="depth must be an int >= 1"):
        theory.predicted_grad_ratios("tanh", 1.0, 0.05, 0)
    with pytest.raises(ValueError, match="weights must be 'gaussian' or 'orthogonal'"):
        theory.jacobian_moments("tanh", 1.0, 0.05, 3, weights="uniform")
    with pytest.raises(ValueError, match="no closed form for 'tanh'"):
        theory._expect("tanh", "k", 1.0, method="closed")
    with pytest.raises(ValueError, match="1-D"):
        theory.chi1_grid("tanh", np.ones((2, 2)), [0.0])
