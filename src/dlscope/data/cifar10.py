"""The ``cifar10`` kind: CIFAR-10's "python version", checksummed before it is unpickled.

``{"kind": "cifar10", "path": ..., **ImageOptions fields}`` plus an optional ``"md5":
{filename: md5hex}`` used instead of the published checksums (for CIFAR-format data of one's
own; tests pass theirs). ``path`` is the archive ``cifar-10-python.tar.gz`` (read in memory,
member by member, never extracted), its extracted folder ``cifar-10-batches-py``, or a
folder holding that folder.

Order of checks: the archive's md5 (when given an archive, and when the table has one), then
the md5 of each of ``data_batch_1..5`` and ``test_batch`` (always) and of ``batches.meta``
(when present), all before anything is unpickled; then each batch goes through the
restricted unpickler (:data:`dlscope.data.safe_pickle.ARRAY_GLOBALS`: dicts, lists, str,
bytes, ints and numpy arrays, nothing else). A batch is a Python-2 pickle of a dict with
``data`` (uint8 ``[n, 3072]``: 1024 red, 1024 green, 1024 blue values, rows of 32) and
``labels`` (ints 0..9); the keys may be str or bytes. Images become uint8 ``[n, 3, 32, 32]``
with pixel ``[c, i, j] = data[row, c*1024 + i*32 + j]``.

The data is "official" (name ``cifar10``) only when every batch matched the published md5
(from torchvision's loader, ``torchvision/datasets/cifar.py``) and the sizes are 50,000 +
10,000; any other data checked against a given table is "CIFAR-format data, not the official
CIFAR-10" (name ``other``), which may have fewer images per batch.
"""

from __future__ import annotations

import hashlib
import os
import re
import tarfile
import zlib
from pathlib import Path, PurePosixPath

import numpy as np

from dlscope.data.fingerprint import arrays_sha256
from dlscope.data.images import DataInfo, ImageArrays, image_options
from dlscope.data.safe_pickle import ARRAY_GLOBALS, safe_load
from dlscope.errors import UserError

ARCHIVE_NAME = "cifar-10-python.tar.gz"
FOLDER_NAME = "cifar-10-batches-py"
TRAIN_FILES = tuple(f"data_batch_{i}" for i in range(1, 6))
TEST_FILE = "test_batch"
META_FILE = "batches.meta"
BATCH_FILES = (*TRAIN_FILES, TEST_FILE)
# published checksums (torchvision/datasets/cifar.py, class CIFAR10)
PUBLISHED_MD5 = {
    ARCHIVE_NAME: "c58f30108f718f92721af3b95e74349a",
    "data_batch_1": "c99cafc152244af753f735de768cd75f",
    "data_batch_2": "d4bba439e000b95fd0a9bffe97cbabec",
    "data_batch_3": "54ebc095f3ab1f0389bbae665268c751",
    "data_batch_4": "634d18415352ddfa80567beed471001a",
    "data_batch_5": "482c414d41f54cd18b22e5b47cb7c3cb",
    TEST_FILE: "40351d587109b95175f43aff81a1287e",
    META_FILE: "5ff9c542aee3614f3951f8cda6e48888",
}
IMAGES_PER_BATCH = 10000
MAX_MEMBER_BYTES = 64 * 2**20  # an official batch is 31 MB
MAX_MEMBERS = 1000  # the official archive has 9 entries
_HEX32 = re.compile(r"[0-9a-f]{32}")

_LOADED: dict[tuple, ImageArrays] = {}


def md5_table(md5: dict | None) -> dict[str, str]:
    """The checksums to use: the published ones, or a given table (checked: file name ->
    32 hex digits, every batch file named; the archive and batches.meta optional)."""
    if md5 is None:
        return dict(PUBLISHED_MD5)
    if not isinstance(md5, dict) or not all(isinstance(k, str) for k in md5):
        raise UserError(f"data cifar10: md5 must be a table {{file name: md5}}, got {md5!r}")
    table = {}
    for name, value in md5.items():
        if not isinstance(value, str) or not _HEX32.fullmatch(value.lower()):
            raise UserError(f"data cifar10: md5 of {name!r} is {value!r}, expected 32 hex "
                            "digits")
        table[name] = value.lower()
    missing = [n for n in BATCH_FILES if n not in table]
    if missing:
        raise UserError(f"data cifar10: the md5 table lacks {', '.join(missing)}")
    return table


def _md5(data: bytes) -> str:
    return hashlib.md5(data, usedforsecurity=False).hexdigest()


def _file_md5(path: Path) -> str:
    h = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(2**20), b""):
            h.update(block)
    return h.hexdigest()


