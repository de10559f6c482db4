"""LayerNorm, RMSNorm and BatchNorm: forward passes against float64 numpy, closed-form
Jacobians against ``jax.jacfwd``, and the errors."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gradflow import layers as gl
from gradflow.groups import param_groups
from gradflow.norm_layers import batch_norm, layer_norm, rms_norm

# Forward passes: float32 against a float64 reference. Every output is O(1) and comes from sums
# over d <= 32 features, so float32 rounding (eps_32 ~ 6e-8) leaves errors of a few 1e-7;
# 1e-5 is far above that and far below any real mistake (a wrong eps or axis moves outputs by
# more than 1e-3).
FWD = dict(rtol=1e-5, atol=1e-5)
# Jacobians: closed form and autodiff compute the same O(1/s) entries by different float32
# operation orders; their difference is a few ulps of the largest entry (~1e-7).
JAC = dict(rtol=1e-5, atol=1e-6)


def _random_params(layer, key, in_shape):
    """The layer's params with scale and offset moved off 1 and 0, so diag(scale) is tested."""
    params = layer.init(key, in_shape, {})
    ks = jax.random.split(jax.random.fold_in(key, 1), len(params))
    return {
        name: v + 0.5 * jax.random.normal(k, v.shape, v.dtype)
        for (name, v), k in zip(sorted(params.items()), ks, strict=True)
    }


def _np_layer_norm(x, scale, offset, eps):
    x = np.asarray(x, np.float64)
    mu = x.mean(axis=-1, keepdims=True)
    var = ((x - mu) ** 2).mean(axis=-1, keepdims=True)
    return np.asarray(scale, np.float64) * (x - mu) / np.sqrt(var + eps) + np.asarray(offset)


def _np_rms_norm(x, scale, eps):
    x = np.asarray(x, np.float64)
    r = np.sqrt((x**2).mean(axis=-1, keepdims=True) + eps)
    return np.asarray(scale, np.float64) * x / r


def _np_batch_norm(x, scale, offset, eps):
    x = np.asarray(x, np.float64)
    axes = tuple(range(x.ndim - 1))
    mu = x.mean(axis=axes, keepdims=True)
    var = ((x - mu) ** 2).mean(axis=axes, keepdims=True)
    return np.asarray(scale, np.float64) * (x - mu) / np.sqrt(var + eps) + np.asarray(offset)


@pytest.mark.parametrize("shape", [(5, 16), (3, 4, 16)])
def test_forward_matches_float64_numpy(key, shape):
    x = 3.0 * jax.random.normal(key, shape) + 1.0
    in_shape = shape[1:]
    eps = 1e-3  # large enough that getting eps wrong shows
    ln, rms, bn = layer_norm(eps=eps), rms_norm(eps=eps), batch_norm(eps=eps)
    p = _random_params(ln, key, in_shape)
    np.testing.assert_allclose(
        ln.apply(p, x), _np_layer_norm(x, p["scale"], p["offset"], eps), **FWD
    )
    p = _random_params(rms, key, in_shape)
    np.testing.assert_allclose(rms.apply(p, x), _np_rms_norm(x, p["scale"], eps), **FWD)
    p = _random_params(bn, key, in_shape)
    np.testing.assert_allclose(
        bn.apply(p, x), _np_batch_norm(x, p["scale"], p["offset"], eps), **FWD
    )


def test_init_params(key):
    assert jax.tree.map(jnp.shape, layer_norm().init(key, (4, 8), {})) == {
        "scale": (8,),
        "offset": (8,),
    }
    p = rms_norm().init(key, (8,), {})
    assert list(p) == ["scale"]
    np.testing.assert_array_equal(p["scale"], np.ones(8))
    p = batch_norm().init(key, (8,), {})
    np.testing.assert_array_equal(p["offset"], np.zeros(8))


@pytest.mark.parametrize("make", [layer_norm, rms_norm], ids=["layer_norm", "rms_norm"])
@pytest.mark.parametrize("shape", [(16,), (4, 8)], ids=["vector", "sequence"])
def test_closed_form_jacobian_equals_jacfwd(key, make, shape):
    layer = make(eps=1e-3)
    params = _random_params(layer, key, shape)
    x1 = 2.0 * jax.random.normal(jax.random.fold_in(key, 2), shape) - 0.5
    closed = layer.jac(params, x1)
    auto = jax.jacfwd(lambda v: layer.apply(params, v[None])[0])(x1).reshape(x1.size, x1.size)
    assert closed.shape == (x1.size, x1.size)
    np.testing.assert_allclose(closed, auto, **JAC)
    # gl.jacobian dispatches to the closed form
    np.testing.assert_allclose(gl.jacobian(layer, params, x1), closed, rtol=0, atol=0)


def test_sequence_jacobian_is_block_diagonal(key):
    layer = layer_norm()
    x1 = jax.random.normal(key, (3, 4))
    j = np.asarray(layer.jac(layer.init(key, (3, 4), {}), x1)).reshape(3, 4, 3, 4)
    off = j.copy()
    for t in range(3):
        off[t, :, t, :] = 0.0
    np.testing.assert_array_equal(off, 0.0)


def test_layer_norm_jacobian_kills_mean_and_xhat(key):
    # I - 11^T/d - xhat xhat^T/d annihilates the constant direction and xhat itself
    layer = layer_norm(eps=0.0)
    x1 = jax.random.normal(key, (8,))
    j = layer.jac(layer.init(key, (8,), {}), x1)
    xhat = (x1 - x1.mean()) / jnp.std(x1)
    np.testing.assert_allclose(j @ jnp.ones(8), 0.0, atol=1e-5)
    np.testing.assert_allclose(j @ xhat, 0.0, atol=1e-5)


def test_batch_norm_jacobian_raises(key):
    layer = batch_norm()
    with pytest.raises(ValueError, match="no per-example Jacobian"):
        gl.jacobian(layer, layer.init(key, (4,), {}), jnp.ones(4))


def test_batch_norm_couples_examples(key):
    # why it has no per-example Jacobian: changing example 1 changes example 0's output
    layer = batch_norm()
    p = layer.init(key, (4,), {})
    x = jax.random.normal(key, (3, 4))
    y0 = layer.apply(p, x)[0]
    y1 = layer.apply(p, x.at[1].add(1.0))[0]
    assert not np.allclose(y0, y1)


def test_in_a_serial_names_and_scan(key):
    net = gl.serial(
        layer_norm(name="ln"), gl.dense(8, name="fc"), rms_norm(name="rms"), batch_norm()
    )
    groups = param_groups(net, (8,))
    assert [g.names for g in groups] == [("ln",), ("fc",), ("rms",), ("batch_norm3",)]
    # identical norms in a row are scanned with stacked params
    run = gl.serial(*[gl.named(layer_norm(), f"ln{i}") for i in range(3)], scan=True)
    p = run.init(key, (8,), {})
    assert p[0]["scale"].shape == (3, 8)


@pytest.mark.parametrize("make", [layer_norm, rms_norm, batch_norm])
def test_bad_inputs(make):
    with pytest.raises(ValueError, match="eps"):
        make(eps=-1.0)
    with pytest.raises(ValueError, match=r"shape \(\.\.\., d\)"):
        make().out_shape(())
