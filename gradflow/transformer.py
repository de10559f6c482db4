"""The built-in transformer encoder (Pre-LN or Post-LN), a composition of gf layers.

    model = gf.transformer(12, 64, 4, 16, n_in=8, n_out=10, norm="post")
    g = gf.sweep(gf.layer_grad_norms, model, 32, x, y, loss="xent")   # per-layer, per-seed

Xiong et al. 2020 (REFERENCES 7.1) show that at initialisation the FFN weight gradients of a
Post-LN transformer grow toward the output (so large early steps near the output need warm-up),
and that the last layer's is O(1) in depth for Post-LN but O(1/sqrt(L)) for Pre-LN (Theorem 1).
The two block types::

    Pre-LN:   x = x + Attn(LN(x));   x = x + FFN(LN(x));   ... final LN before the readout
    Post-LN:  x = LN(x + Attn(x));   x = LN(x + FFN(x))

with ``FFN(x) = act(x W_1 + b_1) W_2 + b_2`` of hidden width ``ffn_mult * width``.

Measured here at width 32, depth 12, 128 seeds (``tests/test_transformer.py``): Post-LN's W_1
gradients grow x1.36 from the first block to the last (W_2: x1.08, weaker than the paper's
width-512 figure); Pre-LN's are not level but fall roughly as l^(-1/2) (x0.3-0.4), the same
mechanism as Theorem 1 (the residual stream grows, LayerNorm's Jacobian shrinks as 1/||x_l||).

References: Vaswani et al. 2017 (arXiv:1706.03762); Xiong et al. 2020 (arXiv:2002.04745).
"""

from __future__ import annotations

import dataclasses
import math

from gradflow import activations
from gradflow import layers as gl
from gradflow.attention import attention, embedding, positional
from gradflow.layers import Layer
from gradflow.models import Model, from_layers
from gradflow.norm_layers import layer_norm

NORMS = ("pre", "post")
READOUTS = ("mean", "last")


@dataclasses.dataclass(frozen=True, kw_only=True)
class TransformerConfig:
    """Structure of a transformer encoder: everything static under ``jit``."""

    depth: int
    width: int
    heads: int
    seq_len: int
    n_out: int
    vocab: int | None = None
    n_in: int | None = None
    norm: str = "pre"
    causal: bool = False
    ffn_mult: int = 4
    activation: str = "relu"
    readout: str = "mean"
    scan: bool | int | str = "auto"
    attn_scale: float | None = None

    def to_dict(self) -> dict:
        d = {"kind": "transformer", **dataclasses.asdict(self)}
        if d["attn_scale"] is None:  # the default: descriptions (run dirs) stay as they were
            del d["attn_scale"]
        return d


def transformer(
    depth: int,
    width: int,
    heads: int,
    seq_len: int,
    *,
    vocab: int | None = None,
    n_in: int | None = None,
    n_out: int,
    norm: str = "pre",
    causal: bool = False,
    ffn_mult: int = 4,
    activation: str = "relu",
    readout: str = "mean",
    scan: bool | int | str = "auto",
    attn_scale: float | None = None,
) -> Model:
    """A transformer encoder with a classification/regression readout.

    Args:
      depth: number of blocks L. width: the model width d. heads: attention heads (divide d).
      seq_len: sequence length T (inputs must have exactly T positions).
      vocab: token inputs: x holds integer ids (batch, T), embedded by a (vocab, d) table.
      n_in: continuous inputs instead: x of shape (batch, T, n_in), projected by a dense layer.
        Give exactly one of ``vocab`` and ``n_in``.
      n_out: outputs (logits).
      norm: ``"pre"`` (x + F(LN(x)), with a final LN) or ``"post"`` (LN(x + F(x))).
      causal: causal attention masks. ffn_mult: FFN hidden width / d.
      activation: the FFN nonlinearity, a key of :data:`gradflow.ACTIVATIONS`.
      readout: ``"mean"`` over positions or the ``"last"`` position, then ``dense(n_out)``.
      attn_scale: the attention-logit factor s in ``softmax(s Q_h K_h^T)`` (default None:
        ``1/sqrt(d_h)``, d_h = width / heads); muP uses ``sqrt(d_h0) / d_h`` (:mod:`gradflow.mup`).

    Returns:
      A :class:`gradflow.Model`. Parameter groups (``layer_grad_norms(...).names``):
      ``"embed"``, ``"pos"``, then per block l = 1..L, Pre-LN: ``"block{l}/attn/ln"``,
      ``"block{l}/attn/mha"``, ``"block{l}/ffn/ln"``, ``"block{l}/ffn/fc1"``,
      ``"block{l}/ffn/fc2"``, and ``"ln_f"``; Post-LN: ``"block{l}/attn"``, ``"block{l}/ln1"``,
      ``"block{l}/ffn/fc1"``, ``"block{l}/ffn/fc2"``, ``"block{l}/ln2"``; last ``"readout"``.
      (A scanned run's groups come one name per block, grouped by sub-layer: all ``attn/ln``
      first.) Taps: the residual stream at every block's output, ``"block{l}"`` (batch, T, d),
      after the block's last LayerNorm for Post-LN. The L blocks run as one ``lax.scan``
      (their params are stacked on a leading axis of length L), so compile time does not grow
      with depth.

    Initialisation: dense layers ``"lecun"`` (W ~ N(0, 1/fan_in), b = 0), attention matrices
    N(0, 1/d), embedding table N(0, 1), positions N(0, 0.02^2), LayerNorm gain 1 and offset 0.

    Differences from Xiong et al. 2020: an encoder-only classifier with one loss per sequence
    (mean/last pooling, one dense readout), not a 6-6 encoder-decoder with a per-token
    translation loss; random W_q, W_k (their theory sets them to 0, uniform attention); FFN
    weights with fan-in variance (Xavier is the same for d x d matrices, 2/(5d) for the
    (d, 4d) and (4d, d) FFN ones); learned positions. Zeroing W_q, W_k or using a per-token
    loss changed the measured profiles little (see the module docstring for the numbers).
    """
    config = TransformerConfig(
        depth=_positive("depth", depth), width=_positive("width", width),
        heads=_positive("heads", heads), seq_len=_positive("seq_len", seq_len),
        n_out=_positive("n_out", n_out), vocab=vocab, n_in=n_in, norm=norm, causal=bool(causal),
        ffn_mult=_positive("ffn_mult", ffn_mult), activation=activation, readout=readout,
        scan=scan, attn_scale=None if attn_scale is None else float(attn_scale),
    )  # fmt: skip
    _check(config)
    return transformer_from_config(config)


