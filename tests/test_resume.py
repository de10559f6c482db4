"""Resumable sweeps: kill -9 mid-run, corrupted and partial chunk files, mismatched runs."""

import json
import os
import signal
import subprocess
import sys
import textwrap

import jax
import numpy as np
import pytest

import gradflow as gf
from gradflow import io

N_SEEDS, CHUNK = 22, 4  # six chunks, the last one padded
MODEL = gf.mlp([6, 12, 3], "tanh", "gaussian", sigma_w2=1.5)


def _data():
    rng = np.random.default_rng(0)
    return rng.normal(size=(5, 6)).astype(np.float32), rng.normal(size=(5, 3)).astype(np.float32)


def _sweep(run_dir=None, model=MODEL, data=None, **kw):
    x, y = _data() if data is None else data
    kw = {"loss": "mse", "chunk_size": CHUNK, **kw}
    return gf.sweep(gf.layer_grad_norms, model, N_SEEDS, x, y, run_dir=run_dir, **kw)


def _assert_identical(a, b):
    assert jax.tree.structure(a) == jax.tree.structure(b)
    for u, v in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_array_equal(u, v)


@pytest.fixture
def saved_chunks(monkeypatch):
    """Records the index of every chunk computed (not loaded) and saved."""
    saved = []
    save = io.RunDir.save_chunk

    def spy(self, index, leaves):
        saved.append(index)
        save(self, index, leaves)

    monkeypatch.setattr(io.RunDir, "save_chunk", spy)
    return saved


CHILD = textwrap.dedent(
    """
    import sys
    import numpy as np
    import gradflow as gf
    from gradflow import io

    save = io.RunDir.save_chunk

    def save_then_hang(self, index, leaves):  # stands in for a long sweep killed midway
        save(self, index, leaves)
        if index >= 1:
            print("saved", index, flush=True)  # tells the test the chunks landed
            sys.stdin.read()  # blocks until the test kills this process

    io.RunDir.save_chunk = save_then_hang
    data = np.load(sys.argv[2])
    model = gf.mlp([6, 12, 3], "tanh", "gaussian", sigma_w2=1.5)
    gf.sweep(gf.layer_grad_norms, model, {n}, data["x"], data["y"], loss="mse",
             chunk_size={chunk}, run_dir=sys.argv[1])
    """
).format(n=N_SEEDS, chunk=CHUNK)


