"""Run directories on disk: resumable chunk files, the run's fingerprint, and final results.

A run directory holds::

    run.json             what was computed (the fingerprint) and how (chunk size), written first
    chunks/00000012.chunk one file per finished chunk: a header with its SHA-256, then an .npz
    results.npz          the assembled results, one array per output leaf (e.g. "weights")
    config.json          config, library versions, devices and the git commit

Every file is written atomically: to a temporary name in the same folder, flushed and fsync'ed,
then ``os.replace``'d onto its final name (and the folder fsync'ed), so a kill -9 or a power cut
leaves either the whole old file, the whole new one, or a stray temporary that is never read. A
chunk file whose checksum, size or array shapes do not verify is recomputed, never loaded.

One process writes to a run directory at a time.
"""

from __future__ import annotations

import datetime
import hashlib
import io as _io
import json
import os
import pathlib
import re
import secrets
import subprocess
import tempfile

import numpy as np

MANIFEST = "run.json"
CHUNKS = "chunks"
_MAGIC = b"gradflow-chunk v1"
_HEADER = re.compile(rb"^gradflow-chunk v1 sha256=([0-9a-f]{64}) bytes=(\d+)\n")
_TEMP = ".tmp-"


def check_output_dir(path, what: str = "the output folder") -> pathlib.Path:
    """Check, before any computation, that ``path`` can be a folder we write into.

    Nothing is created: the nearest existing ancestor must be a folder where a file can really
    be created (probed with a temporary file, so read-only file systems such as /proc count).

    Raises:
      ValueError: one line naming ``what``, the problem and the fix.
    """
    if isinstance(path, str) and not path.strip():
        raise ValueError(f"{what} is empty; pass a folder path")
    path = pathlib.Path(path)
    if path.exists() and not path.is_dir():
        raise ValueError(f"{what} {str(path)!r} is a file; pass a folder path")
    ancestor = path
    while not ancestor.exists():
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise ValueError(
            f"{what} {str(path)!r} lies below {str(ancestor)!r}, which is a file; pick another path"
        )
    try:
        fd, probe = tempfile.mkstemp(dir=ancestor, prefix=_TEMP)
    except OSError as e:
        raise ValueError(
            f"{what} {str(path)!r} cannot be written (creating a file in {str(ancestor)!r} "
            f"failed: {e.strerror}); pick a writable folder"
        ) from None
    os.close(fd)
    os.unlink(probe)
    return path


def check_output_file(path, what: str = "the output file", suffixes=None) -> pathlib.Path:
    """Check, before any computation, that a file can be written at ``path`` (its folder as in
    :func:`check_output_dir`; ``suffixes``: the allowed extensions, e.g. (".png", ".pdf"))."""
    path = pathlib.Path(path)
    if path.is_dir():
        raise ValueError(f"{what} {str(path)!r} is a folder; pass a file path such as out.png")
    if suffixes is not None and path.suffix.lower() not in suffixes:
        raise ValueError(
            f"{what} {str(path)!r} has extension {path.suffix or '(none)'!r}; use one of "
            f"{', '.join(suffixes)}"
        )
    check_output_dir(path.parent, f"the folder of {what}")
    return path


