"""dlscope: the classic experiments on how deep networks learn and generalize.

    import dlscope
    r = dlscope.run("function-fit", profile="quick", out="runs")   # same path as the CLI
    r.tables["results"], r.figures, r.observations
    r = dlscope.load("runs/function-fit")                          # a finished folder
"""

from __future__ import annotations

import os as _os

# OpenMP's threads spin at barriers for a long time by default: with more busy processes than
# cores (a shared laptop, CI, pool workers plus anything else) a 2-thread MLP epoch measured
# 160 s instead of 0.6 s here. A short spin then sleep keeps the idle-machine speed (0.45 s)
# and bounds the busy case (2.5 s); OMP_WAIT_POLICY=PASSIVE bounds it better (0.8 s) but
# costs 4x on an idle machine. Effective only before torch loads libgomp (`import torch`);
# an explicit setting wins.
_os.environ.setdefault("GOMP_SPINCOUNT", "100000")

__version__ = "0.1.0"


def run(name: str, profile: str = "assignment", out="runs", *, executor: str = "auto",
        workers=None, device: str = "auto", threads=None, force: bool = False,
        config_file=None, progress=None, **overrides):
    """Run one experiment; keyword overrides are config keys (validated like `--set`)."""
    from dlscope.execution.runner import run_experiment

    return run_experiment(name, profile=profile, out=out, executor=executor, workers=workers,
                          device=device, threads=threads, force=force, config_file=config_file,
                          overrides=overrides or None, progress=progress, log=_quiet)


def load(path):
    """A finished results folder as an ExperimentResult (or a dict of them for an OUT folder)."""
    from dlscope.execution.result import load as _load

    return _load(path)


def _quiet(msg: str) -> None:
    import sys

    print(msg, file=sys.stderr)


def __getattr__(name: str):
    # `import dlscope; dlscope.metrics.hessian_trace(...)` without importing torch at startup
    if name in ("metrics", "data"):
        import importlib

        return importlib.import_module(f"dlscope.{name}")
    raise AttributeError(f"module 'dlscope' has no attribute {name!r}")
