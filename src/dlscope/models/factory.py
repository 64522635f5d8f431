"""User model factories named by import path: `py:mypkg.nets:small_cnn,width=32`.

A FactorySpec carries the target, its keyword arguments and the SHA-256 of the factory
module's source file, taken when the spec is first parsed; building checks the file still has
that hash, so a run never trains a network other than the one its hash names (only the
module's own file is hashed, not what it imports).

Where modules are found: sys.path as it is, then (only while importing and calling the
factory) the folders listed in the environment variable DLSCOPE_FACTORY_PATH (os.pathsep
separated) and the current working directory. A driver whose workers may start elsewhere
(Ray) sets DLSCOPE_FACTORY_PATH to its own working directory; spawned pool workers inherit
both the environment and the working directory.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib
import importlib.util
import inspect
import json
import os
import re
import sys
from pathlib import Path
from typing import Any, Callable, Iterator, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, JsonValue, ValidationError, field_validator
from torch import nn

from dlscope.errors import UserError

FACTORY_PATH_ENV = "DLSCOPE_FACTORY_PATH"
DATA_ARGS = ("input_shape", "n_classes")  # passed by build from the data, never in kwargs
_TARGET = re.compile(r"^[A-Za-z_]\w*(\.[A-Za-z_]\w*)*:[A-Za-z_]\w*(\.[A-Za-z_]\w*)*$")
_KWARG_SPLIT = re.compile(r",(?=[A-Za-z_]\w*=)")
_LOADED_ATTR = "__dlscope_source_sha256__"  # set on a factory module: the hash it was loaded at


class FactorySpec(BaseModel):
    """A user factory `module.path:function` with keyword arguments and its source's hash."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    kind: Literal["factory"] = "factory"
    target: str
    kwargs: dict[str, JsonValue] = {}
    source_sha256: str = Field(pattern=r"^[0-9a-f]{64}$")

    @field_validator("target")
    @classmethod
    def _target_syntax(cls, v: str) -> str:
        if not _TARGET.match(v):
            raise ValueError(f"{v!r} is not module.path:function")
        return v

    @field_validator("kwargs")
    @classmethod
    def _no_data_args(cls, v: dict) -> dict:
        taken = [k for k in DATA_ARGS if k in v]
        if taken:
            raise ValueError(f"{', '.join(taken)} come(s) from the data, not from the spec")
        return dict(sorted(v.items()))

    @property
    def name(self) -> str:
        """`py:module:function,k=v,...` (kwargs sorted, values as compact JSON, plain
        strings bare): a label that parse_model reads back; the exact record is model_dump."""
        return "py:" + self.target + "".join(f",{k}={_text(v)}" for k, v in self.kwargs.items())


def _text(value: Any) -> str:
    if isinstance(value, str) and value and not re.search(r"[\s,=\"'\[\]{}]", value):
        try:
            json.loads(value)
        except ValueError:
            return value
    return json.dumps(value, separators=(",", ":"))


def factory_path() -> list[str]:
    """The folders searched for a factory module after sys.path: DLSCOPE_FACTORY_PATH's
    entries, then the current working directory."""
    extra = [d for d in os.environ.get(FACTORY_PATH_ENV, "").split(os.pathsep) if d]
    return [os.path.abspath(d) for d in extra] + [os.getcwd()]


@contextlib.contextmanager
def _search_path() -> Iterator[None]:
    added = [d for d in dict.fromkeys(factory_path()) if d not in sys.path]
    sys.path.extend(added)
    try:
        yield
    finally:
        for d in added:
            with contextlib.suppress(ValueError):
                sys.path.remove(d)


def _import(module: str, label: str):
    importlib.invalidate_caches()  # a file written since the last import is seen
    try:
        return importlib.import_module(module)
    except Exception as exc:  # noqa: BLE001 - any failure of the user's module is one line
        raise UserError(f"model {label}: cannot import module {module!r} "
                        f"({type(exc).__name__}: {_line(exc)})") from None


def _line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else ""


def _source_sha(module, label: str) -> str:
    try:
        path = inspect.getsourcefile(module)
    except TypeError:
        path = None
    if not path or not os.path.isfile(path):
        raise UserError(f"model {label}: module {module.__name__!r} has no source file to hash "
                        f"(built-in or compiled); put the factory in a .py file")
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def _load(target: str, label: str):
    """(the callable, its module's source hash), reloading the module when its file changed
    since this process loaded it. Call inside _search_path().

    A module first met here already imported (say by a notebook) is taken to match its file."""
    module_name, _, attr = target.partition(":")
    module = _import(module_name, label)
    sha = _source_sha(module, label)
    loaded = getattr(module, _LOADED_ATTR, None)
    if loaded is None:
        setattr(module, _LOADED_ATTR, sha)
    elif loaded != sha:  # edited since loaded: load it anew
        with contextlib.suppress(OSError):  # a .pyc of the same second and size would win
            os.unlink(importlib.util.cache_from_source(inspect.getsourcefile(module)))
        importlib.invalidate_caches()
        try:
            module = importlib.reload(module)
        except Exception as exc:  # noqa: BLE001
            raise UserError(f"model {label}: cannot import module {module_name!r} "
                            f"({type(exc).__name__}: {_line(exc)})") from None
        setattr(module, _LOADED_ATTR, sha)
    obj = module
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise UserError(f"model {label}: module {module_name!r} has no attribute {part!r}")
        obj = getattr(obj, part)
    if not callable(obj):
        raise UserError(f"model {label}: {attr} is a {type(obj).__name__}, not callable")
    return obj, sha


