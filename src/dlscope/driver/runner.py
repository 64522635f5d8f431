"""Run one experiment end to end: config, runs (reused or executed), tables, figures, summary.

This is the one code path behind `dlscope run`, `dlscope.run()` and `dlscope run all`.
Nothing is written before the config, device and executor are validated; finished runs
are stored as they arrive; summary.json is written last and marks a finished folder: a stale
one is removed before config.toml, tables and figures are rewritten, so a write that fails
(a full disk) leaves a folder that reads as incomplete, and the next run reuses the stored
runs and completes it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import platform
import re
import subprocess
import sys
import time
import types
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dlscope import experiments
from dlscope.contract import config as configs
from dlscope.contract import limits
from dlscope.contract.runspec import RunResult, RunSpec, resolve_run
from dlscope.data import identity as data_identity
from dlscope.data import info as data_info
from dlscope.data import mnist_identity
from dlscope.driver.result import ExperimentResult
from dlscope.driver.schedule import calibration, expected_cost
from dlscope.errors import UserError
from dlscope.execution.executor import Task, choose, get_executor, worker_threads
from dlscope.execution.store import Store, atomic_write_text, write_json
from dlscope.models import FACTORY_PATH_ENV
from dlscope.train.engine import ENGINE_VERSION, resolve_device
from dlscope.version import __version__


def _tasks(specs: list[RunSpec], workers: int) -> list[Task]:
    """Group specs that may share an ensemble, splitting groups so every worker has work."""
    groups: dict[str | None, list[RunSpec]] = defaultdict(list)
    tasks: list[Task] = []
    for s in specs:
        if s.group is None:
            tasks.append([s])
        else:
            groups[s.group].append(s)
    n_chunks = max(1, workers // max(1, len(groups))) if groups else 1
    for members in groups.values():
        k = min(n_chunks, len(members))
        tasks += [members[i::k] for i in range(k)]
    return tasks


class RunsFailed(RuntimeError):
    """Every run of an experiment failed for a reason other than bad input (a fault)."""


class OutputFailed(RunsFailed):
    """Writing an experiment's results failed (a full disk): the folder has no summary.json."""


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or "(no message)"
    return f"{type(exc).__name__}: {text[:300]}"


def _all_failed(name: str, failures: list[dict], errors: list[BaseException]) -> None:
    """Raise one line naming the failed runs and why (UserError when all were bad input)."""
    by_error: dict[str, list[str]] = defaultdict(list)
    for f in failures:
        by_error[f["error"]].append(f["run"])
    parts = []
    for err, runs in list(by_error.items())[:3]:
        shown = ", ".join(runs[:4]) + (f" and {len(runs) - 4} more" if len(runs) > 4 else "")
        parts.append(f"{shown}: {err}")
    if len(by_error) > 3:
        parts.append(f"{len(by_error) - 3} other errors")
    msg = (f"{name}: all {len(failures)} runs failed, no tables written ("
           + "; ".join(parts) + ")")
    if errors and all(isinstance(e, UserError) for e in errors):
        raise UserError(msg)
    raise RunsFailed(msg)


def _make_folder(root: Path) -> list[Path]:
    """mkdir -p root as one line of UserError when impossible; the folders it created."""
    created: list[Path] = []
    try:
        p = root
        while not p.exists() and p != p.parent:
            created.append(p)
            p = p.parent
        root.mkdir(parents=True, exist_ok=True)
        probe = root / f".write-test-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        _remove_created(created)
        reason = exc.strerror or str(exc)
        raise UserError(f"--out {root.parent}: cannot write results there ({reason})") from None
    return created


def _remove_created(created: list[Path]) -> None:
    """Remove the folders this command created, if they are still empty (or hold only an
    empty runs/): a command whose runs all failed leaves nothing behind."""
    for d in created:
        for sub in ("runs", "quarantine"):
            try:
                (d / sub).rmdir()
            except OSError:
                pass
        try:
            d.rmdir()
        except OSError:
            pass


def _device(device: str):
    if not isinstance(device, str) or not re.fullmatch(r"auto|cpu|mps|cuda(:\d+)?", device):
        raise UserError(f"--device {device!r}: not a device (one of: auto, cpu, cuda, cuda:N, "
                        "mps)")
    if device == "mps" and not torch.backends.mps.is_available():  # else every run fails
        raise UserError("--device 'mps': MPS is not available on this machine")
    try:
        return resolve_device(device)
    except RuntimeError as exc:
        raise UserError(f"--device {device!r}: {' '.join(str(exc).split())[:200]}") from None


