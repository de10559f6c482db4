"""gradflow.per_core: a vmapped factorisation as one LAPACK call per core, same numbers.

Reference: the plain ``jnp.linalg`` call on the whole batch. Equality is exact (each matrix goes
through the same LAPACK routine whichever slice it is in); the number of calls is read from the
traced program, not from a clock.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gradflow import per_core


@pytest.fixture
def four_cores(monkeypatch):
    monkeypatch.setattr(per_core, "_cores", lambda: 4 * jax.local_device_count("cpu"))
    monkeypatch.setattr(per_core, "_jaxlib_splits_itself", lambda: False)


def _calls(fn, *args, name="qr"):
    """How many ``name`` primitives the traced program runs (nested jaxprs included)."""

    def count(jaxpr):
        n = 0
        for eqn in jaxpr.eqns:
            n += eqn.primitive.name == name
            for sub in jax.core.jaxprs_in_params(eqn.params):
                n += count(sub)
        return n

    return count(jax.make_jaxpr(fn)(*args).jaxpr)


def test_vmapped_calls_are_split_per_core_and_bit_identical(four_cores):
    a = jax.random.normal(jax.random.key(0), (6, 3, 9, 7))
    plain = jax.vmap(jax.vmap(jnp.linalg.qr))(a)
    split = jax.jit(jax.vmap(jax.vmap(per_core.qr)))(a)
    for p, s in zip(plain, split, strict=True):
        np.testing.assert_array_equal(np.asarray(p), np.asarray(s))
    # The inner axis (3) is cut into 3 slices; the outer vmap batches each of them.
    assert _calls(jax.vmap(jax.vmap(per_core.qr)), a) == 3
    # An inner axis of 1 leaves the cut to the outer vmap: 4 slices of 6 (2, 2, 1, 1).
    assert _calls(jax.vmap(jax.vmap(per_core.qr)), a[:, :1]) == 4
    assert _calls(jax.vmap(jnp.linalg.qr), a[:, 0]) == 1

    values = jax.vmap(per_core.svd_values)(a[:, 0])
    np.testing.assert_array_equal(
        np.asarray(values), np.asarray(jnp.linalg.svd(a[:, 0], compute_uv=False))
    )
    r = jax.vmap(per_core.qr_r)(a[:, 0])
    np.testing.assert_array_equal(np.asarray(r), np.asarray(jnp.linalg.qr(a[:, 0], mode="r")))


def test_no_split_without_vmap_off_cpu_or_with_a_core_per_device(four_cores, monkeypatch):
    a = jax.random.normal(jax.random.key(1), (5, 4, 4))
    # Without vmap a batch is the caller's own axis: one call.
    assert _calls(per_core.qr, a) == 1
    assert _calls(jax.vmap(per_core.qr), a) == 4
    monkeypatch.setattr(per_core, "_cores", lambda: jax.local_device_count("cpu"))
    assert per_core.parts(64) == 1
    assert _calls(jax.vmap(per_core.qr), a) == 1
    monkeypatch.setattr(per_core, "_cores", lambda: 4 * jax.local_device_count("cpu"))
    assert per_core.parts(64) == 4
    monkeypatch.setattr(per_core, "_jaxlib_splits_itself", lambda: True)
    assert per_core.parts(64) == 1
    monkeypatch.setattr(per_core, "_jaxlib_splits_itself", lambda: False)
    monkeypatch.setattr(per_core, "_cores", lambda: 64 * jax.local_device_count("cpu"))
    assert per_core.parts(64) == per_core.MAX_PARTS  # bounded compile time on big machines
    monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
    assert per_core.parts(64) == 1


def test_stable_spectra_are_unchanged_by_the_split(four_cores, monkeypatch):
    """The spectra (QR per layer, float64 SVD at the end) are the same split or not: the QRs are
    bit-identical, the compiled code around them may round differently in the last bit (as
    between chunk sizes), which the smallest values amplify by the pollution bound of a fold
    (``linalg.GROWTH`` per fold): atol 1e-5 nats is ~100 float32 ulps at |log sigma| ~ 8."""
    import gradflow as gf

    model = gf.mlp([8, 8, 8, 8], "tanh", "gaussian", sigma_w2=1.5)
    x = jax.random.normal(jax.random.key(2), (3, 8))
    out = {}
    for cores in (1, 4):
        monkeypatch.setattr(per_core, "_cores", lambda c=cores: c * jax.local_device_count("cpu"))
        jax.clear_caches()
        out[cores] = [
            np.asarray(gf.sweep(gf.jacobian_singular_values, model, 4, x, method=m, log=True))
            for m in ("exact", "lyapunov")
        ]
    for one, four in zip(out[1], out[4], strict=True):
        np.testing.assert_allclose(one, four, rtol=0, atol=1e-5)


def test_reverse_mode_still_goes_through_the_differentiable_spectra(four_cores):
    """Layer spectra and method="dense" keep plain jnp.linalg.svd: jax.grad works, also at a
    batch of one where the split would leave a custom_vmap (no transpose rule) in the program."""
    import gradflow as gf

    model = gf.mlp([4, 4, 3], "tanh", "gaussian")
    params = model.init(jax.random.key(0))
    x = jax.random.normal(jax.random.key(1), (1, 4))

    def layer_top(p):
        return sum(v.sum() for v in jax.tree.leaves(gf.spectra.layer_singular_values(model, p, x)))

    def dense_sum(p):
        return gf.jacobian_singular_values(model, p, x, method="dense").sum()

    for f in (layer_top, dense_sum):
        grads = jax.grad(f)(params)
        assert all(np.isfinite(np.asarray(g)).all() for g in jax.tree.leaves(grads))
