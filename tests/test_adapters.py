"""Adapters: one MLP written four ways (gf.mlp, a plain apply, Flax NNX, Equinox) gives the same
per-layer gradient norms and the same sweep; group names and overrides; identity; bad input."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import gradflow as gf
from gradflow.adapters import from_equinox, from_nnx

nnx = pytest.importorskip("flax.nnx", reason="needs flax: pip install gradflow[flax]")
eqx = pytest.importorskip("equinox", reason="needs equinox: pip install gradflow[equinox]")

WIDTHS = (12, 16, 16, 16, 5)  # the two 16 -> 16 layers are one stacked (scanned) run in gf.mlp
L = len(WIDTHS) - 1
MLP = gf.mlp(WIDTHS, "tanh", "gaussian", sigma_w2=1.5, sigma_b2=0.05)  # nonzero biases
N_SEEDS = 8
# float32: the four ways compute the same sums in different orders (a scan over the stacked run,
# batched matmuls, per-example matrix-vector products under vmap, transposed weights), so the
# norms agree to rounding: a few float32 ulps (1.2e-7) per operation over a depth-4 net and a
# batch of 32, ~1e-6 relative. 1e-5 leaves room and still catches any real error (a wrong
# layer, a missing bias, a tap perturbation shared by the batch are all off by O(1)).
RTOL = 1e-5


def _data():
    kx, ky = jax.random.split(jax.random.key(42))
    x = jax.random.normal(kx, (32, WIDTHS[0]))
    y = jax.random.randint(ky, (32,), 0, WIDTHS[-1])
    return x, y


def _unstack(mlp_params):
    """gf.mlp's params as L pairs (w (n_in, n_out), b (n_out,)), its stacked run unstacked."""
    out = []
    for seg in mlp_params:
        w, b = seg["w"], seg["b"]
        out += list(zip(w, b, strict=True)) if w.ndim == 3 else [(w, b)]
    return out


# Each way's init(key) draws with gf.mlp's init and copies the weights into its own structure,
# so every way holds the same network for every seed: legitimate here, where the point is that
# the probes see one network the same way whatever code holds it.


# 2. A plain apply over a dict of named layers.
def dict_init(key):
    layers = _unstack(MLP.init(key))
    return {f"dense{i + 1}": {"w": w, "b": b} for i, (w, b) in enumerate(layers)}


def dict_apply(params, x):
    for i in range(L):
        p = params[f"dense{i + 1}"]
        z = gf.tap(x @ p["w"] + p["b"][None, :], f"dense{i + 1}")
        x = jnp.tanh(z) if i < L - 1 else z
    return x


# 3. Flax NNX.
class NNXMLP(nnx.Module):
    def __init__(self, widths, rngs):
        pairs = zip(widths[:-1], widths[1:], strict=True)
        self.layers = nnx.List([nnx.Linear(a, b, rngs=rngs) for a, b in pairs])

    def __call__(self, x):
        for i, layer in enumerate(self.layers):
            z = gf.tap(layer(x), f"layer{i + 1}")
            x = jnp.tanh(z) if i < len(self.layers) - 1 else z
        return x


def make_nnx(rngs):
    module = NNXMLP(WIDTHS, rngs)
    # The seed's key is the Rngs' default stream key; NNX's kernel is (in, out) like gf.mlp's.
    layers = _unstack(MLP.init(rngs.default.key[...]))
    for layer, (w, b) in zip(module.layers, layers, strict=True):
        layer.kernel[...], layer.bias[...] = w, b
    return module


# 4. Equinox, written for one example.
class EqxMLP(eqx.Module):
    layers: list

    def __init__(self, widths, key):
        keys = jax.random.split(key, len(widths) - 1)
        pairs = zip(widths[:-1], widths[1:], keys, strict=True)
        self.layers = [eqx.nn.Linear(a, b, key=k) for a, b, k in pairs]

    def __call__(self, x):  # x: one example, shape (n0,)
        for i, layer in enumerate(self.layers):
            z = gf.tap(layer(x), f"layer{i + 1}")
            x = jnp.tanh(z) if i < len(self.layers) - 1 else z
        return x


def _eqx_with(module, layers):
    """``module`` (an EqxMLP) holding ``layers``; Equinox's Linear weight is (out, in)."""
    where = lambda m: [l.weight for l in m.layers] + [l.bias for l in m.layers]  # noqa: E731
    return eqx.tree_at(where, module, [w.T for w, _ in layers] + [b for _, b in layers])


def make_eqx(key):
    return _eqx_with(EqxMLP(WIDTHS, key), _unstack(MLP.init(key)))


def make_eqx_doubled(key):  # another network: twice gf.mlp's weights
    return _eqx_with(EqxMLP(WIDTHS, key), [(2 * w, b) for w, b in _unstack(MLP.init(key))])


def _four_ways():
    return {
        "mlp": MLP,
        "dict": gf.from_apply(dict_init, dict_apply),
        "nnx": from_nnx(make_nnx),
        "equinox": from_equinox(make_eqx),
    }


