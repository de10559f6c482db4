"""gradflow.plots: importing gradflow leaves matplotlib alone; the figures draw and save."""

import subprocess
import sys

import numpy as np

from gradflow import plots
from gradflow.stats import Summary


def test_import_leaves_matplotlib_backend_alone():
    """A notebook's backend (here "svg", set before the import) survives ``import gradflow``,
    and pyplot is not imported until a figure is drawn."""
    code = (
        "import sys, matplotlib; matplotlib.use('svg'); import gradflow, gradflow.plots; "
        "print(matplotlib.get_backend(), 'matplotlib.pyplot' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["svg", "False"]


def test_layer_norms_draws_and_saves(tmp_path):
    median = np.array([1e-3, 1e-2, 1e-1])
    curve = Summary(*(median * f for f in (1.0, 1.0, 0.5, 2.0, 0.4, 2.5)))
    fig = plots.layer_norms({"sigmoid": curve}, title="t")
    ax = fig.axes[0]
    assert ax.get_yscale() == "log" and ax.get_title() == "t"
    np.testing.assert_allclose(ax.lines[0].get_ydata(), median)
    path = plots.save(fig, tmp_path / "sub" / "norms.png")
    assert path.exists() and path.stat().st_size > 5_000
