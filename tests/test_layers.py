"""The core layers: closed-form Jacobians against jax.jacfwd, serial's segments, scanning and
naming, and bad input."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gradflow import layers as gl
from gradflow import taps
from gradflow.groups import param_groups


def _dense_jac(j, n):
    return np.diag(np.asarray(j.d)) if isinstance(j, gl.Diag) else np.asarray(j).reshape(-1, n)


@pytest.mark.parametrize(
    "layer",
    [
        gl.dense(5, "gaussian", sigma_w2=1.5, sigma_b2=0.2),
        gl.activation("tanh"),
        gl.activation("gelu"),
        gl.mark(activation="tanh"),
        gl.residual(gl.serial(gl.dense(4), gl.activation("relu")), 0.5),
        gl.serial(gl.dense(6), gl.activation("sigmoid"), gl.dense(3)),
    ],
    ids=["dense", "tanh", "gelu", "mark", "residual", "serial"],
)
def test_closed_form_jacobians_equal_jacfwd(layer, key):
    x1 = jax.random.normal(jax.random.key(1), (4,))
    params = layer.init(key, (4,), {}) if layer.has_params else None
    got = _dense_jac(gl.jacobian(layer, params, x1), 4)
    want = jax.jacfwd(lambda v: layer.apply(params, v[None])[0])(x1)
    # float32, one or two layers: the closed forms and forward-mode AD round differently by a
    # few ulps of O(1) entries.
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_serial_scans_long_runs_only_and_names_them(key):
    block = lambda i: gl.named(gl.serial(gl.dense(6), gl.mark(), gl.activation("tanh")), f"b{i}")  # noqa: E731
    blocks = [block(i) for i in range(1, 6)]
    # Segments: b1 (4 -> 6) alone, then b2..b5 (6 -> 6, equal): one run of four.
    segs = gl.segments(tuple(blocks), (4,), True)
    assert [(s.start, s.stop) for s in segs] == [(0, 1), (1, 5)]
    assert [(s.start, s.stop) for s in gl.segments(tuple(blocks), (4,))] == [(i, i + 1) for i in
                                                                            range(5)]  # fmt: skip
    scanned, unrolled = gl.serial(*blocks, scan=True), gl.serial(*blocks)
    ps, pu = scanned.init(key, (4,), {}), unrolled.init(key, (4,), {})
    assert ps[1]["w"].shape == (4, 6, 6) and len(pu) == 5
    for i in range(4):  # the same draws, stacked or not
        np.testing.assert_array_equal(ps[1]["w"][i], pu[i + 1]["w"])
    x = jax.random.normal(jax.random.key(2), (3, 4))
    # Same arithmetic, but XLA may fuse a scanned and an unrolled dot differently: float32
    # rounding (eps 1.2e-7) over five width-6 layers, on outputs of size ~0.03-0.8.
    np.testing.assert_allclose(scanned.apply(ps, x), unrolled.apply(pu, x), rtol=1e-5, atol=1e-6)
    names = [g.names for g in param_groups(scanned, (4,))]
    assert names == [("b1",), ("b2", "b3", "b4", "b5")]
    specs, _ = taps.discover(scanned.apply, ps, x)
    assert list(specs) == ["b1", "b2", "b3", "b4", "b5"]


@pytest.mark.parametrize("width", [6, 160])  # 160 x 160 > BATCH_INIT_MAX: drawn one by one
def test_unrolled_runs_draw_each_layer_from_its_own_key(width, key):
    """A serial draws its runs of identical small layers in one vectorised draw: bit for bit the
    numbers each layer draws alone from its own key (rng.split of the serial's key)."""
    from gradflow import rng, serial

    assert (width * width <= serial.BATCH_INIT_MAX) == (width == 6)
    block = lambda: gl.serial(gl.dense(width, "gaussian", sigma_b2=0.1), gl.activation("tanh"))  # noqa: E731
    blocks = [block() for _ in range(5)]
    params = gl.serial(*blocks, scan=False).init(key, (4,), {})
    keys = rng.split(key, 5)
    shapes = [(4,)] + [(width,)] * 4
    for i, (b, k, shape) in enumerate(zip(blocks, keys, shapes, strict=True)):
        alone = b.init(k, shape, {})
        for got, want in zip(jax.tree.leaves(params[i]), jax.tree.leaves(alone), strict=True):
            np.testing.assert_array_equal(got, want)
    assert not np.array_equal(params[1]["w"], params[2]["w"])  # distinct keys, distinct draws


def test_bad_layer_input():
    with pytest.raises(ValueError, match="scan must be 'auto', True, False or an int >= 2"):
        gl.serial(gl.dense(3), scan=1)
    with pytest.raises(ValueError, match="unique"):
        gl.serial(gl.named(gl.dense(3), "a"), gl.named(gl.dense(3), "a"))
    with pytest.raises(ValueError, match="a layer name must be a non-empty string"):
        gl.named(gl.dense(3), "a/b")
    with pytest.raises(ValueError, match="residual branch maps shape"):
        gl.residual(gl.dense(3)).out_shape((4,))
    with pytest.raises(ValueError, match="unknown activation 'swish'"):
        gl.activation("swish")
    with pytest.raises(ValueError, match="params do not match this serial"):
        net = gl.serial(gl.dense(3), gl.activation("tanh"), gl.dense(2))
        net.apply([{"w": jnp.zeros((4, 3)), "b": jnp.zeros(3)}], jnp.zeros((1, 4)))
