"""Adapters: one MLP written four ways (gf.mlp, a plain apply, Flax NNX, Equinox) gives the same
per-layer gradient norms and the same sweep; group names and overrides; identity; bad input."""

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
# batched matmuls, per-example matrix-vector products under vmap, transposed kernels), so the
# norms agree to rounding: a few float32 ulps per operation over a depth-4 net and a batch of
# 32, ~1e-6 relative (measured up to ~4e-7). 1e-5 leaves room and still catches any real error
# (a wrong layer, a missing bias, a perturbation summed over the batch is off by O(1)).
RTOL = 1e-5


def _data():
    kx, ky = jax.random.split(jax.random.key(42))
    x = jax.random.normal(kx, (32, WIDTHS[0]))
    y = jax.random.randint(ky, (32,), 0, WIDTHS[-1])
    return x, y


def _dense_layers(key):
    """gf.mlp's draw for ``key`` as L pairs (w (n_in, n_out), b (n_out,)), its run unstacked."""
    out = []
    for seg in MLP.init(key):
        w, b = seg["w"], seg["b"]
        out += list(zip(w, b, strict=True)) if w.ndim == 3 else [(w, b)]
    return out


# Each way's init draws with gf.mlp's init and copies the weights into its own structure, so
# that init(key) is the same network for every way and seed: legitimate for this test, whose
# point is that the probes see the same network the same way whatever the code that holds it.


# 2. A plain apply over a dict of named layers.
def dict_init(key):
    return {f"dense{i + 1}": {"w": w, "b": b} for i, (w, b) in enumerate(_dense_layers(key))}


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
    for layer, (w, b) in zip(module.layers, _dense_layers(rngs.default.key[...]), strict=True):
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


def make_eqx(key):
    module = EqxMLP(WIDTHS, key)
    ws = _dense_layers(key)  # Equinox's Linear weight is (out, in): transpose
    where = lambda m: [l.weight for l in m.layers] + [l.bias for l in m.layers]  # noqa: E731
    return eqx.tree_at(where, module, [w.T for w, _ in ws] + [b for _, b in ws])


def _four_ways():
    return {
        "mlp": MLP,
        "dict": gf.from_apply(dict_init, dict_apply),
        "nnx": from_nnx(make_nnx),
        "equinox": from_equinox(make_eqx),
    }


def _assert_close(a, b, what):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=RTOL, atol=0, err_msg=what)


def test_four_ways_same_norms(key):
    x, y = _data()
    ways = _four_ways()
    ref = gf.layer_grad_norms(MLP, MLP.init(key), x, y, loss="xent")
    assert ref.names == tuple(f"layer{i}" for i in range(1, L + 1))
    names = {
        "dict": [f"dense{i}" for i in range(1, L + 1)],
        "nnx": [f"layers/{i}" for i in range(L)],
        "equinox": [f"layers/{i}" for i in range(L)],
    }
    for way, model in ways.items():
        got = gf.layer_grad_norms(model, model.init(key), x, y, loss="xent")
        if way != "mlp":
            assert list(got.names) == names[way], way
            taps_want = names["dict"] if way == "dict" else list(ref.hidden_names)
            assert list(got.hidden_names) == taps_want, way
        for field in ("weights", "biases", "params", "hidden", "weight_norms", "loss"):
            _assert_close(getattr(got, field), getattr(ref, field), f"{way}.{field}")
        assert np.all(np.asarray(got.hidden) > 0), way


def test_four_ways_same_sweep():
    x, y = _data()
    runs = {
        way: gf.sweep(gf.layer_grad_norms, model, N_SEEDS, x, y, loss="xent", quiet=True)
        for way, model in _four_ways().items()
    }
    assert runs["mlp"].weights.shape == (N_SEEDS, L)
    assert np.ptp(runs["mlp"].weights[:, 0]) > 0  # the seeds differ
    for way, got in runs.items():
        for field in ("weights", "biases", "hidden"):
            _assert_close(getattr(got, field), getattr(runs["mlp"], field), f"{way}.{field}")


