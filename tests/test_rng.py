"""gradflow.rng draws equal jax.random's bit for bit (the reference), eagerly, jitted and vmapped.

Tolerance: none. The module's promise is identical numbers (seed identity with plain jax.random
code), so every comparison is exact equality.
"""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import gradflow
from gradflow import inits, nets, rng

SHAPES = [(1,), (7,), (30,), (784, 30), (5, 3), (256, 256), (2, 3, 4)]


@pytest.mark.parametrize("shape", SHAPES)
def test_normal_and_uniform_equal_jax_random(shape):
    key = jax.random.key(123)
    np.testing.assert_array_equal(rng.normal(key, shape), jax.random.normal(key, shape))
    np.testing.assert_array_equal(
        rng.uniform(key, shape, jnp.float32, -0.3, 0.7),
        jax.random.uniform(key, shape, jnp.float32, -0.3, 0.7),
    )
    # Inside a jit, constant bounds are folded the same way for both.
    draw = jax.jit(lambda k: rng.uniform(k, shape, jnp.float32, -0.3, 0.7))
    reference = jax.jit(lambda k: jax.random.uniform(k, shape, jnp.float32, -0.3, 0.7))
    np.testing.assert_array_equal(draw(key), reference(key))


@pytest.mark.parametrize("shape", [(784, 30), (5, 3), (1, 9), (64, 64)])
def test_transposed_draws_are_the_draw_transposed(shape):
    key = jax.random.key(7)
    np.testing.assert_array_equal(
        rng.normal(key, shape, transpose=True), jax.random.normal(key, shape).T
    )
    np.testing.assert_array_equal(
        rng.uniform(key, shape, jnp.float32, -2.0, 2.0, transpose=True),
        jax.random.uniform(key, shape, jnp.float32, -2.0, 2.0).T,
    )


def test_transpose_needs_a_matrix():
    with pytest.raises(ValueError, match="2-d shape"):
        rng.normal(jax.random.key(0), (3, 4, 5), transpose=True)


@pytest.mark.parametrize("num", [2, 3, 51])
def test_split_equals_jax_random_split(num):
    key = jax.random.key(99)
    np.testing.assert_array_equal(
        jax.random.key_data(rng.split(key, num)), jax.random.key_data(jax.random.split(key, num))
    )


def test_vmapped_and_jitted_draws_equal_per_key_draws():
    keys = gradflow.seed_keys(5)
    ours = jax.jit(jax.vmap(lambda k: rng.normal(k, (30, 10), transpose=True)))(keys)
    for i in range(5):
        np.testing.assert_array_equal(ours[i], jax.random.normal(keys[i], (30, 10)).T)


@pytest.mark.parametrize("init", ["nielsen", "glorot_uniform", "gaussian", "orthogonal"])
def test_transposed_layer_draw_is_the_same_layer(init):
    key = jax.random.key(3)
    plain = inits.init_dense(key, 20, 6, init, 1.5, 0.2)
    flipped = inits.init_dense(key, 20, 6, init, 1.5, 0.2, transposed=True)
    for name in ("w", "b"):
        np.testing.assert_array_equal(plain[name], flipped[name])


