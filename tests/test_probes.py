"""Probes against independent references: numpy float64 backprop, finite differences, per-example
jax.grad, hand-unrolled recurrences, a closed form, and Nielsen's chapter-5 numbers."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.special import erf as np_erf

import gradflow
from gradflow import taps
from gradflow.losses import get_loss
from gradflow.memory import sub_jaxprs
from gradflow.nets import mlp_layers

# The probes run as one jitted program per (model, loss, shapes) already.
layer_grad_norms = gradflow.layer_grad_norms
preact_grads = gradflow.preact_grads
time_grad_norms = gradflow.time_grad_norms
FIELDS = ("weights", "biases", "preacts", "weights_per_example", "weight_norms", "update_ratio",
          "zero_fraction", "loss")  # fmt: skip

# --------------------------------------------------------------------------------------------
# Hand-written numpy float64 reference backprop (independent of the library's autodiff)

_SELU_ALPHA, _SELU_SCALE = 1.6732632423543772848170429916717, 1.0507009873554804934193349852946


def _sigmoid(z):
    return 0.5 * (1 + np.tanh(0.5 * z))  # overflow-free


def np_act(name, z):
    """(phi(z), phi'(z)) in float64."""
    if name == "sigmoid":
        s = _sigmoid(z)
        return s, s * (1 - s)
    if name == "tanh":
        t = np.tanh(z)
        return t, 1 - t**2
    if name == "relu":
        return np.maximum(z, 0), (z > 0).astype(np.float64)
    if name == "leaky_relu":
        return np.where(z > 0, z, 0.01 * z), np.where(z > 0, 1.0, 0.01)
    if name == "gelu":
        cdf = 0.5 * (1 + np_erf(z / math.sqrt(2)))
        pdf = np.exp(-0.5 * z**2) / math.sqrt(2 * math.pi)
        return z * cdf, cdf + z * pdf
    if name == "selu":
        pos = z > 0
        return (
            _SELU_SCALE * np.where(pos, z, _SELU_ALPHA * np.expm1(z)),
            _SELU_SCALE * np.where(pos, 1.0, _SELU_ALPHA * np.exp(z)),
        )
    if name == "softplus":
        return np.logaddexp(0, z), _sigmoid(z)
    if name == "erf":
        return np_erf(z), 2 / math.sqrt(math.pi) * np.exp(-(z**2))
    if name == "linear":
        return z, np.ones_like(z)
    raise AssertionError(name)


def np_loss_and_output_delta(loss, output_activation, z, y):
    """Per-example C_x (B,) and delta^L = dC_x/dz^L (B, n_L); y is (B, n_L) float."""
    if loss == "mse":
        a, da = np_act(output_activation or "linear", z)
        return 0.5 * np.sum((a - y) ** 2, axis=1), (a - y) * da
    if loss == "xent":
        log_p = z - np.logaddexp.reduce(z, axis=1, keepdims=True)
        return -np.sum(y * log_p, axis=1), np.exp(log_p) * y.sum(1, keepdims=True) - y
    if loss == "sigmoid_xent":
        log_a, log_1ma = -np.logaddexp(0, -z), -np.logaddexp(0, z)
        return -np.sum(y * log_a + (1 - y) * log_1ma, axis=1), _sigmoid(z) - y
    raise AssertionError(loss)


def np_forward(cfg, params, x, perturb=None):
    """Forward pass storing z^l and a^{l-1}; perturb[l] is added to z^l."""
    a, zs, inputs = x, [], []
    n = len(params)
    for l, (w, b) in enumerate(params):
        inputs.append(a)
        z = a @ w + b
        if perturb is not None:
            z = z + perturb[l]
        zs.append(z)
        if l == n - 1:
            a = np_act(cfg.output_activation or "linear", z)[0]
        elif cfg.residual and w.shape[0] == w.shape[1]:
            a = a + np_act(cfg.activation, z)[0]
        else:
            a = np_act(cfg.activation, z)[0]
    return zs, inputs


def np_batch_loss(cfg, loss, params, x, y, perturb=None):
    zs, _ = np_forward(cfg, params, x, perturb)
    return np.mean(np_loss_and_output_delta(loss, cfg.output_activation, zs[-1], y)[0])


def np_backprop(cfg, loss, params, x, y):
    """Every LayerGradNorms field, by hand: delta^L from the loss, then
    delta^l = (delta^{l+1} W^{l+1 T} [+ dC/da^l through the skip]) * phi'(z^l)."""
    zs, inputs = np_forward(cfg, params, x)
    n_layers, batch = len(params), x.shape[0]
    c, delta = np_loss_and_output_delta(loss, cfg.output_activation, zs[-1], y)
    deltas = [None] * n_layers
    deltas[-1] = delta
    g_a = delta @ params[-1][0].T  # dC_x/da^{L-1}
    for l in range(n_layers - 2, -1, -1):
        w = params[l][0]
        deltas[l] = g_a * np_act(cfg.activation, zs[l])[1]
        skip = g_a if cfg.residual and w.shape[0] == w.shape[1] else 0.0
        g_a = deltas[l] @ w.T + skip
    g_w = [a.T @ d / batch for a, d in zip(inputs, deltas, strict=True)]
    g_b = [d.mean(axis=0) for d in deltas]
    per_ex_w = [np.einsum("bi,bj->bij", a, d) for a, d in zip(inputs, deltas, strict=True)]
    weights = np.array([np.linalg.norm(g) for g in g_w])
    weight_norms = np.array([np.linalg.norm(w) for w, _ in params])
    return dict(
        weights=weights,
        biases=np.array([np.linalg.norm(g) for g in g_b]),
        preacts=np.array([math.sqrt(np.mean(np.sum(d**2, axis=1))) for d in deltas]),
        weights_per_example=np.array(
            [math.sqrt(np.mean(np.sum(g**2, axis=(1, 2)))) for g in per_ex_w]
        ),
        weight_norms=weight_norms,
        update_ratio=weights / weight_norms,
        zero_fraction=np.array([np.mean(d == 0) for d in deltas]),
        loss=np.full(n_layers, c.mean()),
    ), deltas


def _np_params(model, params):
    return [
        (np.asarray(p["w"], np.float64), np.asarray(p["b"], np.float64))
        for p in mlp_layers(model, params)
    ]


def _problem(widths, activation, init, loss, targets, *, batch=7, seed=0, **model_kw):
    model = gradflow.mlp(widths, activation, init, **model_kw)
    params = model.init(jax.random.key(seed))
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(batch, widths[0]))
    labels = rng.integers(0, widths[-1], size=batch)
    if targets == "int":
        y = labels.astype(np.int32)
        y_np = np.eye(widths[-1])[labels]
    elif targets == "one_hot":
        y = y_np = np.eye(widths[-1])[labels]
    else:  # real-valued regression targets (mse) or soft labels in [0, 1] (sigmoid_xent)
        y = y_np = rng.uniform(size=(batch, widths[-1]))
    return model, params, x, y, y_np


