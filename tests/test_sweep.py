"""Seed sweeps: invariance (loop, n, chunking, key forms, hyper), summaries, bad input."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import gradflow
from gradflow.seeds import as_keys, seed_keys
from gradflow.stats import summarize
from gradflow.sweep import sweep
from tests.conftest import assert_trees_close

# Two weight layers: compiling the vmapped threefry draws dominates each sweep's cost on CPU.
WIDTHS = [6, 5, 3]
MODEL = gradflow.mlp(WIDTHS, "tanh", "nielsen")
MODEL_GAUSSIAN = gradflow.mlp(WIDTHS, "tanh", "gaussian", sigma_b2=0.1)
X = np.random.default_rng(0).normal(size=(8, 6)).astype(np.float32)
Y = np.random.default_rng(1).integers(0, 3, size=8).astype(np.int32)

# vmap batches the per-seed matmuls differently from a single call, so XLA may reorder float32
# sums: results agree to a few ulps, not bitwise.
RTOL = 1e-5
N = 6  # one seed count and one loss shared by the tests: each program compiles once


def params_of(model, params):
    """A per-seed fn returning the drawn parameters themselves."""
    return params


@functools.cache
def _one_seed(fn, model, loss):
    # Jitted once per (fn, model, loss) and shared by the tests: eager op-by-op dispatch, or a
    # fresh compilation per test, would cost more than the sweeps under test.
    return jax.jit(lambda key, x, y: fn(model, model.init(key), x, y, loss=loss))


def loop(fn, model, keys, x, y, loss):
    """The reference: a Python loop over the keys, one unbatched seed at a time."""
    outs = [_one_seed(fn, model, loss)(k, x, y) for k in keys]
    return jax.tree.map(lambda *xs: np.stack(xs), *outs)


def test_seed_keys_are_fold_in_of_key_0():
    keys = seed_keys(5)
    assert keys.shape == (5,) and jnp.issubdtype(keys.dtype, jax.dtypes.prng_key)
    for i in range(5):
        want = jax.random.key_data(jax.random.fold_in(jax.random.key(0), i))
        np.testing.assert_array_equal(jax.random.key_data(keys[i]), want)


def test_sweep_equals_python_loop():
    got = sweep(gradflow.layer_grad_norms, MODEL, N, X, Y, loss="xent")
    want = loop(gradflow.layer_grad_norms, MODEL, seed_keys(N), X, Y, "xent")
    assert isinstance(got, gradflow.LayerGradNorms)
    assert all(isinstance(v, np.ndarray) and v.shape == (N, 2) for v in jax.tree.leaves(got))
    assert got.names == ("layer1", "layer2")
    assert_trees_close(got, want, rtol=RTOL)
    # Different seeds are different networks.
    assert len(np.unique(got.weights[:, 0])) == N


def test_seed_i_does_not_depend_on_n():
    p_n = sweep(params_of, MODEL, N)
    p37 = sweep(params_of, MODEL, 37)
    # Drawing weights is elementwise per key: bit-identical whatever the batch of seeds.
    assert_trees_close(p_n, jax.tree.map(lambda a: a[:N], p37), rtol=0.0)


@pytest.mark.parametrize(
    "chunk_size, vmap_size",
    [(None, 4), (6, 2), (4, 3), (5, 1), (3, 8)],  # 4 groups of 1; a chunk of 4 -> 6 (2 groups)
)
def test_vmap_groups_equal_one_vmap(chunk_size, vmap_size):
    # vmap_size only changes how many seeds are batched per step: same networks, same numbers
    # up to the float32 reordering of batched matmuls (RTOL), every seed present once.
    got = sweep(
        gradflow.layer_grad_norms, MODEL, N, X, Y, loss="xent",
        chunk_size=chunk_size, vmap_size=vmap_size,
    )  # fmt: skip
    want = sweep(gradflow.layer_grad_norms, MODEL, N, X, Y, loss="xent")
    assert got.weights.shape == (N, 2)
    assert_trees_close(got, want, rtol=RTOL)
    drawn = sweep(params_of, MODEL, N, chunk_size=chunk_size, vmap_size=vmap_size)
    assert_trees_close(drawn, sweep(params_of, MODEL, N), rtol=0)  # the draws: exact


def test_vmap_groups_in_a_grid_sweep():
    grid = {"sigma_w2": np.array([0.5, 2.0])}
    got = gradflow.grid_sweep(
        gradflow.layer_grad_norms, MODEL_GAUSSIAN, 3, X, Y, grid=grid, loss="xent",
        chunk_size=4, vmap_size=2,
    )  # fmt: skip
    want = gradflow.grid_sweep(
        gradflow.layer_grad_norms, MODEL_GAUSSIAN, 3, X, Y, grid=grid, loss="xent"
    )
    assert got.weights.shape == (2, 3, 2)
    assert_trees_close(got, want, rtol=RTOL)


def test_vmap_groups_with_auto_chunks():
    got = sweep(
        gradflow.layer_grad_norms, MODEL, N, X, Y, loss="xent",
        chunk_size="auto", memory="256MiB", vmap_size=4,
    )  # fmt: skip
    want = sweep(gradflow.layer_grad_norms, MODEL, N, X, Y, loss="xent")
    assert_trees_close(got, want, rtol=RTOL)


@pytest.mark.parametrize("bad", [0, -2, 2.5, True, "4"])
def test_bad_vmap_size(bad):
    with pytest.raises(ValueError, match="vmap_size must be"):
        sweep(gradflow.layer_grad_norms, MODEL, 4, X, Y, vmap_size=bad)


@pytest.mark.parametrize("chunk_size", [3, 4, 6, 64])  # 4 and 64 do not divide N = 6
def test_chunked_equals_unchunked(chunk_size):
    full = sweep(gradflow.layer_grad_norms, MODEL, N, X, Y, loss="xent")
    chunked = sweep(gradflow.layer_grad_norms, MODEL, N, X, Y, loss="xent", chunk_size=chunk_size)
    assert chunked.weights.shape == (N, 2)  # padding of the last chunk is dropped
    assert_trees_close(chunked, full, rtol=RTOL)


def test_a_sweep_traces_its_function_once():
    """One trace of one seed sizes the chunks and is the program every chunk evaluates: the
    model's Python runs once per sweep signature, not again for the chunk (or its memory plan)."""
    calls = []

    def counted(model, params, x, y, loss):
        calls.append(1)
        return gradflow.layer_grad_norms(model, params, x, y, loss=loss)

    out = sweep(counted, MODEL, N, X, Y, loss="xent", chunk_size=4)
    assert len(calls) == 1
    direct = sweep(gradflow.layer_grad_norms, MODEL, N, X, Y, loss="xent", chunk_size=4)
    assert_trees_close(out, direct, rtol=0)  # the same program: bit for bit
    sweep(counted, MODEL, 2 * N, X, Y, loss="xent", chunk_size=4)  # more seeds: no new trace
    gradflow.grid_sweep(counted, MODEL_GAUSSIAN, 2, X, Y, loss="xent", grid={"sigma_w2": [1, 2]})
    assert len(calls) == 2  # another model and a grid value: one more
    with jax.numpy_dtype_promotion("strict"):  # JAX's configuration changed: traced afresh
        sweep(counted, MODEL, N, X, Y, loss="xent", chunk_size=4)
    assert len(calls) == 3


