"""gradflow: exact, at-scale measurement of vanishing and exploding gradients in JAX."""

import os

# jax's CPU LAPACK calls (QR, SVD, eigh: orthogonal init, spectra) go to scipy's OpenBLAS, which
# by default starts one thread per core and spin-waits them against XLA's own thread pool. On 2
# cores a vmapped scan of QRs ran 1.1-1.3x slower idle, and 16x to 350x slower beside two busy
# processes (three runs of bench/run.py, spectra section). Single-threaded LAPACK per call is
# what a vmapped/scanned factorisation wants. Only a default: set OPENBLAS_NUM_THREADS to
# override. It takes effect when gradflow is imported before jax/scipy load OpenBLAS.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

from gradflow import (  # noqa: E402
    activations,
    adapters,
    conv,
    coord_check,
    curvature,
    data,
    deep,
    diagnose,
    groups,
    inits,
    io,
    layers,
    linalg,
    losses,
    meanfield,
    models,
    monitor,
    mup,
    nets,
    norm_layers,
    plots,
    probes,
    report,
    spectra,
    stats,
    taps,
    theory,
    train,
    writers,
)
from gradflow import sweep as sweeps  # noqa: E402
from gradflow.activations import ACTIVATIONS  # noqa: E402
from gradflow.adapters import from_equinox, from_nnx  # noqa: E402
from gradflow.cnn import CNNConfig, cnn  # noqa: E402
from gradflow.inits import INITS  # noqa: E402
from gradflow.losses import LOSSES  # noqa: E402
from gradflow.models import Model, from_apply, from_layers  # noqa: E402
from gradflow.nets import lstm, mlp, rnn  # noqa: E402
from gradflow.probes import (  # noqa: E402
    LayerGradNorms,
    TimeGradNorms,
    layer_grad_norms,
    preact_grads,
    time_grad_norms,
)
from gradflow.seeds import seed_keys  # noqa: E402
from gradflow.spectra import (  # noqa: E402
    jacobian_singular_values,
    layer_jacobians,
    spectrum_summary,
)
from gradflow.stats import Summary, summarize  # noqa: E402
from gradflow.sweep import auto_chunk_size, grid_sweep, sweep  # noqa: E402
from gradflow.taps import tap  # noqa: E402
from gradflow.transformer import TransformerConfig, transformer  # noqa: E402

__version__ = "0.1.0"

__all__ = [
    "ACTIVATIONS",
    "CNNConfig",
    "INITS",
    "LOSSES",
    "LayerGradNorms",
    "Model",
    "Summary",
    "TimeGradNorms",
    "TransformerConfig",
    "activations",
    "adapters",
    "auto_chunk_size",
    "cnn",
    "conv",
    "coord_check",
    "curvature",
    "data",
    "deep",
    "diagnose",
    "from_apply",
    "from_equinox",
    "from_layers",
    "from_nnx",
    "grid_sweep",
    "groups",
    "inits",
    "io",
    "jacobian_singular_values",
    "layer_grad_norms",
    "layer_jacobians",
    "layers",
    "linalg",
    "losses",
    "lstm",
    "meanfield",
    "mlp",
    "models",
    "monitor",
    "mup",
    "nets",
    "norm_layers",
    "plots",
    "preact_grads",
    "probes",
    "report",
    "rnn",
    "seed_keys",
    "spectra",
    "spectrum_summary",
    "stats",
    "summarize",
    "sweep",
    "sweeps",
    "tap",
    "taps",
    "theory",
    "time_grad_norms",
    "train",
    "transformer",
    "writers",
]
