"""The Ray executor on a real two-node Ray cluster (ray.cluster_utils.Cluster: a head and a
worker node on this machine, one CPU each).

Checks: a sweep spreads over both nodes, never runs in the driver, shares each dataset
through the object store once, and stores exactly the numbers the local executor stores;
a worker killed mid-run is retried and the sweep completes; a run that raises is reported
failed at once, one that keeps crashing after its retries; a driver interrupted mid-sweep
cancels what is in flight and resumes without recomputing finished runs; an address (or
RAY_ADDRESS) connects, a dead one fails fast; impossible CPU requests and a missing extra
are one clear error. The cluster is started once for the module and killed in its teardown.
On the same cluster, an outside experiment's own dataset kind (registered at import) is built
by the sweep's dataset cache, and a user model factory that only the driver's working folder
holds (not the workers' sys.path) is imported on the workers through DLSCOPE_FACTORY_PATH;
both give the local executor's numbers bit for bit.

This module doubles as the experiment module of a test-only experiment, `ray-probe`
(registered in experiments.REGISTRY by the tests that use it), whose runs behave as told.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from pathlib import Path

import pandas as pd
import pytest
import torch
from pydantic import Field

import dlscope
from dlscope import experiments
from dlscope.contract.config import ExperimentConfig
from dlscope.contract.runspec import RunResult, RunSpec
from dlscope.driver import runner
from dlscope.errors import UserError

try:
    import ray
except ImportError:  # the missing-extra test below still runs
    ray = None

pytestmark = pytest.mark.ray
needs_ray = pytest.mark.skipif(ray is None, reason="ray is not installed: pip install -e '.[ray]'")

MB = 2**20

# ----------------------------------------------------------------- the ray-probe experiment

NAME = "ray-probe"
SECTION = "test"
TITLE = "Ray executor probe"
QUESTION = "Does each run behave as told when it runs on Ray?"


class Config(ExperimentConfig):
    modes: list[str] = Field(["ok"], description="one run per entry: ok|slow|killed|error|crash",
                             json_schema_extra={"duplicates": True})
    dir: str = Field(".", description="folder for the attempt/pid/release files")


PROFILES = {"quick": {}}
PROBE_DATA = {"kind": "function", "spec": "sinc", "n_train": 8, "n_test": 4, "seed": 0}


def runs(cfg: Config) -> list[RunSpec]:
    return [RunSpec(NAME, f"{i}:{m}", __name__, {"i": i, "mode": m, "dir": cfg.dir},
                    data=PROBE_DATA) for i, m in enumerate(cfg.modes)]


def run_one(p: dict, ctx) -> RunResult:
    """ok: return at once; slow: wait for the `release` file; killed: on the first attempt
    write this pid and sleep (the test kills it); error: raise; crash: exit the process."""
    d, i, mode = Path(p["dir"]), p["i"], p["mode"]
    with open(d / f"{i}.attempts", "a") as f:
        f.write(f"{os.getpid()}\n")
    attempt = len((d / f"{i}.attempts").read_text().split())
    ds = ctx.dataset(PROBE_DATA)
    if mode == "slow":
        (d / f"{i}.pid").write_text(str(os.getpid()))
        for _ in range(600):
            if (d / "release").exists():
                break
            time.sleep(0.1)
    if mode == "killed" and attempt == 1:
        (d / f"{i}.pid").write_text(str(os.getpid()))
        time.sleep(60)
    if mode == "crash":
        os._exit(1)
    if mode == "error":
        raise ValueError(f"probe {i} failed on purpose")
    return RunResult(values={"status": "ok", "i": i, "attempt": attempt, "pid": os.getpid(),
                             "y_sum": float(ds.y_train.sum()), "context": type(ctx).__name__})


def analyze(cfg, results) -> dict[str, pd.DataFrame]:
    return {"runs": pd.DataFrame([{"key": s.key, **r.values} for s, r in results])}


def figures(cfg, tables) -> dict:
    return {}


def observations(cfg, tables) -> list[str]:
    return []


# ----------------------------------------------------------------- fixtures and helpers

@pytest.fixture(scope="module")
def plugin_dir(tmp_path_factory) -> Path:
    """A folder on the cluster's PYTHONPATH (an "installed" package on every node), where
    tests write outside experiment modules."""
    return tmp_path_factory.mktemp("ray_plugins")


@pytest.fixture(scope="module")
def cluster(plugin_dir):
    """A head and one worker node (1 CPU, 100 MB object store each); this process drives it."""
    if ray is None:
        pytest.skip("ray is not installed")
    from ray.cluster_utils import Cluster

    if ray.is_initialized():
        ray.shutdown()
    c = None
    try:
        # the nodes' workers inherit this environment: let them import this module's `probe`
        # (on a real cluster, dlscope and the experiment code are installed on every node)
        with pytest.MonkeyPatch.context() as mp:
            mp.setenv("PYTHONPATH", os.pathsep.join(
                [str(Path(__file__).parent), str(plugin_dir)]
                + [p for p in [os.environ.get("PYTHONPATH")] if p]))
            c = Cluster(initialize_head=True, head_node_args={
                "num_cpus": 1, "include_dashboard": False, "object_store_memory": 100 * MB})
            c.add_node(num_cpus=1, object_store_memory=100 * MB)
        c.wait_for_nodes()
        ray.init(address=c.address, log_to_driver=False, logging_level="ERROR")
        yield c
    finally:
        ray.shutdown()
        if c is not None:
            pids = [p.process.pid for node in c.list_all_nodes()
                    for procs in node.all_processes.values() for p in procs]
            c.shutdown()
            for pid in pids:  # what Cluster.shutdown might have left, by process id only
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass


@pytest.fixture
def probe_registered(monkeypatch):
    monkeypatch.setitem(experiments.REGISTRY, NAME, __name__)


@pytest.fixture
def executors(monkeypatch):
    """The executors the runner makes, kept for their `placements`."""
    made = []

    def get(*args, **kwargs):
        made.append(runner_get(*args, **kwargs))
        return made[-1]

    runner_get = runner.get_executor
    monkeypatch.setattr(runner, "get_executor", get)
    return made


@pytest.fixture
def keep_threads():
    n = torch.get_num_threads()
    yield
    torch.set_num_threads(n)


def attempts(d: Path, i: int) -> int:
    f = d / f"{i}.attempts"
    return len(f.read_text().split()) if f.exists() else 0


def finished_runs(folder: Path) -> list[Path]:
    runs_dir = folder / "runs"
    if not runs_dir.exists():
        return []
    return [p for p in runs_dir.iterdir() if not p.name.startswith(".")]


# ----------------------------------------------------------------- tests

def test_missing_extra_is_one_clear_error(monkeypatch, tmp_path, capsys):
    from dlscope.cli import main

    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` now raises ImportError
    monkeypatch.setattr(sys, "argv", ["dlscope", "run", "function-fit", "--profile", "quick",
                                      "--executor", "ray", "--out", str(tmp_path / "out")])
    with pytest.raises(SystemExit) as exit_:
        main()
    assert exit_.value.code == 2
    assert "--executor ray needs the ray extra: pip install -e '.[ray]'" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()  # nothing half-written


@needs_ray
def test_sweep_spreads_over_nodes_and_matches_local(cluster, tmp_path, executors, keep_threads):
    kw = {"profile": "quick", "threads": 1, "progress": False, "epochs": 30,
          "functions": ["sinc", "sign-sin"], "depths": [1, 2]}
    on_ray = dlscope.run("function-fit", out=tmp_path / "ray", executor="ray", **kw)
    local = dlscope.run("function-fit", out=tmp_path / "local", executor="local", **kw)

    ex = executors[0]
    assert ex.name == "ray" and on_ray.summary["failed"] == []
    res = on_ray.tables["results"]
    assert sorted(p["key"] for p in ex.placements) == sorted(
        res.function + "/" + res.model + "/seed=" + res.seed.astype(str))
    nodes = {p["node_id"] for p in ex.placements}
    assert len(nodes) >= 2, ex.placements  # both nodes ran runs
    assert nodes <= {n["NodeID"] for n in ray.nodes() if n["Alive"]}
    assert all(p["pid"] != os.getpid() for p in ex.placements)  # none in the driver
    fits = {k: v for k, v in ex.shared_datasets.items() if '"n_test":16' in k}
    assert len(fits) == 2  # one object per distinct dataset, not per run
    assert all(v["builds"] == 1 and 1 <= v["requests"] <= 2 for v in fits.values()), fits

    # the same numbers, bit for bit (wall time aside)
    for name in ("results", "curves", "predictions"):
        a, b = on_ray.tables[name], local.tables[name]
        a, b = (t.drop(columns=["wall_s"], errors="ignore") for t in (a, b))
        pd.testing.assert_frame_equal(a, b, check_exact=True)
    for f in ("curves.csv", "predictions.csv"):  # results.csv holds wall times
        assert (tmp_path / "ray/function-fit" / f).read_bytes() == \
            (tmp_path / "local/function-fit" / f).read_bytes()


# plugins and user factories: right after the first sweep, whose workers they reuse

TOY_KIND = '''"""toy-kind: an outside experiment that brings its own dataset kind (test_ray.py)."""

import pandas as pd
import torch
from pydantic import Field

import dlscope.data
from dlscope.contract.config import ExperimentConfig
from dlscope.contract.runspec import RunResult, RunSpec

NAME = "toy-kind"
SECTION = "test"
TITLE = "Toy: a plugin's own dataset kind"
QUESTION = "Does a plugin's dataset kind build wherever its runs go?"
DATA = {"kind": "toykind", "n": 48, "seed": 3}


def build(device="cpu", n=48, seed=0):
    """y = x @ w + noise, x in R^3: n training and n test points."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(2 * n, 3, generator=g)
    y = x @ torch.tensor([[1.0], [-2.0], [0.5]]) + 0.1 * torch.randn(2 * n, 1, generator=g)
    return dlscope.data.Dataset.from_tensors(x[:n], y[:n], x[n:], y[n:],
                                             name="toykind").to(device)


