"""Full float32 matmul precision by default: the lowered programs carry it, options change it."""

import jax
import numpy as np
import pytest

import gradflow as gf
from gradflow.precision import full_unless_chosen, matmul_precision

MODEL = gf.mlp([5, 4, 3], "tanh")
X = np.random.default_rng(0).normal(size=(6, 5)).astype(np.float32)
Y = np.random.default_rng(1).normal(size=(6, 3)).astype(np.float32)


def _dot_precisions(text: str) -> set[str]:
    """The precision of every dot_general in a lowered StableHLO program."""
    lines = [line for line in text.splitlines() if "dot_general" in line]
    assert lines, "no matmul in the program"
    return {line.split("precision = [")[1].split(",")[0] for line in lines}


def _lowered_chunk(precision: str) -> str:
    sw = gf.sweep_engine
    with matmul_precision(precision):  # as gf.sweep does: the seed's program is traced here
        job = sw._prepare(gf.layer_grad_norms, MODEL, 4, (X, Y), {"loss": "mse"}, None, None, None)
        return sw._run_chunk.lower(*sw._specs(job, 4), **job.static).as_text()


@pytest.mark.parametrize("precision, hlo", [("highest", "HIGHEST"), ("default", "DEFAULT")])
def test_sweep_programs_carry_the_requested_precision(precision, hlo):
    assert _dot_precisions(_lowered_chunk(precision)) == {hlo}


def test_direct_probe_calls_trace_at_full_precision_unless_chosen():
    seen = []

    def spy(p, x):
        seen.append(jax.config.jax_default_matmul_precision)
        return MODEL.apply(p, x)

    model = gf.from_apply(MODEL.init, spy)
    gf.layer_grad_norms(model, model.init(jax.random.key(0)), X, Y)
    assert seen[-1] == "highest"  # the compiled trace (shape checks trace first, outside)
    with jax.default_matmul_precision("default"):  # the caller's choice wins
        gf.layer_grad_norms(model, model.init(jax.random.key(0)), X, Y)
    assert seen[-1] == "default"
    with full_unless_chosen():
        assert jax.config.jax_default_matmul_precision == "highest"


def test_results_equal_on_cpu_and_the_run_dir_records_the_precision(tmp_path):
    a = gf.sweep(gf.layer_grad_norms, MODEL, 3, X, Y, run_dir=tmp_path / "a")
    b = gf.sweep(gf.layer_grad_norms, MODEL, 3, X, Y, precision="default")
    np.testing.assert_array_equal(a.weights, b.weights)  # CPU: full float32 either way
    _, config = gf.io.load_results(tmp_path / "a")
    assert config["config"]["run"]["precision"] == "highest"
    with pytest.raises(ValueError, match="precision must be one of"):
        gf.sweep(gf.layer_grad_norms, MODEL, 3, X, Y, precision="tf32")
