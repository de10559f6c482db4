"""gradflow: exact, at-scale measurement of vanishing and exploding gradients in JAX."""

from gradflow import data, diagnose, io, losses, models, probes, spectra, theory, train
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
    "mlp",
    "models",
    "preact_grads",
    "probes",
    "rnn",
    "seed_keys",
    "spectra",
    "spectrum_summary",
    "summarize",
    "sweep",
    "sweeps",
    "theory",
    "time_grad_norms",
    "train",
]
