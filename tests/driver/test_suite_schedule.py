"""`run all` schedules every experiment's runs in one pool, longest expected first, finishes
each experiment as soon as its own runs are in, records when and where each run ran, and
reports the suite's core utilization.

Two toy experiments (modules written to a folder on sys.path, registered as plugins) whose
runs sleep for `epochs` milliseconds: the cost model (epochs x examples x parameters) then
orders them as their durations do, and sleeping costs the shared machine no CPU.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pandas as pd
import pytest

from dlscope import experiments
from dlscope.contract.runspec import RunSpec
from dlscope.driver.runner import run_experiment
from dlscope.driver.schedule import (
    busy_core_seconds,
    calibration,
    core_utilization,
    expected_cost,
    longest_first,
)
from dlscope.driver.suite import run_all
from dlscope.errors import UserError
from dlscope.experiments import registry

TEMPLATE = '''
import time

from pydantic import Field

from dlscope.contract.config import ExperimentConfig
from dlscope.contract.runspec import RunResult, RunSpec
import pandas as pd

NAME = "{name}"
SECTION = "X"
TITLE = "toy {name}"
QUESTION = "Does the scheduler keep both cores busy?"


class Config(ExperimentConfig):
    sleeps: list[int] = Field([100], min_length=1, description="milliseconds per run")
    fail: list[int] = Field([-1], description="indices of runs that raise (-1: none)")


PROFILES = {profiles}


def runs(cfg):
    return [RunSpec(NAME, f"run={{i}}", __name__,
                    {{"i": i, "epochs": ms, "n_train": 1, "fail": i in cfg.fail}},
                    data={{"kind": "function", "spec": "sinc", "n_train": 1, "n_test": 1,
                          "seed": 0}})
            for i, ms in enumerate(cfg.sleeps)]


def run_one(p, ctx):
    t = time.perf_counter()
    time.sleep(p["epochs"] / 1000)
    if p["fail"]:
        raise RuntimeError(f"run {{p['i']}} broke")
    return RunResult({{"status": "ok", "value": 3 * p["i"] + p["epochs"] / 7,
                      "wall_s": time.perf_counter() - t}})


def analyze(cfg, results):
    return {{"results": pd.DataFrame([{{"key": s.key, **r.values}} for s, r in results])}}


def figures(cfg, tables):
    return {{}}


def observations(cfg, tables):
    return [f"{{len(tables['results'])}} runs"]
'''

A, B = "sched-a", "sched-b"


@pytest.fixture
def toys(tmp_path, monkeypatch):
    """Register sched-a and sched-b (run all sees only them); restore the registry after."""
    state = [registry.REGISTRY, registry.PARTS, registry._checked]
    saved = [dict(d) for d in state]
    d = tmp_path / "plugins"
    d.mkdir()
    profiles = {
        A: {"quick": {"sleeps": [600, 40]}, "broken": {"sleeps": [50]},
            "faulty": {"sleeps": [60, 61], "fail": [1]}},
        B: {"quick": {"sleeps": [150, 151, 152, 153]}, "broken": {"sleeps": []},
            "faulty": {"sleeps": [30, 31], "fail": [0, 1]}},
    }
    for name, prof in profiles.items():
        mod = name.replace("-", "_")
        (d / f"{mod}.py").write_text(TEMPLATE.format(name=name, profiles=repr(prof)))
        monkeypatch.delitem(sys.modules, mod, raising=False)
    monkeypatch.syspath_prepend(str(d))
    for name in profiles:
        experiments.register(name.replace("-", "_"))
    monkeypatch.setattr(experiments, "available", lambda: [A, B])
    yield
    for dct, s in zip(state, saved):
        dct.clear()
        dct.update(s)
    for name in profiles:
        sys.modules.pop(name.replace("-", "_"), None)


def timings(root: Path) -> dict[str, dict]:
    """run key -> its timing.json, from the stored run folders."""
    out = {}
    for run in (root / "runs").iterdir():
        spec = json.loads((run / "spec.json").read_text())
        out[spec["key"]] = json.loads((run / "timing.json").read_text())
    return out


def test_utilization_closed_form():
    ensemble = {"start": 100.0, "end": 110.0, "threads": 1, "pid": 1, "host": "h"}
    planted = [ensemble, dict(ensemble),  # two runs of one ensemble: counted once
               {"start": 102.0, "end": 106.0, "threads": 1, "pid": 2, "host": "h"},
               {"start": 106.0, "end": 107.5, "threads": 2, "pid": 2, "host": "h"},
               None, {"start": "?", "end": 1}]  # reused runs, damaged records: ignored
    assert busy_core_seconds(planted) == pytest.approx(10 + 4 + 1.5 * 2)
    assert core_utilization(planted, cores=2, wall_s=12.5) == pytest.approx(17 / 25)
    assert core_utilization(planted, cores=0, wall_s=12.5) is None
    assert core_utilization([], cores=2, wall_s=3.0) == 0.0


def test_cost_model_orders_by_work_and_calibrates():
    def spec(epochs, n, model="mlp:1-8-1", batch=None):
        return RunSpec("e", f"{epochs}", "m", {"train": {"epochs": epochs, "batch_size": batch},
                                              "model": model}, data={"n_train": n})
    # 8 hidden tanh units from 1 input to 1 output: 8 + 8 + 8 + 1 = 25 parameters
    assert expected_cost(spec(10, 100)) == pytest.approx(10 * 3e-4 + 6 * 10 * 100 * 25 / 1e10)
    # minibatches of 32: ceil(100 / 32) = 4 steps an epoch
    assert expected_cost(spec(10, 100, batch=32)) == pytest.approx(
        40 * 3e-4 + 6 * 10 * 100 * 25 / 1e10)
    small, big, wide = spec(10, 100), spec(1000, 100), spec(10, 100, "mlp:1-4096-1")
    assert longest_first([[small], [big], [small, small], [wide]]) == \
        [[big], [wide], [small, small], [small]]
    took = [(big, {"start": 0.0, "end": 3 * expected_cost(big), "runs_in_task": 1}),
            (small, {"start": 5.0, "end": 5 + 2 * 5 * expected_cost(small), "runs_in_task": 2}),
            (small, {"start": 1.0, "end": 1.0})]  # no duration: ignored
    assert calibration(took) == pytest.approx(4.0)  # median of 3 and 5


def test_runs_of_two_experiments_share_one_pool(toys, tmp_path):
    """Local executor: B's runs (150-153 ms) go between A's long (600 ms) and short (40 ms)
    runs; B is finished before A's last run starts; results equal one-by-one runs."""
    out, lines = tmp_path / "all", []
    failed = run_all(profile="quick", out=out, log=lines.append, executor="local", threads=1)
    assert failed == []
    ta, tb = timings(out / A), timings(out / B)
    order = sorted([*((t["start"], f"a/{k}") for k, t in ta.items()),
                    *((t["start"], f"b/{k}") for k, t in tb.items())])
    assert [k for _, k in order] == ["a/run=0", *(f"b/run={i}" for i in (3, 2, 1, 0)), "a/run=1"]
    assert min(t["start"] for t in tb.values()) < ta["run=1"]["end"]  # interleaved
    done_b = lines.index(next(x for x in lines if x.startswith(f"{B}: done")))
    done_a = lines.index(next(x for x in lines if x.startswith(f"{A}: done")))
    assert done_b < done_a  # B's tables were written while A still had a run to go
    for t in [*ta.values(), *tb.values()]:
        assert t["end"] > t["start"] and t["threads"] == 1 and isinstance(t["pid"], int)

    suite = json.loads((out / "suite.json").read_text())
    busy = sum(t["end"] - t["start"] for t in [*ta.values(), *tb.values()])
    assert suite["cores"] == 1 and suite["busy_core_s"] == pytest.approx(busy, abs=0.01)
    assert suite["core_utilization"] == pytest.approx(busy / suite["wall_s"], abs=0.01)
    assert 0.6 < suite["core_utilization"] <= 1.0  # 1.24 s of sleeping in a short command
    for name in (A, B):
        summary = json.loads((out / name / "summary.json").read_text())
        assert summary["runs"] == summary["computed"] and summary["failed"] == []
        assert suite["experiments"][name]["status"] == "ok"
    assert "core utilization" in (out / "report.html").read_text()

    one = tmp_path / "one"
    for name in (A, B):
        run_experiment(name, profile="quick", out=one, log=lambda m: None, executor="local",
                       threads=1)
        assert sorted(p.name for p in (one / name / "runs").iterdir()) == \
            sorted(p.name for p in (out / name / "runs").iterdir())  # same hashes
        tables = [pd.read_csv(d / name / "results.csv").drop(columns="wall_s")
                  for d in (out, one)]
        assert tables[0].to_csv(index=False) == tables[1].to_csv(index=False)

    again = []  # everything stored: reused, nothing computed, no utilization to speak of
    assert run_all(profile="quick", out=out, log=again.append, executor="local",
                   threads=1) == []
    assert any(f"{A}: 2 runs (2 reused, 0 to run)" in x for x in again)
    assert json.loads((out / "suite.json").read_text())["core_utilization"] is None
    assert "core utilization" not in (out / "report.html").read_text()


