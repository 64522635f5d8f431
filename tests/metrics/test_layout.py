"""The shape of dlscope.metrics: no exported name hides a submodule, no import circle, no
module imports another's private name, one parameter flattener."""

import ast
import importlib
import inspect
import pkgutil
from pathlib import Path

import numpy as np
import torch
from torch import nn

import dlscope.metrics
from dlscope.metrics.flat import flatten_params

PKG = Path(dlscope.metrics.__file__).parent
SUBMODULES = {m.name for m in pkgutil.iter_modules(dlscope.metrics.__path__)}


def test_no_exported_name_shadows_its_submodule():
    clashes = [name for name in dlscope.metrics.__all__ if name in SUBMODULES]
    assert "hessian" in clashes  # the one submodule exported as itself
    for name in clashes:
        assert inspect.ismodule(importlib.import_module("dlscope.metrics." + name))
        assert inspect.ismodule(getattr(dlscope.metrics, name))
        ns: dict = {}
        exec(f"import dlscope.metrics.{name} as m", ns)  # noqa: S102 -- the statement itself
        assert inspect.ismodule(ns["m"]), name
    for name in SUBMODULES:  # and a function of the package never hides a module's name
        value = getattr(dlscope.metrics, name, None)
        assert value is None or inspect.ismodule(value), name


def _imports(path: Path):
    tree = ast.parse(path.read_text(encoding="utf-8"))
    top = {id(n) for n in tree.body}
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("dlscope.metrics"):
            yield node, id(node) in top


def test_no_private_names_no_local_metrics_imports_no_circle():
    graph = {}
    for path in sorted(PKG.glob("*.py")):
        deps = set()
        for node, at_top in _imports(path):
            assert at_top, f"{path.name}:{node.lineno} imports dlscope.metrics inside a function"
            for alias in node.names:
                assert not alias.name.startswith("_"), f"{path.name} imports {alias.name}"
            mod = node.module.removeprefix("dlscope.metrics").lstrip(".")
            deps |= {mod} if mod else {a.name for a in node.names if a.name in SUBMODULES}
        graph[path.stem] = deps - {path.stem}

    def reaches(a, b, seen=()):
        return any(d == b or (d not in seen and reaches(d, b, (*seen, d)))
                   for d in graph.get(a, ()))

    circles = [m for m in graph if m != "__init__" and reaches(m, m)]
    assert not circles, circles


def test_one_flattener_in_named_parameters_order():
    model = nn.Sequential(nn.Conv2d(2, 3, 3), nn.Flatten(), nn.Linear(12, 2))
    model = model.to(memory_format=torch.channels_last)
    expected = torch.cat([p.detach().contiguous().view(-1) for _, p in
                          model.named_parameters()])
    assert torch.equal(flatten_params(model), expected)
    assert torch.equal(flatten_params(dict(model.named_parameters())), expected)
    flat = flatten_params(model)
    flat += 1  # a copy, never a view of the parameters
    assert torch.equal(flatten_params(model), expected)


def test_saved_arrays_keep_their_sorted_order():
    from dlscope.experiments.flatness_common import flat_params

    arrays = {"param.1.weight": np.arange(4, dtype=np.float32).reshape(2, 2),
              "buffer.x": np.ones(3), "param.0.bias": np.array([7.0], dtype=np.float32)}
    np.testing.assert_array_equal(flat_params(arrays), [7.0, 0.0, 1.0, 2.0, 3.0])
    assert flat_params(arrays).dtype == np.float64
