"""Built-in models, each a composition of gf layers: MLP (plain or residual), RNN, LSTM.

(The transformer and the small CNN are in :mod:`gradflow.transformer` and :mod:`gradflow.cnn`.)
Seed identity: for a fixed key these draw exactly the parameters the first versions of gradflow
drew (``tests/data/seed_identity.json``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

from gradflow import activations, inits, rng
from gradflow import layers as gl
from gradflow.models import Model, from_layers
from gradflow.recurrent import init_recurrent, recurrent


@dataclasses.dataclass(frozen=True, kw_only=True)
class MLPConfig:
    """Structure of an MLP: everything static under ``jit``."""

    widths: tuple[int, ...]
    activation: str = "tanh"
    init: str = "lecun"
    sigma_w2: float = 1.0
    sigma_b2: float = 0.0
    output_activation: str | None = None
    residual: bool = False
    residual_scale: float = 1.0
    scan: bool | int | str = "auto"

    @property
    def n_layers(self) -> int:
        """Number of weight layers L = len(widths) - 1."""
        return len(self.widths) - 1

    def to_dict(self) -> dict:
        return {"kind": "mlp", **dataclasses.asdict(self)}


def _check_widths(widths) -> tuple[int, ...]:
    try:
        widths = tuple(int(w) for w in widths)
    except (TypeError, ValueError):
        raise ValueError(f"widths must be a sequence of positive ints, got {widths!r}") from None
    if len(widths) < 2:
        raise ValueError(
            f"widths needs at least two entries (input and output size), got {list(widths)}; "
            "e.g. widths=[784, 30, 10]"
        )
    if any(w <= 0 for w in widths):
        raise ValueError(f"every width must be a positive int, got {list(widths)}")
    return widths


def _check_activation(name, what="activation"):
    if name is not None and name not in activations.ACTIVATIONS:
        names = ", ".join(activations.ACTIVATIONS)
        raise ValueError(f"unknown {what} {name!r}; choose one of: {names}")


def mlp(
    widths: Sequence[int],
    activation: str = "tanh",
    init: str = "lecun",
    *,
    sigma_w2: float | None = None,
    sigma_b2: float | None = None,
    output_activation: str | None = None,
    residual: bool = False,
    residual_scale: float = 1.0,
    scan: bool | int | str = "auto",
) -> Model:
    """A multilayer perceptron ``z^l = a^{l-1} W^l + b^l``, ``a^l = phi(z^l)``.

    Args:
      widths: layer sizes ``[n_0, n_1, ..., n_L]``; L = len(widths) - 1 weight layers.
      activation: hidden nonlinearity phi, a key of :data:`gradflow.activations.ACTIVATIONS`.
      init: a name in :data:`gradflow.inits.INITS`.
      sigma_w2, sigma_b2: weight and bias variances for ``init="gaussian"`` or ``"orthogonal"``
        (defaults 1 and 0).
      output_activation: applied to z^L (default identity: the model outputs logits).
      residual: if True, hidden layers whose input and output widths match become
        ``a^l = a^{l-1} + residual_scale * phi(z^l)`` (the other layers stay plain).
      residual_scale: the branch multiplier (e.g. ``1/sqrt(L)``).
      scan: which runs of equal hidden layers run as one ``lax.scan`` with stacked params
        (:func:`gradflow.layers.serial`: by default runs of 64 layers or more).

    Returns:
      A :class:`gradflow.Model`: the layers ``"layer1"..."layerL"``, each ``dense -> tap ->
      phi``, with a tap at every pre-activation z^l (named like its layer, so
      ``layer_grad_norms(...).hidden`` is ``sqrt(mean_x ||dC_x/dz^l_x||^2)``). Runs of equal
      hidden layers (64 or more by default, see ``scan``) execute as one ``lax.scan``; ``params``
      is a list of segments: a layer's
      ``{"w": (n_{l-1}, n_l), "b": (n_l,)}``, or a run's stacked ``{"w": (k, n, n), "b": (k, n)}``
      (:func:`gradflow.layers.serial`).
    """
    widths = _check_widths(widths)
    _check_activation(activation)
    _check_activation(output_activation, "output_activation")
    inits.check_init(init)
    sigma_w2, sigma_b2 = inits.check_sigmas(init, sigma_w2, sigma_b2)
    config = MLPConfig(
        widths=widths, activation=activation, init=init, sigma_w2=sigma_w2, sigma_b2=sigma_b2,
        output_activation=output_activation, residual=bool(residual),
        residual_scale=float(residual_scale), scan=scan,
    )  # fmt: skip
    return mlp_from_config(config)


def mlp_from_config(config: MLPConfig) -> Model:
    """Build the :class:`gradflow.Model` of an :class:`MLPConfig`."""
    widths = config.widths
    n_layers = len(widths) - 1
    feature_major = _feature_major(widths)
    sigmas = dict(sigma_w2=config.sigma_w2, sigma_b2=config.sigma_b2)
    if config.init not in ("gaussian", "orthogonal"):
        sigmas = {}
    blocks = []
    for l in range(n_layers):
        last = l == n_layers - 1
        phi = (config.output_activation or "linear") if last else config.activation
        body = [
            gl.dense(widths[l + 1], config.init, transposed=feature_major, **sigmas),
            gl.mark(activation=phi),
        ]
        if phi != "linear":
            body.append(gl.activation(phi))
        block = gl.serial(*body)
        if config.residual and not last and widths[l] == widths[l + 1]:
            block = gl.residual(block, config.residual_scale)
        blocks.append(gl.named(block, f"layer{l + 1}"))
    net = gl.serial(*blocks, scan=config.scan)
    model = from_layers(
        net, (widths[0],), config=config, logits=config.output_activation is None,
        feature_major=feature_major, identity=("mlp", config, feature_major),
    )  # fmt: skip
    check = _sigma_override_check(config.init)
    base_init = model.init

    def init(key, *, sigma_w2=None, sigma_b2=None):
        check(sigma_w2, sigma_b2)
        return base_init(key, sigma_w2=sigma_w2, sigma_b2=sigma_b2)

    return dataclasses.replace(model, init=init)


def _sigma_override_check(init: str):
    def check(sigma_w2, sigma_b2):
        inits.check_override(init, sigma_w2, sigma_b2)

    return check


def _feature_major(widths) -> bool:
    """Whether the MLP runs feature-major (activations (n, batch)): when the first layer holds
    at least half the weights.

    Why: in a seed sweep the input is shared, so the first layer of a whole chunk is one matmul
    of x against the seeds' stacked W^T (drawn in that order, see ``dense(transposed=True)``).
    Feature-major, its output and the backward pass's dC/dz^1 are already in the order the
    per-seed layers read; row-major, XLA copies both through a transpose on every chunk (a
    Nielsen-scale sweep ran ~1.3x faster without the copies; bench/README.md). When the hidden
    layers hold the weights, row-major batched matmuls are faster on XLA:CPU (a depth-50 sweep
    ran ~5% slower feature-major).
    """
    hidden = sum(a * b for a, b in zip(widths[1:-1], widths[2:], strict=True))
    return widths[0] * widths[1] >= hidden


def mlp_segments(model: Model, params, what: str) -> list[tuple]:
    """``[(w, b, activation, stacked)]``: the MLP's weight layers in order, runs stacked.

    ``w`` is (n_in, n_out) or (k, n, n) for a run of k equal layers; ``activation`` the name of
    the layer's phi (the output activation, or "linear", for the last layer).
    """
    config = model.config
    if not isinstance(config, MLPConfig) or config.residual:
        raise ValueError(f"{what} needs a plain (non-residual) MLP built by gradflow.mlp")
    net = model.net
    segs = gl.segments(net.children, (config.widths[0],), config.scan)
    entries = gl.unpack_params(params, segs, net.children)
    last = config.n_layers - 1
    out = []
    for s, p in zip(segs, entries, strict=True):
        name = config.activation if s.start < last else (config.output_activation or "linear")
        out.append((p["w"], p["b"], name, s.scanned))
    return out


def mlp_layers(model: Model, params) -> list[dict]:
    """The MLP's params as one ``{"w": (n_{l-1}, n_l), "b": (n_l,)}`` per weight layer l
    (runs unstacked): the layout of gradflow's first MLP, handy for reading or plotting."""
    config = model.config
    if not isinstance(config, MLPConfig):
        raise ValueError("mlp_layers needs an MLP built by gradflow.mlp")
    segs = gl.segments(model.net.children, (config.widths[0],), config.scan)
    out = []
    for s, p in zip(segs, gl.unpack_params(params, segs, model.net.children), strict=True):
        if s.scanned:
            out += [{"w": p["w"][i], "b": p["b"][i]} for i in range(s.stop - s.start)]
        else:
            out.append({"w": p["w"], "b": p["b"]})
    return out


