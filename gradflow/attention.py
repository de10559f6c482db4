"""Sequence layers: multi-head self-attention, token embedding and learned positions.

Every layer here reads one example of shape (seq, d) (the embedding: (seq,) integer ids) and is
batched on axis 0, like every gf layer (:mod:`gradflow.layers`).

References:
  Vaswani et al. 2017, "Attention Is All You Need" (arXiv:1706.03762).
  Radford et al. 2019, GPT-2 (learned positions drawn N(0, 0.02^2), as in its released code).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from gradflow import inits, rng
from gradflow.layers import Diag, Layer

ATTENTION_INITS = ("lecun", "gaussian")
"""The inits :func:`attention` takes (both Gaussian, untruncated)."""

POSITION_STD = 0.02
"""Standard deviation of the learned positional embedding at initialisation (GPT-2's)."""


def _check_positive(name: str, value) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    return value


# --------------------------------------------------------------------------------------------
# Multi-head self-attention


def _check_sequence(kind: str, in_shape, n_heads: int | None = None) -> tuple[int, int]:
    in_shape = tuple(in_shape)
    if len(in_shape) != 2 or any(n is None or n < 1 for n in in_shape):
        raise ValueError(
            f"{kind} reads examples of shape (seq, d), got one example of shape {in_shape}; "
            "feed x of shape (batch, seq, d)"
        )
    if n_heads is not None and in_shape[1] % n_heads:
        raise ValueError(
            f"{kind}: n_heads={n_heads} does not divide the width d={in_shape[1]}; choose a "
            "number of heads that divides d"
        )
    return in_shape


def attention(
    n_heads: int,
    *,
    causal: bool = False,
    init: str = "lecun",
    sigma_w2: float | None = None,
    logit_scale: float | None = None,
    name: str | None = None,
) -> Layer:
    """Multi-head self-attention on (batch, seq, d), without biases.

    With ``H = n_heads`` heads of size ``d_h = d / H``: ``Q = x W_q``, ``K = x W_k``, ``V = x W_v``
    split into heads, ``A_h = softmax(s Q_h K_h^T + M)`` over keys (``s = 1/sqrt(d_h)`` unless
    ``logit_scale`` says otherwise), and
    ``y = concat_h(A_h V_h) W_o``. ``M`` is 0, or for ``causal=True`` ``-inf`` above the
    diagonal (position t attends to positions <= t only).

    Args:
      n_heads: number of heads H (must divide d).
      causal: mask future positions.
      init: ``"lecun"``: every entry N(0, 1/d) (Xiong et al. 2020's Xavier Gaussian for square
        matrices); or ``"gaussian"``: N(0, sigma_w2/d), with a traced ``hyper["sigma_w2"]``
        taking precedence (grid sweeps).
      sigma_w2: the weight variance for ``init="gaussian"`` (default 1).
      logit_scale: the factor s on ``Q_h K_h^T`` (default None: ``1/sqrt(d_h)``). muP scales the
        logits as ``1/d_h`` instead (:mod:`gradflow.mup`): keys and queries become correlated
        during training, so their dot product grows like d_h, not sqrt(d_h).
      name: the layer's name in its serial.

    Params: ``{"wq", "wk", "wv", "wo"}``, each (d, d), drawn as one ``jax.random.normal`` array
    of shape (4, d, d) from the layer's key (bit for bit, via :mod:`gradflow.rng`): one draw
    instead of four compiles ~5x faster.
    Shapes: x (batch, seq, d) -> y (batch, seq, d).

    Jacobian: ``jac`` is None, so :func:`gradflow.layers.jacobian` uses ``jax.jacfwd`` on one
    example ((seq d, seq d)): the softmax couples every position to every other, and no closed
    form is cheaper than forward-mode autodiff here.

    References: Vaswani et al. 2017 (arXiv:1706.03762).
    """
    n_heads = _check_positive("n_heads", n_heads)
    if init not in ATTENTION_INITS:
        raise ValueError(f"attention init must be one of {ATTENTION_INITS}, got {init!r}")
    sw2, _ = inits.check_sigmas(init, sigma_w2, None)
    causal = bool(causal)
    if logit_scale is not None:
        logit_scale = float(logit_scale)
        if not (math.isfinite(logit_scale) and logit_scale > 0):
            raise ValueError(f"logit_scale must be a finite float > 0 (or None), got {logit_scale}")

    def init_fn(key, in_shape, hyper):
        _, d = _check_sequence("attention", in_shape, n_heads)
        w2 = hyper.get("sigma_w2", sw2) if init == "gaussian" else sw2
        w = rng.normal(key, (4, d, d), jnp.float32) * jnp.sqrt(w2 / d).astype(jnp.float32)
        w = rng.once(w)  # drawn once, not again inside each slice and consumer (rng.once)
        return {"wq": w[0], "wk": w[1], "wv": w[2], "wo": w[3]}

    def apply(params, x):
        batch, seq, d = x.shape
        d_h = d // n_heads

        # einsum, not tensordot: under a vmap over seeds tensordot's reshapes copy (the lesson
        # of gl.dense).
        def heads(w):  # (batch, seq, d) @ (d, d) -> (batch, seq, H, d_h)
            return jnp.einsum("bti,io->bto", x, w).reshape(batch, seq, n_heads, d_h)

        q, k, v = heads(params["wq"]), heads(params["wk"]), heads(params["wv"])
        scores = jnp.einsum("bqhe,bkhe->bhqk", q, k)
        # The default divides (not multiplies by 1/sqrt): bit for bit what it always computed.
        scores = scores / math.sqrt(d_h) if logit_scale is None else scores * logit_scale
        if causal:
            mask = jnp.tril(jnp.ones((seq, seq), bool))[None, None]
            scores = jnp.where(mask, scores, -jnp.inf)
        a = jax.nn.softmax(scores, axis=-1)
        out = jnp.einsum("bhqk,bkhe->bqhe", a, v).reshape(batch, seq, d)
        return jnp.einsum("bti,io->bto", out, params["wo"])

    def out_shape(in_shape):
        return _check_sequence("attention", in_shape, n_heads)

    spec = ("attention", n_heads, causal, init, sw2)
    if logit_scale is not None:  # the default's spec (and so model identity) is unchanged
        spec += (("logit_scale", logit_scale),)
    return Layer("attention", init_fn, apply, out_shape, spec, name, True, None)


# --------------------------------------------------------------------------------------------
# Token embedding and learned positions


def embedding(vocab: int, d: int, *, name: str | None = None) -> Layer:
    """Token embedding: integer ids (batch, seq) -> rows of a table, (batch, seq, d).

    ``y[b, t] = table[x[b, t]]``; ids outside ``0..vocab-1`` give rows of NaN (``jnp.take``'s
    ``"fill"`` mode), so a bad id shows instead of being clamped silently.

    Args:
      vocab: number of tokens. d: embedding width. name: the layer's name in its serial.

    Params: ``{"table": (vocab, d)}`` drawn N(0, 1) (unit-variance coordinates, the Gaussian
    inputs of Xiong et al. 2020's analysis).

    Jacobian: none (the inputs are integers); ``jac`` raises a ValueError.
    """
    vocab = _check_positive("vocab", vocab)
    d = _check_positive("d", d)

    def init(key, in_shape, hyper):
        out_shape(in_shape)
        return {"table": rng.once(rng.normal(key, (vocab, d), jnp.float32))}

    def apply(params, x):
        if not jnp.issubdtype(x.dtype, jnp.integer):
            raise ValueError(
                f"embedding takes integer token ids of shape (batch, seq), got dtype {x.dtype}; "
                "cast the ids to int32 (or build the model with n_in= for continuous inputs)"
            )
        ids = jnp.where(x >= 0, x, vocab)  # negative ids too are out of range, not wrapped
        return jnp.take(params["table"], ids, axis=0, mode="fill", fill_value=jnp.nan)

    def jac(params, x1):
        raise ValueError(
            "embedding has no Jacobian with respect to its integer inputs; start the Jacobian "
            "at the embedding's output (the layer after it)"
        )

    def out_shape(in_shape):
        in_shape = tuple(in_shape)
        if len(in_shape) != 1:
            raise ValueError(
                f"embedding reads token ids of shape (seq,) per example, got {in_shape}; feed "
                "x of shape (batch, seq)"
            )
        return (*in_shape, d)

    return Layer("embedding", init, apply, out_shape, ("embedding", vocab, d), name, True, jac)


def positional(seq_len: int, d: int, *, name: str | None = None) -> Layer:
    """Learned additive positions: ``y[b, t] = x[b, t] + pos[t]`` on (batch, seq_len, d).

    Args:
      seq_len: the sequence length (the input's must equal it). d: width. name: its name.

    Params: ``{"pos": (seq_len, d)}`` drawn N(0, 0.02^2) (:data:`POSITION_STD`, GPT-2's init).
    Jacobian: the identity (``Diag`` of ones).

    References: Radford et al. 2019 (GPT-2); Vaswani et al. 2017 use fixed sinusoids instead.
    """
    seq_len = _check_positive("seq_len", seq_len)
    d = _check_positive("d", d)

    def init(key, in_shape, hyper):
        out_shape(in_shape)
        return {"pos": rng.once(POSITION_STD * rng.normal(key, (seq_len, d), jnp.float32))}

    def apply(params, x):
        return x + params["pos"][None]

    def jac(params, x1):
        return Diag(jnp.ones((x1.size,), x1.dtype))

    def out_shape(in_shape):
        if tuple(in_shape) != (seq_len, d):
            raise ValueError(
                f"positional was built for examples of shape ({seq_len}, {d}), got "
                f"{tuple(in_shape)}; build it with the data's seq_len and width"
            )
        return (seq_len, d)

    spec = ("positional", seq_len, d)
    return Layer("positional", init, apply, out_shape, spec, name, True, jac)
