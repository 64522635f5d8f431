"""The experiments: one module each, in the assignment's order (deep vs shallow,
optimization, generalization), plus any registered from outside the package.

Each module satisfies the contract `Experiment` (docs/CONTRACT.md): a docstring (question,
setting, expected result with its source), NAME / SECTION / TITLE / QUESTION, `Config`
(defaults = assignment profile), `PROFILES`, `runs(cfg)`, `run_one(params, ctx)` (and an
optional batched `run_many`), `analyze`, `figures`, `observations`. `register(module)` adds
an outside one; see dlscope.experiments.registry for the plugin routes.
"""

from __future__ import annotations

from dlscope.experiments.registry import (
    BUILTIN,
    PARTS,
    REGISTRY,
    Experiment,
    available,
    check,
    describe,
    get,
    load_plugins,
    part_title,
    register,
)

__all__ = ["BUILTIN", "PARTS", "REGISTRY", "Experiment", "available", "check", "describe",
           "get", "load_plugins", "part_title", "register"]
