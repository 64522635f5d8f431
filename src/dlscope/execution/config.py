"""Experiment configs: profiles, TOML files and dotted `key=value` overrides, type-checked.

Each experiment's config is a pydantic model whose defaults are the `assignment` profile;
`PROFILES["quick"]` holds the overrides that shrink it. Resolution order: profile, then a
TOML file, then `--set` overrides. Anything wrong becomes one UserError line naming the key.
"""

from __future__ import annotations

import copy
import sys
from pathlib import Path

import tomli_w
from pydantic import BaseModel, ConfigDict, ValidationError

from dlscope.errors import UserError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib


class ExperimentConfig(BaseModel):
    """Base of every experiment config: unknown keys are errors, values are validated."""
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


def parse_value(text: str):
    """A `--set` value: TOML syntax when it parses (numbers, booleans, lists), else a string."""
    try:
        return tomllib.loads(f"v = {text}")["v"]
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
        path = Path(config_file)
        try:
            data = _merge(data, tomllib.loads(path.read_text()))
        except OSError as exc:
            raise UserError(f"config file {path}: {exc.strerror}") from None
        except tomllib.TOMLDecodeError as exc:
            raise UserError(f"config file {path}: not valid TOML ({exc})") from None
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
    except ValidationError as err:
        raise UserError(format_validation_error(experiment.NAME, experiment.Config, err)) from None


def to_toml(config: BaseModel) -> str:
    data = config.model_dump(mode="json", exclude_none=True)
    return tomli_w.dumps(data)


def from_toml(experiment, text: str):
    return experiment.Config.model_validate(tomllib.loads(text))
