"""A restricted unpickler that rebuilds numpy arrays and nothing else.

A pickle can name any importable callable and have it called (``os.system`` ...). The
unpickler here resolves only the few globals that numpy's array pickles use; every other
global is refused with a UserError before anything is imported or called. (So Python-3
pickles of protocol <= 2, which rebuild bytes via ``_codecs.encode``, are refused too; the
Python-2 ``mnist.pkl.gz`` and protocol 3-5 pickles load.)

Dicts, lists, tuples, str, bytes and numbers need no global and always load. A caller may
narrow the allow-list further (``allowed=``, a subset of :data:`NUMPY_GLOBALS`): the CIFAR-10
batches use :data:`ARRAY_GLOBALS`, the three globals a pickled ndarray needs. Nothing can
widen it.
"""

from __future__ import annotations

import io
import pickle
from typing import IO, Any

import numpy as np

from dlscope.errors import UserError

_core = np._core if hasattr(np, "_core") else np.core  # numpy>=2 / numpy<2
_multiarray, _frombuffer = _core.multiarray, _core.numeric._frombuffer

# (module, name) -> object. numpy<2 pickles say numpy.core, numpy>=2 pickles say numpy._core;
# both are resolved to the live objects without importing the deprecated module.
_ALLOWED: dict[tuple[str, str], Any] = {
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    ("numpy.core.multiarray", "_reconstruct"): _multiarray._reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): _multiarray._reconstruct,
    ("numpy.core.multiarray", "scalar"): _multiarray.scalar,
    ("numpy._core.multiarray", "scalar"): _multiarray.scalar,
    # pickle protocol 5 rebuilds contiguous arrays with frombuffer(...).reshape(...)
    ("numpy.core.numeric", "_frombuffer"): _frombuffer,
    ("numpy._core.numeric", "_frombuffer"): _frombuffer,
}


NUMPY_GLOBALS: frozenset[tuple[str, str]] = frozenset(_ALLOWED)
# what a pickled ndarray (any protocol <= 4, numpy 1 or 2) names: the CIFAR-10 batches
ARRAY_GLOBALS: frozenset[tuple[str, str]] = frozenset({
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
})


class NumpyOnlyUnpickler(pickle.Unpickler):
    """Unpickler whose ``find_class`` admits only numpy array/dtype reconstruction
    (``allowed``: a narrower subset of :data:`NUMPY_GLOBALS`)."""

    def __init__(self, file: IO[bytes], *, source: str = "pickle",
                 allowed: frozenset[tuple[str, str]] = NUMPY_GLOBALS, **kwargs: Any):
        super().__init__(file, **kwargs)
        self._source = source
        wider = set(allowed) - NUMPY_GLOBALS
        if wider:
            raise ValueError(f"not in the numpy allow-list: {sorted(wider)}")
        self._allowed = frozenset(allowed)

    def find_class(self, module: str, name: str) -> Any:
        try:
            if (module, name) not in self._allowed:
                raise KeyError(name)
            return _ALLOWED[(module, name)]
        except KeyError:
            raise UserError(
                f"{self._source}: refused to unpickle {module}.{name} "
                "(only numpy arrays are allowed)"
            ) from None

    def persistent_load(self, pid: Any) -> Any:
        raise UserError(f"{self._source}: refused persistent id in pickle")


def safe_load(fileobj: IO[bytes] | bytes, *, source: str = "pickle",
              allowed: frozenset[tuple[str, str]] = NUMPY_GLOBALS) -> Any:
    """Unpickle numpy arrays (and tuples/lists/dicts/numbers of them) from a file or bytes.

    Uses ``encoding="latin1"`` so that Python-2 pickles of arrays load (a Python-2 ``str``
    comes back as ``str``). Any other global, or a corrupt stream, raises UserError naming
    ``source``.

    Args:
        fileobj: the pickle, a binary file or bytes.
        source: named in every error.
        allowed: the globals admitted, a subset of :data:`NUMPY_GLOBALS` (e.g.
            :data:`ARRAY_GLOBALS`).

    Returns:
        The unpickled object.
    """
    if isinstance(fileobj, (bytes, bytearray, memoryview)):
        fileobj = io.BytesIO(fileobj)
    unpickler = NumpyOnlyUnpickler(fileobj, source=source, allowed=allowed, encoding="latin1")
    try:
        return unpickler.load()
    except UserError:
        raise
    except (
        pickle.UnpicklingError,
        EOFError,
        ValueError,
        TypeError,
        AttributeError,
        IndexError,
        KeyError,
        MemoryError,
        OverflowError,
    ) as e:
        raise UserError(f"{source}: corrupt pickle ({type(e).__name__}: {e})") from None
