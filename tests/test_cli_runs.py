"""gradflow train / diagnose end to end on small models, built-in and --model; bad input."""

import json

import numpy as np
import pytest

from gradflow import cli, io

SMALL = "--data digits --batch 64 --seeds 3 --quiet --loss xent".split()


def test_train_writes_trajectories_and_a_figure(tmp_path, capsys):
    out = tmp_path / "train"
    argv = ["train", "--widths", "64,16,16,10", "--activation", "tanh", "--init", "lecun",
            *SMALL, "--steps", "6", "--record-every", "2", "--optimizer", "adam", "--lr", "0.01",
            "--batch-size", "16", "--out", str(out)]  # fmt: skip
    assert cli.main(argv) == 0
    arrays, meta = io.load_results(out)
    assert arrays["loss"].shape == (3, 4) and arrays["norms.weights"].shape == (3, 4, 3)
    assert np.all(np.isfinite(arrays["loss"])) and meta["config"]["optimizer"] == "adam"
    assert (out / "norms.png").stat().st_size > 10_000
    assert arrays["loss"][:, -1].mean() < arrays["loss"][:, 0].mean()  # it learns
    assert "step   loss" in capsys.readouterr().out


def test_diagnose_a_users_model_writes_a_report(tmp_path, capsys):
    out = tmp_path / "diag"
    argv = ["diagnose", "--model", "tests.cli_models:tiny", *SMALL, "--hessian-iterations", "5",
            "--out", str(out)]  # fmt: skip
    assert cli.main(argv) == 0
    report = json.loads((out / "report.json").read_text())
    assert len(report["seeds"]) == 3 and set(report["counts"]) <= {
        "vanishing", "exploding", "healthy", "dead_units", "saturated", "underflow",
        "plateau", "saddle", "minimum",
    }  # fmt: skip
    arrays, _ = io.load_results(out)
    assert arrays["weight_grads"].shape == (3, 2) and np.all(np.isfinite(arrays["hessian_max"]))
    assert "3 seeds:" in capsys.readouterr().out


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--model", "tests.cli_models:not_a_model"], "not a gradflow Model"),
        (["--model", "no_such_module_xyz:f"], "cannot import"),
        (["--model", "tests.cli_models"], "package.module:function"),
        (["--steps", "5", "--record-every", "2"], "divide --steps"),
        (["--batch-size", "65"], "--batch-size must be in 1..64"),
        (["--model", "tests.cli_models:needs_width"], "needs arguments (width)"),
        (["--model", "tests.cli_models:too_wide"], "takes inputs of shape (100,)"),
        (["--lr", "nan"], "--lr must be a finite number > 0"),
        (["--lr", "-1"], "--lr must be a finite number > 0"),
        (["--weight-decay", "-0.5"], "--weight-decay must be a finite number >= 0"),
    ],
)
def test_bad_train_input_is_one_line_and_exit_2(extra, message, capsys, tmp_path):
    argv = ["train", "--widths", "64,16,10", *SMALL, "--out", str(tmp_path / "x"), *extra]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err, err
    assert not (tmp_path / "x").exists()


def test_sweep_a_users_cnn_on_flat_data(tmp_path, capsys):
    """A --model whose input is (8, 8, 1) gets the flat 64-pixel digits reshaped; the table
    shows '-' for layers without a tap of their own (the dense head)."""
    out = tmp_path / "conv"
    argv = ["sweep", "--model", "tests.cli_models:conv", *SMALL, "--out", str(out)]
    assert cli.main(argv) == 0
    arrays, _ = io.load_results(out)
    assert arrays["weights"].shape[0] == 3 and np.all(np.isfinite(arrays["weights"]))
    rows = [line for line in capsys.readouterr().out.splitlines() if line[:5].strip().isdigit()]
    assert len(rows) == arrays["weights"].shape[1]
    assert "-" not in rows[0].split() and "-" in rows[-1].split()


@pytest.mark.parametrize("command", ["sweep", "train", "diagnose"])
@pytest.mark.parametrize(
    "extra, message",
    [
        (["--memory", "lots"], "must look like 4GiB"),
        (["--vmap-size", "0"], "--vmap-size must be an int >= 1"),
        (["--devices", "99"], "devices (--devices) must be 1.."),
    ],
)
def test_bad_sweep_flags_fail_before_anything_is_printed(command, extra, message, capsys):
    # Checked before the model is built: nothing on stdout (it used to print the model line).
    assert cli.main([command, "--widths", "64,16,10", *SMALL, *extra]) == 2
    out, err = capsys.readouterr()
    assert out == "" and err.count("\n") == 1 and message in err, (out, err)
