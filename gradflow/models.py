"""Pure-functional models built for gradient-flow analysis.

Every model is a :class:`Model`: a pair of pure functions over plain pytrees plus a frozen,
hashable config (so it can be a static argument of ``jax.jit``)::

    model = gradflow.mlp([784, 30, 30, 10], activation="sigmoid", init="nielsen")
    params = model.init(jax.random.key(0))     # [{"w": (784, 30), "b": (30,)}, ...]
    y = model.apply(params, x)                 # x: (batch, 784) -> y: (batch, 10)

``model.forward(params, x, perturb)`` additionally adds ``perturb`` to every hidden variable
the probes differentiate with respect to (MLP pre-activations ``z^l``; recurrent hidden states
``h_t``) and returns them, so that ``jax.grad`` with respect to a zero ``perturb`` is exactly
``dC/dz^l`` (or ``dC/dh_t``) for every example, from one backward pass.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import jax.scipy.special as jsp

from gradflow import rng

Params = Any  # a pytree of arrays


def _leaky_relu(z):
    return jax.nn.leaky_relu(z, negative_slope=0.01)


def _gelu(z):
    # The exact (erf) GELU, z * Phi(z): mean-field quadrature needs the true function, not the
    # tanh approximation jax.nn.gelu uses by default.
    return jax.nn.gelu(z, approximate=False)


ACTIVATIONS: dict[str, Callable[[jax.Array], jax.Array]] = {
    "sigmoid": jax.nn.sigmoid,
    "tanh": jnp.tanh,
    "relu": jax.nn.relu,
    "leaky_relu": _leaky_relu,
    "gelu": _gelu,
    "selu": jax.nn.selu,
    "softplus": jax.nn.softplus,
    "erf": jsp.erf,
    "linear": lambda z: z,
}
"""Activation name -> elementwise function. ``leaky_relu`` has slope 0.01; ``gelu`` is exact."""

INITS = (
    "nielsen",
    "standard_normal",
    "glorot_uniform",
    "glorot_standard",
    "lecun",
    "he",
    "orthogonal",
    "gaussian",
)
"""Initialisation names. All are untruncated, so papers reproduce exactly:

