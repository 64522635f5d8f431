"""Executors: run independent tasks (lists of RunSpecs) somewhere and yield their results.

- `local`: in this process, one task after another.
- `process`: a pool of worker processes (spawned, one torch thread each) so that two
  workers use two cores without oversubscription.
- `ray`: one Ray task per run (see dlscope.execution.ray_executor; optional extra).

Each backend yields `(task, results)` as tasks finish, or `(task, exception)` for a task
that failed; the caller stores finished runs at once, so an interrupted sweep keeps them.
"""

from __future__ import annotations

import multiprocessing as mp
import os
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from typing import Iterator, Protocol

import torch

from dlscope.errors import UserError
from dlscope.execution.process_env import init_worker
from dlscope.execution.runspec import RunResult, RunSpec, execute

Task = list[RunSpec]
Outcome = tuple[Task, "list[RunResult] | BaseException"]


class Executor(Protocol):
    name: str
    workers: int

    def map(self, tasks: list[Task]) -> Iterator[Outcome]: ...


class LocalExecutor:
    name = "local"

    def __init__(self, workers: int | None = None):
        self.workers = 1

    def map(self, tasks: list[Task]) -> Iterator[Outcome]:
        for task in tasks:
            try:
                yield task, execute(task)
            except KeyboardInterrupt:
                raise
            except Exception as exc:  # one failed run must not lose the sweep
                yield task, exc


class ProcessExecutor:
    name = "process"

    def __init__(self, workers: int | None = None):
        self.workers = workers or max(1, os.cpu_count() or 1)

    def map(self, tasks: list[Task]) -> Iterator[Outcome]:
        threads = tasks[0][0].threads if tasks else 1
        pool = ProcessPoolExecutor(max_workers=min(self.workers, max(1, len(tasks))),
                                   mp_context=mp.get_context("spawn"),
                                   # OpenMP settings before the worker loads torch (process_env)
                                   initializer=init_worker, initargs=(threads,))
        try:
            futures = {pool.submit(execute, task): task for task in tasks}
            pending = set(futures)
            while pending:
                done, pending = wait(pending, return_when=FIRST_COMPLETED)
                for fut in done:
                    exc = fut.exception()
                    yield futures[fut], (exc if exc is not None else fut.result())
        finally:
            pool.shutdown(wait=True, cancel_futures=True)


def choose(name: str, n_tasks: int) -> str:
    """`auto`: a process pool when there are several independent tasks and several cores."""
    if name != "auto":
        return name
    return "process" if n_tasks > 1 and (os.cpu_count() or 1) > 1 else "local"


def get_executor(name: str, workers: int | None = None, **options) -> Executor:
    if name == "local":
        return LocalExecutor(workers)
    if name == "process":
        return ProcessExecutor(workers)
    if name == "ray":
        from dlscope.execution.ray_executor import RayExecutor  # optional extra

        return RayExecutor(workers, **options)
    raise UserError(f"unknown executor {name!r} (one of: auto, local, process, ray)")


def worker_threads(executor: str, threads: int | None) -> int:
    """Torch threads per run: 1 in a pool (one per core), all cores when running locally."""
    if threads is not None:
        if threads < 1:
            raise UserError(f"--threads must be >= 1, got {threads}")
        return threads
    return 1 if executor in ("process", "ray") else max(1, torch.get_num_threads())
