"""Models: init statistics against their specification, structure, forward pass, seed identity,
model identity, bad input."""

import functools
import hashlib
import json
import math
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.special import erf as np_erf

import gradflow
from gradflow.activations import ACTIVATIONS
from gradflow.inits import INITS, orthogonal
from gradflow.nets import mlp_layers
from tests.conftest import assert_trees_close

# --------------------------------------------------------------------------------------------
# Init statistics

# n_in < n_out, so 1/n_in, 1/max(n_in, n_out) and 2/(n_in + n_out) are all different scales.
N_IN, N_OUT, N_SEEDS = 32, 48, 64  # 98,304 weight and 3,072 bias draws per init

# (weight variance, weight kurtosis, bias variance, bias kurtosis) for n_in -> n_out; a variance
# of 0 means exactly zero. Orthogonal entries are those of a unit vector in R^max(n_in, n_out),
# variance 1/max(n_in, n_out), close to Gaussian.
SIGMA_W2, SIGMA_B2 = 2.5, 0.4


def _spec(init, n_in, n_out):
    gauss, unif = 3.0, 1.8  # kurtosis E[w^4]/E[w^2]^2 of a Gaussian and of a uniform
    glorot_u = 6.0 / (n_in + n_out)
    return {
        "nielsen": (1 / n_in, gauss, 1.0, gauss),
        "standard_normal": (1.0, gauss, 1.0, gauss),
        "glorot_uniform": (glorot_u / 3, unif, 0.0, None),
        "glorot_normal": (glorot_u / 3, gauss, 0.0, None),
        "glorot_standard": (1 / (3 * n_in), unif, 0.0, None),
        "lecun": (1 / n_in, gauss, 0.0, None),
        "he": (2 / n_in, gauss, 0.0, None),
        "orthogonal": (SIGMA_W2 / max(n_in, n_out), gauss, SIGMA_B2, gauss),
        "gaussian": (SIGMA_W2 / n_in, gauss, SIGMA_B2, gauss),
    }[init]


@functools.cache  # the statistics and the bounds tests share the draws
def _draw(init, n_in, n_out):
    sig = {"sigma_w2": SIGMA_W2, "sigma_b2": SIGMA_B2} if init in ("gaussian", "orthogonal") else {}
    model = gradflow.mlp([n_in, n_out], "tanh", init, **sig)
    keys = jax.random.split(jax.random.key(0), N_SEEDS)
    params = jax.vmap(model.init)(keys)  # one layer: its {"w", "b"} directly
    return np.asarray(params["w"], np.float64), np.asarray(params["b"], np.float64)


def _assert_moments(v, var, kurt, what):
    n = v.size
    # Sample mean of a zero-mean variable: SE = sqrt(var / n). Variance estimated as mean(v^2)
    # (the mean is known to be 0): SE = var * sqrt((kurtosis - 1) / n). 4 SE: deterministic
    # under the fixed key, and a wrong 1/n_in vs 2/n_in scale is hundreds of SE away.
    assert abs(v.mean()) < 4 * math.sqrt(var / n), f"{what}: mean {v.mean()}"
    se = var * math.sqrt((kurt - 1) / n)
    assert abs(np.mean(v**2) - var) < 4 * se, f"{what}: variance {np.mean(v**2)} vs {var}"


@pytest.mark.parametrize("init", INITS)
def test_init_statistics_match_spec(init):
    w, b = _draw(init, N_IN, N_OUT)
    assert w.shape == (N_SEEDS, N_IN, N_OUT) and b.shape == (N_SEEDS, N_OUT)
    w_var, w_kurt, b_var, b_kurt = _spec(init, N_IN, N_OUT)
    _assert_moments(w, w_var, w_kurt, f"{init} weights")
    if b_var == 0.0:
        assert np.all(b == 0.0), f"{init} biases must be exactly zero"
    else:
        _assert_moments(b, b_var, b_kurt, f"{init} biases")


@pytest.mark.parametrize(
    "init,limit",
    [
        ("glorot_uniform", math.sqrt(6.0 / (N_IN + N_OUT))),
        ("glorot_standard", 1.0 / math.sqrt(N_IN)),
    ],
)
def test_glorot_bounds(init, limit):
    w, _ = _draw(init, N_IN, N_OUT)
    # float32 rounding of the bound itself: one ulp.
    assert np.abs(w).max() <= limit * (1 + 1e-6)
    # With ~10^5 uniform draws the extremes come within 0.1% of the bound (P(miss) ~ e^-98).
    assert w.max() > 0.999 * limit and w.min() < -0.999 * limit


