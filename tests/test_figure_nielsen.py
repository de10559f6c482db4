"""experiments/fig_nielsen_speed_of_learning.py: the accuracy-vs-depth numbers are the test
accuracy of the trained parameters, checked by a forward pass written in numpy."""

import jax
import numpy as np

import gradflow as gf
from tests.conftest import load_experiment


def _numpy_accuracy(layers, x, y) -> float:
    """Nielsen's feedforward in float64: a = sigmoid(a W + b) through every layer, argmax."""
    a = np.asarray(x, np.float64)
    for layer in layers:
        a = 1 / (1 + np.exp(-(a @ np.asarray(layer["w"], np.float64) + layer["b"])))
    return float(np.mean(np.argmax(a, axis=1) == y))


def test_depth_accuracy_equals_numpy_evaluation():
    fig = load_experiment("fig_nielsen_speed_of_learning")
    cfg = dict(
        fig.CONFIG, acc_hidden=[1], acc_epochs=2, acc_seeds=2, acc_n_train=400, acc_n_test=200
    )
    ds = gf.data.load("mnist")
    runs = fig.depth_runs(cfg, ds)
    x_test, y_test = ds.x_test[:200], ds.y_test[:200]
    result = runs[1]
    acc = np.asarray(result.trajectory.eval_accuracy)
    assert acc.shape == (2, 3)  # (seeds, epochs + 1): one record an epoch
    model = gf.mlp([784, 30, 10], "sigmoid", "nielsen")
    for seed in range(2):
        params = jax.tree.map(lambda a, s=seed: a[s], result.params)
        layers = gf.nets.mlp_layers(model, params)
        assert [l["w"].shape for l in layers] == [(784, 30), (30, 10)]
        want = _numpy_accuracy(layers, x_test, y_test)
        # Counts of correct digits; float32 vs float64 logits could flip an argmax only on a
        # near-tie, and none occurs at these keys.
        assert round(acc[seed, -1] * 200) == round(want * 200), (seed, acc[seed, -1], want)
        assert want > 0.2  # two epochs on 400 digits: it learned something (chance is 0.1)
    # The seeds start from different inits (gf.sweep's fold_in keys): different accuracies.
    assert not np.array_equal(acc[0], acc[1])