def test_init_copies_the_same_weights(key):
    ref = _dense_layers(key)
    assert [w.shape for w, _ in ref] == [(a, b) for a, b in zip(WIDTHS, WIDTHS[1:])]
    nnx_params = from_nnx(make_nnx).init(key)
    eqx_params = from_equinox(make_eqx).init(key)
    for i, (w, b) in enumerate(ref):
        np.testing.assert_array_equal(nnx_params["layers"][i]["kernel"], w)
        np.testing.assert_array_equal(nnx_params["layers"][i]["bias"], b)
        np.testing.assert_array_equal(eqx_params.layers[i].weight, w.T)
        assert eqx_params.layers[i].bias is not None


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


def test_default_groups_in_order_of_use(key):
    x, y = jnp.ones((4, 3)), jnp.zeros((4, 2))
    for model, root in ((from_nnx(NNXOrder), "NNXOrder"), (from_equinox(EqxOrder), "EqxOrder")):
        got = gf.layer_grad_norms(model, model.init(key), x, y)
        assert got.names == ("z_first", "a_second", root)
        assert np.isnan(got.biases[2])  # the root group holds one weight, no bias


def test_regex_groups_override(key):
    x, y = _data()
    ref = gf.layer_grad_norms(MLP, MLP.init(key), x, y, loss="xent")
    # The hidden layers 1 and 2 become one group named "layers"; the others keep the default.
    for adapt in (from_nnx, from_equinox):
        make = make_nnx if adapt is from_nnx else make_eqx
        model = adapt(make, groups=r"^layers(?=/[12]/)")
        got = gf.layer_grad_norms(model, model.init(key), x, y, loss="xent")
        assert got.names == ("layers/0", "layers", "layers/3")
        merged = np.sqrt(np.sum(np.square(ref.weights[1:3])))
        want = np.array([ref.weights[0], merged, ref.weights[3]])
        _assert_close(got.weights, want, adapt.__name__)


# --------------------------------------------------------------------------------------------
# Identity


def make_eqx_native(key):
    return EqxMLP(WIDTHS, key)  # Equinox's own init: different weights


def test_identity_follows_make():
    x, y = _data()
    assert from_nnx(make_nnx) == from_nnx(make_nnx)
    assert hash(from_equinox(make_eqx)) == hash(from_equinox(make_eqx))
    assert from_equinox(make_eqx) != from_equinox(make_eqx_native)
    assert from_equinox(make_eqx) != from_equinox(make_eqx, per_example=False)
    assert from_nnx(make_nnx) != from_nnx(make_nnx, groups=r"layers")
    a, b = from_equinox(make_eqx), from_equinox(make_eqx_native)
    run_a = gf.sweep(gf.layer_grad_norms, a, 2, x, y, loss="xent", quiet=True)
    run_b = gf.sweep(gf.layer_grad_norms, b, 2, x, y, loss="xent", quiet=True)
    assert not np.allclose(run_a.weights, run_b.weights)


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
    params = model.init(key)
    assert sorted(params) == ["dense", "norm", "out"]  # BatchStat and RNG state are not params
    x, y = jax.random.normal(key, (8, 3)), jnp.zeros((8, 2))
    got = gf.layer_grad_norms(model, params, x, y)
    assert got.names == ("dense", "norm", "out") and got.hidden_names == ("bn",)
    assert np.all(np.isfinite(got.params))
    first = model.apply(params, x)
    np.testing.assert_allclose(jax.jit(model.apply)(params, x), first, rtol=1e-5)
    np.testing.assert_array_equal(model.apply(params, x), first)


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
        (lambda: from_nnx(NNXMLP(WIDTHS, nnx.Rngs(0))), "needs a constructor make"),
        (lambda: from_equinox(make_eqx(jax.random.key(0))), "needs a constructor make"),
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
        model.apply(from_equinox(EqxOrder).init(key), jnp.ones((2, 12)))
    assert "\n" not in str(e.value)