def _data_used(specs: list[RunSpec], log) -> list[dict]:
    """The outside data the runs train on (loaded and fingerprinted once, logged once):
    MNIST's identity, or for other kinds what `dlscope.data.info` says and the content
    fingerprint (`dlscope.data.identity`)."""
    out, seen = [], set()
    for s in specs:
        d = s.data
        if not isinstance(d, dict) or d.get("kind") == "function":
            continue
        where = {k: v for k, v in d.items() if k in ("kind", "path")}
        key = json.dumps(where, sort_keys=True)
        if key in seen:
            continue
        seen.add(key)
        if d.get("kind") == "mnist":
            out.append(mnist_identity(log=log))
            continue
        found, ident = data_info(d), data_identity(d) or {}
        if found is not None:
            log(f"data: {found.source}")
            out.append({"data": found.name, "official": found.official,
                        "sha256": ident.get("sha256"), "source": found.source})
    return out


def _git_commit() -> str | None:
    try:
        root = Path(__file__).resolve().parents[3]
        out = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True,
                             text=True, timeout=5)
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def environment(device, threads: int, executor: str, workers: int) -> dict:
    return {"dlscope": __version__, "engine": ENGINE_VERSION, "python": sys.version.split()[0],
            "torch": torch.__version__, "numpy": np.__version__, "platform": platform.platform(),
            "processor": platform.processor() or platform.machine(), "cpus": os.cpu_count(),
            "device": str(device), "threads_per_run": threads, "executor": executor,
            "workers": workers, "git_commit": _git_commit()}


def _reuse(store: Store, specs: list[RunSpec], force: bool):
    """(finished runs by hash, specs still to run): a stored run is reused unless --force."""
    results: dict[str, RunResult] = {}
    missing: list[RunSpec] = []
    for s in specs:
        r = None if force else store.load(s)
        if r is None:
            missing.append(s)
        else:
            results[s.hash] = r
    return results, missing


def _summary(exp, name: str, profile: str, cfg, tables, ordered, *, wall: float, runs: int,
             reused: int, failures: list[dict], observations: list[str], data) -> dict:
    """summary.json: what the report and dlscope.load read (written last)."""
    flagged = [{"run": s.key, "status": r.status} for s, r in ordered
               if r.status not in ("ok", "converged")]
    # "module": named in dlscope.load's refusal when not loaded; never imported from here
    return {"experiment": name, "module": exp.__name__,
            "title": exp.TITLE, "section": exp.SECTION,
            "question": exp.QUESTION, "profile": profile, "wall_s": round(wall, 3),
            "runs": runs, "reused": reused, "computed": len(ordered) - reused,
            "failed": failures, "flagged": flagged, "observations": observations,
            "data": data,
            "headline": exp.headline(cfg, tables) if hasattr(exp, "headline") else {},
            # per-setting medians and 95% intervals over seeds (experiments.stats)
            "statistics": exp.statistics(cfg, tables) if hasattr(exp, "statistics") else {},
            # reproduction verdicts against the papers (experiments.stats.Verdict)
            "verdicts": ([v.to_dict() for v in exp.verdicts(cfg, tables)]
                         if hasattr(exp, "verdicts") else [])}


def _prepare(exp, specs: list[RunSpec], executor: str, workers, device: str, threads,
             executor_options: dict | None):
    """Validate device, executor and sizes before anything is written: (device, threads,
    executor, specs with device and threads set)."""
    dev = _device(device)
    for fn in dict.fromkeys(s.fn for s in specs):
        resolve_run(fn)  # each names an importable experiment module: UserError before output
    executor = choose(executor, len(_tasks(specs, os.cpu_count() or 1)))
    n_threads = worker_threads(executor, threads)
    ex = get_executor(executor, workers, **(executor_options or {}))
    specs = [dataclasses.replace(s, device=str(dev), threads=n_threads) for s in specs]
    limits.check_specs(specs, getattr(exp, "memory", None))  # before anything is allocated
    return dev, n_threads, ex, specs


@dataclasses.dataclass
class Planned:
    """One experiment between the phases of a command: validated (`plan`, nothing written),
    its folder opened and stored runs reused (`open_folder`), its missing runs executed
    (`run_planned`, with other experiments' in one pool under `run all`), then its tables,
    figures and summary written (`finish`)."""
    name: str
    exp: Any
    profile: str
    cfg: Any
    dev: Any
    n_threads: int
    ex: Any
    specs: list[RunSpec]
    data: list[dict]
    out: Path
    force: bool
    log: Callable
    t0: float  # perf_counter at the start of `plan`
    plan_s: float = 0.0  # seconds `plan` took
    shared: bool = False  # its runs share a pool with other experiments' (run all)
    store: Store | None = None
    created: list[Path] = dataclasses.field(default_factory=list)
    results: dict[str, RunResult] = dataclasses.field(default_factory=dict)
    missing: list[RunSpec] = dataclasses.field(default_factory=list)
    reused: int = 0
    calibration: float = 1.0  # measured / modelled seconds of its earlier timed runs
    failures: list[dict] = dataclasses.field(default_factory=list)
    errors: list[BaseException] = dataclasses.field(default_factory=list)
    timings: list[dict] = dataclasses.field(default_factory=list)  # runs computed now
    finish_t0: float | None = None
    wall_s: float | None = None

    def elapsed(self) -> float:
        """Its wall time: from `plan` on (one experiment); in a shared pool, its planning
        plus the span from its first computed run's start to now (its analysis included)."""
        if not self.shared:
            return time.perf_counter() - self.t0
        starts = [t["start"] for t in self.timings if isinstance(t.get("start"), (int, float))]
        if starts:
            return self.plan_s + max(0.0, time.time() - min(starts))
        since = self.finish_t0 if self.finish_t0 is not None else time.perf_counter()
        return self.plan_s + time.perf_counter() - since


