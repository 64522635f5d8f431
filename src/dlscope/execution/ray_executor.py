"""The Ray executor: one Ray task per independent run, on a laptop or a cluster.

    dlscope run param-count --executor ray                      # a local Ray instance
    dlscope run param-count --executor ray --ray-address auto   # the cluster `ray start` made

Each task (a list of RunSpecs, usually one) becomes a Ray task that asks for the CPUs its
runs use (`num_cpus = spec.threads`, one torch thread per CPU; `num_gpus=1` on cuda), so
Ray never oversubscribes a node. Results come back to the driver and are yielded as soon
as `ray.wait` hands them over; the runner stores each at once, so reports, resume and
`--force` behave exactly as with the local executor.

Datasets. A run asks for its data with `ctx.dataset(desc)`; the driver cannot know the
descriptions without running the run functions, so nothing is pre-scanned. Instead the
driver starts one small named actor (`_DatasetCache`, no CPU, placed on the driver's node,
so data such as MNIST need only be cached there) that builds each distinct dataset the
first time any run asks for it, `ray.put`s it once and hands the same ObjectRef to every
later asker. Workers use a `RayRunContext` whose `dataset()` fetches through that actor and
keeps the copy per worker process (as the local RunContext does). The actor owns the
objects and is owned by the driver: the next experiment of `run all` finds it again by
name, and it dies with the driver. If it is lost mid-sweep, workers fall back to building
the dataset themselves (same numbers). The driver itself cannot serve the requests: it sits
in `ray.wait`, and an actor needs no polling loop.

Faults. A worker process or node that dies mid-run makes Ray retry that run
(`max_retries`, default 2, i.e. up to 3 attempts); an ordinary Python exception in a run
is not retried (`retry_exceptions=False`) and is reported as failed at once. Either way
the failure is yielded to the runner, which lists it in summary.json and stores nothing,
so the run is recomputed by the next command.

Every worker checks that it runs the driver's engine and torch versions (the run hash
covers the engine version, so a stale install on one node would store wrong numbers).
"""

from __future__ import annotations

import dataclasses
import os
import socket
import threading
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from dlscope.contract.runspec import RunContext, RunResult, RunSpec, canonical_json, execute
from dlscope.errors import UserError
from dlscope.execution.process_env import configure_openmp
from dlscope.models import FACTORY_PATH_ENV

INSTALL_HINT = "--executor ray needs the ray extra: pip install -e '.[ray]'"
MAX_RETRIES = 2  # extra attempts for a run whose worker process or node died
CONNECT_TIMEOUT_S = 5.0  # a wrong host:port otherwise makes ray.init retry for ~14 minutes

Task = list[RunSpec]


def _import_ray():
    try:
        import ray
    except ImportError as exc:
        raise UserError(INSTALL_HINT) from exc
    return ray


# ---------------------------------------------------------------- worker side

@dataclass
class RayRunContext(RunContext):
    """RunContext for a Ray worker: datasets come from the sweep's shared object store copy."""
    cache: Any = None  # ActorHandle of the sweep's _DatasetCache
    module: str | None = None  # the experiment module: imported where the data is built

    def dataset(self, desc: dict):
        return _shared_dataset(self.cache, canonical_json(desc), str(self.device), self.module)


_WORKER_DATASETS: OrderedDict = OrderedDict()  # (desc_json, device) -> Dataset, this process


def _shared_dataset(cache, desc_json: str, device: str, module: str | None = None):
    key = (desc_json, device)
    if key in _WORKER_DATASETS:
        _WORKER_DATASETS.move_to_end(key)
        return _WORKER_DATASETS[key]
    import ray
    from ray.exceptions import RayError, RayTaskError

    from dlscope.contract.runspec import cached_dataset

    try:
        [ref] = ray.get(cache.get.remote(desc_json, module))
        ds = ray.get(ref).to(device)
    except RayTaskError as exc:  # building it failed: the run's own error (e.g. bad spec)
        raise _cause(exc) from None
    except RayError:  # the cache actor or its object is gone: build it here, same numbers
        ds = cached_dataset(desc_json, device)
    _WORKER_DATASETS[key] = ds
    while len(_WORKER_DATASETS) > 4:  # as many as the local per-process cache keeps
        _WORKER_DATASETS.popitem(last=False)
    return ds


