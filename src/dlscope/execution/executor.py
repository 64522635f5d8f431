"""Executors: run independent tasks (lists of RunSpecs) somewhere and yield their results.

- `local`: in this process, one task after another.
- `process`: a pool of worker processes (spawned, one torch thread each) so that two
  workers use two cores without oversubscription. Workers die with the main process (a
  parent-death signal plus a watchdog thread) and never re-import the caller's `__main__`.
- `ray`: one Ray task per run (see dlscope.execution.ray_executor; optional extra).

Each backend yields `(task, results)` as tasks finish, or `(task, exception)` for a task
that failed; the caller stores finished runs at once, so an interrupted sweep keeps them.
"""

from __future__ import annotations

import os
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from typing import Iterator, Protocol

import torch

from dlscope.contract.runspec import RunResult, RunSpec, execute
from dlscope.errors import UserError
from dlscope.execution.worker_init import WorkerContext as _WorkerContext
from dlscope.execution.worker_init import init_worker

MAX_WORKERS_PER_CPU = 4  # more worker processes than this only thrash
MAX_THREADS_PER_CPU = 4  # more torch threads per run than this only thrash

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


def check_workers(workers: int | None, executor: str = "process") -> None:
    if workers is None:
        return
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise UserError(f"--workers must be a whole number >= 1, got {workers!r}")
    cap = MAX_WORKERS_PER_CPU * (os.cpu_count() or 1)
    if executor == "process" and workers > cap:
        raise UserError(f"--workers {workers}: more than {cap} "
                        f"({MAX_WORKERS_PER_CPU} per CPU) worker processes on this machine")


class ProcessExecutor:
    name = "process"

    def __init__(self, workers: int | None = None):
        check_workers(workers)
        self.workers = workers or max(1, os.cpu_count() or 1)

    def map(self, tasks: list[Task]) -> Iterator[Outcome]:
        threads = tasks[0][0].threads if tasks else 1
        pool = ProcessPoolExecutor(max_workers=min(self.workers, max(1, len(tasks))),
                                   mp_context=_WorkerContext(),
                                   initializer=init_worker, initargs=(threads, os.getpid()))
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
    check_workers(workers, name)
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
        if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
            raise UserError(f"--threads must be a whole number >= 1, got {threads!r}")
        cap = MAX_THREADS_PER_CPU * (os.cpu_count() or 1)
        if threads > cap:
            raise UserError(f"--threads {threads}: more than {cap} ({MAX_THREADS_PER_CPU} per "
                            "CPU) threads per run on this machine")
        return threads
    return 1 if executor in ("process", "ray") else max(1, torch.get_num_threads())