@pytest.mark.parametrize("n_in,n_out", [(16, 16), (24, 10), (10, 24)])
def test_orthogonal_init_is_scaled_isometry(n_in, n_out, key):
    sigma_w2 = 2.5
    model = gradflow.mlp([n_in, n_out], "tanh", "orthogonal", sigma_w2=sigma_w2)
    w = np.asarray(model.init(key)["w"], np.float64)
    gram = w.T @ w if n_in >= n_out else w @ w.T
    # float32 QR: entries of Q^T Q are exact to a few ulps times sqrt(n); 1e-5 is ~100 ulp.
    np.testing.assert_allclose(gram, sigma_w2 * np.eye(min(n_in, n_out)), atol=1e-5 * sigma_w2)
    # The other Gram matrix is a rank-min projection, not the identity.
    other = w @ w.T if n_in >= n_out else w.T @ w
    if n_in != n_out:
        np.testing.assert_allclose(np.trace(other), sigma_w2 * min(n_in, n_out), rtol=1e-5)
        assert np.linalg.matrix_rank(other, tol=1e-3 * sigma_w2) == min(n_in, n_out)


def test_orthogonal_helper_shapes_and_sign_convention(key):
    q = np.asarray(orthogonal(key, 12, 5), np.float64)
    assert q.shape == (12, 5)
    np.testing.assert_allclose(q.T @ q, np.eye(5), atol=1e-5)  # float32 QR, ~100 ulp
    # Mezzadri's fix makes R's diagonal positive: recomputing QR of Q gives R = +I.
    r = np.linalg.qr(q)[1]
    np.testing.assert_allclose(np.abs(np.diag(r)), 1.0, atol=1e-5)


def test_same_key_same_params_different_layers_differ(key):
    model = gradflow.mlp([8, 8, 8, 8], "tanh", "nielsen")
    p1, p2 = model.init(key), model.init(key)
    assert_trees_close(p1, p2, rtol=0.0)  # bit-identical: init is a pure function of the key
    p1 = mlp_layers(model, p1)
    # Equal-shaped layers get independent draws, not copies of one.
    assert not np.allclose(p1[0]["w"], p1[1]["w"]) and not np.allclose(p1[1]["w"], p1[2]["w"])
    assert not np.allclose(p1[0]["b"], p1[1]["b"])
    other = mlp_layers(model, model.init(jax.random.key(1)))
    assert not np.allclose(p1[0]["w"], other[0]["w"])


def test_param_structure_and_dtype(key):
    widths = [7, 5, 4, 3]
    model = gradflow.mlp(widths)
    params = model.init(key)
    assert isinstance(params, list) and len(params) == len(widths) - 1  # no equal layers
    for l, layer in enumerate(mlp_layers(model, params)):
        assert set(layer) == {"w", "b"}
        assert layer["w"].shape == (widths[l], widths[l + 1])
        assert layer["b"].shape == (widths[l + 1],)
        assert layer["w"].dtype == jnp.float32


def test_init_sigma_override_equals_config(key):
    # init(key, sigma_w2=...) is how sweeps pass a traced grid value.
    a = gradflow.mlp([6, 5, 4], "tanh", "gaussian", sigma_w2=1.7, sigma_b2=0.3).init(key)
    b = gradflow.mlp([6, 5, 4], "tanh", "gaussian").init(
        key, sigma_w2=jnp.float32(1.7), sigma_b2=jnp.float32(0.3)
    )
    assert_trees_close(a, b, rtol=1e-6)  # sqrt of a traced vs folded float32: <= 1 ulp apart


# --------------------------------------------------------------------------------------------
# Activations and the forward pass


def _np_act(name, z):
    alpha, scale = 1.6732632423543772848170429916717, 1.0507009873554804934193349852946
    return {
        "sigmoid": lambda: 1 / (1 + np.exp(-z)),
        "tanh": lambda: np.tanh(z),
        "relu": lambda: np.maximum(z, 0),
        "leaky_relu": lambda: np.where(z > 0, z, 0.01 * z),
        "gelu": lambda: z * 0.5 * (1 + np_erf(z / np.sqrt(2))),
        "selu": lambda: scale * np.where(z > 0, z, alpha * np.expm1(z)),
        "softplus": lambda: np.logaddexp(0, z),
        "erf": lambda: np_erf(z),
        "linear": lambda: z,
    }[name]()


