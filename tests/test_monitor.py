"""gradflow.monitor: per-layer norms in a user's own loop equal the probes and float64 numpy;
the writers round-trip what they write."""

import json
import math
import os
import struct
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import gradflow as gf
from gradflow import layers as gl
from gradflow import monitor
from gradflow.groups import LeafGroup
from gradflow.losses import get_loss

# float32 sums of at most a few hundred squares, against the probes' own float32 program (a
# different reduction order, and gradients from a tapped backward pass): agreement to ~1e-6 is
# expected; 1e-5 leaves room for the summation order without hiding a wrong grouping (a missing
# or extra leaf changes a norm by far more).
RTOL = 1e-5


def _batch(model_in, n_out, n=5):
    kx, ky = jax.random.split(jax.random.key(1))
    return jax.random.normal(kx, (n, model_in)), jax.random.normal(ky, (n, n_out))


def _grads(model, params, x, y):
    mse = get_loss("mse")
    return jax.jit(jax.grad(lambda p: jnp.mean(mse(model.apply(p, x), y))))(params)


def _check_against_probes(model, params, x, y, pass_x=True):
    """layer_norms on jax.grad's gradients equals layer_grad_norms, name by name and in order."""
    ref = gf.layer_grad_norms(model, params, x, y)
    grads = _grads(model, params, x, y)
    x_arg = x if pass_x else None
    out = jax.jit(lambda g, p: monitor.layer_norms(g, p, model=model, x=x_arg))(grads, params)
    names = monitor.layer_names(grads, model=model, x=x_arg)
    assert names == ref.names  # the same layers, in the same order
    assert sorted(k for k in out if k.startswith("grad_norm/")) == sorted(
        f"grad_norm/{n}" for n in names
    )
    for i, name in enumerate(ref.names):
        np.testing.assert_allclose(out[f"grad_norm/{name}"], ref.params[i], rtol=RTOL)
        np.testing.assert_allclose(out[f"param_norm/{name}"], ref.param_norms[i], rtol=RTOL)
        if np.isnan(ref.biases[i]):  # no biases: the weight/bias split does not apply
            assert f"bias_grad_norm/{name}" not in out
            assert f"weight_grad_norm/{name}" not in out
        else:
            np.testing.assert_allclose(out[f"weight_grad_norm/{name}"], ref.weights[i], rtol=RTOL)
            np.testing.assert_allclose(out[f"bias_grad_norm/{name}"], ref.biases[i], rtol=RTOL)
    return out


def test_mlp_matches_layer_grad_norms(key):
    model = gf.mlp([6, 8, 8, 3], "tanh")
    x, y = _batch(6, 3)
    _check_against_probes(model, model.init(key), x, y)
    _check_against_probes(model, model.init(key), x, y, pass_x=False)  # a gf layer model


def _nested_model():
    """A from_apply model with nested dicts, a bias-free layer, and keys whose sorted (leaf)
    order differs from the order apply uses them."""

    def init(key):
        k = jax.random.split(key, 4)
        return {
            "z_enc": {
                "dense": {"w": jax.random.normal(k[0], (4, 6)) / 2, "b": jnp.full((6,), 0.1)},
                "proj": {"w": jax.random.normal(k[1], (6, 5)) / 2},
            },
            "head": {"kernel": jax.random.normal(k[2], (5, 2)), "bias": jnp.full((2,), -0.2)},
        }

    def apply(p, x):
        h = jnp.tanh(x @ p["z_enc"]["dense"]["w"] + p["z_enc"]["dense"]["b"][None])
        h = jnp.tanh(h @ p["z_enc"]["proj"]["w"])
        return h @ p["head"]["kernel"] + p["head"]["bias"][None]

    return gf.from_apply(init, apply)


def test_from_apply_nested_dicts_match_and_bare_pytree_agrees(key):
    model = _nested_model()
    params = model.init(key)
    x, y = _batch(4, 2)
    out = _check_against_probes(model, params, x, y)
    in_use_order = ("z_enc/dense", "z_enc/proj", "head")  # not the sorted key order
    assert monitor.layer_names(params, model=model, x=x) == in_use_order
    # Without the model: the same layers (innermost dicts) and numbers, in leaf order.
    assert monitor.layer_names(params) == ("head", "z_enc/dense", "z_enc/proj")
    flax_like = {"params": {f"Dense_{i}": {"kernel": jnp.ones(2)} for i in (10, 2, 1)}}
    assert monitor.layer_names(flax_like) == tuple(f"params/Dense_{i}" for i in (1, 2, 10))
    bare = jax.jit(monitor.layer_norms)(_grads(model, params, x, y), params)
    assert sorted(bare) == sorted(out)
    for k in out:
        np.testing.assert_allclose(bare[k], out[k], rtol=1e-6)  # same leaves, same float32 sums


