"""Losses: values and output errors dC/dz against closed forms; label formats; bad input."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gradflow import losses
from gradflow.losses import LOSSES, check_targets, get_loss


def _data(batch=6, n_out=4, scale=3.0):
    rng = np.random.default_rng(0)
    z = scale * rng.normal(size=(batch, n_out))
    labels = rng.integers(0, n_out, size=batch)
    return z, labels, np.eye(n_out)[labels]


def _np_loss(name, z, y):
    if name == "mse":
        return 0.5 * np.sum((z - y) ** 2, axis=-1)
    if name == "xent":
        log_p = z - np.logaddexp.reduce(z, axis=-1, keepdims=True)
        return -np.sum(y * log_p, axis=-1)
    a = 1 / (1 + np.exp(-z))  # Nielsen's CrossEntropyCost.fn on a = sigmoid(z)
    return -np.sum(y * np.log(a) + (1 - y) * np.log(1 - a), axis=-1)


def _np_output_error(name, z, y):
    """dC_x/dz for identity output: a - y, softmax - y, sigmoid - y."""
    if name == "mse":
        return z - y
    if name == "xent":
        p = np.exp(z - z.max(axis=-1, keepdims=True))
        return p / p.sum(axis=-1, keepdims=True) - y
    return 1 / (1 + np.exp(-z)) - y


@pytest.mark.parametrize("name", list(LOSSES))
@pytest.mark.parametrize("labels_as", ["int", "one_hot"])
def test_loss_values_and_output_error(name, labels_as):
    z, labels, onehot = _data()
    with jax.enable_x64(True):
        y = jnp.asarray(labels) if labels_as == "int" else jnp.asarray(onehot)
        fn = get_loss(name)
        got = np.asarray(fn(jnp.asarray(z), y))
        grad = np.asarray(jax.grad(lambda z: jnp.sum(fn(z, y)))(jnp.asarray(z)))
    assert got.shape == (6,)
    # float64 both sides, logits of size ~3: agreement to rounding.
    np.testing.assert_allclose(got, _np_loss(name, z, onehot), rtol=1e-12)
    np.testing.assert_allclose(grad, _np_output_error(name, z, onehot), rtol=1e-10, atol=1e-14)


@pytest.mark.parametrize("name", ["xent", "sigmoid_xent"])
def test_cross_entropies_are_finite_at_huge_logits(name):
    # float32: Nielsen's network2.py needs nan_to_num here; computing from logits does not.
    z = jnp.array([[100.0, -100.0], [-100.0, 100.0]])
    y = jnp.array([0, 0])
    c = np.asarray(get_loss(name)(z, y))
    assert np.all(np.isfinite(c))
    # Right with margin 200 costs ~0; wrong costs ~200 (xent) or ~100 + 100 (both sigmoids wrong).
    np.testing.assert_allclose(c, [0.0, 200.0], atol=1e-4)
    g = np.asarray(jax.grad(lambda z: jnp.sum(get_loss(name)(z, y)))(z))
    np.testing.assert_allclose(g, [[0.0, 0.0], [-1.0, 1.0]], atol=1e-6)


def test_sigmoid_xent_soft_targets():
    z, _, _ = _data()
    y = np.random.default_rng(1).uniform(size=z.shape)  # targets in [0, 1], not one-hot
    with jax.enable_x64(True):
        got = np.asarray(losses.sigmoid_xent(jnp.asarray(z), jnp.asarray(y)))
    np.testing.assert_allclose(got, _np_loss("sigmoid_xent", z, y), rtol=1e-12)


def test_get_loss_unknown():
    with pytest.raises(
        ValueError, match="unknown loss 'nll'; choose one of: mse, xent, sigmoid_xent"
    ):
        get_loss("nll")


@pytest.mark.parametrize(
    "y",
    [
        np.zeros((5,), np.int32),  # integer labels
        np.zeros((5, 3), np.float32),  # targets
        np.zeros((5, 3), np.int32),  # integer one-hot
    ],
)
def test_check_targets_accepts(y):
    check_targets("mse", (5, 3), y)


@pytest.mark.parametrize(
    "y,match",
    [
        (np.zeros((4,), np.int32), r"shape \(5,\)"),  # wrong batch
        (np.zeros((5,), np.float32), "integer labels"),  # float labels are not class indices
        (np.zeros((5, 2), np.float32), r"\(5, 3\)"),  # wrong number of outputs
        (np.zeros((5, 3, 1), np.float32), "got shape"),
        (np.array([0, 1, 2, 3, 0], np.int32), "labels must lie in 0..2"),  # class 3 of 3
        (np.array([0, -1, 2, 1, 0], np.int32), "labels must lie in 0..2"),
    ],
)
def test_check_targets_rejects(y, match):
    with pytest.raises(ValueError, match=match):
        check_targets("xent", (5, 3), y)
