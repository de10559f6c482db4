"""report: the known cases of the issue, each a network whose cause is known by construction."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import gradflow as gf
from gradflow.diagnose import diagnose
from gradflow.losses import prior_loss
from gradflow.report import Thresholds, report

RNG = np.random.default_rng(0)
X = RNG.normal(size=(64, 16)).astype(np.float32)
LABELS = RNG.integers(0, 4, size=64).astype(np.int32)


def _kinds(model, params, x, y, loss, **kw):
    d = diagnose(model, params, x, y, loss, hessian_iterations=kw.pop("iterations", 0), **kw)
    return report(d), d


def test_prior_loss_is_the_entropy_of_the_label_frequencies():
    y = np.array([0, 0, 1, 2, 2, 2, 2, 3], np.int32)
    p = np.bincount(y, minlength=5) / len(y)
    entropy = -sum(q * np.log(q) for q in p if q > 0)  # float64 reference
    out = jnp.zeros((8, 5))
    np.testing.assert_allclose(prior_loss("xent", out, y), entropy, rtol=1e-6)
    binary = -sum(q * np.log(q) + (1 - q) * np.log(1 - q) for q in p if 0 < q < 1)
    # absent classes: logit clipped at float32 eps, a ~1e-6 contribution each
    np.testing.assert_allclose(prior_loss("sigmoid_xent", out, y), binary, atol=1e-5)
    t = RNG.normal(size=(8, 5)).astype(np.float32)
    mse = 0.5 * np.mean(np.sum((t - t.mean(0)) ** 2, axis=1))
    np.testing.assert_allclose(prior_loss("mse", out, t), mse, rtol=1e-5)


def test_deep_sigmoid_nielsen_is_vanishing():
    model = gf.mlp([16, 30, 30, 30, 30, 4], "sigmoid", "nielsen")
    r, d = _kinds(model, model.init(jax.random.key(0)), X, LABELS, "sigmoid_xent")
    assert "vanishing" in r.kinds and "healthy" not in r.kinds
    assert r.numbers["ratio_first_last"] < 0.1 and "VANISHING" in r.text and "residual" in r.text


def test_relu_he_depth_10_is_healthy():
    model = gf.mlp([16] + [64] * 10 + [4], "relu", "he")
    r, _ = _kinds(model, model.init(jax.random.key(0)), X, LABELS, "xent")
    assert r.kinds == {"healthy"}, r.text


def test_tanh_sigma_w2_4_is_exploding():
    # Chaotic phase: chi_1 > 1, so ||dC/dW^l|| grows going down, by chi_1^(1/2) per layer.
    model = gf.mlp([16] + [64] * 20 + [4], "tanh", "gaussian", sigma_w2=4.0)
    r, _ = _kinds(model, model.init(jax.random.key(0)), X, LABELS, "xent")
    assert "exploding" in r.kinds and r.numbers["ratio_first_last"] > 10, r.text


def test_relu_with_a_large_negative_bias_has_dead_units():
    model = gf.mlp([16, 64, 64, 4], "relu", "he")
    params = model.init(jax.random.key(0))
    params[1]["b"] = params[1]["b"] - 5.0  # second hidden layer: off for every example
    r, d = _kinds(model, params, X, LABELS, "xent")
    assert "dead_units" in r.kinds and float(d.dead_fraction[1]) > 0.9, r.text


def _linear2(w1, w2):
    def apply(p, x):
        return x @ p["l1"]["w"] @ p["l2"]["w"]

    return gf.from_apply(lambda key: {"l1": {"w": w1}, "l2": {"w": w2}}, apply)


def test_two_layer_linear_network_at_zero_init_is_a_saddle():
    # At W1 = W2 = 0 every gradient vanishes exactly; the Hessian's off-diagonal blocks give
    # eigenvalues of both signs (the classic saddle of deep linear nets, Saxe et al. 2014).
    model = _linear2(jnp.zeros((16, 3)), jnp.zeros((3, 2)))
    y = (X[:, :2] + 0.1).astype(np.float32)
    r, d = _kinds(model, model.init(None), X, y, "mse", iterations=40)
    assert float(d.grad_norm) == 0.0 and float(d.hessian_min) < 0 < float(d.hessian_max)
    assert "saddle" in r.kinds and "minimum" not in r.kinds, r.text


def test_trained_logistic_regression_is_a_minimum():
    # Noisy labels: not separable, so the convex loss has a unique minimum; Newton converges.
    x = RNG.normal(size=(200, 3))
    y = (x @ np.array([1.0, -2.0, 0.5]) + RNG.normal(size=200) > 0).astype(np.int32)
    xb = np.hstack([x, np.ones((200, 1))])
    w = np.zeros(4)
    for _ in range(30):  # Newton's method in float64 (the independent reference)
        p = 1 / (1 + np.exp(-xb @ w))
        g = xb.T @ (p - y) / 200
        h = (xb * (p * (1 - p))[:, None]).T @ xb / 200
        w -= np.linalg.solve(h, g)
    params = {"out": {"w": np.stack([np.zeros(3), w[:3]], 1).astype(np.float32),
                      "b": np.array([0.0, w[3]], np.float32)}}  # fmt: skip
    model = gf.from_apply(lambda key: params, lambda p, x: x @ p["out"]["w"] + p["out"]["b"][None])
    r, d = _kinds(model, params, x.astype(np.float32), y, "xent", iterations=10)
    assert float(d.grad_norm) < 1e-4 and float(d.hessian_min) > -1e-5
    assert "minimum" in r.kinds and "plateau" not in r.kinds, r.text


def test_stalled_deep_sigmoid_classifier_is_a_plateau_not_a_minimum():
    """Gradient descent on a deep sigmoid net: the loss falls to the label-prior loss and stays
    (the output biases learn the class frequencies; the vanishing gradient stalls the rest)."""
    model = gf.mlp([16] + [30] * 6 + [4], "sigmoid", "nielsen")
    y = np.where(RNG.random(64) < 0.6, 0, RNG.integers(1, 4, size=64)).astype(np.int32)
    steps = 300
    traj = gf.train.train_trajectory(
        model, model.init(jax.random.key(1)), X, y, "sigmoid_xent", steps=steps, learning_rate=0.5
    )
    params = model.init(jax.random.key(1))
    loss_fn = lambda p: jnp.mean(gf.losses.sigmoid_xent(model.apply(p, X), y))  # noqa: E731
    step = jax.jit(lambda p: jax.tree.map(lambda a, g: a - 0.5 * g, p, jax.grad(loss_fn)(p)))
    for _ in range(steps):
        params = step(params)
    d = diagnose(model, params, X, y, "sigmoid_xent", hessian_iterations=20)
    r = report(d, losses=np.asarray(traj.loss[:, 0]))
    assert abs(float(d.loss) - float(d.prior_loss)) < 0.01 * float(d.prior_loss), r.text
    assert "plateau" in r.kinds and "minimum" not in r.kinds and "Not a minimum" in r.text
    # With a stricter prior tolerance and no history, the same point is no longer a plateau:
    # the verdict follows its thresholds.
    # (The loss is checked just off the prior: on some hosts float32 lands on it exactly.)
    off = d._replace(loss=d.prior_loss * (1 + 1e-3))
    assert "plateau" in report(off).kinds
    strict = report(off, thresholds=Thresholds(prior_rtol=1e-4))
    assert "plateau" not in strict.kinds


def test_swept_diagnosis_gives_one_report_per_seed_and_a_summary():
    model = gf.mlp([16, 30, 30, 30, 30, 4], "sigmoid", "nielsen")
    swept = gf.sweep(diagnose, model, 4, X, LABELS, loss="sigmoid_xent", hessian_iterations=0)
    r = report(swept)
    assert len(r.reports) == 4 and r.counts["vanishing"] == 4 and "vanishing" in r.kinds
    assert "4 seeds: vanishing 4/4" in r.text
    assert [x["kinds"] for x in r.to_dict()["seeds"]] == [sorted(x.kinds) for x in r.reports]
    one = report(jax.tree.map(lambda a: a[2], swept))
    assert one.kinds == r.reports[2].kinds and one.numbers == r.reports[2].numbers


@pytest.mark.parametrize("bad", ["loss", "prior_loss"])
def test_report_numbers_are_json_ready(bad):
    import json

    model = gf.mlp([16, 8, 4], "tanh")
    d = diagnose(model, model.init(jax.random.key(0)), X, LABELS, "xent", hessian_iterations=0)
    d = d._replace(**{bad: jnp.array(jnp.nan)})
    text = json.dumps(report(d).to_dict(), allow_nan=False)  # NaN -> null
    assert f'"{bad}": null' in text
