"""Every experiments/fig*.py script runs end to end at smoke sizes and writes its figure."""

import importlib.util
import pathlib

import pytest

SCRIPTS = sorted((pathlib.Path(__file__).parent.parent / "experiments").glob("fig*.py"))


def _load(path):
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_there_are_experiments():
    assert SCRIPTS, "experiments/fig*.py not found"


@pytest.mark.parametrize("path", SCRIPTS, ids=lambda p: p.stem)
def test_smoke(path, tmp_path, capsys):
    assert _load(path).main(["--smoke", "--out", str(tmp_path)]) == 0
    pngs = list(tmp_path.glob("*.png"))
    assert pngs and all(p.stat().st_size > 10_000 for p in pngs)
    assert list((tmp_path / "data").glob("*/results.npz"))
    assert "figure:" in capsys.readouterr().out