# (widths, activation, init, loss, targets, model options): several depths (1 to 6 weight
# layers), every activation, all three losses, integer and one-hot targets, residual layers.
CASES = [
    ([5, 3], "linear", "lecun", "mse", "int", {}),
    ([5, 4, 3], "sigmoid", "nielsen", "sigmoid_xent", "one_hot", {}),
    ([6, 5, 5, 5, 3], "tanh", "orthogonal", "xent", "one_hot", dict(residual=True)),
    ([4, 6, 6, 6, 6, 2], "relu", "he", "mse", "float", {}),
    ([5, 8, 8, 4], "gelu", "glorot_standard", "xent", "int", {}),
    ([5, 8, 8, 4], "selu", "lecun", "sigmoid_xent", "float", {}),
    ([5, 8, 8, 4], "softplus", "gaussian", "mse", "one_hot", dict(sigma_w2=2.0, sigma_b2=0.1)),
    ([5, 8, 8, 4], "leaky_relu", "glorot_uniform", "xent", "one_hot", dict(residual=True)),
    ([5, 8, 8, 4], "erf", "standard_normal", "sigmoid_xent", "int", {}),
    ([5, 6, 6, 3], "sigmoid", "nielsen", "mse", "one_hot", dict(output_activation="sigmoid")),
    ([4, 8, 8, 8, 8, 8, 3], "sigmoid", "nielsen", "sigmoid_xent", "int", {}),
    # Feature-major with an input of >= 64 features: the input norms are summed along rows.
    ([80, 6, 4], "tanh", "lecun", "xent", "int", {}),
]