def _positive(name: str, value) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    return value


def _check(c: TransformerConfig) -> None:
    if (c.vocab is None) == (c.n_in is None):
        raise ValueError(
            f"give exactly one of vocab= (token ids) and n_in= (continuous inputs), got "
            f"vocab={c.vocab!r}, n_in={c.n_in!r}"
        )
    if c.vocab is not None:
        _positive("vocab", c.vocab)
    else:
        _positive("n_in", c.n_in)
    if c.width % c.heads:
        divisors = [h for h in range(1, c.width + 1) if c.width % h == 0]
        raise ValueError(
            f"heads={c.heads} does not divide width={c.width}; choose heads from {divisors}"
        )
    if c.norm not in NORMS:
        raise ValueError(f"norm must be 'pre' or 'post' (where LayerNorm sits), got {c.norm!r}")
    if c.readout not in READOUTS:
        raise ValueError(f"readout must be 'mean' or 'last', got {c.readout!r}")
    if c.activation not in activations.ACTIVATIONS:
        names = ", ".join(activations.ACTIVATIONS)
        raise ValueError(f"unknown activation {c.activation!r}; choose one of: {names}")
    if c.attn_scale is not None and not (math.isfinite(c.attn_scale) and c.attn_scale > 0):
        raise ValueError(f"attn_scale must be a finite float > 0 (or None), got {c.attn_scale}")


def _ffn(c: TransformerConfig) -> list[Layer]:
    return [
        gl.dense(c.ffn_mult * c.width, name="fc1"),
        gl.activation(c.activation),
        gl.dense(c.width, name="fc2"),
    ]


def _block(c: TransformerConfig, index: int) -> Layer:
    """Block ``index`` (1-based); all blocks share one spec, so ``serial`` scans them."""
    mha = attention(c.heads, causal=c.causal, logit_scale=c.attn_scale, name="mha")
    if c.norm == "pre":
        attn = gl.residual(gl.serial(layer_norm(name="ln"), mha), name="attn")
        ffn = gl.residual(gl.serial(layer_norm(name="ln"), *_ffn(c)), name="ffn")
        body = [attn, ffn]
    else:
        attn = gl.residual(mha, name="attn")
        ffn = gl.residual(gl.serial(*_ffn(c)), name="ffn")
        body = [attn, layer_norm(name="ln1"), ffn, layer_norm(name="ln2")]
    # The tap takes the block's name: the residual stream after block `index`.
    return gl.named(gl.serial(*body, gl.mark(role="residual")), f"block{index}")


def pool(readout: str = "mean", *, name: str | None = None) -> Layer:
    """Reduce the sequence axis: (batch, seq, d) -> (batch, d), by ``"mean"`` or ``"last"``.

    Jacobian: ``jax.jacfwd`` (``jac`` None); it is the constant (d, seq d) averaging/selection.
    """
    if readout not in READOUTS:
        raise ValueError(f"readout must be 'mean' or 'last', got {readout!r}")

    def apply(params, x):
        return x.mean(axis=1) if readout == "mean" else x[:, -1]

    def out_shape(in_shape):
        if len(in_shape) != 2:
            raise ValueError(f"pool reads (seq, d) per example, got {tuple(in_shape)}")
        return (in_shape[1],)

    return Layer("pool", None, apply, out_shape, ("pool", readout), name, False, None)


def transformer_from_config(config: TransformerConfig) -> Model:
    """Build the :class:`gradflow.Model` of a :class:`TransformerConfig`."""
    c = config
    _check(c)
    if c.vocab is not None:
        stem, in_shape = embedding(c.vocab, c.width, name="embed"), (c.seq_len,)
    else:
        stem, in_shape = gl.dense(c.width, name="embed"), (c.seq_len, c.n_in)
    net = [stem, positional(c.seq_len, c.width, name="pos")]
    net += [_block(c, l + 1) for l in range(c.depth)]
    if c.norm == "pre":
        net.append(layer_norm(name="ln_f"))
    net += [pool(c.readout, name="pool"), gl.dense(c.n_out, name="readout")]
    model = from_layers(
        gl.serial(*net, scan=c.scan), in_shape, config=c, identity=("transformer", c)
    )

    # Every layer is drawn with a fixed init, so sigma overrides would be silently ignored.
    base_init = model.init

    def init(key):
        return base_init(key)

    return dataclasses.replace(model, init=init, hyper_names=frozenset())
