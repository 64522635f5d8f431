"""Process-wide settings for the processes dlscope owns: the `dlscope` command and its pool
workers. Importing dlscope sets none of them, so a notebook's process stays as its user left it.

Called from `dlscope.cli.main` (before any command imports torch) and as the initializer of
the process executor's workers (`worker_init.init_worker`) and of each Ray task. This module imports
nothing heavy at import time: a spawned worker runs its initializer before torch loads,
which is what lets the OpenMP setting below take effect there.
"""

from __future__ import annotations

import os

# OpenMP's threads spin at barriers for a long time by default: with more busy processes than
# cores (a shared laptop, CI, pool workers plus anything else) a 2-thread MLP epoch was once
# measured at 160 s instead of 0.6 s. A short spin then sleep keeps the idle-machine speed and
# bounds the busy case (docs/PERFORMANCE.md); OMP_WAIT_POLICY=PASSIVE bounds it better but
# costs ~4x on an idle machine. Small training steps no longer depend on it (they run on one
# thread: dlscope.train.threads); it still matters for multi-threaded ones (CNNs, stacked
# ensembles). libgomp reads it once, when torch loads it (`import torch`),
# so it must be in the environment before that; an explicit setting by the user wins.
GOMP_SPINCOUNT = "100000"


def configure_openmp(threads: int | None = None) -> None:
    """Set GOMP_SPINCOUNT (unless set) and, given `threads`, OMP_NUM_THREADS for this process
    and its children. Effective for libgomp only before torch is imported."""
    os.environ.setdefault("GOMP_SPINCOUNT", GOMP_SPINCOUNT)
    if threads is not None:
        os.environ["OMP_NUM_THREADS"] = str(threads)