@pytest.mark.parametrize("widths,activation,init,loss,targets,kw", CASES)
def test_layer_grad_norms_match_numpy_backprop_float64(widths, activation, init, loss, targets, kw):
    model, params, x, y, y_np = _problem(widths, activation, init, loss, targets, **kw)
    want, _ = np_backprop(model.config, loss, _np_params(model, params), x, y_np)
    with jax.enable_x64(True):
        params64 = jax.tree.map(lambda v: jnp.asarray(v, jnp.float64), params)
        got = layer_grad_norms(model, params64, jnp.asarray(x), jnp.asarray(y), loss)
        got = jax.tree.map(np.asarray, got)
    assert set(FIELDS) == set(want)
    assert got.names == got.hidden_names == tuple(f"layer{l}" for l in range(1, len(widths)))
    np.testing.assert_allclose(got.params, np.hypot(got.weights, got.biases), rtol=1e-12)
    for field in FIELDS:
        assert getattr(got, field).shape == (len(widths) - 1,), field
        assert getattr(got, field).dtype == np.float64, field
        # Both sides float64 with different operation orders; 1e-9 leaves room for cancellation
        # in the batch-mean bias gradient, and is ~1e7 times tighter than any real bug.
        np.testing.assert_allclose(getattr(got, field), want[field], rtol=1e-9, err_msg=field)


@pytest.mark.parametrize("widths,activation,init,loss,targets,kw", CASES[2::4])
def test_layer_grad_norms_float32_close_to_float64_reference(
    widths, activation, init, loss, targets, kw
):
    model, params, x, y, y_np = _problem(widths, activation, init, loss, targets, **kw)
    want, _ = np_backprop(model.config, loss, _np_params(model, params), x, y_np)
    got = layer_grad_norms(model, params, jnp.asarray(x, jnp.float32), jnp.asarray(y), loss)
    assert got.weights.dtype == jnp.float32
    for field in FIELDS:
        # float32 (eps 6e-8) through <= 6 layers and a batch mean: 1e-4 relative is ample.
        np.testing.assert_allclose(getattr(got, field), want[field], rtol=1e-4, err_msg=field)


def test_zero_fraction_sees_dead_relus():
    model, params, x, y, y_np = _problem([4, 6, 6, 2], "relu", "he", "mse", "float")
    params[1]["b"] = params[1]["b"].at[:3].set(-1e3)  # units 0-2 of layer 2 dead for every input
    got = layer_grad_norms(model, params, jnp.asarray(x, jnp.float32), jnp.asarray(y))
    want, deltas = np_backprop(model.config, "mse", _np_params(model, params), x, y_np)
    assert np.all(deltas[1][:, :3] == 0)
    assert got.zero_fraction[1] >= 0.5
    # A count over 7 x 6 entries, rounded to float32.
    np.testing.assert_allclose(got.zero_fraction, want["zero_fraction"], rtol=1e-7)
    assert got.zero_fraction[2] == 0.0  # the linear output layer's error is never exactly 0


FD_EPS = 1e-5  # central differences: truncation ~eps^2 = 1e-10, rounding ~1e-16/eps = 1e-11


def central_differences(arrays, loss_of):
    """d loss_of(arrays) / d arrays[i][idx] for every entry, by central differences."""
    grads = []
    for i, arr in enumerate(arrays):
        g = np.zeros_like(arr)
        for idx in np.ndindex(arr.shape):
            hi, lo = [a.copy() for a in arrays], [a.copy() for a in arrays]
            hi[i][idx] += FD_EPS
            lo[i][idx] -= FD_EPS
            g[idx] = (loss_of(hi) - loss_of(lo)) / (2 * FD_EPS)
        grads.append(g)
    return grads


