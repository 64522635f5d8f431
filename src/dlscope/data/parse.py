"""What the user types for a dataset (``--data``, a TOML table) and the short label shown.

    mnist             {"kind": "mnist"}
    cifar10:PATH      {"kind": "cifar10", "path": "/abs/PATH"}  (archive or folder)
    npz:FILE          {"kind": "npz", "path": "/abs/FILE"}
    {kind = ..., ...} a table: kind known, options checked, "path" made absolute
"""

from __future__ import annotations

import os
from pathlib import Path

from pydantic import ValidationError

from dlscope.data.cifar10 import md5_table
from dlscope.data.images import image_options
from dlscope.data.kinds import KINDS
from dlscope.data.mnist import MnistOptions
from dlscope.errors import UserError

FORMS = "one of mnist, cifar10:PATH, npz:FILE"


def _abs_path(kind: str, path: object) -> str:
    if not isinstance(path, (str, os.PathLike)) or not str(path).strip():
        raise UserError(f"data {kind}: 'path' must be a file or folder name, got {path!r}")
    p = Path(os.path.expandvars(str(path))).expanduser().absolute()
    if not p.exists():
        raise UserError(f"data {kind}: {p} does not exist")
    if kind == "npz" and not p.is_file():
        raise UserError(f"data npz: {p} is not a file")
    return str(p)


def _check(desc: dict) -> dict:
    kind = desc["kind"]
    options = {k: v for k, v in desc.items() if k != "kind"}
    if kind == "mnist":
        try:
            MnistOptions(**options)
        except ValidationError as e:
            err = e.errors()[0]
            where = ".".join(str(p) for p in err.get("loc", ())) or "options"
            raise UserError(f"data mnist: {where}: {err.get('msg', 'invalid')}") from None
    elif kind in ("cifar10", "npz"):
        if "path" not in options:
            raise UserError(f"data {kind}: 'path' is required")
        options["path"] = _abs_path(kind, options["path"])
        rest = {k: v for k, v in options.items() if k not in ("path", "md5")}
        if kind == "cifar10" and "md5" in options:
            md5_table(options["md5"])
        elif "md5" in options:
            rest["md5"] = options["md5"]  # refused below: npz has no md5
        image_options(kind, rest)
    return {"kind": kind, **options}


def parse_data(value: str | dict) -> dict:
    """The dataset description a ``--data`` text or a TOML table asks for.

    Args:
        value: ``"mnist"``, ``"cifar10:PATH"``, ``"npz:FILE"``, or a dict with a known
            ``"kind"`` (built-in kinds get their options checked).

    Returns:
        The description, with any path expanded and absolute (it must exist).

    Raises:
        UserError: anything else, or a path that does not exist (one line).

    >>> parse_data("mnist")
    {'kind': 'mnist'}
    """
    if isinstance(value, dict):
        kind = value.get("kind")
        if not isinstance(kind, str) or kind not in KINDS:
            raise UserError(f"data table: unknown kind {kind!r} (one of: {', '.join(KINDS)})")
        return _check(dict(value))
    if isinstance(value, str):
        text = value.strip()
        if text == "mnist":
            return {"kind": "mnist"}
        kind, sep, path = text.partition(":")
        if kind in ("cifar10", "npz") and not path.strip():
            raise UserError(f"data {value!r}: {kind} needs a path ({kind}:PATH)")
        if sep and kind in ("cifar10", "npz") and path.strip():
            return {"kind": kind, "path": _abs_path(kind, path.strip())}
    raise UserError(f"data {value!r}: unknown data ({FORMS})")


def data_label(desc: dict | None) -> str:
    """Short text for tables and the report: ``"mnist"``, ``"cifar10"``, ``"npz:file.npz"``,
    or the kind's name (``"none"`` without data).

    >>> data_label({"kind": "npz", "path": "/data/mine.npz"})
    'npz:mine.npz'
    """
    if not isinstance(desc, dict):
        return "none"
    kind = str(desc.get("kind"))
    if kind == "npz" and desc.get("path"):
        return f"npz:{Path(str(desc['path'])).name}"
    return kind


def content_description(desc: dict | None) -> dict | None:
    """``desc`` without its ``path`` for kinds whose identity is a content fingerprint
    (cifar10, npz): what a run's hash can cover so that a moved copy of the same data
    reuses the runs (the fingerprint, :func:`dlscope.data.identity`, covers the content).

    >>> content_description({"kind": "npz", "path": "/a.npz", "flatten": True})
    {'kind': 'npz', 'flatten': True}
    """
    if isinstance(desc, dict) and desc.get("kind") in ("cifar10", "npz"):
        return {k: v for k, v in desc.items() if k != "path"}
    return desc