def test_feature_major_forward_equals_row_major(monkeypatch):
    """The memory order gf.mlp picks changes no result beyond float32 summation order."""
    widths = [40, 8, 8, 3]  # first layer dominates: feature-major by default
    assert nets._feature_major(widths)
    x = jax.random.normal(jax.random.key(1), (6, 40))
    y = jax.random.normal(jax.random.key(2), (6, 3))
    model = gradflow.mlp(widths, "tanh", "lecun")
    params = model.init(jax.random.key(0))
    fm = gradflow.layer_grad_norms(model, params, x, y, loss="mse")
    monkeypatch.setattr(nets, "_feature_major", lambda widths: False)
    model = gradflow.mlp(widths, "tanh", "lecun")
    rm_params = model.init(jax.random.key(0))
    jax.tree.map(np.testing.assert_array_equal, params, rm_params)
    rm = gradflow.layer_grad_norms(model, rm_params, x, y, loss="mse")
    for a, b in zip(jax.tree.leaves(fm), jax.tree.leaves(rm), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)  # float32 reassociation


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.int32, jnp.uint32])
def test_once_is_the_identity_bit_for_bit(dtype):
    # The sentinels themselves (-inf, the integer minimum), NaN and -0.0 must come back as they
    # went in: once() is a reduction under "the first operand that is not the sentinel".
    if dtype == jnp.float32:
        values = [-np.inf, np.inf, np.nan, -0.0, 0.0, 1.5, -3.0, np.finfo(np.float32).tiny]
    else:
        info = np.iinfo(dtype)
        values = [info.min, info.max, 0, 1, info.min + 1]
    x = np.array(values, dtype).reshape(-1, 1) * np.ones((1, 3), dtype)
    for out in (rng.once(x), jax.jit(rng.once)(x), jax.vmap(rng.once)(x)):
        np.testing.assert_array_equal(np.asarray(out).view(np.uint32), x.view(np.uint32))


def test_once_has_the_identity_gradient_and_compiles_once_per_shape():
    x = jnp.array([0.5, -2.0, 3.0])
    np.testing.assert_array_equal(jax.grad(lambda v: jnp.sum(rng.once(v) ** 2))(x), 2 * x)
    # Eager calls reuse one compiled reduction per shape (a new combiner per call used to
    # recompile it every time: 30 ms a call, 90 s for an eager depth-1000 init).
    y = jnp.ones((7, 5))
    rng.once(y)
    size = rng._first_not_sentinel._cache_size()
    for _ in range(3):
        rng.once(y + 1)
    assert rng._first_not_sentinel._cache_size() == size


def _hash_kernels(fn, *args) -> list[str]:
    """The fused computations of ``jax.jit(fn)``'s optimized HLO that contain a Threefry hash (its
    20 rounds are ~40 xors; nothing else in these programs has 10), with instruction and
    parameter names and metadata removed (two equal strings are one kernel to XLA)."""
    text = jax.jit(fn).lower(*args).compile().as_text()
    kernels = []
    for comp in re.split(r"\n(?=%?\S+ \(.*\) -> .* \{)", text):
        if comp.count(" xor(") >= 10:
            comp = re.sub(r", metadata=\{[^}]*\}", "", comp)
            kernels.append(re.sub(r"param_\d+(\.\d+)?", "p", re.sub(r"%[\w.\-]+", "%v", comp)))
    return kernels


def test_a_sweep_draws_each_parameter_once():
    """Under vmap(init -> probe) no consumer of a weight (matmuls, transposes, norms, slices of a
    stacked draw) recomputes its draw: the probe adds no Threefry kernel to the init's own. XLA
    fuses the cheap hash into every consumer otherwise (rng.once); the attention's four stacked
    matrices, the embedding and the positions were drawn 2-4 times each before."""
    model = gradflow.transformer(2, 8, 2, 4, vocab=11, n_out=3)
    keys = jax.random.split(jax.random.key(0), 4)
    x = jax.random.randint(jax.random.key(1), (2, 4), 0, 11)
    y = jnp.array([0, 2])
    probe = lambda k: gradflow.layer_grad_norms(model, model.init(k), x, y, loss="xent")  # noqa: E731
    draws = len(_hash_kernels(jax.vmap(model.init), keys))
    assert draws > 0
    assert len(_hash_kernels(jax.vmap(probe), keys)) == draws


def test_every_layer_of_one_shape_draws_with_the_same_kernel():
    """Each draw reads its key as an input (rng._own_words), so the key splits and draws of all
    layers of one shape are one kernel that XLA compiles once (a depth-50 width-256 sweep
    compiled 19 -> 15 s): the count of distinct hash kernels does not grow with depth."""

    def distinct(depth):
        model = gradflow.mlp([160] * (depth + 1), "tanh", "gaussian")  # 160^2 > BATCH_INIT_MAX
        keys = jax.random.split(jax.random.key(0), 4)
        return len(set(_hash_kernels(jax.vmap(model.init), keys)))

    assert distinct(8) == distinct(3)