@pytest.mark.parametrize("name", list(ACTIVATIONS))
def test_activation_values(name):
    z = np.linspace(-4, 4, 41)
    with jax.enable_x64(True):
        got = np.asarray(ACTIVATIONS[name].fn(jnp.asarray(z)))
    # float64 on both sides; 1e-12 leaves room for different erf/expm1 implementations.
    np.testing.assert_allclose(got, _np_act(name, z), rtol=1e-12, atol=1e-12)


def test_activation_names_cover_issue():
    expected = {"sigmoid", "tanh", "relu", "leaky_relu", "gelu", "selu", "softplus", "erf"}
    assert expected | {"linear"} == set(ACTIVATIONS)


def _np_mlp(params, x, activation, output_activation=None, residual=False):
    a = x
    for l, layer in enumerate(params):
        w, b = np.asarray(layer["w"], np.float64), np.asarray(layer["b"], np.float64)
        z = a @ w + b
        if l == len(params) - 1:
            a = _np_act(output_activation or "linear", z)
        elif residual and w.shape[0] == w.shape[1]:
            a = a + _np_act(activation, z)
        else:
            a = _np_act(activation, z)
    return a


@pytest.mark.parametrize(
    "widths,activation,output_activation,residual",
    [
        ([5, 4, 3], "sigmoid", None, False),
        ([5, 6, 6, 6, 2], "tanh", "sigmoid", True),  # residual on the two 6->6 layers only
        ([3, 8, 2], "relu", "softplus", True),  # no equal-width layer: residual is a no-op
    ],
)
def test_apply_matches_numpy(widths, activation, output_activation, residual, key):
    model = gradflow.mlp(
        widths, activation, "nielsen", output_activation=output_activation, residual=residual
    )
    params = model.init(key)
    x = np.random.default_rng(0).normal(size=(9, widths[0])).astype(np.float32)
    got = model.apply(params, jnp.asarray(x))
    assert got.shape == (9, widths[-1])
    # float32 forward vs float64 numpy over <= 4 layers of O(1) values: ~1e-6 relative.
    layers = mlp_layers(model, params)
    want = _np_mlp(layers, x.astype(np.float64), activation, output_activation, residual)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    # The taps sit at the pre-activations z^l, one per layer, named like the layers.
    specs, _ = gradflow.taps.discover(model.apply, params, jnp.asarray(x))
    assert list(specs) == [f"layer{l}" for l in range(1, len(widths))]
    assert [s.shape[s.batch_axis] for s in specs.values()] == [9] * (len(widths) - 1)


def test_model_is_hashable_static_config():
    a = gradflow.mlp([4, 3, 2], "tanh", "gaussian", sigma_w2=2.0)
    b = gradflow.mlp((4, 3, 2), "tanh", "gaussian", sigma_w2=2.0)
    assert a == b and hash(a) == hash(b)  # usable as a jit static argument
    assert a != gradflow.mlp([4, 3, 2], "tanh", "gaussian", sigma_w2=2.5)
    assert a.config.to_dict()["widths"] == (4, 3, 2) and a.config.n_layers == 2


def test_models_with_one_config_but_other_functions_differ(key):
    # A model is never identified by its config alone: the same config with another init or
    # apply is another model (another compiled program, another run directory).
    base = gradflow.mlp([4, 3, 2], "tanh")
    other_init = gradflow.Model(init=lambda k: base.init(k), apply=base.apply, config=base.config)
    other_apply = gradflow.Model(
        init=base.init, apply=lambda p, x: 2 * base.apply(p, x), config=base.config
    )
    assert len({base, other_init, other_apply}) == 3
    assert other_apply != gradflow.Model(init=base.init, apply=lambda p, x: x, config=base.config)
    assert other_init.describe() != other_apply.describe()


def test_code_fingerprint_sees_code_and_closures():
    from gradflow.models import code_fingerprint

    def make(scale):
        return lambda p, x: scale * x

    assert code_fingerprint(make(2.0)) == code_fingerprint(make(2.0))
    assert code_fingerprint(make(2.0)) != code_fingerprint(make(3.0))
    assert code_fingerprint(lambda p, x: x) != code_fingerprint(lambda p, x: -x)


# --------------------------------------------------------------------------------------------
# Seed identity: the draws recorded before the layer redesign


