"""A disk that fills during a run: the command fails in one line (exit 1), the folder has no
summary.json (reads as incomplete, `dlscope.load` refuses it), and the next run with space
reuses the stored runs and writes tables equal to an uninterrupted run's."""

from __future__ import annotations

import errno

import pandas as pd
import pytest

import dlscope
from dlscope.driver.runner import OutputFailed
from dlscope.errors import UserError
from dlscope.execution import store as store_mod

TINY = {"functions": ["sinc"], "depths": [1, 2], "epochs": 40, "n_train": 32, "seeds": 2,
        "param_budget": 40, "converge_window": 20}


def _run(out):
    return dlscope.run("function-fit", profile="quick", out=out, executor="local", threads=1,
                       progress=False, **TINY)


def _tables(path):
    return {p.name: pd.read_csv(p) for p in sorted(path.glob("*.csv"))}


def _count_writes(monkeypatch, out) -> int:
    calls = []
    real = store_mod.atomic_write_bytes
    monkeypatch.setattr(store_mod, "atomic_write_bytes", lambda p, d: (calls.append(p),
                                                                       real(p, d))[1])
    _run(out)
    monkeypatch.setattr(store_mod, "atomic_write_bytes", real)
    return len(calls)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    out = tmp_path_factory.mktemp("ref")
    return _tables(_run(out).path)


@pytest.mark.parametrize("at", ["first", "middle", "last"])
def test_full_disk_leaves_an_incomplete_folder_the_next_run_completes(monkeypatch, tmp_path,
                                                                      reference, at):
    total = _count_writes(monkeypatch, tmp_path / "count")
    n = {"first": 1, "middle": total // 2, "last": total}[at]
    real, seen = store_mod.atomic_write_bytes, []

    def full(path, data):
        seen.append(path)
        if len(seen) >= n:
            raise OSError(errno.ENOSPC, "No space left on device")
        real(path, data)

    out = tmp_path / "o"
    _run(out)  # a finished folder first: its summary.json must not survive a failed rerun
    monkeypatch.setattr(store_mod, "atomic_write_bytes", full)
    with pytest.raises((OSError, OutputFailed)) as exc:
        dlscope.run("function-fit", profile="quick", out=out, executor="local", threads=1,
                    progress=False, force=True, **TINY)
    monkeypatch.setattr(store_mod, "atomic_write_bytes", real)
    folder = out / "function-fit"
    if isinstance(exc.value, OutputFailed):
        assert "No space left on device" in str(exc.value) and "\n" not in str(exc.value)
    assert not (folder / "summary.json").exists(), at
    assert not list(folder.rglob("*.tmp"))
    with pytest.raises(UserError, match="no summary.json"):
        dlscope.load(folder)
    again = _run(out)  # space again: completes the folder
    assert (folder / "summary.json").is_file()
    got = _tables(again.path)
    assert got.keys() == reference.keys()
    for name, ref in reference.items():
        cols = [c for c in ref.columns if c != "wall_s"]
        pd.testing.assert_frame_equal(got[name][cols], ref[cols], check_exact=False, rtol=1e-6)


def test_cli_reports_a_full_disk_in_one_line(monkeypatch, capsys, tmp_path):
    import sys

    from dlscope.cli import main

    real = store_mod.atomic_write_bytes

    def full(path, data):
        if path.name == "summary.json":
            raise OSError(errno.ENOSPC, "No space left on device")
        real(path, data)

    monkeypatch.setattr(store_mod, "atomic_write_bytes", full)
    args = [f"{k}={v!r}".replace("'", '"') for k, v in TINY.items()]
    monkeypatch.setattr(sys, "argv", ["dlscope", "run", "function-fit", "--profile", "quick",
                                      "--out", str(tmp_path), "--executor", "local",
                                      *[a for kv in args for a in ("--set", kv)]])
    with pytest.raises(SystemExit) as exc:
        main()
    err = capsys.readouterr().err  # progress lines, then the one error line
    (line,) = [x for x in err.splitlines() if x.startswith("error:")]
    assert exc.value.code == 1 and err.splitlines()[-1] == line and "No space left" in line, err
    assert "incomplete" in line and "fault" not in line and not (tmp_path / "function-fit" / "summary.json").exists()


def test_a_real_full_tmpfs(tmp_path, reference):
    """The same on a real filesystem: a tmpfs half the size of the results, then remounted
    with room (needs root and mount; skipped otherwise)."""
    import os
    import subprocess

    mnt = tmp_path / "mnt"
    mnt.mkdir()
    size = 64 * 1024  # smaller than one finished function-fit folder (figures alone exceed it)
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(mnt)],
                       capture_output=True, text=True)
    if r.returncode != 0 or os.geteuid() != 0:
        pytest.skip(f"cannot mount a tmpfs here ({r.stderr.strip() or 'not root'})")
    try:
        with pytest.raises((OSError, OutputFailed, UserError)):
            _run(mnt)
        assert not (mnt / "function-fit" / "summary.json").exists()
        subprocess.run(["mount", "-o", "remount,size=64m", str(mnt)], check=True)
        got = _tables(_run(mnt).path)
        assert got.keys() == reference.keys()
        for name, ref in reference.items():
            cols = [c for c in ref.columns if c != "wall_s"]
            pd.testing.assert_frame_equal(got[name][cols], ref[cols], check_exact=False,
                                          rtol=1e-6)
    finally:
        subprocess.run(["umount", str(mnt)], capture_output=True)
