"""chunk_size="auto": parse budgets, fit bytes = a + b * chunk, stay within budget."""

from types import SimpleNamespace

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import gradflow as gf
from gradflow.memory import choose_chunk, parse_bytes
from tests.conftest import assert_trees_close


def test_parse_bytes():
    assert parse_bytes("4GiB") == 4 * 2**30
    assert parse_bytes("500MB") == 500 * 10**6
    assert parse_bytes("1.5 kib") == 1536
    assert parse_bytes("2G") == 2 * 10**9
    assert parse_bytes(1e9) == 10**9
    assert parse_bytes(4096) == 4096
    for bad in ("lots", "-1GB", "4 GiBs", 0, True, None):
        with pytest.raises(ValueError, match="memory"):
            parse_bytes(bad)


class _Fake:
    """A stand-in for a compiled program whose memory is a + b * (seeds per device)."""

    def __init__(self, size, n_devices, a=1000, b=100):
        self.bytes = a + b * (size // n_devices)

    def memory_analysis(self):
        return SimpleNamespace(
            argument_size_in_bytes=self.bytes, output_size_in_bytes=0, temp_size_in_bytes=0,
            alias_size_in_bytes=0, generated_code_size_in_bytes=0,
        )  # fmt: skip


def test_choose_chunk_fits_the_line_and_caps_at_the_seed_count():
    compile_at = lambda size: _Fake(size, 2)  # noqa: E731
    choice, compiled = choose_chunk(compile_at, None, 1000, 2, budget=1000 + 100 * 37 + 50)
    assert choice.chunk_size == 74  # 37 seeds on each of 2 devices
    assert (choice.fixed_bytes, choice.per_seed_bytes) == (1000, 100)
    assert choice.predicted_bytes == compiled.bytes <= choice.budget
    assert choice.method == "memory_analysis"
    big, _ = choose_chunk(compile_at, None, 999, 2, budget=10**12)
    assert big.chunk_size == 1000  # all seeds at once, rounded up to the device count
    with pytest.raises(ValueError, match="one seed per device"):
        choose_chunk(compile_at, None, 1000, 2, budget=1050)


def test_choose_chunk_falls_back_to_a_traced_estimate_and_says_so():
    class NoAnalysis:
        def memory_analysis(self):
            raise NotImplementedError

    def trace_at(size):
        return jax.make_jaxpr(lambda x: jnp.tanh(x @ x.T))(jnp.ones((size, 8)))

    with pytest.warns(RuntimeWarning, match="memory_analysis"):
        choice, _ = choose_chunk(lambda size: NoAnalysis(), trace_at, 10_000, 1, budget=10**6)
    assert choice.method == "traced estimate"
    assert 1 <= choice.chunk_size < 10_000 and choice.predicted_bytes <= 10**6


def test_auto_chunk_is_within_budget_and_matches_the_unchunked_sweep():
    model = gf.mlp([6, 24, 3], "tanh")
    rng = np.random.default_rng(2)
    x, y = rng.normal(size=(8, 6)).astype(np.float32), rng.normal(size=(8, 3)).astype(np.float32)
    args = (gf.layer_grad_norms, model, 16, x, y)  # fits measure chunks 4 and 16
    line = gf.auto_chunk_size(*args, loss="mse", memory="1TiB")
    assert line.chunk_size == 16 and line.per_seed_bytes > 0
    budget = int(line.fixed_bytes + 10.5 * line.per_seed_bytes)
    choice = gf.auto_chunk_size(*args, loss="mse", memory=budget)
    assert 1 <= choice.chunk_size < 16
    assert choice.predicted_bytes <= budget  # XLA's own count at the chosen chunk
    auto = gf.sweep(*args, loss="mse", chunk_size="auto", memory=budget)
    assert_trees_close(auto, gf.sweep(*args, loss="mse"), rtol=1e-5, atol=1e-7)
