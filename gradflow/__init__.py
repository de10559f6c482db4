"""gradflow: exact, at-scale measurement of vanishing and exploding gradients in JAX."""

import os

# jax's CPU LAPACK calls (QR, SVD, eigh: orthogonal init, spectra) go to scipy's OpenBLAS, which
# by default starts one thread per core and spin-waits them against XLA's own thread pool. On 2
# cores a vmapped scan of QRs ran 1.1-1.3x slower idle, and 16x to 350x slower beside two busy
# processes (three runs of bench/run.py, spectra section). Single-threaded LAPACK per call is
# what a vmapped/scanned factorisation wants. Only a default: set OPENBLAS_NUM_THREADS to
# override. It takes effect when gradflow is imported before jax/scipy load OpenBLAS.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

from gradflow import (
    data,
    diagnose,
    io,
    losses,
    meanfield,
    models,
    probes,
    spectra,
    stacked,
    theory,
    train,
)
from gradflow import sweep as sweeps
from gradflow.losses import LOSSES
from gradflow.models import ACTIVATIONS, INITS, Model, lstm, mlp, rnn
from gradflow.probes import (
    LayerGradNorms,
    TimeGradNorms,
    layer_grad_norms,
    preact_grads,
    time_grad_norms,
)
from gradflow.spectra import jacobian_singular_values, layer_jacobians, spectrum_summary
from gradflow.sweep import Summary, auto_chunk_size, grid_sweep, seed_keys, summarize, sweep

__version__ = "0.1.0"

__all__ = [
    "ACTIVATIONS",
    "INITS",
    "LOSSES",
    "LayerGradNorms",
    "Model",
    "Summary",
    "TimeGradNorms",
    "auto_chunk_size",
    "data",
    "diagnose",
    "grid_sweep",
    "io",
    "jacobian_singular_values",
    "layer_jacobians",
    "layer_grad_norms",
    "losses",
    "lstm",
    "meanfield",
    "mlp",
    "models",
    "preact_grads",
    "probes",
    "rnn",
    "seed_keys",
    "spectra",
    "stacked",
    "stacked",
    "spectrum_summary",
    "summarize",
    "sweep",
    "sweeps",
    "theory",
    "time_grad_norms",
    "train",
]
