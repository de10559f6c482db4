"""Tests for the BatchNorm gradient-explosion rates (gradflow.theory_norm, re-exported by
gradflow.theory): the closed forms against REFERENCES 7.2 and against an independent Monte Carlo
evaluation of the mean-field recursion, the B -> inf limits, and input validation.

The network-level check (a measured BatchNorm net against these rates) is in
tests/test_figures_modern.py."""

import math

import numpy as np
import pytest

from gradflow import theory


def test_relu_closed_form_matches_the_papers_numbers():
    # REFERENCES 7.2 [C]: the draft's Theorem 8 evaluated to 3 decimals; 6e-4 covers the
    # rounding (half a unit in the last place is 5e-4) and nothing more.
    paper = {4: 3.084, 8: 1.788, 16: 1.590, 32: 1.522, 64: 1.493, 128: 1.480}
    got = theory.batchnorm_grad_rate("relu", list(paper))
    np.testing.assert_allclose(got, list(paper.values()), atol=6e-4)
    assert theory.batchnorm_grad_rate("relu", math.inf) == pytest.approx(math.pi / (math.pi - 1))


def test_limits_and_monotone_decrease():
    b = np.array([4, 5, 6, 8, 16, 100, 1000, 10**6])
    for activation, limit in (("relu", math.pi / (math.pi - 1)), ("linear", 1.0)):
        r = theory.batchnorm_grad_rate(activation, b)
        assert np.all(np.diff(r) < 0) and np.all(r > limit), (activation, r)
        # at B = 1e6 the 1/B corrections are ~1e-6 of the limit
        assert r[-1] == pytest.approx(limit, rel=1e-5)
    # linear: (B - 2)/(B - 3) exactly, written out here
    np.testing.assert_allclose(theory.batchnorm_grad_rate("linear", b), (b - 2) / (b - 3))


@pytest.mark.parametrize("batch_size", [4, 8, 32])
def test_monte_carlo_of_the_recursion_matches_the_relu_closed_form(batch_size):
    # The Monte Carlo estimates the mean-field recursion (theory_norm's eq. (*)) directly from
    # sampled batches, with no use of the arc-cosine closed form: agreement within 4 standard
    # errors (a fixed seed, so deterministic) checks both. Measured: within ~1 SE for B = 4..128.
    rate, se = theory.batchnorm_grad_rate_mc("relu", batch_size, n_samples=100_000, seed=1)
    want = theory.batchnorm_grad_rate("relu", batch_size)
    assert abs(rate - want) < 4 * se, (rate, se, want)
    assert se < 0.005 * want  # the test has teeth: a 2% error in the formula would fail it


def test_monte_carlo_linear_is_exact():
    # For linear phi the sampled numerator and denominator are constants (B - 2 and B), so any
    # sample gives (B - 2)/(B - 3) to rounding: a check of the trace algebra in the estimator.
    for b in (4, 7, 50):
        rate, se = theory.batchnorm_grad_rate_mc("linear", b, n_samples=50, seed=3)
        assert rate == pytest.approx((b - 2) / (b - 3), rel=1e-12) and se < 1e-12


def test_monte_carlo_other_activations_explode_and_are_deterministic():
    # Yang et al. Theorem 3.9: every non-constant activation explodes (rate > 1) under BN.
    for activation in ("tanh", "sigmoid", "gelu"):
        rate, se = theory.batchnorm_grad_rate_mc(activation, 16, n_samples=20_000, seed=0)
        assert rate - 1 > 10 * se, (activation, rate, se)
    a = theory.batchnorm_grad_rate_mc("tanh", 8, n_samples=1000, seed=5)
    assert a == theory.batchnorm_grad_rate_mc("tanh", 8, n_samples=1000, seed=5)
    assert a != theory.batchnorm_grad_rate_mc("tanh", 8, n_samples=1000, seed=6)


def test_bad_input():
    with pytest.raises(ValueError, match="batch_size must be an int >= 4 or inf"):
        theory.batchnorm_grad_rate("relu", 3)
    with pytest.raises(ValueError, match="batch_size must be an int >= 4"):
        theory.batchnorm_grad_rate("relu", [8, 4.5])
    with pytest.raises(ValueError, match="no closed form for activation 'tanh'.*_mc"):
        theory.batchnorm_grad_rate("tanh", 8)
    with pytest.raises(ValueError, match=r"batch_size must be an int >= 4 \("):
        theory.batchnorm_grad_rate_mc("relu", math.inf)
    with pytest.raises(ValueError, match="unknown activation 'swish'"):
        theory.batchnorm_grad_rate_mc("swish", 8)
    with pytest.raises(ValueError, match="n_samples must be an int >= 2"):
        theory.batchnorm_grad_rate_mc("relu", 8, n_samples=1)