def atomic_write(path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically: temp file in the same folder, fsync, rename."""
    path = pathlib.Path(path)
    tmp = path.with_name(f"{_TEMP}{path.name}.{os.getpid()}.{secrets.token_hex(4)}")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def _fsync_dir(folder: pathlib.Path) -> None:
    try:  # makes the rename itself durable; not possible on every OS/filesystem
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def hash_array(a) -> str:
    """SHA-256 of an array's dtype, shape and bytes (for fingerprints of data arguments)."""
    a = np.ascontiguousarray(np.asarray(a))
    h = hashlib.sha256(f"{a.dtype.str}{a.shape}".encode())
    h.update(a.tobytes())
    return h.hexdigest()


def _canonical(obj):
    """``obj`` as it reads back from JSON (tuples become lists), for comparisons."""
    return json.loads(json.dumps(obj, default=str, sort_keys=True))


def _flatten(obj, prefix: str = "") -> dict:
    """``{"model": {"init": "lecun"}}`` -> ``{"model.init": "lecun"}`` (lists by index)."""
    items = obj.items() if isinstance(obj, dict) else enumerate(obj)
    flat = {}
    for k, v in items:
        name = f"{prefix}{k}"
        if isinstance(v, (dict, list)):  # an empty one adds nothing
            flat.update(_flatten(v, name + "."))
        else:
            flat[name] = v
    return flat


def _short(value, limit: int = 50) -> str:
    text = json.dumps(value, default=str, sort_keys=True)
    return text if len(text) <= limit else text[: limit - 3] + "..."


class RunDir:
    """A run directory for one sweep: verified chunk files plus the fingerprint that owns them.

    Use :meth:`open` (which refuses a directory made by a different sweep), then :meth:`begin`
    once the chunk size is known, then :meth:`load_chunk` / :meth:`save_chunk` per chunk.
    """

    def __init__(self, path: pathlib.Path, fingerprint: dict, manifest: dict | None):
        self.path = path
        self.fingerprint = fingerprint
        self.manifest = manifest

    @classmethod
    def open(cls, path, fingerprint: dict) -> RunDir:
        """Open (or prepare to create) the run directory ``path`` for a sweep.

        Raises:
          ValueError: if ``path`` holds a run with a different fingerprint (naming the fields
            that differ), or holds files but no gradflow run.
        """
        path = pathlib.Path(path)
        fingerprint = _canonical(fingerprint)
        if path.exists() and not path.is_dir():
            raise ValueError(f"run directory {str(path)!r} is a file; pass a folder path")
        manifest_path = path / MANIFEST
        if not manifest_path.exists():
            leftovers = [p.name for p in path.iterdir()] if path.is_dir() else []
            if leftovers:
                raise ValueError(
                    f"run directory {str(path)!r} is not empty but holds no gradflow run "
                    f"({MANIFEST} missing; found {', '.join(sorted(leftovers)[:3])}); use a new "
                    "--out/run_dir or delete that folder"
                )
            return cls(path, fingerprint, None)
        try:
            manifest = json.loads(manifest_path.read_text())
            stored = manifest["fingerprint"]
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise ValueError(
                f"run directory {str(path)!r} has an unreadable {MANIFEST} ({e}); delete the "
                "folder to start over, or use a new --out/run_dir"
            ) from None
        old, new = _flatten(stored), _flatten(fingerprint)
        if "n_seeds" in old and "n_seeds" in new:  # seeds 0..n-1: any n extends or subsets it
            old["n_seeds"] = new["n_seeds"]
        diffs = [
            f"{k}: stored {_short(old.get(k))}, now {_short(new.get(k))}"
            for k in sorted(set(old) | set(new), key=lambda k: (k.split(".")[0], k))
            if old.get(k) != new.get(k)
        ]
        if diffs:
            more = f"; and {len(diffs) - 4} more" if len(diffs) > 4 else ""
            raise ValueError(
                f"run directory {str(path)!r} holds a different sweep "
                f"({'; '.join(diffs[:4])}{more}); "
                f"refusing to mix results: use a new --out/run_dir, or delete {str(path)!r} "
                "to start over"
            )
        return cls(path, fingerprint, manifest)

    @property
    def stored_items(self) -> int | None:
        """How many items (seeds x grid points) the run holds room for (None for a new run)."""
        return None if self.manifest is None else int(self.manifest["n_items"])

    @property
    def chunk_size(self) -> int | None:
        """The chunk size this run was started with (None for a new run)."""
        return None if self.manifest is None else int(self.manifest["chunk_size"])

    def begin(self, chunk_size: int, n_items: int) -> None:
        """Create the folder and write ``run.json`` (for a new run); clear stale temp files."""
        chunks = self.path / CHUNKS
        chunks.mkdir(parents=True, exist_ok=True)
        for stale in chunks.glob(f"{_TEMP}*"):  # a write cut short by a kill; never read
            stale.unlink(missing_ok=True)
        if self.manifest is None:
            self.manifest = {
                "fingerprint": self.fingerprint,
                "chunk_size": int(chunk_size),
                "n_items": int(n_items),
                "created": _now(),
                **run_metadata(),
            }
            atomic_write(self.path / MANIFEST, _json_bytes(self.manifest))
        elif self.chunk_size != chunk_size:
            raise AssertionError("resumed run must reuse its stored chunk size")
        elif n_items > self.manifest["n_items"]:  # extended to more seeds 0..n-1
            fingerprint = {**self.manifest["fingerprint"], "n_seeds": self.fingerprint["n_seeds"]}
            self.manifest = {**self.manifest, "fingerprint": fingerprint, "n_items": n_items}
            atomic_write(self.path / MANIFEST, _json_bytes(self.manifest))

    def chunk_path(self, index: int) -> pathlib.Path:
        return self.path / CHUNKS / f"{index:08d}.chunk"

    def save_chunk(self, index: int, leaves: list[np.ndarray]) -> None:
        """Write chunk ``index`` (a list of arrays) atomically, with its SHA-256 in the header."""
        buf = _io.BytesIO()
        np.savez(buf, *[np.asarray(a) for a in leaves])
        payload = buf.getvalue()
        digest = hashlib.sha256(payload).hexdigest()
        header = _MAGIC + f" sha256={digest} bytes={len(payload)}\n".encode()
        atomic_write(self.chunk_path(index), header + payload)

    def load_chunk(self, index: int, expected: list[tuple[tuple, np.dtype]]) -> list | None:
        """Chunk ``index``'s arrays if its file exists and verifies, else None (recompute it).

        Args:
          expected: ``(shape, dtype)`` of every leaf; a file holding anything else is rejected.
        """
        try:
            data = self.chunk_path(index).read_bytes()
        except FileNotFoundError:
            return None
        match = _HEADER.match(data)
        if match is None:
            return None
        payload = data[match.end() :]
        if len(payload) != int(match.group(2)) or (
            hashlib.sha256(payload).hexdigest().encode() != match.group(1)
        ):
            return None
        try:
            with np.load(_io.BytesIO(payload), allow_pickle=False) as z:
                leaves = [z[f"arr_{i}"] for i in range(len(z.files))]
        except (ValueError, OSError, KeyError):
            return None
        if len(leaves) != len(expected):
            return None
        for a, (shape, dtype) in zip(leaves, expected, strict=True):
            # A run of more seeds 0..n-1 holds this chunk's first rows and more: slice them.
            if (
                a.shape[1:] != tuple(shape[1:])
                or a.shape[0] < shape[0]
                or a.dtype != np.dtype(dtype)
            ):
                return None
        return [a[: shape[0]] for a, (shape, _) in zip(leaves, expected, strict=True)]

    def write_results(self, tree, config: dict | None = None) -> pathlib.Path:
        """Write ``results.npz`` and ``config.json`` (see :func:`save_results`) into the run."""
        return save_results(self.path, tree, {"run": self.fingerprint, **(config or {})})


def leaf_names(tree) -> dict[str, np.ndarray]:
    """Name each leaf of ``tree`` by its path: ``LayerGradNorms.weights`` -> ``"weights"``,
    ``{"a": [x, y]}`` -> ``"a.0"``, ``"a.1"``; a bare array is ``"values"``."""
    import jax

    named = {}
    for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
        parts = []
        for p in path:
            part = getattr(p, "name", getattr(p, "key", getattr(p, "idx", None)))
            parts.append(str(part if part is not None else p))
        named[".".join(parts) or "values"] = np.asarray(leaf)
    return named


def save_results(out_dir, arrays, config: dict, extra: dict | None = None) -> pathlib.Path:
    """Write ``results.npz`` (arrays, or a pytree named by :func:`leaf_names`) and
    ``config.json`` (``config`` plus versions, devices, git commit, and the top-level entries
    of ``extra``), both atomically, the config last.

    Returns: the folder.
    """
    out = pathlib.Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if not isinstance(arrays, dict) or not all(isinstance(k, str) for k in arrays):
        arrays = leaf_names(arrays)
    buf = _io.BytesIO()
    np.savez(buf, **{k: np.asarray(v) for k, v in arrays.items()})
    atomic_write(out / "results.npz", buf.getvalue())
    meta = {"config": _canonical(config), "created": _now(), **run_metadata(), **(extra or {})}
    atomic_write(out / "config.json", _json_bytes(meta))
    return out


def load_results(out_dir) -> tuple[dict[str, np.ndarray], dict]:
    """Read back ``(arrays, metadata)`` written by :func:`save_results`."""
    out = pathlib.Path(out_dir)
    with np.load(out / "results.npz", allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files}
    return arrays, json.loads((out / "config.json").read_text())


def run_metadata() -> dict:
    """Library versions, the devices in use and the git commit of the gradflow checkout."""
    import jax

    devices = jax.devices()
    return {
        "versions": {
            "gradflow": _version("gradflow"),  # installed metadata: io never imports the package
            "jax": jax.__version__,
            "jaxlib": getattr(jax.lib, "__version__", None) or _version("jaxlib"),
            "numpy": np.__version__,
        },
        "device": str(devices[0]),
        "device_kind": devices[0].device_kind,
        "platform": devices[0].platform,
        "device_count": len(devices),
        "process_count": jax.process_count(),
        "git_sha": git_sha(),
    }


def _version(package: str) -> str | None:
    from importlib import metadata

    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def git_sha() -> str | None:
    """The commit of the checkout gradflow is imported from (``+dirty`` if modified), or None."""
    here = pathlib.Path(__file__).resolve().parent
    try:
        sha = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=5
        )
        if sha.returncode != 0:
            return None
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=here,
            capture_output=True,
            text=True,
            timeout=5,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return sha.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")


def _json_bytes(obj) -> bytes:
    return (json.dumps(obj, indent=2, default=str, sort_keys=False) + "\n").encode()
