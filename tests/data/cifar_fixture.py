"""A tiny CIFAR-format archive, laid out like the official "python version".

Each batch is a Python-2 style pickle (protocol 2, str keys written as Python 2 ``str``
opcodes, so they load as ``str`` with ``encoding="latin1"``) of a dict with b"batch_label",
b"labels", b"data" (uint8 ``[n, 3072]``) and b"filenames", exactly as in
``cifar-10-batches-py/data_batch_1`` and friends. Reuse: ``make_cifar_archive(tmp_path)``.
"""

from __future__ import annotations

import hashlib
import io
import pickle
import struct
import tarfile
from pathlib import Path

import numpy as np

FOLDER = "cifar-10-batches-py"
BATCHES = ("data_batch_1", "data_batch_2", "data_batch_3", "data_batch_4", "data_batch_5",
           "test_batch")
CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship",
           "truck"]


class Py2Pickler(pickle._Pickler):  # the pure-Python pickler, so bytes can be saved as py2 str
    """Writes ``bytes`` as Python 2 ``str`` (SHORT_BINSTRING / BINSTRING), as cPickle did."""

    dispatch = pickle._Pickler.dispatch.copy()

    def save_py2_str(self, obj: bytes) -> None:
        n = len(obj)
        if n < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([n]) + obj)
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", n) + obj)
        self.memoize(obj)

    dispatch[bytes] = save_py2_str


def py2_pickle(obj) -> bytes:
    """``obj`` pickled at protocol 2 with bytes as Python 2 str."""
    buf = io.BytesIO()
    Py2Pickler(buf, protocol=2).dump(obj)
    return buf.getvalue()


def batch_bytes(data: np.ndarray, labels: list[int], name: str) -> bytes:
    return py2_pickle({
        b"batch_label": f"{name} of 6".encode(),
        b"labels": [int(v) for v in labels],
        b"data": np.ascontiguousarray(data, dtype=np.uint8),
        b"filenames": [f"img_{i}.png".encode() for i in range(len(labels))],
    })


def make_batches(n_per_batch: int = 40, seed: int = 0) -> dict[str, tuple[np.ndarray, list]]:
    """``{batch name: (data uint8 [n, 3072], labels)}``, random but seeded."""
    rng = np.random.default_rng(seed)
    return {name: (rng.integers(0, 256, size=(n_per_batch, 3072), dtype=np.uint8),
                   rng.integers(0, 10, size=n_per_batch).tolist()) for name in BATCHES}


def make_files(batches: dict, *, replace: dict[str, bytes] | None = None) -> dict[str, bytes]:
    """File name -> bytes of a CIFAR folder (batches and batches.meta); ``replace``
    overrides a file's bytes."""
    files = {name: batch_bytes(d, y, name) for name, (d, y) in batches.items()}
    files["batches.meta"] = py2_pickle({b"label_names": [c.encode() for c in CLASSES],
                                        b"num_cases_per_batch": 10000, b"num_vis": 3072})
    files.update(replace or {})
    return files


def md5_of(files: dict[str, bytes]) -> dict[str, str]:
    return {name: hashlib.md5(data).hexdigest() for name, data in files.items()}


def write_archive(path: Path, files: dict[str, bytes]) -> Path:
    with tarfile.open(path, "w:gz") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(f"{FOLDER}/{name}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def write_folder(root: Path, files: dict[str, bytes]) -> Path:
    folder = root / FOLDER
    folder.mkdir(parents=True, exist_ok=True)
    for name, data in files.items():
        (folder / name).write_bytes(data)
    return folder


def make_cifar_archive(tmp_path: Path, n_per_batch: int = 40, seed: int = 0,
                       name: str = "cifar-10-python.tar.gz") -> tuple[Path, dict[str, str]]:
    """A tiny CIFAR-format ``.tar.gz`` in ``tmp_path`` and its md5 table (every batch,
    batches.meta and the archive itself, keyed by file name)."""
    files = make_files(make_batches(n_per_batch, seed))
    path = write_archive(Path(tmp_path) / name, files)
    table = md5_of(files)
    table[path.name] = hashlib.md5(path.read_bytes()).hexdigest()
    return path, table
