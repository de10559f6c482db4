"""curvature: HVP, Lanczos, SLQ, Hutchinson and layer blocks against a dense jax.hessian + eigh.

Tolerances scale with the working dtype's eps (float32 by default, float64 under
JAX_ENABLE_X64=1): Lanczos with full reorthogonalisation is backward stable (T is the exact
projection of H + E with ||E|| = O(eps ||H||); Paige 1971), and the dense reference Hessian
carries rounding of the same size, so quantities of degree p in H agree to ~ eps ||H||^p times
a small factor; we allow 100 eps.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.flatten_util import ravel_pytree

import gradflow as gf
import gradflow.layers as gl
from gradflow import curvature as cv
from gradflow.diagnose import hessian_vector_product, lanczos_extremes

FLOAT = jnp.asarray(0.0).dtype  # float32, or float64 under x64
EPS = float(np.finfo(FLOAT).eps)
TOL = 100 * EPS  # relative to ||H||^p (module docstring)


@functools.cache  # one draw for every test: each new random shape costs a compilation
def _pool():
    return np.asarray(jax.random.normal(jax.random.key(0), (16, 16), FLOAT))


def _data(n_in, n_out, labels=False):
    """16 examples: x (16, n_in) and targets (16, n_out), or labels 0/1 (16,)."""
    x, rest = _pool()[:, :n_in], _pool()[:, 8:]
    return jnp.asarray(x), jnp.asarray(
        (rest[:, 0] > 0).astype(np.int32) if labels else rest[:, :n_out]
    )


@functools.cache
def _dense(name):
    """The dense Hessian of a test net's batch loss in the working dtype, float64 numpy (n, n)."""
    return _dense_hessian(*{"mlp": _mlp, "nested": _nested, "scanned": _scanned}[name]()[:4],
                          "xent" if name == "nested" else "mse")  # fmt: skip


def _dense_hessian(model, params, x, y, loss):
    params = jax.tree.map(lambda a: a.astype(jnp.promote_types(a.dtype, FLOAT)), params)
    flat, unravel = ravel_pytree(params)
    per_example = gf.losses.get_loss(loss)
    batch = lambda f: jnp.mean(per_example(model.apply(unravel(f), x), y))  # noqa: E731
    return np.asarray(jax.jit(jax.hessian(batch))(flat), np.float64)


@functools.cache  # one model object: its compiled programs are reused
def _mlp():
    model = gf.mlp([4, 6, 3], "tanh", "lecun")  # 51 parameters
    return model, jax.jit(model.init)(jax.random.key(1)), *_data(4, 3)


@functools.cache
def _nested():
    """A from_apply model with nested-dict params (30 parameters), trained with softmax xent."""

    def init(key):
        k1, k2, k3 = jax.random.split(key, 3)
        return {
            "enc": {"w": jax.random.normal(k1, (3, 5)), "b": 0.3 * jax.random.normal(k2, (5,))},
            "dec": {"w": jax.random.normal(k3, (5, 2))},
        }

    def apply(p, x):
        return jnp.tanh(x @ p["enc"]["w"] + p["enc"]["b"][None]) @ p["dec"]["w"]

    model = gf.from_apply(init, apply)
    return model, jax.jit(model.init)(jax.random.key(2)), *_data(3, 2, True)


def test_hessian_vector_products_equal_the_dense_hessian():
    model, params, x, y = _nested()
    dense = _dense("nested")
    f = cv.batch_loss(model, x, y, "xent")
    v = jax.random.normal(jax.random.key(3), (dense.shape[0],), FLOAT)
    _, unravel = ravel_pytree(params)

    @jax.jit
    def both(v):  # the flat product, and the pytree form flattened
        return hessian_vector_product(f, params)(v), ravel_pytree(cv.hvp(f, params, unravel(v)))[0]

    want = dense @ np.asarray(v, np.float64)
    scale = np.linalg.norm(dense, 2) * np.linalg.norm(v)
    for got in both(v):
        np.testing.assert_allclose(got, want, atol=TOL * scale)


