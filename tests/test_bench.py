"""bench/run.py smoke test: the quick matmul and workload-A sections run and write
their JSON.

Speed itself is never asserted (the machine is shared and noisy); only that the benchmark runs,
that its results have the documented keys, and that the sweep agrees with the per-seed loop.
"""

import json
import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]


def test_bench_quick_writes_results(tmp_path):
    out = tmp_path / "results.json"
    cmd = [
        sys.executable,
        str(ROOT / "bench" / "run.py"),
        "--quick",
        "--only",
        "matmul,a",  # the transformer row: bench only (a 20 s compile)
    ]
    subprocess.run(cmd + ["--no-torch", "--out", str(out)], check=True, capture_output=True)
    results = json.loads(out.read_text())
    meta = results["meta"]
    for key in ("device_kind", "platform", "jax", "cpu_count", "date", "quick"):
        assert key in meta, key
    assert meta["quick"] is True and results["matmul"]["gflops"] > 0
    a = results["workload_a"]
    assert set(a["results"]) == {"gradflow.sweep", "gradflow.sweep, defaults", "jit loop"}
    for r in a["results"].values():
        assert r["seconds"] > 0 and 0 < r["fraction_of_peak"] and r["gradflow_speedup"] > 0
    assert a["results"]["jit loop"]["extrapolated_from_seeds"] == 4
    assert a["checks"]["sweep vs jit loop, max rel diff"] < 1e-4
    target = results["targets"]["A: >= 60% of the matmul peak"]
    assert isinstance(target["met"], bool) and target["value"].endswith("%")
