"""The results folder: finished runs by hash, atomic writes, resume.

    OUT/<experiment>/config.toml     fully resolved config
    OUT/<experiment>/env.json        versions, threads, device, git commit, wall time
    OUT/<experiment>/runs/<hash>/    one finished run: spec.json, result.json, arrays.npz,
                                     timing.json (when and where it ran: start, end, pid,
                                     host, threads; not part of its numbers),
                                     checksums.json (sha256 of the others, verified on reuse)
    OUT/<experiment>/quarantine/     damaged run folders moved aside (then recomputed)
    OUT/<experiment>/*.csv           tidy tables
    OUT/<experiment>/figures/*.png
    OUT/<experiment>/summary.json    headline numbers and observations, written last

A run folder is written under a temporary name and renamed into place, so a folder named
by a hash is always complete: a crash or Ctrl-C loses at most the runs still in flight.
Two processes saving the same run at once: the first rename wins, the other copy is dropped.
Every other file is written to a temporary file and moved over the old one.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
import uuid
from pathlib import Path

import numpy as np

from dlscope.atomic import atomic_write_bytes
from dlscope.contract.runspec import RunResult, RunSpec


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def write_json(path: Path, obj) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, default=_json_default, allow_nan=True))


class _Damaged(Exception):
    """A run folder that must not be reused (the message says why)."""


def _json_default(o):
    if isinstance(o, np.generic):  # numpy scalars: np.int64, np.float32, np.bool_ ...
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serializable: {type(o).__name__}")


CHECKSUMS = "checksums.json"  # sha256 of each file of a run, written at save time
TIMING = "timing.json"  # when and where the run ran (RunResult.timing)
MAX_RUN_FILE_BYTES = 4 * 2**30  # a run file larger than this is not one we wrote


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # exists, owned by someone else
        return True
    return True


class Store:
    """One experiment's results folder.

    Every run folder holds `checksums.json` (sha256 of its other files). `load` verifies it
    before a run is reused; a run that is unreadable or does not match is moved to
    `quarantine/`, reported in one line through `log`, and recomputed by the caller."""

    def __init__(self, root: Path, log=None):
        self.root = Path(root)
        self.runs = self.root / "runs"
        self.quarantine_dir = self.root / "quarantine"
        self.log = log or (lambda msg: None)

    def run_dir(self, spec: RunSpec) -> Path:
        return self.runs / spec.hash

    def load(self, spec: RunSpec) -> RunResult | None:
        """The finished, verified run for this spec, or None (missing, or damaged and
        quarantined: recompute it)."""
        d = self.run_dir(spec)
        if not d.exists():
            return None
        try:
            return self._read_verified(d)
        except Exception as exc:  # noqa: BLE001 - any damage at all: do not reuse, recompute
            self._quarantine(d, spec, f"{type(exc).__name__}: {exc}" if not isinstance(
                exc, _Damaged) else str(exc))
            return None

    def _read_verified(self, d: Path) -> RunResult:
        if not d.is_dir():
            raise _Damaged("not a folder")
        sums_path = d / CHECKSUMS
        if not sums_path.is_file():
            raise _Damaged(f"no {CHECKSUMS} (unfinished, or written by an older dlscope)")
        if sums_path.stat().st_size > 1 << 20:
            raise _Damaged(f"{CHECKSUMS} is implausibly large")
        sums = json.loads(sums_path.read_text())
        if not isinstance(sums, dict) or "result.json" not in sums:
            raise _Damaged(f"{CHECKSUMS} does not list result.json")
        present = {p.name for p in d.iterdir()} - {CHECKSUMS}
        if present != set(sums):
            missing, extra = set(sums) - present, present - set(sums)
            raise _Damaged("files " + (f"missing: {sorted(missing)}" if missing else
                                       f"not written by dlscope: {sorted(extra)}"))
        for name, digest in sums.items():
            f = d / name
            if f.stat().st_size > MAX_RUN_FILE_BYTES:
                raise _Damaged(f"{name} is implausibly large")
            if _sha256_file(f) != digest:
                raise _Damaged(f"{name} does not match its checksum (edited or corrupt)")
        values = json.loads((d / "result.json").read_text())
        if not isinstance(values, dict):
            raise _Damaged(f"result.json holds {type(values).__name__}, not an object")
        arrays: dict[str, np.ndarray] = {}
        if "arrays.npz" in sums:
            with np.load(d / "arrays.npz", allow_pickle=False) as z:
                arrays = {k: z[k] for k in z.files}
        timing = None
        if TIMING in sums:
            timing = json.loads((d / TIMING).read_text())
            if not isinstance(timing, dict):
                raise _Damaged(f"{TIMING} holds {type(timing).__name__}, not an object")
        return RunResult(values=values, arrays=arrays, timing=timing)

    def timed_runs(self, limit: int = 200) -> list[tuple[dict, dict]]:
        """(spec.json, timing.json) of up to `limit` stored runs that have a timing, read
        as plain JSON (unverified: for estimates only, never for numbers)."""
        out: list[tuple[dict, dict]] = []
        if not self.runs.is_dir():
            return out
        for d in sorted(self.runs.iterdir()):
            if len(out) >= limit:
                break
            try:
                if d.name.startswith(".") or not (d / TIMING).is_file():
                    continue
                spec, timing = (json.loads((d / n).read_text()) for n in ("spec.json", TIMING))
            except (OSError, ValueError):
                continue
            if isinstance(spec, dict) and isinstance(timing, dict):
                out.append((spec, timing))
        return out

    def _quarantine(self, d: Path, spec: RunSpec, why: str) -> None:
        self.quarantine_dir.mkdir(parents=True, exist_ok=True)
        stamp = time.strftime("%Y%m%dT%H%M%S")
        dest = self.quarantine_dir / f"{d.name}-{stamp}-{uuid.uuid4().hex[:6]}"
        try:
            os.rename(d, dest)
            where = f"moved to {dest}"
        except FileNotFoundError:  # another process moved or replaced it meanwhile
            return
        except OSError as exc:
            where = f"could not move it aside ({exc.strerror}); it will be replaced"
        self.log(f"{spec.experiment}: run {spec.key} ({d.name}) is damaged ({why}); {where}; "
                 "recomputing it")

    def save(self, spec: RunSpec, result: RunResult, replace: bool = False) -> None:
        """Write the run under a temporary name, then rename it into place. If another
        process saved the same run meanwhile, its copy stands and this one is discarded
        (unless `replace`: `--force` recomputes and replaces finished runs)."""
        self.runs.mkdir(parents=True, exist_ok=True)
        final = self.run_dir(spec)
        tmp = self.runs / f".tmp-{spec.hash}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        tmp.mkdir()
        try:
            (tmp / "spec.json").write_text(json.dumps(spec.to_json(), indent=2, default=str))
            (tmp / "result.json").write_text(
                json.dumps(result.values, indent=2, default=_json_default))
            if result.arrays:
                np.savez(tmp / "arrays.npz", **result.arrays)
            if result.timing:
                (tmp / TIMING).write_text(json.dumps(result.timing, indent=2,
                                                     default=_json_default))
            sums = {p.name: _sha256_file(p) for p in sorted(tmp.iterdir())}
            (tmp / CHECKSUMS).write_text(json.dumps(sums, indent=2))
            for p in tmp.iterdir():
                with open(p, "rb") as f:
                    os.fsync(f.fileno())
            if final.exists() and (replace or not final.is_dir()
                                   or not (final / CHECKSUMS).is_file()):
                old = self.runs / f".old-{spec.hash}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
                try:
                    os.rename(final, old)
                    shutil.rmtree(old, ignore_errors=True)
                except FileNotFoundError:
                    pass
            try:
                os.rename(tmp, final)
            except OSError:  # lost a race: the same run was saved by another process
                if not final.exists():
                    raise
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)

    def clean_temp(self, max_age_s: float = 24 * 3600) -> None:
        """Remove half-written run folders and `.NAME.PID-HEX.tmp` files left by a killed
        process (never those of a save in progress in another live process)."""
        for f in [*self.root.glob(".*.tmp"), *self.root.glob("figures/.*.tmp")]:
            pid = f.name.rsplit(".", 2)[-2].split("-")[0]  # .NAME.PID-HEX.tmp (dlscope.atomic)
            if pid.isdigit() and not _pid_alive(int(pid)):  # a killed writer's file
                f.unlink(missing_ok=True)
        if not self.runs.exists():
            return
        now = time.time()
        for d in list(self.runs.glob(".tmp-*")) + list(self.runs.glob(".old-*")):
            parts = d.name.split("-")  # .tmp-<hash>-<pid>-<uuid> (as save names them)
            pid = int(parts[2]) if len(parts) == 4 and parts[2].isdigit() else None
            try:
                old = now - d.stat().st_mtime > max_age_s
            except OSError:
                continue
            if pid is None or not _pid_alive(pid) or old:
                shutil.rmtree(d, ignore_errors=True)

    def _own_dir(self, d: Path) -> Path:
        """`d`, a real folder: a symlink put in its place (to a folder outside the results)
        is removed, never written through."""
        if d.is_symlink():
            d.unlink()
        d.mkdir(parents=True, exist_ok=True)
        return d

    def write_table(self, name: str, df) -> None:
        atomic_write_text(self.root / f"{name}.csv", df.to_csv(index=False))

    def write_figure(self, name: str, fig) -> None:
        import io

        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
        atomic_write_bytes(self._own_dir(self.root / "figures") / f"{name}.png", buf.getvalue())
