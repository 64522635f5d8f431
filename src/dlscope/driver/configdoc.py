"""What an experiment's config accepts, read from its pydantic model (never written twice).

`rows(exp)` gives one dict per key (type, assignment default, quick value where it differs,
allowed range or choices, description); `text_table`, `commented_toml` and `markdown` render
them for `dlscope show`, `dlscope run NAME --help`, `dlscope show NAME --toml` and
docs/CONFIG.md (`dlscope show --markdown > docs/CONFIG.md`, checked by a test).
"""

from __future__ import annotations

import enum
import types
import typing
from typing import Any

import annotated_types as at
import tomli_w
from pydantic import BaseModel
from pydantic.fields import FieldInfo

_BOUNDS = ((at.Ge, "ge", "≥"), (at.Gt, "gt", ">"), (at.Le, "le", "≤"), (at.Lt, "lt", "<"))


def type_name(tp: Any) -> str:
    """A short readable name of an annotation: int, float, list[int], 'a' | 'b', int | None."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin is typing.Annotated:
        return type_name(args[0])
    if origin is typing.Literal:  # its choices are listed under "allowed"
        return type(args[0]).__name__
    if origin in (typing.Union, types.UnionType):
        return " | ".join("None" if a is type(None) else type_name(a) for a in args)
    if origin in (list, tuple, set, dict):
        inner = ", ".join(type_name(a) for a in args if a is not Ellipsis)
        return f"{origin.__name__}[{inner}]"
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        return " | ".join(repr(m.value) for m in tp)
    return getattr(tp, "__name__", str(tp))


def _bounds(metadata: list) -> list[str]:
    out = []
    for m in metadata:
        for cls, attr, sym in _BOUNDS:
            if isinstance(m, cls):
                out.append(f"{sym} {getattr(m, attr)}")
        if isinstance(m, at.MinLen) and m.min_length:
            out.append(f"length ≥ {m.min_length}")
        if isinstance(m, at.MaxLen):
            out.append(f"length ≤ {m.max_length}")
    return out


def allowed(field: FieldInfo) -> str:
    """The range or choices a field accepts, as text ('' when any value of its type)."""
    parts = _bounds(field.metadata)
    ann = field.annotation
    for arg in typing.get_args(ann):  # list[Annotated[int, Field(ge=1)]]: the items' bounds
        if typing.get_origin(arg) is typing.Annotated:
            inner = [m for a in typing.get_args(arg)[1:]
                     for m in (a.metadata if isinstance(a, FieldInfo) else [a])]
            parts += [f"each {b}" for b in _bounds(inner)]
    if typing.get_origin(ann) is typing.Literal:
        parts.append("one of " + ", ".join(repr(a) for a in typing.get_args(ann)))
    return "; ".join(parts)


def _json(value: Any) -> Any:
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json")
    if isinstance(value, enum.Enum):
        return value.value
    return value


def rows(exp) -> list[dict]:
    """One row per config key of an experiment module, in the model's field order."""
    cls = exp.Config
    default = cls()
    quick = getattr(exp, "PROFILES", {}).get("quick", {})
    out = []
    for key, field in cls.model_fields.items():
        value = _json(getattr(default, key))
        row = {"key": key, "type": type_name(field.annotation), "default": value,
               "quick": quick[key] if key in quick and quick[key] != value else None,
               "allowed": allowed(field), "description": field.description or ""}
        out.append(row)
    return out


def _show(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, str):
        return repr(value)
    return str(value).replace("'", '"')


def text_table(exp, width: int = 100) -> str:
    """A plain-text table of the keys (for the terminal and `run NAME --help`)."""
    head = ("key", "type", "default", "quick", "allowed")
    body = [(r["key"], r["type"], _show(r["default"]), _show(r["quick"]), r["allowed"])
            for r in rows(exp)]
    caps = (24, 14, 34, 20, 60)
    widths = [min(c, max(len(h), *(len(b[i]) for b in body)))
              for i, (h, c) in enumerate(zip(head, caps))]

    def cut(s: str, w: int) -> str:
        return s if len(s) <= w else s[: w - 1] + "…"

    lines = ["  ".join(cut(c, w).ljust(w) for c, w in zip(head, widths)).rstrip()]
    for b, r in zip(body, rows(exp)):
        lines.append("  ".join(cut(c, w).ljust(w) for c, w in zip(b, widths)).rstrip())
        if r["description"]:
            lines.append("    " + r["description"][: width - 4])
    return "\n".join(lines)


def commented_toml(exp, profile: str = "assignment") -> str:
    """A complete config file for `--config`, each key preceded by its description."""
    from dlscope.contract import config as configs

    cfg = configs.resolve(exp, profile)
    data = cfg.model_dump(mode="json")
    lines = [f"# {exp.NAME}: {exp.TITLE}", f"# profile {profile!r}; every key is optional "
             "(a missing key takes the assignment default)", ""]
    for r in rows(exp):
        key = r["key"]
        if r["description"]:
            lines.append(f"# {r['description']}")
        meta = [f"type {r['type']}"] + ([f"allowed: {r['allowed']}"] if r["allowed"] else [])
        lines.append("# " + "; ".join(meta))
        if data.get(key) is None:
            lines.append(f"# {key} = (unset)")
        else:
            lines.append(f"{key} = {_toml_value(data[key])}")
        lines.append("")
    return "\n".join(lines)


def _toml_value(value: Any) -> str:
    """A TOML value on one line (tomli_w writes arrays over several lines)."""
    if isinstance(value, list) and all(not isinstance(v, (list, dict)) for v in value):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    return tomli_w.dumps({"v": value})[len("v = "):].rstrip()


def _md(value: Any) -> str:
    s = _show(value)
    return f"`{s}`" if s else ""


def markdown(exps: list) -> str:
    """docs/CONFIG.md: every experiment's keys (generated; do not edit by hand)."""
    out = ["# Configuration reference", "",
           "Generated from the experiments' config models by `dlscope show --markdown`; a test "
           "fails when this file is out of date. Set a key with `--set key=value` or in a TOML "
           "file given to `--config` (`dlscope show NAME --toml` prints a complete one). The "
           "defaults are the assignment profile; the quick column lists what "
           "`--profile quick` changes.", ""]
    for exp in exps:
        out += [f"## {exp.NAME}", "", f"{exp.TITLE}. {exp.QUESTION}", "",
                "| key | type | default | quick | allowed | description |",
                "|---|---|---|---|---|---|"]
        for r in rows(exp):
            cells = [f"`{r['key']}`", r["type"].replace("|", "\\|"), _md(r["default"]),
                     _md(r["quick"]), r["allowed"], r["description"]]
            out.append("| " + " | ".join(c.replace("\n", " ") for c in cells) + " |")
        out.append("")
    return "\n".join(out)
