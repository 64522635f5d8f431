"""What an independent run is (RunSpec), what it returns (RunResult), and where it runs (RunContext).

A RunSpec names a function by import path plus JSON-able parameters, so any executor (in
process, a process pool, Ray) can run it. Its hash covers everything that changes its
numbers: the function, the parameters (config, seed), the device, the torch thread count,
the engine version and the identity of the data loaded from outside (MNIST-kind data: its
content fingerprint and, for other data, its source; dlscope.data.fingerprint). Specs that share a `group` may be trained together as an ensemble
by the experiment's `run_many` (same shape, differing only in seed/init/lr).
"""

from __future__ import annotations

import hashlib
import importlib
import json
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

import numpy as np
import torch

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
    fn: str  # "package.module:function"; the module may also define `<function>_many`
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
        return _dataset(canonical_json(desc), str(self.device))


@lru_cache(maxsize=4)
def _dataset(desc_json: str, device: str):
    from dlscope import data

    desc = json.loads(desc_json)
    kind = desc.pop("kind")
    if kind == "mnist":
        return data.mnist_dataset(data.MnistOptions(**desc), device=device, log=_stderr)
    if kind == "mnist1d":
        return data.mnist1d_dataset(device=device, **desc)
    if kind == "function":
        return data.function_dataset(device=device, **desc)
    raise ValueError(f"unknown dataset kind {kind!r}")


def _stderr(msg: str) -> None:
    import sys

    print(msg, file=sys.stderr)


def resolve_fn(path: str):
    module, _, name = path.partition(":")
    return getattr(importlib.import_module(module), name)


def execute(specs: list[RunSpec], context=RunContext) -> list[RunResult]:
    """Run specs in this process: as one ensemble when the module offers `<fn>_many`.

    `context(device=, threads=)` makes the RunContext (the Ray executor passes one whose
    `dataset()` reads the sweep's shared copy from the object store)."""
    first = specs[0]
    previous = torch.get_num_threads()
    torch.set_num_threads(first.threads)  # part of the run's identity (its hash)
    try:
        ctx = context(device=torch.device(first.device), threads=first.threads)
        module, _, name = first.fn.partition(":")
        many = getattr(importlib.import_module(module), name + "_many", None)
        if many is not None and len(specs) > 1:
            return many([s.params for s in specs], ctx)
        fn = resolve_fn(first.fn)
        return [fn(s.params, ctx) for s in specs]
    finally:
        torch.set_num_threads(previous)
