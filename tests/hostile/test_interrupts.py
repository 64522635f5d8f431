"""Interrupts (issues 15, 26): kill -9 at seeded random moments of a small sweep, then a
rerun whose tables equal an uninterrupted run's byte for byte apart from timing columns;
worker processes die with the main process; the process executor from a stdin script."""

from __future__ import annotations

import csv
import io
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from hostile_util import TIMING_COLUMNS, clean_env, run_dirs

# 8 runs of 300 epochs on 32 points: ~0.1-0.5 s each, long enough to be killed inside
SWEEP = ["run", "function-fit", "--profile", "quick", "--set", "functions=['sinc','sin-log']",
         "--set", "depths=[1,2]", "--set", "epochs=300", "--set", "converge_window=5000",
         "--set", "n_train=32", "--set", "seeds=2", "--executor", "local", "--threads", "1"]
N_RUNS = 8


def tables(root: Path) -> dict[str, list[list[str]]]:
    """Every CSV of a results folder, as text cells, timing columns removed."""
    out = {}
    for path in sorted(root.glob("*.csv")):
        rows = list(csv.reader(io.StringIO(path.read_text())))
        keep = [i for i, c in enumerate(rows[0]) if c not in TIMING_COLUMNS]
        out[path.name] = [[r[i] for i in keep] for r in rows]
    return out


@pytest.fixture(scope="module")
def reference(tmp_path_factory, cli):
    out = tmp_path_factory.mktemp("ref") / "O"
    code, _, err = cli(*SWEEP, "--out", out, timeout=300)
    assert code == 0, err
    found = tables(out / "function-fit")
    assert {"results.csv", "curves.csv", "predictions.csv"} <= set(found)
    assert "wall_s" in (out / "function-fit" / "results.csv").read_text().splitlines()[0]
    return found


def kill_at_random_moment(out: Path, seed: int) -> int:
    """Start the sweep, kill -9 it after a seeded number of finished runs plus a seeded
    delay (so inside a run, or between writes); the number of runs finished before."""
    rng = np.random.default_rng(seed)
    after, delay = int(rng.integers(0, N_RUNS - 1)), float(rng.uniform(0.0, 0.4))
    proc = subprocess.Popen([sys.executable, "-m", "dlscope.cli", *SWEEP, "--out", str(out)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env=clean_env())
    runs = out / "function-fit"
    t0 = time.time()
    try:
        while len(run_dirs(runs)) < after and proc.poll() is None:
            assert time.time() - t0 < 240, "the sweep never got going"
            time.sleep(0.02)
        time.sleep(delay)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait(timeout=30)
    return len(run_dirs(runs))


def resume_equals_reference(cli, out: Path, reference) -> None:
    code, _, err = cli(*SWEEP, "--out", out, timeout=300)
    assert code == 0 and "Traceback" not in err, err
    root = out / "function-fit"
    assert tables(root) == reference
    assert len(run_dirs(root)) == N_RUNS
    assert not list((root / "runs").glob(".*")) and not list(root.glob(".*.tmp"))
    assert not (root / "quarantine").exists() or not list((root / "quarantine").iterdir())


@pytest.mark.parametrize("seed", [
    0, *(pytest.param(s, marks=pytest.mark.slow) for s in range(1, 8))])
def test_kill_9_then_rerun_equals_an_uninterrupted_run(cli, tmp_path, reference, seed):
    out = tmp_path / "O"
    kill_at_random_moment(out, seed)
    resume_equals_reference(cli, out, reference)


@pytest.mark.slow
def test_kill_9_twice_then_rerun(cli, tmp_path, reference):
    out = tmp_path / "O"
    kill_at_random_moment(out, 11)
    kill_at_random_moment(out, 12)
    resume_equals_reference(cli, out, reference)


# ------------------------------------------------------------ worker processes


def _children(pid: int) -> list[int]:
    kids = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                stat = (d / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                kids.append(int(d.name))
    return kids


def _has_torch(pid: int) -> bool:
    """A pool worker past its initializer (which ties it to its parent, then loads torch)."""
    try:
        return ("multiprocessing" in Path(f"/proc/{pid}/cmdline").read_text()
                and "libtorch" in Path(f"/proc/{pid}/maps").read_text())
    except OSError:
        return False


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
@pytest.mark.parametrize("sig", [signal.SIGKILL,
                                 pytest.param(signal.SIGTERM, marks=pytest.mark.slow)])
def test_workers_die_with_the_main_process(tmp_path, sig):
    args = ["run", "function-fit", "--profile", "quick", "--set", "functions=['sinc']",
            "--set", "depths=[1,2]", "--set", "epochs=500000", "--set", "converge_window=500000",
            "--set", "n_train=64", "--executor", "process", "--workers", "2", "--threads", "1",
            "--out", str(tmp_path / "O")]
    proc = subprocess.Popen([sys.executable, "-m", "dlscope.cli", *args],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=clean_env())
    try:
        t0 = time.time()
        workers: list[int] = []
        while len(workers) < 2:  # two pool workers running (the resource tracker is a child too)
            assert proc.poll() is None and time.time() - t0 < 240, "pool never started"
            workers = [k for k in _children(proc.pid) if _has_torch(k)]
            time.sleep(0.2)
        everyone = _children(proc.pid)
        os.kill(proc.pid, sig)
        proc.wait(timeout=30)
        t0 = time.time()
        while any(_alive(k) for k in everyone) and time.time() - t0 < 10:
            time.sleep(0.2)
        assert not [k for k in everyone if _alive(k)], "orphaned workers"
    finally:
        if proc.poll() is None:
            proc.kill()


def test_process_executor_from_a_stdin_script(tmp_path):
    """`__main__` cannot be re-imported (a script on stdin): the workers still start."""
    script = (f"import dlscope\nr = dlscope.run('function-fit', profile='quick', "
              f"out={str(tmp_path / 'O')!r}, executor='process', workers=2, threads=1, "
              "functions=['sinc'], depths=[1, 2], epochs=1, n_train=8, seeds=1)\n"
              "print(r.summary['computed'], len(r.summary['failed']))\n")
    p = subprocess.run([sys.executable, "-"], input=script, capture_output=True, text=True,
                       timeout=300, cwd=tmp_path, env=clean_env())
    assert p.returncode == 0, p.stderr
    assert p.stdout.split() == ["2", "0"]
