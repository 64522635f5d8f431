"""The IDX file format of MNIST, Fashion-MNIST and torchvision's ``MNIST/raw`` folder.

Layout: two zero bytes, a dtype code, the number of dimensions ``d``, then ``d`` big-endian
uint32 sizes, then the data in big-endian C order. A ``.gz`` suffix means gzip.
"""

from __future__ import annotations

import gzip
import os
import struct
import zlib
from pathlib import Path

import numpy as np

from dlscope.errors import UserError

# IDX dtype code -> numpy dtype (big-endian, as stored)
_CODES = {
    0x08: np.dtype("u1"),
    0x09: np.dtype("i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}
_KINDS = {(dt.kind, dt.itemsize): code for code, dt in _CODES.items()}

IDX_NAMES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}


def _read_bytes(path: Path) -> bytes:
    try:
        if path.name.endswith(".gz"):
            with gzip.open(path, "rb") as f:
                return f.read()
        return path.read_bytes()
    except FileNotFoundError:
        raise UserError(f"IDX file not found: {path}") from None
    except (OSError, EOFError, zlib.error) as e:  # gzip.BadGzipFile is an OSError
        raise UserError(f"cannot read IDX file {path}: corrupt or truncated ({e})") from None


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Read an IDX file (gzip if the name ends in ``.gz``) into a native-endian array."""
    path = Path(path)
    data = _read_bytes(path)
    if len(data) < 4:
        raise UserError(f"{path} is not an IDX file: only {len(data)} bytes")
    zero, code, ndim = struct.unpack(">HBB", data[:4])
    if zero != 0 or code not in _CODES:
        raise UserError(
            f"{path} is not an IDX file: bad magic number 0x{data[:4].hex()} "
            f"(expected 0x0000 then a dtype code in {sorted(hex(c) for c in _CODES)})"
        )
    if ndim == 0:
        raise UserError(f"{path} is not a valid IDX file: zero dimensions")
    header = 4 + 4 * ndim
    if len(data) < header:
        raise UserError(f"{path} is truncated: header needs {header} bytes, file has {len(data)}")
    shape = struct.unpack(f">{ndim}I", data[4:header])
    dtype = _CODES[code]
    expected = header + int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if len(data) != expected:
        what = "truncated" if len(data) < expected else "longer than its header says"
        raise UserError(
            f"{path} is {what}: shape {shape} of {dtype.name} needs {expected} bytes, "
            f"file has {len(data)}"
        )
    arr = np.frombuffer(data, dtype=dtype, offset=header).reshape(shape)
    return arr.astype(dtype.newbyteorder("="), copy=True)


def write_idx(path: str | os.PathLike, array: np.ndarray) -> None:
    """Write ``array`` as an IDX file (gzip if the name ends in ``.gz``)."""
    path = Path(path)
    array = np.asarray(array)
    key = (array.dtype.kind, array.dtype.itemsize)
    if key not in _KINDS:
        raise UserError(f"cannot write {array.dtype} to IDX file {path}: unsupported dtype")
    if array.ndim == 0 or array.ndim > 255:
        raise UserError(f"cannot write a {array.ndim}-d array to IDX file {path}")
    code = _KINDS[key]
    payload = (
        struct.pack(">HBB", 0, code, array.ndim)
        + struct.pack(f">{array.ndim}I", *array.shape)
        + np.ascontiguousarray(array, dtype=_CODES[code]).tobytes()
    )
    if path.name.endswith(".gz"):
        with gzip.open(path, "wb") as f:
            f.write(payload)
    else:
        path.write_bytes(payload)


def find_idx_folder(folder: str | os.PathLike) -> dict[str, Path]:
    """Locate the four standard MNIST IDX files (plain or ``.gz``).

    Looks in ``folder``, ``folder/MNIST/raw`` and ``folder/raw`` (torchvision layouts) and
    returns ``{"train_images", "train_labels", "test_images", "test_labels"} -> path``.
    """
    folder = Path(folder).expanduser()
    if not folder.is_dir():
        raise UserError(f"MNIST folder {folder} does not exist or is not a folder")
    for base in (folder, folder / "MNIST" / "raw", folder / "raw"):
        found = {}
        for key, name in IDX_NAMES.items():
            for candidate in (base / name, base / f"{name}.gz"):
                if candidate.is_file():
                    found[key] = candidate
                    break
        if len(found) == len(IDX_NAMES):
            return found
    raise UserError(
        f"MNIST folder {folder} does not hold the four IDX files "
        f"({', '.join(IDX_NAMES.values())}, each plain or .gz) in itself, "
        "in MNIST/raw or in raw"
    )