def test_int_keys_equal_explicit_key_arrays():
    def run(keys):
        return sweep(gradflow.layer_grad_norms, MODEL, keys, X, Y, loss="xent")

    by_int = run(N)
    typed = seed_keys(N)
    # The same compiled program on the same keys: bit-identical.
    assert_trees_close(run(typed), by_int, rtol=0.0)
    raw = jax.random.key_data(typed)  # legacy uint32 keys, shape (N, 2)
    assert raw.shape == (N, 2)
    assert_trees_close(run(raw), by_int, rtol=0.0)
    assert_trees_close(run(np.asarray(raw)), by_int, rtol=0.0)
    # Arbitrary user keys: the sweep equals the loop over those keys.
    keys = jax.random.split(jax.random.key(42), N)
    want = loop(gradflow.layer_grad_norms, MODEL, keys, X, Y, "xent")
    assert_trees_close(run(keys), want, rtol=RTOL)
    assert not np.allclose(run(keys).weights, by_int.weights)


def test_as_keys_round_trip():
    np.testing.assert_array_equal(
        jax.random.key_data(as_keys(3)), jax.random.key_data(seed_keys(3))
    )


def test_hyper_equals_model_built_with_that_sigma():
    base = gradflow.mlp(WIDTHS, "tanh", "gaussian", sigma_w2=1.0, sigma_b2=0.0)
    built = gradflow.mlp(WIDTHS, "tanh", "gaussian", sigma_w2=2.5, sigma_b2=0.3)
    hyper = {"sigma_w2": 2.5, "sigma_b2": 0.3}
    got = sweep(gradflow.layer_grad_norms, base, N, X, Y, hyper=hyper, loss="xent")
    want = sweep(gradflow.layer_grad_norms, built, N, X, Y, loss="xent")
    # sqrt(sigma) traced vs constant-folded in float32 (an ulp), then the RTOL of a vmap.
    assert_trees_close(got, want, rtol=RTOL)