@pytest.mark.parametrize("which", ["mlp", "blocks"])
def test_scanned_runs_match_layer_grad_norms(key, which):
    if which == "mlp":  # one stacked group of 3 layers (layer2..layer4)
        model, n_in, n_out = gf.mlp([4, 8, 8, 8, 8, 3], "tanh", scan=True), 4, 3
    else:  # two stacked groups per block: their layers interleave block by block
        block = gl.serial(gl.dense(6), gl.activation("tanh"), gl.dense(6))
        model = gf.from_layers(gl.serial(gl.dense(6), block, block, block, scan=True), (4,))
        n_in, n_out = 4, 6
    params = model.init(key)
    assert any(np.ndim(leaf) == 3 for leaf in jax.tree.leaves(params))  # really stacked
    x, y = _batch(n_in, n_out)
    _check_against_probes(model, params, x, y)


def _np_norm(leaves):
    """float64 sqrt of the sum of squares: the reference norm."""
    return math.sqrt(sum(float(np.sum(np.asarray(a, np.float64) ** 2)) for a in leaves))


def test_global_norms_and_update_ratios_match_float64_numpy(key):
    model = _nested_model()
    params = model.init(key)
    x, y = _batch(4, 2)
    grads = _grads(model, params, x, y)
    opt = optax.adam(1e-2)
    updates, _ = opt.update(grads, opt.init(params), params)
    out = jax.jit(monitor.layer_norms)(grads, params, updates)
    # float32 sums of 62 squares vs float64: relative error ~1e-7; 1e-6 states it.
    np.testing.assert_allclose(out["global/grad_norm"], optax.tree.norm(grads), rtol=1e-6)
    np.testing.assert_allclose(out["global/grad_norm"], _np_norm(jax.tree.leaves(grads)), rtol=1e-6)
    np.testing.assert_allclose(
        out["global/param_norm"], _np_norm(jax.tree.leaves(params)), rtol=1e-6
    )
    np.testing.assert_allclose(
        out["global/update_ratio"],
        _np_norm(jax.tree.leaves(updates)) / _np_norm(jax.tree.leaves(params)),
        rtol=1e-6,
    )
    for layer in ("z_enc/dense", "z_enc/proj", "head"):
        path = layer.split("/")
        sub_u = updates[path[0]] if len(path) == 1 else updates[path[0]][path[1]]
        sub_p = params[path[0]] if len(path) == 1 else params[path[0]][path[1]]
        ref = _np_norm(jax.tree.leaves(sub_u)) / _np_norm(jax.tree.leaves(sub_p))
        np.testing.assert_allclose(out[f"update_ratio/{layer}"], ref, rtol=1e-6)
        np.testing.assert_allclose(
            out[f"update_norm/{layer}"], _np_norm(jax.tree.leaves(sub_u)), rtol=1e-6
        )
    # The global norm is sqrt of the sum of squares of the layers', not their sum (Levanter's).
    layers = [v for k, v in out.items() if k.startswith("grad_norm/")]
    np.testing.assert_allclose(out["global/grad_norm"], jnp.sqrt(sum(v**2 for v in layers)))
    assert out["global/grad_norm"] < sum(layers) * 0.99


def test_jit_and_vmap_equal_eager_calls(key):
    model = gf.mlp([6, 8, 8, 3], "tanh")
    x, y = _batch(6, 3)
    keys = jax.random.split(key, 3)
    params = jax.vmap(model.init)(keys)
    grads = jax.vmap(lambda p: _grads(model, p, x, y))(params)
    updates = jax.tree.map(lambda g: -0.1 * g, grads)  # SGD

    def norms(g, p, u):
        return monitor.layer_norms(g, p, u, model=model, x=x)

    batched = jax.jit(jax.vmap(norms))(grads, params, updates)
    for s in range(3):
        one = jax.tree.map(lambda a, s=s: a[s], (grads, params, updates))
        eager = norms(*one)
        assert sorted(eager) == sorted(batched)
        for k, v in eager.items():
            assert batched[k].shape == (3,)
            # jit fuses the reductions differently from eager dispatch: float32 rounding.
            np.testing.assert_allclose(batched[k][s], v, rtol=1e-6)
        # SGD: update_ratio = lr * ||g|| / ||theta||, in closed form.
        np.testing.assert_allclose(
            eager["global/update_ratio"],
            0.1 * eager["global/grad_norm"] / eager["global/param_norm"],
            rtol=1e-6,
        )


