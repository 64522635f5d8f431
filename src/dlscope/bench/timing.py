"""Small helpers every bench figure uses: a timer, medians that skip missing values,
significant-digit rounding, the load average, and stdout kept clean for `--json`."""

from __future__ import annotations

import contextlib
import math
import os
import statistics
import sys
import time
from collections.abc import Callable

Log = Callable[[str], None]


def timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def med(values) -> float | None:
    values = [v for v in values if v is not None]
    return float(statistics.median(values)) if values else None


def round_sig(v, digits: int = 4):
    if v is None or not math.isfinite(v) or v == 0:
        return v
    return round(v, max(0, digits - 1 - math.floor(math.log10(abs(v)))))


def load() -> str:
    try:
        return " ".join(f"{v:.2f}" for v in os.getloadavg())
    except OSError:
        return "n/a"


@contextlib.contextmanager
def stdout_to_stderr():
    """Send this process's and its children's stdout to stderr (the suite's workers print
    progress), so that `dlscope bench --json` writes nothing but the JSON to stdout."""
    sys.stdout.flush()
    try:
        saved = os.dup(1)
    except OSError:  # no real stdout (e.g. captured): Python-level redirection only
        with contextlib.redirect_stdout(sys.stderr):
            yield
        return
    os.dup2(2, 1)
    try:
        with contextlib.redirect_stdout(sys.stderr):
            yield
    finally:
        sys.stdout.flush()
        os.dup2(saved, 1)
        os.close(saved)
