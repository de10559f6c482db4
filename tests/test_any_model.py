"""Every tool on models that are not the built-in MLP, and the bad input of user models."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import gradflow as gf
from gradflow import layers as gl


def _init(key):
    k1, k2 = jax.random.split(key)
    return {
        "enc": {"w": jax.random.normal(k1, (5, 7)) / np.sqrt(5), "b": jnp.zeros(7)},
        "head": {"w": jax.random.normal(k2, (7, 3)) / np.sqrt(7)},
    }


def _apply(params, x):
    z = gf.tap(x @ params["enc"]["w"] + params["enc"]["b"][None, :], "z")
    return jnp.tanh(z) @ params["head"]["w"]


MODEL = gf.from_apply(_init, _apply)


def _data(batch=6):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(batch, 5)).astype(np.float32)
    return x, rng.integers(0, 3, size=batch).astype(np.int32)


def test_from_apply_layers_taps_and_the_float64_reference():
    x, y = _data()
    params = MODEL.init(jax.random.key(0))
    g = gf.layer_grad_norms(MODEL, params, x, y, loss="xent")
    assert g.names == ("enc", "head") and g.hidden_names == ("z",)
    # Reference: float64 numpy backprop of the same net.
    p = jax.tree.map(lambda a: np.asarray(a, np.float64), params)
    z = x.astype(np.float64) @ p["enc"]["w"] + p["enc"]["b"]
    logits = np.tanh(z) @ p["head"]["w"]
    prob = np.exp(logits - logits.max(1, keepdims=True))
    prob /= prob.sum(1, keepdims=True)
    d_out = (prob - np.eye(3)[y]) / len(x)  # dC/dlogits of the batch mean
    d_z = d_out @ p["head"]["w"].T * (1 - np.tanh(z) ** 2)
    g_enc_w, g_enc_b, g_head = x.T @ d_z, d_z.sum(0), np.tanh(z).T @ d_out
    # float32 vs float64 through two small layers: ~1e-6 relative; 1e-5 leaves room.
    np.testing.assert_allclose(g.weights, [np.linalg.norm(g_enc_w), np.linalg.norm(g_head)],
                               rtol=1e-5)  # fmt: skip
    np.testing.assert_allclose(g.biases[0], np.linalg.norm(g_enc_b), rtol=1e-5)
    assert np.isnan(g.biases[1])  # the head has no bias: NaN, not a misleading 0
    per_example = len(x) * d_z
    np.testing.assert_allclose(g.hidden, [np.sqrt(np.mean(np.sum(per_example**2, 1)))], rtol=1e-5)


def test_sweep_grid_summarize_train_and_diagnose_on_a_layer_composition():
    net = gl.serial(
        gl.named(gl.dense(8, "gaussian"), "fc1"), gl.mark("h1", activation="tanh"),
        gl.activation("tanh"), gl.residual(gl.serial(gl.dense(8), gl.activation("relu")), 0.5),
        gl.named(gl.dense(3), "out"),
    )  # fmt: skip
    model = gf.from_layers(net, (5,))
    x, y = _data()
    s = gf.sweep(gf.layer_grad_norms, model, 6, x, y, loss="xent", chunk_size=4, quiet=True)
    assert s.params.shape == (6, 3) and s.names == ("fc1", "residual3", "out")
    one = gf.layer_grad_norms(model, model.init(gf.seed_keys(6)[4]), x, y, loss="xent")
    np.testing.assert_allclose(s.params[4], one.params, rtol=1e-5)  # vmapped float32 sums
    grid = gf.grid_sweep(gf.layer_grad_norms, model, 2, x, y, loss="xent", quiet=True,
                         grid={"sigma_w2": np.array([0.5, 4.0])})  # fmt: skip
    assert grid.weights.shape == (2, 2, 3)
    # Seed i is the same draw at every grid point, scaled: ||W|| grows by sqrt(4 / 0.5) exactly
    # (float32 scaling: a few ulps).
    ratio = grid.weight_norms[1, :, 0] / grid.weight_norms[0, :, 0]
    np.testing.assert_allclose(ratio, np.sqrt(8.0), rtol=1e-6)
    np.testing.assert_allclose(grid.weight_norms[1, :, 2], grid.weight_norms[0, :, 2], rtol=0)
    summary = gf.summarize(s)
    assert isinstance(summary.params, gf.Summary) and summary.params.median.shape == (3,)
    traj = gf.train.train_trajectory(model, model.init(jax.random.key(0)), x, y, "xent",
                                     steps=3, learning_rate=0.1)  # fmt: skip
    assert traj.params.shape == (4, 3) and traj.loss[-1, 0] < traj.loss[0, 0]
    d = gf.diagnose.diagnose(model, model.init(jax.random.key(0)), x, y, "xent",
                             hessian_iterations=4)  # fmt: skip
    assert d.weight_grads.shape == (3,) and d.saturated_fraction.shape == (1,)


def test_rnn_diagnosis_and_layer_norms_work_too():
    model = gf.rnn(3, 4, 2)
    x = np.random.default_rng(1).normal(size=(5, 6, 3)).astype(np.float32)
    y = np.array([0, 1, 0, 1, 1], np.int32)
    g = gf.layer_grad_norms(model, model.init(jax.random.key(0)), x, y, loss="xent")
    assert g.names == ("rnn", "readout") and g.hidden_names == ("rnn/h",)


def test_bad_user_models_get_one_line_errors():
    x, y = _data()
    params = MODEL.init(jax.random.key(0))
    wrong = gf.from_apply(_init, lambda p, x: x @ p["enc"]["w"][:4])
    with pytest.raises(ValueError, match=r"model.apply failed on x of shape \(6, 5\)") as e:
        gf.layer_grad_norms(wrong, params, x, y, loss="xent")
    assert "\n" not in str(e.value)
    with pytest.raises(ValueError, match=r"params leaf enc/b is a str, not an array"):
        gf.layer_grad_norms(MODEL, {**params, "enc": {**params["enc"], "b": "zero"}}, x, y, "xent")
    with pytest.raises(ValueError, match="groups pattern 'blocks/.*' matches no parameter path"):
        bad = gf.from_apply(_init, _apply, groups=r"blocks/\d+")
        gf.layer_grad_norms(bad, params, x, y, loss="xent")
    with pytest.raises(ValueError, match="not a valid regex"):
        gf.from_apply(_init, _apply, groups="(")

    def twice(params, x):
        return gf.tap(gf.tap(_apply(params, x), "out"), "out")

    with pytest.raises(ValueError, match="tap name 'out' is used twice"):
        gf.layer_grad_norms(gf.from_apply(_init, twice), params, x, y, loss="xent")
    with pytest.raises(ValueError, match="model must be a gradflow Model"):
        gf.layer_grad_norms(_apply, params, x, y)


def test_group_overrides():
    x, y = _data()
    params = MODEL.init(jax.random.key(0))
    merged = gf.from_apply(_init, _apply, groups=lambda path: "all")
    g = gf.layer_grad_norms(merged, params, x, y, loss="xent")
    full = gf.layer_grad_norms(MODEL, params, x, y, loss="xent")
    assert g.names == ("all",)
    np.testing.assert_allclose(g.params[0], np.sqrt(np.sum(full.params**2)), rtol=1e-6)
    regex = gf.from_apply(_init, _apply, groups=r"^(enc|head)/w")
    assert gf.layer_grad_norms(regex, params, x, y, "xent").names == ("enc/w", "enc", "head/w")