def test_sigkill_midway_then_rerun_gives_identical_results(tmp_path, saved_chunks):
    run_dir, data = tmp_path / "run", tmp_path / "data.npz"
    x, y = _data()
    np.savez(data, x=x, y=y)
    log = tmp_path / "child.log"
    with open(log, "w") as stderr:
        child = subprocess.Popen(
            [sys.executable, "-c", CHILD, str(run_dir), str(data)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=stderr,
            text=True,
        )
    try:
        # Waits on the child's own signal, not on a clock: a line once chunk 1 is saved, or EOF
        # if it died first.
        line = child.stdout.readline()
        assert line == "saved 1\n", log.read_text()[-3000:]
        assert len(list((run_dir / io.CHUNKS).glob("*.chunk"))) == 2
        os.kill(child.pid, signal.SIGKILL)
    finally:
        if child.poll() is None:
            child.kill()
        child.communicate()
    assert child.returncode == -signal.SIGKILL
    assert not (run_dir / "results.npz").exists()

    resumed = _sweep(run_dir)
    assert saved_chunks == [2, 3, 4, 5]  # chunks 0 and 1 were loaded, not recomputed
    _assert_identical(resumed, _sweep())
    arrays, meta = io.load_results(run_dir)
    np.testing.assert_array_equal(arrays["weights"], resumed.weights)
    assert meta["config"]["run"]["fn"] == "gradflow.probes.layer_grad_norms"
    assert meta["versions"]["jax"] and "device" in meta and "git_sha" in meta


def test_corrupted_and_partial_chunks_are_recomputed_not_loaded(tmp_path, saved_chunks):
    run_dir = tmp_path / "run"
    reference = _sweep(run_dir)
    assert saved_chunks == [0, 1, 2, 3, 4, 5]
    chunks = run_dir / io.CHUNKS
    # chunk 1: valid header and loadable .npz, but the numbers changed (checksum mismatch)
    path = chunks / "00000001.chunk"
    header, _ = path.read_bytes().split(b"\n", 1)
    fake = io.RunDir(run_dir, {}, None)
    fake.save_chunk(1, [np.zeros_like(a[4:8]) for a in jax.tree.leaves(reference)])
    path.write_bytes(header + b"\n" + path.read_bytes().split(b"\n", 1)[1])
    # chunk 3: the file was cut short
    path = chunks / "00000003.chunk"
    path.write_bytes(path.read_bytes()[:100])
    # chunk 4: killed while writing it, so only a truncated temp file exists
    path = chunks / "00000004.chunk"
    (chunks / f"{io._TEMP}00000004.chunk.123.abcd").write_bytes(path.read_bytes()[:50])
    path.unlink()
    # chunk 5: right checksum but the wrong shapes (a file from some other run)
    fake.save_chunk(5, [np.zeros((3, 7), np.float32)] * len(jax.tree.leaves(reference)))

    saved_chunks.clear()
    resumed = _sweep(run_dir)
    assert saved_chunks == [1, 3, 4, 5]
    _assert_identical(resumed, reference)
    assert not list(chunks.glob(f"{io._TEMP}*"))  # stale temp files are removed, never read

    saved_chunks.clear()
    _assert_identical(_sweep(run_dir), reference)  # a finished run recomputes nothing
    assert saved_chunks == []


def test_mismatched_run_dir_is_refused(tmp_path):
    run_dir = tmp_path / "run"
    _sweep(run_dir)
    x, y = _data()
    cases = {
        "model.init": dict(model=gf.mlp([6, 12, 3], "tanh")),
        "args.0": dict(data=(x + 1, y)),
        "kwargs.loss": dict(loss="sigmoid_xent"),
        "chunk_size": dict(chunk_size=8),
        "hyper.sigma_w2": dict(hyper={"sigma_w2": 2.0}),
    }
    for field, kw in cases.items():
        with pytest.raises(ValueError, match=rf"different sweep \({field}: stored") as e:
            _sweep(run_dir, **kw)
        assert "new --out/run_dir" in str(e.value) and "delete" in str(e.value)
    keys = gf.seed_keys(N_SEEDS + 1)  # explicit keys: their hash, so never extended
    with pytest.raises(ValueError, match="keys"):
        gf.sweep(gf.layer_grad_norms, MODEL, keys, x, y, loss="mse", chunk_size=4,
                 run_dir=run_dir)  # fmt: skip

    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("not a run")
    with pytest.raises(ValueError, match="holds no gradflow run"):
        _sweep(other)


def test_auto_chunk_resumes_with_the_stored_chunk_size(tmp_path, saved_chunks):
    run_dir = tmp_path / "run"
    first = _sweep(run_dir)
    # make it a run that chunk_size="auto" started (and that chose CHUNK seeds per chunk)
    manifest = json.loads((run_dir / io.MANIFEST).read_text())
    manifest["fingerprint"]["chunk_size"] = "auto"
    (run_dir / io.MANIFEST).write_text(json.dumps(manifest))
    saved_chunks.clear()
    # whatever this budget would pick, the run keeps the chunks it started with
    again = _sweep(run_dir, chunk_size="auto", memory="1GiB")
    assert saved_chunks == []
    _assert_identical(again, first)


def test_cli_resumes_a_matching_out_and_refuses_a_different_one(tmp_path, capsys, saved_chunks):
    from gradflow import cli

    out = tmp_path / "run"
    argv = (
        "sweep --widths 6,12,3 --activation tanh --init gaussian --sigma-w2 1.5 --loss mse "
        f"--data gaussian --batch 5 --seeds {N_SEEDS} --chunk-size {CHUNK} --quiet --out {out}"
    ).split()
    assert cli.main(argv) == 0
    first, _ = io.load_results(out)
    (out / io.CHUNKS / "00000002.chunk").unlink()  # as if killed before chunk 2 landed
    saved_chunks.clear()
    capsys.readouterr()
    assert cli.main(argv) == 0
    assert saved_chunks == [2] and "resumed the run" in capsys.readouterr().out
    again, meta = io.load_results(out)
    np.testing.assert_array_equal(again["weights"], first["weights"])
    assert meta["config"]["seeds"] == N_SEEDS and "git_sha" in meta

    argv[argv.index("--seeds") + 1] = str(N_SEEDS + 1)  # more seeds: the run dir grows
    argv.remove("--quiet")  # --quiet silences the counts too
    assert cli.main(argv) == 0
    assert "loaded 5 chunk(s) from disk, computed 1" in capsys.readouterr().err
    argv[argv.index("--sigma-w2") + 1] = "2.0"  # another sweep: refused
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "different sweep (" in err and "delete" in err


def test_models_sharing_a_config_never_share_a_program_or_a_run(tmp_path):
    # Two custom models with one config but other functions: each gets its own compiled program
    # (different results) and a run directory of one is refused by the other.
    x, y = _data()
    base = MODEL
    doubled = gf.Model(init=base.init, apply=lambda p, x: 2 * base.apply(p, x), config=base.config)
    shifted = gf.Model(init=base.init, apply=lambda p, x: base.apply(p, x) + 1, config=base.config)
    a = gf.sweep(gf.layer_grad_norms, doubled, 4, x, y, loss="mse", quiet=True)
    b = gf.sweep(gf.layer_grad_norms, shifted, 4, x, y, loss="mse", quiet=True)
    assert not np.allclose(a.loss, b.loss)
    run_dir = tmp_path / "run"
    gf.sweep(gf.layer_grad_norms, doubled, 4, x, y, loss="mse", quiet=True, run_dir=run_dir)
    with pytest.raises(ValueError, match=r"different sweep \(model\.apply: stored"):
        gf.sweep(gf.layer_grad_norms, shifted, 4, x, y, loss="mse", quiet=True, run_dir=run_dir)


def test_more_seeds_extend_a_run_dir_and_fewer_load_a_subset(tmp_path, saved_chunks, capsys):
    """Seeds 0..n-1 are the same networks for any n, so a run dir grows exactly: only the old
    partial last chunk and the new chunks are computed, and the result equals one run."""
    run_dir = tmp_path / "run"
    x, y = _data()

    def run(n):
        return gf.sweep(gf.layer_grad_norms, MODEL, n, x, y, loss="mse", chunk_size=CHUNK,
                        run_dir=run_dir)  # fmt: skip

    run(N_SEEDS)  # 22 seeds: chunks 0..5, the last holding 2
    saved_chunks.clear()
    capsys.readouterr()
    grown = run(N_SEEDS + 7)  # 29 seeds: chunk 5 recomputed (now 4), chunks 6 and 7 new
    assert saved_chunks == [5, 6, 7]
    err = capsys.readouterr().err
    assert f"from {N_SEEDS} to {N_SEEDS + 7} seeds" in err and "loaded 5 chunk(s)" in err
    one_run = gf.sweep(gf.layer_grad_norms, MODEL, N_SEEDS + 7, x, y, loss="mse", chunk_size=CHUNK)
    _assert_identical(grown, one_run)
    saved_chunks.clear()
    subset = run(10)  # loads chunks 0..2 (the third sliced), computes nothing
    assert saved_chunks == []
    _assert_identical(subset, jax.tree.map(lambda a: a[:10], grown))
    _, config = io.load_results(run_dir)
    assert config["config"]["run"]["n_seeds"] == N_SEEDS + 7  # results of the full run kept