dlscope.data.register_kind("toykind", build)


class Config(ExperimentConfig):
    seeds: int = Field(4, ge=1, description="initializations")
    steps: int = Field(40, ge=1, description="full-batch SGD steps")


PROFILES = {"quick": {}}


def runs(cfg):
    return [RunSpec(NAME, f"seed={s}", __name__, {"seed": s, "steps": cfg.steps, "data": DATA},
                    data=DATA) for s in range(cfg.seeds)]


def run_one(p, ctx):
    ds = ctx.dataset(p["data"])
    torch.manual_seed(p["seed"])
    net = torch.nn.Sequential(torch.nn.Linear(3, 8), torch.nn.Tanh(),
                              torch.nn.Linear(8, 1)).to(ctx.device)
    opt = torch.optim.SGD(net.parameters(), lr=0.05)
    for _ in range(p["steps"]):
        opt.zero_grad()
        loss = ((net(ds.x_train) - ds.y_train) ** 2).mean()
        loss.backward()
        opt.step()
    with torch.no_grad():
        test = float(((net(ds.x_test) - ds.y_test) ** 2).mean())
    return RunResult({"status": "ok", "seed": p["seed"], "train_mse": loss.item(),
                      "test_mse": test, "y_sum": float(ds.y_train.sum())})


