"""Attention, embedding and positional layers: float64 numpy references, Jacobians, init
statistics and errors."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gradflow import layers as gl
from gradflow.attention import POSITION_STD, attention, embedding, positional

# float32 against float64: outputs are O(1) sums of d = 16 products and a softmax over 6 keys;
# rounding leaves errors of a few 1e-7, far below 1e-5 (a missing 1/sqrt(d_h) or a wrong mask
# moves outputs by more than 1e-2).
FWD = dict(rtol=1e-5, atol=1e-5)


def _np_attention(params, x, n_heads, causal):
    """Multi-head self-attention written out head by head in float64 numpy."""
    x = np.asarray(x, np.float64)
    w = {k: np.asarray(v, np.float64) for k, v in params.items()}
    batch, seq, d = x.shape
    d_h = d // n_heads
    out = np.zeros((batch, seq, d))
    for b in range(batch):
        q, k, v = x[b] @ w["wq"], x[b] @ w["wk"], x[b] @ w["wv"]
        for h in range(n_heads):
            cols = slice(h * d_h, (h + 1) * d_h)
            s = q[:, cols] @ k[:, cols].T / math.sqrt(d_h)
            if causal:
                s = np.where(np.tril(np.ones((seq, seq))) > 0, s, -np.inf)
            a = np.exp(s - s.max(axis=1, keepdims=True))
            a /= a.sum(axis=1, keepdims=True)
            out[b, :, cols] = a @ v[:, cols]
    return out @ w["wo"]


@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
def test_attention_matches_float64_numpy(key, causal):
    layer = attention(4, causal=causal)
    params = layer.init(key, (6, 16), {})
    x = jax.random.normal(jax.random.fold_in(key, 1), (3, 6, 16))
    y = layer.apply(params, x)
    assert y.shape == (3, 6, 16)
    np.testing.assert_allclose(y, _np_attention(params, x, 4, causal), **FWD)


def test_attention_init_is_n_0_1_over_d(key):
    d = 64
    params = attention(4).init(key, (8, d), {})
    assert sorted(params) == ["wk", "wo", "wq", "wv"]
    w = np.stack([np.asarray(v) for v in params.values()])  # (4, d, d)
    assert w.shape == (4, d, d)
    # Var = 1/d: the sample variance of n = 4 d^2 Gaussians has relative SE sqrt(2/n); 4 SE.
    n = w.size
    assert abs(w.var() * d - 1.0) < 4 * math.sqrt(2 / n)
    assert abs(w.mean()) * math.sqrt(d) < 4 / math.sqrt(n)
    assert not np.allclose(params["wq"], params["wk"])
    # init="gaussian": N(0, sigma_w2/d), and a traced hyper override wins
    big = attention(4, init="gaussian", sigma_w2=4.0).init(key, (8, d), {})
    np.testing.assert_allclose(big["wq"], 2.0 * params["wq"], rtol=1e-6)
    over = attention(4, init="gaussian").init(key, (8, d), {"sigma_w2": jnp.asarray(9.0)})
    np.testing.assert_allclose(over["wo"], 3.0 * params["wo"], rtol=1e-6)


def test_causal_jacobian_is_block_lower_triangular(key):
    # jac is None: gl.jacobian uses jax.jacfwd; output t must not depend on inputs s > t
    seq, d = 5, 8
    layer = attention(2, causal=True)
    params = layer.init(key, (seq, d), {})
    x1 = jax.random.normal(key, (seq, d))
    assert layer.jac is None
    j = np.asarray(gl.jacobian(layer, params, x1)).reshape(seq, d, seq, d)
    for t in range(seq):
        np.testing.assert_array_equal(j[t, :, t + 1 :, :], 0.0)
        assert np.abs(j[t, :, : t + 1, :]).max() > 0
    full = np.asarray(gl.jacobian(attention(2), params, x1)).reshape(seq, d, seq, d)
    assert np.abs(full[0, :, 1:, :]).max() > 0


def test_embedding_and_positions(key):
    emb, pos = embedding(11, 8), positional(5, 8)
    p_emb = emb.init(key, (5,), {})
    p_pos = pos.init(key, (5, 8), {})
    assert p_emb["table"].shape == (11, 8) and p_pos["pos"].shape == (5, 8)
    ids = jax.random.randint(key, (3, 5), 0, 11)
    h = emb.apply(p_emb, ids)
    np.testing.assert_array_equal(h, np.asarray(p_emb["table"])[np.asarray(ids)])
    np.testing.assert_allclose(pos.apply(p_pos, h), h + p_pos["pos"][None], rtol=0, atol=0)
    # N(0, 1) table; N(0, 0.02^2) positions (4-SE bands on 88 and 40 draws)
    assert abs(np.asarray(p_emb["table"]).std() - 1.0) < 4 / math.sqrt(2 * 88)
    assert abs(np.asarray(p_pos["pos"]).std() / POSITION_STD - 1.0) < 4 / math.sqrt(2 * 40)
    # positional: identity Jacobian, equal to jacfwd
    x1 = jax.random.normal(key, (5, 8))
    auto = jax.jacfwd(lambda v: pos.apply(p_pos, v[None])[0])(x1).reshape(40, 40)
    j = gl.jacobian(pos, p_pos, x1)
    np.testing.assert_allclose(jnp.diag(j.d), auto, rtol=0, atol=0)
    # out-of-range ids show as NaN, not a clamped row
    assert np.isnan(emb.apply(p_emb, jnp.full((1, 5), 11))).all()
    assert np.isnan(emb.apply(p_emb, jnp.full((1, 5), -1))).all()


def test_errors(key):
    with pytest.raises(ValueError, match="does not divide"):
        attention(3).init(key, (4, 16), {})
    with pytest.raises(ValueError, match="does not divide"):
        attention(3).out_shape((4, 16))
    with pytest.raises(ValueError, match=r"shape \(seq, d\)"):
        attention(2).out_shape((16,))
    with pytest.raises(ValueError, match="n_heads must be a positive int"):
        attention(0)
    with pytest.raises(ValueError, match="attention init must be one of"):
        attention(2, init="orthogonal")
    with pytest.raises(ValueError, match="sigma_w2/sigma_b2 only apply"):
        attention(2, sigma_w2=2.0)
    emb = embedding(7, 4)
    p = emb.init(key, (3,), {})
    with pytest.raises(ValueError, match="integer token ids"):
        emb.apply(p, jnp.zeros((2, 3)))
    with pytest.raises(ValueError, match="no Jacobian"):
        gl.jacobian(emb, p, jnp.zeros((3,), jnp.int32))
    with pytest.raises(ValueError, match=r"token ids of shape \(seq,\)"):
        emb.out_shape((3, 4))
    with pytest.raises(ValueError, match=r"built for examples of shape \(5, 8\)"):
        positional(5, 8).out_shape((6, 8))