def _digest(a):
    a = np.ascontiguousarray(np.asarray(a, np.float32))
    return [list(a.shape), hashlib.sha256(a.tobytes()).hexdigest()[:24]]


SEED_CASES = {
    "mlp_nielsen": lambda: gradflow.mlp([784, 30, 30, 30, 10], "sigmoid", "nielsen"),
    "mlp_gaussian_deep": lambda: gradflow.mlp(
        [16] * 7, "tanh", "gaussian", sigma_w2=1.7, sigma_b2=0.05
    ),
    "mlp_orth_resid": lambda: gradflow.mlp(
        [8, 12, 12, 12, 3], "relu", "orthogonal", sigma_w2=2.0, residual=True
    ),
    "mlp_glorot": lambda: gradflow.mlp([5, 7, 7, 2], "tanh", "glorot_uniform"),
    "rnn": lambda: gradflow.rnn(
        3, 8, 2, "tanh", "lecun", recurrent_init="orthogonal", sigma_w2=1.2, sigma_b2=0.1
    ),
    "lstm": lambda: gradflow.lstm(3, 8, 2, "lecun", forget_bias=1.0),
}


def _values(model, params, case, k, name):
    if case.startswith("mlp"):
        return np.asarray(mlp_layers(model, params)[k][name], np.float64)
    return np.asarray(params[0][k], np.float64)


@pytest.mark.parametrize("case", list(SEED_CASES))
def test_fixed_key_draws_equal_the_recorded_ones(case):
    recorded = json.loads(
        (pathlib.Path(__file__).parent / "data" / "seed_identity.json").read_text()
    )[case]
    model = SEED_CASES[case]()
    params = model.init(jax.random.key(7))
    if case.startswith("mlp"):
        got = [{"w": _digest(p["w"]), "b": _digest(p["b"])} for p in mlp_layers(model, params)]
    else:  # [cell {"w_in", "w_rec", "b"}, readout {"w", "b"}] vs the first version's dict
        cell, out = params
        got = {**{k: _digest(v) for k, v in cell.items()}}
        got.update(w_out=_digest(out["w"]), b_out=_digest(out["b"]))
    # Bit for bit, except the orthogonal matrices: their Gaussian draws are seed-identical but
    # LAPACK's QR (jaxlib calls scipy's OpenBLAS) rounds differently across builds, so those
    # are recorded by value and compared to 1e-5 (float32 QR rounding is ~1e-7 here).
    flat_got = got if isinstance(got, dict) else dict(enumerate(got))
    flat_rec = recorded if isinstance(recorded, dict) else dict(enumerate(recorded))
    assert flat_got.keys() == flat_rec.keys()
    for k, entry in flat_rec.items():
        g, r = flat_got[k], entry
        pairs = [(g, r, "")] if case in ("rnn", "lstm") else [(g[n], r[n], n) for n in r]
        for g1, r1, name in pairs:
            if isinstance(r1, dict):  # by value
                values = _values(model, params, case, k, name)
                assert list(values.shape) == r1["shape"]
                np.testing.assert_allclose(values.ravel(), r1["values"], atol=1e-5)
            else:
                assert g1 == r1, f"{case} {k} {name} changed"


# --------------------------------------------------------------------------------------------
# Recurrent models


def test_rnn_and_lstm_param_shapes(key):
    p, out = gradflow.rnn(3, 5, 2).init(key)
    assert {k: v.shape for k, v in p.items()} == {"w_in": (3, 5), "w_rec": (5, 5), "b": (5,)}
    assert {k: v.shape for k, v in out.items()} == {"w": (5, 2), "b": (2,)}
    q, _ = gradflow.lstm(3, 5, 2, forget_bias=1.5).init(key)
    assert q["w_in"].shape == (3, 20) and q["w_rec"].shape == (5, 20) and q["b"].shape == (20,)
    # lecun input init and orthogonal (sigma_b2 = 0) recurrent init have zero biases, so the bias
    # vector is exactly the forget-gate bias on the f block of [i, f, g, o].
    np.testing.assert_array_equal(q["b"], np.r_[np.zeros(5), np.full(5, 1.5), np.zeros(10)])
    # Each 5x5 gate block of W_rec is orthogonal (float32 QR: 1e-5 is ~100 ulp).
    for g in range(4):
        blk = np.asarray(q["w_rec"][:, 5 * g : 5 * g + 5], np.float64)
        np.testing.assert_allclose(blk.T @ blk, np.eye(5), atol=1e-5)