@contextlib.contextmanager
def factory_path():
    """Workers (process, Ray) import user model factories from this folder too, for the
    command's duration (DLSCOPE_FACTORY_PATH)."""
    before = os.environ.get(FACTORY_PATH_ENV)
    os.environ[FACTORY_PATH_ENV] = os.pathsep.join(p for p in (os.getcwd(), before) if p)
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(FACTORY_PATH_ENV, None)
        else:
            os.environ[FACTORY_PATH_ENV] = before


def plan(name: str, *, profile: str = "assignment", config_file=None, sets=(),
         overrides: dict | None = None, out="runs", executor: str = "auto",
         workers: int | None = None, device: str = "auto", threads: int | None = None,
         force: bool = False, progress: bool | None = None, log=print,
         executor_options: dict | None = None) -> Planned:
    """Phase 1, nothing written: resolve and validate the config, device, executor and
    sizes, call the experiment's runs(), load and fingerprint its outside data.

    Args: as `run_experiment` (progress is the pool's, see `run_planned`).

    Returns:
        The Planned experiment (its folder not yet opened).

    Raises:
        UserError: bad input, in one line.
    """
    t0 = time.perf_counter()
    exp = experiments.get(name)
    cfg = configs.resolve(exp, profile, config_file, sets, overrides)
    dev, n_threads, ex, specs = _prepare(exp, exp.runs(cfg), executor, workers, device,
                                         threads, executor_options)
    data = _data_used(specs, log)  # loads and fingerprints outside data (part of each hash)
    return Planned(name=name, exp=exp, profile=profile, cfg=cfg, dev=dev, n_threads=n_threads,
                   ex=ex, specs=specs, data=data, out=Path(out), force=force, log=log, t0=t0,
                   plan_s=time.perf_counter() - t0)


def open_folder(p: Planned) -> None:
    """Phase 2: create the results folder, clear half-written runs, reuse the stored ones
    (unless --force) and log what is left to run."""
    p.store = Store(p.out / p.name, log=p.log)
    p.created = _make_folder(p.store.root)
    p.store.clean_temp()
    p.results, p.missing = _reuse(p.store, p.specs, p.force)
    p.reused = len(p.results)
    if p.missing:
        p.calibration = calibration(
            (types.SimpleNamespace(params=spec.get("params"), data=spec.get("data")), timing)
            for spec, timing in p.store.timed_runs())
    ex = p.ex
    p.log(f"{p.name}: {len(p.specs)} runs ({p.reused} reused, {len(p.missing)} to run) "
          f"on {p.dev} with {ex.name} executor"
          + (f", {ex.workers} workers" if ex.workers > 1 else ""))


def _record(p: Planned, task: Task, outcome) -> None:
    """Store a finished task's runs at once, or note its failure."""
    if isinstance(outcome, BaseException):
        p.errors.append(outcome)
        for s in task:
            p.failures.append({"run": s.key, "hash": s.hash, "error": _one_line(outcome)})
            p.log(f"{p.name}: run {s.key} failed: {_one_line(outcome)}")
        return
    for s, r in zip(task, outcome):
        p.store.save(s, r, replace=p.force)  # else a concurrent copy wins
        p.results[s.hash] = r
        if isinstance(r.timing, dict):
            p.timings.append(r.timing)


def _slots(ex, threads: int, n_tasks: int) -> int:
    """Cores a pool of this executor offers: Ray's CPUs, else worker processes x threads."""
    if ex.name == "ray":
        return max(1, ex.workers)
    return max(1, min(ex.workers, n_tasks)) * threads


