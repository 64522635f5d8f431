"""A sweep interrupted by Ctrl-C or kill -9 resumes without recomputing finished runs."""

import os
import signal
import subprocess
import sys
import time

import dlscope
from dlscope.contract.runspec import RunResult, RunSpec
from dlscope.execution.store import Store

ARGS = ["--profile", "quick", "--set", "epochs=1000", "--set", "converge_window=5000",
        "--set", "functions=['sinc','sin-log']", "--set", "seeds=1",
        "--executor", "local", "--threads", "1"]


def finished(runs_dir):
    return sorted(p for p in runs_dir.glob("*") if not p.name.startswith(".")) \
        if runs_dir.exists() else []


# The command as a terminal starts it: a shell without job control (CI's, or `cmd &` in a
# script) starts background commands with SIGINT ignored, and an ignored SIGINT stays ignored
# in every child, so Ctrl-C never arrived and the sweep ran to its end (exit 0).
AS_FROM_A_TERMINAL = ("import runpy, signal, sys; "
                      "signal.signal(signal.SIGINT, signal.default_int_handler); "
                      "sys.argv[0] = 'dlscope'; runpy.run_module('dlscope.cli', run_name='__main__')")


def start(out):
    return subprocess.Popen([sys.executable, "-c", AS_FROM_A_TERMINAL, "run", "function-fit",
                             *ARGS, "--out", str(out)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def wait_for(runs_dir, n, proc, timeout=120):
    t0 = time.time()
    while len(finished(runs_dir)) < n:
        assert proc.poll() is None, proc.communicate()
        assert time.time() - t0 < timeout, "no run finished in time"
        time.sleep(0.1)


def test_interrupted_sweep_resumes(tmp_path):
    out = tmp_path / "out"
    runs_dir = out / "function-fit" / "runs"
    proc = start(out)
    wait_for(runs_dir, 1, proc)
    proc.send_signal(signal.SIGINT)  # Ctrl-C
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130 and "finished runs are kept" in err, (
        f"exit {proc.returncode}; SIGINT here: {signal.getsignal(signal.SIGINT)}, blocked: "
        f"{signal.pthread_sigmask(signal.SIG_BLOCK, [])}; child's stderr: {err[-1500:]}")
    first = {p.name: (p / "result.json").stat().st_mtime_ns for p in finished(runs_dir)}
    assert first

    proc = start(out)
    wait_for(runs_dir, len(first) + 1, proc)
    os.kill(proc.pid, signal.SIGKILL)  # kill -9: no chance to clean up
    proc.communicate(timeout=30)
    kept = finished(runs_dir)
    assert len(kept) > len(first)
    assert not (out / "function-fit" / "summary.json").exists()

    settings = {"profile": "quick", "epochs": 1000, "converge_window": 5000,
                "functions": ["sinc", "sin-log"], "executor": "local", "threads": 1, "seeds": 1}
    r = dlscope.run("function-fit", out=out, **settings)
    assert r.summary["reused"] == len(kept)
    assert r.summary["runs"] == 6 and r.summary["computed"] == 6 - len(kept)
    for name, mtime in first.items():  # never rewritten
        assert (runs_dir / name / "result.json").stat().st_mtime_ns == mtime
    assert not list(runs_dir.glob(".tmp-*"))

    again = dlscope.run("function-fit", out=out, **settings)
    assert again.summary["reused"] == 6 and again.summary["computed"] == 0
    assert again.tables["results"].equals(r.tables["results"])


def test_store_ignores_half_written_and_corrupt_runs(tmp_path):
    store = Store(tmp_path)
    spec = RunSpec("x", "k", "m:f", {"a": 1})
    assert store.load(spec) is None
    store.save(spec, RunResult({"status": "ok", "v": 1.5}, {"w": __import__("numpy").ones(3)}))
    got = store.load(spec)
    assert got.values["v"] == 1.5 and got.arrays["w"].sum() == 3
    (store.run_dir(spec) / "result.json").write_text("{trunc")
    assert store.load(spec) is None  # unreadable -> recomputed, never trusted
    (store.runs / ".tmp-dead-1234").mkdir()
    store.clean_temp()
    assert not (store.runs / ".tmp-dead-1234").exists()


def test_hash_covers_what_changes_numbers():
    base = RunSpec("x", "k", "m:f", {"seed": 0, "lr": 1e-3}, device="cpu", threads=1)
    same = RunSpec("x", "other label", "m:f", {"lr": 1e-3, "seed": 0}, device="cpu", threads=1)
    assert base.hash == same.hash
    for other in (RunSpec("x", "k", "m:f", {"seed": 1, "lr": 1e-3}, threads=1),
                  RunSpec("x", "k", "m:f", {"seed": 0, "lr": 1e-3}, threads=2),
                  RunSpec("x", "k", "m:f", {"seed": 0, "lr": 1e-3}, device="cuda", threads=1),
                  RunSpec("x", "k", "m:g", {"seed": 0, "lr": 1e-3}, threads=1)):
        assert other.hash != base.hash
