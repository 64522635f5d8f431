"""The experiment registry, in the assignment's order (deep vs shallow, optimization,
generalization). An experiment is one module here plus its line below; each module holds,
top to bottom: a docstring (question, expected result, wall times), NAME / SECTION / TITLE /
QUESTION, `Config` (defaults = assignment profile), `PROFILES`, `runs(config)`, the run
function(s) named by its RunSpecs, `analyze`, `figures`, `observations`.
"""

from __future__ import annotations

import importlib
from types import ModuleType

from dlscope.errors import UserError

REGISTRY: dict[str, str] = {
    "function-fit": "dlscope.experiments.function_fit",
    "mnist-models": "dlscope.experiments.mnist_models",
    "weight-pca": "dlscope.experiments.weight_pca",
    "grad-norm": "dlscope.experiments.grad_norm",
    "minimal-ratio": "dlscope.experiments.minimal_ratio",
    "random-labels": "dlscope.experiments.random_labels",
    "param-count": "dlscope.experiments.param_count",
    "interpolation": "dlscope.experiments.interpolation",
    "sensitivity": "dlscope.experiments.sensitivity",
    "curvature": "dlscope.experiments.curvature",
}


def available() -> list[str]:
    """Registered experiments whose module exists, in the assignment's order."""
    out = []
    for name, path in REGISTRY.items():
        if importlib.util.find_spec(path) is not None:
            out.append(name)
    return out


def get(name: str) -> ModuleType:
    if name not in available():
        raise UserError(f"unknown experiment {name!r} (one of: {', '.join(available())})")
    return importlib.import_module(REGISTRY[name])
