"""The ``npz`` kind: a user's own arrays in one ``.npz`` file (no pickle, ever).

``{"kind": "npz", "path": "/abs/file.npz", **ImageOptions fields}``. The file must hold
exactly ``x_train, y_train, x_test, y_test``: x uint8 or float (finite), ``[N, H, W]`` (one
channel), ``[N, C, H, W]`` or ``[N, D]`` (flat features: a vector dataset, input shape
``(D,)``), train and test examples of the same shape; y 1-D integers, one per example, in
``0..K-1`` with ``K = max label + 1 >= 2`` classes. The npy headers (shape, dtype) are read
first, so an object array or a member larger than this machine's memory is refused before
anything is loaded; then ``np.load(path, allow_pickle=False)`` reads it. Every problem is a
one-line UserError naming the file.
"""

from __future__ import annotations

import os
import zipfile
import zlib
from pathlib import Path

import numpy as np

from dlscope.data.fingerprint import arrays_sha256
from dlscope.data.images import DataInfo, ImageArrays, image_options, tensor_nbytes
from dlscope.data.memory import gib, memory_bytes
from dlscope.errors import UserError

KEYS = ("x_train", "y_train", "x_test", "y_test")
MAX_CLASSES = 65536  # a label is a class index; a larger one is almost surely not a class

_LOADED: dict[tuple, ImageArrays] = {}


def _file(path: str | os.PathLike) -> Path:
    p = Path(path).expanduser()
    if not p.exists():
        raise UserError(f"npz file {p} does not exist")
    if not p.is_file():
        raise UserError(f"npz file {p} is not a file (a directory?)")
    return p


def read_headers(path: str | os.PathLike) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
    """``{name: (shape, dtype)}`` of the four arrays, read from the npy headers only.

    Raises:
        UserError: not a readable zip/npz, a missing or extra array, an object array, an
            unsupported header, or an array larger than this machine's memory.
    """
    p = _file(path)
    if not zipfile.is_zipfile(p):
        raise UserError(f"npz file {p}: not a zip/npz archive (np.savez writes one)")
    out: dict[str, tuple[tuple[int, ...], np.dtype]] = {}
    try:
        with zipfile.ZipFile(p) as zf:
            names = zf.namelist()
            keys = [n[:-4] if n.endswith(".npy") else n for n in names]
            missing = [k for k in KEYS if k not in keys]
            extra = [k for k in keys if k not in KEYS]
            if missing or extra:
                what = "; ".join(filter(None, [
                    f"missing {', '.join(missing)}" if missing else "",
                    f"unexpected {', '.join(extra)}" if extra else ""]))
                raise UserError(f"npz file {p}: {what} (it must hold exactly "
                                f"{', '.join(KEYS)})")
            if len(set(keys)) != len(keys):
                raise UserError(f"npz file {p}: an array is stored twice")
            for name, key in zip(names, keys, strict=True):
                with zf.open(name) as f:
                    version = np.lib.format.read_magic(f)
                    if version == (1, 0):
                        shape, _fortran, dtype = np.lib.format.read_array_header_1_0(f)
                    elif version == (2, 0):
                        shape, _fortran, dtype = np.lib.format.read_array_header_2_0(f)
                    else:
                        raise UserError(f"npz file {p}: {key} has npy format {version}, "
                                        "expected 1.0 or 2.0")
                out[key] = (tuple(int(n) for n in shape), np.dtype(dtype))
    except UserError:
        raise
    except (zipfile.BadZipFile, OSError, EOFError, ValueError, zlib.error) as e:
        raise UserError(f"npz file {p}: unreadable ({type(e).__name__}: {e})") from None
    limit = memory_bytes()
    total = 0
    for key, (shape, dtype) in out.items():
        if dtype.hasobject:
            raise UserError(f"npz file {p}: {key} is an object array ({dtype}); only "
                            "numeric arrays are allowed (no pickle)")
        size = int(np.prod(shape, dtype=object)) * dtype.itemsize
        total += size
        if size > limit:
            raise UserError(f"npz file {p}: {key} {shape} {dtype} takes {gib(size)}, more "
                            f"than this machine's memory ({gib(limit)})")
    if total > limit:
        raise UserError(f"npz file {p}: its arrays take {gib(total)}, more than this "
                        f"machine's memory ({gib(limit)})")
    return out


