"""Statistical and exact checks behind three paper figures (experiments/fig_*.py):

* fig_mean_field_phases: the per-seed gradient growth rate the figure reports matches chi1 in the
  ordered, critical and chaotic phases, chi1 computed here independently (numpy Gauss-Hermite);
* fig_dynamical_isometry: the exact finite-width moments of Gaussian products (Wick) against
  Monte Carlo and their limits, the Fuss-Catalan edge against large Gaussian products, and the
  figure's shared-program spectra against a float64 numpy SVD of the same weights;
* fig_deep_linear_and_relu: the learning time of a one-layer net against its closed form, the
  depth dependence Saxe et al. report, and the Glorot/He signal ratio, exact in expectation.

Statistical tests use fixed keys (deterministic) and state their tolerance: 4 standard errors
plus any finite-size allowance, with the reason.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import gradflow as gf
from tests.conftest import load_experiment

phases_fig = load_experiment("fig_mean_field_phases")
isometry_fig = load_experiment("fig_dynamical_isometry")
linear_fig = load_experiment("fig_deep_linear_and_relu")


# --------------------------------------------------------------------------------------------
# fig_mean_field_phases


def _tanh_chi1_numpy(sigma_w2, sigma_b2):
    """q* by fixed-point iteration and chi1 = sigma_w2 E[tanh'(sqrt(q*) z)^2], 201-node
    probabilists' Gauss-Hermite: written here, independent of gradflow.theory."""
    z, w = np.polynomial.hermite_e.hermegauss(201)
    w = w / w.sum()
    q = 1.0
    for _ in range(2000):
        q = sigma_w2 * np.sum(w * np.tanh(np.sqrt(q) * z) ** 2) + sigma_b2
    return sigma_w2 * np.sum(w * (1 - np.tanh(np.sqrt(q) * z) ** 2) ** 2)


@pytest.fixture(scope="module")
def measured_phases():
    cfg = dict(phases_fig.CONFIG, ordered_sigma_w2=1.2, chaotic_sigma_w2=3.0)
    out = {}
    for name, w2 in phases_fig.phase_sigma_w2(cfg).items():  # one compilation: traced sigmas
        c = gf.meanfield.compare("tanh", w2, 0.05, 10, 64, 96, batch=4, jacobian_seeds=0)
        out[name] = (w2, c, phases_fig.per_seed_rates(c.grad_log_sq, *c.fit_layers))
    return out


@pytest.mark.parametrize("phase", ["ordered", "critical", "chaotic"])
def test_gradient_growth_rate_is_chi1_in_each_phase(measured_phases, phase):
    w2, c, rates = measured_phases[phase]
    chi1 = _tanh_chi1_numpy(w2, 0.05)
    se = rates.std(ddof=1) / math.sqrt(rates.size)
    # 4 SE of the seed-level estimates, plus 1/width: the O(1/n) per-layer finite-width bias
    # (gradflow.meanfield; measured at most 0.13% at width 256, so 1.6% at width 64 is ample).
    assert abs(rates.mean() - chi1) <= 4 * se + chi1 / 64, (rates.mean(), se, chi1)
    assert rates.mean() == pytest.approx(c.grad_rate, rel=1e-12)  # the library's own estimate
    assert 4 * se + chi1 / 64 < 0.05  # tight enough to tell the phases apart (chi1: 0.84, 1, 1.21)


def test_phases_are_ordered_critical_chaotic(measured_phases):
    r = {p: v[2].mean() for p, v in measured_phases.items()}
    assert r["ordered"] < 0.9 < r["critical"] < 1.1 < r["chaotic"]


def test_trainable_depth_is_the_last_trained_depth_before_the_first_failure():
    acc = np.array([[0.9, 0.9, 0.9], [0.8, 0.2, 0.6], [0.1, 0.7, 0.1], [0.1, 0.1, 0.1]])
    data = {"train/accuracy": acc[:, :, None], "train/depths": np.array([5, 10, 20, 40])}
    np.testing.assert_array_equal(phases_fig.trainable_depth(data), [10, 5, 10])
    data["train/accuracy"] = np.full((4, 2, 1), 0.1)
    assert np.isnan(phases_fig.trainable_depth(data)).all()


# --------------------------------------------------------------------------------------------
# fig_dynamical_isometry


def _gaussian_products(key, n_draws, width, depth):
    """n_draws products W^L ... W^1 of iid N(0, 1/width) matrices, float64: (draws, N, N)."""
    w = jax.random.normal(key, (depth, n_draws, width, width), jnp.float32)
    w = np.asarray(w, np.float64) / math.sqrt(width)
    j = w[0]
    for layer in w[1:]:
        j = layer @ j
    return j


def test_wick_moments_reference_values_and_limit():
    var, per_seed = isometry_fig.gaussian_product_moments(512, 10)
    assert var == pytest.approx(10.11, abs=0.005)  # REFERENCES.md 7.7 [C]
    assert isometry_fig.gaussian_product_moments(512, 50)[0] == pytest.approx(52.73, abs=0.01)
    assert per_seed < var  # a seed's own spectrum omits the spread of m1 across seeds
    for depth in (1, 7, 30):  # width -> inf: Pennington et al.'s L (s1 = -1, mu2 = mu1^2)
        assert isometry_fig.gaussian_product_moments(10**7, depth)[0] == pytest.approx(
            depth, rel=1e-5
        )


def test_wick_moments_match_monte_carlo():
    width, depth, draws = 6, 3, 20000
    j = _gaussian_products(jax.random.key(3), draws, width, depth)
    s2 = np.linalg.eigvalsh(np.einsum("dij,dkj->dik", j, j))  # (draws, N)
    m1, m2 = s2.mean(-1), np.square(s2).mean(-1)
    pooled, per_seed = isometry_fig.gaussian_product_moments(width, depth)
    for estimate, want in ((m2 - 1, pooled), (m2 - m1**2, per_seed)):
        se = estimate.std(ddof=1) / math.sqrt(draws)
        assert abs(estimate.mean() - want) <= 4 * se, (estimate.mean(), se, want)
    # Finite width matters here (infinite width says 3): the check can tell them apart.
    assert pooled > 3 + 8 * (m2 - 1).std(ddof=1) / math.sqrt(draws)


def test_gaussian_product_top_singular_value_follows_fuss_catalan():
    width = 200
    w = jax.random.normal(jax.random.key(4), (8, 4, width, width), jnp.float32)
    w = np.asarray(w, np.float64) / math.sqrt(width)  # 8 layers x 4 draws
    smax, j = {}, np.broadcast_to(np.eye(width), w.shape[1:])
    for depth in range(1, 9):
        j = w[depth - 1] @ j  # the product of the first `depth` layers
        smax[depth] = np.median(np.linalg.svd(j, compute_uv=False)[:, 0])
    smax = {d: smax[d] for d in (1, 2, 8)}
    for depth, s in smax.items():
        edge = isometry_fig.fuss_catalan_edge(depth)
        # Below the width -> inf edge by the finite-N edge effect (Tracy-Widom scale, ~N^(-2/3)
        # relative, growing with depth: 1.2%, 1.4%, 6% low at N = 256 for L = 1, 2, 8 in the
        # figure), never above it by more than that noise.
        assert 0.88 * edge < s < 1.02 * edge, (depth, s, edge)
    # sqrt(L) growth: s_max(8) / s_max(2) is 1.85 for the edges (1.76 at N = 256), against 1
    # for a bounded spectrum and 4 for growth like L.
    assert 1.6 < smax[8] / smax[2] < 1.95
    assert isometry_fig.fuss_catalan_edge(10**6) == pytest.approx(
        math.sqrt(math.e * (10**6 + 0.5)), rel=1e-9
    )


def test_shared_program_spectra_equal_numpy_svd_of_the_drawn_weights():
    width, depth, seeds = 12, 3, 2
    for weights in ("gaussian", "orthogonal"):  # one compiled spectrum serves both
        log_sv = isometry_fig.log_spectra(
            "linear", weights, depth, width, seeds, isometry_fig.SMOKE
        )
        model = gf.mlp([width] * (depth + 1), "linear", weights, output_activation="linear", scan=2)
        for i, key in enumerate(gf.seed_keys(seeds)):
            layers = gf.nets.mlp_layers(model, model.init(key))  # seed i, as the figure draws it
            j = np.eye(width)
            for layer in layers:  # row convention z = a W: J^T = W^1 ... W^L, same values
                j = j @ np.asarray(layer["w"], np.float64)
            want = np.linalg.svd(j, compute_uv=False)
            # float32, exact log-domain method: relative errors up to 1.6e-5 measured over 16
            # seeds, on singular values 1e-5 of the largest; a wrong draw or seed is off by O(1).
            np.testing.assert_allclose(log_sv[i], np.log(want), rtol=0, atol=1e-4)


# --------------------------------------------------------------------------------------------
# fig_deep_linear_and_relu


def test_learning_time_of_one_layer_is_its_closed_form():
    x, y = linear_fig.regression_task(10, 4)
    model = gf.mlp([10, 4], "linear", "gaussian")
    lr, criterion = 0.7, 1e-3
    out = gf.sweep(
        linear_fig.learning_time, model, 3, x, y, learning_rate0=lr, criterion=criterion,
        max_steps=500, quiet=True,
    )  # fmt: skip
    a = np.asarray(y, np.float64)
    for i, key in enumerate(gf.seed_keys(3)):
        w = np.asarray(gf.nets.mlp_layers(model, model.init(key))[0]["w"], np.float64)  # f(I) = W
        e0 = np.sum((w - a) ** 2) / np.sum(a**2)
        # W_t - A = c^t (W_0 - A) with c = 1 - 2 lr / ||A||^2, so E_t = c^(2t) E_0.
        c = 1 - 2 * lr / np.sum(a**2)
        steps = math.ceil(math.log(criterion / e0) / (2 * math.log(c)))
        assert out["initial"][i] == pytest.approx(e0, rel=1e-5)
        assert out["steps"][i] == steps
        assert out["final"][i] == pytest.approx(e0 * c ** (2 * steps), rel=1e-3)


def test_learning_time_flat_with_depth_for_orthogonal_growing_for_gaussian():
    x, y = linear_fig.regression_task(16, 4)
    times = {}
    for depth in (4, 16):
        models = [
            gf.mlp([16] * depth + [4], "linear", w, scan=2) for w in ("gaussian", "orthogonal")
        ]
        out = linear_fig.run_shared(
            linear_fig.learning_time, models[0], linear_fig.draw(models, 4), x, y,
            learning_rate0=1.0, criterion=0.01, max_steps=2000,
        )  # fmt: skip
        gauss, orth = linear_fig.split(out["steps"], 2)
        times[depth] = (np.median(gauss), np.median(orth))
    assert max(max(t) for t in times.values()) < 2000  # every median reached the criterion
    # Saxe et al.: depth-independent for orthogonal, growing for Gaussian. Measured at these
    # sizes (steps, median of 4 seeds): orthogonal 29 at depth 16, Gaussian 190 (x15 of depth 2).
    assert times[16][1] / times[4][1] < 1.8
    assert times[16][0] / times[4][0] > 3


def test_glorot_over_he_signal_ratio_is_exact_in_expectation():
    widths = [20, 16, 16, 16, 16, 8]
    x = jax.random.normal(jax.random.key(5), (8, widths[0]))
    seeds = 512
    models = [gf.mlp(widths, "relu", init) for init in ("glorot_uniform", "he")]
    # Independent seeds for the two inits (the same key would couple uniform and normal draws).
    params = [
        jax.vmap(m.init)(gf.seed_keys(seeds, jax.random.key(k))) for k, m in enumerate(models)
    ]
    params = jax.tree.map(lambda a, b: jnp.concatenate([a, b]), *params)

    def logit_ms(model, p, x):
        return jnp.mean(jnp.square(model.apply(p, x)))

    g, h = (np.asarray(v, np.float64) for v in np.split(
        linear_fig.run_shared(logit_ms, models[0], params, x), 2))  # fmt: skip
    ratio = g.mean() / h.mean()
    # Independent seeds: the delta-method SE of a ratio of two means.
    rel = g.var(ddof=1) / g.mean() ** 2 + h.var(ddof=1) / h.mean() ** 2
    se = ratio * math.sqrt(rel / seeds)
    want = linear_fig.glorot_over_he_mean_square(widths)
    assert want == pytest.approx(20 / 36 * 0.5**3 * 16 / 24, rel=1e-12)  # 0.0463
    assert abs(ratio - want) <= 4 * se, (ratio, se, want)
    assert 4 * se < 0.3 * want  # tight: far from He's own scale (ratio 1) or (1/2)^4
