"""Convolution, pooling and flatten layers (channels last), each a :class:`gradflow.layers.Layer`.

One example is ``(length, channels)`` (1-D) or ``(height, width, channels)`` (2-D); ``apply``
takes a batch ``(batch, *spatial, channels)``. A window (``kernel``, pool ``window``, ``stride``)
is an int, the same size along every spatial axis (the dimension then comes from the input), or a
tuple whose length fixes the dimension.

Jacobians (one example, over the flattened ``(*spatial, channels)`` arrays, C order):

* ``conv`` and ``avg_pool`` are linear in x, so ``dy/dx`` does not depend on x: it is the linear
  map applied to the identity basis (column i = map(e_i)), one batched call. Each entry is one
  weight (or ``1/window``) times 1 plus exact zeros, so it equals ``jax.jacfwd`` exactly.
* ``global_avg_pool``: ``[I_c I_c ... I_c] / n_positions`` written out; ``flatten``: the identity.
* ``max_pool`` is piecewise linear: ``jax.jacfwd`` (ties send the derivative to one input, as
  ``jax.grad`` does).

References:
  LeCun, Bottou, Bengio & Haffner 1998, "Gradient-based learning applied to document
  recognition" (convolution and subsampling layers); He, Zhang, Ren & Sun 2015, "Delving deep
  into rectifiers", arXiv:1502.01852 (the fan-in init, fan_in = prod(kernel) * c_in); Xiao et al.
  2018, arXiv:1806.05393 (mean-field theory of CNNs: the same sigma_w2 / fan_in convention).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax import lax

from gradflow import inits
from gradflow.layers import Diag, Layer

PADDINGS = ("SAME", "VALID")
"""``SAME``: output length ceil(n / stride), zeros padded with the smaller half first (XLA's and
TensorFlow's rule); ``VALID``: no padding, output length floor((n - k) / stride) + 1."""

_DIMENSION_NUMBERS = {1: ("NWC", "WIO", "NWC"), 2: ("NHWC", "HWIO", "NHWC")}
_EXAMPLE = {1: "length, channels", 2: "height, width, channels"}


class Geometry(NamedTuple):
    """A window's per-axis sizes for one input: ``window``, ``stride`` and the output's spatial
    shape ``out`` (tuples of length 1 or 2)."""

    window: tuple[int, ...]
    stride: tuple[int, ...]
    out: tuple[int, ...]


def check_window(value, what: str) -> int | tuple[int, ...]:
    """``value`` as a positive int or a tuple of 1 or 2 positive ints, else a ValueError."""
    items = value if isinstance(value, (tuple, list)) else (value,)
    ok = all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in items)
    if not ok or not 1 <= len(items) <= 2:
        raise ValueError(
            f"{what} must be a positive int or a tuple of 1 or 2 positive ints (1-D or 2-D), "
            f"got {value!r}"
        )
    return tuple(items) if isinstance(value, (tuple, list)) else int(value)


def _check_ranks(window, stride) -> None:
    if isinstance(window, tuple) and isinstance(stride, tuple) and len(window) != len(stride):
        raise ValueError(
            f"window {window} and stride {stride} have different lengths; give both for the same "
            "dimension (or an int for the same size along every axis)"
        )


def _padding(padding) -> str:
    name = padding.upper() if isinstance(padding, str) else padding
    if name not in PADDINGS:
        raise ValueError(f"unknown padding {padding!r}; choose 'SAME' or 'VALID'")
    return name


