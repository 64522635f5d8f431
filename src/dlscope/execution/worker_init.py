"""The process pool's worker initializer, kept free of heavy imports so that it runs first.

A spawned worker unpickles its initializer before anything else; this module imports only
the standard library, so the worker is tied to its parent within milliseconds of starting,
not after torch has loaded (seconds on a busy machine): a parent killed meanwhile (kill -9,
SIGTERM) never leaves orphans behind. The worker Process class lives here for the same reason
(a spawned child unpickles it, importing its module, before it runs the initializer).
"""

from __future__ import annotations

import multiprocessing.context as mp_context
import multiprocessing.spawn as mp_spawn
import os
import signal
import sys
import threading
import time

PR_SET_PDEATHSIG = 1


def die_with_parent(parent_pid: int) -> None:
    """Make this worker die when the process that started it dies (kill -9 included).

    Linux: the kernel sends SIGKILL on the parent's death (prctl PR_SET_PDEATHSIG). Everywhere:
    a daemon thread checks once a second that the parent is still this process's parent."""
    if sys.platform.startswith("linux"):
        try:
            import ctypes

            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        except (OSError, AttributeError):  # pragma: no cover - no libc prctl
            pass
    if os.getppid() != parent_pid:  # the parent died before prctl took effect
        os._exit(1)

    def watch() -> None:
        while True:
            time.sleep(1.0)
            if os.getppid() != parent_pid:
                os._exit(1)

    threading.Thread(target=watch, name="dlscope-parent-watchdog", daemon=True).start()


def init_worker(threads: int, parent_pid: int | None = None) -> None:
    """Tie the worker to its parent, set OpenMP (before torch loads), then torch's threads."""
    if parent_pid is not None:
        die_with_parent(parent_pid)
    from dlscope.execution.process_env import configure_openmp

    configure_openmp(threads)
    import torch

    torch.set_num_threads(threads)


_PREP_LOCK = threading.Lock()


def _preparation_without_main(name):
    """What a spawned child is told to prepare, minus re-importing the caller's `__main__`:
    runs name their function by an importable module, so the workers never need it, and a
    `__main__` that cannot be re-imported (a script fed to `python -`, `python -c`, a script
    without a main guard) would otherwise break every worker."""
    data = _ORIGINAL_PREPARATION(name)
    data.pop("init_main_from_path", None)
    data.pop("init_main_from_name", None)
    return data


_ORIGINAL_PREPARATION = mp_spawn.get_preparation_data


class _WorkerProcess(mp_context.SpawnProcess):
    @staticmethod
    def _Popen(process_obj):
        with _PREP_LOCK:
            mp_spawn.get_preparation_data = _preparation_without_main
            try:
                return mp_context.SpawnProcess._Popen(process_obj)
            finally:
                mp_spawn.get_preparation_data = _ORIGINAL_PREPARATION


class WorkerContext(mp_context.SpawnContext):
    """The spawn start method with workers that do not re-import `__main__`."""
    Process = _WorkerProcess