def check_arrays(arrays: dict[str, np.ndarray], where: str) -> int:
    """Raise a one-line UserError unless the four arrays are a classification dataset as the
    module docstring says; return the number of classes K."""
    for part in ("train", "test"):
        x, y = arrays[f"x_{part}"], arrays[f"y_{part}"]
        if not (x.dtype == np.uint8 or x.dtype.kind == "f"):
            raise UserError(f"{where}: x_{part} is {x.dtype}, expected uint8 or float")
        if x.ndim not in (2, 3, 4) or x.shape[0] < 1 or 0 in x.shape:
            raise UserError(f"{where}: x_{part} has shape {x.shape}, expected [N, H, W], "
                            "[N, C, H, W] or [N, D] with N >= 1")
        if x.dtype.kind == "f":
            bad = int(x.size - np.count_nonzero(np.isfinite(x)))
            if bad:
                raise UserError(f"{where}: x_{part} has {bad} non-finite values (NaN or inf)")
        if y.ndim != 1 or y.dtype.kind not in "iu":
            raise UserError(f"{where}: y_{part} is {y.dtype} {y.shape}, expected 1-D "
                            "integer class labels")
        if len(y) != len(x):
            raise UserError(f"{where}: y_{part} has {len(y)} labels but x_{part} has "
                            f"{len(x)} examples")
        if y.min() < 0:
            raise UserError(f"{where}: y_{part} has label {y.min()}, expected 0..K-1")
    if arrays["x_train"].shape[1:] != arrays["x_test"].shape[1:]:
        raise UserError(f"{where}: train examples are {arrays['x_train'].shape[1:]} but test "
                        f"examples are {arrays['x_test'].shape[1:]}")
    k = int(max(arrays["y_train"].max(), arrays["y_test"].max())) + 1
    if k < 2:
        raise UserError(f"{where}: every label is 0; a classification needs 2 classes or more")
    if k > MAX_CLASSES:
        raise UserError(f"{where}: the largest label {k - 1} means {k} classes, more than "
                        f"{MAX_CLASSES}; labels must be class indices 0..K-1")
    return k


def load_npz_arrays(path: str | os.PathLike) -> ImageArrays:
    """The checked, fingerprinted arrays of an npz file, loaded once per process and file
    (the key is the resolved path, its size and mtime; the arrays are read-only).

    Args:
        path: the ``.npz`` file.

    Returns:
        ImageArrays named "npz" (never official), labels int64.

    Raises:
        UserError: a one-line reason (see :func:`read_headers`, :func:`check_arrays`).
    """
    p = _file(path).resolve()
    st = p.stat()
    key = (str(p), st.st_size, st.st_mtime_ns)
    if key in _LOADED:
        return _LOADED[key]
    read_headers(p)
    where = f"npz file {p}"
    try:
        with np.load(p, allow_pickle=False) as z:
            arrays = {k: z[k] for k in KEYS}
    except (ValueError, OSError, EOFError, KeyError, zipfile.BadZipFile, zlib.error,
            MemoryError) as e:
        raise UserError(f"{where}: unreadable ({type(e).__name__}: {e})") from None
    n_classes = check_arrays(arrays, where)
    for k in ("y_train", "y_test"):
        arrays[k] = arrays[k].astype(np.int64)
    digest = arrays_sha256(arrays)
    loaded = ImageArrays(**arrays, n_classes=n_classes, name="npz", official=False,
                         source=f"{where} (content sha256 {digest[:12]})", sha256=digest)
    _LOADED[key] = loaded
    return loaded


def _path(options: dict) -> tuple[str, dict]:
    options = dict(options)
    path = options.pop("path", None)
    if not isinstance(path, (str, os.PathLike)) or not str(path):
        raise UserError("data npz: 'path' (the .npz file) is required")
    return str(path), options


def npz_dataset(device: str = "cpu", **options):
    """The Dataset of ``{"kind": "npz", "path": ..., **ImageOptions fields}``."""
    path, rest = _path(options)
    opts = image_options("npz", rest)
    ds = load_npz_arrays(path).dataset(opts)
    return ds if str(device) == "cpu" else ds.to(device)


def npz_identity(**options) -> dict:
    """What a run's hash covers: the content fingerprint (not the path)."""
    path, _ = _path(options)
    arrays = load_npz_arrays(path)
    return {"data": "npz", "official": False, "sha256": arrays.sha256}


def npz_nbytes(**options) -> int:
    """Bytes of the tensors, from the npy headers alone (nothing is loaded)."""
    path, rest = _path(options)
    opts = image_options("npz", rest)
    headers = read_headers(path)
    return tensor_nbytes(headers["x_train"][0], headers["x_test"][0], opts.train_subset)


def npz_info(**options) -> DataInfo:
    """Shape, classes and origin of the file's data (loaded once per process)."""
    path, rest = _path(options)
    image_options("npz", rest)
    return load_npz_arrays(path).info()