def _versions() -> dict:
    import torch

    from dlscope.train.engine import ENGINE_VERSION

    return {"engine": ENGINE_VERSION, "torch": torch.__version__.split("+")[0]}


def _run_task(specs: Task, cache, driver_versions: dict, factory_path: str | None = None
              ) -> tuple[list[RunResult], dict]:
    """Body of one Ray task: run `specs` in this worker with one torch thread per CPU.

    `factory_path`: the driver's DLSCOPE_FACTORY_PATH (its working folder), where user model
    factories are imported from on this worker too."""
    import ray
    import torch

    if factory_path:
        os.environ[FACTORY_PATH_ENV] = factory_path

    where = {"node_id": ray.get_runtime_context().get_node_id(), "host": socket.gethostname(),
             "pid": os.getpid()}
    mine = _versions()
    if mine != driver_versions:
        raise RuntimeError(f"worker on {where['host']} runs {mine}, the driver {driver_versions}: "
                           f"install the same dlscope and torch on every node")
    threads = specs[0].threads
    configure_openmp(threads)  # reaches libgomp only if this worker has not loaded torch yet
    torch.set_num_threads(threads)
    if specs[0].device.startswith("cuda"):  # Ray exposes the one GPU it assigned as cuda:0
        specs = [dataclasses.replace(s, device="cuda") for s in specs]

    def context(device, threads):
        return RayRunContext(device=device, threads=threads, cache=cache, module=specs[0].fn)

    return execute(specs, context=context), where


class _DatasetCache:
    """Builds each distinct dataset once, on CPU, and keeps it in the object store.

    One per driver (a named actor, found again by the next experiment of `run all`), so
    MNIST is built once per session; the least recently asked-for objects beyond KEEP are
    dropped (workers keep their own copies)."""

    KEEP = 8

    def __init__(self):
        self._refs: OrderedDict[str, Any] = OrderedDict()
        self._stats: dict[str, dict] = {}
        self._locks: dict[str, threading.Lock] = {}
        self._guard = threading.Lock()

    def get(self, desc_json: str, module: str | None = None) -> list:
        import importlib

        import ray

        from dlscope.contract.runspec import build_dataset

        with self._guard:
            lock = self._locks.setdefault(desc_json, threading.Lock())
            stats = self._stats.setdefault(desc_json, {"builds": 0, "requests": 0})
            stats["requests"] += 1
        with lock:  # two runs asking at once: the second waits for the first's build
            if desc_json not in self._refs:
                if module:  # an outside experiment registers its own dataset kinds on import
                    importlib.import_module(module)
                # the uncached builder: the object store holds the only copy
                self._refs[desc_json] = ray.put(build_dataset(desc_json, "cpu"))
                stats["builds"] += 1
            with self._guard:
                self._refs.move_to_end(desc_json)
                ref = self._refs[desc_json]
                while len(self._refs) > self.KEEP:
                    self._refs.popitem(last=False)
        return [ref]  # in a list: the caller gets the ref, not the data

    def stats(self) -> dict[str, dict]:
        """desc json -> {"builds": how often built, "requests": how often asked for}."""
        return {k: dict(v) for k, v in self._stats.items()}


def _cause(exc):
    """The run's own exception inside a RayTaskError (so failures read as they do locally)."""
    cause = getattr(exc, "cause", None)
    return cause if isinstance(cause, BaseException) else exc


# ---------------------------------------------------------------- driver side

def _check_reachable(address: str, what: str) -> None:
    """Fail in seconds, not minutes, when nothing listens at host:port."""
    if address in ("auto", "local") or ("://" in address and not address.startswith("ray://")):
        return
    hostport = address.removeprefix("ray://")
    host, sep, port = hostport.rpartition(":")
    if not sep or not port.isdigit():
        return  # let ray.init judge it
    try:
        socket.create_connection((host, int(port)), timeout=CONNECT_TIMEOUT_S).close()
    except OSError as exc:
        raise UserError(f"{what}: no Ray cluster answers there ({exc})") from None


