"""diagnose: Lanczos Hessian extremes against a dense Hessian; each cause of a small gradient.

The Hessian-vector product and Lanczos themselves are tested in tests/test_curvature.py."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.flatten_util import ravel_pytree

import gradflow as gf
from gradflow.diagnose import diagnose, lanczos_extremes, verdict


def _data(n_in, n_out, batch=16, seed=0):
    kx, ky = jax.random.split(jax.random.key(seed))
    return jax.random.normal(kx, (batch, n_in)), jax.random.normal(ky, (batch, n_out))


def _dense_hessian_eigs(model, params, x, y):
    flat, unravel = ravel_pytree(params)
    loss = lambda f: jnp.mean(gf.losses.mse(model.apply(unravel(f), x), y))  # noqa: E731
    return np.linalg.eigvalsh(np.asarray(jax.hessian(loss)(flat), np.float64))


def test_few_lanczos_steps_find_the_extremes():
    model = gf.mlp([8, 16, 16, 4], "tanh", "lecun")  # 484 parameters
    params = model.init(jax.random.key(3))
    x, y = _data(8, 4, batch=32)
    want = _dense_hessian_eigs(model, params, x, y)
    d = diagnose(model, params, x, y, hessian_iterations=60)
    # Extreme Ritz values converge first; 60 of 484 dimensions pins the ends to ~1% of the spread.
    spread = want[-1] - want[0]
    assert abs(float(d.hessian_max) - want[-1]) < 0.01 * spread
    assert abs(float(d.hessian_min) - want[0]) < 0.02 * spread


@pytest.mark.slow  # the default suite's saddle case is tests/test_report.py's two-layer linear net
def test_origin_of_a_tanh_net_is_a_saddle_not_a_minimum():
    model = gf.mlp([4, 6, 3], "tanh", "lecun")
    params = jax.tree.map(jnp.zeros_like, model.init(jax.random.key(0)))
    x, y = _data(4, 3)
    y = y - jnp.mean(y, axis=0, keepdims=True)  # so that the output bias is optimal too
    d = diagnose(model, params, x, y, hessian_iterations=40)
    # Every gradient has a zero factor (W^2 = 0, a^1 = tanh(0) = 0) or a zero-mean residual.
    assert float(d.grad_norm) < 1e-6
    assert float(d.hessian_min) < -1e-3 and float(d.hessian_max) > 1e-3
    assert "SADDLE" in verdict(d)


def test_least_squares_solution_is_a_minimum():
    model = gf.mlp([5, 3], "linear", "lecun")
    x, y = _data(5, 3, batch=40)
    xb = np.c_[np.asarray(x, np.float64), np.ones(40)]
    sol = np.linalg.lstsq(xb, np.asarray(y, np.float64), rcond=None)[0]
    params = {"w": jnp.asarray(sol[:5], jnp.float32), "b": jnp.asarray(sol[5], jnp.float32)}
    d = diagnose(model, params, x, y, hessian_iterations=18)
    assert float(d.grad_norm) < 1e-5
    assert float(d.hessian_min) > 0  # convex: H = X^T X / batch (x) I, positive definite
    assert "MINIMUM" in verdict(d)


@pytest.mark.slow  # the default suite's vanishing case is tests/test_report.py's deep sigmoid net
def test_vanishing_sigmoid_net_is_not_a_critical_point():
    model = gf.mlp([20, 30, 30, 30, 30, 5], "sigmoid", "nielsen")
    x, y = _data(20, 5, batch=64)
    d = diagnose(model, model.init(jax.random.key(0)), x, y, hessian_iterations=10)
    text = verdict(d)
    assert float(d.ratio_first_last) < 0.1 and "VANISHING" in text
    assert "not a critical point" in text
    assert float(jnp.max(d.zero_fraction)) == 0.0 and float(jnp.max(d.underflow_fraction)) == 0.0


def test_dead_relu_units_and_saturated_tanh_units():
    model = gf.mlp([10, 8, 4], "relu", "he")
    params = model.init(jax.random.key(0))
    params[0]["b"] = params[0]["b"].at[:4].set(-100.0)  # half of layer 1 is off for every input
    x, y = _data(10, 4)
    d = diagnose(model, params, x, y, hessian_iterations=0)
    assert float(d.dead_fraction[0]) == 0.5 and "DEAD UNITS" in verdict(d)
    assert np.isnan(float(d.hessian_min))

    big = gf.mlp([64, 64, 64, 4], "tanh", "standard_normal")  # pre-activations of std ~ 8
    d = diagnose(big, big.init(jax.random.key(1)), *_data(64, 4), hessian_iterations=0)
    assert float(d.saturated_fraction[1]) > 0.5 and "SATURATED" in verdict(d)


def test_sweep_over_seeds_and_bad_input():
    model = gf.mlp([6, 5, 2], "tanh", "lecun")
    x, y = _data(6, 2)
    out = gf.sweep(diagnose, model, 3, x, y, hessian_iterations=5)
    one = diagnose(model, model.init(gf.seed_keys(3)[2]), x, y, hessian_iterations=5)
    np.testing.assert_allclose(out.hessian_max[2], one.hessian_max, rtol=1e-4)
    with pytest.raises(ValueError, match="iterations must be >= 1"):
        lanczos_extremes(lambda v: v, 4, jax.random.key(0), 0)
    with pytest.raises(ValueError, match=r"x must have shape \(batch, any, 3\)"):
        diagnose(gf.rnn(3, 4, 2), None, x, y)
