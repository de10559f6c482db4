"""Shared test set-up: strict rank promotion, a key fixture and a pytree comparison helper."""

import importlib.util
import pathlib

import jax
import numpy as np
import pytest

jax.config.update("jax_numpy_rank_promotion", "raise")


@pytest.fixture
def key():
    return jax.random.key(0)


def assert_trees_close(a, b, rtol=1e-6, atol=0.0):
    """Assert two pytrees have the same structure and numerically close leaves."""
    leaves_a, tree_a = jax.tree.flatten(a)
    leaves_b, tree_b = jax.tree.flatten(b)
    assert tree_a == tree_b, f"tree structures differ: {tree_a} vs {tree_b}"
    for x, y in zip(leaves_a, leaves_b, strict=True):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=rtol, atol=atol)


EXPERIMENTS = pathlib.Path(__file__).parent.parent / "experiments"


def load_experiment(name: str):
    """The module of ``experiments/<name>.py`` (scripts are not a package), freshly executed."""
    path = EXPERIMENTS / f"{name.removesuffix('.py')}.py"
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
