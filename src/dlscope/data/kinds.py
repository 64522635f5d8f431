"""Dataset kinds: what a run's dataset description `{"kind": ..., **options}` builds.

A run asks for its data by description (`ctx.dataset({"kind": "mnist", "flatten": True})`),
so any executor can build it in any process; its RunSpec carries the same description
(`RunSpec.data`), for its hash and its memory estimate. Each kind maps to one builder called
as `build(device=..., **options)`, and optionally to `identity(**options)` (what the run's hash
must cover beyond the description: the content fingerprint of data loaded from outside),
`nbytes(**options)` (the bytes its tensors take at least) and `info(**options)` (a DataInfo:
input shape, classes, name, official, source, without building tensors); `register_kind`
adds one (an outside experiment may bring its own data). Built in:

    mnist      dlscope.data.mnist_dataset, options = MnistOptions fields
    cifar10    path (archive or folder), optional md5 table, ImageOptions fields
    npz        path (a .npz of x_train, y_train, x_test, y_test), ImageOptions fields
    function   dlscope.data.function_dataset (spec, domain, n_train, n_test, seed)
"""

from __future__ import annotations

import sys
from collections.abc import Callable

from dlscope.data.cifar10 import cifar10_dataset, cifar10_identity, cifar10_info, cifar10_nbytes
from dlscope.data.dataset import Dataset
from dlscope.data.functions import function_dataset
from dlscope.data.images import DataInfo
from dlscope.data.mnist import MnistOptions, mnist_dataset, mnist_hash_identity, mnist_info
from dlscope.data.npz import npz_dataset, npz_identity, npz_info, npz_nbytes
from dlscope.errors import UserError

Builder = Callable[..., Dataset]

KINDS: dict[str, Builder] = {}
IDENTITIES: dict[str, Callable[..., dict]] = {}
SIZES: dict[str, Callable[..., int]] = {}
INFOS: dict[str, Callable[..., DataInfo]] = {}


def register_kind(kind: str, build: Builder, *, identity: Callable[..., dict] | None = None,
                  nbytes: Callable[..., int] | None = None,
                  info: Callable[..., DataInfo] | None = None) -> None:
    """Make `{"kind": kind, **options}` build `build(device=device, **options)`.

    `identity(**options)`: what a run's hash covers beyond the description (e.g. a content
    fingerprint of files read from outside); `nbytes(**options)`: a lower bound of the bytes
    the dataset's tensors take (for the up-front size limits); `info(**options)`: the
    DataInfo (input shape before flatten, classes, name, official, source)."""
    if not isinstance(kind, str) or not kind:
        raise UserError(f"dataset kind must be a non-empty string, got {kind!r}")
    for what, fn in (("builder", build), ("identity", identity), ("nbytes", nbytes),
                     ("info", info)):
        if fn is not None and not callable(fn):
            raise UserError(f"dataset kind {kind!r}: {what} {fn!r} is not callable")
    KINDS[kind] = build
    for table, fn in ((IDENTITIES, identity), (SIZES, nbytes), (INFOS, info)):
        if fn is None:
            table.pop(kind, None)
        else:
            table[kind] = fn


def _split(desc: dict) -> tuple[object, dict]:
    options = dict(desc)
    return options.pop("kind", None), options


def identity(desc: dict | None) -> dict | None:
    """What a run's hash must cover about the data `desc` describes beyond `desc` itself
    (None for data generated from the description alone, or no data)."""
    if not isinstance(desc, dict):
        return None
    kind, options = _split(desc)
    fn = IDENTITIES.get(kind)
    return None if fn is None else fn(**options)


def nbytes(desc: dict | None) -> int | None:
    """A lower bound of the bytes the described dataset takes in memory (None: unknown)."""
    if not isinstance(desc, dict):
        return None
    kind, options = _split(desc)
    fn = SIZES.get(kind)
    return None if fn is None else int(fn(**options))


def info(desc: dict) -> DataInfo | None:
    """What the described data is, without building tensors (raw arrays are loaded and
    checked once per process): input shape before flatten, classes, name, official, source.

    Returns:
        DataInfo, or None for a kind that registered no `info` (e.g. "function").

    Raises:
        UserError: not a description, an unknown kind, or bad data.
    """
    if not isinstance(desc, dict):
        raise UserError(f"a data description is a table with a 'kind', got {desc!r}")
    kind, options = _split(desc)
    if kind not in KINDS:
        raise UserError(f"unknown dataset kind {kind!r} (one of: {', '.join(KINDS)})")
    fn = INFOS.get(kind)
    return None if fn is None else fn(**options)


def build_dataset(desc: dict, device: str = "cpu") -> Dataset:
    """The Dataset a description asks for, built afresh (callers cache it)."""
    kind, options = _split(desc)
    if kind not in KINDS:
        raise UserError(f"unknown dataset kind {kind!r} (one of: {', '.join(KINDS)})")
    return KINDS[kind](device=device, **options)


def _stderr(msg: str) -> None:
    print(msg, file=sys.stderr)


def _mnist(device: str = "cpu", **options) -> Dataset:
    # progress lines (fetching, caching) go to stderr: a worker's stdout may be a pipe
    return mnist_dataset(MnistOptions(**options), device=device, log=_stderr)


def _mnist_nbytes(train_subset=None, resize=28, **_options) -> int:
    return 4 * resize * resize * ((train_subset or 60000) + 10000)  # float32 images


def _function_nbytes(n_train=1000, **_options) -> int:
    return 4 * 2 * int(n_train)  # x and y, float32 [N, 1]


register_kind("mnist", _mnist, identity=mnist_hash_identity, nbytes=_mnist_nbytes,
              info=mnist_info)
register_kind("cifar10", cifar10_dataset, identity=cifar10_identity, nbytes=cifar10_nbytes,
              info=cifar10_info)
register_kind("npz", npz_dataset, identity=npz_identity, nbytes=npz_nbytes, info=npz_info)
register_kind("function", function_dataset, nbytes=_function_nbytes)