@pytest.mark.parametrize("residual", [False, True])
def test_finite_differences_float64(residual):
    """Central differences of the numpy loss w.r.t. every weight, bias and pre-activation."""
    widths, batch = [3, 4, 4, 2], 4
    model, params, x, y, y_np = _problem(
        widths, "tanh", "nielsen", "mse", "float", batch=batch, residual=residual
    )
    cfg, p_np = model.config, _np_params(model, params)
    flat = [a for wb in p_np for a in wb]
    g_flat = central_differences(
        flat, lambda f: np_batch_loss(cfg, "mse", list(zip(f[::2], f[1::2], strict=True)), x, y_np)
    )
    zeros = [np.zeros((batch, n)) for n in widths[1:]]
    g_z = central_differences(zeros, lambda pert: np_batch_loss(cfg, "mse", p_np, x, y_np, pert))
    deltas = [batch * g for g in g_z]  # gradient of the mean -> each example's dC_x/dz_x

    with jax.enable_x64(True):
        params64 = jax.tree.map(lambda v: jnp.asarray(v, jnp.float64), params)
        got = layer_grad_norms(model, params64, jnp.asarray(x), jnp.asarray(y))
        pre = preact_grads(model, params64, jnp.asarray(x), jnp.asarray(y))
    rtol = 1e-7  # the FD error bound above, relative to O(0.01..1) gradients
    np.testing.assert_allclose(got.weights, [np.linalg.norm(g) for g in g_flat[::2]], rtol=rtol)
    np.testing.assert_allclose(got.biases, [np.linalg.norm(g) for g in g_flat[1::2]], rtol=rtol)
    np.testing.assert_allclose(
        got.preacts, [np.sqrt(np.mean(np.sum(d**2, 1))) for d in deltas], rtol=rtol
    )
    assert list(pre) == ["layer1", "layer2", "layer3"]
    for a, b in zip(pre.values(), deltas, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-9)  # entrywise, same FD error
    # The per-example gradient averaged over the batch is the bias gradient.
    for d, gb in zip(deltas, g_flat[1::2], strict=True):
        np.testing.assert_allclose(d.mean(0), gb, rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize(
    "widths,activation,loss,targets,kw",
    [
        ([5, 6, 6, 3], "tanh", "xent", "int", dict(residual=True)),
        ([5, 6, 6, 3], "relu", "mse", "float", dict(output_activation="sigmoid")),
    ],
)
def test_preact_grads_equal_per_example_grad_of_zero_perturbation(
    widths, activation, loss, targets, kw
):
    model, params, x, y, _ = _problem(widths, activation, "nielsen", loss, targets, **kw)
    x, y = jnp.asarray(x, jnp.float32), jnp.asarray(y)
    loss_fn = get_loss(loss)

    specs, _ = taps.discover(model.apply, params, x[:1])

    def one_example(xi, yi):
        zeros = {n: jnp.zeros(s.shape, s.dtype) for n, s in specs.items()}

        def c_x(pert):
            out = taps.run_tapped(model.apply, params, xi[None], pert)[0]
            return loss_fn(out, yi[None])[0]

        g = jax.grad(c_x)(zeros)  # one example: the batch axis has length 1 wherever it is
        return [jnp.reshape(g[n], (-1,)) for n in specs]

    want = jax.vmap(one_example)(x, y)  # [dC_x/dz^l_x], each (batch, n_l)
    got = list(preact_grads(model, params, x, y, loss).values())
    norms = layer_grad_norms(model, params, x, y, loss)
    for l, (g, w) in enumerate(zip(got, want, strict=True)):
        scale = float(jnp.abs(w).max())
        # float32; the batch path scales grad(mean) by B: a few ulps apart.
        np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-6 * scale, err_msg=f"layer {l}")
        rms = jnp.sqrt(jnp.mean(jnp.sum(w**2, axis=1)))
        np.testing.assert_allclose(norms.preacts[l], rms, rtol=1e-5)
        np.testing.assert_allclose(norms.zero_fraction[l], jnp.mean(w == 0), rtol=0)


# --------------------------------------------------------------------------------------------
# Recurrent nets: gradient with respect to the hidden state at every time step


