"""Sharded sweeps: 8 simulated CPU devices give the single-device numbers.

The device count is fixed when jax starts, so the 8-device run happens in a subprocess with
``XLA_FLAGS=--xla_force_host_platform_device_count=8``.
"""

import json
import os
import subprocess
import sys
import textwrap

import jax
import numpy as np
import pytest

import gradflow as gf

SCRIPT = textwrap.dedent(
    """
    import json, sys
    import jax, numpy as np
    import gradflow as gf

    S = gf.sweep_engine
    assert jax.local_device_count() == 8, jax.local_devices()
    model = gf.mlp([6, 12, 3], "tanh", "gaussian", sigma_w2=1.5, sigma_b2=0.1)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(5, 6)).astype(np.float32)
    y = rng.normal(size=(5, 3)).astype(np.float32)
    run = lambda n, **kw: gf.sweep(gf.layer_grad_norms, model, n, x, y, loss="mse", **kw)

    reference = run(37, devices=1)  # one device, one chunk
    sharded = run(37, chunk_size=10)  # all 8 devices; chunks rounded up to 16, last one padded
    few = run(5)  # fewer seeds than devices
    sub = run(37, devices=4, chunk_size=8)
    grouped = run(37, chunk_size=20, vmap_size=5)  # groups of 8 (5 rounded up), chunks of 24
    # Exact spectra: a while_loop whose trip count differs per seed (windows of the graded SVD)
    spectra = lambda **kw: gf.sweep(
        gf.jacobian_singular_values, model, 16, x, method="exact", log=True, **kw
    )
    spectra_gap = float(np.max(np.abs(spectra(devices=1) - spectra(vmap_size=8))))

    # the chunk really is split across the devices, two seeds each
    job = S._prepare(gf.layer_grad_norms, model, 37, (x, y), {"loss": "mse"}, None, None, None)
    out = S._run_chunk(*S._inputs(job, 0, 16), **job.static)
    shard_rows = sorted({s.data.shape[0] for s in out.weights.addressable_shards})
    job = S._prepare(gf.layer_grad_norms, model, 37, (x, y), {"loss": "mse"}, None, None, None, 8)
    out = S._run_chunk(*S._inputs(job, 0, 24), **job.static)  # 3 groups of 8, one seed each
    group_rows = sorted({s.data.shape[0] for s in out.weights.addressable_shards})
    pairs = lambda a, b: zip(jax.tree.leaves(a), jax.tree.leaves(b))
    rel = lambda u, v: float(np.max(np.abs(u - v) / (np.abs(v) + 1e-6)))
    err = lambda a, b: max(rel(u, v) for u, v in pairs(a, b))
    json.dump({
        "n_devices_used": len(out.weights.sharding.device_set),
        "shard_rows": shard_rows,
        "group_rows": group_rows,
        "grouped": err(grouped, reference),
        "shapes": [reference.weights.shape, sharded.weights.shape, few.weights.shape],
        "sharded": err(sharded, reference),
        "few": err(few, jax.tree.map(lambda r: r[:5], reference)),
        "sub": err(sub, reference),
        "spectra": spectra_gap,
    }, sys.stdout)
    """
)


def test_sharded_sweep_equals_single_device():
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=8"}
    env.pop("JAX_PLATFORMS", None)
    proc = subprocess.run(
        [sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout)
    assert result["n_devices_used"] == 8
    assert result["shard_rows"] == [2]
    assert result["group_rows"] == [3]  # a chunk of 24 run as 3 groups: still 3 seeds per device
    assert result["shapes"] == [[37, 2], [37, 2], [5, 2]]
    # Same keys, same networks; only XLA's blocking of the batched matmuls may differ (float32).
    for name in ("sharded", "few", "sub", "grouped"):
        assert result[name] < 1e-5, (name, result)
    assert result["spectra"] < 1e-4  # nats; float32 folds blocked differently per batch size


def test_devices_argument_is_validated():
    model = gf.mlp([4, 3], "tanh")
    x, y = np.ones((2, 4), np.float32), np.ones((2, 3), np.float32)
    n_local = jax.local_device_count()
    for bad in (0, n_local + 1):
        with pytest.raises(ValueError, match="local devices of this process"):
            gf.sweep(gf.layer_grad_norms, model, 3, x, y, devices=bad)
    with pytest.raises(ValueError, match="non-empty list"):
        gf.sweep(gf.layer_grad_norms, model, 3, x, y, devices=[])