def _read_archive(p: Path, table: dict[str, str], wanted: set[str]) -> dict[str, bytes]:
    expected = table.get(p.name, table.get(ARCHIVE_NAME))
    if expected is not None:
        try:
            got = _file_md5(p)
        except OSError as e:
            raise UserError(f"CIFAR-10 archive {p}: unreadable ({e})") from None
        if got != expected:
            raise UserError(f"CIFAR-10 archive {p}: md5 {got} does not match the expected "
                            f"{expected}; refusing to unpickle")
    files: dict[str, bytes] = {}
    try:
        with tarfile.open(p, mode="r:*") as tar:
            for i, member in enumerate(tar):
                if i >= MAX_MEMBERS:
                    raise UserError(f"CIFAR-10 archive {p}: more than {MAX_MEMBERS} entries")
                parts = PurePosixPath(member.name).parts
                name = parts[-1] if parts else ""
                if name not in wanted or parts[:-1] not in ((), (FOLDER_NAME,)):
                    continue
                where = f"CIFAR-10 archive {p}: {member.name}"
                if not member.isreg():
                    raise UserError(f"{where} is not a regular file")
                if member.size > MAX_MEMBER_BYTES:
                    raise UserError(f"{where} is {member.size} bytes, more than a CIFAR batch "
                                    f"can be ({MAX_MEMBER_BYTES})")
                if name in files:
                    raise UserError(f"{where}: {name} appears twice")
                f = tar.extractfile(member)
                files[name] = f.read(member.size) if f is not None else b""
    except UserError:
        raise
    except (tarfile.TarError, OSError, EOFError, zlib.error) as e:
        raise UserError(f"CIFAR-10 archive {p}: not a readable tar archive "
                        f"({type(e).__name__}: {e})") from None
    return files


def _read_folder(p: Path, wanted: set[str]) -> dict[str, bytes]:
    if (p / FOLDER_NAME).is_dir():
        p = p / FOLDER_NAME
    files: dict[str, bytes] = {}
    for name in sorted(wanted):
        f = p / name
        if not f.is_file():
            continue
        try:
            size = f.stat().st_size
            if size > MAX_MEMBER_BYTES:
                raise UserError(f"CIFAR-10 folder {p}: {name} is {size} bytes, more than a "
                                f"CIFAR batch can be ({MAX_MEMBER_BYTES})")
            files[name] = f.read_bytes()
        except OSError as e:
            raise UserError(f"CIFAR-10 folder {p}: {name} unreadable ({e})") from None
    return files


def _decode_batch(obj, where: str) -> tuple[np.ndarray, np.ndarray]:
    if not isinstance(obj, dict):
        raise UserError(f"{where}: expected a dict, got {type(obj).__name__}")
    entry = {(k.decode("latin1") if isinstance(k, bytes) else k): v for k, v in obj.items()}
    data, labels = entry.get("data"), entry.get("labels")
    if not isinstance(data, np.ndarray) or labels is None:
        raise UserError(f"{where}: expected keys 'data' (an array) and 'labels'")
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * 32 * 32 \
            or data.shape[0] < 1:
        raise UserError(f"{where}: data is {data.dtype} {data.shape}, expected uint8 "
                        "[n, 3072] (3x32x32 images)")
    if not isinstance(labels, (list, np.ndarray)) or not all(
            isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in labels):
        raise UserError(f"{where}: labels must be a list of integers")
    y = np.asarray(labels, dtype=np.int64).reshape(-1)
    if len(y) != len(data):
        raise UserError(f"{where}: {len(y)} labels for {len(data)} images")
    if len(y) and (y.min() < 0 or y.max() > 9):
        raise UserError(f"{where}: labels outside 0..9 ({y.min()}..{y.max()})")
    return data.reshape(-1, 3, 32, 32), y


def _decode_meta(obj, where: str) -> tuple[str, ...] | None:
    if not isinstance(obj, dict):
        raise UserError(f"{where}: expected a dict, got {type(obj).__name__}")
    entry = {(k.decode("latin1") if isinstance(k, bytes) else k): v for k, v in obj.items()}
    names = entry.get("label_names")
    if not isinstance(names, list) or len(names) != 10 or not all(
            isinstance(n, (str, bytes)) for n in names):
        raise UserError(f"{where}: label_names must be a list of 10 names")
    return tuple(n.decode("latin1") if isinstance(n, bytes) else n for n in names)


def verified_files(p: Path, table: dict[str, str]) -> tuple[dict[str, bytes], dict[str, str]]:
    """The bytes of the batch files (and batches.meta) of an archive or folder, every one
    checked against ``table`` (the archive's md5 first, when it has one); nothing unpickled.

    Returns:
        ``(files, md5s)``: file name -> bytes, file name -> its md5.
    """
    wanted = {*BATCH_FILES, META_FILE}
    what = "archive" if p.is_file() else "folder"
    files = _read_archive(p, table, wanted) if p.is_file() else _read_folder(p, wanted)
    missing = [n for n in BATCH_FILES if n not in files]
    if missing:
        raise UserError(f"CIFAR-10 {what} {p}: missing {', '.join(missing)}")
    got = {name: _md5(data) for name, data in files.items()}
    for name in (*BATCH_FILES, META_FILE):
        if name in files and name in table and got[name] != table[name]:
            raise UserError(f"CIFAR-10 {what} {p}: {name} has md5 {got[name]}, expected "
                            f"{table[name]}; refusing to unpickle")
    return files, got


