"""Dataset kinds: what a run's dataset description `{"kind": ..., **options}` builds.

A run asks for its data by description (`ctx.dataset({"kind": "mnist", "flatten": True})`),
so any executor can build it in any process; its RunSpec carries the same description
(`RunSpec.data`), for its hash and its memory estimate. Each kind maps to one builder called
as `build(device=..., **options)`, and optionally to `identity(**options)` (what the run's hash
must cover beyond the description: the content fingerprint of data loaded from outside) and
`nbytes(**options)` (the bytes its tensors take at least); `register_kind` adds one (an outside
experiment may bring its own data). Built in:

    mnist      dlscope.data.mnist_dataset, options = MnistOptions fields
    function   dlscope.data.function_dataset (spec, domain, n_train, n_test, seed)
"""

from __future__ import annotations

import sys
from collections.abc import Callable

from dlscope.data.dataset import Dataset
from dlscope.data.functions import function_dataset
from dlscope.data.mnist import MnistOptions, mnist_dataset, mnist_hash_identity
from dlscope.errors import UserError

Builder = Callable[..., Dataset]

KINDS: dict[str, Builder] = {}
IDENTITIES: dict[str, Callable[..., dict]] = {}
SIZES: dict[str, Callable[..., int]] = {}


def register_kind(kind: str, build: Builder, *, identity: Callable[..., dict] | None = None,
                  nbytes: Callable[..., int] | None = None) -> None:
    """Make `{"kind": kind, **options}` build `build(device=device, **options)`.

    `identity(**options)`: what a run's hash covers beyond the description (e.g. a content
    fingerprint of files read from outside); `nbytes(**options)`: a lower bound of the bytes
    the dataset's tensors take (for the up-front size limits)."""
    if not isinstance(kind, str) or not kind:
        raise UserError(f"dataset kind must be a non-empty string, got {kind!r}")
    for what, fn in (("builder", build), ("identity", identity), ("nbytes", nbytes)):
        if fn is not None and not callable(fn):
            raise UserError(f"dataset kind {kind!r}: {what} {fn!r} is not callable")
    KINDS[kind] = build
    for table, fn in ((IDENTITIES, identity), (SIZES, nbytes)):
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


register_kind("mnist", _mnist, identity=mnist_hash_identity, nbytes=_mnist_nbytes)
register_kind("function", function_dataset, nbytes=_function_nbytes)