# --------------------------------------------------------------------------------------------
# Recurrent nets


@dataclasses.dataclass(frozen=True, kw_only=True)
class RNNConfig:
    """Structure of a vanilla RNN or an LSTM reading ``(batch, time, n_in)`` sequences."""

    cell: str  # "rnn" or "lstm"
    n_in: int
    n_hidden: int
    n_out: int
    activation: str = "tanh"
    init: str = "lecun"
    sigma_w2: float = 1.0
    sigma_b2: float = 0.0
    recurrent_init: str = "orthogonal"
    forget_bias: float = 1.0

    def to_dict(self) -> dict:
        return {"kind": self.cell, **dataclasses.asdict(self)}


def rnn(
    n_in: int,
    n_hidden: int,
    n_out: int,
    activation: str = "tanh",
    init: str = "lecun",
    *,
    recurrent_init: str = "orthogonal",
    sigma_w2: float | None = None,
    sigma_b2: float | None = None,
) -> Model:
    """A vanilla (Elman) RNN ``h_t = phi(x_t W_in + h_{t-1} W_rec + b)``, ``y = h_T W_out + b_out``.

    ``h_0 = 0``. ``init`` draws ``W_in`` and ``W_out``; ``recurrent_init`` draws ``W_rec`` (with
    ``sigma_w2`` its gain for gaussian/orthogonal: the largest singular value of an orthogonal
    ``W_rec`` is ``sqrt(sigma_w2)``, the quantity in Pascanu et al. 2013's vanishing/exploding
    conditions). Layers ``"rnn"`` (``{"w_in", "w_rec", "b"}``) and ``"readout"``
    (``{"w", "b"}``); taps ``rnn/h`` of shape (batch, time, n_hidden).

    References: Bengio, Simard & Frasconi 1994; Pascanu, Mikolov & Bengio 2013 (arXiv:1211.5063).
    """
    return _recurrent_model("rnn", n_in, n_hidden, n_out, activation, init, recurrent_init,
                            sigma_w2, sigma_b2)  # fmt: skip


