"""A small built-in CNN composed from gf layers: ``[conv -> tap -> phi -> pool] * n -> dense``.

The LeNet shape (LeCun et al. 1998) with today's defaults (ReLU, He init, max pooling), small
enough to sweep many seeds on a CPU: the vanishing/exploding-gradient probes read it exactly as
they read the MLP (one parameter group and one tap per conv block, then the readout).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

from gradflow import activations, conv, inits
from gradflow import layers as gl
from gradflow.models import Model, from_layers

POOLINGS = ("max", "avg")


@dataclasses.dataclass(frozen=True, kw_only=True)
class CNNConfig:
    """Structure of a :func:`cnn`: everything static under ``jit``."""

    in_shape: tuple[int, ...] = (28, 28, 1)
    channels: tuple[int, ...] = (16, 32)
    n_out: int = 10
    kernel: int | tuple[int, ...] = 3
    activation: str = "relu"
    init: str = "he"
    pool: int | tuple[int, ...] | None = 2
    pooling: str = "max"
    sigma_w2: float = 1.0
    sigma_b2: float = 0.0
    scan: bool | int | str = "auto"

    def to_dict(self) -> dict:
        return {"kind": "cnn", **dataclasses.asdict(self)}


def _positive_ints(value, what: str) -> tuple[int, ...]:
    items = tuple(value) if isinstance(value, (tuple, list)) else None
    if not items or not all(
        isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in items
    ):
        raise ValueError(f"{what} must be a non-empty tuple of positive ints, got {value!r}")
    return items


def cnn(
    in_shape: Sequence[int] = (28, 28, 1),
    channels: Sequence[int] = (16, 32),
    n_out: int = 10,
    *,
    kernel=3,
    activation: str = "relu",
    init: str = "he",
    pool=2,
    pooling: str = "max",
    sigma_w2: float | None = None,
    sigma_b2: float | None = None,
    scan: bool | int | str = "auto",
) -> Model:
    """A CNN: blocks ``z^l = conv_l(a^{l-1})``, ``a^l = pool(phi(z^l))``; ``y = flat(a^L) W + b``.

    Args:
      in_shape: one example, channels last: ``(height, width, channels)`` (2-D) or
        ``(length, channels)`` (1-D); e.g. MNIST is ``(28, 28, 1)``.
      channels: output channels of each conv block (``len(channels)`` blocks).
      n_out: outputs of the dense readout (logits).
      kernel: conv kernel, an int or a tuple (see :func:`gradflow.conv.conv`); SAME padding,
        stride 1, so a block keeps the spatial shape until its pool.
      activation: phi, a key of :data:`gradflow.activations.ACTIVATIONS`.
      init: a name in :data:`gradflow.inits.INITS` for every layer, readout included (He et al.
        2015's Var(w) = 2 / fan_in with fan_in = prod(kernel) * c_in by default).
      pool: the pooling window (and stride) after each block; None or 1 for none.
      pooling: ``"max"`` or ``"avg"`` (LeCun et al. 1998's subsampling, without its gain).
      sigma_w2, sigma_b2: variances for ``init="gaussian"``/``"orthogonal"`` (defaults 1, 0;
        ``model.init(key, sigma_w2=...)`` overrides them as traced values).
      scan: which runs of identical blocks run as one ``lax.scan`` (see
        :func:`gradflow.layers.serial`).

    Returns:
      A :class:`gradflow.Model` with parameter groups ``"conv1"..."convL"`` (``{"w": (*kernel,
      c_in, c_out), "b": (c_out,)}``) and ``"readout"`` (``{"w": (n_flat, n_out), "b"}``), and a
      tap at every conv output z^l named like its block (``activation=phi`` in its metadata),
      shape (batch, *spatial, c_l). Equal blocks that keep the shape (no pooling, equal
      channels) run as one ``lax.scan`` (:func:`gradflow.layers.serial`).

    References:
      LeCun, Bottou, Bengio & Haffner 1998; He, Zhang, Ren & Sun 2015, arXiv:1502.01852.
    """
    in_shape = _positive_ints(in_shape, "in_shape")
    channels = _positive_ints(channels, "channels")
    if not isinstance(n_out, int) or isinstance(n_out, bool) or n_out <= 0:
        raise ValueError(f"n_out must be a positive int, got {n_out!r}")
    activations.get(activation)
    inits.check_init(init)
    sigma_w2, sigma_b2 = inits.check_sigmas(init, sigma_w2, sigma_b2)
    if pooling not in POOLINGS:
        raise ValueError(f"unknown pooling {pooling!r}; choose one of: {', '.join(POOLINGS)}")
    pool = None if pool in (None, 1) else conv.check_window(pool, "pool")
    config = CNNConfig(
        in_shape=in_shape, channels=channels, n_out=n_out,
        kernel=conv.check_window(kernel, "kernel"), activation=activation, init=init, pool=pool,
        pooling=pooling, sigma_w2=sigma_w2, sigma_b2=sigma_b2, scan=scan,
    )  # fmt: skip
    return cnn_from_config(config)


def cnn_from_config(config: CNNConfig) -> Model:
    """Build the :class:`gradflow.Model` of a :class:`CNNConfig`.

    Raises:
      ValueError: the input is too small for the pools (checked here, before any tracing).
    """
    sigmas = {}
    if config.init in ("gaussian", "orthogonal"):
        sigmas = dict(sigma_w2=config.sigma_w2, sigma_b2=config.sigma_b2)
    phi = config.activation
    blocks = []
    for l, c in enumerate(config.channels):
        body = [conv.conv(c, config.kernel, init=config.init, **sigmas), gl.mark(activation=phi)]
        if phi != "linear":
            body.append(gl.activation(phi))
        if config.pool is not None:
            pooler = conv.max_pool if config.pooling == "max" else conv.avg_pool
            body.append(pooler(config.pool))
        blocks.append(gl.named(gl.serial(*body), f"conv{l + 1}"))
    readout = gl.dense(config.n_out, config.init, name="readout", **sigmas)
    net = gl.serial(*blocks, conv.flatten(name="flatten"), readout, scan=config.scan)
    try:  # fail early: rank, pools larger than the feature maps
        net.out_shape(config.in_shape)
    except ValueError as e:
        raise ValueError(f"cnn with in_shape {config.in_shape}: {e}") from None
    model = from_layers(net, config.in_shape, config=config, identity=("cnn", config))
    base_init = model.init

    def init(key, *, sigma_w2=None, sigma_b2=None):
        # Overrides would be silently ignored by the other inits.
        inits.check_override(config.init, sigma_w2, sigma_b2)
        return base_init(key, sigma_w2=sigma_w2, sigma_b2=sigma_b2)

    return dataclasses.replace(model, init=init)
