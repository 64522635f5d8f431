"""Experiment configs: profiles, TOML files and dotted `key=value` overrides, type-checked.

Each experiment's config is a pydantic model whose defaults are the `assignment` profile;
`PROFILES["quick"]` holds the overrides that shrink it. Resolution order: profile, then a
TOML file, then `--set` overrides. Anything wrong becomes one UserError line naming the key.
"""

from __future__ import annotations

import copy
import math
import sys
import typing
from pathlib import Path

import tomli_w
from pydantic import BaseModel, ConfigDict, ValidationError, model_validator

from dlscope.contract import limits
from dlscope.errors import UserError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib


MAX_EPOCHS = 1_000_000  # any field named *epochs: more is a typo, not an experiment
MAX_LIST_ITEMS = 10_000  # a list value (settings, seeds) longer than this is a typo
MAX_CONFIG_BYTES = 1 << 20  # a config file is a few hundred bytes; never read an unbounded one


class ConfigProblem(UserError):
    """A value the generic checks of ExperimentConfig refuse (key and reason)."""

    def __init__(self, key: str, msg: str):
        super().__init__(f"{key}: {msg}" if key else msg)


def _kinds(annotation) -> tuple[set, object | None]:
    """(scalar types an annotation admits, the element annotation if it is a list)."""
    origin = typing.get_origin(annotation)
    if origin is typing.Annotated:
        return _kinds(typing.get_args(annotation)[0])
    if origin in (list, tuple, set, frozenset):
        args = typing.get_args(annotation)
        return set(), (args[0] if args else None)
    if origin is not None:  # Union, Optional, Literal
        kinds: set = set()
        elem = None
        for arg in typing.get_args(annotation):
            k, e = _kinds(arg)
            kinds |= k
            elem = elem or e
        if origin is typing.Literal:
            kinds |= {type(a) for a in typing.get_args(annotation)}
        return kinds, elem
    return ({annotation} if isinstance(annotation, type) else set()), None


def _strict_scalar(key: str, value, kinds: set) -> None:
    if isinstance(value, bool):
        if bool not in kinds and (int in kinds or float in kinds):
            raise ConfigProblem(key, f"expected a number, got the boolean {str(value).lower()}")
    elif isinstance(value, float) and int in kinds and float not in kinds:
        raise ConfigProblem(key, f"expected an integer, got {value!r}")


def _first_duplicate(values) -> tuple | None:
    """(the first value equal to an earlier one,) or None; linear time for hashable values
    (a list of 10,000 distinct depths is checked at once, not in 50 million comparisons)."""
    hashed: set = set()
    other: list = []
    for v in values:
        try:
            if v in hashed:
                return (v,)
            hashed.add(v)
        except TypeError:  # unhashable (a list inside a list)
            if v in other:
                return (v,)
            other.append(v)
    return None


class ExperimentConfig(BaseModel):
    """Base of every experiment config: unknown keys are errors, values are validated.

    Generic checks for every experiment (no silent coercions, no meaningless values):
    booleans are not numbers and floats are not integers; numbers are finite; lists are not
    empty and hold no duplicates (unless the field says `json_schema_extra={"duplicates":
    True}`, for lists whose entries are positional, e.g. one run per entry); seeds are >= 0
    and < 2**63; lists (and `seeds` counts) at most MAX_LIST_ITEMS; `*epochs` at most MAX_EPOCHS;
    a size field whose memory follows from its value alone says so (`json_schema_extra=
    {"memory": ("data", 8)}`: 8 bytes of data per unit) and must fit in the machine's memory
    (dlscope.contract.limits)."""
    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    @model_validator(mode="before")
    @classmethod
    def _no_coercion(cls, data):
        if not isinstance(data, dict):
            return data
        for key, value in data.items():
            field = cls.model_fields.get(key)
            if field is None:
                continue
            kinds, elem = _kinds(field.annotation)
            if isinstance(value, list) and elem is not None:
                ekinds, _ = _kinds(elem)
                for v in value:
                    _strict_scalar(key, v, ekinds)
            else:
                _strict_scalar(key, value, kinds)
        return data

    @model_validator(mode="after")
    def _meaningful(self):
        for key in type(self).model_fields:
            value = getattr(self, key)
            items = value if isinstance(value, (list, tuple)) else [value]
            for v in items:
                if isinstance(v, float) and not math.isfinite(v):
                    raise ConfigProblem(key, f"must be a finite number, got {v}")
            extra = type(self).model_fields[key].json_schema_extra
            repeats_ok = isinstance(extra, dict) and extra.get("duplicates") is True
            if isinstance(value, (list, tuple)):
                if not value:
                    raise ConfigProblem(key, "must not be empty")
                if len(value) > MAX_LIST_ITEMS:
                    raise ConfigProblem(key, f"{len(value):,} entries is more than the limit "
                                             f"{MAX_LIST_ITEMS:,}")
                dup = None if repeats_ok else _first_duplicate(value)
                if dup is not None:
                    raise ConfigProblem(key, f"{dup[0]!r} appears more than once (duplicates "
                                             "would collapse or run twice)")
            ints = [v for v in items if isinstance(v, int) and not isinstance(v, bool)]
            if (key == "seed" or key.endswith("_seed")) and any(v < 0 for v in ints):
                raise ConfigProblem(key, f"must be >= 0, got {min(ints)}")
            if (key == "seed" or key.endswith("_seed")) and any(v >= 2**63 for v in ints):
                raise ConfigProblem(key, f"must be < 2**63 (torch's seed range), got {max(ints)}")
            if key == "seeds" and any(v > MAX_LIST_ITEMS for v in ints):  # a count of runs
                raise ConfigProblem(key, f"{max(ints):,} seeds is more than the limit "
                                         f"{MAX_LIST_ITEMS:,}")
            if key.endswith("epochs") and any(v > MAX_EPOCHS for v in ints):
                raise ConfigProblem(key, f"{max(ints)} epochs is more than the limit "
                                         f"{MAX_EPOCHS:,}")
            memory = extra.get("memory") if isinstance(extra, dict) else None
            if memory and ints:  # a size field: {"memory": (part, bytes per unit)}
                part, each = memory
                try:
                    limits.check_params(key, {part: each * max(ints)})
                except UserError as err:
                    raise ConfigProblem("", str(err)) from None
        return self


