"""A hostile file system (issues 15, 26): odd --out targets, results folders with files
replaced by folders or by symlinks out of the folder, two runs on one folder, a disk that
fills. Nothing outside the results folder is ever read into it or overwritten."""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

import numpy as np
import pytest
from hostile_util import FIT, clean_env, cli_subprocess, last_line, one_line, run_dirs, tree

from dlscope.contract.runspec import RunResult, RunSpec
from dlscope.execution.store import Store

NOBODY = ("setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups")


@pytest.fixture(scope="module")
def finished(tmp_path_factory, cli):
    """A finished tiny function-fit results folder (copied by each test) and its report."""
    out = tmp_path_factory.mktemp("fs") / "O"
    code, _, err = cli(*FIT, "--out", out)
    assert code == 0, err
    code, _, err = cli("report", out)
    assert code == 0, err
    return out


@pytest.fixture
def results(tmp_path, finished):
    out = tmp_path / "O"
    shutil.copytree(finished, out, symlinks=True)
    return out


@pytest.fixture
def outside(tmp_path):
    """A file and a folder outside the results folder that nothing may touch."""
    (tmp_path / "outside").mkdir()
    (tmp_path / "outside" / "secret.txt").write_text("SECRET-OUTSIDE-CONTENT\n")
    (tmp_path / "outside" / "dir").mkdir()
    (tmp_path / "outside" / "dir" / "keep.txt").write_text("keep\n")
    return tmp_path / "outside"


# ------------------------------------------------------------ --out targets


@pytest.mark.parametrize("what, reason", [
    ("file", "Not a directory"), ("file_parent", "Not a directory"),
    ("proc", ""), ("long_name", "File name too long"), ("dev_null", "")])
def test_bad_out_folders_are_one_line(cli, tmp_path, what, reason):
    a_file = tmp_path / "file"
    a_file.write_text("x")
    out = {"file": a_file, "file_parent": a_file / "sub", "proc": "/proc/dlscope-no",
           "long_name": tmp_path / ("x" * 300), "dev_null": "/dev/null"}[what]
    code, _, err = cli(*FIT, "--out", out)
    line = one_line(err)
    assert code == 2 and "cannot write results there" in line and reason in line, line
    assert a_file.read_text() == "x"


def test_out_symlink_to_a_folder_works_and_stays_a_symlink(cli, tmp_path):
    """A careful user's `runs -> /big/disk/runs` link: results land in the target."""
    (tmp_path / "target").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "target")
    code, _, err = cli(*FIT, "--out", tmp_path / "link")
    assert code == 0, err
    assert (tmp_path / "link").is_symlink()
    assert (tmp_path / "target" / "function-fit" / "summary.json").is_file()


def test_out_dangling_symlink_is_one_line(cli, tmp_path):
    (tmp_path / "link").symlink_to(tmp_path / "nowhere")
    code, _, err = cli(*FIT, "--out", tmp_path / "link")
    assert code == 2 and "cannot write results there" in one_line(err)
    assert not (tmp_path / "nowhere").exists()


def _nobody_can_run() -> str | None:
    if shutil.which("setpriv") is None:
        return "setpriv is not installed"
    p = subprocess.run([*NOBODY, sys.executable, "-c", "import dlscope"], capture_output=True,
                       env=clean_env(), timeout=120)
    return None if p.returncode == 0 else "user nobody cannot run this Python or read src/"


def test_read_only_out_for_a_non_root_user():
    why = _nobody_can_run()
    if why:
        pytest.skip(why)
    base = Path(tempfile.mkdtemp(prefix="dlscope-ro-"))  # pytest's tmp is private to root
    try:
        base.chmod(0o755)
        ro, home = base / "ro", base / "home"
        ro.mkdir(mode=0o555)
        home.mkdir()
        home.chmod(0o777)
        code, _, err = cli_subprocess(*FIT, "--out", ro / "O", prefix=NOBODY, cwd="/",
                                      env={"HOME": str(home)}, timeout=180)
        assert code == 2, err
        assert "cannot write results there (Permission denied)" in one_line(err)
        assert list(ro.iterdir()) == []
    finally:
        shutil.rmtree(base)


# ------------------------------------------------------------ results folders replaced


@pytest.mark.parametrize("name", ["summary.json", "config.toml", "env.json", "results.csv"])
def test_file_replaced_by_a_folder_then_rerun_and_report(cli, results, name):
    root = results / "function-fit"
    (root / name).unlink()
    (root / name).mkdir()
    code, _, err = cli(*FIT, "--out", results)
    assert code == 1, err  # a fault in the folder, not bad input: one line, nothing lost
    assert "Is a directory" in last_line(err)
    assert (root / name).is_dir() and len(run_dirs(root)) == 2
    code, _, err = cli("report", results)
    assert code in (0, 2), err
    assert "Traceback" not in err
    if code == 2:
        one_line(err)


