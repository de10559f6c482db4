"""Cheap statistical checks behind paper figures 6-9 (experiments/fig_rnn_lstm.py, fig_fixes.py,
fig_xiong_layernorm.py, fig_batchnorm.py): each builds the script's model at a small size with
fixed keys (so deterministic) and checks a measured number against theory, with the tolerance
and its reason stated."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import gradflow as gf
from tests.conftest import load_experiment

# --------------------------------------------------------------------------------------------
# Yang et al. 2019: BatchNorm


def test_batchnorm_relu_rate_at_batch_8_matches_yang():
    """E||dC/dW^l||^2 grows by 1.788 per layer going back at B = 8 (REFERENCES 7.2).

    Width 128, depth 20, 32 seeds; the rate of the seed-mean over layers 3..17 (the figure's
    estimator). Measured 1.801 [1.781, 1.820] (5-95% bootstrap); the figure, width 512:
    1.785 [1.776, 1.793]. Tolerance 0.06: 4 bootstrap standard errors (SE ~0.012; the 5-95%
    band, 3.3 SE wide, must stay under 0.04) plus finite-width deviations of ~0.02 at width
    128; the neighbouring theory values 1.590 (B = 16) and 3.084 (B = 4) are far outside it.
    """
    fig = load_experiment("fig_batchnorm")
    cfg = dict(fig.CONFIG, width=128, depth=20, seeds=32, fit_first=3, fit_skip_last=3)
    model = fig.bn_net(cfg["width"], cfg["depth"], "relu")
    x = jax.random.normal(jax.random.key(1), (8, cfg["width"]))
    y = jax.random.normal(jax.random.key(2), (8, fig.N_OUT))
    r = gf.sweep(gf.layer_grad_norms, model, cfg["seeds"], x, y, loss="mse", quiet=True)
    dense = [i for i, n in enumerate(r.names) if n.endswith("/dense")]
    assert len(dense) == cfg["depth"]
    g2 = np.asarray(r.weights, np.float64)[:, dense] ** 2
    rates = fig.rates(g2, cfg)
    want = gf.theory.batchnorm_grad_rate("relu", 8)
    assert rates["boot"][1] - rates["boot"][0] < 0.04, rates  # SE small enough to tell
    assert abs(rates["pooled"] - want) < 0.06, (rates["pooled"], rates["boot"], want)


# --------------------------------------------------------------------------------------------
# Bengio et al. 1994 / Pascanu et al. 2013: RNN through time


def test_rnn_gradient_through_time_obeys_pascanu_bound_and_mean_field():
    """Bengio/Pascanu: ||dC/dh_t|| <= sigma_max^(T-t) ||dC/dh_T|| for every seed and step.

    With a tiny input (std 0.001: tanh' = 1 - O(1e-5)) the per-step factor for sigma_max < 1 is
    sigma_max itself: W_rec is orthogonal times sigma_max, so ||W_rec^T v|| = sigma_max ||v||
    exactly. Tolerance: factor / sigma_max in [0.99, 1 + 1e-4] (float32 rounding over 30
    steps), the bound with 1e-3 slack (float32).

    With input std 0.3 the factor is the mean-field sqrt(chi1) of tanh at sigma_w2 =
    sigma_max^2, sigma_b2 = 0.09 (the input drive), below and above the order-to-chaos point:
    measured medians 0.4569, 0.7031, 1.0235 against 0.4567, 0.7040, 1.0300 (32 units, 8
    seeds). Tolerance 3%: finite width 32 (corrections ~1/N) and 8 seeds.
    """
    fig = load_experiment("fig_rnn_lstm")
    cfg = dict(fig.CONFIG, n_hidden=32, time=30, batch=4, seeds=8, fit=[5, 25])
    sig = np.array([0.5, 0.8, 1.5])
    model = gf.rnn(cfg["n_in"], 32, cfg["n_out"], "tanh", "lecun", recurrent_init="orthogonal",
                   sigma_w2=1.0, sigma_b2=0.0)  # fmt: skip
    shape = (cfg["batch"], cfg["time"], cfg["n_in"])
    y = jax.random.randint(jax.random.key(2), (cfg["batch"],), 0, cfg["n_out"])
    out = {}
    for std in (0.001, 0.3):  # same shapes: one compilation
        x = std * jax.random.normal(jax.random.key(1), shape)
        r = gf.grid_sweep(gf.time_grad_norms, model, cfg["seeds"], x, y, loss="xent",
                          grid={"sigma_w2": sig**2}, quiet=True)  # fmt: skip
        out[std] = np.asarray(r.hidden, np.float64)  # (3, seeds, time)
        assert fig.bound_violations({"rnn/hidden": out[std]}, dict(cfg, sigma_max=sig)) == 0
    ratio = fig.step_factors(out[0.001][:2], cfg) / sig[:2, None]  # (2, seeds)
    assert np.all((ratio > 0.99) & (ratio < 1 + 1e-4)), ratio
    factor = np.median(fig.step_factors(out[0.3], cfg), axis=1)
    want = fig.mean_field_factor(sig, dict(cfg, input_std=0.3))
    np.testing.assert_allclose(factor, want, rtol=0.03)
    assert np.all(fig.relative(out[0.3][2])[:, 0] > 1)  # sigma_max = 1.5 explodes, every seed


# --------------------------------------------------------------------------------------------
# Xiong et al. 2020: Post-LN vs Pre-LN


def test_xiong_switched_off_blocks_make_an_exact_shallower_pre_ln_net():
    """The figure realises depth L as a deeper net with its first blocks switched off (zero
    branch outputs). For Pre-LN that is exactly the depth-L net on the remaining blocks: same
    output to float32 rounding (the switched-off blocks add exact zeros)."""
    fig = load_experiment("fig_xiong_layernorm")
    cfg = dict(fig.CONFIG, width=8, heads=2, seq_len=3, n_in=4, depths=[2])
    model = fig.switchable(cfg, "pre")  # 3 blocks, the first switched off at active=2
    params = model.init(jax.random.key(0), active=2)
    plain = gf.transformer(2, 8, 2, 3, n_in=4, n_out=cfg["n_out"], norm="pre",
                           ffn_mult=cfg["ffn_mult"], scan=True)  # fmt: skip
    last_two = [params[0], params[1], jax.tree.map(lambda a: a[1:], params[2]), *params[3:]]
    x = jax.random.normal(jax.random.key(1), (2, 3, 4))
    np.testing.assert_array_equal(
        jax.jit(model.apply)(params, x), jax.jit(plain.apply)(last_two, x)
    )
    wo = np.asarray(params[2][0][1]["wo"])  # (3, 8, 8): block 1 off, blocks 2-3 on
    assert not wo[0].any() and wo[1:].all()


def test_xiong_last_layer_gradient_falls_with_depth_for_pre_ln_only():
    """Theorem 1: the last FFN W^2 gradient is O(1) in depth L for Post-LN, O(1/sqrt(L)) for
    Pre-LN. Depth 2 vs 8 (x4: sqrt predicts x2), width 16, 32 seeds, the figure's compute.

    Measured: Pre-LN 1.85, Post-LN 0.82; W^1 slopes +0.011 (Post) and -0.150 (Pre) per block,
    SE of the difference 0.019. Tolerance: Pre-LN ratio of medians in [1.4, 2.6] (the
    prediction 2 +- 30%: the l^(-1/2) law is only asymptotic, and at width 16 the seed
    spread of such a ratio is ~10%) and Post-LN in [0.6, 1.4] (level). Per block at depth 8,
    Post-LN's W^1 gradients grow toward the output and Pre-LN's do not: the mean per-seed
    slopes differ by more than 4 standard errors.
    """
    fig = load_experiment("fig_xiong_layernorm")
    cfg = dict(fig.CONFIG, width=16, heads=2, seq_len=4, n_in=4, batch=4, seeds=32,
               depths=[2, 8], profile_depth=8)  # fmt: skip
    data = fig.compute(cfg)
    last = {k: np.median(v[:, -1]) for k, v in data.items() if k.endswith("fc2")}
    ratio = {n: last[f"{n}/L2/fc2"] / last[f"{n}/L8/fc2"] for n in ("pre", "post")}
    assert 1.4 < ratio["pre"] < 2.6, ratio
    assert 0.6 < ratio["post"] < 1.4, ratio
    post, pre = fig.slopes(data["post/L8/fc1"]), fig.slopes(data["pre/L8/fc1"])
    se = math.hypot(post.std(ddof=1), pre.std(ddof=1)) / math.sqrt(cfg["seeds"])
    assert post.mean() - pre.mean() > 4 * se, (post.mean(), pre.mean(), se)


# --------------------------------------------------------------------------------------------
# The fixes side by side


def test_fixes_sigmoid_nielsen_vanishes_at_the_mean_field_rate():
    """Nielsen's sigmoid net: ||dC/dW^l|| shrinks by sqrt(chi1(sigmoid, 1, 1)) = 0.205 per layer
    back (mean field; Nielsen's book: 0.18-0.25): the figure's net (float64) at depth 14,
    width 48, 16 seeds, on Gaussian inputs of unit variance instead of digits (the rate does
    not depend on them once q has reached q*). Measured 0.197 (the figure, width 128, depth
    50, MNIST: 0.205 [0.20, 0.21]). Tolerance 10%: finite width 48 and the q transient over 9
    layers.
    """
    fig = load_experiment("fig_fixes")
    cfg = dict(fig.CONFIG, depth=14, width=48)
    with jax.enable_x64(True):
        x = jax.random.normal(jax.random.key(1), (32, 784), jnp.float64)
        y = jax.random.randint(jax.random.key(2), (32,), 0, 10)
        r = gf.sweep(gf.layer_grad_norms, fig.build("sigmoid", cfg), 16, x, y, loss="xent",
                     quiet=True)  # fmt: skip
    g = np.asarray(r.weights)
    assert g.shape == (16, 14) and g.dtype == np.float64
    factor = np.exp(-np.mean(np.diff(np.log(g[:, 3:12]), axis=1)))  # per layer going back
    assert factor == pytest.approx(fig.sigmoid_factor(cfg), rel=0.10), factor