@functools.cache
def _ref_params():
    return MLP.init(jax.random.key(0))


def _params(way):
    """Each way's params holding gf.mlp's draw for key(0), built directly (as init builds them;
    the sweep test checks init itself), so the probes compile no random draws."""
    layers = _unstack(_ref_params())
    if way == "mlp":
        return _ref_params()
    if way == "dict":
        return {f"dense{i + 1}": {"w": w, "b": b} for i, (w, b) in enumerate(layers)}
    if way == "nnx":  # nnx.to_pure_dict of the nnx.Param state
        return {"layers": {i: {"kernel": w, "bias": b} for i, (w, b) in enumerate(layers)}}
    return _eqx_with(eqx.filter_eval_shape(EqxMLP, WIDTHS, jax.random.key(0)), layers)


def _layers_of(params):
    """The inverse of :func:`_params`: any way's params as L pairs (w (n_in, n_out), b)."""
    if isinstance(params, list):
        return _unstack(params)
    if isinstance(params, EqxMLP):
        return [(l.weight.T, l.bias) for l in params.layers]
    if "layers" in params:
        return [(params["layers"][i]["kernel"], params["layers"][i]["bias"]) for i in range(L)]
    return [(params[f"dense{i + 1}"]["w"], params[f"dense{i + 1}"]["b"]) for i in range(L)]


def norms_and_weights(model, params, x, y, loss):
    """Per seed: the probe and the seed's weights, in one compiled program."""
    return gf.layer_grad_norms(model, params, x, y, loss=loss), _layers_of(params)


def _sweep(model):
    return gf.sweep(norms_and_weights, model, N_SEEDS, *_data(), loss="xent", quiet=True)


def _assert_close(a, b, what):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=RTOL, atol=0, err_msg=what)


# --------------------------------------------------------------------------------------------
# The four ways


def test_four_ways_same_norms():
    x, y = _data()
    ref = gf.layer_grad_norms(MLP, _params("mlp"), x, y, loss="xent")
    assert ref.names == ref.hidden_names == tuple(f"layer{i}" for i in range(1, L + 1))
    dense = tuple(f"dense{i}" for i in range(1, L + 1))
    paths = tuple(f"layers/{i}" for i in range(L))
    names = {"dict": (dense, dense), "nnx": (paths, ref.names), "equinox": (paths, ref.names)}
    for way, model in _four_ways().items():
        got = gf.layer_grad_norms(model, _params(way), x, y, loss="xent")
        if way != "mlp":
            assert (got.names, got.hidden_names) == names[way], way
        for field in ("weights", "biases", "params", "hidden", "weight_norms", "loss"):
            _assert_close(getattr(got, field), getattr(ref, field), f"{way}.{field}")
        assert np.all(np.asarray(got.hidden) > 0), way


def test_four_ways_same_sweep():
    # Each way's own init(key_i), under the sweep's vmap and jit: the same weights and norms.
    runs = {way: _sweep(model) for way, model in _four_ways().items()}
    ref, ref_layers = runs["mlp"]
    assert ref.weights.shape == (N_SEEDS, L)
    assert np.ptp(ref.weights[:, 0]) > 0  # the seeds differ
    for way, (got, layers) in runs.items():
        for (w, b), (w_ref, b_ref) in zip(layers, ref_layers, strict=True):
            np.testing.assert_array_equal(w, w_ref, err_msg=way)
            np.testing.assert_array_equal(b, b_ref, err_msg=way)
        for field in ("weights", "biases", "hidden"):
            _assert_close(getattr(got, field), getattr(ref, field), f"{way}.{field}")


# --------------------------------------------------------------------------------------------
# Groups: default names in order of use, the class name for the root's own leaves, overrides


class NNXOrder(nnx.Module):
    def __init__(self, rngs):
        # Declared (and sorted) in the opposite order to their use.
        self.z_first = nnx.Linear(3, 4, rngs=rngs)
        self.a_second = nnx.Linear(4, 2, rngs=rngs)
        self.scale = nnx.Param(jnp.ones((2,)))

    def __call__(self, x):
        return self.a_second(jnp.tanh(self.z_first(x))) * self.scale[None, :]


class EqxOrder(eqx.Module):
    z_first: eqx.nn.Linear
    a_second: eqx.nn.Linear
    scale: jax.Array

    def __init__(self, key):
        k1, k2 = jax.random.split(key)
        self.a_second = eqx.nn.Linear(4, 2, key=k2)
        self.z_first = eqx.nn.Linear(3, 4, key=k1)
        self.scale = jnp.ones((2,))

    def __call__(self, x):
        return self.a_second(jnp.tanh(self.z_first(x))) * self.scale


def _filled(model, key):
    """Params of init's structure, all 0.5 (no random draws to compile: names are the point)."""
    return jax.tree.map(lambda a: jnp.full(a.shape, 0.5, a.dtype), jax.eval_shape(model.init, key))