def _parameters(fn: Callable) -> dict[str, inspect.Parameter] | None:
    try:
        return dict(inspect.signature(fn).parameters)
    except (TypeError, ValueError):
        return None


def accepts(fn: Callable, name: str) -> bool:
    """Whether `fn` has a parameter explicitly named `name` (a keyword can be passed)."""
    p = (_parameters(fn) or {}).get(name)
    return p is not None and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)


def _check_kwargs(fn: Callable, kwargs: dict, label: str) -> None:
    try:
        inspect.signature(fn).bind_partial(**kwargs)
    except (TypeError, ValueError) as exc:
        if _parameters(fn) is not None:
            raise UserError(f"model {label}: {_line(exc)}") from None


def parse_factory(obj: str | dict) -> FactorySpec:
    """A FactorySpec from `"py:mod:fn,k=v"`, `{"factory": "py:mod:fn", **kwargs}` (hash taken
    now, the module imported) or a FactorySpec dump `{"kind": "factory", ...}` (kept as is)."""
    if isinstance(obj, dict) and obj.get("kind") == "factory":
        try:
            return FactorySpec.model_validate(obj)
        except ValidationError as exc:
            raise UserError(f"model {obj!r}: not a factory spec ({_line(exc)}; "
                            f"{exc.errors()[0]['msg']})") from None
    if isinstance(obj, dict):
        kwargs = {k: v for k, v in obj.items() if k != "factory"}
        text = obj["factory"]
        if not isinstance(text, str):
            raise UserError(f"model {obj!r}: factory must be a string 'py:module:function'")
        text = text if text.startswith("py:") else "py:" + text
    else:
        text, kwargs = obj.strip(), {}
    head, *pairs = _KWARG_SPLIT.split(text[3:])
    for pair in pairs:
        k, _, v = pair.partition("=")
        try:
            kwargs[k] = json.loads(v)
        except ValueError:
            kwargs[k] = v
    label = repr(obj) if isinstance(obj, str) else f"py:{head}"
    if not _TARGET.match(head):
        raise UserError(f"model {label}: write py:module.path:function[,key=value...]")
    with _search_path():
        fn, sha = _load(head, label)
    _check_kwargs(fn, kwargs, label)
    try:
        return FactorySpec(target=head, kwargs=kwargs, source_sha256=sha)
    except ValidationError as exc:
        raise UserError(f"model {label}: {exc.errors()[0]['msg']}") from None


def call_factory(spec: FactorySpec, input_shape: tuple[int, ...] | None = None,
                 n_classes: int | None = None, *, meta: bool = False,
                 **override: Any) -> nn.Module:
    """Import the factory (checking its source hash), call it with the spec's kwargs (updated
    by `override`) plus input_shape / n_classes when given and named by its signature.

    meta=True builds on torch's meta device (no memory, no draw from the global RNG)."""
    with _search_path():
        fn, sha = _load(spec.target, spec.name)
        if sha != spec.source_sha256:
            raise UserError(f"factory module {spec.target.partition(':')[0]} changed since "
                            f"the run was planned: rerun")
        kwargs = {**spec.kwargs, **override}
        for key, value in (("input_shape", input_shape), ("n_classes", n_classes)):
            if value is not None and accepts(fn, key):
                kwargs[key] = tuple(value) if key == "input_shape" else value
        label = spec.name
        try:
            if meta:
                with torch.random.fork_rng(devices=[]), torch.device("meta"):
                    model = fn(**kwargs)
            else:
                model = fn(**kwargs)
        except Exception as exc:  # noqa: BLE001 - the user's code: one line, no traceback
            raise UserError(f"factory {label}: raised {type(exc).__name__}: {_line(exc)}") from None
    if not isinstance(model, nn.Module):
        raise UserError(f"factory {label} returned {type(model).__name__}, "
                        f"not a torch.nn.Module")
    return model


def factory_accepts(spec: FactorySpec, name: str) -> bool:
    """Whether the spec's factory has a parameter explicitly named `name`."""
    with _search_path():
        fn, _ = _load(spec.target, spec.name)
    return accepts(fn, name)


def count_module(model: nn.Module, label: str = "model") -> int:
    """Parameters of a module (meta tensors included); lazy ones are a UserError."""
    total = 0
    for p in model.parameters():
        if isinstance(p, nn.parameter.UninitializedParameter):
            raise UserError(f"{label}: has lazy (uninitialised) parameters, so no count")
        total += p.numel()
    return total
