"""What an independent run is (RunSpec), what it returns (RunResult), where it runs (RunContext).

A RunSpec names what runs it by import path plus JSON-able parameters, so any executor (in
process, a process pool, Ray) can run it: either an experiment module (`fn="mypkg.myexp"`:
the contract's `run_one(params, ctx)` and optional `run_many(params_list, ctx)`, see
docs/CONTRACT.md) or, the older form the built-in experiments still use, one function
(`fn="mypkg.myexp:train_one"`, with an optional `train_one_many`). Its hash covers everything
that changes its numbers: `fn`, the parameters (config, seed), the device, the torch thread
count, the engine version and the identity of the data loaded from outside (MNIST-kind
data: its content fingerprint and, for other data, its source; dlscope.data.fingerprint).
Specs that share a `group` may be trained together as an ensemble by the batched variant
(same shape, differing only in seed/init/lr).
"""

from __future__ import annotations

import hashlib
import importlib
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

import numpy as np
import torch

from dlscope.errors import UserError
from dlscope.train.engine import ENGINE_VERSION


def _data_identity(params: dict) -> dict | None:
    from dlscope.data.fingerprint import run_data_identity

    return run_data_identity(params)


def canonical_json(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)


@dataclass(frozen=True)
class RunSpec:
    experiment: str
    key: str  # a human label, e.g. "sinc/deep" or "seed=3"
    fn: str  # "package.module" (its run_one/run_many) or "package.module:function" (+ `_many`)
    params: dict = field(hash=False, compare=False)
    device: str = "cpu"
    threads: int = 1
    group: str | None = None  # same group: may run together as one ensemble

    @property
    def hash(self) -> str:
        ident = {"fn": self.fn, "params": self.params, "device": self.device,
                 "threads": self.threads, "engine": ENGINE_VERSION}
        data = _data_identity(self.params)  # which data: content fingerprint plus source
        if data is not None:
            ident["data"] = data
        return hashlib.sha256(canonical_json(ident).encode()).hexdigest()[:16]

    def to_json(self) -> dict:
        return {"experiment": self.experiment, "key": self.key, "fn": self.fn,
                "params": self.params, "device": self.device, "threads": self.threads,
                "group": self.group, "hash": self.hash}


@dataclass
class RunResult:
    """A finished run: JSON-able `values` plus named numpy `arrays` (stored as .npz)."""
    values: dict
    arrays: dict[str, np.ndarray] = field(default_factory=dict)

    @property
    def status(self) -> str:
        return str(self.values.get("status", "ok"))


@dataclass
class RunContext:
    device: torch.device
    threads: int

    def dataset(self, desc: dict):
        """The dataset a run asks for, built once per process and kept on the device."""
        return cached_dataset(canonical_json(desc), str(self.device))


def build_dataset(desc_json: str, device: str):
    """The dataset a canonical-JSON description asks for, built afresh (dlscope.data.kinds)."""
    from dlscope.data import build_dataset as build

    return build(json.loads(desc_json), device=device)


cached_dataset = lru_cache(maxsize=4)(build_dataset)  # per process: MNIST is built once


def resolve_run(fn: str) -> tuple[Callable, Callable | None]:
    """(run one spec, run a batch of specs or None) for a RunSpec's `fn`.

    "pkg.mod": the experiment contract's `run_one` / `run_many`; "pkg.mod:name": the older
    form, `name` / `name_many`. Raises UserError naming what is missing."""
    module_path, sep, name = fn.partition(":")
    try:
        module = importlib.import_module(module_path)
    except ImportError as exc:
        raise UserError(f"run function {fn!r}: cannot import {module_path!r} ({exc})") from None
    one_name, many_name = (name, name + "_many") if sep else ("run_one", "run_many")
    one = getattr(module, one_name, None)
    if not callable(one):
        raise UserError(f"run function {fn!r}: module {module_path!r} has no {one_name}()")
    many = getattr(module, many_name, None)
    return one, many if callable(many) else None


def resolve_fn(path: str):
    """The function that runs one spec with this `fn` (see resolve_run)."""
    return resolve_run(path)[0]


def execute(specs: list[RunSpec], context=RunContext) -> list[RunResult]:
    """Run specs in this process: as one ensemble when there is a batched variant.

    `context(device=, threads=)` makes the RunContext (the Ray executor passes one whose
    `dataset()` reads the sweep's shared copy from the object store)."""
    first = specs[0]
    previous = torch.get_num_threads()
    torch.set_num_threads(first.threads)  # part of the run's identity (its hash)
    try:
        ctx = context(device=torch.device(first.device), threads=first.threads)
        one, many = resolve_run(first.fn)
        if many is not None and len(specs) > 1:
            return many([s.params for s in specs], ctx)
        return [one(s.params, ctx) for s in specs]
    finally:
        torch.set_num_threads(previous)

