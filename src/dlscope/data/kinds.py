"""Dataset kinds: what a run's dataset description `{"kind": ..., **options}` builds.

A run asks for its data by description (`ctx.dataset({"kind": "mnist", "flatten": True})`),
so any executor can build it in any process. Each kind maps to one builder called as
`build(device=..., **options)`; `register_kind` adds one (an outside experiment may bring its
own data). Built in:

    mnist      dlscope.data.mnist_dataset, options = MnistOptions fields
    function   dlscope.data.function_dataset (spec, domain, n_train, n_test, seed)
"""

from __future__ import annotations

import sys
from collections.abc import Callable

from dlscope.data.dataset import Dataset
from dlscope.data.functions import function_dataset
from dlscope.data.mnist import MnistOptions, mnist_dataset
from dlscope.errors import UserError

Builder = Callable[..., Dataset]

KINDS: dict[str, Builder] = {}


def register_kind(kind: str, build: Builder) -> None:
    """Make `{"kind": kind, **options}` build `build(device=device, **options)`."""
    if not isinstance(kind, str) or not kind:
        raise UserError(f"dataset kind must be a non-empty string, got {kind!r}")
    if not callable(build):
        raise UserError(f"dataset kind {kind!r}: builder {build!r} is not callable")
    KINDS[kind] = build


def build_dataset(desc: dict, device: str = "cpu") -> Dataset:
    """The Dataset a description asks for, built afresh (callers cache it)."""
    options = dict(desc)
    kind = options.pop("kind", None)
    if kind not in KINDS:
        raise UserError(f"unknown dataset kind {kind!r} (one of: {', '.join(KINDS)})")
    return KINDS[kind](device=device, **options)


def _stderr(msg: str) -> None:
    print(msg, file=sys.stderr)


def _mnist(device: str = "cpu", **options) -> Dataset:
    # progress lines (fetching, caching) go to stderr: a worker's stdout may be a pipe
    return mnist_dataset(MnistOptions(**options), device=device, log=_stderr)


register_kind("mnist", _mnist)
register_kind("function", function_dataset)