def _rnn_problem(model, batch=4, time=7, seed=0):
    params = model.init(jax.random.key(seed))
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(batch, time, model.config.n_in))
    y = rng.integers(0, model.config.n_out, size=batch).astype(np.int32)
    return params, x, y


def test_rnn_time_grads_match_numpy_bptt_float64():
    model = gradflow.rnn(3, 5, 3, "tanh", "nielsen", recurrent_init="orthogonal", sigma_w2=1.4)
    params, x, y = _rnn_problem(model)
    cell, readout = jax.tree.map(lambda v: np.asarray(v, np.float64), params)
    p = {**cell, "w_out": readout["w"], "b_out": readout["b"]}
    batch, time = x.shape[:2]
    h, pres, hs = np.zeros((batch, 5)), [], []
    for t in range(time):
        pres.append(x[:, t] @ p["w_in"] + h @ p["w_rec"] + p["b"])
        h = np.tanh(pres[-1])
        hs.append(h)
    out = h @ p["w_out"] + p["b_out"]
    c, d_out = np_loss_and_output_delta("xent", None, out, np.eye(3)[y])
    g = [None] * time
    g[-1] = d_out @ p["w_out"].T  # dC_x/dh_{T-1}
    for t in range(time - 1, 0, -1):
        g[t - 1] = (g[t] * (1 - np.tanh(pres[t]) ** 2)) @ p["w_rec"].T
    want = np.array([math.sqrt(np.mean(np.sum(gt**2, axis=1))) for gt in g])
    with jax.enable_x64(True):
        p64 = jax.tree.map(lambda v: jnp.asarray(v, jnp.float64), params)
        got = time_grad_norms(model, p64, jnp.asarray(x), jnp.asarray(y), "xent")
        pre = preact_grads(model, p64, jnp.asarray(x), jnp.asarray(y), "xent")
    # float64 both sides, 7 steps: rounding only.
    np.testing.assert_allclose(got.hidden, want, rtol=1e-10)
    np.testing.assert_allclose(got.loss, np.full(time, c.mean()), rtol=1e-12)
    np.testing.assert_array_equal(got.cell, np.zeros(time))
    np.testing.assert_allclose(pre["rnn/h"], np.stack(g, axis=1), rtol=1e-9, atol=1e-15)


def test_lstm_time_grads_match_hand_unrolled_loop_float64():
    """d C / d h_t and d C / d c_t by jax.grad of a Python-loop LSTM restarted from step t."""
    model = gradflow.lstm(3, 4, 2, "nielsen", forget_bias=1.0)
    params, x, y = _rnn_problem(model, batch=3, time=6)
    time = x.shape[1]
    with jax.enable_x64(True):
        p64 = jax.tree.map(lambda v: jnp.asarray(v, jnp.float64), params)
        p = {**p64[0], "w_out": p64[1]["w"], "b_out": p64[1]["b"]}
        xs = jnp.asarray(x)
        sig = jax.nn.sigmoid

        def gates(t, h):
            z = xs[:, t] @ p["w_in"] + h @ p["w_rec"] + p["b"][None, :]
            return jnp.split(z, 4, axis=1)  # i, f, g, o

        def run(t0, h, c):
            """Continue from the state (h_t0, c_t0) to the summed per-example loss."""
            for t in range(t0 + 1, time):
                i, f, g, o = gates(t, h)
                c = sig(f) * c + sig(i) * jnp.tanh(g)
                h = sig(o) * jnp.tanh(c)
            out = h @ p["w_out"] + p["b_out"][None, :]
            return jnp.sum(get_loss("xent")(out, jnp.asarray(y)))

        h = c = jnp.zeros((3, 4))
        want_h, want_c = [], []
        for t in range(time):
            i, f, g, o = gates(t, h)
            c = sig(f) * c + sig(i) * jnp.tanh(g)
            h = sig(o) * jnp.tanh(c)
            # h_t with c_t held fixed; c_t through both h_t = sigma(o_t) tanh(c_t) and c_{t+1}.
            gh = jax.grad(run, argnums=1)(t, h, c)
            gc = jax.grad(lambda c_, t=t, o=o: run(t, sig(o) * jnp.tanh(c_), c_))(c)
            want_h.append(jnp.sqrt(jnp.mean(jnp.sum(gh**2, axis=1))))
            want_c.append(jnp.sqrt(jnp.mean(jnp.sum(gc**2, axis=1))))
        got = time_grad_norms(model, p64, xs, jnp.asarray(y), "xent")
        np.testing.assert_allclose(got.hidden, np.array(want_h), rtol=1e-10)  # float64 rounding
        np.testing.assert_allclose(got.cell, np.array(want_c), rtol=1e-10)


