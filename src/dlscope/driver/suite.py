"""`dlscope run all`: every experiment in the assignment's order, then the report.

Every experiment is planned first (config, device, executor, sizes, runs(), data), so bad
input anywhere stops the command before anything is written. Then all the runs still to
compute go to ONE pool, longest expected first (dlscope.driver.schedule), and each
experiment's tables, figures and summary are written as soon as its own runs are in, while
the pool works on the others: both cores stay busy to the end. The phases are those of
`dlscope run NAME` (dlscope.driver.runner), so one experiment behaves the same either way.

A failure in one experiment is logged, recorded in OUT/suite.json and shown in the report;
it does not stop the others or lose their results. suite.json also gives the suite's core
utilization: busy core-seconds of the runs computed (from their timing.json) / (cores x
wall seconds).
"""

from __future__ import annotations

import time
import traceback
from pathlib import Path

from dlscope import experiments
from dlscope.driver.runner import factory_path, finish, open_folder, plan, run_planned
from dlscope.driver.schedule import busy_core_seconds, core_utilization
from dlscope.errors import UserError
from dlscope.execution.store import write_json


def _failed(name: str, exc: BaseException, wall: float, log) -> dict:
    log(f"{name}: FAILED: {type(exc).__name__}: {exc}")
    return {"status": "failed", "error": f"{type(exc).__name__}: {exc}",
            "traceback": traceback.format_exc(limit=8), "wall_s": round(wall, 2)}


def run_all(*, profile: str, out, log=print, data=None, progress=None, **options) -> list[str]:
    """Run everything; return the names of the experiments that failed. `data` (a
    `--data` value) goes to every experiment with a `data` key; the others keep theirs.
    `options`: executor, workers, device, threads, force, executor_options, as
    `run_experiment` takes them."""
    out = Path(out)
    t0 = time.perf_counter()
    status: dict[str, dict] = {}
    plans = []
    with factory_path():
        for name in experiments.available():
            t = time.perf_counter()
            try:
                has_data = "data" in experiments.get(name).Config.model_fields
                if data is not None and not has_data:
                    log(f"{name}: --data does not apply (it trains on its own data)")
                p = plan(name, profile=profile, out=out, log=log, progress=progress,
                         overrides={"data": data} if data is not None and has_data else None,
                         **options)
                p.shared = True
                plans.append(p)
            except (KeyboardInterrupt, UserError):
                raise  # bad input: stop before anything is written
            except Exception as exc:  # keep going: the others' results must not be lost
                status[name] = _failed(name, exc, time.perf_counter() - t, log)
        opened = []
        for p in plans:
            try:
                open_folder(p)
                opened.append(p)
            except (KeyboardInterrupt, UserError):
                raise
            except Exception as exc:
                status[p.name] = _failed(p.name, exc, p.elapsed(), log)

        def done(p) -> None:
            try:
                finish(p)
                status[p.name] = {"status": "ok", "wall_s": round(p.wall_s, 2)}
            except (KeyboardInterrupt, UserError):
                raise
            except Exception as exc:  # keep going: the others' results must not be lost
                status[p.name] = _failed(p.name, exc, p.elapsed(), log)
            status[p.name]["busy_core_s"] = round(busy_core_seconds(p.timings), 2)

        cores = run_planned(opened, done, progress=progress) if opened else 0
    wall = time.perf_counter() - t0
    timings = [t for p in opened for t in p.timings]
    util = core_utilization(timings, cores, wall)
    write_json(out / "suite.json", {
        "profile": profile, "wall_s": round(wall, 2),
        "core_utilization": None if util is None else round(util, 4),
        "busy_core_s": round(busy_core_seconds(timings), 2), "cores": cores,
        "experiments": {n: status[n] for n in experiments.available() if n in status}})
    from dlscope.report import build_report

    log(f"report: {build_report(out)}")
    log(f"all: {len(status)} experiments in {time.perf_counter() - t0:.1f} s"
        + ("" if util is None else f", core utilization {100 * util:.0f}% of {cores} cores"))
    return [n for n, s in status.items() if s["status"] != "ok"]
