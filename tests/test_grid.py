"""Grid sweeps: seeds x (sigma_w2, sigma_b2) or a learning rate, as one compiled function."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import gradflow as gf
from tests.conftest import assert_trees_close

MODEL = gf.mlp([6, 12, 3], "tanh", "gaussian")
SIGMA_W2 = np.array([0.5, 1.0, 4.0], np.float32)
SIGMA_B2 = np.array([0.0, 0.3], np.float32)
LR = np.array([0.0, 0.5], np.float32)


def _data():
    rng = np.random.default_rng(1)
    return rng.normal(size=(5, 6)).astype(np.float32), rng.normal(size=(5, 3)).astype(np.float32)


def probe_then_step(model, params, x, y, *, lr):
    """Per-layer gradient norms at init, and the loss after one SGD step of (traced) size lr."""

    def loss(p):
        return jnp.mean(gf.losses.get_loss("mse")(model.apply(p, x), y))

    grads = jax.grad(loss)(params)
    stepped = jax.tree.map(lambda p, g: p - lr * g, params, grads)
    return gf.layer_grad_norms(model, params, x, y, loss="mse"), loss(stepped)


def test_grid_sweep_equals_loop_of_single_sweeps():
    x, y = _data()
    # sigma_w2 and sigma_b2 go to model.init, lr to the function: all traced, one compilation
    grid = {"sigma_w2": SIGMA_W2, "sigma_b2": SIGMA_B2, "lr": LR}
    # chunks of 7 straddle grid points: 3 x 2 x 2 x 4 = 48 (point, seed) pairs in 7 chunks
    norms, stepped = gf.grid_sweep(probe_then_step, MODEL, 4, x, y, grid=grid, chunk_size=7)
    assert norms.weights.shape == (3, 2, 2, 4, 2) and stepped.shape == (3, 2, 2, 4)
    for i, sw2 in enumerate(SIGMA_W2):
        for j, sb2 in enumerate(SIGMA_B2):
            for k, lr in enumerate(LR):
                hyper = {"sigma_w2": float(sw2), "sigma_b2": float(sb2), "lr": float(lr)}
                one = gf.sweep(probe_then_step, MODEL, 4, x, y, hyper=hyper)
                got = jax.tree.map(lambda a: a[i, j, k], (norms, stepped))  # noqa: B023
                assert_trees_close(got, one, rtol=2e-5, atol=1e-7)
    # seed s is the same network at every grid point: lr = 0 leaves the loss where it was
    np.testing.assert_allclose(stepped[:, :, 0], norms.loss[:, :, 0, :, 0], rtol=1e-6)


def test_bad_grids_are_refused_before_tracing():
    x, y = _data()

    def run(grid, **kw):
        return gf.grid_sweep(gf.layer_grad_norms, MODEL, 2, x, y, grid=grid, **kw)

    with pytest.raises(ValueError, match="non-empty 1-d"):
        run({"sigma_w2": np.ones((2, 2))})
    with pytest.raises(ValueError, match="non-empty 1-d"):
        run({"sigma_w2": []})
    with pytest.raises(ValueError, match="non-empty dict"):
        run({})
    with pytest.raises(ValueError, match="'lr'.*neither a keyword of model.init"):
        run({"lr": [0.1]})
    with pytest.raises(ValueError, match="given twice"):
        run({"sigma_w2": [1.0]}, hyper={"sigma_w2": 2.0})