- ``nielsen``: W ~ N(0, 1/n_in), b ~ N(0, 1) (network2.py's default_weight_initializer).
- ``standard_normal``: W ~ N(0, 1), b ~ N(0, 1) (network2.py's large_weight_initializer).
- ``glorot_uniform``: W ~ U[-sqrt(6/(n_in+n_out)), +sqrt(6/(n_in+n_out))], b = 0 (Glorot & Bengio
  2010, Eq. 16, "normalized").
- ``glorot_standard``: W ~ U[-1/sqrt(n_in), +1/sqrt(n_in)], b = 0 (Glorot & Bengio 2010, Eq. 1).
- ``lecun``: W ~ N(0, 1/n_in), b = 0.
- ``he``: W ~ N(0, 2/n_in), b = 0 (He et al. 2015).
- ``gaussian``: W ~ N(0, sigma_w2/n_in), b ~ N(0, sigma_b2) (the mean-field convention of Poole et
  al. 2016 and Schoenholz et al. 2017; neural-tangents' ``W_std**2`` is our ``sigma_w2``).
- ``orthogonal``: W = sqrt(sigma_w2) Q with Q Haar-distributed (semi-)orthogonal, so W^T W =
  sigma_w2 I when n_in >= n_out (W W^T = sigma_w2 I otherwise), b ~ N(0, sigma_b2)
  (Saxe et al. 2014; Pennington et al. 2017).
"""

_SIGMA_INITS = ("gaussian", "orthogonal")


def _check_activation(name: str | None, what: str = "activation") -> None:
    if name is not None and name not in ACTIVATIONS:
        raise ValueError(f"unknown {what} {name!r}; choose one of: {', '.join(ACTIVATIONS)}")


def _check_init(name: str) -> None:
    if name not in INITS:
        raise ValueError(f"unknown init {name!r}; choose one of: {', '.join(INITS)}")


def _check_sigmas(init: str, sigma_w2, sigma_b2) -> tuple[float, float]:
    if init not in _SIGMA_INITS and (sigma_w2 is not None or sigma_b2 is not None):
        raise ValueError(
            f"sigma_w2/sigma_b2 only apply to init='gaussian' or 'orthogonal', not {init!r}; "
            "drop them or switch the init"
        )
    sigma_w2 = 1.0 if sigma_w2 is None else float(sigma_w2)
    sigma_b2 = 0.0 if sigma_b2 is None else float(sigma_b2)
    if not sigma_w2 > 0 or not sigma_b2 >= 0 or not math.isfinite(sigma_w2 + sigma_b2):
        raise ValueError(
            f"need sigma_w2 > 0 and sigma_b2 >= 0 (both finite), got {sigma_w2}, {sigma_b2}"
        )
    return sigma_w2, sigma_b2


def _check_override(init: str, sigma_w2, sigma_b2) -> None:
    # init(key, sigma_w2=...) overrides (sweep grids) would be silently ignored by other inits.
    if init not in _SIGMA_INITS and (sigma_w2 is not None or sigma_b2 is not None):
        raise ValueError(
            f"sigma_w2/sigma_b2 only apply to init='gaussian' or 'orthogonal', not {init!r}; "
            "drop the override (hyper=) or build the model with one of those inits"
        )


def orthogonal(key: jax.Array, n_in: int, n_out: int, dtype=jnp.float32) -> jax.Array:
    """A Haar-random (semi-)orthogonal matrix of shape (n_in, n_out).

    QR of a Gaussian matrix with the signs of diag(R) folded into Q (Mezzadri 2007), so the
    distribution is exactly Haar. Q^T Q = I if n_in >= n_out, else Q Q^T = I.
    """
    n, m = max(n_in, n_out), min(n_in, n_out)
    a = rng.normal(key, (n, m), dtype)
    q, r = jnp.linalg.qr(a)
    q = q * jnp.sign(jnp.diagonal(r))[None, :]
    return q if n_in >= n_out else q.T


def init_dense(
    key: jax.Array,
    n_in: int,
    n_out: int,
    init: str,
    sigma_w2=1.0,
    sigma_b2=0.0,
    dtype=jnp.float32,
    *,
    transposed: bool = False,
) -> dict[str, jax.Array]:
    """Draw one dense layer ``{"w": (n_in, n_out), "b": (n_out,)}`` with the named init.

    ``sigma_w2`` and ``sigma_b2`` are used by ``gaussian`` and ``orthogonal`` only; they may be
    traced arrays, so a grid of them is one compiled function (no recompilation per value).
    Draws are ``jax.random.normal``/``uniform``'s, bit for bit (via :mod:`gradflow.rng`, which
    computes them about twice as fast on CPU). ``transposed=True`` draws the same W in the
    memory order of W^T, the order a feature-major forward pass reads (see ``mlp_forward``),
    so XLA need not copy it.
    """
    kw, kb = rng.split(key)
    shape = (n_in, n_out)  # w below is W, or W^T if transposed: the same numbers either way
    normal = lambda: rng.normal(kw, shape, dtype, transpose=transposed)  # noqa: E731
    uniform = lambda lim: rng.uniform(kw, shape, dtype, -lim, lim, transpose=transposed)  # noqa: E731
    if init == "nielsen":
        w = normal() / math.sqrt(n_in)
        b = rng.normal(kb, (n_out,), dtype)
    elif init == "standard_normal":
        w = normal()
        b = rng.normal(kb, (n_out,), dtype)
    elif init == "glorot_uniform":
        w = uniform(math.sqrt(6.0 / (n_in + n_out)))
        b = jnp.zeros((n_out,), dtype)
    elif init == "glorot_standard":
        w = uniform(1.0 / math.sqrt(n_in))
        b = jnp.zeros((n_out,), dtype)
    elif init == "lecun":
        w = normal() / math.sqrt(n_in)
        b = jnp.zeros((n_out,), dtype)
    elif init == "he":
        w = normal() * math.sqrt(2.0 / n_in)
        b = jnp.zeros((n_out,), dtype)
    elif init == "gaussian":
        w = normal() * jnp.sqrt(sigma_w2 / n_in).astype(dtype)
        b = rng.normal(kb, (n_out,), dtype) * jnp.sqrt(sigma_b2).astype(dtype)
    elif init == "orthogonal":
        w = orthogonal(kw, n_in, n_out, dtype) * jnp.sqrt(sigma_w2).astype(dtype)
        w = w.T if transposed else w
        b = rng.normal(kb, (n_out,), dtype) * jnp.sqrt(sigma_b2).astype(dtype)
    else:
        _check_init(init)
        raise AssertionError(init)
    # Drawn once: XLA would otherwise recompute the draw inside every consumer (b is broadcast
    # over the batch in z = a W + b; w is read by two matmuls and a norm), see rng.once.
    w = rng.once(w)
    return {"w": w.T if transposed else w, "b": rng.once(b)}


class Model(NamedTuple):
    """A pure-functional model: ``init(key, **hyper) -> params`` and ``apply(params, x) -> y``.

    Attributes:
      init: ``init(key, *, sigma_w2=None, sigma_b2=None) -> params``; the keyword overrides may
        be traced arrays (grid sweeps), ``None`` keeps the config's value.
      apply: ``apply(params, x) -> y``.
      forward: ``forward(params, x, perturb=None) -> (y, hidden)``; ``hidden`` lists the probed
        hidden variables (after ``perturb`` was added), ``perturb`` has ``hidden``'s structure.
      config: the frozen, hashable config the model was built from.
    """

    init: Callable[..., Params]
    apply: Callable[[Params, jax.Array], jax.Array]
    forward: Callable[..., tuple[jax.Array, Any]]
    config: Any

    def __hash__(self):  # functions are rebuilt from config, so config is the identity
        return hash(self.config)

    def __eq__(self, other):
        return isinstance(other, Model) and self.config == other.config


# --------------------------------------------------------------------------------------------
# MLP


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


def mlp(
    widths: Sequence[int],
    activation: str = "tanh",
    init: str = "lecun",
    *,
    sigma_w2: float | None = None,
    sigma_b2: float | None = None,
    output_activation: str | None = None,
    residual: bool = False,
) -> Model:
    """A multilayer perceptron ``z^l = a^{l-1} W^l + b^l``, ``a^l = phi(z^l)``.

    Args:
      widths: layer sizes ``[n_0, n_1, ..., n_L]``; L = len(widths) - 1 weight layers.
      activation: hidden nonlinearity phi, a key of :data:`ACTIVATIONS`.
      init: a name in :data:`INITS`.
      sigma_w2, sigma_b2: weight and bias variances for ``init="gaussian"`` or ``"orthogonal"``
        (defaults 1 and 0).
      output_activation: applied to z^L (default identity: the model outputs logits).
      residual: if True, hidden layers whose input and output widths match become
        ``a^l = a^{l-1} + phi(z^l)`` (the other layers stay plain).

    Returns:
      A :class:`Model`. ``params`` is a list of L dicts ``{"w": (n_{l-1}, n_l), "b": (n_l,)}``;
      ``apply(params, x)`` maps x of shape (batch, n_0) to (batch, n_L); ``forward`` returns the
      pre-activations ``[z^1, ..., z^L]``, each of shape (batch, n_l).
    """
    widths = _check_widths(widths)
    _check_activation(activation)
    _check_activation(output_activation, "output_activation")
    _check_init(init)
    sigma_w2, sigma_b2 = _check_sigmas(init, sigma_w2, sigma_b2)
    config = MLPConfig(
        widths=widths,
        activation=activation,
        init=init,
        sigma_w2=sigma_w2,
        sigma_b2=sigma_b2,
        output_activation=output_activation,
        residual=bool(residual),
    )
    return mlp_from_config(config)


def mlp_from_config(config: MLPConfig) -> Model:
    """Build the :class:`Model` of an :class:`MLPConfig`."""
    widths = config.widths
    n_layers = len(widths) - 1

    def init(key: jax.Array, *, sigma_w2=None, sigma_b2=None) -> list[dict[str, jax.Array]]:
        _check_override(config.init, sigma_w2, sigma_b2)
        sw2 = config.sigma_w2 if sigma_w2 is None else sigma_w2
        sb2 = config.sigma_b2 if sigma_b2 is None else sigma_b2
        keys = rng.split(key, n_layers)
        transposed = _feature_major(widths)
        return [
            init_dense(
                keys[l], widths[l], widths[l + 1], config.init, sw2, sb2, transposed=transposed
            )
            for l in range(n_layers)
        ]

    def forward(params, x, perturb=None):
        out, zs, _ = mlp_forward(config, params, x, perturb)
        return out, zs

    def apply(params, x):
        return mlp_forward(config, params, x)[0]

    return Model(init=init, apply=apply, forward=forward, config=config)


def mlp_forward(config: MLPConfig, params, x, perturb=None):
    """The MLP's forward pass with everything the probes need.

    Args:
      config: the MLP's structure. params: list of L layer dicts. x: (batch, n_0).
      perturb: optional list of L arrays (batch, n_l) added to the pre-activations z^l.

    Returns:
      ``(output, preacts, layer_inputs)``: output (batch, n_L); ``preacts[l] = z^{l+1}`` of shape
      (batch, n_{l+1}); ``layer_inputs[l] = a^l``, the input of weight layer l+1, shape
      (batch, n_l) (``layer_inputs[0] = x``).
    """
    phi = ACTIVATIONS[config.activation]
    phi_out = ACTIVATIONS[config.output_activation or "linear"]
    widths = config.widths
    n_layers = len(params)
    feature_major = _feature_major(widths)  # the same sums either way, in another memory order
    flip = (lambda v: v.T) if feature_major else (lambda v: v)  # noqa: E731
    a = flip(x)
    zs, inputs = [], []
    for l, layer in enumerate(params):
        inputs.append(flip(a))
        if feature_major:  # z^T = W^T a^T: (n_l, n_{l-1}) @ (n_{l-1}, batch)
            z = layer["w"].T @ a + layer["b"][:, None]
        else:  # z = a W, bias axes explicit: tests raise on rank promotion
            z = a @ layer["w"] + layer["b"][None, :]
        if perturb is not None:
            z = z + flip(perturb[l])
        zs.append(flip(z))
        if l == n_layers - 1:
            a = phi_out(z)
        elif config.residual and widths[l] == widths[l + 1]:
            a = a + phi(z)
        else:
            a = phi(z)
    return flip(a), zs, inputs


def _feature_major(widths) -> bool:
    """Whether :func:`mlp_forward` keeps activations as (n, batch): when the first layer holds
    at least half the weights.

    Why: in a seed sweep the input is shared, so the first layer of a whole chunk is one matmul
    of x against the seeds' stacked W^T (drawn in that order, see init_dense). Feature-major,
    its output and the backward pass's dC/dz^1 are already in the order the per-seed layers
    read; row-major, XLA copies both through a transpose on every chunk (a Nielsen-scale sweep
    ran ~1.3x faster without the copies; bench/README.md). When the hidden layers hold the
    weights, row-major's batched matmuls are the faster forms on XLA:CPU (a depth-50 sweep ran
    ~5% slower feature-major).
    """
    hidden = sum(a * b for a, b in zip(widths[1:-1], widths[2:], strict=True))
    return widths[0] * widths[1] >= hidden


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
    conditions). ``forward`` returns the hidden states ``h`` of shape (batch, time, n_hidden), so
    ``jax.grad`` with respect to ``perturb`` gives ``dC/dh_t`` at every step.

    References: Bengio, Simard & Frasconi 1994; Pascanu, Mikolov & Bengio 2013 (arXiv:1211.5063).
    """
    return _recurrent(
        "rnn", n_in, n_hidden, n_out, activation, init, recurrent_init, sigma_w2, sigma_b2
    )


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
    sigma(i) tanh(g)``, ``h_t = sigma(o) tanh(c_t)``; ``y = h_T W_out + b_out``. ``forward``
    returns ``{"h": (batch, time, n_hidden), "c": (batch, time, n_hidden)}``.
    """
    return _recurrent(
        "lstm", n_in, n_hidden, n_out, "tanh", init, recurrent_init, None, None, forget_bias
    )


def _recurrent(
    cell,
    n_in,
    n_hidden,
    n_out,
    activation,
    init,
    recurrent_init,
    sigma_w2,
    sigma_b2,
    forget_bias=1.0,
) -> Model:
    for name, value in (("n_in", n_in), ("n_hidden", n_hidden), ("n_out", n_out)):
        if not isinstance(value, int) or value <= 0:
            raise ValueError(f"{name} must be a positive int, got {value!r}")
    _check_activation(activation)
    _check_init(init)
    _check_init(recurrent_init)
    sigma_w2, sigma_b2 = _check_sigmas(recurrent_init, sigma_w2, sigma_b2)
    config = RNNConfig(
        cell=cell,
        n_in=n_in,
        n_hidden=n_hidden,
        n_out=n_out,
        activation=activation,
        init=init,
        sigma_w2=sigma_w2,
        sigma_b2=sigma_b2,
        recurrent_init=recurrent_init,
        forget_bias=float(forget_bias),
    )
    return recurrent_from_config(config)


def recurrent_from_config(config: RNNConfig) -> Model:
    """Build the :class:`Model` of an :class:`RNNConfig`."""
    n_gates = 4 if config.cell == "lstm" else 1
    n_h = config.n_hidden
    phi = ACTIVATIONS[config.activation]

    def init(key, *, sigma_w2=None, sigma_b2=None):
        _check_override(config.recurrent_init, sigma_w2, sigma_b2)
        sw2 = config.sigma_w2 if sigma_w2 is None else sigma_w2
        sb2 = config.sigma_b2 if sigma_b2 is None else sigma_b2
        k_in, k_rec, k_out = rng.split(key, 3)
        inp = init_dense(k_in, config.n_in, n_gates * n_h, config.init)
        rec_keys = rng.split(k_rec, n_gates)
        recs = [init_dense(k, n_h, n_h, config.recurrent_init, sw2, sb2) for k in rec_keys]
        b = inp["b"] + jnp.concatenate([r["b"] for r in recs])
        if config.cell == "lstm":
            b = b.at[n_h : 2 * n_h].add(config.forget_bias)
        out = init_dense(k_out, n_h, config.n_out, config.init)
        return {
            "w_in": inp["w"],
            "w_rec": jnp.concatenate([r["w"] for r in recs], axis=1),
            "b": b,
            "w_out": out["w"],
            "b_out": out["b"],
        }

    def forward(params, x, perturb=None):
        batch, time, _ = x.shape
        inputs = jnp.einsum("btf,fg->tbg", x, params["w_in"]) + params["b"][None, None, :]
        if perturb is None:
            zeros = jnp.zeros((batch, time, n_h), x.dtype)  # hidden's layout, swapped below
            perturb = {"h": zeros, "c": zeros} if config.cell == "lstm" else zeros
        if config.cell == "lstm":
            p_h = jnp.swapaxes(perturb["h"], 0, 1)
            p_c = jnp.swapaxes(perturb["c"], 0, 1)

            def step(carry, xs):
                h, c = carry
                u, dh, dc = xs
                gates = u + h @ params["w_rec"]
                i, f, g, o = jnp.split(gates, 4, axis=-1)
                c = jax.nn.sigmoid(f) * c + jax.nn.sigmoid(i) * jnp.tanh(g) + dc
                h = jax.nn.sigmoid(o) * jnp.tanh(c) + dh
                return (h, c), (h, c)

            h0 = jnp.zeros((batch, n_h), x.dtype)
            (h, _), (hs, cs) = jax.lax.scan(step, (h0, h0), (inputs, p_h, p_c))
            hidden = {"h": jnp.swapaxes(hs, 0, 1), "c": jnp.swapaxes(cs, 0, 1)}
        else:
            p_h = jnp.swapaxes(perturb, 0, 1)

            def step(h, xs):
                u, dh = xs
                h = phi(u + h @ params["w_rec"]) + dh
                return h, h

            h, hs = jax.lax.scan(step, jnp.zeros((batch, n_h), x.dtype), (inputs, p_h))
            hidden = jnp.swapaxes(hs, 0, 1)
        y = h @ params["w_out"] + params["b_out"][None, :]
        return y, hidden

    def apply(params, x):
        return forward(params, x)[0]

    return Model(init=init, apply=apply, forward=forward, config=config)


def check_inputs(model: Model, x, name: str = "x") -> None:
    """Raise a ValueError naming the problem if ``x`` does not fit ``model``'s input."""
    shape = getattr(x, "shape", None)
    if shape is None:
        raise ValueError(f"{name} must be an array, got {type(x).__name__}")
    config = model.config
    if isinstance(config, MLPConfig):
        if len(shape) != 2 or shape[1] != config.widths[0]:
            raise ValueError(
                f"{name} must have shape (batch, {config.widths[0]}) to match widths[0]="
                f"{config.widths[0]}, got {tuple(shape)}; reshape the data or change widths[0]"
            )
    else:
        if len(shape) != 3 or shape[2] != config.n_in:
            raise ValueError(
                f"{name} must have shape (batch, time, {config.n_in}) for this {config.cell}, "
                f"got {tuple(shape)}"
            )
    if shape[0] == 0:
        raise ValueError(f"{name} is empty (batch size 0); pass at least one example")
