"""Bad paths and impossible seed counts: one line, exit 2, no traceback, nothing created, before
any computation."""

import pathlib
import re

import pytest

import gradflow as gf
from gradflow import cli

SWEEP = ["sweep", "--data", "gaussian", "--batch", "4", "--widths", "4,8,2", "--loss", "mse"]
THEORY = ["theory", "--activation", "tanh", "--sigma-w2", "1.5", "--sigma-b2", "0.05",
          "--depth", "5", "--width", "16", "--seeds", "4"]  # fmt: skip


def _no_compile(monkeypatch):
    def refuse(*a, **k):
        raise AssertionError("compiled before the input was checked")

    monkeypatch.setattr(gf.sweep_engine, "_run_chunk", refuse)
    monkeypatch.setattr(gf.meanfield, "compare", refuse)


@pytest.mark.parametrize(
    "out,match",
    [
        ("{file}/sub", "lies below .* which is a file; pick another path"),
        ("{file}", "is a file; pass a folder path"),
        ("/proc/gradflow-test", "cannot be written .creating a file in '/proc' failed"),
        ("", "--out is empty; pass a folder path"),
    ],
)
def test_bad_out_paths(out, match, tmp_path, monkeypatch, capsys):
    _no_compile(monkeypatch)
    file = tmp_path / "a_file"
    file.write_text("x")
    out = out.format(file=file)
    for argv in (SWEEP + ["--seeds", "2", "--out", out], THEORY + ["--out", out]):
        assert cli.main(argv) == cli.USAGE_ERROR
        err = capsys.readouterr().err
        assert err.startswith("gradflow: error: --out") and len(err.strip().splitlines()) == 1
        assert re.search(match, err), err
        assert not out or not pathlib.Path(out).is_dir(), "no output folder is created"


@pytest.mark.parametrize(
    "path,match",
    [
        ("/proc/x.png", "the folder of --phase-diagram '/proc' cannot be written"),
        ("{tmp}/figure.txt", "has extension '.txt'; use one of .png"),
        ("{tmp}", "is a folder; pass a file path"),
    ],
)
def test_bad_figure_paths_fail_before_the_computation(path, match, tmp_path, monkeypatch, capsys):
    _no_compile(monkeypatch)
    argv = THEORY + ["--phase-diagram", path.format(tmp=tmp_path)]
    assert cli.main(argv) == cli.USAGE_ERROR
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and re.search(match, err), err


def test_a_billion_seeds_is_refused_before_drawing_keys(monkeypatch, capsys):
    _no_compile(monkeypatch)
    monkeypatch.setattr(gf.sweep_engine, "as_keys", lambda k: pytest.fail("keys drawn"))
    argv = SWEEP + ["--seeds", "1000000000", "--chunk-size", "auto", "--memory", "64MiB"]
    assert cli.main(argv) == cli.USAGE_ERROR
    err = capsys.readouterr().err
    assert "the results of 1,000,000,000 seeds" in err and "GiB of host memory" in err
    assert "run fewer seeds per call" in err and len(err.strip().splitlines()) == 1


def test_sweep_help_states_every_init_formula(capsys):
    import pytest as _pytest

    from gradflow import cli
    from gradflow.inits import INITS

    with _pytest.raises(SystemExit):
        cli.main(["sweep", "--help"])
    text = " ".join(capsys.readouterr().out.split())  # argparse wraps lines
    for name in INITS:
        assert f"{name}: W" in text, name
    assert "glorot_standard: W ~ U[+-1/sqrt(n_in)]" in text and "Keras" in text