def _toml_loads(text: str, where: str) -> dict:
    """tomllib.loads, with what it raises besides TOMLDecodeError as one UserError line: a
    number of more than 4300 digits (ValueError) and arrays nested past Python's recursion
    limit (RecursionError)."""
    try:
        return tomllib.loads(text)
    except RecursionError:
        raise UserError(f"{where}: arrays nested too deeply") from None
    except tomllib.TOMLDecodeError:
        raise
    except ValueError:  # int('9' * 5000): Python's limit on the digits of an integer
        raise UserError(f"{where}: a number of more than {sys.get_int_max_str_digits()} "
                        "digits") from None


def parse_value(text: str):
    """A `--set` value: TOML syntax when it parses (numbers, booleans, lists), else a string."""
    try:
        return _toml_loads(f"v = {text}", f"--set value {text[:40]!r}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def parse_set(item: str) -> tuple[list[str], object]:
    key, sep, value = item.partition("=")
    if not sep or not key.strip():
        raise UserError(f"--set {item!r}: expected key=value")
    return key.strip().split("."), parse_value(value.strip())


def _merge(base: dict, extra: dict) -> dict:
    out = copy.deepcopy(base)
    for k, v in extra.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = _merge(out[k], v)
        else:
            out[k] = v
    return out


def format_validation_error(name: str, cls: type[BaseModel], err: ValidationError) -> str:
    parts = []
    for e in err.errors():
        key = ".".join(str(p) for p in e["loc"]) or "(config)"
        if e["type"] == "extra_forbidden":
            valid = ", ".join(cls.model_fields)
            parts.append(f"unknown key {key!r} (valid keys: {valid})")
        else:
            value = e.get("input")
            shown = "" if isinstance(value, dict) else f" (got {value!r})"
            parts.append(f"{key}: {e['msg']}{shown}")
    return f"{name}: " + "; ".join(parts)


def resolve(experiment, profile: str = "assignment", config_file: str | Path | None = None,
            sets: list[str] | tuple[str, ...] = (), overrides: dict | None = None):
    """The validated config of an experiment module for a profile plus user changes."""
    profiles = {"assignment": {}, **getattr(experiment, "PROFILES", {})}
    if profile not in profiles:
        raise UserError(f"unknown profile {profile!r} (one of: {', '.join(profiles)})")
    data = copy.deepcopy(profiles[profile])
    if config_file is not None:
        data = _merge(data, read_config_file(config_file))
    for item in sets:
        keys, value = parse_set(item)
        patch: dict = {keys[-1]: value}
        for k in reversed(keys[:-1]):
            patch = {k: patch}
        data = _merge(data, patch)
    if overrides:
        data = _merge(data, overrides)
    try:
        return experiment.Config.model_validate(data)
    except ConfigProblem as err:
        raise UserError(f"{experiment.NAME}: {err}") from None
    except ValidationError as err:
        raise UserError(format_validation_error(experiment.NAME, experiment.Config, err)) from None


def read_config_file(config_file: str | Path) -> dict:
    """A TOML config file as a dict; a bounded read (never more than MAX_CONFIG_BYTES)."""
    path = Path(config_file)
    try:
        if path.is_dir():
            raise UserError(f"config file {path}: is a folder")
        with open(path, "rb") as f:
            raw = f.read(MAX_CONFIG_BYTES + 1)
    except OSError as exc:
        raise UserError(f"config file {path}: {exc.strerror or exc}") from None
    if len(raw) > MAX_CONFIG_BYTES:
        raise UserError(f"config file {path}: larger than {MAX_CONFIG_BYTES} bytes; "
                        "not a config file")
    try:
        text = raw.decode("utf-8-sig")  # a BOM (Windows editors) is not an error
    except UnicodeDecodeError as exc:
        raise UserError(f"config file {path}: not UTF-8 text (byte {exc.start})") from None
    try:
        return _toml_loads(text, f"config file {path}")
    except tomllib.TOMLDecodeError as exc:
        raise UserError(f"config file {path}: not valid TOML ({exc})") from None


def to_toml(config: BaseModel) -> str:
    data = config.model_dump(mode="json", exclude_none=True)
    return tomli_w.dumps(data)


def from_toml(experiment, text: str):
    return experiment.Config.model_validate(tomllib.loads(text))
