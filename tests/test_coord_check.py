"""muP (gradflow.mup) and width coordinate checks (gradflow.coord_check).

References: Yang et al. 2022, Tensor Programs V (arXiv:2203.03466), Table 3; microsoft/mup.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gradflow import coord_check as cc
from gradflow import losses, taps
from gradflow.attention import attention
from gradflow.coord_check import coord_check, plot_coord_check, width_slopes
from gradflow.mup import (
    Parametrisation,
    leaf_roles,
    mlp_family,
    optimizer,
    parametrise,
    transformer_family,
)

WIDTHS = (64, 256, 1024)  # a 16x range: three compiles (compiling dominates the cost)
BASE = 64
LR = 0.02  # Adam; SP's change after one step is ~ LR * width: 1.3 at the base, 20 at 1024
MLP = mlp_family(16, 4, depth=2, activation="relu")  # [16, n, n, 4], He init
LAST_HIDDEN, OUTPUT = 1, 3  # indices into CoordCheck.names: "layer2", "output"


def _mlp_data():
    x = jax.random.normal(jax.random.key(1), (32, 16))
    y = jax.random.randint(jax.random.key(2), (32,), 0, 4)
    return x, y


@pytest.fixture(scope="module")
def mlp_checks():
    """SP and muP coord checks of the MLP (one compiled program per width, shared by both)."""
    x, y = _mlp_data()
    return {
        kind: coord_check(
            MLP,
            WIDTHS,
            x,
            y,
            "xent",
            parametrisation=Parametrisation(kind=kind, base_width=BASE),
            learning_rate=LR,
            steps=3,
            seeds=3,
            key=jax.random.key(0),
        )  # fmt: skip
        for kind in ("sp", "mup")
    }


# --------------------------------------------------------------------------------------------
# The coord check itself


def test_mlp_sp_grows_with_width_mup_does_not(mlp_checks):
    # Theory (TP5 Section 5 / Table 3): one Adam step moves every weight entry by ~eta; the
    # change of a hidden pre-activation sums n such entries against correlated inputs, so under
    # SP it is Theta(eta n) (log-log slope -> 1 once eta n >> 1; here eta n = 1.3..20, so l1, the
    # init's Theta(1) plus the change, has a smaller slope), and under muP (hidden and readout lr
    # eta / m) Theta(1) (slope -> 0, up to O(n^-1/2) finite-width corrections).
    # Measured (these keys): SP l1 slopes of [layer2, output] at t = 1, 2, 3 are about
    # [0.59, 1.49], [0.66, 1.32], [0.74, 1.31]; muP's [0.01, 0.06], [0.00, 0.02], [0.00, 0.04].
    # The change after one step (delta, t = 1): SP [0.90, 1.36], muP [-0.07, -0.07]. At
    # widths 32..2048 muP's l1 levels off by ~512 (a 3-layer net at lr 0.03: 0.99, 1.21, 1.25,
    # 1.28, 1.37, 1.38, 1.38 for the last hidden layer), so the small muP slopes are the
    # finite-width transient, not growth.
    sp, mup = mlp_checks["sp"], mlp_checks["mup"]
    assert sp.names == ("layer1", "layer2", "layer3", "output")
    layers = [LAST_HIDDEN, OUTPUT]
    for t in (1, 2, 3):
        s_sp, s_mup = width_slopes(sp, step=t)[layers], width_slopes(mup, step=t)[layers]
        print(f"t={t} l1 slopes [layer2, output]: SP {s_sp}, muP {s_mup}")
        assert np.all(s_sp > 0.3), s_sp
        assert np.all(np.abs(s_mup) < 0.15), s_mup
    d_sp = width_slopes(sp, stat="delta", step=1)[layers]
    d_mup = width_slopes(mup, stat="delta", step=1)[layers]
    print(f"t=1 delta slopes: SP {d_sp}, muP {d_mup}")
    assert np.all(d_sp > 0.6), d_sp
    assert np.all(np.abs(d_mup) < 0.15), d_mup
    assert np.all(np.isfinite(sp.loss)) and np.all(np.isfinite(mup.loss))


def test_step0_hidden_layers_coincide_output_rescaled(mlp_checks):
    # muP changes only the readout's init (std x m^-1/2), so at t = 0 every hidden
    # pre-activation is the same array in both, and the output is SP's times m^-1/2 exactly
    # (the readout bias is 0; m^-1/2 = 1, 1/sqrt2, 1/2, 1/sqrt8; fp32 products, rtol 1e-6).
    sp, mup = mlp_checks["sp"], mlp_checks["mup"]
    np.testing.assert_array_equal(sp.l1[:, :, 0, :2], mup.l1[:, :, 0, :2])
    ratio = np.sqrt(BASE / np.asarray(WIDTHS, np.float64))[:, None, None]
    np.testing.assert_allclose(mup.l1[:, :, 0, 2:], sp.l1[:, :, 0, 2:] * ratio, rtol=1e-6)
    # the activations themselves, at width 256 (m = 4: the factor 1/2 is exact in floating point)
    x, _ = _mlp_data()
    acts = {}
    for kind in ("sp", "mup"):
        pm = parametrise(MLP, 256, Parametrisation(kind=kind, base_width=BASE))
        params = pm.init(jax.random.key(3))
        specs, _ = taps.discover(pm.model.apply, params, x)
        zeros = {n: jnp.zeros(s.shape, s.dtype) for n, s in specs.items()}
        acts[kind] = taps.run_tapped(pm.model.apply, params, x, zeros)[1]
    for name in ("layer1", "layer2"):
        np.testing.assert_array_equal(acts["sp"][name], acts["mup"][name])
    np.testing.assert_array_equal(acts["mup"]["layer3"], 0.5 * acts["sp"]["layer3"])


def test_seeds_vmapped_equal_per_seed_loop(mlp_checks):
    # Seed i is fold_in(key, i) whatever runs beside it: one seed at a time (a per-seed loop, the
    # loss given as a function this time) must equal the vmapped check. Batched and unbatched
    # matmuls may round differently; 3 Adam steps keep that at float32 level (rtol 1e-4).
    x, y = _mlp_data()
    ref = mlp_checks["sp"]
    p = Parametrisation(kind="sp", base_width=BASE)
    for i in range(3):
        one = coord_check(MLP, WIDTHS[:2], x, y, losses.xent, parametrisation=p,
                          learning_rate=LR, steps=3, seeds=[i], key=jax.random.key(0))  # fmt: skip
        assert one.l1.shape == (2, 1, 4, 4)
        np.testing.assert_allclose(one.l1[:, 0], ref.l1[:2, i], rtol=1e-4)
        np.testing.assert_allclose(one.delta[:, 0], ref.delta[:2, i], rtol=1e-4, atol=1e-7)
        np.testing.assert_allclose(one.loss[:, 0], ref.loss[:2, i], rtol=1e-4)


def test_width_slopes_match_polyfit(mlp_checks):
    # Independent reference: numpy's least-squares line through (log width, log seed-mean).
    res = mlp_checks["sp"]
    for stat, t in (("l1", 0), ("l1", 3), ("delta", 1)):
        values = getattr(res, stat)[:, :, t].astype(np.float64).mean(axis=1)
        want = [np.polyfit(np.log(res.widths), np.log(values[:, j]), 1)[0] for j in range(4)]
        np.testing.assert_allclose(width_slopes(res, stat=stat, step=t), want, rtol=1e-9)
    # a layer that never moved has delta 0: its slope is NaN, without warnings
    zero = res._replace(delta=np.zeros_like(res.delta))
    assert np.all(np.isnan(width_slopes(zero, stat="delta", step=2)))
    with pytest.raises(ValueError, match="t = 0"):
        width_slopes(res, stat="delta", step=0)
    with pytest.raises(ValueError, match="step must lie"):
        width_slopes(res, step=4)


def test_plot_coord_check(mlp_checks):
    res = mlp_checks["mup"]
    fig = plot_coord_check(res)
    axes = fig.axes
    assert len(axes) == 4  # t = 0..3
    for t, ax in enumerate(axes):
        assert ax.get_xscale() == "log" and ax.get_yscale() == "log"
        lines = ax.get_lines()
        assert [ln.get_label() for ln in lines] == list(res.names)
        for j, ln in enumerate(lines):
            np.testing.assert_allclose(ln.get_xdata(), res.widths)
            np.testing.assert_allclose(ln.get_ydata(), res.l1[:, :, t, j].mean(axis=1), rtol=1e-6)
    assert len(plot_coord_check(res, stat="delta", layers=["output"]).axes) == 3  # no t = 0
    with pytest.raises(ValueError, match="unknown layers"):
        plot_coord_check(res, layers=["block9"])


# --------------------------------------------------------------------------------------------
# Table 3: roles, learning-rate and init multipliers


def _mlp_table(m: float, optimizer_name: str) -> list[float]:
    """Hand-written Table 3 for [16, n, n, 4], leaves in tree order (per layer: b, w)."""
    if optimizer_name == "adam":  # input & biases eta; hidden, output eta/m; output bias fixed
        return [1, 1, 1, 1 / m, 1, 1 / m]
    return [m, m, m, 1, 1, 1 / m]  # SGD: input & biases eta m; hidden eta; output eta/m


@pytest.mark.parametrize("opt", ["adam", "sgd"])
def test_mlp_lr_multipliers_equal_table3(opt):
    for width in (64, 256, 1024):
        m = width / BASE
        mup = parametrise(MLP, width, Parametrisation(base_width=BASE, optimizer=opt))
        np.testing.assert_allclose(jax.tree.leaves(mup.lr_multipliers), _mlp_table(m, opt))
        assert mup.width_mult == m
        sp = parametrise(MLP, width, Parametrisation(kind="sp", base_width=BASE, optimizer=opt))
        assert jax.tree.leaves(sp.lr_multipliers) == [1.0] * 6
    roles = parametrise(MLP, 128, Parametrisation(base_width=BASE)).roles
    assert [layer[k] for layer in roles for k in ("w", "b")] == [
        "input", "input", "hidden", "input", "output", "fixed",
    ]  # fmt: skip


@pytest.mark.parametrize("opt", ["adam", "sgd"])
def test_transformer_lr_multipliers_equal_table3(opt):
    fam = transformer_family(depth=2, heads=4, seq_len=4, n_in=8, n_out=3)
    pm = parametrise(fam, 128, Parametrisation(base_width=32, optimizer=opt))
    m = 4.0
    flat = {
        "/".join(str(getattr(k, "key", getattr(k, "idx", k))) for k in path): c
        for path, c in jax.tree_util.tree_flatten_with_path(pm.lr_multipliers)[0]
    }
    # params: [embed {b, w}, pos, block1 [[ln, mha], [ln, fc1, fc2]], block2, ln_f, readout]
    hidden, inp = (1 / m, 1.0) if opt == "adam" else (1.0, m)
    want = {
        "0/w": inp, "0/b": inp, "1/pos": inp,  # input weights (embedding, positions)
        "2/0/0/scale": inp, "2/0/0/offset": inp, "4/scale": inp,  # LayerNorm gains/offsets
        "2/0/1/wq": hidden, "2/0/1/wo": hidden, "3/0/1/wk": hidden,  # attention d x d
        "2/1/1/w": hidden, "2/1/1/b": inp, "3/1/2/w": hidden,  # FFN (d, 4d), (4d, d)
        "5/w": 1 / m, "5/b": 1.0,  # readout weights, readout bias (fixed size)
    }  # fmt: skip
    for path, c in want.items():
        assert flat[path] == pytest.approx(c), path
    assert len(flat) == 31


def test_readout_init_variance_is_table3():
    # Table 3: readout variance ~ 1/fan_in^2; with the base's constant, var = 2/n * (n0/n) for He.
    # Sample variance of 4n = 1024 iid entries: SE = var * sqrt(2 / 1024) (Gaussian); 4 SE.
    width = 256  # the width the step-0 test draws too (eager op compilations are shared)
    pm = parametrise(MLP, width, Parametrisation(base_width=BASE))
    w = np.asarray(pm.init(jax.random.key(5))[-1]["w"], np.float64)
    want = 2.0 / width * (BASE / width)
    assert abs(w.var() - want) < 4 * want * math.sqrt(2 / w.size), (w.var(), want)
    assert pm.init_multipliers[-1]["w"] == pytest.approx(math.sqrt(BASE / width))
    zero = parametrise(MLP, width, Parametrisation(base_width=BASE, readout="zero"))
    params = zero.init(jax.random.key(5))
    assert not np.any(np.asarray(params[-1]["w"])) and np.any(np.asarray(params[-2]["w"]))


def test_leaf_roles_from_shapes():
    s = jax.ShapeDtypeStruct
    f32 = jnp.float32
    base = {"a": s((3, 8), f32), "h": s((5, 8, 8), f32), "v": s((5, 8), f32), "c": s((3,), f32)}
    delta = {
        "a": s((3, 16), f32),
        "h": s((5, 16, 16), f32),
        "v": s((5, 16), f32),
        "c": s((3,), f32),
    }
    base["o"], delta["o"] = s((8, 2), f32), s((16, 2), f32)
    roles = leaf_roles(base, delta)
    # a scanned run's stacked leaves keep their role: (k, n, n) hidden, (k, n) a bias
    assert roles == {"a": "input", "h": "hidden", "v": "input", "c": "fixed", "o": "output"}
    with pytest.raises(ValueError, match="leading axis"):
        leaf_roles({"x": s((8, 3, 3), f32)}, {"x": s((16, 3, 3), f32)})


def test_optimizer_first_step_closed_form():
    # First Adam step: m_hat = g, v_hat = g^2, so the update is -lr c g / (|g| + eps) per leaf;
    # SGD's is -lr c g. Reference in float64 numpy. optax's float32 bias correction
    # 0.1 g / (1 - 0.9) is off by ~2e-6 relative (1 - 0.9 is inexact in float32): rtol 1e-5.
    g = {"w": jnp.asarray([[0.3, -2.0], [1e-3, 5.0]]), "b": jnp.asarray([-0.7, 0.0])}
    mult = {"w": 0.25, "b": 4.0}
    lr = 0.1
    for name in ("adam", "sgd"):
        opt = optimizer(lr, mult, name)
        params = jax.tree.map(jnp.zeros_like, g)
        updates, _ = opt.update(g, opt.init(params), params)
        for k in g:
            gk = np.asarray(g[k], np.float64)
            step = gk / (np.abs(gk) + 1e-8) if name == "adam" else gk
            np.testing.assert_allclose(updates[k], -lr * mult[k] * step, rtol=1e-5)


# --------------------------------------------------------------------------------------------
# The transformer's attention-logit scale


def _np_scores(params, x, n_heads, scale):
    """Attention output in float64 numpy with logits scale * q k^T (reference)."""
    p = {k: np.asarray(v, np.float64) for k, v in params.items()}
    x = np.asarray(x, np.float64)
    b, t, d = x.shape
    dh = d // n_heads
    q, k, v = (
        np.einsum("bti,io->bto", x, p[n]).reshape(b, t, n_heads, dh) for n in ("wq", "wk", "wv")
    )
    s = np.einsum("bqhe,bkhe->bhqk", q, k) * scale
    a = np.exp(s - s.max(-1, keepdims=True))
    a /= a.sum(-1, keepdims=True)
    out = np.einsum("bhqk,bkhe->bqhe", a, v).reshape(b, t, d)
    return out @ p["wo"]


def test_attention_logit_scale_matches_reference():
    d, heads = 16, 2
    x = jax.random.normal(jax.random.key(7), (2, 5, d))
    default = attention(heads)
    params = default.init(jax.random.key(8), (5, d), {})
    # float32 forward vs float64 reference: rtol 1e-4 (softmax of O(1) logits, d = 16 sums)
    np.testing.assert_allclose(default.apply(params, x), _np_scores(params, x, heads, 8**-0.5),
                               rtol=1e-4, atol=1e-5)  # fmt: skip
    mup = attention(heads, logit_scale=1 / 8)  # 1/d_h
    np.testing.assert_allclose(mup.apply(params, x), _np_scores(params, x, heads, 1 / 8),
                               rtol=1e-4, atol=1e-5)  # fmt: skip
    assert default.spec == ("attention", heads, False, "lecun", 1.0)  # default identity unchanged
    with pytest.raises(ValueError, match="logit_scale"):
        attention(heads, logit_scale=0.0)


def test_transformer_family_scales_attention_as_one_over_d_head():
    fam = transformer_family(depth=1, heads=4, seq_len=4, n_in=8, n_out=3)
    mup = Parametrisation(base_width=32)
    assert fam(32, mup).config.attn_scale is None  # at the base width muP is SP exactly
    for width in (64, 256):  # sqrt(d_h0) / d_h with d_h0 = 8
        assert fam(width, mup).config.attn_scale == pytest.approx(math.sqrt(8) / (width / 4))
        assert fam(width, Parametrisation(kind="sp")).config.attn_scale is None
    assert "attn_scale" not in fam(32, mup).config.to_dict()  # default descriptions unchanged
    assert fam(64, mup).config.to_dict()["attn_scale"] == pytest.approx(math.sqrt(8) / 16)


@pytest.mark.slow
def test_transformer_sp_grows_with_width_mup_does_not():
    # Pre-LN, depth 2, 4 heads (d_h = n/4), FFN 4n; 8 sequences of 4 continuous tokens.
    # Measured (lr 0.01, 3 seeds, widths 32..256): SP l1 slopes of [block2, output] at t = 1, 2, 3
    # about [0.58, 0.71], [0.85, 0.69], [1.08, 0.59]; muP's within +-0.03 (t = 0: muP's output
    # -0.6, the readout's m^-1/2 init). Same theory as the MLP test (hidden updates Theta(eta n)
    # under SP; Theta(1) under muP with lr eta/m and 1/d_h attention logits). ~80 s of compiling.
    fam = transformer_family(depth=2, heads=4, seq_len=4, n_in=8, n_out=4)
    x = jax.random.normal(jax.random.key(1), (8, 4, 8))
    y = jax.random.randint(jax.random.key(2), (8,), 0, 4)
    res = {
        kind: coord_check(
            fam,
            (32, 64, 128, 256),
            x,
            y,
            "xent",
            learning_rate=0.01,
            steps=3,
            parametrisation=Parametrisation(kind=kind, base_width=32),
            seeds=3,
            key=jax.random.key(0),
        )  # fmt: skip
        for kind in ("sp", "mup")
    }
    assert res["sp"].names == ("block1", "block2", "output")
    for t in (1, 2, 3):
        s_sp, s_mup = width_slopes(res["sp"], step=t)[1:], width_slopes(res["mup"], step=t)[1:]
        print(f"t={t} l1 slopes [block2, output]: SP {s_sp}, muP {s_mup}")
        assert np.all(s_sp > 0.3) and np.all(np.abs(s_mup) < 0.15)
    # at t = 0 the base width is the same network in both; the others differ (attention scale)
    np.testing.assert_array_equal(res["sp"].l1[0, :, 0], res["mup"].l1[0, :, 0])
    assert not np.allclose(res["sp"].l1[1:, :, 0, :2], res["mup"].l1[1:, :, 0, :2], rtol=1e-6)


# --------------------------------------------------------------------------------------------
# Bad input


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"widths": [64]}, "at least 2 widths"),
        ({"widths": [128, 64]}, "strictly increasing"),
        ({"widths": [64, 64]}, "strictly increasing"),
        ({"widths": "wide"}, "positive ints"),
        ({"steps": 0}, "steps"),
        ({"seeds": 0}, "seeds"),
        ({"seeds": [1, 1]}, "distinct"),
        ({"learning_rate": -1.0}, "learning_rate"),
        ({"learning_rate": "big"}, "learning_rate"),
        ({"parametrisation": "mup"}, "Parametrisation"),
        ({"loss": "hinge"}, "unknown loss"),
        ({"key": 0}, "typed key"),
    ],
)
def test_bad_input_one_line_value_error(monkeypatch, kwargs, match):
    def never(*args, **kw):  # raised before any model is built or compiled
        raise AssertionError("validation came too late")

    monkeypatch.setattr(cc, "parametrise", never)
    x, y = _mlp_data()
    args = dict(widths=WIDTHS, loss="xent", parametrisation=Parametrisation(), learning_rate=LR,
                key=jax.random.key(0))  # fmt: skip
    args.update(kwargs)
    widths, loss = args.pop("widths"), args.pop("loss")
    with pytest.raises(ValueError, match=match) as err:
        coord_check(MLP, widths, x, y, loss, **args)
    assert "\n" not in str(err.value)


def test_bad_parametrisation():
    with pytest.raises(ValueError, match="'sp' or 'mup'"):
        Parametrisation(kind="ntk")
    with pytest.raises(ValueError, match="base_width"):
        Parametrisation(base_width=0)
    with pytest.raises(ValueError, match="needs base_width"):
        parametrise(MLP, 64, Parametrisation())
    with pytest.raises(ValueError, match="'adam' or 'sgd'"):
        optimizer(0.1, {}, "lion")
    with pytest.raises(ValueError, match="fan-in init"):
        mlp_family(16, 4, init="glorot_uniform")