def test_linear_orthogonal_rnn_gradient_scales_like_gain_power():
    """h_t = h_{t-1} W + ..., W = g Q: dC/dh_t = dC/dh_{T-1} (W^T)^{T-1-t}, norm g^{T-1-t} times."""
    time = 12
    model = gradflow.rnn(3, 8, 2, "linear", "lecun", recurrent_init="orthogonal")
    params, x, y = _rnn_problem(model, batch=5, time=time)
    for gain in (0.6, 1.0, 1.3):
        # Same draw as recurrent_init="orthogonal", sigma_w2=gain**2 (one compilation for all).
        scaled = [{**params[0], "w_rec": params[0]["w_rec"] * gain}, params[1]]
        got = time_grad_norms(model, scaled, jnp.asarray(x, jnp.float32), y, "xent")
        want = got.hidden[-1] * gain ** (time - 1 - np.arange(time))
        # float32, 11 products with an orthogonal matrix: each preserves norms to ~1e-7.
        np.testing.assert_allclose(got.hidden, want, rtol=1e-5, err_msg=f"gain {gain}")


# --------------------------------------------------------------------------------------------
# Nielsen's chapter-5 numbers


def test_nielsen_speed_of_learning_ratios(monkeypatch):
    """[784,30,30,30,10] sigmoid, network2.py init, CrossEntropyCost, first 1,000 training digits.

    Nielsen's one init gives ||delta^l|| = 0.012, 0.060, 0.283 (ratios 0.20 and 0.21; the book's
    band over its nets is 0.18-0.25). Over 64 seeds we measure seed-median ratios 0.199 and 0.198
    (5-95% across seeds: 0.15-0.25) and median norms 0.0113, 0.057, 0.288.
    """
    monkeypatch.delenv(gradflow.data.DATA_ENV, raising=False)  # the embedded digits, always
    d = gradflow.data.load("mnist")
    x, y = d.x_train[:1000], d.y_train[:1000]
    model = gradflow.mlp([784, 30, 30, 30, 10], "sigmoid", "nielsen")
    out = gradflow.sweep(gradflow.layer_grad_norms, model, 64, x, y, loss="sigmoid_xent")
    b = out.biases  # (64, 4): three hidden layers and the output layer
    ratios = np.median(b[:, :2] / b[:, 1:3], axis=0)
    # The seed-to-seed spread of one ratio is ~0.03, so the median of 64 has SE ~0.004: the band
    # [0.16, 0.25] is Nielsen's 0.18-0.25 widened by ~5 SE below, and holds 0.20 by >8 SE.
    assert np.all((ratios > 0.16) & (ratios < 0.25)), ratios
    # Absolute values: one unseeded init in the book vs our seed median; within a factor 1.5.
    medians = np.median(b[:, :3], axis=0)
    np.testing.assert_allclose(np.log(medians / [0.012, 0.060, 0.283]), 0.0, atol=math.log(1.5))
    # Vanishing: the first hidden layer learns ~25x slower than the third.
    assert np.all(b[:, 0] < b[:, 2] / 5)


# --------------------------------------------------------------------------------------------
# Bad input


