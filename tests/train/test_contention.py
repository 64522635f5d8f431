"""The bench's competing load: n busy processes while the block runs, none after it, and each
stops by itself after its time limit (so a crashed benchmark never leaves load behind)."""

import time

from dlscope.contention import busy_processes


def test_busy_processes_run_inside_and_are_gone_after():
    with busy_processes(2, max_s=60) as procs:
        assert len(procs) == 2
        assert all(p.poll() is None for p in procs)  # spinning
    assert all(p.poll() is not None for p in procs)


def test_busy_processes_stop_by_themselves():
    with busy_processes(1, max_s=0.5) as procs:
        deadline = time.monotonic() + 30
        while procs[0].poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)
        assert procs[0].returncode == 0  # exited on its own, not killed