def test_default_groups_in_order_of_use(key):
    x, y = jnp.ones((4, 3)), jnp.zeros((4, 2))
    for model, root in ((from_nnx(NNXOrder), "NNXOrder"), (from_equinox(EqxOrder), "EqxOrder")):
        got = gf.layer_grad_norms(model, _filled(model, key), x, y)
        assert got.names == ("z_first", "a_second", root)
        assert np.isnan(got.biases[2])  # the root group holds one weight, no bias


def test_regex_groups_override():
    x, y = _data()
    ref = gf.layer_grad_norms(MLP, _params("mlp"), x, y, loss="xent")
    merged = np.sqrt(np.sum(np.square(ref.weights[1:3])))
    want = np.array([ref.weights[0], merged, ref.weights[3]])
    # Hidden layers 1 and 2 become one group named "layers"; the others keep the default.
    for adapt, way, make in ((from_nnx, "nnx", make_nnx), (from_equinox, "equinox", make_eqx)):
        model = adapt(make, groups=r"^layers(?=/[12]/)")
        got = gf.layer_grad_norms(model, _params(way), x, y, loss="xent")
        assert got.names == ("layers/0", "layers", "layers/3")
        _assert_close(got.weights, want, way)


# --------------------------------------------------------------------------------------------
# Identity


def test_identity_follows_make():
    assert from_nnx(make_nnx) == from_nnx(make_nnx)
    assert hash(from_equinox(make_eqx)) == hash(from_equinox(make_eqx))
    assert from_equinox(make_eqx) != from_equinox(make_eqx_doubled)
    assert from_equinox(make_eqx) != from_equinox(make_eqx, per_example=False)
    assert from_nnx(make_nnx) != from_nnx(make_nnx, groups=r"layers")
    # (The first sweep reuses the four-ways test's compiled program: equal models, same shapes.)
    run_a, _ = _sweep(from_equinox(make_eqx))
    run_b, _ = _sweep(from_equinox(make_eqx_doubled))
    assert not np.allclose(run_a.weights, run_b.weights, rtol=0.1)


# --------------------------------------------------------------------------------------------
# Non-parameter state (NNX): taken from a key-0 build, updates discarded


class NNXStateful(nnx.Module):
    def __init__(self, rngs):
        self.dense = nnx.Linear(3, 4, rngs=rngs)
        self.norm = nnx.BatchNorm(4, use_running_average=False, rngs=rngs)
        self.drop = nnx.Dropout(0.5, deterministic=True, rngs=rngs)
        self.out = nnx.Linear(4, 2, rngs=rngs)

    def __call__(self, x):
        return self.out(self.drop(jnp.tanh(gf.tap(self.norm(self.dense(x)), "bn"))))


def test_nnx_non_param_state(key):
    model = from_nnx(NNXStateful)
    params = _filled(model, key)
    assert sorted(params) == ["dense", "norm", "out"]  # BatchStat and RNG state are not params
    # float32 like the module's variables (under x64, BatchNorm's float32 update of a float64
    # batch mean would warn).
    x, y = jax.random.normal(key, (8, 3), jnp.float32), jnp.zeros((8, 2), jnp.float32)
    got = gf.layer_grad_norms(model, params, x, y)
    assert got.names == ("dense", "norm", "out") and got.hidden_names == ("bn",)
    assert np.all(np.isfinite(got.params))
    first = model.apply(params, x)  # BatchNorm updates its running averages: discarded
    np.testing.assert_array_equal(model.apply(params, x), first)
    np.testing.assert_allclose(jax.jit(model.apply)(params, x), first, rtol=1e-5, atol=1e-6)


# --------------------------------------------------------------------------------------------
# Bad input: one-line ValueErrors


class NNXIntParam(nnx.Module):
    def __init__(self, rngs):
        self.dense = nnx.Linear(3, 2, rngs=rngs)
        self.steps = nnx.Param(jnp.zeros((), jnp.int32))

    def __call__(self, x):
        return self.dense(x)


class EqxNoFloats(eqx.Module):
    table: jax.Array

    def __call__(self, x):
        return x


@pytest.mark.parametrize(
    "build, match",
    [
        (lambda: from_nnx(nnx.eval_shape(lambda: NNXMLP(WIDTHS, nnx.Rngs(0)))), "constructor"),
        (lambda: from_equinox(_params("equinox")), "needs a constructor make"),
        (lambda: from_nnx(lambda rngs: jnp.ones(3)), "must return an nnx.Module"),
        (lambda: from_equinox(lambda key: {"w": jnp.ones(3)}), "must return an eqx.Module"),
        (lambda: from_nnx(NNXIntParam), "parameters must be floating"),
        (lambda: from_equinox(lambda key: EqxNoFloats(jnp.arange(3))), "nothing to probe"),
    ],
)
def test_bad_input(build, match):
    with pytest.raises(ValueError, match=match) as e:
        build()
    assert "\n" not in str(e.value)


def test_params_of_another_structure(key):
    model = from_equinox(make_eqx)
    with pytest.raises(ValueError, match="structure init returns") as e:
        model.apply(_filled(from_equinox(EqxOrder), key), jnp.ones((2, 12)))
    assert "\n" not in str(e.value)