def test_probe_bad_input(key):
    model = gradflow.mlp([4, 3, 2], "tanh")
    params = model.init(key)
    x, y = jnp.ones((5, 4)), jnp.zeros((5,), jnp.int32)
    with pytest.raises(ValueError, match=r"x must have shape \(batch, 4\) for this model"):
        gradflow.layer_grad_norms(model, params, jnp.ones((5, 3)), y)
    with pytest.raises(ValueError, match=r"x must have shape \(batch, 4\)"):
        gradflow.layer_grad_norms(model, params, jnp.ones((4,)), y)
    with pytest.raises(ValueError, match=r"y must be integer labels of shape \(5,\)"):
        gradflow.layer_grad_norms(model, params, x, jnp.zeros((5, 3)))
    with pytest.raises(ValueError, match=r"y must be integer labels of shape \(5,\)"):
        gradflow.preact_grads(model, params, x, jnp.zeros((4,), jnp.int32))
    with pytest.raises(ValueError, match="unknown loss 'hinge'"):
        gradflow.layer_grad_norms(model, params, x, y, "hinge")
    with pytest.raises(ValueError, match="labels must lie in 0..1"):
        gradflow.layer_grad_norms(model, params, x, jnp.full((5,), 2, jnp.int32))
    with pytest.raises(ValueError, match=r"x must have shape \(batch, any, 4\)"):
        gradflow.layer_grad_norms(gradflow.rnn(4, 3, 2), gradflow.rnn(4, 3, 2).init(key), x, y)
    with pytest.raises(ValueError, match="use layer_grad_norms"):
        gradflow.time_grad_norms(model, params, x, y)
    rnn = gradflow.rnn(4, 3, 2)
    with pytest.raises(ValueError, match=r"x must have shape \(batch, any, 4\)"):
        gradflow.time_grad_norms(rnn, rnn.init(key), x, y)


@pytest.mark.parametrize("loss", ["xent", "sigmoid_xent"])
def test_cross_entropy_with_output_activation_is_an_error(loss, key):
    model = gradflow.mlp([4, 3, 2], "tanh", output_activation="sigmoid")
    x, y = jnp.ones((5, 4)), jnp.zeros((5,), jnp.int32)
    with pytest.raises(ValueError, match="takes logits.*output_activation=None"):
        gradflow.layer_grad_norms(model, model.init(key), x, y, loss)
    layer_grad_norms(model, model.init(key), x, y, "mse")  # mse on sigmoid outputs is fine


def test_layer_square_sums_equal_numpy_float64_per_layer():
    """Weights and biases summed apart, per layer, for several trees in one pass; a scanned run
    (stacked leaves, one entry per layer) and a bias-free layer (NaN biases)."""
    from gradflow.probes import layer_square_sums

    deep = gradflow.mlp([5] * 66 + [3], "tanh", "lecun")  # 66 weight layers: a scanned run
    params = deep.init(jax.random.key(0))
    twice = jax.tree.map(lambda a: 2 * a, params)
    x = jnp.ones((2, 5))
    names, ((w_sq, b_sq), (w2_sq, b2_sq)) = layer_square_sums(deep, (params, twice), x)
    assert names == tuple(f"layer{l}" for l in range(1, 67))
    want_w, want_b = [], []
    for layer in mlp_layers(deep, params):  # {"w", "b"} per layer, in order
        want_w.append(np.sum(np.asarray(layer["w"], np.float64) ** 2))
        want_b.append(np.sum(np.asarray(layer["b"], np.float64) ** 2))
    # float32 squares summed in a different order than numpy's float64: a few ulps.
    np.testing.assert_allclose(w_sq, want_w, rtol=1e-6)
    np.testing.assert_allclose(b_sq, want_b, rtol=1e-6)
    np.testing.assert_allclose(w2_sq, 4 * np.asarray(want_w), rtol=1e-6)
    np.testing.assert_allclose(b2_sq, 4 * np.asarray(want_b), rtol=1e-6)

    def init(key):
        return {"proj": {"w": jax.random.normal(key, (5, 4))}, "out": {"w": jnp.ones((4, 2)),
                "b": jnp.full((2,), 3.0)}}  # fmt: skip

    mine = gradflow.from_apply(
        init, lambda p, x: x @ p["proj"]["w"] @ p["out"]["w"] + p["out"]["b"][None]
    )
    p = mine.init(jax.random.key(1))
    names, ((w_sq, b_sq),) = layer_square_sums(mine, (p,), x)
    want = {
        "proj": (np.sum(np.asarray(p["proj"]["w"], np.float64) ** 2), np.nan),
        "out": (8.0, 18.0),
    }
    for i, name in enumerate(names):
        np.testing.assert_allclose([w_sq[i], b_sq[i]], want[name], rtol=1e-6)
    assert set(names) == {"proj", "out"}


