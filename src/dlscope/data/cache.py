"""The on-disk MNIST cache: ``mnist.npz`` (uint8 arrays, no pickle) plus ``mnist.npz.sha256``.

Both files are written atomically (temp file in the same folder, then ``os.replace``), the
checksum file after the npz. The npz is written byte-for-byte deterministically (fixed zip
timestamps), so two processes building the cache at once write identical files. A cache that
fails any check (checksum, zip structure, keys, shapes, dtypes, label range) is reported and
rebuilt by the caller; bad data is never returned.
"""

from __future__ import annotations

import hashlib
import io
import os
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from dlscope.atomic import atomic_write_bytes
from dlscope.data.fingerprint import arrays_sha256, is_mnist
from dlscope.errors import UserError

NPZ_NAME = "mnist.npz"
MAX_CACHE_BYTES = 128 * 2**20  # the MNIST npz is ~55 MB; never read an unbounded file
SHA_NAME = "mnist.npz.sha256"
_KEYS = ("x_train", "y_train", "x_test", "y_test")
_SHAPES = {
    "x_train": (60000, 28, 28),
    "y_train": (60000,),
    "x_test": (10000, 28, 28),
    "y_test": (10000,),
}


@dataclass
class MnistArrays:
    """Raw MNIST: uint8 images ``[N, 28, 28]`` and uint8 labels ``[N]`` in 0..9."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    source: str
    sha256: str = ""  # content fingerprint (dlscope.data.fingerprint.arrays_sha256)

    @property
    def verified(self) -> bool:
        """Whether the content is the official MNIST (fingerprint equals the constant)."""
        return is_mnist(self.sha256)


def validate_arrays(arrays: dict[str, np.ndarray], where: str, exact: bool = False) -> None:
    """Raise UserError (naming ``where``) unless the four arrays are MNIST-format data:
    uint8 images ``[N, 28, 28]`` and as many uint8 labels in 0..9 (``exact``: MNIST's sizes).
    Whether the content is MNIST is the fingerprint's business (dlscope.data.fingerprint)."""
    for key in _KEYS:
        if key not in arrays:
            raise UserError(f"{where}: missing array {key!r}")
        arr = arrays[key]
        shape = _SHAPES[key]
        ok = arr.dtype == np.uint8 and arr.ndim == len(shape) and arr.shape[1:] == shape[1:]
        if not ok or (exact and arr.shape != shape) or arr.shape[0] < 1:
            want = shape if exact else ("N",) + shape[1:]
            raise UserError(f"{where}: {key} is {arr.dtype} {arr.shape}, expected uint8 {want}")
    for x, y in (("x_train", "y_train"), ("x_test", "y_test")):
        if arrays[x].shape[0] != arrays[y].shape[0]:
            raise UserError(f"{where}: {y} has {arrays[y].shape[0]} labels but {x} has "
                            f"{arrays[x].shape[0]} images")
    for key in ("y_train", "y_test"):
        if arrays[key].max() > 9:
            raise UserError(f"{where}: {key} has label {arrays[key].max()}, expected 0..9")


def cache_dir_path(cache_dir: str | os.PathLike | None = None) -> Path:
    """``cache_dir``, else env ``DLSCOPE_CACHE``, else ``~/.cache/dlscope``."""
    if cache_dir is None:
        cache_dir = os.environ.get("DLSCOPE_CACHE") or Path.home() / ".cache" / "dlscope"
    return Path(cache_dir).expanduser()


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _npz_bytes(arrays: dict[str, np.ndarray]) -> bytes:
    """An uncompressed .npz (what np.savez writes) with fixed timestamps, so reproducible."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED, allowZip64=True) as zf:
        for key, arr in arrays.items():
            info = zipfile.ZipInfo(f"{key}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            with zf.open(info, "w", force_zip64=True) as f:
                np.lib.format.write_array(f, arr, allow_pickle=False)
    return buf.getvalue()


def write_cache(cache_dir: Path, arrays: MnistArrays) -> Path:
    """Write ``mnist.npz`` then ``mnist.npz.sha256`` atomically; return the npz path."""
    cache_dir.mkdir(parents=True, exist_ok=True)
    payload = {key: getattr(arrays, key) for key in _KEYS}
    payload["source"] = np.array(arrays.source)
    data = _npz_bytes(payload)
    npz = cache_dir / NPZ_NAME
    atomic_write_bytes(npz, data)
    atomic_write_bytes(cache_dir / SHA_NAME, f"{sha256_hex(data)}  {NPZ_NAME}\n".encode())
    return npz


def _source(arrays) -> str:
    src = arrays.get("source")
    return str(src.reshape(-1)[0]) if src is not None and src.size == 1 else "unknown source"


def _check_file(cache_dir: Path) -> tuple[bytes | None, str]:
    """(npz bytes, "ok") or (None, what is wrong). Missing npz -> (None, "missing")."""
    npz, sha = cache_dir / NPZ_NAME, cache_dir / SHA_NAME
    if not npz.is_file():
        return None, "missing"
    try:
        size = npz.stat().st_size
        if size > MAX_CACHE_BYTES:
            return None, f"{size} bytes, larger than any MNIST cache ({MAX_CACHE_BYTES} at most)"
        data = npz.read_bytes()
        expected = (sha.read_bytes()[:256].decode("ascii").split()[0] if sha.is_file()
                    else None)
    except (OSError, UnicodeDecodeError, IndexError) as e:
        return None, f"unreadable ({e})"
    if expected is None:
        return None, f"checksum file {SHA_NAME} missing"
    if sha256_hex(data) != expected.lower():
        return None, f"sha256 does not match {SHA_NAME} (corrupt or tampered)"
    return data, "ok"


def read_cache(cache_dir: Path, log: Callable[[str], None]) -> MnistArrays | None:
    """The cached arrays, or None (after logging a one-line warning if the cache is bad)."""
    npz = cache_dir / NPZ_NAME
    data, status = _check_file(cache_dir)
    if data is None:
        if status != "missing":
            log(f"warning: MNIST cache {npz} is unusable: {status}; rebuilding it")
        return None
    try:
        with np.load(io.BytesIO(data), allow_pickle=False) as z:
            arrays = {key: z[key] for key in z.files}
        validate_arrays(arrays, str(npz), exact=True)
        source = _source(arrays)
    except (UserError, ValueError, OSError, KeyError, zipfile.BadZipFile, EOFError) as e:
        log(f"warning: MNIST cache {npz} is unusable: {e}; rebuilding it")
        return None
    digest = arrays_sha256(arrays)
    if not is_mnist(digest):  # the .sha256 beside it proves only that both were written together
        log(f"warning: MNIST cache {npz} is unusable: its content (sha256 {digest[:12]}) is not "
            "MNIST (tampered or corrupt, even though its checksum file matches); rebuilding it")
        return None
    return MnistArrays(*(arrays[key] for key in _KEYS), source=source, sha256=digest)


def data_info(cache_dir: str | os.PathLike | None = None) -> dict:
    """What is cached where, for ``dlscope data info``."""
    folder = cache_dir_path(cache_dir)
    npz = folder / NPZ_NAME
    data, status = _check_file(folder)
    entry: dict = {"path": str(npz), "exists": npz.is_file(), "checksum": status}
    if npz.is_file():
        entry["size_bytes"] = npz.stat().st_size
    if data is not None:
        try:
            with np.load(io.BytesIO(data), allow_pickle=False) as z:
                entry["source"] = _source(z)
                entry["n_train"] = int(z["y_train"].shape[0])
                entry["n_test"] = int(z["y_test"].shape[0])
        except Exception as e:  # noqa: BLE001 - any damage: a zero-byte or garbage npz is reported, not raised
            entry["checksum"] = f"ok, but unreadable ({type(e).__name__}: {e})"
    return {
        "cache_dir": str(folder),
        "cache_dir_from": "argument"
        if cache_dir is not None
        else "DLSCOPE_CACHE"
        if os.environ.get("DLSCOPE_CACHE")
        else "default",
        "mnist_dir_env": os.environ.get("DLSCOPE_MNIST_DIR") or None,
        "mnist": entry,
    }