def test_lanczos_extremes_match_eigh():
    model, params, x, y = _mlp()
    ev = np.linalg.eigvalsh(_dense("mlp"))
    norm = np.abs(ev).max()
    f = cv.batch_loss(model, x, y)
    every = jax.jit(lambda k: lanczos_extremes(hessian_vector_product(f, params), 51, k, 51,
                                               FLOAT))(jax.random.key(0))  # fmt: skip
    np.testing.assert_allclose(every, ev, atol=TOL * norm)  # k = n: every eigenvalue
    got = cv.hessian_extremes(model, params, x, y, iterations=25)
    # Kaniel-Paige: the ends converge first; with 25 of 51 steps they are at rounding level on
    # this net (measured 1e-7 of the spread in float32, 1e-12 in float64); we allow 1e-4.
    spread = ev[-1] - ev[0]
    assert abs(float(got.lambda_min) - ev[0]) < 1e-4 * spread
    assert abs(float(got.lambda_max) - ev[-1]) < 1e-4 * spread


def test_lanczos_breakdown_continues_with_an_orthogonal_direction():
    # Three distinct eigenvalues: the Krylov space of any start vector is invariant after 3 steps.
    diag = jnp.asarray([1.0, 1.0, 1.0, 2.0, 2.0, 3.0], FLOAT)
    v0 = jax.random.normal(jax.random.key(4), (6,), FLOAT)
    run, zero = jax.jit(lambda v: (cv.lanczos(lambda u: diag * u, v, 6),
                                   cv.lanczos(lambda u: 0 * u, v, 4)))(v0)  # fmt: skip
    assert float(run.betas[2]) == 0.0  # the breakdown, recorded as an exact 0
    assert np.all(np.isfinite(np.asarray(run.ritz_values)))
    np.testing.assert_allclose(run.ritz_values, np.sort(np.asarray(diag)), atol=TOL * 3)
    # The measure is untouched: the mass at each eigenvalue is ||P_lambda q_1||^2.
    q = np.asarray(v0, np.float64) / np.linalg.norm(v0)
    w, nodes = np.asarray(run.weights, np.float64), np.asarray(run.ritz_values, np.float64)
    for lam, idx in ((1.0, [0, 1, 2]), (2.0, [3, 4]), (3.0, [5])):
        near = np.abs(nodes - lam) < 0.5
        np.testing.assert_allclose(w[near].sum(), np.sum(q[idx] ** 2), atol=TOL)
    # A = 0 breaks down at every step: still clean, all the mass on one node at 0.
    np.testing.assert_array_equal(zero.ritz_values, 0)
    np.testing.assert_allclose(zero.weights.sum(), 1, atol=TOL)


def _start_vectors(key, m, n):
    """The unit start vectors of stochastic_lanczos_quadrature's m probes (its documented
    draw), as float64 numpy (m, n)."""
    v = np.stack([np.asarray(jax.random.normal(k, (n,), FLOAT), np.float64)
                  for k in jax.random.split(key, m)])  # fmt: skip
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def test_slq_with_k_equal_n_is_the_exact_spectral_measure():
    model, params, x, y = _nested()
    dense = _dense("nested")
    ev, n = np.linalg.eigvalsh(dense), dense.shape[0]
    norm = np.abs(ev).max()
    key = jax.random.key(5)
    slq = cv.hessian_density(model, params, x, y, "xent", n_probes=3, iterations=40, key=key)
    assert slq.nodes.shape == slq.weights.shape == (3, n)  # iterations clipped to n
    nodes, weights = np.asarray(slq.nodes, np.float64), np.asarray(slq.weights, np.float64)
    for q, row, w in zip(_start_vectors(key, 3, n), nodes, weights, strict=True):
        np.testing.assert_allclose(row, ev, atol=TOL * norm)  # the whole spectrum
        # Gauss quadrature with k nodes is exact for degree < 2k: sum_i w_i theta_i^p = q^T H^p q.
        for p in range(4):
            want = q @ np.linalg.matrix_power(dense, p) @ q
            np.testing.assert_allclose(np.sum(w * row**p), want, atol=TOL * norm**p)