def _equations(jaxpr) -> int:
    """Equations in a jaxpr and its sub-jaxprs."""
    return sum(1 + sum(_equations(sub) for sub in sub_jaxprs(eqn)) for eqn in jaxpr.eqns)


@pytest.mark.parametrize("probe", ["layer_grad_norms", "diagnose", "train"])
def test_a_scanned_runs_probes_do_not_grow_with_depth(probe):
    """A scanned run's taps stay one stacked array from the perturbation to the statistics
    (gradflow.taps.rows): the probe's program has as many equations at depth 70 as at 140.
    Before, each layer's tap was a slice, a stack and a few reductions: depth 1,000 took 14 s
    to layer_grad_norms' first result and 74 s to diagnose's."""
    from gradflow.diagnose import diagnose

    def equations(depth):
        model = gradflow.mlp([16] * (depth + 1), "tanh", "gaussian")
        params = model.init(jax.random.key(0))
        x, y = jnp.ones((4, 16)), jnp.ones((4, 16))
        fn = {
            "layer_grad_norms": lambda p: layer_grad_norms(model, p, x, y, "mse"),
            "diagnose": lambda p: diagnose(model, p, x, y, "mse", hessian_iterations=2),
            "train": lambda p: gradflow.train.train(model, p, x, y, "mse", steps=2).trajectory,
        }[probe]
        return _equations(jax.make_jaxpr(fn)(params).jaxpr)

    assert equations(70) == equations(140)


def test_tap_rows_mix_single_taps_and_stacked_runs():
    """taps.rows reads a scanned run's stacked array whole or in part, beside single taps, in the
    order asked; taps.get reads one row; taps.zeros makes one array per run."""
    spec = taps.TapSpec("", (2,), jnp.float32, 0, ())
    key = taps.STACK + "r0"
    specs = {
        "a": spec._replace(name="a"),
        **{f"r{i}": spec._replace(name=f"r{i}", stack=(key, i)) for i in range(4)},
        "b": spec._replace(name="b"),
    }
    run = jnp.arange(8.0).reshape(4, 2)
    store = {"a": jnp.array([-1.0, -2.0]), key: run, "b": jnp.array([9.0, 8.0])}
    np.testing.assert_array_equal(taps.rows(store, specs, ["r0", "r1", "r2", "r3"]), run)
    np.testing.assert_array_equal(
        taps.rows(store, specs, ["a", "r1", "r2", "b"]),
        np.stack([store["a"], run[1], run[2], store["b"]]),
    )
    np.testing.assert_array_equal(taps.get(store, specs, "r3"), run[3])
    assert {k: v.shape for k, v in taps.zeros(specs).items()} == {"a": (2,), key: (4, 2), "b": (2,)}
    records = {key + "/input_sq": run * 10}
    assert taps.has_record(records, specs, "r2", "/input_sq")
    assert not taps.has_record(records, specs, "a", "/input_sq")
    got = taps.rows(records, specs, ["r2", "r3"], "/input_sq")
    np.testing.assert_array_equal(got, run[2:] * 10)


def test_tap_specs_normalise_the_batch_axis_and_refuse_the_stack_prefix():
    """taps.perturbation stores a negative batch axis as tap() does (the run statistics move
    axis batch_axis + 1 of a stacked run); no tap may be named with taps.STACK's prefix."""
    frame = taps.ProbeFrame(None)
    with taps._push(frame):
        taps.perturbation("h", (3, 5, 4), jnp.float32, batch_axis=-3)
        taps.tap(jnp.zeros((5, 2)), "z", batch_axis=-2)
        with pytest.raises(ValueError, match="NUL byte"):
            taps.tap(jnp.zeros(2), taps.STACK + "x")
    assert frame.specs["h"].batch_axis == 0 and frame.specs["z"].batch_axis == 0
