"""Tests for gradflow.deep: the log-domain probes of deep MLPs equal autodiff and the spectrum's
moments, at any depth, on the toolkit's own MLP (equal layers stacked and scanned)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gradflow import deep, layer_grad_norms, mlp, spectra, taps


def _unstacked(params):
    """The MLP's (w, b) per weight layer, runs unstacked."""
    out = []
    for seg in params:
        if seg["w"].ndim == 3:
            out += [(seg["w"][i], seg["b"][i]) for i in range(seg["w"].shape[0])]
        else:
            out.append((seg["w"], seg["b"]))
    return out


def test_deep_mlp_params_are_stacked_and_log_backprop_is_autodiff():
    sigmas = dict(sigma_w2=1.7, sigma_b2=0.2)
    model = mlp([12] * 6, "tanh", "gaussian", scan=True, **sigmas)
    params = jax.jit(model.init)(jax.random.key(11))
    assert [p["w"].shape for p in params] == [(4, 12, 12), (12, 12)]  # one scanned run + output
    x = jax.random.normal(jax.random.key(1), (3, 12))
    y = jax.random.normal(jax.random.key(2), (3, 12))
    # The renormalised backward pass equals jax.grad: the toolkit's MSE probe, and the linear
    # readout by autodiff of <f(x), v> through taps at the pre-activations.
    mse = deep.log_grad_sq(model, params, x, y, "mse")
    expected = np.log(layer_grad_norms(model, params, x, y, loss="mse").hidden ** 2)
    np.testing.assert_allclose(mse, expected, rtol=1e-5, atol=1e-5)
    specs, _ = taps.discover(model.apply, params, x)
    zeros = {n: jnp.zeros(s.shape, s.dtype) for n, s in specs.items()}

    def readout(p):
        return (taps.run_tapped(model.apply, params, x, p)[0] * y).sum()

    grads = jax.grad(readout)(zeros)
    linear = deep.log_grad_sq(model, params, x, y, "linear")
    want = [np.log(np.mean(np.sum(grads[n] ** 2, -1), -1)) for n in specs]
    np.testing.assert_allclose(linear, want, atol=1e-5)


def test_log_grad_sq_with_unequal_first_layer_and_a_run():
    # Segments: layer1 (5 -> 8) alone, a run of 3 equal layers, the output layer.
    model = mlp([5, 8, 8, 8, 8, 3], "erf", "gaussian", sigma_w2=1.3, scan=True)
    params = model.init(jax.random.key(4))
    x = jax.random.normal(jax.random.key(1), (4, 5))
    y = jax.random.normal(jax.random.key(2), (4, 3))
    got = deep.log_grad_sq(model, params, x, y, "mse")
    expected = np.log(layer_grad_norms(model, params, x, y, loss="mse").hidden ** 2)
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)


def test_jacobian_log_moments_equal_spectra():
    # Unequal input/output widths (k = min(n_0, n_L) = 4), relu hidden layers, sigmoid output.
    model = mlp([6, 10, 10, 10, 4], "relu", "gaussian", sigma_w2=1.8, sigma_b2=0.1,
                output_activation="sigmoid")  # fmt: skip
    params = jax.jit(model.init)(jax.random.key(3))
    x = jax.random.normal(jax.random.key(4), (3, 6))
    log_m1, log_m2 = deep.jacobian_log_moments(model, params, x)
    # "dense" (product, then SVD) is exact up to rounding at this depth and compiles quickly.
    sv = spectra.jacobian_singular_values(model, params, x, log=True, method="dense")
    s = spectra.spectrum_summary(sv, log=True)
    # float32: a few ulps per layer of rounding in both; 1e-5 in the log is ~100 ulps.
    np.testing.assert_allclose(log_m1, s.mean_sq, atol=1e-5)
    rel_var = np.exp(s.var_sq - 2 * s.mean_sq)
    np.testing.assert_allclose(np.exp(log_m2 - 2 * log_m1) - 1, rel_var, rtol=1e-4)


def test_jacobian_log_moments_of_one_linear_layer():
    model = mlp([5, 8], "erf", "gaussian", sigma_w2=1.8)  # L = 1: the linear output layer only
    params = jax.jit(model.init)(jax.random.key(3))
    log_m1, log_m2 = deep.jacobian_log_moments(model, params, np.ones((2, 5), np.float32))
    w = np.asarray(params["w"], np.float64)  # J = W^T, k = 5
    np.testing.assert_allclose(log_m1, np.log(np.sum(w**2) / 5), rtol=1e-6)
    np.testing.assert_allclose(log_m2, np.log(np.sum((w @ w.T) ** 2) / 5), rtol=1e-6)


def test_jacobian_log_moments_stay_finite_beyond_float32():
    # Linear, sigma_w2 = 3: m1 ~ 3^400 = e^439, far beyond float32 (e^88), and m2 ~ e^878
    # beyond float64 (e^709); the product is renormalised every layer. Reference: the plain
    # float64 product (J = W^1 ... W^L does not depend on x), normalised once at the end.
    model = mlp([16] * 401, "linear", "gaussian")  # one vmapped draw, one scan
    params = jax.jit(lambda k: model.init(k, sigma_w2=3.0))(jax.random.key(0))
    log_m1, log_m2 = deep.jacobian_log_moments(model, params, np.zeros((1, 16), np.float32))
    assert np.isfinite(log_m2).all() and log_m1[0] > 300 and log_m2[0] > 709
    prod = np.eye(16)
    for w, _ in _unstacked(params):
        prod = prod @ np.asarray(w, np.float64)
    log_norm2 = np.log(np.sum(prod**2))
    unit = prod / np.sqrt(np.sum(prod**2))
    # float32: ~1e-7 relative rounding per layer, 400 layers: ~1e-4 in the log.
    np.testing.assert_allclose(log_m1, log_norm2 - np.log(16), atol=2e-3)
    np.testing.assert_allclose(
        log_m2, 2 * log_norm2 + np.log(np.sum((unit.T @ unit) ** 2)) - np.log(16), atol=4e-3
    )


def test_bad_input_names_the_problem():
    with pytest.raises(ValueError, match="non-residual"):
        deep.jacobian_log_moments(mlp([4, 4, 4], "tanh", residual=True), [], np.ones((1, 4)))
    model = mlp([8, 8, 8, 2], "tanh")
    params = model.init(jax.random.key(0))
    with pytest.raises(ValueError, match=r"x must have shape \(batch, 8\)"):
        deep.jacobian_log_moments(model, params, np.ones((1, 4)))
    with pytest.raises(ValueError, match="linear output"):
        sig = mlp([8, 8, 2], "tanh", output_activation="sigmoid")
        deep.log_grad_sq(sig, sig.init(jax.random.key(0)), np.ones((1, 8)), np.ones((1, 2)))