def test_slq_density_with_few_steps_is_close_to_the_dense_density():
    model, params, x, y = _mlp()
    ev, vecs = np.linalg.eigh(_dense("mlp"))
    n, k, m, key = ev.size, 12, 64, jax.random.key(7)
    slq = cv.hessian_density(model, params, x, y, n_probes=m, iterations=k, key=key)
    sigma = (ev[-1] - ev[0]) / 10
    grid = np.linspace(ev[0] - 3 * sigma, ev[-1] + 3 * sigma, 120)
    kernel = np.exp(-0.5 * ((grid[:, None] - ev) / sigma) ** 2) / (sigma * np.sqrt(2 * np.pi))
    dense = kernel.mean(axis=1)
    peak = dense.max()
    # Quadrature alone, probe by probe against q^T g(t - H) q for the same q: the kernel, a
    # Gaussian of width spread/10, is a polynomial of degree 2k - 1 = 23 on the spectrum to
    # ~1e-5 of its peak (Chebyshev tail 2 e^{-a/2} I_k(a/2), a = 12.5, at mid-spectrum);
    # measured 3e-6 in float32. We allow 1e-3 of the peak.
    each = cv.density_on_grid(slq.nodes[:, None], slq.weights[:, None], grid, sigma)  # (m, G)
    exact = ((vecs.T @ _start_vectors(key, m, n).T) ** 2).T @ kernel.T
    np.testing.assert_allclose(each, exact, atol=1e-3 * peak)
    # Averaged over m probes: for q uniform on the sphere, Var(q^T g(H) q) = 2/(n+2) (mean g^2 -
    # (mean g)^2) exactly, so 4 standard errors plus the quadrature allowance bound the error.
    got = cv.density_on_grid(slq.nodes, slq.weights, grid, sigma)
    se = np.sqrt(2 / (n + 2) * ((kernel**2).mean(axis=1) - dense**2) / m)
    assert np.all(np.abs(got - dense) <= 4 * se + 1e-3 * peak)
    assert abs(got.sum() * (grid[1] - grid[0]) - 1) < 1e-2  # a density (3 sigma tails cut)


def test_hutchinson_trace():
    model, params, x, y = _mlp()
    exact = np.trace(_dense("mlp"))
    m = 100
    est = cv.hessian_trace(model, params, x, y, n_probes=m)
    # Rademacher probes: Var(v^T H v) = 2 sum_{i != j} H_ij^2 exactly, so the standard error of
    # the mean of m is known; the estimate lies within 3 of them (fixed key: deterministic).
    off = _dense("mlp") - np.diag(np.diag(_dense("mlp")))
    se = np.sqrt(2 * np.sum(off**2) / m)
    assert abs(float(est.trace) - exact) < 3 * se
    # The reported stderr (sample std / sqrt(m)) estimates se: its relative error is about
    # sqrt((kurtosis - 1) / (4 m)) ~ 0.07 here; we allow 0.25.
    assert abs(float(est.stderr) / se - 1) < 0.25

    # A diagonal Hessian: v^T D v = tr D for every Rademacher v, so every probe is exact.
    def apply(p, x):
        return jnp.concatenate(
            [x[:, :3] * p["a"]["u"][None], x[:, 3:] * p["b"]["v"][None]], axis=-1
        )

    diag = gf.from_apply(lambda k: {"a": {"u": jnp.ones(3)}, "b": {"v": jnp.ones(2)}}, apply)
    xd, yd = _data(5, 5)
    exact = float(np.sum(np.mean(np.asarray(xd, np.float64) ** 2, axis=0)))  # tr mean x x^T
    est = cv.hessian_trace(diag, diag.init(None), xd, yd, n_probes=8)
    np.testing.assert_allclose(est.trace, exact, rtol=TOL)
    assert float(est.stderr) <= TOL * exact


