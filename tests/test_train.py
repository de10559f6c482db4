"""train_trajectory against a hand-written gradient-descent loop (Nielsen's network2 update)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import gradflow as gf
from gradflow.train import train_trajectory


def _reference(model, params, x, y, loss, steps, lr, lmbda_over_n):
    """Python loop: record norms, then W <- (1 - lr c) W - lr dC/dW, b <- b - lr dC/db."""
    loss_fn = gf.losses.get_loss(loss)
    grad = jax.grad(lambda p: jnp.mean(loss_fn(model.apply(p, x), y)))
    records = []
    for _ in range(steps):
        records.append(gf.layer_grad_norms(model, params, x, y, loss))
        g = grad(params)
        params = [
            {"w": (1 - lr * lmbda_over_n) * p["w"] - lr * gl["w"], "b": p["b"] - lr * gl["b"]}
            for p, gl in zip(params, g, strict=True)
        ]
    records.append(gf.layer_grad_norms(model, params, x, y, loss))
    return jax.tree.map(lambda *r: np.stack(r), *records)


def test_trajectory_equals_python_loop():
    model = gf.mlp([12, 8, 8, 4], "sigmoid", "nielsen")
    x = jax.random.uniform(jax.random.key(1), (32, 12))
    y = jax.random.randint(jax.random.key(2), (32,), 0, 4)
    params = model.init(jax.random.key(0))
    got = train_trajectory(
        model, params, x, y, "sigmoid_xent", steps=6, learning_rate=0.5, weight_decay=0.05
    )
    want = _reference(model, params, x, y, "sigmoid_xent", 6, 0.5, 0.05)
    assert got.weights.shape == (7, 3)
    # float32, a few steps of the same arithmetic in a different order: rounding only.
    for field in ("weights", "biases", "preacts", "weight_norms", "loss"):
        np.testing.assert_allclose(getattr(got, field), getattr(want, field), rtol=2e-5)
    # Training moves the network: the loss goes down.
    assert got.loss[-1, 0] < got.loss[0, 0]


def test_sweep_with_traced_learning_rate_equals_per_seed_calls():
    model = gf.mlp([6, 5, 3], "tanh", "lecun")
    x = jax.random.normal(jax.random.key(3), (16, 6))
    y = jax.random.normal(jax.random.key(4), (16, 3))
    out = gf.sweep(train_trajectory, model, 3, x, y, steps=4, hyper={"learning_rate": 0.2})
    for i, key in enumerate(gf.seed_keys(3)):
        one = train_trajectory(model, model.init(key), x, y, steps=4, learning_rate=0.2)
        np.testing.assert_allclose(out.weights[i], one.weights, rtol=1e-5)
    assert out.weights.shape == (3, 5, 2)


def test_bad_input():
    model = gf.mlp([4, 3, 2])
    x, y = jnp.ones((5, 4)), jnp.ones((5, 2))
    with pytest.raises(ValueError, match="steps must be an int"):
        train_trajectory(model, model.init(jax.random.key(0)), x, y, steps=-1)
    with pytest.raises(ValueError, match="weight_decay"):
        train_trajectory(model, model.init(jax.random.key(0)), x, y, steps=1, weight_decay=-1.0)