def lstm(
    n_in: int,
    n_hidden: int,
    n_out: int,
    init: str = "lecun",
    *,
    recurrent_init: str = "orthogonal",
    forget_bias: float = 1.0,
) -> Model:
    """An LSTM (Hochreiter & Schmidhuber 1997) with forget-gate bias ``forget_bias``.

    Gates ``[i, f, g, o] = x_t W_in + h_{t-1} W_rec + b``; ``c_t = sigma(f) c_{t-1} +
    sigma(i) tanh(g)``, ``h_t = sigma(o) tanh(c_t)``; ``y = h_T W_out + b_out``. Taps ``lstm/h``
    and ``lstm/c``, each (batch, time, n_hidden).
    """
    return _recurrent_model("lstm", n_in, n_hidden, n_out, "tanh", init, recurrent_init,
                            None, None, forget_bias)  # fmt: skip


def _recurrent_model(
    cell, n_in, n_hidden, n_out, activation, init, recurrent_init, sigma_w2, sigma_b2,
    forget_bias=1.0,
) -> Model:  # fmt: skip
    for name, value in (("n_in", n_in), ("n_hidden", n_hidden), ("n_out", n_out)):
        if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
            raise ValueError(f"{name} must be a positive int, got {value!r}")
    _check_activation(activation)
    inits.check_init(init)
    inits.check_init(recurrent_init)
    sigma_w2, sigma_b2 = inits.check_sigmas(recurrent_init, sigma_w2, sigma_b2)
    config = RNNConfig(
        cell=cell, n_in=n_in, n_hidden=n_hidden, n_out=n_out, activation=activation, init=init,
        sigma_w2=sigma_w2, sigma_b2=sigma_b2, recurrent_init=recurrent_init,
        forget_bias=float(forget_bias),
    )  # fmt: skip
    cell_layer = recurrent(
        n_hidden, cell, activation=activation, init=init, recurrent_init=recurrent_init,
        sigma_w2=sigma_w2 if recurrent_init in ("gaussian", "orthogonal") else None,
        sigma_b2=sigma_b2 if recurrent_init in ("gaussian", "orthogonal") else None,
        forget_bias=forget_bias, name=cell,
    )  # fmt: skip
    net = gl.serial(cell_layer, gl.dense(n_out, init, name="readout"))
    model = from_layers(net, (None, n_in), config=config, identity=(cell, config))

    def init_fn(key, *, sigma_w2=None, sigma_b2=None):
        # The draws of gradflow's first RNN/LSTM, kept for seed identity: three keys, the
        # recurrent blocks from the second.
        inits.check_override(recurrent_init, sigma_w2, sigma_b2)
        k_in, k_rec, k_out = rng.split(key, 3)
        sw2 = config.sigma_w2 if sigma_w2 is None else sigma_w2
        sb2 = config.sigma_b2 if sigma_b2 is None else sigma_b2
        args = (n_hidden, cell, init, recurrent_init, sw2, sb2, config.forget_bias)
        return [
            init_recurrent(k_in, k_rec, n_in, *args),
            inits.init_dense(k_out, n_hidden, n_out, init),
        ]

    return dataclasses.replace(model, init=init_fn)