def test_rnn_recurrent_gain(key):
    w = np.asarray(
        gradflow.rnn(2, 6, 1, recurrent_init="orthogonal", sigma_w2=2.25).init(key)[0]["w_rec"]
    )
    # float32 SVD of a scaled orthogonal matrix: every singular value is 1.5 to ~1e-6.
    np.testing.assert_allclose(np.linalg.svd(w, compute_uv=False), 1.5, rtol=1e-5)


def test_rnn_forward_matches_loop(key):
    model = gradflow.rnn(3, 4, 2, "tanh", "nielsen")
    cell, out = jax.tree.map(lambda v: np.asarray(v, np.float64), model.init(key))
    p = {**cell, "w_out": out["w"], "b_out": out["b"]}
    x = np.random.default_rng(1).normal(size=(5, 6, 3))
    h = np.zeros((5, 4))
    hs = []
    for t in range(6):
        h = np.tanh(x[:, t] @ p["w_in"] + h @ p["w_rec"] + p["b"])
        hs.append(h)
    want_y = h @ p["w_out"] + p["b_out"]
    params, xs = model.init(key), jnp.asarray(x, jnp.float32)
    specs, _ = gradflow.taps.discover(model.apply, params, xs)
    zeros = {n: jnp.zeros(s.shape, s.dtype) for n, s in specs.items()}
    y, hidden, _ = gradflow.taps.run_tapped(model.apply, params, xs, zeros)
    # float32 scan of 6 tanh steps vs float64 loop: ~1e-6 relative.
    np.testing.assert_allclose(y, want_y, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(model.apply(params, xs), y, rtol=0)  # the same computation
    np.testing.assert_allclose(hidden["rnn/h"], np.stack(hs, axis=1), rtol=1e-5, atol=1e-5)


# --------------------------------------------------------------------------------------------
# Bad input


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(widths=[4, 3], activation="sigmod"), "unknown activation 'sigmod'.*sigmoid"),
        (dict(widths=[4, 3], output_activation="softmax"), "unknown output_activation"),
        (dict(widths=[4, 3], init="xavier"), "unknown init 'xavier'.*glorot_uniform"),
        (dict(widths=[4]), "at least two entries"),
        (dict(widths=[]), "at least two entries"),
        (dict(widths=[4, 0, 2]), "positive"),
        (dict(widths=[4, -3, 2]), "positive"),
        (dict(widths="abc"), "positive ints"),
        (dict(widths=[4, 3], init="lecun", sigma_w2=2.0), "sigma_w2/sigma_b2 only apply"),
        (dict(widths=[4, 3], init="he", sigma_b2=0.1), "sigma_w2/sigma_b2 only apply"),
        (dict(widths=[4, 3], init="gaussian", sigma_w2=0.0), "sigma_w2 > 0"),
        (dict(widths=[4, 3], init="gaussian", sigma_b2=-1.0), "sigma_b2 >= 0"),
        (dict(widths=[4, 3], init="orthogonal", sigma_w2=float("nan")), "sigma_w2 > 0"),
    ],
)
def test_mlp_bad_input(kwargs, match):
    with pytest.raises(ValueError, match=match):
        gradflow.mlp(**kwargs)


def test_init_override_with_non_sigma_init_is_an_error(key):
    # A sigma grid swept over a lecun model would otherwise be silently ignored.
    with pytest.raises(ValueError, match="sigma_w2/sigma_b2 only apply"):
        gradflow.mlp([4, 3], "tanh", "lecun").init(key, sigma_w2=2.0)
    with pytest.raises(ValueError, match="sigma_w2/sigma_b2 only apply"):
        gradflow.rnn(2, 3, 1, recurrent_init="lecun").init(key, sigma_b2=0.5)


@pytest.mark.parametrize(
    "args,kwargs,match",
    [
        ((0, 4, 2), {}, "n_in must be a positive int"),
        ((3, -1, 2), {}, "n_hidden must be a positive int"),
        ((3, 4, 2), dict(activation="swish"), "unknown activation"),
        ((3, 4, 2), dict(recurrent_init="identity"), "unknown init 'identity'"),
        ((3, 4, 2), dict(recurrent_init="he", sigma_w2=2.0), "only apply"),
    ],
)
def test_rnn_bad_input(args, kwargs, match):
    with pytest.raises(ValueError, match=match):
        gradflow.rnn(*args, **kwargs)