@pytest.mark.parametrize("name", ["summary.json", "config.toml", "env.json", "results.csv",
                                  "report.html"])
def test_symlink_to_an_outside_file_is_never_followed(cli, results, outside, name):
    """A results file replaced by a symlink to a file outside: `report` and a rerun neither
    overwrite the outside file nor copy it into the report."""
    root = results / "function-fit"
    where = results if name == "report.html" else root
    (where / name).unlink()
    (where / name).symlink_to(outside / "secret.txt")
    before = tree(outside)
    code, _, err = cli("report", results)
    assert "Traceback" not in err
    assert code in (0, 2), err
    assert tree(outside) == before
    if (results / "report.html").is_file() and not (results / "report.html").is_symlink():
        assert "SECRET-OUTSIDE-CONTENT" not in (results / "report.html").read_text()
    code, _, err = cli(*FIT, "--out", results)
    assert code == 0, err
    assert tree(outside) == before
    if name != "report.html":
        assert not (where / name).is_symlink() and (where / name).is_file()


def test_figures_folder_symlinked_outside_is_not_written_through(cli, results, outside):
    root = results / "function-fit"
    shutil.rmtree(root / "figures")
    (root / "figures").symlink_to(outside / "dir")
    before = tree(outside)
    code, _, err = cli(*FIT, "--out", results)
    assert code == 0, err
    assert tree(outside) == before
    assert not (root / "figures").is_symlink() and list((root / "figures").glob("*.png"))


def test_run_folder_symlinked_outside_is_not_modified(cli, results, outside):
    """A finished run replaced by a link to a copy outside; --force must not write there."""
    root = results / "function-fit"
    victim = run_dirs(root)[0]
    shutil.copytree(victim, outside / "run")
    shutil.rmtree(victim)
    victim.symlink_to(outside / "run")
    before = tree(outside)
    code, _, err = cli(*FIT, "--out", results, "--force")
    assert code == 0, err
    assert tree(outside) == before
    assert len(run_dirs(root)) == 2


# ------------------------------------------------------------ two runs at once, a full disk


def test_concurrent_saves_of_the_same_run(tmp_path):
    spec = RunSpec("x", "k", "m:f", {"a": 1})
    result = RunResult({"v": 1.5}, {"a": np.arange(1000.0)})
    store = Store(tmp_path)
    errors: list[BaseException] = []
    barrier = threading.Barrier(8)

    def save():
        barrier.wait()
        try:
            for _ in range(5):
                store.save(spec, result)
        except BaseException as exc:  # noqa: BLE001 - collected and asserted on
            errors.append(exc)

    threads = [threading.Thread(target=save) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    got = store.load(spec)
    assert got is not None and got.values == {"v": 1.5}
    assert [p.name for p in store.runs.iterdir()] == [spec.hash]  # no temp copies left
    store.save(spec, RunResult({"v": 2.5}), replace=True)  # --force replaces
    assert store.load(spec).values == {"v": 2.5}


def test_two_processes_running_the_same_sweep(tmp_path):
    out = tmp_path / "O"
    procs = [subprocess.Popen([sys.executable, "-m", "dlscope.cli", *FIT, "--out", str(out)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              env=clean_env()) for _ in range(2)]
    for p in procs:
        _, err = p.communicate(timeout=300)
        assert p.returncode == 0 and "Traceback" not in err, err
    root = out / "function-fit"
    assert len(run_dirs(root)) == 2 and not list((root / "runs").glob(".*"))
    assert not list(root.glob(".*.tmp"))
    code, _, err = cli_subprocess(*FIT, "--out", out)
    assert code == 0 and "(2 reused, 0 to run)" in err, err


@pytest.fixture
def tiny_tmpfs(tmp_path):
    mnt = tmp_path / "small"
    mnt.mkdir()
    p = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mnt)],
                       capture_output=True, text=True)
    if p.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({p.stderr.strip()[:80]})")
    yield mnt
    subprocess.run(["umount", "-l", str(mnt)], check=False)


def test_a_disk_that_fills_is_exit_1_one_line(cli, tiny_tmpfs):
    code, _, err = cli(*FIT, "--out", tiny_tmpfs / "O")
    assert code == 1, err
    assert "No space left on device" in last_line(err)