def test_hyper_on_a_non_sigma_init_is_an_error():
    with pytest.raises(ValueError, match="sigma_w2/sigma_b2 only apply"):
        sweep(params_of, MODEL, N, hyper={"sigma_w2": 2.0})


def test_recurrent_sweep_equals_loop():
    model = gradflow.rnn(3, 4, 2, recurrent_init="gaussian", sigma_w2=1.5)
    x = np.random.default_rng(2).normal(size=(5, 6, 3)).astype(np.float32)
    y = np.array([0, 1, 1, 0, 1], np.int32)
    got = sweep(gradflow.time_grad_norms, model, 4, x, y, loss="xent", chunk_size=3)
    want = loop(gradflow.time_grad_norms, model, seed_keys(4), x, y, "xent")
    assert got.hidden.shape == (4, 6)
    assert_trees_close(got, want, rtol=RTOL)


# --------------------------------------------------------------------------------------------
# Summaries


def test_summarize_matches_numpy():
    v = np.exp(np.random.default_rng(3).normal(size=(50, 4)))  # log-normal, like norms
    s = summarize(v)
    # Same float64 numbers through the same numpy reductions: equal to rounding.
    np.testing.assert_allclose(s.median, np.median(v, axis=0), rtol=1e-12)
    np.testing.assert_allclose(s.q05, np.quantile(v, 0.05, axis=0), rtol=1e-12)
    np.testing.assert_allclose(s.q95, np.quantile(v, 0.95, axis=0), rtol=1e-12)
    np.testing.assert_allclose(s.geomean, np.exp(np.log(v).mean(axis=0)), rtol=1e-12)
    np.testing.assert_allclose(s.mean, v.mean(axis=0), rtol=1e-12)
    np.testing.assert_allclose(s.std, v.std(axis=0), rtol=1e-12)
    s1 = summarize(v.T, axis=1)
    np.testing.assert_allclose(s1.median, s.median, rtol=1e-12)


def test_summarize_keeps_exploded_seeds_visible():
    v = np.array([[1.0, 2.0], [2.0, np.inf], [4.0, np.nan], [8.0, 8.0]])
    s = summarize(v)
    # Median and quantiles skip non-finite seeds; mean and geometric mean show them.
    np.testing.assert_allclose(s.median, [3.0, 5.0], rtol=1e-12)
    np.testing.assert_allclose(s.geomean[0], 64 ** (1 / 4), rtol=1e-12)
    assert not np.isfinite(s.geomean[1]) and not np.isfinite(s.mean[1])


# --------------------------------------------------------------------------------------------
# Bad input


@pytest.mark.parametrize("n", [0, -3, 2.5, True, "8"])
def test_bad_seed_count(n):
    with pytest.raises(ValueError, match=r"seeds must be an int >= 1|keys must be"):
        sweep(gradflow.layer_grad_norms, MODEL, n, X, Y)


def test_bad_keys_array():
    with pytest.raises(ValueError, match="keys must be"):
        sweep(params_of, MODEL, np.zeros((3, 5), np.uint32))
    with pytest.raises(ValueError, match="keys must be"):
        sweep(params_of, MODEL, jnp.zeros((4,), jnp.float32))


@pytest.mark.parametrize("where", ["x_nan", "x_inf", "y_nan"])
def test_non_finite_data(where):
    x, y = X.copy(), np.eye(3, dtype=np.float32)[Y]
    if where == "x_nan":
        x[2, 1] = np.nan
    elif where == "x_inf":
        x[0, 0] = -np.inf
    else:
        y[3, 0] = np.nan
    name = "x" if where.startswith("x") else "y"
    with pytest.raises(ValueError, match=f"{name} contains 1 NaN/inf value"):
        sweep(gradflow.layer_grad_norms, MODEL, 2, x, y)


def test_sweep_validates_shapes_before_tracing():
    with pytest.raises(ValueError, match=r"x must have shape \(batch, 6\)"):
        sweep(gradflow.layer_grad_norms, MODEL, 2, X[:, :5], Y)
    with pytest.raises(ValueError, match=r"y must be integer labels of shape \(8,\)"):
        sweep(gradflow.layer_grad_norms, MODEL, 2, X, Y[:7])
    with pytest.raises(ValueError, match="unknown loss"):
        sweep(gradflow.layer_grad_norms, MODEL, 2, X, Y, loss="l1")


def test_bad_chunk_size():
    with pytest.raises(ValueError, match="chunk_size"):
        sweep(gradflow.layer_grad_norms, MODEL, 4, X, Y, chunk_size=0)
