"""Scheduling figures for `run all`: each task's expected seconds (longest first) and the
core utilization of a sweep, from the timing every run records (RunResult.timing, stored as
timing.json).

Expected seconds come from a cost model read from the spec,

    seconds(run) = steps x STEP_S + 6 x epochs x training examples x parameters / FLOP_RATE

(steps = epochs x batches per epoch; 6 floating-point operations per parameter and example for
a forward and backward pass; STEP_S the fixed cost of one optimizer step, FLOP_RATE one core's
throughput: rough one-core figures of the bench), scaled per experiment by how long its runs
took before: the median of (measured seconds / model seconds) over the timed runs already in
its results folder (a resumed, `--force`d or re-versioned sweep), 1 when there are none.
A task (an ensemble of runs trained together) costs the sum of its runs.

Why a model and not only the `wall_s` of earlier runs: a run still to compute has, by its
hash, no timing in the folder, and a fresh folder has none at all; the model needs no history
and treats a plugin and a changed config alike. What it misses: work besides training (a
Hessian spectrum, probes), early stopping, evaluation passes, and a CNN's convolutions (its
parameter count understates them). It only orders tasks, so an error matters only where it
makes a long task start late; the calibration from timed runs corrects it per experiment.

Utilization: busy core-seconds (over the tasks computed, end - start times their torch
threads, an ensemble counted once) / (cores x wall seconds), cores being the pool's slots
(workers x threads per run).
"""

from __future__ import annotations

from collections.abc import Iterable

from dlscope import models

IMAGE_TRAIN_SIZES = {"mnist": 60000, "cifar10": 50000}  # the kinds' full training sets
DEFAULT_EXAMPLES = 1000  # a data description that names no size (a plugin's own kind)
DEFAULT_PARAMS = 1000  # no model description, or one that cannot be counted
STEP_S = 3e-4  # seconds of fixed cost per optimizer step (small nets: kernel launches)
FLOP_RATE = 1e10  # floating-point operations per second of one core


def _number(value) -> float | None:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0
    return float(value) if ok else None


def _real(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _examples(params: dict, data) -> float:
    if isinstance(data, dict):
        for key in ("n_train", "train_subset"):
            n = _number(data.get(key))
            if n is not None:
                return n
        if data.get("kind") in IMAGE_TRAIN_SIZES:
            return float(IMAGE_TRAIN_SIZES[data["kind"]])
    return _number(params.get("n_train")) or DEFAULT_EXAMPLES


def _epochs(params: dict) -> float:
    train = params.get("train") if isinstance(params.get("train"), dict) else {}
    for value in (train.get("epochs"), params.get("epochs"), train.get("max_steps"),
                  params.get("max_steps")):
        n = _number(value)
        if n is not None:
            return n
    return 1.0


def _parameters(model) -> float:
    if model is None:
        return DEFAULT_PARAMS
    try:
        return float(models.count_params(model))
    except Exception:  # noqa: BLE001 - not a model we can count: the default
        return DEFAULT_PARAMS


def _batches(params: dict, examples: float) -> float:
    train = params.get("train") if isinstance(params.get("train"), dict) else {}
    batch = _number(train.get("batch_size")) or _number(params.get("batch_size"))
    return 1.0 if batch is None else -(-examples // batch)


def expected_cost(spec) -> float:
    """The cost model of one run in rough seconds (see the module): steps x STEP_S plus
    6 x epochs x examples x parameters / FLOP_RATE.

    Args:
        spec: a RunSpec (its params' `train.epochs` / `epochs` and `batch_size`, its data's
            `n_train` / `train_subset` / the image kind's training set, its params' `model`).

    Returns:
        Expected seconds, uncalibrated: good for ordering runs, not a forecast.

    >>> from dlscope.contract.runspec import RunSpec
    >>> s = RunSpec("e", "k", "m", {"train": {"epochs": 10, "batch_size": None},
    ...             "model": "mlp:1-4-1"}, data={"kind": "function", "n_train": 100})
    >>> round(expected_cost(s), 9)  # 10 full-batch steps; 10 x 100 x 13 parameters
    0.0030078
    """
    params = spec.params if isinstance(spec.params, dict) else {}
    epochs, examples = _epochs(params), _examples(params, spec.data)
    flops = 6 * epochs * examples * _parameters(params.get("model"))
    return epochs * _batches(params, examples) * STEP_S + flops / FLOP_RATE


def calibration(timed: Iterable[tuple]) -> float:
    """Median of measured / modelled seconds over (spec, timing) pairs of earlier runs of one
    experiment; 1.0 when none is usable.

    >>> from dlscope.contract.runspec import RunSpec
    >>> s = RunSpec("e", "k", "m", {"train": {"epochs": 10, "batch_size": None}},
    ...             data={"n_train": 100})
    >>> calibration([(s, {"start": 0.0, "end": 10 * expected_cost(s), "runs_in_task": 1})])
    10.0
    """
    import statistics

    ratios = []
    for spec, t in timed:
        if not isinstance(t, dict) or not (_real(t.get("start")) and _real(t.get("end"))):
            continue
        try:
            took = (float(t["end"]) - float(t["start"])) / max(1, int(t.get("runs_in_task", 1)))
            model = expected_cost(spec)
        except (KeyError, TypeError, ValueError):
            continue
        if took > 0 and model > 0:
            ratios.append(took / model)
    return float(statistics.median(ratios)) if ratios else 1.0


def longest_first(tasks: list, cost=expected_cost) -> list:
    """The tasks (lists of specs) sorted by expected cost, largest first (stable).

    >>> longest_first([[2], [5, 1], [3]], cost=float)
    [[5, 1], [3], [2]]
    """
    return sorted(tasks, key=lambda task: -sum(cost(s) for s in task))


def _distinct(timings: Iterable[dict | None]) -> list[dict]:
    """One record per task: the runs of an ensemble share their task's start and end."""
    seen, out = set(), []
    for t in timings:
        if not isinstance(t, dict) or not (_real(t.get("start")) and _real(t.get("end"))):
            continue
        key = (t.get("host"), t.get("pid"), t["start"], t["end"])
        if key not in seen:
            seen.add(key)
            out.append(t)
    return out


def busy_core_seconds(timings: Iterable[dict | None]) -> float:
    """Sum over tasks of (end - start) x threads (an ensemble's runs counted once).

    >>> busy_core_seconds([{"start": 0, "end": 2, "threads": 1, "pid": 1},
    ...                    {"start": 0, "end": 2, "threads": 1, "pid": 1},
    ...                    {"start": 1, "end": 4, "threads": 2, "pid": 2}])
    8.0
    """
    return float(sum((t["end"] - t["start"]) * (_number(t.get("threads")) or 1)
                     for t in _distinct(timings)))


def core_utilization(timings: Iterable[dict | None], cores: int, wall_s: float) -> float | None:
    """Busy core-seconds / (cores x wall seconds); None when there is nothing to divide by.

    Args:
        timings: RunResult.timing records of the runs computed in the sweep.
        cores: the pool's slots (workers x threads per run).
        wall_s: the sweep's wall time in seconds.

    >>> core_utilization([{"start": 0, "end": 10, "threads": 1, "pid": 1},
    ...                   {"start": 0, "end": 5, "threads": 1, "pid": 2}], cores=2, wall_s=10)
    0.75
    """
    if not cores or not wall_s or wall_s <= 0:
        return None
    return busy_core_seconds(timings) / (cores * wall_s)
