"""gradflow: exact, at-scale measurement of vanishing and exploding gradients in JAX."""

from gradflow import data, losses, models, probes, sweep as sweeps
from gradflow.losses import LOSSES
from gradflow.models import ACTIVATIONS, INITS, Model, lstm, mlp, rnn
from gradflow.probes import (
    LayerGradNorms,
    TimeGradNorms,
    layer_grad_norms,
    preact_grads,
    time_grad_norms,
)
from gradflow.sweep import Summary, seed_keys, summarize, sweep

__version__ = "0.1.0"

__all__ = [
    "ACTIVATIONS",
    "INITS",
    "LOSSES",
    "LayerGradNorms",
    "Model",
    "Summary",
    "TimeGradNorms",
    "data",
    "layer_grad_norms",
    "losses",
    "lstm",
    "mlp",
    "models",
    "preact_grads",
    "probes",
    "rnn",
    "seed_keys",
    "summarize",
    "sweep",
    "sweeps",
    "time_grad_norms",
]
