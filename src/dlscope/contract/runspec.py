"""What an independent run is (RunSpec), what it returns (RunResult), where it runs (RunContext).

A RunSpec names the experiment module that runs it by import path (`fn="mypkg.myexp"`: the
contract's `run_one(params, ctx)` and optional `run_many(params_list, ctx)`, see
docs/CONTRACT.md) plus JSON-able parameters, so any executor (in process, a process pool,
Ray) can run it. It carries an explicit description of its data (`data`, a dataset
description as `ctx.dataset` takes it, dlscope.data.kinds), used for its hash and its memory
estimate. Its hash covers everything that changes its numbers: `fn`, the parameters (config,
seed), the data description and the identity of data loaded from outside (MNIST: its content
fingerprint and, for other data, its source; `dlscope.data.identity`), the device, the torch
thread count and the engine version. Specs that share a `group` may be trained together as
an ensemble by `run_many` (same shape, differing only in seed/init/lr).
"""

from __future__ import annotations

import hashlib
import importlib
import json
import os
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

import numpy as np
import torch

from dlscope.data import build_dataset as build
from dlscope.data import identity as data_identity
from dlscope.errors import UserError
from dlscope.train.engine import ENGINE_VERSION


def canonical_json(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)


@dataclass(frozen=True)
class RunSpec:
    experiment: str
    key: str  # a human label, e.g. "sinc/deep" or "seed=3"
    fn: str  # "package.module": the experiment module whose run_one / run_many run it
    params: dict = field(hash=False, compare=False)
    device: str = "cpu"
    threads: int = 1
    group: str | None = None  # same group: may run together as one ensemble
    data: dict | None = field(default=None, hash=False, compare=False)  # dataset description

    @property
    def hash(self) -> str:
        ident = {"fn": self.fn, "params": self.params, "device": self.device,
                 "threads": self.threads, "engine": ENGINE_VERSION}
        if self.data is not None:
            ident["data"] = self.data
            found = data_identity(self.data)  # data read from outside: its fingerprint
            if found is not None:
                ident["data_identity"] = found
        return hashlib.sha256(canonical_json(ident).encode()).hexdigest()[:16]

    def to_json(self) -> dict:
        return {"experiment": self.experiment, "key": self.key, "fn": self.fn,
                "params": self.params, "data": self.data, "device": self.device,
                "threads": self.threads, "group": self.group, "hash": self.hash}


@dataclass
class RunResult:
    """A finished run: JSON-able `values` plus named numpy `arrays` (stored as .npz)."""
    values: dict
    arrays: dict[str, np.ndarray] = field(default_factory=dict)
    # when and where it ran (`execute` sets it; the store keeps it as timing.json): start and
    # end (epoch seconds), pid, host, threads, runs_in_task. Not part of its numbers.
    timing: dict | None = field(default=None, compare=False, repr=False)

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
    return build(json.loads(desc_json), device=device)


cached_dataset = lru_cache(maxsize=4)(build_dataset)  # per process: MNIST is built once


def resolve_run(fn: str) -> tuple[Callable, Callable | None]:
    """(run one spec, run a batch of specs or None) for a RunSpec's `fn`: the experiment
    module's `run_one` / `run_many`. Raises UserError naming what is missing."""
    if not isinstance(fn, str) or not fn or ":" in fn:
        raise UserError(f"run module {fn!r}: not a module path (a RunSpec names its "
                        "experiment module, whose run_one/run_many run it)")
    try:
        module = importlib.import_module(fn)
    except ImportError as exc:
        raise UserError(f"run module {fn!r}: cannot import it ({exc})") from None
    one = getattr(module, "run_one", None)
    if not callable(one):
        raise UserError(f"run module {fn!r}: it has no run_one()")
    many = getattr(module, "run_many", None)
    return one, many if callable(many) else None


def execute(specs: list[RunSpec], context=RunContext) -> list[RunResult]:
    """Run specs in this process: as one ensemble when there is a batched variant. Each
    result's `timing` says when (wall clock, the task's start and end) and where it ran.

    `context(device=, threads=)` makes the RunContext (the Ray executor passes one whose
    `dataset()` reads the sweep's shared copy from the object store)."""
    first = specs[0]
    previous = torch.get_num_threads()
    torch.set_num_threads(first.threads)  # part of the run's identity (its hash)
    start = time.time()
    try:
        ctx = context(device=torch.device(first.device), threads=first.threads)
        one, many = resolve_run(first.fn)
        if many is not None and len(specs) > 1:
            results = many([s.params for s in specs], ctx)
        else:
            results = [one(s.params, ctx) for s in specs]
    finally:
        torch.set_num_threads(previous)
    timing = {"start": start, "end": time.time(), "pid": os.getpid(),
              "host": socket.gethostname(), "threads": first.threads,
              "runs_in_task": len(specs)}
    for r in results:
        if isinstance(r, RunResult):
            r.timing = dict(timing)
    return results

