"""Run one experiment end to end: config, runs (reused or executed), tables, figures, summary.

This is the one code path behind `dlscope run`, `dlscope.run()` and `dlscope run all`.
Nothing is written before the config, device and executor are validated; finished runs
are stored as they arrive; summary.json is written last.
"""

from __future__ import annotations

import dataclasses
import os
import platform
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch

from dlscope import __version__, experiments
from dlscope.execution import config as configs
from dlscope.train.engine import ENGINE_VERSION, resolve_device
from dlscope.execution.executor import Task, choose, get_executor, worker_threads
from dlscope.execution.result import ExperimentResult
from dlscope.execution.runspec import RunResult, RunSpec, resolve_run
from dlscope.execution.store import Store, atomic_write_text, write_json


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


def run_experiment(name: str, *, profile: str = "assignment", config_file=None, sets=(),
                   overrides: dict | None = None, out="runs", executor: str = "auto",
                   workers: int | None = None, device: str = "auto", threads: int | None = None,
                   force: bool = False, progress: bool | None = None, log=print,
                   executor_options: dict | None = None) -> ExperimentResult:
    t0 = time.perf_counter()
    exp = experiments.get(name)
    cfg = configs.resolve(exp, profile, config_file, sets, overrides)
    dev = resolve_device(device)
    specs = exp.runs(cfg)
    for fn in dict.fromkeys(s.fn for s in specs):
        resolve_run(fn)  # each names an existing run function: UserError before any output
    executor = choose(executor, len(_tasks(specs, os.cpu_count() or 1)))
    n_threads = worker_threads(executor, threads)
    ex = get_executor(executor, workers, **(executor_options or {}))
    specs = [dataclasses.replace(s, device=str(dev), threads=n_threads) for s in specs]

    store = Store(Path(out) / name)
    store.root.mkdir(parents=True, exist_ok=True)
    store.clean_temp()
    atomic_write_text(store.root / "config.toml", configs.to_toml(cfg))
    results: dict[str, RunResult] = {}
    missing: list[RunSpec] = []
    for s in specs:
        r = None if force else store.load(s)
        if r is None:
            missing.append(s)
        else:
            results[s.hash] = r
    reused = len(results)
    log(f"{name}: {len(specs)} runs ({reused} reused, {len(missing)} to run) "
        f"on {dev} with {ex.name} executor" + (f", {ex.workers} workers" if ex.workers > 1 else ""))

    failures: list[dict] = []
    if missing:
        from tqdm.auto import tqdm

        show = sys.stderr.isatty() if progress is None else progress
        with tqdm(total=len(specs), initial=reused, desc=name, unit="run", disable=not show,
                  leave=False) as bar:
            for task, outcome in ex.map(_tasks(missing, ex.workers)):
                if isinstance(outcome, BaseException):
                    for s in task:
                        failures.append({"run": s.key, "hash": s.hash,
                                         "error": f"{type(outcome).__name__}: {outcome}"})
                        log(f"{name}: run {s.key} failed: {type(outcome).__name__}: {outcome}")
                else:
                    for s, r in zip(task, outcome):
                        store.save(s, r)
                        results[s.hash] = r
                bar.update(len(task))

    ordered = [(s, results[s.hash]) for s in specs if s.hash in results]
    tables = exp.analyze(cfg, ordered)
    for tname, df in tables.items():
        store.write_table(tname, df)
    figures = exp.figures(cfg, tables)
    for fname, fig in figures.items():
        store.write_figure(fname, fig)
    observations = exp.observations(cfg, tables)
    wall = time.perf_counter() - t0
    env = environment(dev, n_threads, ex.name, ex.workers)
    env["wall_s"] = round(wall, 3)
    write_json(store.root / "env.json", env)
    flagged = [{"run": s.key, "status": r.status} for s, r in ordered if r.status != "ok"
               and r.status != "converged"]
    summary = {"experiment": name, "module": exp.__name__,  # dlscope.load imports it if needed
               "title": exp.TITLE, "section": exp.SECTION,
               "question": exp.QUESTION, "profile": profile, "wall_s": round(wall, 3),
               "runs": len(specs), "reused": reused, "computed": len(results) - reused,
               "failed": failures, "flagged": flagged, "observations": observations,
               "headline": exp.headline(cfg, tables) if hasattr(exp, "headline") else {},
               # per-setting medians and 95% intervals over seeds (experiments.stats)
               "statistics": exp.statistics(cfg, tables) if hasattr(exp, "statistics") else {},
               # reproduction verdicts against the papers (experiments.stats.Verdict)
               "verdicts": ([v.to_dict() for v in exp.verdicts(cfg, tables)]
                            if hasattr(exp, "verdicts") else [])}
    write_json(store.root / "summary.json", summary)
    log(f"{name}: done in {wall:.1f} s -> {store.root}")
    return ExperimentResult(name=name, path=store.root, config=cfg, tables=tables,
                            figures=figures, observations=observations, summary=summary)