def run_planned(plans: list[Planned], on_done: Callable[[Planned], Any], *,
                progress: bool | None = None) -> int:
    """Phase 3: run every plan's missing runs in one pool per (executor, threads) (one for
    all under the defaults), longest expected first (dlscope.driver.schedule), storing each
    run as it arrives, and call `on_done(plan)` as soon as a plan's runs are all in (at once
    for a plan with nothing to run) while the pool works on the others.

    Returns:
        The cores the pools offered (the largest pool's slots), for the utilization.
    """
    from tqdm.auto import tqdm

    batches: dict[tuple[str, int], list[Planned]] = defaultdict(list)
    for p in plans:
        batches[(p.ex.name, p.n_threads)].append(p)
    cores = 0
    show = sys.stderr.isatty() if progress is None else progress
    desc = plans[0].name if len(plans) == 1 else "all"
    with tqdm(total=sum(len(p.specs) for p in plans), initial=sum(p.reused for p in plans),
              desc=desc, unit="run", disable=not show, leave=False) as bar:
        for p in plans:
            if not p.missing:
                on_done(p)
        for (_, threads), members in batches.items():
            owner: dict[int, Planned] = {}
            tasks: list[tuple[float, Task]] = []
            for p in members:
                for task in _tasks(p.missing, p.ex.workers):
                    owner[id(task)] = p
                    tasks.append((p.calibration * sum(expected_cost(s) for s in task), task))
            if not tasks:
                continue
            tasks.sort(key=lambda ct: -ct[0])  # longest first (stable)
            left = defaultdict(int)
            for _, task in tasks:
                left[id(owner[id(task)])] += 1
            ex = members[0].ex
            cores = max(cores, _slots(ex, threads, len(tasks)))
            for task, outcome in ex.map([task for _, task in tasks]):
                p = owner[id(task)]
                _record(p, task, outcome)
                bar.update(len(task))
                left[id(p)] -= 1
                if left[id(p)] == 0:
                    on_done(p)
    return cores


def finish(p: Planned) -> ExperimentResult:
    """Phase 4: tables, figures, observations, env.json, then summary.json (last). Raises
    (UserError or RunsFailed) when every run failed, OutputFailed when writing failed."""
    p.finish_t0 = time.perf_counter()
    name, exp, cfg, store = p.name, p.exp, p.cfg, p.store
    if not p.results:
        _remove_created(p.created)
        _all_failed(name, p.failures, p.errors)
    ordered = [(s, p.results[s.hash]) for s in p.specs if s.hash in p.results]
    try:
        (store.root / "summary.json").unlink(missing_ok=True)  # incomplete until rewritten
        atomic_write_text(store.root / "config.toml", configs.to_toml(cfg))
        tables = exp.analyze(cfg, ordered)
        for tname, df in tables.items():
            store.write_table(tname, df)
        figures = exp.figures(cfg, tables)
        for fname, fig in figures.items():
            store.write_figure(fname, fig)
        observations = exp.observations(cfg, tables)
        wall = p.wall_s = p.elapsed()
        env = environment(p.dev, p.n_threads, p.ex.name, p.ex.workers)
        env["data"] = p.data  # what was trained on: verified MNIST or other data (never confused)
        env["wall_s"] = round(wall, 3)
        write_json(store.root / "env.json", env)
        summary = _summary(exp, name, p.profile, cfg, tables, ordered, wall=wall,
                           runs=len(p.specs), reused=p.reused, failures=p.failures,
                           observations=observations, data=p.data)
        write_json(store.root / "summary.json", summary)  # last: marks the folder finished
    except OSError as exc:
        raise OutputFailed(f"{name}: writing results to {store.root} failed "
                           f"({exc.strerror or exc}); the folder has no summary.json (incomplete)"
                           f"; rerun with space to complete it ({len(ordered)} stored runs are "
                           "reused)") from exc
    p.log(f"{name}: done in {wall:.1f} s -> {store.root}")
    return ExperimentResult(name=name, path=store.root, config=cfg, tables=tables,
                            figures=figures, observations=observations, summary=summary)


def run_experiment(name: str, *, profile: str = "assignment", config_file=None, sets=(),
                   overrides: dict | None = None, out="runs", executor: str = "auto",
                   workers: int | None = None, device: str = "auto", threads: int | None = None,
                   force: bool = False, progress: bool | None = None, log=print,
                   executor_options: dict | None = None) -> ExperimentResult:
    """Run one experiment end to end (validate, run what is not stored, write) and return
    its tables, figures and observations as an ExperimentResult: `plan`, `open_folder`,
    `run_planned` and `finish`, the phases `run all` drives for every experiment at once."""
    with factory_path():
        p = plan(name, profile=profile, config_file=config_file, sets=sets,
                 overrides=overrides, out=out, executor=executor, workers=workers,
                 device=device, threads=threads, force=force, progress=progress, log=log,
                 executor_options=executor_options)
        open_folder(p)
        done: list[ExperimentResult] = []
        run_planned([p], lambda q: done.append(finish(q)), progress=progress)
        return done[0]
