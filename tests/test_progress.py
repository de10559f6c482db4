"""The progress bar: drawn on a terminal, silent otherwise or when quiet."""

import io

import numpy as np

import gradflow as gf
from gradflow.progress import Progress


class _Terminal(io.StringIO):
    def isatty(self):
        return True


def test_bar_draws_rate_and_eta_on_a_terminal():
    out = _Terminal()
    with Progress(100, unit="seeds", desc="sweep", file=out, min_interval=0) as bar:
        bar.update(40, computed=False)  # resumed from disk: counts as done, not in the rate
        assert "40/100" in out.getvalue() and "?seeds/s" in bar.line()  # no rate: none computed
        bar.update(10)
        assert "50/100" in out.getvalue() and "seeds/s" in out.getvalue()
        assert "<" in bar.line()  # elapsed<remaining: the ETA
        bar.update(50)
    text = out.getvalue()
    assert "100/100" in text and text.endswith("\n")


def test_bar_is_silent_off_a_terminal_or_when_quiet(capsys):
    for out, quiet in ((io.StringIO(), False), (_Terminal(), True)):
        with Progress(10, file=out, quiet=quiet, min_interval=0) as bar:
            bar.update(10)
            bar.note("hello")
        assert out.getvalue() == ("hello\n" if not quiet else "")  # notes print unless quiet
    model = gf.mlp([3, 2], "tanh")
    x, y = np.ones((2, 3), np.float32), np.ones((2, 2), np.float32)
    gf.sweep(gf.layer_grad_norms, model, 3, x, y, quiet=False)  # stderr is captured: no TTY
    assert capsys.readouterr().err == ""