def test_process_pool_overlaps_experiments(toys, tmp_path):
    """Two worker processes: A's long run on one, B's runs (and A's short one) on the other,
    at the same time."""
    out = tmp_path / "out"
    assert run_all(profile="quick", out=out, log=lambda m: None, executor="process",
                   workers=2) == []
    ta, tb = timings(out / A), timings(out / B)
    long_run = ta["run=0"]
    overlapping = [t for t in [*tb.values(), ta["run=1"]]
                   if t["start"] < long_run["end"] and t["end"] > long_run["start"]]
    assert len(overlapping) >= 2 and all(t["pid"] != long_run["pid"] for t in overlapping)
    assert len({t["pid"] for t in [*ta.values(), *tb.values()]}) == 2
    suite = json.loads((out / "suite.json").read_text())
    busy = busy_core_seconds([*ta.values(), *tb.values()])
    assert suite["cores"] == 2
    assert suite["core_utilization"] == pytest.approx(busy / (2 * suite["wall_s"]), abs=0.01)


def test_a_failing_experiment_does_not_stop_the_other(toys, tmp_path):
    out = tmp_path / "out"
    lines: list[str] = []
    failed = run_all(profile="faulty", out=out, log=lines.append, executor="local", threads=1)
    assert failed == [B]  # every run of B raised; A lost one run of two
    suite = json.loads((out / "suite.json").read_text())
    assert suite["experiments"][A]["status"] == "ok"
    assert suite["experiments"][B]["status"] == "failed"
    assert "RunsFailed" in suite["experiments"][B]["error"]
    summary = json.loads((out / A / "summary.json").read_text())
    assert [f["run"] for f in summary["failed"]] == ["run=1"] and summary["computed"] == 1
    assert not (out / B).exists()  # nothing of B's is left behind, as with `run B`
    assert any("run=1 failed: RuntimeError: run 1 broke" in x for x in lines)


def test_bad_config_stops_everything_before_anything_is_written(toys, tmp_path):
    out = tmp_path / "out"
    with pytest.raises(UserError, match="sleeps"):
        run_all(profile="broken", out=out, log=lambda m: None, executor="local")
    assert not out.exists()