def geometry(kind: str, window, stride, padding: str, shape, batched: bool = False) -> Geometry:
    """Check ``shape`` against a window and return the per-axis sizes (see :class:`Geometry`).

    Args:
      kind: the layer's kind, for messages. window, stride: ints or tuples (see the module
        docstring). padding: ``"SAME"`` or ``"VALID"``.
      shape: one example's shape ``(*spatial, channels)``, or a batch's if ``batched``.

    Raises:
      ValueError: the rank does not fit (1-D or 2-D, or the tuples' length), or a window is
        larger than the input with ``VALID`` padding.
    """
    shape = tuple(shape)
    example = shape[1:] if batched else shape
    fixed = {len(v) for v in (window, stride) if isinstance(v, tuple)}
    nd = len(example) - 1
    if len(fixed) > 1 or nd not in _EXAMPLE or (fixed and fixed != {nd}):
        dims = sorted(fixed) if len(fixed) == 1 else sorted(_EXAMPLE)
        want = " or ".join(f"({'batch, ' if batched else ''}{_EXAMPLE[d]})" for d in dims)
        fix = "reshape the input" + (" or give a window tuple of its rank" if fixed else "")
        raise ValueError(
            f"{kind} expects {'x' if batched else 'one example'} of shape {want}, channels last, "
            f"got {shape}; {fix}"
        )
    per_axis = lambda v: v if isinstance(v, tuple) else (v,) * nd  # noqa: E731
    window, stride, spatial = per_axis(window), per_axis(stride), example[:-1]
    if padding == "VALID" and any(k > n for k, n in zip(window, spatial, strict=True)):
        fix = "padding='SAME', a smaller kernel" if kind == "conv" else "a smaller window"
        raise ValueError(
            f"{kind} window {window} is larger than the input's spatial shape {spatial} (no "
            f"padding); use {fix} or a larger input"
        )
    if padding == "SAME":
        out = tuple(-(-n // s) for n, s in zip(spatial, stride, strict=True))
    else:
        out = tuple((n - k) // s + 1 for n, k, s in zip(spatial, window, stride, strict=True))
    return Geometry(window, stride, out)


def _linear_jacobian(fn, x1: jax.Array) -> jax.Array:
    """The (out_size, in_size) Jacobian of a linear ``fn`` (batched) for one example ``x1``:
    ``fn`` applied to the identity basis, column i = fn(e_i)."""
    n = x1.size
    basis = jnp.eye(n, dtype=x1.dtype).reshape(n, *x1.shape)
    return fn(basis).reshape(n, -1).T


# --------------------------------------------------------------------------------------------
# Convolution


def init_conv(
    key: jax.Array,
    kernel: tuple[int, ...],
    c_in: int,
    c_out: int,
    init: str,
    sigma_w2=1.0,
    sigma_b2=0.0,
    dtype=jnp.float32,
) -> dict[str, jax.Array]:
    """Draw one convolution ``{"w": (*kernel, c_in, c_out), "b": (c_out,)}``.

    The kernel is a dense layer's ``W: (fan_in, c_out)`` with ``fan_in = prod(kernel) * c_in``
    (:func:`gradflow.inits.init_dense`, so every init of :data:`gradflow.inits.INITS` applies
    with that fan-in: ``he`` Var(w) = 2 / fan_in, ``lecun`` 1 / fan_in, ``gaussian``
    sigma_w2 / fan_in with b ~ N(0, sigma_b2)), reshaped to ``(*kernel, c_in, c_out)``.
    ``orthogonal`` makes that (fan_in, c_out) matrix semi-orthogonal (the flattened-kernel
    convention of Keras, not Xiao et al.'s delta-orthogonal kernel). ``glorot_uniform`` counts
    the convolutional fan-out ``prod(kernel) * c_out`` (as Keras and Flax do): its limit is
    sqrt(6 / (fan_in + fan_out)). ``sigma_w2``/``sigma_b2`` may be traced arrays.

    References: He et al. 2015, arXiv:1502.01852; Glorot & Bengio 2010.
    """
    fan_in = math.prod(kernel) * c_in
    p = inits.init_dense(key, fan_in, c_out, init, sigma_w2, sigma_b2, dtype)
    w = p["w"]
    if init == "glorot_uniform":  # U[-a, a] scaled by s is U[-s a, s a]
        fan_out = math.prod(kernel) * c_out
        w = w * math.sqrt((fan_in + c_out) / (fan_in + fan_out))
    return {"w": w.reshape(*kernel, c_in, c_out), "b": p["b"]}


def conv(
    n_out: int,
    kernel,
    *,
    stride=1,
    padding: str = "SAME",
    init: str = "he",
    sigma_w2: float | None = None,
    sigma_b2: float | None = None,
    name: str | None = None,
) -> Layer:
    """A convolution ``y[p, o] = sum_{d, i} x[p * stride + d - pad, i] w[d, i, o] + b[o]``.

    (A cross-correlation: the kernel is not flipped, as in every deep-learning library.)

    Args:
      n_out: output channels c_out.
      kernel: an int (the same along every spatial axis; 1-D or 2-D from the input) or a tuple
        of 1 or 2 ints (fixes the dimension).
      stride: an int or a tuple like ``kernel``. padding: ``"SAME"`` or ``"VALID"``
        (:data:`PADDINGS`).
      init: a name in :data:`gradflow.inits.INITS` (see :func:`init_conv`).
      sigma_w2, sigma_b2: variances for ``init="gaussian"``/``"orthogonal"``; ``hyper``
        overrides of the same names (traced) take precedence in ``init``, as for ``dense``.
      name: the layer's name in a serial.

    Shapes: params ``{"w": (*kernel, c_in, c_out), "b": (c_out,)}``; x ``(batch, *spatial,
    c_in)`` -> y ``(batch, *out, c_out)``, out = ceil(n / stride) (SAME) or
    floor((n - k) / stride) + 1 (VALID).

    Jacobian: the bias-free convolution applied to the identity basis (exact; module docstring).
    """
    if not isinstance(n_out, int) or isinstance(n_out, bool) or n_out <= 0:
        raise ValueError(f"n_out must be a positive int, got {n_out!r}")
    kernel, stride = check_window(kernel, "kernel"), check_window(stride, "stride")
    _check_ranks(kernel, stride)
    padding = _padding(padding)
    inits.check_init(init)
    sw2, sb2 = inits.check_sigmas(init, sigma_w2, sigma_b2)
    sweepable = init in ("gaussian", "orthogonal")

    def geo(shape, batched=False):
        return geometry("conv", kernel, stride, padding, shape, batched)

    def init_fn(key, in_shape, hyper):
        w2 = hyper.get("sigma_w2", sw2) if sweepable else sw2
        b2 = hyper.get("sigma_b2", sb2) if sweepable else sb2
        return init_conv(key, geo(in_shape).window, in_shape[-1], n_out, init, w2, b2)

    def linear(w, x):
        g = geo(x.shape, batched=True)
        dtype = jnp.result_type(x, w)  # float64 inputs under x64 meet float32 kernels
        dims = _DIMENSION_NUMBERS[len(g.window)]
        return lax.conv_general_dilated(
            x.astype(dtype), w.astype(dtype), g.stride, padding, dimension_numbers=dims
        )

    def apply(params, x):
        y = linear(params["w"], x)
        return y + params["b"].reshape((1,) * (y.ndim - 1) + params["b"].shape)

    def out_shape(in_shape):
        return (*geo(in_shape).out, n_out)

    def jac(params, x1):
        return _linear_jacobian(lambda e: linear(params["w"], e), x1)

    spec = ("conv", n_out, kernel, stride, padding, init, sw2, sb2)
    return Layer("conv", init_fn, apply, out_shape, spec, name, True, jac)


# --------------------------------------------------------------------------------------------
# Pooling and flatten


def _pool(kind: str, window, stride, name: str | None) -> Layer:
    window = check_window(window, "window")
    stride = window if stride is None else check_window(stride, "stride")
    _check_ranks(window, stride)

    def geo(shape, batched=False):
        return geometry(kind, window, stride, "VALID", shape, batched)

    def apply(params, x):
        g = geo(x.shape, batched=True)
        dims, strides = (1, *g.window, 1), (1, *g.stride, 1)
        if kind == "max_pool":
            return lax.reduce_window(x, -jnp.inf, lax.max, dims, strides, "VALID")
        total = lax.reduce_window(x, 0.0, lax.add, dims, strides, "VALID")
        return total / math.prod(g.window)

    def out_shape(in_shape):
        return (*geo(in_shape).out, in_shape[-1])

    def jac(params, x1):
        return _linear_jacobian(lambda e: apply(None, e), x1)

    avg = kind == "avg_pool"
    return Layer(
        kind, None, apply, out_shape, (kind, window, stride), name, False, jac if avg else None
    )


def avg_pool(window, stride=None, *, name: str | None = None) -> Layer:
    """Average pooling over each channel: the mean of every ``window`` (VALID, no padding).

    LeCun et al. 1998's subsampling layer without its trainable gain and bias.

    Args:
      window: an int or a tuple of 1 or 2 ints (see :func:`conv`'s ``kernel``).
      stride: defaults to ``window`` (non-overlapping windows).

    Shapes: x ``(batch, *spatial, c)`` -> ``(batch, *out, c)``, out = floor((n - k) / s) + 1.
    Jacobian: the pool applied to the identity basis (linear; entries 1 / prod(window) or 0).
    """
    return _pool("avg_pool", window, stride, name)


def max_pool(window, stride=None, *, name: str | None = None) -> Layer:
    """Max pooling over each channel: the largest entry of every ``window`` (VALID).

    Args and shapes as :func:`avg_pool`. Jacobian: ``jax.jacfwd`` (a 0/1 selection matrix; for
    ties it picks one input, as ``jax.grad`` does). The gradient reaches one unit per window.
    """
    return _pool("max_pool", window, stride, name)


def flatten(*, name: str | None = None) -> Layer:
    """``(batch, *shape) -> (batch, prod(shape))`` in C order; Jacobian the identity (Diag)."""

    def apply(params, x):
        return x.reshape(x.shape[0], -1)

    def out_shape(in_shape):
        return (math.prod(in_shape),)

    def jac(params, x1):
        return Diag(jnp.ones((x1.size,), x1.dtype))

    return Layer("flatten", None, apply, out_shape, ("flatten",), name, False, jac)


def global_avg_pool(*, name: str | None = None) -> Layer:
    """The mean over all spatial positions: ``(batch, *spatial, c) -> (batch, c)`` (Lin, Chen &
    Yan 2014, arXiv:1312.4400).

    Jacobian: ``[I_c I_c ... I_c] / n`` with n = prod(spatial), shape (c, n * c).
    """

    def check(shape, batched=False):
        return geometry("global_avg_pool", 1, 1, "VALID", shape, batched)

    def apply(params, x):
        check(x.shape, batched=True)
        return jnp.mean(x, axis=tuple(range(1, x.ndim - 1)))

    def out_shape(in_shape):
        check(in_shape)
        return (in_shape[-1],)

    def jac(params, x1):
        check(x1.shape)
        c, n = x1.shape[-1], x1.size // x1.shape[-1]
        return jnp.tile(jnp.eye(c, dtype=x1.dtype), (1, n)) / n

    return Layer("global_avg_pool", None, apply, out_shape, ("global_avg_pool",), name, False, jac)
