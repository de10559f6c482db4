"""Figure 10 (experiments/fig_coord_check.py): the coord check's width slopes, SP vs muP.

References: Yang et al. 2022, Tensor Programs V (arXiv:2203.03466); microsoft/mup coord check.
"""

import numpy as np
import pytest

from tests.conftest import load_experiment


@pytest.fixture(scope="module")
def checks():
    """The figure's own compute at test size: its MLP [32, n, n, 10] and batch, widths 64 and
    1024 (a 16x range; two compiles, shared by SP and muP), 4 fixed seeds, one Adam step at the
    figure's lr 0.01 (eta n = 0.64..10)."""
    fig = load_experiment("fig_coord_check")
    mlp = dict(fig.CONFIG["mlp"], widths=[64, 1024], seeds=4)
    cfg = dict(fig.CONFIG, models=["mlp"], steps=1, base_width=64, mlp=mlp)
    data = fig.compute(cfg)
    res = {kind: fig.result(data, "mlp", kind, cfg) for kind in ("sp", "mup")}
    assert res["sp"].names == ("layer1", "layer2", "layer3", "output")
    assert fig.layers(res["sp"]) == [0, 1, 3]  # layer3 is the output: drawn once
    return fig, res


def test_sp_grows_with_width_after_one_step_mup_does_not(checks):
    """Per-seed l1 slopes after one step (t = 1) of layer2 (hidden) and the output.

    Theory: SP's update is Theta(eta n) per coordinate (slope 1 for layer2, toward 1.5 for the
    output); muP's is Theta(1) (slope 0). With eta n = 0.64..10 SP's l1 still carries its
    Theta(1) init part and bends below those. Measured (fixed keys, 4 seeds): SP layer2
    0.38..0.48, output 1.21..1.27; muP layer2 -0.02..0.05, output -0.22..-0.18 (the readout's
    n^-1/2 init not yet outgrown after one step). Tolerance: the per-seed SP - muP gap (measured
    0.37..0.49 for layer2, 1.39..1.47 for the output) must exceed 0.25 and 1.0, below every
    measured gap by more than the seed spread (0.1), and far from 0, where no width effect
    would put it. The input layer (fan-in 32, fixed) is flat under both (|slope| < 0.05,
    measured <= 0.011) and muP's layer2 too (|slope| < 0.1).
    """
    fig, res = checks
    sp, mup = (fig.seed_slopes(res[k], step=1) for k in ("sp", "mup"))  # (S, L)
    assert np.all(sp[:, 1] - mup[:, 1] > 0.25), (sp[:, 1], mup[:, 1])
    assert np.all(sp[:, 3] - mup[:, 3] > 1.0), (sp[:, 3], mup[:, 3])
    assert np.all(np.abs(sp[:, 0]) < 0.05) and np.all(np.abs(mup[:, 0]) < 0.05)
    assert np.all(np.abs(mup[:, 1]) < 0.1), mup[:, 1]


def test_update_alone_scales_as_theory(checks):
    """delta = mean |x_1 - x_0| removes the init part, so the hidden layer's slope is near its
    asymptote: 1 under SP, 0 under muP. Measured (fixed keys) 0.91..0.99 and -0.10..-0.06;
    tolerance 0.2, twice the largest offset, for finite-width corrections (relu's support and
    Adam's first step differ slightly between n = 64 and 1024)."""
    fig, res = checks
    sp, mup = (fig.seed_slopes(res[k], stat="delta", step=1) for k in ("sp", "mup"))
    np.testing.assert_allclose(sp[:, 1], 1.0, atol=0.2)
    np.testing.assert_allclose(mup[:, 1], 0.0, atol=0.2)
    # the slope of the seed mean (the figure's point estimate) lies within the per-seed fits
    s = fig.width_slopes(res["sp"], stat="delta", step=1)[1]
    assert sp[:, 1].min() - 0.02 < s < sp[:, 1].max() + 0.02
