"""Activations: ONE table for the whole package.

Each entry of :data:`ACTIVATIONS` is an :class:`Activation` record holding the JAX function the
models run, the numpy float64 ``phi, phi', phi''`` that mean-field theory integrates, the slopes
of two-slope piecewise-linear phi (closed forms in :mod:`gradflow.theory`), the slopes an
unbounded phi approaches at infinity, and the maximum of phi' for saturating phi (what
:mod:`gradflow.diagnose` calls saturated: ``phi'(z) < 1% of max phi'``). Adding an activation
means adding one record here; nothing else in the package lists activations.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import jax.scipy.special as jsp
import numpy as np
from scipy import special

_SELU_ALPHA = 1.6732632423543772848170429916717
_SELU_SCALE = 1.0507009873554804934193349852946
_LEAKY_SLOPE = 0.01  # the slope of "leaky_relu" (jax and numpy alike)
_ERF_C = 2 / math.sqrt(math.pi)


def _pdf(x):
    return np.exp(-0.5 * x * x) / math.sqrt(2 * math.pi)


def _two(x, ap, am):
    # signbit, not x < 0: at q = 0 the half-line nodes are +0.0 and -0.0, so each half sees its
    # own one-sided slope and the q -> 0 limit of a kinked phi comes out exact.
    a = np.where(np.signbit(x), am, ap)
    return a * x, a + 0 * x, 0 * x


def _sigmoid(x):
    s = special.expit(x)
    return s, s * (1 - s), s * (1 - s) * (1 - 2 * s)


def _tanh(x):
    t = np.tanh(x)
    return t, 1 - t * t, -2 * t * (1 - t * t)


def _gelu(x):
    p, cdf = _pdf(x), special.ndtr(x)
    return x * cdf, cdf + x * p, p * (2 - x * x)


def _selu(x):
    e = _SELU_SCALE * _SELU_ALPHA * np.exp(np.minimum(x, 0.0))  # minimum: no overflow warning
    neg = np.signbit(x)
    return (
        np.where(neg, e - _SELU_SCALE * _SELU_ALPHA, _SELU_SCALE * x),
        np.where(neg, e, _SELU_SCALE),
        np.where(neg, e, 0.0),
    )


def _softplus(x):
    s = special.expit(x)
    return np.logaddexp(0.0, x), s, s * (1 - s)


def _erf(x):
    d = _ERF_C * np.exp(-x * x)
    return special.erf(x), d, -2 * x * d


class Activation(NamedTuple):
    """One activation: how the models run it and what theory and diagnosis know about it.

    Attributes:
      name: the table key.
      fn: the JAX elementwise function the models apply.
      numpy: float64 ``x -> (phi(x), phi'(x), phi''(x))`` for quadrature (kinked phi are
        one-sided at 0: ``phi'(+0.0)`` the right slope, ``phi'(-0.0)`` the left).
      two_slope: ``(a+, a-)`` when phi(x) = a+ x (x > 0), a- x (x < 0) exactly, else None.
      asymptotic: the slopes ``(a+, a-)`` an unbounded phi approaches as |x| -> inf, else None.
      derivative_max: ``max phi'`` for saturating phi (phi' -> 0 at both ends), else None.
    """

    name: str
    fn: Callable[[jax.Array], jax.Array]
    numpy: Callable[[np.ndarray], tuple[np.ndarray, np.ndarray, np.ndarray]]
    two_slope: tuple[float, float] | None = None
    asymptotic: tuple[float, float] | None = None
    derivative_max: float | None = None


def _jax_leaky_relu(z):
    return jax.nn.leaky_relu(z, negative_slope=_LEAKY_SLOPE)


def _jax_gelu(z):
    # The exact (erf) GELU, z * Phi(z): mean-field quadrature needs the true function, not the
    # tanh approximation jax.nn.gelu uses by default.
    return jax.nn.gelu(z, approximate=False)


def _jax_linear(z):
    return z


_TABLE = (
    Activation("sigmoid", jax.nn.sigmoid, _sigmoid, derivative_max=0.25),
    Activation("tanh", jnp.tanh, _tanh, derivative_max=1.0),
    Activation("relu", jax.nn.relu, lambda x: _two(x, 1.0, 0.0), (1.0, 0.0), (1.0, 0.0)),
    Activation(
        "leaky_relu",
        _jax_leaky_relu,
        lambda x: _two(x, 1.0, _LEAKY_SLOPE),
        (1.0, _LEAKY_SLOPE),
        (1.0, _LEAKY_SLOPE),
    ),
    Activation("gelu", _jax_gelu, _gelu, asymptotic=(1.0, 0.0)),
    Activation("selu", jax.nn.selu, _selu, asymptotic=(_SELU_SCALE, 0.0)),
    Activation("softplus", jax.nn.softplus, _softplus, asymptotic=(1.0, 0.0), derivative_max=1.0),
    Activation("erf", jsp.erf, _erf, derivative_max=_ERF_C),
    Activation("linear", _jax_linear, lambda x: _two(x, 1.0, 1.0), (1.0, 1.0), (1.0, 1.0)),
)

ACTIVATIONS: dict[str, Activation] = {a.name: a for a in _TABLE}
"""Name -> :class:`Activation`. ``leaky_relu`` has slope 0.01; ``gelu`` is the exact (erf) one."""


def get(name: str) -> Activation:
    """The :class:`Activation` called ``name``, or a ValueError listing the choices."""
    try:
        return ACTIVATIONS[name]
    except (KeyError, TypeError):
        raise ValueError(
            f"unknown activation {name!r}; choose one of: {', '.join(ACTIVATIONS)}"
        ) from None


def derivative(name: str, z: jax.Array) -> tuple[jax.Array, jax.Array]:
    """``(phi(z), phi'(z))`` elementwise, phi' as autodiff defines it (one JVP)."""
    return jax.jvp(get(name).fn, (z,), (jnp.ones_like(z),))
