"""Float32 matmul precision: full float32 by default, on every backend.

JAX's default float32 matmul on NVIDIA GPUs uses TF32 (10 mantissa bits) and on TPUs one
bfloat16 pass (7 bits): "exact" gradient norms and spectra would silently lose 3-5 digits
there, and one seed would give different numbers on CPU and GPU. gradflow's entry points
(sweeps, probes, spectra, diagnosis, training) therefore trace with
``jax.default_matmul_precision("highest")`` unless the caller chose otherwise, either with their
``precision=`` option or by an enclosing ``with jax.default_matmul_precision(...)``.
CPU computes full float32 whatever the setting.
"""

from __future__ import annotations

import contextlib

import jax

PRECISIONS = ("highest", "high", "default")
"""``"highest"``: full float32. ``"high"``: 3 bfloat16 passes or TF32 (~3 fewer digits).
``"default"``: the backend's fastest (TF32 on NVIDIA GPUs, one bfloat16 pass on TPUs)."""


def matmul_precision(precision: str):
    """A context manager setting the float32 matmul precision, after checking the name."""
    if precision not in PRECISIONS:
        raise ValueError(
            f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}; 'highest' "
            "is full float32 on every backend"
        )
    return jax.default_matmul_precision(precision)


def current() -> str | None:
    """The precision in force (None: JAX's default, i.e. nobody chose)."""
    return jax.config.jax_default_matmul_precision


def full_unless_chosen():
    """``"highest"`` unless a precision is already in force (an outer sweep's, or the user's)."""
    return contextlib.nullcontext() if current() is not None else matmul_precision("highest")
