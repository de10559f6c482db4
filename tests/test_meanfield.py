"""Tests for gradflow.meanfield (theory next to measurement), ``gradflow theory`` and the phase
diagram.

Statistical tests use fixed keys, so they are deterministic. Each states its tolerance: 4
standard errors across seeds (the sampling noise) plus the finite-width allowance of the module
(``FINITE_WIDTH / width`` per layer, times depth for the Jacobian of the whole network), since the
theory is the width -> infinity limit and corrections are O(1/width) per layer (Hanin 2018).
Measured at width 256, depth 16 and 512 seeds, the biases were at most 0.13% per layer for the
gradient rate (allowance 0.39%), within noise for the Jacobian mean and +3.5% for its relative
variance (allowance 6%).
"""

import math

import jax
import numpy as np
import pytest

from gradflow import cli, meanfield, plots, theory

SIGMA_B2 = 0.05
DEPTH, WIDTH, SEEDS = 10, 256, 64
CRITICAL = theory.critical_sigma_w2("tanh", SIGMA_B2)  # 1.7610 (REFERENCES.md 3.1)


def _close(measured, se, predicted, rel_allowance):
    """|measured - predicted| <= 4 SE + rel_allowance * |predicted|, with a readable message."""
    bound = 4 * se + rel_allowance * abs(predicted)
    assert abs(measured - predicted) <= bound, (
        f"measured {measured:.5g} ± {se:.2g} vs predicted {predicted:.5g}: off by "
        f"{abs(measured - predicted):.3g} > 4 SE + {rel_allowance:.2%} = {bound:.3g}"
    )


@pytest.fixture(scope="module")
def phases():
    # One compilation serves all three: the variances are traced (sweep's hyper=).
    return {
        phase: meanfield.compare(
            "tanh", sigma_w2, SIGMA_B2, DEPTH, WIDTH, SEEDS, batch=4, jacobian_seeds=SEEDS
        )
        for phase, sigma_w2 in (("ordered", 1.0), ("critical", CRITICAL), ("chaotic", 3.0))
    }


@pytest.mark.parametrize("phase", ["ordered", "critical", "chaotic"])
def test_gradient_growth_per_layer_is_chi1(phases, phase):
    c = phases[phase]
    assert c.phase == phase and c.measured_phase == phase
    assert c.fit_layers == (1, DEPTH - 1)  # inputs on the q* shell: no q transient
    assert c.grad_rate_pred == pytest.approx(c.chi1, rel=1e-12)
    _close(c.grad_rate, c.grad_rate_se, c.chi1, meanfield.FINITE_WIDTH / WIDTH)
    # The bound is tight enough to mean something: well under the gap between the phases.
    assert 4 * c.grad_rate_se + c.chi1 / WIDTH < 0.02
    assert c.grad_agrees  # the module's own verdict (3 SE + allowance)


@pytest.mark.parametrize("phase", ["ordered", "critical", "chaotic"])
def test_jacobian_moments_match_theory(phases, phase):
    c = phases[phase]
    # chi1^l for the L - 1 hidden layers, sigma_w2 for the linear readout layer.
    assert c.jac_mean_pred == pytest.approx(c.sigma_w2 * c.chi1 ** (DEPTH - 1), rel=1e-10)
    allowance = meanfield.FINITE_WIDTH * DEPTH / WIDTH  # 3.9%
    _close(c.jac_mean_ratio, c.jac_mean_ratio_se, 1.0, allowance)
    _close(c.jac_rel_var, c.jac_rel_var_se, c.jac_rel_var_pred, allowance)
    assert c.jac_agrees


def test_profile_follows_predicted_grad_ratios(phases):
    c = phases["chaotic"]
    pred = theory.predicted_grad_ratios("tanh", 3.0, SIGMA_B2, DEPTH, q1=c.q_star)
    np.testing.assert_allclose(c.grad_log_profile_pred, pred, rtol=1e-12)
    assert c.grad_log_profile[-1] == 0.0
    # log E||g^1||^2 / E||g^L||^2 = 9 log chi1 = -1.71: seed means of 64 nets agree to ~5%.
    np.testing.assert_allclose(c.grad_log_profile, pred, rtol=0.05, atol=0.02)


def test_mse_readout_breaks_gradient_independence_near_the_output():
    # With C = 0.5 ||f(x) - y||^2, dC/dz^L = f(x) - y depends on W^L, so the last ratio is off
    # by O(1), not O(1/width): compare skips the last 3 by default; the rest follow chi1.
    c = meanfield.compare("tanh", 1.5, SIGMA_B2, 8, WIDTH, SEEDS, batch=4, readout="mse")
    assert c.fit_layers == (1, 8 - 4)
    _close(c.grad_rate, c.grad_rate_se, c.chi1, meanfield.FINITE_WIDTH / WIDTH)
    last = np.exp(c.grad_log_sq[:, -2] - c.grad_log_sq[:, -1])
    assert last.mean() - c.chi1 > 10 * last.std() / math.sqrt(SEEDS)


# Small nets share one shape (depth 8, width 16, batch 2, chunks of 2), so one compilation of
# each per-seed function serves all the tests below.
SMALL = dict(batch=2, chunk_size=2)
SMALL_ARGV = ["--depth", "8", "--width", "16", "--batch", "2", "--chunk-size", "2"]


