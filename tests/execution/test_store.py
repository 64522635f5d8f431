"""The results store (dlscope.execution.store): exact round trips without pickle, checksums
that catch a flipped byte (quarantined, never served), the first of two saves of one run
kept unless replace, and half-written temporary folders ignored and cleaned."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import time

import numpy as np
import pytest

from dlscope.contract.runspec import RunResult, RunSpec
from dlscope.execution import store as store_mod
from dlscope.execution.store import Store

SPEC = RunSpec("toy", "seed=0", "mypkg.exp", {"seed": 0, "lr": 0.01})
ARRAYS = {
    "w": np.array([[0.1, -0.0, np.nan], [np.inf, -np.inf, 5e-324]], dtype=np.float64),
    "f32": (np.arange(7, dtype=np.float32) / 3).astype(np.float32),
    "i8": np.array([-128, 0, 127], dtype=np.int8),
    "u64": np.array([2**64 - 1, 0], dtype=np.uint64),
    "mask": np.array([True, False, True]),
    "empty": np.zeros((0, 3), dtype=np.float32),
    "scalar": np.array(2.5),
}
VALUES = {"status": "ok", "loss": 0.125, "nan": float("nan"), "inf": float("inf"),
          "np_float32": np.float32(0.1), "np_int": np.int64(-3), "np_bool": np.bool_(True),
          "nested": {"list": [1, 2.5, "é"], "tuple": (1, 2)}, "none": None}


def files_of(d):
    return sorted(p.name for p in d.iterdir())


def sha256(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def finished_runs(store: Store) -> list[str]:
    """What readers of a results folder count as finished runs (report/collect.py)."""
    return sorted(p.name for p in store.runs.iterdir() if p.is_dir() and not p.name.startswith("."))


# -- round trip ----------------------------------------------------------------------------

def test_save_then_load_round_trips_values_and_arrays_exactly(tmp_path):
    store = Store(tmp_path / "exp")
    assert store.load(SPEC) is None  # nothing yet
    store.save(SPEC, RunResult(VALUES, ARRAYS))
    d = store.run_dir(SPEC)
    assert d == tmp_path / "exp" / "runs" / SPEC.hash
    assert files_of(d) == ["arrays.npz", "checksums.json", "result.json", "spec.json"]
    assert finished_runs(store) == [SPEC.hash]

    got = store.load(SPEC)
    assert sorted(got.arrays) == sorted(ARRAYS)
    for name, a in ARRAYS.items():  # bit for bit: dtype, shape, bytes (NaN, -0.0, subnormal)
        b = got.arrays[name]
        assert (b.dtype, b.shape, b.tobytes()) == (a.dtype, a.shape, a.tobytes()), name
    v = got.values
    assert np.isnan(v.pop("nan")) and v.pop("inf") == float("inf")
    assert v == {"status": "ok", "loss": 0.125, "np_float32": float(np.float32(0.1)),
                 "np_int": -3, "np_bool": True,
                 "nested": {"list": [1, 2.5, "é"], "tuple": [1, 2]}, "none": None}
    assert type(v["np_int"]) is int and type(v["np_float32"]) is float

    # the files, read without dlscope: plain JSON, an .npz that needs no pickle
    assert json.loads((d / "spec.json").read_text()) == json.loads(json.dumps(SPEC.to_json()))
    with np.load(d / "arrays.npz", allow_pickle=False) as z:
        assert sorted(z.files) == sorted(ARRAYS)
        assert z["u64"].tobytes() == ARRAYS["u64"].tobytes()
    sums = json.loads((d / "checksums.json").read_text())
    assert sums == {name: sha256(d / name) for name in ("arrays.npz", "result.json", "spec.json")}


def test_a_run_without_arrays_has_no_npz(tmp_path):
    store = Store(tmp_path)
    store.save(SPEC, RunResult({"status": "converged", "epochs": 12}))
    assert files_of(store.run_dir(SPEC)) == ["checksums.json", "result.json", "spec.json"]
    got = store.load(SPEC)
    assert got.values == {"status": "converged", "epochs": 12} and got.arrays == {}
    assert got.status == "converged"


def test_runs_are_kept_by_hash(tmp_path):
    store = Store(tmp_path)
    other = RunSpec("toy", "seed=1", "mypkg.exp", {"seed": 1, "lr": 0.01})
    relabelled = RunSpec("toy", "another label", "mypkg.exp", {"lr": 0.01, "seed": 0})
    store.save(SPEC, RunResult({"seed": 0}))
    store.save(other, RunResult({"seed": 1}))
    assert finished_runs(store) == sorted([SPEC.hash, other.hash])
    assert store.load(other).values == {"seed": 1}
    assert store.load(relabelled).values == {"seed": 0}  # same hash: the same run


# -- damage: quarantined and recomputed, never served -------------------------------------

@pytest.mark.parametrize("victim", ["result.json", "arrays.npz", "spec.json", "checksums.json"])
def test_a_flipped_byte_is_quarantined_not_served(tmp_path, victim):
    logged = []
    store = Store(tmp_path, log=logged.append)
    store.save(SPEC, RunResult({"status": "ok", "loss": 0.125}, {"w": np.arange(50.0)}))
    f = store.run_dir(SPEC) / victim
    data = bytearray(f.read_bytes())
    data[len(data) // 2] ^= 0x01
    f.write_bytes(bytes(data))
    damaged = bytes(data)

    assert store.load(SPEC) is None
    assert not store.run_dir(SPEC).exists()
    [moved] = list(store.quarantine_dir.iterdir())
    assert moved.name.startswith(SPEC.hash + "-")
    assert (moved / victim).read_bytes() == damaged  # kept for inspection, unchanged
    assert len(logged) == 1 and f"run seed=0 ({SPEC.hash}) is damaged" in logged[0]
    assert "recomputing it" in logged[0] and str(moved) in logged[0]
    if victim != "checksums.json":
        assert f"{victim} does not match its checksum" in logged[0]

    # the caller recomputes and saves: the fresh run is served
    store.save(SPEC, RunResult({"status": "ok", "loss": 0.25}))
    assert store.load(SPEC).values == {"status": "ok", "loss": 0.25}


@pytest.mark.parametrize("damage, why", [
    (lambda d: (d / "checksums.json").unlink(), "no checksums.json"),
    (lambda d: (d / "extra.txt").write_text("x"), "not written by dlscope: ['extra.txt']"),
    (lambda d: (d / "arrays.npz").unlink(), "missing: ['arrays.npz']"),
])
def test_an_incomplete_or_added_to_run_is_quarantined(tmp_path, damage, why):
    logged = []
    store = Store(tmp_path, log=logged.append)
    store.save(SPEC, RunResult({"status": "ok"}, {"w": np.ones(3)}))
    damage(store.run_dir(SPEC))
    assert store.load(SPEC) is None
    assert len(logged) == 1 and why in logged[0], logged
    assert len(list(store.quarantine_dir.iterdir())) == 1


def test_a_pickled_array_is_never_loaded(tmp_path):
    """An .npz holding an object array (which only pickle can read) whose checksum matches:
    np.load without pickle refuses it, so the run is quarantined, not unpickled."""
    store = Store(tmp_path)
    store.save(SPEC, RunResult({"status": "ok"}, {"w": np.ones(2)}))
    d = store.run_dir(SPEC)
    np.savez(d / "arrays.npz", w=np.array([{"evil": 1}], dtype=object))
    sums = json.loads((d / "checksums.json").read_text())
    sums["arrays.npz"] = sha256(d / "arrays.npz")
    (d / "checksums.json").write_text(json.dumps(sums))
    assert store.load(SPEC) is None
    assert len(list(store.quarantine_dir.iterdir())) == 1


# -- two saves of one run ------------------------------------------------------------------

def test_a_second_save_keeps_the_first_unless_replace(tmp_path):
    store = Store(tmp_path)
    store.save(SPEC, RunResult({"n": 1}))
    mtime = (store.run_dir(SPEC) / "result.json").stat().st_mtime_ns
    store.save(SPEC, RunResult({"n": 2}))
    assert store.load(SPEC).values == {"n": 1}
    assert (store.run_dir(SPEC) / "result.json").stat().st_mtime_ns == mtime
    store.save(SPEC, RunResult({"n": 3}), replace=True)  # --force
    assert store.load(SPEC).values == {"n": 3}
    assert [p.name for p in store.runs.iterdir()] == [SPEC.hash]  # no .tmp-/.old- left


def test_a_concurrent_save_that_renames_first_wins(tmp_path, monkeypatch):
    """Another process finishes the same run between this save's check and its rename:
    its copy stands, this one is discarded without an error and without leftovers."""
    store = Store(tmp_path)
    final = store.run_dir(SPEC)
    real_rename = os.rename
    raced = []

    def rename(src, dst):
        if os.fspath(dst) == os.fspath(final) and not raced:
            raced.append(src)
            Store(tmp_path).save(SPEC, RunResult({"by": "the other process"}))
        return real_rename(src, dst)

    monkeypatch.setattr(store_mod.os, "rename", rename)
    store.save(SPEC, RunResult({"by": "this process"}))
    monkeypatch.undo()
    assert raced  # the race really happened
    assert store.load(SPEC).values == {"by": "the other process"}
    assert [p.name for p in store.runs.iterdir()] == [SPEC.hash]


def test_a_folder_without_checksums_is_replaced_by_a_save(tmp_path):
    store = Store(tmp_path)
    store.run_dir(SPEC).mkdir(parents=True)
    (store.run_dir(SPEC) / "result.json").write_text('{"stale": true}')  # an unfinished one
    store.save(SPEC, RunResult({"fresh": True}))
    assert store.load(SPEC).values == {"fresh": True}


# -- temporary folders -----------------------------------------------------------------------

def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_half_written_folders_are_ignored_and_cleaned(tmp_path):
    store = Store(tmp_path)
    store.save(SPEC, RunResult({"n": 1}))
    gone = dead_pid()
    mine = os.getpid()  # a live process (another save in progress)
    names = {
        "dead_tmp": f".tmp-{SPEC.hash}-{gone}-0123abcd",
        "dead_old": f".old-{SPEC.hash}-{gone}-0123abcd",
        "live_tmp": f".tmp-{SPEC.hash}-{mine}-0123abcd",
        "live_old": f".old-{SPEC.hash}-{mine}-4567abcd",
        "live_but_stale": f".tmp-{SPEC.hash}-{mine}-89abcdef",
        "no_pid": ".tmp-dead-1234",
    }
    for name in names.values():
        (store.runs / name).mkdir()
        (store.runs / name / "result.json").write_text('{"n": "half"}')
    day_ago = time.time() - 2 * 24 * 3600
    os.utime(store.runs / names["live_but_stale"], (day_ago, day_ago))

    assert finished_runs(store) == [SPEC.hash]  # never counted as runs
    assert store.load(SPEC).values == {"n": 1}  # never read
    store.clean_temp()
    left = sorted(p.name for p in store.runs.iterdir())
    assert left == sorted([SPEC.hash, names["live_tmp"], names["live_old"]])
    store.clean_temp(max_age_s=0)  # everything older than now goes, live or not
    assert [p.name for p in store.runs.iterdir()] == [SPEC.hash]


def test_clean_temp_leaves_a_save_in_progress_alone(tmp_path):
    """A save in another live process: its temporary folder survives clean_temp, and that
    save completes."""
    store = Store(tmp_path)
    other = Store(tmp_path)
    real_mkdir = type(store.runs).mkdir
    called = []

    def cleaning_meanwhile(path, *args, **kwargs):
        real_mkdir(path, *args, **kwargs)
        if path.name.startswith(".tmp-") and not called:
            called.append(path.name)
            other.clean_temp()  # e.g. another `dlscope run` starting on the same folder

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(type(store.runs), "mkdir", cleaning_meanwhile)
        store.save(SPEC, RunResult({"n": 1}, {"w": np.ones(2)}))
    assert called and called[0].split("-")[2] == str(os.getpid())
    assert store.load(SPEC).values == {"n": 1}


def test_clean_temp_on_an_empty_store(tmp_path):
    store = Store(tmp_path / "never-written")
    store.clean_temp()
    assert not (tmp_path / "never-written").exists()
