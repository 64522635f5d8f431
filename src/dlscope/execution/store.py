"""The results folder: finished runs by hash, atomic writes, resume.

    OUT/<experiment>/config.toml     fully resolved config
    OUT/<experiment>/env.json        versions, threads, device, git commit, wall time
    OUT/<experiment>/runs/<hash>/    one finished run: spec.json, result.json, arrays.npz
    OUT/<experiment>/*.csv           tidy tables
    OUT/<experiment>/figures/*.png
    OUT/<experiment>/summary.json    headline numbers and observations, written last

A run folder is written under a temporary name and renamed into place, so a folder named
by a hash is always complete: a crash or Ctrl-C loses at most the runs still in flight.
Every other file is written to a temporary file and moved over the old one.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from pathlib import Path

import numpy as np

from dlscope.execution.runspec import RunResult, RunSpec

def atomic_write_bytes(path: Path, data: bytes) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.{uuid.uuid4().hex[:12]}.tmp"
    # created like any new file (0666 less the umask): results are meant to be shared, and
    # reading the umask would mean setting it, a process-wide change a library must not make
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def write_json(path: Path, obj) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, default=_json_default, allow_nan=True))


def _json_default(o):
    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (np.floating,)):
        return float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serializable: {type(o).__name__}")


class Store:
    """One experiment's results folder."""

    def __init__(self, root: Path):
        self.root = Path(root)
        self.runs = self.root / "runs"

    def run_dir(self, spec: RunSpec) -> Path:
        return self.runs / spec.hash

    def load(self, spec: RunSpec) -> RunResult | None:
        """The finished run for this spec, or None (missing or unreadable: recompute it)."""
        d = self.run_dir(spec)
        try:
            values = json.loads((d / "result.json").read_text())
            arrays: dict[str, np.ndarray] = {}
            if (d / "arrays.npz").exists():
                with np.load(d / "arrays.npz", allow_pickle=False) as z:
                    arrays = {k: z[k] for k in z.files}
            return RunResult(values=values, arrays=arrays)
        except (OSError, ValueError):
            return None

    def save(self, spec: RunSpec, result: RunResult) -> None:
        self.runs.mkdir(parents=True, exist_ok=True)
        final = self.run_dir(spec)
        tmp = self.runs / f".tmp-{spec.hash}-{uuid.uuid4().hex[:8]}"
        tmp.mkdir()
        try:
            (tmp / "spec.json").write_text(json.dumps(spec.to_json(), indent=2, default=str))
            (tmp / "result.json").write_text(
                json.dumps(result.values, indent=2, default=_json_default))
            if result.arrays:
                np.savez(tmp / "arrays.npz", **result.arrays)
            if final.exists():
                shutil.rmtree(final)
            os.rename(tmp, final)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)

    def clean_temp(self) -> None:
        """Remove half-written run folders left by a killed process."""
        if self.runs.exists():
            for d in self.runs.glob(".tmp-*"):
                shutil.rmtree(d, ignore_errors=True)

    def write_table(self, name: str, df) -> None:
        atomic_write_text(self.root / f"{name}.csv", df.to_csv(index=False))

    def write_figure(self, name: str, fig) -> None:
        import io

        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
        atomic_write_bytes(self.root / "figures" / f"{name}.png", buf.getvalue())
