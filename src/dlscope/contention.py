"""Competing load for `dlscope bench --contention N`.

`busy_processes(n)` starts n processes that spin on one core each (a plain Python loop), the
way a browser tab, a compile or another user's job competes for a laptop's or a CI runner's
cores; they stop by themselves after `max_s` seconds and are killed when the block ends, so a
crashed benchmark never leaves them behind (each also stops when its parent is gone).
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
from collections.abc import Iterator

_SPIN = ("import os, time\n"
         "end = time.monotonic() + {max_s}\n"
         "while time.monotonic() < end and os.getppid() == {parent}:\n"
         "    for _ in range(100000): pass\n")


@contextlib.contextmanager
def busy_processes(n: int, max_s: float = 600.0) -> Iterator[list[subprocess.Popen]]:
    """n busy-loop processes for the duration of the block (at most `max_s` seconds each)."""
    code = _SPIN.format(max_s=float(max_s), parent=os.getpid())
    procs = [subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.DEVNULL,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
             for _ in range(n)]
    try:
        time.sleep(0.3 if n else 0)  # let them reach their loops
        yield procs
    finally:
        for p in procs:
            p.kill()
        for p in procs:
            p.wait(timeout=10)