@functools.cache
def _scanned():
    """Dense 3 -> 4, then a scanned run of 3 blocks (dense, tanh, dense): 136 parameters in
    seven layers, two stacked groups interleaved block by block."""
    block = gl.serial(gl.dense(4), gl.activation("tanh"), gl.dense(4))
    model = gf.from_layers(gl.serial(gl.dense(4), block, block, block, scan=True), (3,))
    params = jax.jit(model.init)(jax.random.key(8))
    assert params[1][0]["w"].shape == (3, 4, 4)  # really one scanned run
    # Which layer each parameter belongs to, written out by hand: 0, then block j's two
    # dense layers are layers 1 + 2j and 2 + 2j.
    run = np.arange(3)[:, None]
    labels = [  # in ravel_pytree's order: leaves by sorted keys, each raveled row-major
        np.zeros(4), np.zeros((3, 4)),  # dense0: b, w
        np.tile(1 + 2 * run, (1, 4)), np.tile(1 + 2 * run, (1, 16)),  # serial{j}/dense0
        np.tile(2 + 2 * run, (1, 4)), np.tile(2 + 2 * run, (1, 16)),  # serial{j}/dense2
    ]  # fmt: skip
    assert [a.size for a in labels] == [a.size for a in jax.tree.leaves(params)]
    names = ["dense0"] + [f"serial{j}/dense{i}" for j in (1, 2, 3) for i in (0, 2)]
    return model, params, *_data(3, 4), np.concatenate([a.ravel() for a in labels]), names


def _block_extremes(dense, labels, n_layers):
    out = []
    for layer in range(n_layers):
        idx = np.flatnonzero(labels == layer)
        ev = np.linalg.eigvalsh(dense[np.ix_(idx, idx)])
        out.append((ev[0], ev[-1], np.abs(ev).max()))
    return np.asarray(out).T


def test_layer_blocks_match_eigh_of_the_dense_diagonal_blocks():
    model, params, x, y, labels, names = _scanned()
    # The names are static: abstract evaluation gives them without compiling.
    norms = jax.eval_shape(lambda p: gf.layer_grad_norms(model, p, x, y), params)
    assert norms.names == tuple(names)
    dense = _dense("scanned")
    low, high, norm = _block_extremes(dense, labels, len(names))
    got = cv.layer_hessian_extremes(model, params, x, y, iterations=20)  # blocks of 16 or 20
    np.testing.assert_allclose(got.lambda_min, low, atol=TOL * norm.max())
    np.testing.assert_allclose(got.lambda_max, high, atol=TOL * norm.max())


def test_sweep_over_seeds_equals_a_loop():
    # gf.sweep vmaps the probe over seeds inside one jit (the density's lax.map over probes runs
    # under that vmap). Batched and unbatched programs round differently, and the sweep's jitted
    # init may round the float32 params one ulp differently from model.init: agreement to
    # ~eps_f32 ||H||, amplified by at most the eigensolver's 1/gap; we allow 1e3 eps_f32, even
    # under x64. (Static options as in the test above: the unbatched program compiles once.)
    model, _, x, y = _mlp()
    options = dict(n_probes=64, iterations=12)  # key: an int seed is a hashable sweep option
    out = gf.sweep(cv.hessian_density, model, 3, x, y, key=7, quiet=True, **options)
    assert out.nodes.shape == out.weights.shape == (3, 64, 12)
    tol = 1e3 * float(np.finfo(np.float32).eps)
    for i, seed in enumerate(gf.seed_keys(3)):
        one = cv.hessian_density(model, model.init(seed), x, y, key=jax.random.key(7), **options)
        np.testing.assert_allclose(out.nodes[i], one.nodes, atol=tol)
        np.testing.assert_allclose(out.weights[i], one.weights, atol=tol)


def test_bad_input():
    model, params, x, y = _mlp()
    with pytest.raises(ValueError, match="iterations must be >= 1"):
        cv.hessian_extremes(model, params, x, y, iterations=0)
    with pytest.raises(ValueError, match="n_probes must be >= 2"):
        cv.hessian_trace(model, params, x, y, n_probes=1)
    with pytest.raises(ValueError, match="unknown loss"):
        cv.hessian_density(model, params, x, y, "hinge")
    with pytest.raises(ValueError, match="no entries"):
        empty = gf.from_apply(lambda k: {}, lambda p, x: x)
        cv.hessian_extremes(empty, {}, x, x)
    nodes = np.zeros((2, 3))
    with pytest.raises(ValueError, match="sigma must be a positive number"):
        cv.density_on_grid(nodes, nodes, np.linspace(0, 1, 5), 0.0)
    with pytest.raises(ValueError, match="same shape"):
        cv.density_on_grid(nodes, nodes[:, :2], np.linspace(0, 1, 5), 0.1)