def test_jsonl_round_trip_nan_to_null_and_safe_append(tmp_path):
    path = tmp_path / "logs" / "norms.jsonl"
    with monitor.JsonlWriter(path) as log:
        log.write(0, {"loss": jnp.float32(1.5), "grad_norm/a": jnp.array(jnp.nan)})
        log.write(jnp.int32(10), {"loss": 0.25, "grad_norm/a": jnp.array(jnp.inf), "n": 3})
        # Flushed at once: a reader sees both lines before close (an interrupted run keeps them).
        assert len(path.read_text().splitlines()) == 2
    with open(path, "a") as f:  # a crash mid-record leaves a half line ...
        f.write('{"step": 20, "lo')
    with monitor.JsonlWriter(path) as log:  # ... which reopening ends before appending
        log.write(30, {"loss": 0.125})
    lines = path.read_text().splitlines()
    assert len(lines) == 4
    records = [json.loads(line) for i, line in enumerate(lines) if i != 2]
    assert records == [
        {"step": 0, "loss": 1.5, "grad_norm/a": None},
        {"step": 10, "loss": 0.25, "grad_norm/a": None, "n": 3},
        {"step": 30, "loss": 0.125},
    ]
    log = monitor.JsonlWriter(path)
    log.close()
    with pytest.raises(ValueError, match="closed"):
        log.write(40, {"loss": 1.0})


def _read_scalars(logdir):
    """(tag, step, value) of every scalar in the event files under ``logdir``: TFRecord framing
    (u64 length, u32 crc, payload, u32 crc) parsed with tensorboardX's own Event proto."""
    event_pb2 = pytest.importorskip("tensorboardX.proto.event_pb2")
    out = []
    for name in sorted(os.listdir(logdir)):
        data = (logdir / name).read_bytes()
        pos = 0
        while pos < len(data):
            (n,) = struct.unpack("<Q", data[pos : pos + 8])
            event = event_pb2.Event.FromString(data[pos + 12 : pos + 12 + n])
            pos += 12 + n + 4
            out += [(v.tag, event.step, v.simple_value) for v in event.summary.value]
    return out


def test_tensorboard_scalars_read_back(tmp_path):
    pytest.importorskip("tensorboardX", reason="tensorboardX not installed (gradflow[tensorboard])")
    logdir = tmp_path / "tb"
    with monitor.TensorBoardWriter(logdir) as tb:
        tb.write(1, {"grad_norm/layer1": jnp.float32(0.5), "global/grad_norm": jnp.float32(2.0)})
        tb.write(2, {"grad_norm/layer1": jnp.float32(jnp.nan), "global/grad_norm": 3})
    files = os.listdir(logdir)
    assert len(files) == 1 and files[0].startswith("events.out.tfevents")
    got = _read_scalars(logdir)
    assert sorted((t, s) for t, s, _ in got) == [
        ("global/grad_norm", 1), ("global/grad_norm", 2),
        ("grad_norm/layer1", 1), ("grad_norm/layer1", 2),
    ]  # fmt: skip
    values = {(t, s): v for t, s, v in got}
    assert values[("grad_norm/layer1", 1)] == 0.5 and values[("global/grad_norm", 2)] == 3.0
    assert math.isnan(values[("grad_norm/layer1", 2)])


def test_tensorboard_writer_without_tensorboardx_says_what_to_install(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorboardX", None)  # makes the import fail
    with pytest.raises(ImportError, match=r"pip install gradflow\[tensorboard\]"):
        monitor.TensorBoardWriter(tmp_path)


def test_bad_input_raises_one_line_value_errors(key, tmp_path):
    model = gf.mlp([6, 8, 8, 3], "tanh")
    params = model.init(key)
    grads = jax.tree.map(jnp.ones_like, params)

    def one_line(match, fn, *args, **kw):
        with pytest.raises(ValueError, match=match) as e:
            fn(*args, **kw)
        assert "\n" not in str(e.value)

    one_line("different tree structures", monitor.layer_norms, grads, params[:2])
    one_line("different tree structures", monitor.layer_norms, grads, params, {"w": 1.0})
    bad = [dict(p) for p in params]
    bad[0]["w"] = bad[0]["w"][:3]
    one_line("differ in shape at 0/w", monitor.layer_norms, grads, bad)
    # The model has three layers; grads of only two of them leave "layer3" with no leaves.
    one_line("'layer3' has no leaves", monitor.layer_norms, grads[:2], model=model)
    one_line("matches no parameter path", monitor.layer_norms, grads, groups=r"blocks/\d")
    stray = [LeafGroup(("extra",), (17,), False)]
    one_line("names leaf 17", monitor.layer_norms, grads, groups=stray)
    one_line("needs x=", monitor.layer_norms, {"a": jnp.ones(2)}, model=_nested_model())
    one_line("not a floating array", monitor.layer_norms, {"a": jnp.arange(3)})
    with monitor.JsonlWriter(tmp_path / "a.jsonl") as log:
        one_line("must be a real scalar", log.write, 0, {"norms": jnp.ones(3)})
        one_line("step must be an integer", log.write, 0.5, {"loss": 1.0})