def _init(ray, workers: int | None, address: str | None) -> None:
    quiet = {"log_to_driver": False, "logging_level": "ERROR"}
    if not address and os.environ.get("RAY_ADDRESS"):
        address, what = os.environ["RAY_ADDRESS"], f"RAY_ADDRESS={os.environ['RAY_ADDRESS']}"
    else:
        what = f"--ray-address {address}"
    if address:
        _check_reachable(address, what)
        try:
            ray.init(address=address, **quiet)
        except (ConnectionError, ValueError, RuntimeError) as exc:
            raise UserError(f"{what}: {exc}") from None
    else:
        ray.init(address="local", num_cpus=workers or max(1, os.cpu_count() or 1),
                 include_dashboard=False, **quiet)


class RayExecutor:
    """Run tasks as Ray tasks. Reuses a Ray connection this process already has (notebook,
    tests); otherwise connects to `address` / $RAY_ADDRESS, or starts a local instance. The
    connection is left open for the next experiment (`run all`); Ray closes it at exit."""

    name = "ray"

    def __init__(self, workers: int | None = None, address: str | None = None,
                 max_retries: int | None = None):
        ray = _import_ray()
        if not ray.is_initialized():
            _init(ray, workers, address)
        self.max_retries = MAX_RETRIES if max_retries is None else max_retries
        self.workers = workers or max(1, int(ray.cluster_resources().get("CPU", 1)))
        self.placements: list[dict] = []  # per finished run: key, hash, node_id, host, pid
        self.shared_datasets: dict[str, dict] = {}  # desc json -> builds, requests (session)

    def _check_feasible(self, ray, tasks: list[Task]) -> None:
        """A task no node can hold would wait forever: say so instead."""
        nodes = [n["Resources"] for n in ray.nodes() if n.get("Alive")]
        cpus = max((r.get("CPU", 0) for r in nodes), default=0)
        need = max(t[0].threads for t in tasks)
        if need > cpus:
            raise UserError(f"--threads {need}: no node of the Ray cluster has {need} CPUs "
                            f"(the largest has {cpus:g}); use --threads {max(1, int(cpus))}")
        if any(t[0].device.startswith("cuda") for t in tasks) and \
                not any(r.get("GPU", 0) >= 1 for r in nodes):
            raise UserError("--device cuda: the Ray cluster has no GPU")

    def map(self, tasks: list[Task]) -> Iterator[tuple[Task, list[RunResult] | BaseException]]:
        if not tasks:
            return
        ray = _import_ray()
        from ray.exceptions import RayError, RayTaskError
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        self._check_feasible(ray, tasks)
        try:  # the dataset actor lives on the driver's node, where the data cache is
            place = {"scheduling_strategy": NodeAffinitySchedulingStrategy(
                ray.get_runtime_context().get_node_id(), soft=True)}
        except Exception:  # a driver that is not a node (ray:// client): anywhere  # noqa: BLE001
            place = {}
        cache = ray.remote(_DatasetCache).options(
            name="dlscope-datasets", get_if_exists=True, num_cpus=0, max_concurrency=8,
            **place).remote()
        remote = ray.remote(_run_task)
        versions = _versions()
        pending: dict = {}
        try:
            for task in tasks:
                s = task[0]
                ref = remote.options(
                    num_cpus=s.threads, num_gpus=1 if s.device.startswith("cuda") else 0,
                    max_retries=self.max_retries, retry_exceptions=False,
                    name=f"dlscope {s.experiment} {s.key}").remote(
                        task, cache, versions, os.environ.get(FACTORY_PATH_ENV))
                pending[ref] = task
            while pending:
                done, _ = ray.wait(list(pending), num_returns=1)
                for ref in done:
                    task = pending.pop(ref)
                    try:
                        results, where = ray.get(ref)
                    except RayTaskError as exc:  # the run raised: reported at once
                        yield task, _cause(exc)
                        continue
                    except RayError as exc:  # worker/node died more often than max_retries
                        yield task, exc
                        continue
                    self.placements += [{"key": s.key, "hash": s.hash, **where} for s in task]
                    yield task, results
            try:
                self.shared_datasets = ray.get(cache.stats.remote(), timeout=30)
            except RayError:
                pass
        finally:
            for ref in pending:  # interrupted: stop what is still queued or running
                ray.cancel(ref, force=True)
