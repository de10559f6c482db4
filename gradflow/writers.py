"""Writers for per-step scalars (:func:`gradflow.monitor.layer_norms`'s dict, a loss, ...).

``JsonlWriter`` (always available) appends one JSON object per step and flushes it, so an
interrupted run loses nothing written; ``TensorBoardWriter`` uses tensorboardX (the
``gradflow[tensorboard]`` extra), imported only when one is made. Both take device arrays and
fetch them with one ``jax.device_get`` per call::

    with gf.writers.JsonlWriter("runs/x/norms.jsonl") as log:
        for step in range(steps):
            params, opt_state, metrics = train_step(params, opt_state, batch)
            log.write(step, metrics)
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping

import jax
import numpy as np


def _host_scalars(step, metrics: Mapping) -> tuple[int, dict]:
    """``step`` as an int and ``metrics`` as Python scalars, with one ``jax.device_get``."""
    if not isinstance(metrics, Mapping):
        raise ValueError(f"metrics must be a dict of scalars, got {type(metrics).__name__}")
    step, metrics = jax.device_get((step, dict(metrics)))
    if np.ndim(step) != 0 or not np.issubdtype(np.asarray(step).dtype, np.integer):
        raise ValueError(f"step must be an integer, got {step!r:.40}")
    out = {}
    for k, v in metrics.items():
        if not isinstance(k, str) or k == "step":
            raise ValueError(f"metric keys must be strings other than 'step', got {k!r}")
        a = np.asarray(v)
        if a.ndim != 0 or not (np.issubdtype(a.dtype, np.number) or a.dtype == bool):
            raise ValueError(
                f"metrics[{k!r}] must be a real scalar, got shape {a.shape} dtype {a.dtype}; "
                "index vmapped results per seed before writing"
            )
        if np.iscomplexobj(a):
            raise ValueError(f"metrics[{k!r}] is complex; write its abs or real part")
        out[k] = a.item()
    return int(step), out


class _Writer:
    """Shared context-manager plumbing: ``write(step, metrics)``, ``close()``."""

    _closed = False

    def write(self, step, metrics: Mapping) -> None:
        """Write ``metrics`` (``{key: scalar}``, device arrays welcome) as record ``step``."""
        if self._closed:
            raise ValueError(f"{type(self).__name__} is closed; open a new one to write")
        self._write(*_host_scalars(step, metrics))

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class JsonlWriter(_Writer):
    """Append one JSON object per step to a ``.jsonl`` file: ``{"step": 100, "<key>": value}``.

    Each record is one ``write`` of one line, flushed at once, so an interrupted run loses
    nothing already written; reopening the file appends (a trailing half line left by a crash
    is ended first, so every later line still parses). Non-finite values are written as
    ``null`` (strict JSON). Read it back with ``[json.loads(l) for l in open(path)]``.

    Example::

        with JsonlWriter("run/norms.jsonl") as log:
            log.write(step, {"loss": loss, **gf.monitor.layer_norms(grads, params, updates)})
    """

    def __init__(self, path: str | os.PathLike):
        path = os.fspath(path)
        if os.path.isdir(path):
            raise ValueError(f"JsonlWriter needs a file path, got the directory {path!r}")
        parent = os.path.dirname(path)
        if parent:
            os.makedirs(parent, exist_ok=True)
        self.path = path
        self._file = open(path, "a", encoding="utf-8")  # noqa: SIM115 (closed by close())
        if self._file.tell() > 0 and not _ends_with_newline(path):
            self._file.write("\n")
            self._file.flush()

    def _write(self, step, values):
        record = {"step": step}
        for k, v in values.items():
            record[k] = v if not isinstance(v, float) or math.isfinite(v) else None
        self._file.write(json.dumps(record, allow_nan=False) + "\n")
        self._file.flush()

    def _close(self):
        self._file.close()


def _ends_with_newline(path) -> bool:
    with open(path, "rb") as f:
        f.seek(-1, os.SEEK_END)
        return f.read(1) == b"\n"


class TensorBoardWriter(_Writer):
    """TensorBoard scalars via tensorboardX: ``add_scalar(key, value, step)`` per key.

    Keys like ``grad_norm/layer3`` appear in TensorBoard's ``grad_norm`` section; non-finite
    values are written as they are (NaN/inf). Each ``write`` is flushed to the event file.

    Args:
      logdir: the run directory (point ``tensorboard --logdir`` at it or its parent).

    Example::

        with TensorBoardWriter("runs/exp1") as tb:
            tb.write(step, gf.monitor.layer_norms(grads, params, updates))
    """

    def __init__(self, logdir: str | os.PathLike):
        try:
            from tensorboardX import SummaryWriter
        except ImportError:
            raise ImportError(
                "TensorBoardWriter needs tensorboardX: pip install gradflow[tensorboard]"
            ) from None
        self.logdir = os.fspath(logdir)
        self._writer = SummaryWriter(self.logdir)

    def _write(self, step, values):
        for k, v in values.items():
            self._writer.add_scalar(k, float(v), global_step=step)
        self._writer.flush()

    def _close(self):
        self._writer.close()