def analyze(cfg, results):
    return {"results": pd.DataFrame([{"key": s.key, **r.values} for s, r in results])}


def figures(cfg, tables):
    return {}


def observations(cfg, tables):
    return []
'''

FACTORY = '''from torch import nn


def mlp(size=16, input_shape=(1, 28, 28), n_classes=10):
    d = 1
    for s in input_shape:
        d *= s
    return nn.Sequential(nn.Flatten(), nn.Linear(d, size), nn.Tanh(), nn.Linear(size, n_classes))
'''


def _on_both_nodes(ex) -> None:
    nodes = {p["node_id"] for p in ex.placements}
    assert len(nodes) >= 2, ex.placements
    assert nodes <= {n["NodeID"] for n in ray.nodes() if n["Alive"]}
    assert all(p["pid"] != os.getpid() for p in ex.placements)  # none in the driver


@needs_ray
def test_plugin_dataset_kind_is_built_on_ray(cluster, plugin_dir, tmp_path, monkeypatch,
                                              executors, keep_threads):
    """The kind exists only once the plugin module is imported: the dataset cache actor (a
    process of its own) imports it before building, so every run finishes on Ray."""
    from dlscope.data import kinds

    (plugin_dir / "toy_kind_exp.py").write_text(TOY_KIND)
    monkeypatch.syspath_prepend(str(plugin_dir))
    monkeypatch.delitem(sys.modules, "toy_kind_exp", raising=False)
    monkeypatch.setitem(kinds.KINDS, "toykind", None)  # undone: the kind leaves with the test
    monkeypatch.setitem(experiments.REGISTRY, "toy-kind", "toy_kind_exp")
    import toy_kind_exp

    kw = {"profile": "quick", "threads": 1, "progress": False}
    on_ray = dlscope.run(toy_kind_exp, out=tmp_path / "ray", executor="ray", **kw)
    local = dlscope.run(toy_kind_exp, out=tmp_path / "local", executor="local", **kw)

    ex = executors[0]
    assert ex.name == "ray" and on_ray.summary["failed"] == []
    assert on_ray.summary["computed"] == 4
    assert sorted(p["key"] for p in ex.placements) == [f"seed={s}" for s in range(4)]
    _on_both_nodes(ex)
    [toy] = [v for k, v in ex.shared_datasets.items() if '"kind":"toykind"' in k]
    assert toy["builds"] == 1 and 1 <= toy["requests"] <= 4, ex.shared_datasets
    expected = float(toy_kind_exp.build(n=48, seed=3).y_train.sum())  # built here, directly
    assert (on_ray.tables["results"].y_sum == expected).all()
    pd.testing.assert_frame_equal(on_ray.tables["results"], local.tables["results"],
                                  check_exact=True)
    assert on_ray.tables["results"].test_mse.nunique() == 4  # four different fits


@ray.remote(num_cpus=1) if ray is not None else (lambda f: f)
def _import_probe(name: str) -> dict:
    import importlib.util

    from dlscope.models import FACTORY_PATH_ENV

    os.environ.pop(FACTORY_PATH_ENV, None)  # as a fresh worker has it
    return {"cwd": os.getcwd(), "found": importlib.util.find_spec(name) is not None,
            "node_id": ray.get_runtime_context().get_node_id()}


@needs_ray
def test_user_factory_in_the_drivers_folder_runs_on_ray(cluster, tmp_path, monkeypatch,
                                                         executors, keep_threads):
    """`py:mynets:mlp` lives only in the driver's working folder: the workers start elsewhere
    and cannot import it by themselves, DLSCOPE_FACTORY_PATH (the driver's folder, passed to
    each task) is what finds it."""
    from helpers import write_user_npz  # here: Ray workers import this module, not tests/

    (tmp_path / "mynets.py").write_text(FACTORY)
    write_user_npz(tmp_path / "mine.npz")
    monkeypatch.chdir(tmp_path)  # not on sys.path: the runner finds it via the working folder
    monkeypatch.delitem(sys.modules, "mynets", raising=False)

    probes = ray.get([_import_probe.remote("mynets") for _ in range(4)])
    assert not any(p["found"] for p in probes), probes  # a plain `import mynets` fails there
    assert all(Path(p["cwd"]).resolve() != tmp_path.resolve() for p in probes), probes

    kw = {"profile": "quick", "threads": 1, "progress": False, "data": "npz:mine.npz",
          "model": "py:mynets:mlp", "widths": [2, 8], "train_subset": 0, "epochs": 1}
    on_ray = dlscope.run("param-count", out=tmp_path / "ray", executor="ray", **kw)
    local = dlscope.run("param-count", out=tmp_path / "local", executor="local", **kw)

    ex = executors[0]
    assert ex.name == "ray" and on_ray.summary["failed"] == []
    assert on_ray.summary["computed"] == len(ex.placements) == len(on_ray.tables["results"])
    _on_both_nodes(ex)
    a, b = (r.tables["results"].drop(columns=["wall_s"], errors="ignore") for r in (on_ray, local))
    assert sorted(set(a.params)) == [65 * 2 + 3 * 4, 65 * 8 + 9 * 4]  # 64 inputs, 4 classes
    pd.testing.assert_frame_equal(a, b, check_exact=True)


@needs_ray
def test_faults_retry_or_report(cluster, tmp_path, monkeypatch, probe_registered):
    from dlscope.execution import ray_executor

    monkeypatch.setattr(ray_executor, "MAX_RETRIES", 1)  # 2 attempts at most: a quicker test
    modes = ["ok", "killed", "error", "crash", "ok"]

    def kill_when_reported():  # kill the worker of run 1 mid-run, by the pid it wrote
        pid_file = tmp_path / "1.pid"
        for _ in range(600):
            if pid_file.exists() and pid_file.read_text():
                os.kill(int(pid_file.read_text()), signal.SIGKILL)
                return
            time.sleep(0.1)

    killer = threading.Thread(target=kill_when_reported, daemon=True)
    killer.start()
    res = dlscope.run(NAME, profile="quick", out=tmp_path / "out", executor="ray", threads=1,
                      progress=False, modes=modes, dir=str(tmp_path))
    killer.join(timeout=1)

    failed = {f["run"]: f["error"] for f in res.summary["failed"]}
    assert set(failed) == {"2:error", "3:crash"}
    assert failed["2:error"] == "ValueError: probe 2 failed on purpose"
    assert "WorkerCrashedError" in failed["3:crash"]
    assert attempts(tmp_path, 1) == 2  # killed once, retried, finished
    assert attempts(tmp_path, 2) == 1  # a Python error is not retried
    assert attempts(tmp_path, 3) == 2  # crashed on every attempt: 1 + MAX_RETRIES
    table = res.tables["runs"].set_index("key")
    assert list(table.index) == ["0:ok", "1:killed", "4:ok"]
    assert table.loc["1:killed", "attempt"] == 2
    assert (table.context == "RayRunContext").all()
    from dlscope.data import function_dataset

    options = {k: v for k, v in PROBE_DATA.items() if k != "kind"}
    expected = float(function_dataset(**options).y_train.sum())
    assert (table.y_sum == expected).all()  # the shared dataset is the one built locally
    assert len(finished_runs(tmp_path / "out" / NAME)) == 3  # failed runs are not stored


@needs_ray
def test_interrupted_driver_resumes_without_recomputing(cluster, tmp_path, monkeypatch,
                                                         probe_registered):
    """Ctrl-C in the driver once two runs are stored: the runs still in flight are cancelled
    (their worker processes killed), and the next command reuses the two finished runs."""
    from dlscope.execution.store import Store

    saved, save = [], Store.save

    def save_then_interrupt(self, spec, result, replace=False):
        save(self, spec, result, replace=replace)
        saved.append(spec.key)
        if len(saved) == 2:
            raise KeyboardInterrupt

    modes, out = ["ok", "ok", "slow", "slow"], tmp_path / "out"
    kw = {"profile": "quick", "out": out, "executor": "ray", "threads": 1, "progress": False,
          "modes": modes, "dir": str(tmp_path)}
    monkeypatch.setattr(Store, "save", save_then_interrupt)
    with pytest.raises(KeyboardInterrupt):
        dlscope.run(NAME, **kw)
    monkeypatch.setattr(Store, "save", save)
    assert sorted(saved) == ["0:ok", "1:ok"] and len(finished_runs(out / NAME)) == 2
    assert not (out / NAME / "summary.json").exists()
    for i in (2, 3):  # a slow run that had started was stopped with its worker
        pid_file = tmp_path / f"{i}.pid"
        if pid_file.exists():
            pid = int(pid_file.read_text())
            for _ in range(100):
                if not Path(f"/proc/{pid}").exists():
                    break
                time.sleep(0.1)
            assert not Path(f"/proc/{pid}").exists(), f"run {i} still running in pid {pid}"

    (tmp_path / "release").touch()
    res = dlscope.run(NAME, **kw)
    assert res.summary["reused"] == 2 and res.summary["computed"] == 2
    assert res.summary["failed"] == []
    assert attempts(tmp_path, 0) == attempts(tmp_path, 1) == 1  # finished runs not recomputed


@needs_ray
def test_more_threads_than_any_node_is_a_user_error(cluster, tmp_path):
    with pytest.raises(UserError, match="no node of the Ray cluster has 2 CPUs"):
        dlscope.run("function-fit", profile="quick", out=tmp_path, executor="ray", threads=2,
                    progress=False, epochs=10, functions=["sinc"])


@needs_ray
def test_address_and_ray_address_env_connect(cluster, monkeypatch):
    """Last in the module: it replaces the fixture's connection with the executor's own."""
    from dlscope.execution.ray_executor import RayExecutor

    ray.shutdown()
    with pytest.raises(UserError, match="no Ray cluster answers there"):
        RayExecutor(address="127.0.0.1:9")  # nothing listens: seconds, not ray's ~14 min
    assert not ray.is_initialized()
    ex = RayExecutor(address=cluster.address)
    assert ray.is_initialized() and ex.workers == 2  # both nodes' CPUs
    ray.shutdown()
    monkeypatch.setenv("RAY_ADDRESS", cluster.address)
    assert RayExecutor().workers == 2
