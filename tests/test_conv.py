"""Convolution, pooling, flatten (gradflow.conv) and the built-in CNN (gradflow.cnn).

Forward passes are checked against float64 numpy references written out with loops here;
closed-form Jacobians against ``jax.jacfwd``; inits against their variance formulas (4 SE).
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import gradflow as gf
from gradflow import conv as gc
from gradflow import layers as gl
from gradflow.cnn import CNNConfig, cnn


def _normal(seed, shape):
    """Standard normal test data: float64 under x64, else float32. (numpy's seeded generator:
    every new shape of jax.random.normal costs a compilation of its own.)"""
    return jnp.asarray(np.random.default_rng(seed).standard_normal(shape))


def _tol(x):
    # float32: each output sums <= 27 products of O(1) terms, rounding ~ sqrt(27) * 2^-24 each;
    # 1e-5 leaves a 10x margin. Under x64 the kernel is promoted and only summation order differs.
    return 1e-12 if x.dtype == jnp.float64 else 1e-5


def _np_same_pads(spatial, window, stride):
    """XLA/TensorFlow SAME padding: out = ceil(n/s), total = max((out-1) s + k - n, 0), low half
    rounded down."""
    pads = []
    for n, k, s in zip(spatial, window, stride, strict=True):
        total = max((-(-n // s) - 1) * s + k - n, 0)
        pads.append((total // 2, total - total // 2))
    return pads


def _np_sliding(x, window, stride, pads, reduce):
    """y[n, p] = reduce(patch_p) at every output position p of the zero-padded x (batch,
    *spatial, c); patch_p = xpad[:, p * stride : p * stride + window, :]."""
    xp = np.pad(np.asarray(x, np.float64), [(0, 0), *pads, (0, 0)])
    out = [(n - k) // s + 1 for n, k, s in zip(xp.shape[1:-1], window, stride, strict=True)]
    y = None
    for idx in np.ndindex(*out):
        cut = tuple(slice(i * s, i * s + k) for i, s, k in zip(idx, stride, window, strict=True))
        row = reduce(xp[(slice(None), *cut, slice(None))])
        y = np.zeros((x.shape[0], *out, row.shape[-1])) if y is None else y
        y[(slice(None), *idx, slice(None))] = row
    return y


def np_conv(x, w, b, stride, padding):
    """float64 reference: y[n, p, o] = sum_{d, i} xpad[n, p s + d, i] w[d, i, o] + b[o]."""
    w, b = np.asarray(w, np.float64), np.asarray(b, np.float64)
    nd = w.ndim - 2
    window, stride = w.shape[:nd], (stride,) * nd if isinstance(stride, int) else stride
    pads = _np_same_pads(x.shape[1:-1], window, stride) if padding == "SAME" else [(0, 0)] * nd
    return _np_sliding(
        x, window, stride, pads, lambda patch: np.tensordot(patch, w, axes=nd + 1) + b[None, :]
    )


def np_pool(x, window, stride, reduce):
    """float64 reference: ``reduce`` (np.mean, np.max) over each window, VALID."""
    nd = x.ndim - 2
    axes = tuple(range(1, nd + 1))
    return _np_sliding(x, window, stride, [(0, 0)] * nd, lambda patch: reduce(patch, axis=axes))


@functools.partial(jax.jit, static_argnums=0)
def _jacobians(layer, params, x1):
    """(closed form, jax.jacfwd) Jacobians of one example, both (out_size, in_size); one
    compilation (eager, every small op would compile on its own)."""
    j = gl.jacobian(layer, params, x1)
    j = jnp.diag(j.d) if isinstance(j, gl.Diag) else j
    jf = jax.jacfwd(lambda v: layer.apply(params, v[None])[0])(x1)
    return j, jf.reshape(-1, x1.size)


# --------------------------------------------------------------------------------------------
# Forward passes


@pytest.mark.parametrize("padding", ["SAME", "VALID"])
@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("kernel, shape", [(3, (9, 3)), ((3, 2), (7, 6, 3))])
def test_conv_matches_numpy(kernel, shape, stride, padding, key):
    layer = gc.conv(4, kernel, stride=stride, padding=padding)
    k = kernel if isinstance(kernel, tuple) else (kernel,)
    params = {"w": _normal(1, (*k, shape[-1], 4)), "b": _normal(2, (4,))}
    x = _normal(3, (2, *shape))
    y = layer.apply(params, x)
    want = np_conv(x, params["w"], params["b"], stride, padding)
    assert y.shape == want.shape == (2, *layer.out_shape(shape))
    np.testing.assert_allclose(np.asarray(y), want, rtol=_tol(x), atol=_tol(x))


@pytest.mark.parametrize("kind", ["avg_pool", "max_pool"])
@pytest.mark.parametrize("window, stride", [(2, None), (3, 2)])
@pytest.mark.parametrize("shape", [(9, 3), (7, 6, 2)])
def test_pool_matches_numpy(kind, window, stride, shape, key):
    layer = getattr(gc, kind)(window, stride)
    x = _normal(4, (2, *shape))
    nd = len(shape) - 1
    y = layer.apply(None, x)
    reduce = np.mean if kind == "avg_pool" else np.max
    want = np_pool(x, (window,) * nd, (stride or window,) * nd, reduce)
    assert y.shape == want.shape == (2, *layer.out_shape(shape))
    np.testing.assert_allclose(np.asarray(y), want, rtol=_tol(x), atol=_tol(x))


def test_flatten_and_global_avg_pool(key):
    x = _normal(5, (2, 5, 4, 3))
    flat, gap = gc.flatten(), gc.global_avg_pool()
    np.testing.assert_array_equal(np.asarray(flat.apply(None, x)), np.asarray(x).reshape(2, 60))
    assert flat.out_shape((5, 4, 3)) == (60,) and gap.out_shape((5, 4, 3)) == (3,)
    want = np.asarray(x, np.float64).mean(axis=(1, 2))
    np.testing.assert_allclose(np.asarray(gap.apply(None, x)), want, rtol=_tol(x), atol=_tol(x))


# --------------------------------------------------------------------------------------------
# Jacobians


JAC_CASES = [
    (gc.conv(3, 3), (6, 2)),
    (gc.conv(3, 2, stride=2, padding="VALID"), (7, 2)),
    (gc.conv(3, (3, 2)), (5, 4, 2)),
    (gc.conv(3, 3, stride=(2, 1), padding="VALID"), (6, 5, 2)),
    (gc.avg_pool(2), (6, 5, 2)),
    (gc.avg_pool(3, 1), (7, 2)),
    (gc.max_pool(2), (6, 4, 2)),
    (gc.flatten(), (3, 4, 2)),
    (gc.global_avg_pool(), (3, 4, 2)),
]


@pytest.mark.parametrize("layer, shape", JAC_CASES, ids=lambda v: getattr(v, "kind", str(v)))
def test_jacobian_matches_jacfwd(layer, shape, key):
    params = None
    if layer.has_params:  # random weights (and biases) of the shapes init draws
        draw = jax.eval_shape(lambda k: layer.init(k, shape, {}), key)
        params = jax.tree.map(lambda s: _normal(s.size, s.shape), draw)
    x1 = _normal(6, shape)
    j, jf = _jacobians(layer, params, x1)
    assert (layer.jac is None) == (layer.kind == "max_pool")  # max pool: the jacfwd fallback
    # Every entry is one weight (or 1/window) times 1 plus exact zeros on both routes, so they
    # agree exactly on CPU; 1e-6 only allows for a backend that rounds a product differently.
    np.testing.assert_allclose(np.asarray(j), np.asarray(jf), rtol=1e-6, atol=1e-7)


def test_cnn_jacobian_chain_matches_jacfwd(key):
    # pool=None and equal channels: conv2/conv3 run as one lax.scan, walked as one by jacobian.
    model = cnn((6, 6, 1), (2, 3, 3), pool=None)
    params = model.init(key)
    x1 = _normal(7, (6, 6, 1))
    j, jf = _jacobians(model.net, params, x1)
    # A product of 5 float32 matrices summed in another order: 1e-5 of the largest entry.
    scale = float(jnp.max(jnp.abs(jf)))
    np.testing.assert_allclose(np.asarray(j), np.asarray(jf), rtol=0, atol=1e-5 * scale)


# --------------------------------------------------------------------------------------------
# Initialisation


def _draws(layer, key, shape, hyper, n_keys=32):
    keys = jax.vmap(lambda i: jax.random.fold_in(key, i))(jnp.arange(n_keys))
    return jax.jit(jax.vmap(lambda k, h: layer.init(k, shape, h), in_axes=(0, None)))(keys, hyper)


def _assert_variance(values, var, what):
    """E[v^2] = var with v zero-mean, within 4 standard errors of the sample mean of v^2."""
    sq = np.asarray(values, np.float64).ravel() ** 2
    se = sq.std() / np.sqrt(sq.size)
    assert abs(sq.mean() - var) < 4 * se, f"{what}: E[v^2] = {sq.mean():.5g}, want {var:.5g}"


@pytest.mark.parametrize(
    "init, kwargs, hyper, w_var, b_var",
    [
        ("he", {}, {}, 2 / 72, 0.0),
        ("lecun", {}, {}, 1 / 72, 0.0),
        ("gaussian", dict(sigma_w2=1.7, sigma_b2=0.3), {}, 1.7 / 72, 0.3),
        ("gaussian", dict(sigma_w2=1.7), {"sigma_w2": jnp.array(3.0)}, 3.0 / 72, 0.0),
        ("glorot_uniform", {}, {}, 2 / (72 + 9 * 64), 0.0),
    ],
)
def test_init_variance(init, kwargs, hyper, w_var, b_var, key):
    # fan_in = prod(kernel) * c_in = 3 * 3 * 8 = 72 (He et al. 2015); 32 keys give 147k weights
    # and 2,048 biases, so 4 SE is about 3% of w_var and 12% of b_var.
    layer = gc.conv(64, (3, 3), init=init, **kwargs)
    p = _draws(layer, key, (5, 5, 8), hyper)
    assert p["w"].shape == (32, 3, 3, 8, 64) and p["b"].shape == (32, 64)
    _assert_variance(p["w"], w_var, f"{init} weights")
    if b_var == 0.0:
        assert not np.any(np.asarray(p["b"]))
    else:
        _assert_variance(p["b"], b_var, f"{init} biases")
    if init == "glorot_uniform":
        assert np.max(np.abs(np.asarray(p["w"]))) <= np.sqrt(6 / (72 + 9 * 64))


def test_orthogonal_init_is_semi_orthogonal_when_flattened(key):
    layer = gc.conv(8, (3, 3), init="orthogonal", sigma_w2=2.0)
    w = np.asarray(layer.init(key, (5, 5, 4), {})["w"], np.float64).reshape(36, 8)
    np.testing.assert_allclose(w.T @ w, 2.0 * np.eye(8), atol=1e-5)


# --------------------------------------------------------------------------------------------
# The built-in CNN


def _mnist_like(batch=8):
    """Pixels uniform in [0, 1) and labels 0..9, the shapes of MNIST."""
    gen = np.random.default_rng(8)
    x = gen.uniform(size=(batch, 28, 28, 1)).astype(np.float32)
    return jnp.asarray(x), jnp.asarray(gen.integers(0, 10, batch), jnp.int32)


def test_cnn_structure(key):
    model = cnn()
    assert model == cnn() and model != cnn(channels=(16, 16))
    assert model.config == CNNConfig() and model.describe()["kind"] == "cnn"
    params = jax.eval_shape(model.init, key)  # shapes only: nothing here needs to run
    shapes = jax.tree.map(jnp.shape, params)
    assert shapes == [
        {"w": (3, 3, 1, 16), "b": (16,)},
        {"w": (3, 3, 16, 32), "b": (32,)},
        {"w": (7 * 7 * 32, 10), "b": (10,)},
    ]
    x, _ = _mnist_like(batch=3)
    assert jax.eval_shape(model.apply, params, x).shape == (3, 10)
    specs, _ = gf.taps.discover(model.apply, params, x)
    assert list(specs) == ["conv1", "conv2"]
    assert specs["conv2"].shape == (3, 14, 14, 32)
    assert dict(specs["conv1"].meta) == {"activation": "relu"}
    one_d = cnn((16, 2), (4, 6), 3, kernel=5, pooling="avg")  # (length, channels): 1-D convs
    shapes = jax.eval_shape(one_d.init, key)
    assert shapes[1]["w"].shape == (5, 4, 6)
    assert jax.eval_shape(one_d.apply, shapes, jnp.zeros((3, 16, 2))).shape == (3, 3)


def test_cnn_probes_and_sweep(key):
    model = cnn()
    x, y = _mnist_like()
    norms = gf.layer_grad_norms(model, model.init(key), x, y, loss="xent")
    assert norms.names == ("conv1", "conv2", "readout")
    assert norms.hidden_names == ("conv1", "conv2")
    assert np.all(np.isfinite(norms.params)) and np.all(np.asarray(norms.params) > 0)
    assert np.all(np.asarray(norms.hidden) > 0)
    swept = gf.sweep(gf.layer_grad_norms, model, 8, x, y, loss="xent", chunk_size=4, quiet=True)
    assert swept.params.shape == (8, 3) and swept.hidden.shape == (8, 2)
    # Seed 5 of the sweep is the network model.init(seed_keys(8)[5]); vmapped float32 sums may
    # round differently, hence 1e-5.
    one = gf.layer_grad_norms(model, model.init(gf.seed_keys(8)[5]), x, y, loss="xent")
    np.testing.assert_allclose(swept.params[5], np.asarray(one.params), rtol=1e-5)


def test_cnn_scanned_blocks_keep_names(key):
    model = cnn((8, 8, 1), (2, 4, 4, 4), pool=None, pooling="avg", scan=True)
    params = jax.eval_shape(model.init, key)
    assert params[2]["w"].shape == (2, 3, 3, 4, 4)  # conv3 and conv4 stacked
    x = _normal(9, (2, 8, 8, 1))
    # Traced, not run (the probe's names are static): the taps of a scanned run get one name each.
    probe = functools.partial(gf.layer_grad_norms, model, loss="xent")
    norms = jax.eval_shape(probe, params, x, jnp.array([1, 2]))
    assert norms.names == ("conv1", "conv2", "conv3", "conv4", "readout")
    assert norms.hidden_names == ("conv1", "conv2", "conv3", "conv4")


def test_cnn_gaussian_overrides(key):
    model = cnn((6, 6, 1), (64,), init="gaussian", sigma_w2=1.0, pool=None)
    w = model.init(key, sigma_w2=jnp.array(4.0))[0]["w"]
    _assert_variance(w, 4.0 / 9, "conv1 weights with sigma_w2=4")


# --------------------------------------------------------------------------------------------
# Errors


def _init(layer, shape):
    return lambda: layer.init(jax.random.key(0), shape, {})


def _apply(layer, shape, x_shape):
    params = layer.init(jax.random.key(0), shape, {})
    return layer.apply(params, jnp.zeros(x_shape))


def _probe_without_channel_axis():
    model = cnn()
    x, y = jnp.zeros((2, 28, 28)), jnp.zeros((2,), jnp.int32)
    return gf.layer_grad_norms(model, jax.eval_shape(model.init, jax.random.key(0)), x, y)


BAD = [
    (_init(gc.conv(4, (3, 3)), (9, 3)), "one example of shape \\(height, width, channels\\)"),
    (_init(gc.conv(4, 3), (5,)), "one example of shape"),
    (lambda: _apply(gc.conv(4, 3), (5, 5, 1), (2, 5, 5, 5, 1)), "expects x of shape"),
    (lambda: gc.max_pool(2).apply(None, jnp.zeros((5, 2))), "expects x of shape"),
    (lambda: gc.conv(4, 5, padding="VALID").out_shape((3, 3, 2)), "use padding='SAME'"),
    (lambda: gc.max_pool(3).out_shape((2, 2, 1)), "larger than the input"),
    (lambda: gc.conv(4, 3, init="xavier"), "unknown init 'xavier'; choose one of"),
    (lambda: gc.conv(4, 3, padding="full"), "unknown padding 'full'; choose 'SAME' or 'VALID'"),
    (lambda: gc.conv(4, (3, 3, 3)), "kernel must be a positive int or a tuple of 1 or 2"),
    (lambda: gc.conv(4, 3, sigma_w2=2.0), "only apply to init='gaussian'"),
    (lambda: gc.avg_pool((2, 2), stride=(1,)), "different lengths"),
    (lambda: cnn((4, 4, 1), (2, 2, 2)), "larger than the input"),
    (lambda: cnn((28,)), "one example of shape"),
    (lambda: cnn(pooling="mean"), "unknown pooling 'mean'; choose one of: max, avg"),
    (lambda: cnn(channels=()), "channels must be a non-empty tuple"),
    (lambda: cnn(activation="swish"), "unknown activation"),
    (lambda: cnn().init(jax.random.key(0), sigma_w2=2.0), "drop the override"),
    (_probe_without_channel_axis, "x must have shape \\(batch, 28, 28, 1\\)"),
]


@pytest.mark.parametrize("call, match", BAD)
def test_bad_input_raises_one_line_value_error(call, match):
    with pytest.raises(ValueError, match=match) as err:
        call()
    assert "\n" not in str(err.value)
