"""Helpers of the hostile suite (issues 15, 26): the tiny sweeps, data builders and the
one-line-error check. The fixtures that run the CLI are in conftest.py."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from dlscope.data.cache import cache_dir_path
from dlscope.data.idx import write_idx

SRC = Path(__file__).resolve().parents[2] / "src"

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
# columns that measure time, not numbers: the only ones allowed to differ between two runs
TIMING_COLUMNS = ("wall_s", "time_s", "seconds", "elapsed_s")


def clean_env(extra: dict | None = None) -> dict:
    """A minimal environment (PATH, HOME, this source tree), plus `extra`; None removes."""
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": os.environ.get("HOME", "/"),
           "PYTHONPATH": str(SRC), "LANG": "C.UTF-8", "DLSCOPE_MALLOPT": "0"}
    for k, v in (extra or {}).items():
        if v is None:
            env.pop(k, None)
        else:
            env[k] = str(v)
    return env


def cli_subprocess(*args, env: dict | None = None, timeout: float = 300, cwd=None,
                   prefix: tuple = ()) -> tuple[int, str, str]:
    """`dlscope ARGS` in a fresh interpreter (for cases needing a process of their own:
    concurrency, another user): (exit code, stdout, stderr)."""
    p = subprocess.run([*prefix, sys.executable, "-m", "dlscope.cli", *map(str, args)],
                       capture_output=True, text=True, timeout=timeout, env=clean_env(env),
                       cwd=cwd)
    return p.returncode, p.stdout, p.stderr


def one_line(err: str) -> str:
    """stderr must be exactly one line `error: ...` (no traceback, nothing else)."""
    assert "Traceback" not in err, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    return lines[0]


def last_line(err: str) -> str:
    """For failures after progress lines: no traceback, exactly one `error:` line, the last."""
    assert "Traceback" not in err, err
    lines = err.strip().splitlines()
    assert lines and lines[-1].startswith("error: "), err
    assert sum(x.startswith("error") for x in lines) == 1, err
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


def tree(root: Path) -> dict[str, bytes]:
    """Every regular file under root (relative path -> bytes)."""
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file() and not p.is_symlink()}
