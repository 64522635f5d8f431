"""Executors (dlscope.execution.executor), the process settings of the workers
(process_env, worker_init): the local and the process executor give the same results for
a toy experiment module, a failed run comes back as its outcome, and the choice of executor,
workers and threads follows the README ("auto: a process pool, one torch thread per worker,
when there are several independent runs")."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

from dlscope.contract.runspec import RunSpec
from dlscope.errors import UserError
from dlscope.execution import executor as ex
from dlscope.execution.executor import (
    LocalExecutor,
    ProcessExecutor,
    choose,
    get_executor,
    worker_threads,
)
from dlscope.execution.worker_init import init_worker

TOY = "dlscope_toy_executor"
TOY_SOURCE = '''
"""A toy experiment: the numbers of a seeded random vector, and where it ran."""
import os

import torch

from dlscope.contract.runspec import RunResult


def run_one(params, ctx):
    if params.get("fail"):
        raise ValueError(f"planted failure at seed={params['seed']}")
    if params.get("interrupt"):
        raise KeyboardInterrupt
    g = torch.Generator().manual_seed(params["seed"])
    w = torch.randn(5, generator=g, dtype=torch.float64)
    return RunResult({"seed": params["seed"], "norm2": float(w @ w)},
                     {"w": w.numpy()})


def where(params, ctx):
    return {"pid": os.getpid(), "torch_threads": torch.get_num_threads(),
            "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS"),
            "GOMP_SPINCOUNT": os.environ.get("GOMP_SPINCOUNT")}


def run_many(params_list, ctx):
    out = [run_one(p, ctx) for p in params_list]
    for r, p in zip(out, params_list):
        r.values.update(where(p, ctx))
    return out
'''


@pytest.fixture
def toy(tmp_path, monkeypatch):
    """The toy module on sys.path (spawned workers inherit sys.path)."""
    (tmp_path / f"{TOY}.py").write_text(textwrap.dedent(TOY_SOURCE))
    monkeypatch.syspath_prepend(str(tmp_path))
    yield
    sys.modules.pop(TOY, None)


def task(seed, threads=1, group=None, **params) -> list[RunSpec]:
    return [RunSpec("toy", f"seed={seed}", TOY, {"seed": seed, **params}, threads=threads,
                    group=group)]


def reference(seed):
    """What run_one computes, by a second route: numpy on torch's draws."""
    w = torch.randn(5, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    return float(np.dot(w.numpy(), w.numpy()))


def by_key(outcomes):
    return {t[0].key: (t, out) for t, out in outcomes}


# -- local -----------------------------------------------------------------------------------

def test_local_executor_runs_each_task_and_returns_failures_as_outcomes(toy):
    tasks = [task(1), task(2, fail=True), task(3)]
    local = LocalExecutor(workers=5)
    assert (local.name, local.workers) == ("local", 1)
    outcomes = list(local.map(tasks))
    assert [t for t, _ in outcomes] == tasks  # in order, one after another, none lost
    (_, ok1), (_, failed), (_, ok3) = outcomes
    assert isinstance(failed, ValueError) and str(failed) == "planted failure at seed=2"
    for seed, out in ((1, ok1), (3, ok3)):
        [r] = out
        assert r.values["seed"] == seed
        assert r.values["norm2"] == pytest.approx(reference(seed), rel=1e-12)
        assert r.arrays["w"].dtype == np.float64 and r.arrays["w"].shape == (5,)


def test_local_executor_lets_ctrl_c_through(toy):
    outcomes = LocalExecutor().map([task(1), task(2, interrupt=True), task(3)])
    assert next(outcomes)[0] == task(1)
    with pytest.raises(KeyboardInterrupt):
        next(outcomes)


# -- process ---------------------------------------------------------------------------------

def test_process_executor_matches_local_and_sets_up_its_worker(toy, monkeypatch):
    """One worker process (spawned, initialised with the runs' thread count): the same
    numbers and arrays as the local executor, the failure returned with its message."""
    monkeypatch.delenv("GOMP_SPINCOUNT", raising=False)
    monkeypatch.setenv("OMP_NUM_THREADS", "7")  # the worker's own setting replaces it
    tasks = [task(1, threads=2), task(2, threads=2, fail=True),
             task(3, threads=2) + task(4, threads=2)]  # a group: run_many
    pool = ProcessExecutor(workers=1)
    assert (pool.name, pool.workers) == ("process", 1)
    remote = by_key(pool.map(tasks))
    local = by_key(LocalExecutor().map(tasks))
    assert sorted(remote) == sorted(local) == ["seed=1", "seed=2", "seed=3"]

    _, failed = remote["seed=2"]
    assert type(failed) is ValueError and str(failed) == "planted failure at seed=2"
    for key in ("seed=1", "seed=3"):
        (t, got), (_, want) = remote[key], local[key]
        assert len(got) == len(want) == len(t)
        for g, w in zip(got, want):
            assert g.values["norm2"] == w.values["norm2"]  # same numbers, bit for bit
            assert g.arrays["w"].tobytes() == w.arrays["w"].tobytes()
    s3, s4 = remote["seed=3"][1]
    assert (s3.values["seed"], s4.values["seed"]) == (3, 4)
    assert s4.values["norm2"] == pytest.approx(reference(4), rel=1e-12)
    # where it ran: another process, set up by init_worker / configure_openmp
    assert s3.values["pid"] != os.getpid()
    assert s3.values["torch_threads"] == 2
    assert s3.values["OMP_NUM_THREADS"] == "2"
    assert s3.values["GOMP_SPINCOUNT"] == "100000"
    assert local["seed=3"][1][0].values["pid"] == os.getpid()


def test_process_executor_with_no_tasks():
    assert list(ProcessExecutor(workers=1).map([])) == []


# -- choosing ----------------------------------------------------------------------------------

@pytest.mark.parametrize("cpus, n_tasks, expect", [
    (2, 2, "process"),   # several runs, several cores: a pool
    (16, 40, "process"),
    (2, 1, "local"),     # one run: no pool to start
    (2, 0, "local"),
    (1, 8, "local"),     # one core: a pool only adds processes
    (None, 8, "local"),  # unknown core count: as one
])
def test_auto_picks_a_pool_for_several_runs_on_several_cores(monkeypatch, cpus, n_tasks, expect):
    monkeypatch.setattr(ex.os, "cpu_count", lambda: cpus)
    assert choose("auto", n_tasks) == expect
    for name in ("local", "process", "ray"):  # an explicit choice stands
        assert choose(name, n_tasks) == name


def test_get_executor_by_name(monkeypatch):
    monkeypatch.setattr(ex.os, "cpu_count", lambda: 3)
    assert isinstance(get_executor("local"), LocalExecutor)
    assert get_executor("local", workers=100).workers == 1  # no cap: it uses one anyway
    pool = get_executor("process")
    assert isinstance(pool, ProcessExecutor) and pool.workers == 3  # one per core
    assert get_executor("process", workers=12).workers == 12  # 4 per CPU at most
    with pytest.raises(UserError, match=r"^--workers 13: more than 12 \(4 per CPU\)"):
        get_executor("process", workers=13)
    with pytest.raises(UserError, match=r"^unknown executor 'dask' \(one of: auto, local, "
                                        r"process, ray\)$"):
        get_executor("dask")


@pytest.mark.parametrize("workers", [0, -1, True, 1.5, "2"])
def test_workers_must_be_a_whole_number(workers):
    for name in ("local", "process"):
        with pytest.raises(UserError, match=r"^--workers must be a whole number >= 1, got "):
            get_executor(name, workers=workers)


def test_worker_threads(monkeypatch):
    monkeypatch.setattr(ex.os, "cpu_count", lambda: 2)
    torch.set_num_threads(2)  # tests/conftest.py restores it
    assert worker_threads("process", None) == 1  # one per worker: the pool uses the cores
    assert worker_threads("ray", None) == 1
    assert worker_threads("local", None) == 2  # all the threads torch has
    assert [worker_threads(e, 3) for e in ("local", "process", "ray")] == [3, 3, 3]
    assert worker_threads("local", 8) == 8  # 4 per CPU at most
    with pytest.raises(UserError, match=r"^--threads 9: more than 8 \(4 per CPU\)"):
        worker_threads("local", 9)
    for bad in (0, -2, True, 2.0, "2"):
        with pytest.raises(UserError, match=r"^--threads must be a whole number >= 1, got "):
            worker_threads("process", bad)


# -- worker set-up -----------------------------------------------------------------------------

def test_init_worker_sets_openmp_then_torch_threads(monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setenv("GOMP_SPINCOUNT", "5")  # a user's own setting wins
    init_worker(3)
    assert torch.get_num_threads() == 3  # tests/conftest.py restores it
    assert os.environ["OMP_NUM_THREADS"] == "3" and os.environ["GOMP_SPINCOUNT"] == "5"


def test_a_worker_whose_parent_is_gone_exits_at_once():
    code = ("import os, sys; from dlscope.execution.worker_init import die_with_parent; "
            "die_with_parent(int(sys.argv[1])); print('alive', flush=True)")
    mine = subprocess.run([sys.executable, "-c", code, str(os.getpid())], capture_output=True,
                          text=True, timeout=60)
    assert (mine.returncode, mine.stdout) == (0, "alive\n"), mine.stderr
    other = subprocess.run([sys.executable, "-c", code, str(os.getpid() + 10**6)],
                           capture_output=True, text=True, timeout=60)
    assert (other.returncode, other.stdout) == (1, ""), other.stderr  # not its parent: exit 1