def test_q_transient_is_skipped_and_predicted():
    args = ("tanh", 3.0, SIGMA_B2)
    q_star = theory.q_star(*args)
    q1 = 1.05 * q_star  # converges (to 1e-3) within ~4 layers: xi_q = 1.04 here
    c = meanfield.compare(*args, 8, 16, 4, jacobian_seeds=2, q1=q1, **SMALL)
    qs = theory.q_sequence(*args, 8, q1)
    first = c.fit_layers[0]  # the first layer with |q^l - q*| <= 1e-3 q*
    assert first > 1 and abs(qs[first - 1] - q_star) <= 1e-3 * q_star
    assert abs(qs[first - 2] - q_star) > 1e-3 * q_star
    pred = theory.predicted_grad_ratios(*args, 8, q1=q1)
    np.testing.assert_array_equal(c.grad_log_profile_pred, pred)
    moments = theory.jacobian_moments(*args, 8, q1=q1, linear_readout=True)
    assert c.jac_mean_pred == moments.mean


def test_seed_i_is_the_same_network_whatever_the_split():
    kw = dict(key=jax.random.key(7), **SMALL)
    a = meanfield.compare("tanh", 1.2, 0.1, 8, 16, 6, jacobian_seeds=0, **kw)
    b = meanfield.compare("tanh", 1.2, 0.1, 8, 16, 9, jacobian_seeds=4, **kw)
    np.testing.assert_allclose(b.grad_log_sq[:6], a.grad_log_sq, atol=1e-6)
    assert b.jac_log_m1.shape == (4, 1) and a.jac_log_m1.shape == (0, 1)
    assert math.isnan(a.jac_mean_ratio) and not a.jac_agrees


def test_bad_input_names_the_problem():
    with pytest.raises(ValueError, match="depth must be an int >= 2"):
        meanfield.compare("tanh", 1.5, 0.05, 1, 16, 4)
    with pytest.raises(ValueError, match="seeds must be an int >= 2"):
        meanfield.compare("tanh", 1.5, 0.05, 4, 16, 1)
    with pytest.raises(ValueError, match=r"jacobian_seeds must be <= seeds \(4\)"):
        meanfield.compare("tanh", 1.5, 0.05, 4, 16, 4, jacobian_seeds=5)
    with pytest.raises(ValueError, match="unknown readout 'l2'"):
        meanfield.compare("tanh", 1.5, 0.05, 4, 16, 4, readout="l2")
    with pytest.raises(ValueError, match="unknown activation 'swish'"):
        meanfield.compare("swish", 1.5, 0.05, 4, 16, 4)
    with pytest.raises(ValueError, match=r"q\* = 0 must be finite and > sigma_b2"):
        meanfield.compare("tanh", 0.5, 0.0, 4, 16, 4)  # q* = 0: inputs of zero length
    with pytest.raises(ValueError, match=r"q\* = inf"):
        meanfield.compare("relu", 3.0, 0.1, 4, 16, 4)  # chaotic relu: q grows without bound
    with pytest.raises(ValueError, match="no layers left to fit"):
        meanfield.compare("tanh", 1.5, 0.05, 4, 16, 4, readout="mse")


# --------------------------------------------------------------------------------------------
# gradflow theory and the phase diagram


def test_cli_theory_prints_the_side_by_side_table(capsys, tmp_path):
    argv = ["theory", *SMALL_ARGV, "--seeds", "4"]
    out_dir, png = tmp_path / "run", tmp_path / "phase.png"
    code = cli.main(argv + ["--quiet", "--out", str(out_dir), "--phase-diagram", str(png)])
    out = capsys.readouterr().out
    assert code == 0
    for text in ("q*", "chi1", "xi_c", "critical sigma_w2", "mean squared singular value"):
        assert text in out
    assert "verdict: ordered phase (chi1 = 0.9386)" in out
    assert (out_dir / "results.npz").exists() and (out_dir / "config.json").exists()
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--depth", "1"], "depth must be an int >= 2"),
        (["--sigma-w2", "-1"], "sigma_w2 must be finite and > 0"),
        (["--activation", "swish"], "unknown activation 'swish'"),
        (["--seeds", "4", "--jacobian-seeds", "8"], "jacobian_seeds must be <= seeds"),
    ],
)
def test_cli_theory_bad_input_is_one_line_exit_2(capsys, argv, message):
    assert cli.main(["theory", "--width", "8", "--seeds", "4", *argv]) == cli.USAGE_ERROR
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1


def test_cli_theory_bad_flag_value_is_one_line_exit_2(capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(["theory", "--readout", "l2"])
    assert e.value.code == cli.USAGE_ERROR
    err = capsys.readouterr().err
    assert "invalid choice: 'l2'" in err and err.count("\n") == 1


def test_phase_diagram_writes_a_png(tmp_path):
    sw, sb = np.linspace(0.8, 4.0, 9), np.linspace(0.0, 0.4, 5)
    data = meanfield.phase_diagram_data(
        "tanh", sw, sb, [(1.2, 0.05), (3.0, 0.2)], depth=8, width=16, seeds=4, **SMALL
    )
    np.testing.assert_array_equal(data.chi1, theory.chi1_grid("tanh", sw, sb))
    assert data.critical_w2[0] == pytest.approx(1.0, abs=1e-6)  # tanh, sigma_b2 = 0
    assert data.points_rate.shape == (2,) and data.points_pred[1] > 1 > data.points_pred[0]
    fig = plots.phase_diagram(
        data.sigma_w2s, data.sigma_b2s, data.chi1,
        critical=(data.critical_b2, data.critical_w2),
        points=(data.points_w2, data.points_b2, data.points_rate), activation="tanh",
    )  # fmt: skip
    path = plots.save(fig, tmp_path / "figs" / "phase.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(ValueError, match=r"chi1 must have shape \(9, 5\)"):
        plots.phase_diagram(sw, sb, data.chi1.T)
