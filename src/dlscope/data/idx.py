"""The IDX file format of MNIST, Fashion-MNIST and torchvision's ``MNIST/raw`` folder.

Layout: two zero bytes, a dtype code, the number of dimensions ``d``, then ``d`` big-endian
uint32 sizes, then the data in big-endian C order. A ``.gz`` suffix means gzip.
"""

from __future__ import annotations

import gzip
import math
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


MAX_IDX_BYTES = 2 * 2**30  # MNIST's largest file is 47 MB; a header asking for more is refused


def _open(path: Path):
    return gzip.open(path, "rb") if path.name.endswith(".gz") else open(path, "rb")


def _read_exact(f, n: int) -> bytes:
    """At most ``n`` bytes (a gzip stream is decompressed only that far: bomb-safe)."""
    chunks, left = [], n
    while left > 0:
        chunk = f.read(min(left, 1 << 24))
        if not chunk:
            break
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)


def read_idx(path: str | os.PathLike, max_bytes: int = MAX_IDX_BYTES) -> np.ndarray:
    """Read an IDX file (gzip if the name ends in ``.gz``) into a native-endian array.

    Bounded: the header's size is checked against ``max_bytes`` and (plain files) the file
    size before the data is read; a gzip file is decompressed no further than the header says.
    """
    path = Path(path)
    try:
        with _open(path) as f:
            head = _read_exact(f, 4)
            if len(head) < 4:
                raise UserError(f"{path} is not an IDX file: only {len(head)} bytes")
            zero, code, ndim = struct.unpack(">HBB", head)
            if zero != 0 or code not in _CODES:
                raise UserError(
                    f"{path} is not an IDX file: bad magic number 0x{head.hex()} "
                    f"(expected 0x0000 then a dtype code in {sorted(hex(c) for c in _CODES)})"
                )
            if ndim == 0:
                raise UserError(f"{path} is not a valid IDX file: zero dimensions")
            header = 4 + 4 * ndim
            dims = _read_exact(f, 4 * ndim)
            if len(dims) < 4 * ndim:
                raise UserError(f"{path} is truncated: header needs {header} bytes, file has "
                                f"{4 + len(dims)}")
            shape = struct.unpack(f">{ndim}I", dims)
            dtype = _CODES[code]
            n_data = math.prod(shape) * dtype.itemsize  # Python ints: no overflow
            expected = header + n_data
            if expected > max_bytes:
                raise UserError(
                    f"{path}: its header says shape {shape} of {dtype.name} ({expected:,} "
                    f"bytes), more than the limit of {max_bytes:,} bytes; not an MNIST-format file"
                )
            if not path.name.endswith(".gz"):
                size = path.stat().st_size
                if size != expected:
                    what = "truncated" if size < expected else "longer than its header says"
                    raise UserError(
                        f"{path} is {what}: shape {shape} of {dtype.name} needs {expected} "
                        f"bytes, file has {size}"
                    )
            body = _read_exact(f, n_data + 1)  # one byte more tells a longer file
    except FileNotFoundError:
        raise UserError(f"IDX file not found: {path}") from None
    except IsADirectoryError:
        raise UserError(f"IDX file {path} is a folder") from None
    except (OSError, EOFError, zlib.error) as e:  # gzip.BadGzipFile is an OSError
        raise UserError(f"cannot read IDX file {path}: corrupt or truncated ({e})") from None
    if len(body) != n_data:
        what = "truncated" if len(body) < n_data else "longer than its header says"
        got = f"{header + len(body)}" if len(body) < n_data else f"more than {expected}"
        raise UserError(
            f"{path} is {what}: shape {shape} of {dtype.name} needs {expected} bytes, "
            f"file has {got}"
        )
    arr = np.frombuffer(body, dtype=dtype).reshape(shape)
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
