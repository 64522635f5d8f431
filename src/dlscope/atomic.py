"""Files written whole or not at all: a temporary file in the same folder, fsynced, then
renamed over the target (readers never see a half-written file; a crash leaves at most a
`.NAME.*.tmp` behind). Shared by the results store and the MNIST cache."""

from __future__ import annotations

import os
import uuid
from pathlib import Path


def atomic_write_bytes(path: Path, data: bytes) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # the writer's pid in the name: a rerun removes what a killed writer left (Store.clean_temp)
    tmp = path.parent / f".{path.name}.{os.getpid()}-{uuid.uuid4().hex[:12]}.tmp"
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