def load_cifar_arrays(path: str | os.PathLike, md5: dict | None = None) -> ImageArrays:
    """CIFAR-10 (or CIFAR-format) arrays, checksummed, safely unpickled and checked; loaded
    once per process, path (with its size and mtime) and md5 table; read-only.

    Args:
        path: the archive, the ``cifar-10-batches-py`` folder or a folder holding it.
        md5: checksums to use instead of the published ones (see :func:`md5_table`).

    Returns:
        ImageArrays: x uint8 ``[N, 3, 32, 32]``, y int64 in 0..9, 10 classes; name
        "cifar10" and official for the verified CIFAR-10, else "other".

    Raises:
        UserError: one line naming the file: missing, wrong md5 ("refusing to unpickle"),
            a refused global in a pickle, or data of the wrong shape.
    """
    table = md5_table(md5)
    p = Path(path).expanduser()
    if not p.exists():
        raise UserError(f"CIFAR-10 path {p} does not exist")
    p = p.resolve()
    st = p.stat()
    key = (str(p), st.st_size, st.st_mtime_ns, tuple(sorted(table.items())))
    if key in _LOADED:
        return _LOADED[key]
    what = "archive" if p.is_file() else "folder"
    files, got = verified_files(p, table)
    classes = None
    if META_FILE in files and META_FILE in table:
        where = f"CIFAR-10 {what} {p}: {META_FILE}"
        classes = _decode_meta(safe_load(files[META_FILE], source=where,
                                         allowed=ARRAY_GLOBALS), where)
    parts = {}
    for name in BATCH_FILES:
        where = f"CIFAR-10 {what} {p}: {name}"
        parts[name] = _decode_batch(safe_load(files[name], source=where,
                                              allowed=ARRAY_GLOBALS), where)
    official = (all(got[n] == PUBLISHED_MD5[n] for n in BATCH_FILES)
                and all(len(parts[n][1]) == IMAGES_PER_BATCH for n in BATCH_FILES))
    if md5 is None and not official:  # cannot happen once the published md5s matched
        raise UserError(f"CIFAR-10 {what} {p}: not 50,000 + 10,000 images")
    arrays = {
        "x_train": np.concatenate([parts[n][0] for n in TRAIN_FILES]),
        "y_train": np.concatenate([parts[n][1] for n in TRAIN_FILES]),
        "x_test": parts[TEST_FILE][0],
        "y_test": parts[TEST_FILE][1],
    }
    digest = arrays_sha256(arrays)
    if official:
        source = f"CIFAR-10 {what} {p} (md5 verified)"
    else:
        source = (f"CIFAR-10 {what} {p}: CIFAR-format data, not the official CIFAR-10 "
                  f"(md5 checked against the given table; content sha256 {digest[:12]})")
    loaded = ImageArrays(**arrays, n_classes=10, name="cifar10" if official else "other",
                         official=official, source=source, sha256=digest, classes=classes)
    _LOADED[key] = loaded
    return loaded


def _split(options: dict) -> tuple[str, dict | None, dict]:
    options = dict(options)
    path = options.pop("path", None)
    md5 = options.pop("md5", None)
    if not isinstance(path, (str, os.PathLike)) or not str(path):
        raise UserError("data cifar10: 'path' (the archive or its folder) is required")
    return str(path), md5, options


def cifar10_dataset(device: str = "cpu", **options):
    """The Dataset of ``{"kind": "cifar10", "path": ..., ["md5": ...], **ImageOptions}``."""
    path, md5, rest = _split(options)
    opts = image_options("cifar10", rest)
    ds = load_cifar_arrays(path, md5).dataset(opts)
    return ds if str(device) == "cpu" else ds.to(device)


def cifar10_identity(**options) -> dict:
    """What a run's hash covers: official or not, and the content fingerprint (not the
    path, so a moved copy is the same data)."""
    path, md5, _ = _split(options)
    arrays = load_cifar_arrays(path, md5)
    return {"data": "cifar10" if arrays.official else "cifar-format",
            "official": arrays.official, "sha256": arrays.sha256}


def cifar10_nbytes(**options) -> int:
    """Bytes of the tensors: known without loading for the published checksums (the data
    is then 50,000 + 10,000 images or refused); otherwise from the loaded arrays."""
    path, md5, rest = _split(options)
    opts = image_options("cifar10", rest)
    if md5 is None:
        n = min(opts.train_subset or 50000, 50000) + 10000
        return (4 * 3 * 32 * 32 + 8) * n
    return load_cifar_arrays(path, md5).nbytes(opts)


def cifar10_info(**options) -> DataInfo:
    """Shape (3, 32, 32), 10 classes, official or not, and the origin (loads the arrays
    once per process)."""
    path, md5, rest = _split(options)
    image_options("cifar10", rest)
    return load_cifar_arrays(path, md5).info()
