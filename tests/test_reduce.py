"""gradflow.reduce.sums: every path (variadic, 8 x 8 blocks with and without a tail)
equals a float64 sum."""

import jax
import numpy as np
import pytest

from gradflow.reduce import sums


@pytest.mark.parametrize(
    "shape, axes",
    [
        ((784, 30), (0, 1)),  # 23,520: 367 blocks of 64, a tail of 32 (variadic)
        ((3, 50, 41), (1, 2)),  # stacked: one kept axis, 2,050 = 32 blocks + a tail of 2
        ((2, 4, 256), (2,)),  # per example, no tail
        ((1000, 100), (1,)),  # per example, one block and a tail of 36
        ((7, 30), (1,)),  # short: one variadic reduction
        ((5, 40), (1,)),  # n < 64: one variadic reduction
        ((30, 10), (0,)),  # kept axis last: one variadic reduction
        ((100, 7), (0,)),  # kept axis last, n >= 64: moved to the front, then blocks
        ((256, 256), (0, 1)),  # three levels of blocks: 1,024 -> 127 -> 15 rows of 8
        ((3, 100, 100), (1, 2)),  # stacked, two levels (156 -> 19 rows), a tail of 16
        ((0, 100, 100), (1, 2)),  # an empty kept axis (an empty batch): empty sums
    ],
)
def test_sums_match_float64(shape, axes):
    # Each path sums positive float32 terms in some order: the float64 sum is the reference.
    # Worst case n * 2^-24 relative (1.4e-3 at n = 23,520); blocked and tree orders stay far
    # below it: rtol 1e-6, about 10 float32 ulps.
    rng = np.random.default_rng(0)
    a = rng.standard_normal(shape).astype(np.float32) ** 2
    b = (rng.standard_normal(shape) > 0).astype(np.float32)
    got = jax.jit(lambda u, v: sums(u, v, axes=axes))(a, b)
    single = jax.jit(lambda u: sums(u, axes=axes))(a)
    for g, ref in zip((*got, *single), (a, b, a), strict=True):
        want = ref.astype(np.float64).sum(axis=axes)
        assert g.shape == want.shape
        np.testing.assert_allclose(np.asarray(g, np.float64), want, rtol=1e-6)


def test_sums_under_vmap_equal_unbatched():
    # The block path reshapes the trailing axes; under vmap the batch axis leads.
    rng = np.random.default_rng(1)
    a = rng.standard_normal((4, 784, 30)).astype(np.float32)
    batched = jax.jit(jax.vmap(lambda u: sums(u * u, axes=(0, 1))[0]))(a)
    one = [float(jax.jit(lambda u: sums(u * u, axes=(0, 1))[0])(a[i])) for i in range(4)]
    np.testing.assert_array_equal(np.asarray(batched), np.asarray(one, np.float32))
