"""dlscope: the classic experiments on how deep networks learn and generalize.

    import dlscope
    r = dlscope.run("function-fit", profile="quick", out="runs")   # same path as the CLI
    r.tables["results"], r.figures, r.observations
    r = dlscope.load("runs/function-fit")                          # a finished folder
    r = dlscope.load("runs/toy-width", plugins=["toy_width"])      # an outside experiment's
"""

from __future__ import annotations

# Importing dlscope changes no process-wide state (environment, umask, matplotlib backend):
# the OpenMP setting the CLI and the pool workers want is made there, in
# dlscope.execution.process_env.
from dlscope.version import __version__

__all__ = ["__version__", "config_of", "load", "run"]


def run(name, profile: str = "assignment", out="runs", *, executor: str = "auto",
        workers=None, device: str = "auto", threads=None, force: bool = False,
        config_file=None, progress=None, **overrides):
    """Run one experiment; keyword overrides are config keys (validated like `--set`).

    `name` is a registered experiment's name or an experiment module (registered first, see
    dlscope.experiments.register)."""
    from types import ModuleType

    from dlscope.driver.runner import run_experiment

    if isinstance(name, ModuleType):
        from dlscope import experiments

        name = experiments.register(name).NAME

    return run_experiment(name, profile=profile, out=out, executor=executor, workers=workers,
                          device=device, threads=threads, force=force, config_file=config_file,
                          overrides=overrides or None, progress=progress, log=_quiet)


def config_of(name: str):
    """The config class (a pydantic model) of an experiment: its fields, defaults and ranges.

        cfg = dlscope.config_of("sensitivity")(batch_sizes=[32, 512])   # validated
    """
    from dlscope import experiments

    return experiments.get(name).Config


def load(path, *, plugins=()):
    """A finished results folder as an ExperimentResult (or a dict of them for an OUT folder).

    Reading a folder runs no code from it: an outside experiment's module is imported only
    when named, `plugins=["mypkg.myexp"]` (or DLSCOPE_PLUGINS, an installed entry point);
    otherwise one line says which module wrote the folder and how to allow it."""
    from dlscope.driver.result import load as _load

    return _load(path, plugins=plugins)


def _quiet(msg: str) -> None:
    import sys

    print(msg, file=sys.stderr)


def __getattr__(name: str):
    # `import dlscope; dlscope.metrics.hessian_trace(...)` without importing torch at startup
    if name in ("metrics", "data"):
        import importlib

        return importlib.import_module(f"dlscope.{name}")
    raise AttributeError(f"module 'dlscope' has no attribute {name!r}")
