"""Jacobian spectra against independent references: jax.jacfwd, float64 dense products and their
inverses, exact identities (log|det|), Newman's Lyapunov exponents and the quarter-circle law;
for the built-in MLP, other gf layer compositions and from_apply models."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.special import digamma, polygamma

import gradflow
from gradflow import inits, linalg, spectra
from gradflow import layers as gl
from tests.conftest import assert_trees_close

jsv = spectra.jacobian_singular_values

# Small nets covering every MLP layer kind: a plain first layer of another width, residual hidden
# layers, an output activation, and a bottleneck narrower than input and output.
NETS = {
    "residual_tanh": dict(
        widths=[6, 9, 9, 9, 5], activation="tanh", init="gaussian", sigma_w2=1.76,
        sigma_b2=0.05, output_activation="sigmoid", residual=True, residual_scale=0.7,
    ),
    "bottleneck_gelu": dict(widths=[8, 3, 8], activation="gelu"),
}  # fmt: skip


def _net(name):
    kw = dict(NETS[name])
    widths = kw.pop("widths")
    return gradflow.mlp(widths, **kw)


def _composition(name):
    """gf layer models that are not MLPs: a residual block between dense layers, and an RNN."""
    if name == "rnn":
        return gradflow.rnn(3, 5, 2)
    branch = gl.serial(gl.dense(6, "gaussian", sigma_w2=2.0), gl.activation("relu"))
    net = gl.serial(gl.dense(6), gl.activation("tanh"), gl.residual(branch, 0.8), gl.dense(6))
    return gradflow.from_layers(net, (6,))


def _init(model, seed=0):
    # Eager: jax.jit(model.init) of gf.mlp compiles for ~0.75 s per layer on CPU (depth 20: 15 s).
    return model.init(jax.random.key(seed))


def _x(model, batch, key=1, shape=None):
    shape = shape or model.in_shape
    return jax.random.normal(jax.random.key(key), (batch, *shape))


def _chain(n, depth, activation, init, key, sigma_w2=None):
    """A width-n, depth-``depth`` MLP and its params, drawn by one vmapped ``init_dense``
    (``model.init`` traces one key per layer: ~20 s at depth 10,000) in the layout of
    ``model.init`` (a list of segments; a run of equal layers stacked)."""
    kw = {} if sigma_w2 is None else dict(sigma_w2=sigma_w2)
    model = gradflow.mlp([n] * (depth + 1), activation, init, **kw)
    draw = lambda k: inits.init_dense(k, n, n, init, sigma_w2 or 1.0)  # noqa: E731
    layers = jax.jit(jax.vmap(draw))(jax.random.split(jax.random.key(key), depth))
    params, l = [], 0
    for seg in jax.eval_shape(model.init, jax.random.key(0)):
        k = seg["w"].shape[0] if len(seg["w"].shape) == 3 else None
        params.append(jax.tree.map(lambda a, k=k, l=l: a[l : l + k] if k else a[l], layers))
        l += k or 1
    assert l == depth
    return model, params


def _layers64(params):
    """Per-layer float64 (w, b) of MLP params (segments unstacked)."""
    out = []
    for seg in params:
        w, b = np.asarray(seg["w"], np.float64), np.asarray(seg["b"], np.float64)
        out.extend(zip(w, b, strict=True) if w.ndim == 3 else [(w, b)])
    return out


def _jacfwd64(model, params, x):
    """Dense float64 reference: jax.jacfwd of model.apply per example (input and output
    flattened), params cast to float64."""
    with jax.enable_x64(True):
        p64 = jax.tree.map(lambda a: jnp.asarray(np.asarray(a), jnp.float64), params)
        x64 = jnp.asarray(np.asarray(x), jnp.float64)

        def one(xi):
            f = lambda v: model.apply(p64, v.reshape(xi.shape)[None])[0].ravel()  # noqa: E731
            return jax.jacfwd(f)(xi.ravel())

        return np.asarray(jax.jit(jax.vmap(one))(x64))


def _np_layer_jacobians64(activation, params, x):
    """Hand-written float64 layer Jacobians diag(phi'(z)) W^T (plain layers, linear output)."""
    dphi = {"linear": lambda z: np.ones_like(z), "tanh": lambda z: 1 - np.tanh(z) ** 2}
    phi = {"linear": lambda z: z, "tanh": np.tanh}
    a, jacs, layers = np.asarray(x, np.float64), [], _layers64(params)
    for l, (w, b) in enumerate(layers):
        z = a @ w + b
        name = activation if l < len(layers) - 1 else "linear"
        jacs.append(dphi[name](z)[:, None] * w.T)
        a = phi[name](z)
    return jacs


def _log_sv(m):
    return np.log(np.linalg.svd(m, compute_uv=False))


def _product(jacs):
    prod = jacs[0]
    for jac in jacs[1:]:
        prod = jac @ prod
    return prod


# --------------------------------------------------------------------------------------------
# Layer Jacobians


@pytest.mark.parametrize("name", sorted(NETS))
def test_layer_jacobians_equal_jacfwd(name):
    model = _net(name)
    cfg = model.config
    params = _init(model)
    x = _x(model, 1)[0]
    jacs = spectra.layer_jacobians(model, params, x)
    layers = [(jnp.asarray(w, x.dtype), jnp.asarray(b, x.dtype)) for w, b in _layers64(params)]

    @jax.jit
    def reference(layers, x):
        a, want = x, []
        for l, (w, b) in enumerate(layers):
            out = l == len(layers) - 1
            phi = gradflow.ACTIVATIONS[
                (cfg.output_activation or "linear") if out else cfg.activation
            ]
            res = cfg.residual and not out and w.shape[0] == w.shape[1]

            def layer(a, w=w, b=b, phi=phi.fn, res=res):
                h = phi(a @ w + b)
                return a + cfg.residual_scale * h if res else h

            want.append(jax.jacfwd(layer)(a))
            a = layer(a)
        return want, jax.jacfwd(lambda xi: model.apply(params, xi[None, :])[0])(x)

    want, whole = reference(layers, x)
    assert [j.shape for j in jacs] == [(w.shape[1], w.shape[0]) for w, _ in layers]
    # float32, same operations in another order: a few ulps of entries of size ~1.
    assert_trees_close(jacs, want, rtol=1e-5, atol=1e-6)
    # The chain of analytic Jacobians is the Jacobian of model.apply, output activation included.
    np.testing.assert_allclose(_product(jacs), whole, rtol=1e-5, atol=1e-6)  # L products deep


@pytest.mark.parametrize(
    "net, n_layers",
    [
        (gl.serial(gl.activation("tanh"), gl.dense(3)), 1),  # diagonal before the first matrix
        (gl.serial(gl.activation("tanh"), gl.activation("relu")), 1),  # elementwise only
        (gl.serial(gl.dense(4), gl.activation("tanh"), gl.dense(4), gl.dense(3)), 3),
    ],
)
def test_layer_jacobians_group_elementwise_leaves(net, n_layers):
    model = gradflow.from_layers(net, (4,))
    params = _init(model)
    x = _x(model, 1)[0]
    jacs = spectra.layer_jacobians(model, params, x)
    whole = jax.jacfwd(lambda xi: model.apply(params, xi[None])[0])(x)
    assert len(jacs) == n_layers
    np.testing.assert_allclose(_product(jacs), whole, rtol=1e-5, atol=1e-6)  # as above


def test_layer_singular_values_per_example():
    model = _net("residual_tanh")
    params = _init(model, 0)
    x = _x(model, 3)
    got = spectra.layer_singular_values(model, params, x)
    assert [g.shape for g in got] == [(3, 6), (3, 9), (3, 9), (3, 5)]
    for i in range(3):
        jacs = spectra.layer_jacobians(model, params, x[i])
        want = [np.linalg.svd(np.asarray(j, np.float64), compute_uv=False) for j in jacs]
        # float32 SVD of O(1) matrices: relative error a few eps times the condition number.
        assert_trees_close([g[i] for g in got], want, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("init, sigma", [("glorot_uniform", 1.0), ("glorot_standard", 3**-0.5)])
def test_glorot_mean_layer_singular_value(init, sigma):
    """REFERENCES section 2: mean singular value of an n x n matrix with iid entries of variance
    sigma^2/n -> sigma 8/(3 pi) (quarter-circle law): 0.849 (normalized), 0.490 (standard)."""
    n = 64
    model = gradflow.mlp([n, n, n], "linear", init)
    sv = gradflow.sweep(spectra.layer_singular_values, model, 16, _x(model, 1), quiet=True)
    mean = np.mean(sv[0])  # 16 seeds x 64 singular values
    # Finite-n bias at n = 64 is -0.3% (numpy Monte Carlo: 0.8460 vs 0.8488); the seed-to-seed
    # scatter of the mean is ~0.002 / sqrt(16). 2% covers both with a wide margin.
    np.testing.assert_allclose(mean, sigma * 8 / (3 * math.pi), rtol=0.02)


# --------------------------------------------------------------------------------------------
# Input-output spectrum: exact regime


def _check_exact(got, ref, atol=1e-3):
    # float64 dense SVD resolves singular values down to ~1e-16 sigma_max; at 1e-10 sigma_max
    # its relative error is still < 1e-5.
    ok = ref > ref[:, :1] + math.log(1e-10)
    # Exact method, float32: ~eps per layer and per rotation, in log sigma; 1e-3 is ~20x the
    # largest error seen.
    np.testing.assert_allclose(got[ok], ref[ok], atol=atol)


@pytest.mark.parametrize("name", sorted(NETS))
def test_exact_matches_float64_jacfwd(name):
    model = _net(name)
    params = _init(model, 0)
    x = _x(model, 2)
    ref = _log_sv(_jacfwd64(model, params, x))
    got = np.asarray(jsv(model, params, x, log=True))
    dense = np.asarray(jsv(model, params, x, log=True, method="dense"))
    assert got.shape == dense.shape == ref.shape
    _check_exact(got, ref)
    # Dense float32 is only good to ~eps sigma_max in absolute terms: compare the top decade.
    top = ref > ref[:, :1] + math.log(0.1)
    np.testing.assert_allclose(dense[top], ref[top], atol=1e-3)
    if name == "bottleneck_gelu":  # rank 3: the other 5 are exactly zero
        assert np.all(np.isneginf(got[:, 3:])) and np.all(np.isfinite(got[:, :3]))


@pytest.mark.parametrize("name", ["residual_block", "rnn"])
def test_exact_on_other_gf_compositions(name):
    """Any gf layer model: a residual block between dense layers (leaves dense, tanh, residual
    with a relu branch, dense), and an RNN (the Jacobian of the output with respect to the whole
    flattened sequence, the recurrent layer's by jacfwd)."""
    model = _composition(name)
    params = _init(model, 0)
    x = _x(model, 2, shape=(4, 3) if name == "rnn" else None)
    ref = _log_sv(_jacfwd64(model, params, x))
    got = np.asarray(jsv(model, params, x, log=True))
    assert got.shape == ref.shape
    _check_exact(got, ref)  # as for the MLPs
    if name == "residual_block":  # J square: the QR estimates sum to log|det J| exactly
        lyap = np.asarray(jsv(model, params, x, log=True, method="lyapunov"))
        np.testing.assert_allclose(lyap.sum(1), ref.sum(1), atol=1e-4)  # float32, 3 layers
    jacs = spectra.layer_jacobians(model, params, x[0])
    np.testing.assert_allclose(_product(jacs), _jacfwd64(model, params, x[:1])[0], atol=1e-5)


def test_exact_with_scanned_bottleneck_blocks():
    """A scanned run of blocks narrowing to 2 inside: the running rank shrinks within the run, so
    the accumulators keep it fixed instead (zero columns; linalg.accumulator(fixed_rank=True))."""
    block = gl.serial(gl.dense(2), gl.activation("tanh"), gl.dense(6))
    net = gl.serial(gl.dense(6), block, block, block, scan=True)  # scan runs of 2 or more
    model = gradflow.from_layers(net, (6,))
    params = _init(model, 0)
    assert params[1][0]["w"].shape == (3, 6, 2)  # really one scanned run
    x = _x(model, 2)
    ref = _log_sv(_jacfwd64(model, params, x))
    for method in ("exact", "lyapunov"):
        got = np.asarray(jsv(model, params, x, log=True, method=method))
        assert np.all(np.isneginf(got[:, 2:])) and np.all(np.isfinite(got[:, :2]))  # rank 2
    _check_exact(np.asarray(jsv(model, params, x, log=True))[:, :2], ref[:, :2])  # as above


def test_unscanned_identical_layers_walk_as_one_scan():
    """Below SCAN_MIN an MLP's layers are unscanned (params one entry per layer), but the walk
    stacks the params of identical neighbours and scans them: the traced program, and so the
    compile time, does not grow with depth (depth 50, width 128: compile 7.3 -> 1.6 s). The
    numbers are checked against float64 jacfwd by the tests above, on such unscanned MLPs."""

    def walked(depth):  # lines of the traced program, sub-jaxprs included
        model = gradflow.mlp([8] * (depth + 1), "tanh", "gaussian", sigma_w2=1.5)
        assert len(_init(model, 0)) == depth  # unscanned: one params entry per layer
        x = _x(model, 2)
        return str(jax.make_jaxpr(lambda p: jsv(model, p, x, log=True))(_init(model, 0))).count(
            "\n"
        )

    # Nine more layers add only the stacking of their params (a few lines each; walked one by
    # one, each layer added ~75).
    assert walked(12) - walked(3) <= 4 * 9


def test_from_apply_model_dense():
    def init(key):
        k1, k2 = jax.random.split(key)
        return {"a": jax.random.normal(k1, (4, 7)) / 2, "b": jax.random.normal(k2, (7, 3)) / 3}

    def apply(p, x):
        return jnp.tanh(x @ p["a"]) @ p["b"]

    model = gradflow.from_apply(init, apply)
    params = init(jax.random.key(0))
    x = _x(model, 2, shape=(4,))
    ref = _log_sv(_jacfwd64(model, params, x))
    got = np.asarray(jsv(model, params, x, log=True, method="dense"))
    assert got.shape == (2, 3)
    # float32 jacfwd + SVD of a 3 x 4 matrix, cond <= 5: log sigma to ~eps cond ~ 1e-6.
    np.testing.assert_allclose(got, ref, atol=1e-5)
    with pytest.raises(ValueError, match=r"no \.net .*use method='dense'"):
        jsv(model, params, x)
    with pytest.raises(ValueError, match=r"layer_jacobians needs a model built from gf layers"):
        spectra.layer_jacobians(model, params, x[0])


@pytest.mark.parametrize("activation, sigma_w2", [("linear", 1.0), ("tanh", 1.76)])
def test_exact_beyond_float32_range(activation, sigma_w2):
    """Depth 100, width 4: the spectrum spans ~120 nats, sigma_min ~ e^-130 is below float32's
    smallest number. The top singular values come from the float64 product J, the bottom ones
    from its inverse chain (sigma_i(J^-1) = 1 / sigma_{n+1-i}(J)), and their sum from
    log|det J| = sum_l log|det J^l| -- together they pin every value."""
    n, depth = 4, 100
    model, params = _chain(n, depth, activation, "gaussian", key=2, sigma_w2=sigma_w2)
    x = _x(model, 1)
    got = np.asarray(jsv(model, params, x, log=True))[0]
    jacs = _np_layer_jacobians64(activation, params, np.asarray(x)[0])
    fwd, inv = np.eye(n), np.eye(n)
    for jac in jacs:
        fwd, inv = jac @ fwd, inv @ np.linalg.inv(jac)
    top, bottom = _log_sv(fwd), -_log_sv(inv)[::-1]
    logdet = sum(np.linalg.slogdet(j)[1] for j in jacs)
    assert got[-1] < math.log(np.finfo(np.float32).smallest_subnormal)  # really out of range
    tol = 1e-3  # float32, ~eps per layer in log sigma over 100 layers, with a 10x margin
    np.testing.assert_allclose(got[:2], top[:2], atol=tol)  # within 1e-10 of sigma_max
    np.testing.assert_allclose(got[-1], bottom[-1], atol=tol)  # within 1e-10 of sigma_min
    np.testing.assert_allclose(got.sum(), logdet, atol=tol)


def test_batch_equals_per_example():
    model = _net("residual_tanh")
    params = _init(model, 0)
    x = _x(model, 2)
    batch = jsv(model, params, x, log=True)
    single = jnp.concatenate([jsv(model, params, x[i : i + 1], log=True) for i in range(2)])
    # Same computation, batched or not: identical up to a few ulps.
    assert_trees_close(batch, single, rtol=1e-5, atol=1e-6)


def test_sweep_equals_python_loop():
    model = _net("bottleneck_gelu")
    x = _x(model, 2)
    got = gradflow.sweep(jsv, model, 3, x, log=True, quiet=True)
    want = [jsv(model, model.init(k), x, log=True) for k in gradflow.seed_keys(3)]
    assert got.shape == (3, 2, 8)
    # vmap over seeds batches the same float32 LAPACK calls: a few ulps of O(1) logs.
    assert_trees_close(got, np.stack(want), rtol=1e-5, atol=1e-5)


# --------------------------------------------------------------------------------------------
# Input-output spectrum: depth 1,000-10,000 (dynamical isometry and the Lyapunov regime)


def test_orthogonal_linear_isometry():
    n = 8
    # Depth 10,000 (both methods) is test_gaussian_linear_lyapunov_exponents' job.
    for depth, methods in ((1_000, ("exact", "lyapunov")),):
        model, params = _chain(n, depth, "linear", "orthogonal", key=3)
        x = _x(model, 1)
        for method in methods:
            log_sv = np.asarray(jsv(model, params, x, log=True, method=method))
            # float32 weights are orthogonal to ~eps sqrt(n) ~ 3e-7, so log sigma can drift by at
            # most ~depth * 3e-7 (3e-4 at 1,000; seen: 3e-4 at 10,000); 1e-2 leaves room.
            assert np.all(np.isfinite(log_sv)) and np.abs(log_sv).max() < 1e-2
        if depth == 1_000:
            sv = np.asarray(jsv(model, params, x))  # log=False: every singular value is 1
            np.testing.assert_allclose(sv, 1.0, atol=1e-3)  # as above, at depth 1,000


def test_gaussian_linear_lyapunov_exponents():
    """n x n Gaussian matrices with entry variance 1/n: the Lyapunov exponents are
    lambda_i = (1/2) (log(2/n) + psi((n - i + 1)/2)) (Newman 1986). For the QR method this is
    exact in distribution: W Q is again Gaussian, so r_ii^2 ~ chi^2_{n-i+1}/n independently per
    layer, and sum_l log r_ii / L has mean lambda_i and variance psi'((n-i+1)/2) / (4 L)."""
    n, depth = 8, 10_000
    model, params = _chain(n, depth, "linear", "lecun", key=4)
    i = np.arange(1, n + 1)
    lam = 0.5 * (np.log(2 / n) + digamma((n - i + 1) / 2))
    se = np.sqrt(polygamma(1, (n - i + 1) / 2) / (4 * depth))
    logdet = sum(np.linalg.slogdet(w)[1] for w, _ in _layers64(params))
    for method in ("exact", "lyapunov"):
        log_sv = np.asarray(jsv(model, params, jnp.zeros((1, n)), log=True, method=method))[0]
        # Fixed key, so deterministic; 4 standard errors. The exact values differ from the QR
        # diagonal by O(1) in total, O(1e-4) per layer, well inside.
        assert np.all(np.abs(log_sv / depth - lam) < 4 * se), (method, (log_sv / depth - lam) / se)
        # Exact identity: sum_i log sigma_i = log|det J| (~ -4e4 here); float32 accumulation
        # over 10,000 layers leaves ~0.05 (relative 1e-6).
        np.testing.assert_allclose(log_sv.sum(), logdet, atol=0.5)


def test_lyapunov_method_is_an_estimate_with_exact_sum():
    """At moderate depth the QR diagonal is not the spectrum (O(1) off) but sums to log|det|."""
    n, depth = 6, 20
    model = gradflow.mlp([n] * (depth + 1), "linear", "gaussian")
    params = _init(model, 5)
    x = _x(model, 1)
    ref = _log_sv(_jacfwd64(model, params, x))[0]
    lyap = np.asarray(jsv(model, params, x, log=True, method="lyapunov"))[0]
    np.testing.assert_allclose(lyap.sum(), ref.sum(), atol=1e-3)  # float32 over 20 layers
    assert np.abs(lyap - ref).max() > 0.05  # an estimate: visibly off for single values


# --------------------------------------------------------------------------------------------
# The previous exact algorithm (graded QR every layer, one-sided Jacobi), as a slow reference


def _jacobi_log_svd(s, t):
    """Descending log singular values of diag(e^s) T by one-sided Jacobi on its rows in the log
    domain (Demmel & Veselic 1992; gradflow's final step until the float64 windowed SVD): each
    rotation from rho = e^{s_lo - s_hi} <= 1 and the cosine g, so a row far below another becomes
    its Gram-Schmidt remainder instead of underflowing. numpy float64, all pairs, until every
    cosine is below 8 eps sqrt(k)."""
    s, t = np.array(s, np.float64), np.array(t, np.float64)
    tol = 8 * np.finfo(np.float64).eps * np.sqrt(len(s))
    for _ in range(60):
        off = 0.0
        for p in range(len(s)):
            for q in range(p + 1, len(s)):
                hi, lo = (p, q) if s[p] >= s[q] else (q, p)
                if s[lo] == -np.inf:
                    continue
                g = t[hi] @ t[lo]
                off = max(off, abs(g))
                rho, one_m_rho2 = np.exp(s[lo] - s[hi]), -np.expm1(2 * (s[lo] - s[hi]))
                w = -2 * g / (one_m_rho2 + np.sqrt(one_m_rho2**2 + (2 * rho * g) ** 2))
                c = 1 / np.sqrt(1 + (rho * w) ** 2)
                u, v = c * (t[hi] - w * rho**2 * t[lo]), c * (w * t[hi] + t[lo])
                for i, row in ((hi, u), (lo, v)):
                    norm = np.linalg.norm(row)
                    t[i], s[i] = row / norm, s[i] + np.log(norm)
        if off < tol:
            return np.sort(s)[::-1]
    raise AssertionError("reference Jacobi did not converge")


def _graded_qr_log_sv64(jacs):
    """The previous exact method in numpy float64: P = M diag(e^s) T, and per layer A = J M
    ordered by s_j + log||A_j||, A = Q R, T <- unit rows of (R_ij e^{s_j - s_i}) T (j >= i; only
    non-positive exponents by the ordering); then the Jacobi above. Square, full-rank layers."""
    n = jacs[0].shape[1]
    m, s, t = np.eye(n), np.zeros(n), np.eye(n)
    for jac in jacs:
        a = jac @ m
        c = np.linalg.norm(a, axis=0)
        order = np.argsort(-(s + np.log(c)))
        a, s, t, c = a[:, order], s[order], t[order], c[order]
        key = s + np.log(c)
        m, r = np.linalg.qr(a)
        e = np.triu(r / c * np.exp(np.minimum(key[None, :] - key[:, None], 0)) * c[:, None]) @ t
        norm = np.linalg.norm(e, axis=1)
        s, t = s + np.log(norm), e / norm[:, None]
    return _jacobi_log_svd(s, t)


def _qr_diag_log64(jacs):
    """The Lyapunov method in numpy float64: sorted sum over layers of log|diag R|, unpivoted."""
    m, s = np.eye(jacs[0].shape[1]), 0.0
    for jac in jacs:
        m, r = np.linalg.qr(jac @ m)
        s = s + np.log(np.abs(np.diag(r)))
    return np.sort(s)[::-1]


@pytest.mark.parametrize("case", ["cluster", "spread", "zero_rows"])
def test_graded_log_svd_matches_jacobi(case):
    """The final SVD (float64 LAPACK on the LQ factor, gaps over 40 nats shrunk, 200 nats per
    window) against the previous Jacobi, on graded matrices it must get right: near-parallel rows
    within 3 nats (full coupling), 16 rows over ~2,500 nats (several windows), zero rows."""
    rng = np.random.default_rng(0)
    k = 16
    t = rng.standard_normal((k, 18))
    if case == "cluster":
        s = rng.uniform(-3, 0, k)
        t[1::2] = t[::2] + 0.01 * t[1::2]
    elif case == "spread":  # clusters (0.1 apart) between gaps of 5 to 400 nats
        s = -np.cumsum(rng.choice([0.1, 0.1, 5, 30, 90, 400], k))
    else:
        s = rng.uniform(-60, 60, k)
        s[[3, 7]], t[[3, 7]] = -np.inf, 0
    t /= np.maximum(np.linalg.norm(t, axis=1, keepdims=True), 1e-30)
    s32, t32 = jnp.asarray(s, jnp.float32), jnp.asarray(t, jnp.float32)  # shuffled order
    got = np.asarray(linalg.graded_log_svd(s32, t32))
    want = _jacobi_log_svd(np.asarray(s32), np.asarray(t32))  # on the same float32 inputs
    assert got.dtype == np.float32 and np.array_equal(np.isneginf(got), np.isneginf(want))
    # Both are float64 inside, relative to each value (~1e-13 here); the float32 output rounds
    # log sigma to 1 ulp (2.4e-4 at -2,500).
    np.testing.assert_allclose(got, want, rtol=3e-7, atol=1e-6)
    if case == "cluster":  # spread 3 nats: a plain float64 SVD is accurate too
        dense = np.log(np.linalg.svd(np.exp(s)[:, None] * np.asarray(t32, np.float64))[1])
        np.testing.assert_allclose(got, dense, rtol=0, atol=1e-6)


def test_depth_1000_matches_previous_algorithm_float64():
    """Depth 1,000, width 8, tanh: the spectrum spans ~2,000 nats (sigma_min ~ e^-2000), so
    several SVD windows and shrunk gaps; against the previous exact algorithm and the Lyapunov
    method, both in numpy float64 from hand-written layer Jacobians."""
    n, depth = 8, 1_000
    model, params = _chain(n, depth, "tanh", "gaussian", key=6, sigma_w2=1.5)
    x = _x(model, 1)
    jacs = _np_layer_jacobians64("tanh", params, np.asarray(x)[0])
    got = np.asarray(jsv(model, params, x, log=True))[0]
    want = _graded_qr_log_sv64(jacs)
    assert want[0] - want[-1] > 1_000  # far beyond any float
    # float32 over 1,000 QRs: the bottom two values are off by 0.01 (so was the previous float32
    # algorithm), the others by <= 5e-4.
    np.testing.assert_allclose(got, want, atol=3e-2)
    lyap = np.asarray(jsv(model, params, x, log=True, method="lyapunov"))[0]
    # As above; the bottom two off by 0.010 on the EPYC hosts, by 0.013 on an AVX-512 host.
    np.testing.assert_allclose(lyap, _qr_diag_log64(jacs), atol=2e-2)


def test_blocked_folds():
    """Folding after blocks of layers changes only rounding: blocks of 16 (what the automatic
    choice takes here) agree with float64 jacfwd on a near-isometric net (orthogonal tanh,
    spread ~10 nats, so float64 dense resolves it all)."""
    model, params = _chain(16, 64, "tanh", "orthogonal", key=7, sigma_w2=1.05)  # one scan
    x = _x(model, 2)
    got = np.asarray(jsv(model, params, x, log=True, reorth_every=16))
    # float32, a few eps per QR in log sigma: seen 1e-5.
    np.testing.assert_allclose(got, _log_sv(_jacfwd64(model, params, x)), atol=1e-4)


def test_automatic_block_length():
    """The automatic fold schedule: orthogonal factors pollute nothing, so blocks grow to
    MAX_EVERY; Gaussian ones (~0.5-8 nats each) keep a fold per factor. The schedule is shared
    by the whole vmapped batch, so it is one number for both examples."""

    def block_length(method, factors):
        acc = linalg.accumulator(method)

        def one(scale):
            step = lambda state, f: (acc.matrix(state, scale * f), None)  # noqa: E731
            return jax.lax.scan(step, acc.init(16, jnp.float32), factors)[0].every

        return np.asarray(jax.jit(jax.vmap(one))(jnp.array([1.0, 2.0])))

    keys = jax.random.split(jax.random.key(9), 40)
    orthogonal = jax.vmap(lambda k: inits.init_dense(k, 16, 16, "orthogonal", 1.0))(keys)
    gaussian = jax.vmap(lambda k: inits.init_dense(k, 16, 16, "gaussian", 1.0))(keys)
    for method in ("exact", "lyapunov"):
        # scale 2 grows the norms by e^0.7 a factor: within SPAN = 30 nats for 16 factors.
        assert list(block_length(method, orthogonal["w"])) == [linalg.MAX_EVERY] * 2
        assert list(block_length(method, gaussian["w"])) == [1, 1]


# --------------------------------------------------------------------------------------------
# Summaries


def test_spectrum_summary_plain_and_log():
    sv = np.array([[3.0, 2.0, 1.0], [4.0, 4.0, 2.0]])
    s = spectra.spectrum_summary(sv)
    np.testing.assert_allclose(s.mean_sq, [14 / 3, 12.0], rtol=1e-6)
    np.testing.assert_allclose(s.var_sq, np.var(sv**2, axis=1), rtol=1e-6)
    np.testing.assert_allclose(s.max, [3, 4])
    np.testing.assert_allclose(s.condition, [3, 2], rtol=1e-6)
    logs = spectra.spectrum_summary(np.log(sv), log=True)
    # float32 exp/log round trip of O(1) numbers.
    assert_trees_close(jax.tree.map(jnp.exp, logs), s, rtol=1e-5)
    # Log form stays finite where sigma^2 overflows any float.
    deep = spectra.spectrum_summary(np.array([[5000.0, -3000.0, -9000.0]]), log=True)
    np.testing.assert_allclose(deep.mean_sq, 10000 - np.log(3), rtol=1e-6)
    np.testing.assert_allclose(deep.var_sq, 20000 + np.log(2 / 9), rtol=1e-6)
    np.testing.assert_allclose(deep.condition, 14000)


def test_spectral_density():
    values = np.concatenate([np.linspace(0, 1, 1000), [-np.inf]]).reshape(7, 11, 13)
    density, edges = spectra.spectral_density(values, bins=10)
    assert density.shape == (10,) and edges.shape == (11,)
    np.testing.assert_allclose(np.sum(density * np.diff(edges)), 1.0)


# --------------------------------------------------------------------------------------------
# Bad input


def test_bad_input_names_the_problem():
    model = _net("residual_tanh")
    params = _init(model, 0)
    x = _x(model, 2)
    with pytest.raises(ValueError, match=r"shape \(batch, 6\)"):
        jsv(model, params, x[0])
    with pytest.raises(ValueError, match=r"shape \(batch, 6\)"):
        jsv(model, params, x[:, :5])
    with pytest.raises(ValueError, match=r"one example x of shape \(6,\)"):
        spectra.layer_jacobians(model, params, x)
    with pytest.raises(ValueError, match="unknown method 'svd'"):
        jsv(model, params, x, method="svd")
    for bad in (0, 2.5, True, "2"):
        with pytest.raises(ValueError, match="reorth_every must be None .automatic. or an int"):
            jsv(model, params, x, reorth_every=bad)
    with pytest.raises(ValueError, match="reorth_every applies to method='exact' or 'lyapunov'"):
        jsv(model, params, x, method="dense", reorth_every=2)
    with pytest.raises(ValueError, match="must be floating"):
        jsv(model, params, jnp.ones((2, 6), jnp.int32))
    with pytest.raises(ValueError, match="params do not match this model"):
        jsv(model, params[:2], x)
    wrong = [dict(params[0], w=params[0]["w"].T), *params[1:]]
    with pytest.raises(ValueError, match=r"params leaf '0/w' has shape \(9, 6\)"):
        spectra.layer_singular_values(model, wrong, x)
    with pytest.raises(ValueError, match="takes a gradflow Model"):
        jsv(model.apply, params, x)
    with pytest.raises(ValueError, match="no finite values"):
        spectra.spectral_density(np.full(3, -np.inf))


@pytest.mark.parametrize("case", ["cluster", "spread", "zero_rows"])
def test_jacobi_fallback_matches_float64_windows(case, monkeypatch):
    """Backends without float64 (TPU) end ``exact`` with the float32 one-sided Jacobi SVD: it
    agrees with the float64 windowed SVD on the graded matrices above to float32 accuracy
    (relative ~1e-6 of each log sigma, plus rounding of the rows: atol 1e-4 nats)."""
    rng = np.random.default_rng(1)
    k = 12
    t = rng.standard_normal((k, 14))
    if case == "cluster":
        s = rng.uniform(-3, 0, k)
    elif case == "spread":
        s = -np.cumsum(rng.choice([0.1, 5, 30, 400], k))
    else:
        s = rng.uniform(-60, 60, k)
        s[[2, 5]], t[[2, 5]] = -np.inf, 0
    t /= np.maximum(np.linalg.norm(t, axis=1, keepdims=True), 1e-30)
    s32, t32 = jnp.asarray(s, jnp.float32), jnp.asarray(t, jnp.float32)
    want = np.asarray(linalg.graded_log_svd(s32, t32))
    got = np.asarray(jax.jit(linalg.jacobi_log_svd)(s32, t32))
    assert np.array_equal(np.isneginf(got), np.isneginf(want))
    live = ~np.isneginf(want)
    np.testing.assert_allclose(got[live], want[live], rtol=2e-6, atol=1e-4)
    # The dispatcher takes Jacobi where float64 is missing.
    from gradflow import graded_svd

    monkeypatch.setattr(graded_svd, "has_float64", lambda: False)
    np.testing.assert_array_equal(np.asarray(jax.jit(graded_svd.log_svd)(s32, t32)), got)
