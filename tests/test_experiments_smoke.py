"""Every experiments/fig*.py script runs end to end at smoke sizes and writes its figure."""

import pathlib

import numpy as np
import pytest

from tests.conftest import load_experiment

SCRIPTS = sorted((pathlib.Path(__file__).parent.parent / "experiments").glob("fig*.py"))


def test_there_are_experiments():
    assert SCRIPTS, "experiments/fig*.py not found"


@pytest.mark.parametrize("path", SCRIPTS, ids=lambda p: p.stem)
def test_smoke(path, tmp_path, capsys):
    assert load_experiment(path.stem).main(["--smoke", "--out", str(tmp_path)]) == 0
    pngs = list(tmp_path.glob("*.png"))
    assert pngs and all(p.stat().st_size > 10_000 for p in pngs)
    results = list((tmp_path / "data").glob("*/results.npz"))
    assert results
    for path in results:  # finite numbers: no NaN, no +inf (-inf is log 0, e.g. a dead relu's
        with np.load(path) as data:  # zero singular value)
            for name, v in data.items():
                if np.issubdtype(v.dtype, np.number):
                    assert not np.any(np.isnan(v) | np.isposinf(v)), (path, name)
    assert "figure:" in capsys.readouterr().out
    assert (tmp_path / "README.md").exists() == bool(list((tmp_path / "data").glob("*/report.md")))


def test_runner_caches_reports_and_checks_out(tmp_path, capsys):
    """The figure runner: README from reports, re-plot from cache, bad --out before computing."""
    import numpy as np

    from gradflow import figures

    calls = []

    def compute(cfg):
        calls.append(cfg)
        return {"x": np.arange(cfg["n"], dtype=float)}

    def plot(data, cfg):
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots()
        ax.plot(data["x"])
        return fig

    fig = figures.PaperFigure(
        name="toy", number=7, title="Toy 2026", config={"n": 5}, smoke={"n": 3},
        compute=compute, plot=plot, report=lambda d, c: f"sum {d['x'].sum():g}",
    )  # fmt: skip
    assert figures.main(fig, ["--smoke", "--out", str(tmp_path)]) == 0
    assert figures.main(fig, ["--smoke", "--out", str(tmp_path)]) == 0
    assert len(calls) == 1, "the second run must re-plot from the cached data"
    assert figures.main(fig, ["--out", str(tmp_path)]) == 0  # another config: recompute
    assert figures.main(fig, ["--out", str(tmp_path), "--recompute"]) == 0
    assert len(calls) == 3
    readme = (tmp_path / "README.md").read_text()
    assert "## 7. Toy 2026" in readme and "sum 10" in readme and "(toy.png)" in readme
    (tmp_path / "file").write_text("")
    capsys.readouterr()
    assert figures.main(fig, ["--out", str(tmp_path / "file" / "below")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--out" in err and len(calls) == 3
