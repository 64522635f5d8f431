"""The layers of src/dlscope, read from its imports (every import, top-level or inside a
function, relative ones resolved): (a) imports point down only, (b) no circle of imports
between files, (c) no private name (`_x`, not a dunder) taken from another module, and every
file belongs to a layer.

Bottom to top (a layer imports only its own or lower layers):

    base         errors, atomic, plotting, contention, version
    data         dlscope/data/
    models       dlscope/models.py  (may import data; data knows nothing of models: today
                 neither imports the other, the networks are the consumers of the inputs)
    train        dlscope/train/
    metrics      dlscope/metrics/
    contract     dlscope/contract/  (ExperimentConfig, limits, RunSpec/RunResult/RunContext)
    execution    dlscope/execution/ (executors, workers, store)
    experiments  dlscope/experiments/
    report       dlscope/report/
    driver       dlscope/driver/    (runner, suite, result, configdoc)
    bench        dlscope/bench/
    cli          dlscope/cli.py
    face         dlscope/__init__.py (run / load / config_of, __version__)

`from dlscope import X` imports the submodule dlscope.X when X is one, else a name of the
face (dlscope/__init__.py), which is the top layer: an upward import from anything below.

Circles are computed on files: `import a.b` and `from a.b import name` point at a/b.py (or
a/b/__init__.py), `from a import b` at a/b.py when b is a submodule. The implicit import of
the parent packages' __init__ files that Python makes on the way is not an edge: a package
__init__ that imports its submodules, and a submodule importing a sibling, is no circle; a
submodule taking a name from its own package's __init__ (which imports it) is one.

Not seen: imports by a computed name (`importlib.import_module(f"dlscope.{x}")`); a constant
string passed to `importlib.import_module` is read as an import. (tests/test_import_hygiene.py
checks what importing changes at run time; this file checks only the import graph.)

The checks are small pure functions over a source root, so test_rules_catch_planted_* below
can feed them tiny fake trees and see each rule fail.
"""

from __future__ import annotations

import ast
import textwrap
from dataclasses import dataclass
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"
TOP = "dlscope"

LAYERS: list[tuple[str, tuple[str, ...]]] = [  # bottom to top; module-name prefixes
    ("base", ("dlscope.errors", "dlscope.atomic", "dlscope.plotting", "dlscope.contention",
              "dlscope.version")),
    ("data", ("dlscope.data",)),
    ("models", ("dlscope.models",)),
    ("train", ("dlscope.train",)),
    ("metrics", ("dlscope.metrics",)),
    ("contract", ("dlscope.contract",)),
    ("execution", ("dlscope.execution",)),
    ("experiments", ("dlscope.experiments",)),
    ("report", ("dlscope.report",)),
    ("driver", ("dlscope.driver",)),
    ("bench", ("dlscope.bench",)),
    ("cli", ("dlscope.cli",)),
    ("face", ("dlscope",)),  # dlscope/__init__.py only (exact match)
]


@dataclass(frozen=True)
class Edge:
    """One import in `src` (a module name) of `dst` (a module name in the tree)."""
    src: str
    dst: str
    file: str  # path relative to the source root
    line: int
    names: tuple[str, ...] = ()  # `from dst import names` (names that are not submodules)
    via_attribute: bool = False  # `mod._name` on an imported module (rule c only)

    def where(self) -> str:
        return f"{self.file}:{self.line}"


# -- reading the tree --------------------------------------------------------------------

def modules_of(src_root: Path, top: str = TOP) -> dict[str, Path]:
    """Module name -> file, for every .py file of package `top` under `src_root`."""
    out = {}
    for path in sorted((Path(src_root) / top).rglob("*.py")):
        parts = list(path.relative_to(src_root).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


def _is_private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def _resolve_relative(module: str, is_package: bool, level: int, target: str | None) -> str:
    base = module.split(".") if is_package else module.split(".")[:-1]
    if level > 1:
        base = base[: len(base) - (level - 1)]
    return ".".join([*base, *([target] if target else [])])


def _in_tree(name: str, modules: dict[str, Path]) -> str | None:
    """The longest prefix of dotted `name` that is a module of the tree."""
    parts = name.split(".")
    for n in range(len(parts), 0, -1):
        cand = ".".join(parts[:n])
        if cand in modules:
            return cand
    return None


def _imports_of(tree: ast.AST, module: str, is_package: bool, modules: dict[str, Path]):
    """(line, target module, names taken from it, bindings) for every import in the tree.
    bindings: local name -> module name, for names an import binds to a module of the tree."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                target = _in_tree(alias.name, modules)
                if target is None:
                    continue
                bind = ({alias.asname: target} if alias.asname
                        else {alias.name.split(".")[0]: alias.name.split(".")[0]})
                yield node.lineno, target, (), bind
        elif isinstance(node, ast.ImportFrom):
            base = (_resolve_relative(module, is_package, node.level, node.module)
                    if node.level else node.module)
            if base not in modules:
                continue
            names, bind = [], {}
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                if sub in modules:  # `from pkg import submodule`
                    yield node.lineno, sub, (), {alias.asname or alias.name: sub}
                else:
                    names.append(alias.name)
            if names:
                yield node.lineno, base, tuple(names), bind
        elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
              and node.func.attr == "import_module" and node.args
              and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str)):
            target = _in_tree(node.args[0].value, modules)
            if target is not None:
                yield node.lineno, target, (), {}


def _dotted(expr: ast.expr) -> str | None:
    if isinstance(expr, ast.Name):
        return expr.id
    if isinstance(expr, ast.Attribute):
        head = _dotted(expr.value)
        return f"{head}.{expr.attr}" if head else None
    return None


def _private_attributes(tree, bindings, module, rel, modules) -> list[Edge]:
    """`mod._name` where `mod` (or `pkg.mod`) is bound by an import to another module."""
    out = []
    for node in ast.walk(tree):
        if not (isinstance(node, ast.Attribute) and _is_private(node.attr)):
            continue
        dotted = _dotted(node.value)
        if dotted is None:
            continue
        head, *rest = dotted.split(".")
        if head not in bindings:
            continue
        target = ".".join([bindings[head], *rest])
        if target in modules and target != module:
            out.append(Edge(module, target, rel, node.lineno, (node.attr,), via_attribute=True))
    return out


def build_graph(src_root: Path, top: str = TOP) -> list[Edge]:
    """Every import between modules of package `top` under `src_root`, with file and line
    (plus `mod._name` accesses on imported modules, marked via_attribute)."""
    src_root = Path(src_root)
    modules = modules_of(src_root, top)
    edges = []
    for module, path in modules.items():
        rel = path.relative_to(src_root).as_posix()
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        is_package = path.name == "__init__.py"
        bindings: dict[str, str] = {}
        for line, target, names, bind in _imports_of(tree, module, is_package, modules):
            bindings.update(bind)
            if target != module:
                edges.append(Edge(module, target, rel, line, names))
        edges += _private_attributes(tree, bindings, module, rel, modules)
    return edges


# -- the rules ---------------------------------------------------------------------------

def layer_of(module: str, layers=LAYERS) -> int | None:
    """The rank of a module's layer (0 = bottom), or None when no layer claims it."""
    best, best_len = None, -1
    for rank, (_, prefixes) in enumerate(layers):
        for p in prefixes:
            exact_only = p == TOP  # the face is dlscope/__init__.py, not the whole package
            hit = module == p or (not exact_only and module.startswith(p + "."))
            if hit and len(p) > best_len:
                best, best_len = rank, len(p)
    return best


def _layer_name(rank: int | None, layers=LAYERS) -> str:
    return "no layer" if rank is None else layers[rank][0]


def upward_imports(edges: list[Edge], layers=LAYERS) -> list[str]:
    out = []
    for e in edges:
        if e.via_attribute:
            continue
        lo, hi = layer_of(e.src, layers), layer_of(e.dst, layers)
        if lo is not None and hi is not None and hi > lo:
            what = f"{e.dst} ({', '.join(e.names)})" if e.names else e.dst
            out.append(f"{e.where()}: {e.src} [{_layer_name(lo, layers)}] imports {what} "
                       f"[{_layer_name(hi, layers)}], a higher layer")
    return out


def unlayered(modules, layers=LAYERS) -> list[str]:
    return [f"{m}: in no layer (add it to LAYERS in tests/test_layers.py)"
            for m in modules if layer_of(m, layers) is None]


def private_imports(edges: list[Edge]) -> list[str]:
    out = []
    for e in edges:
        for name in e.names:
            if _is_private(name):
                how = f"{e.dst}.{name}" if e.via_attribute else f"from {e.dst} import {name}"
                out.append(f"{e.where()}: {e.src} takes the private name {name} ({how})")
        # `from pkg import _mod` / `import pkg._mod` outside pkg: a private module
        last = e.dst.rsplit(".", 1)
        if (not e.via_attribute and len(last) == 2 and _is_private(last[1])
                and not e.src.startswith(last[0] + ".") and e.src != last[0]):
            out.append(f"{e.where()}: {e.src} imports the private module {e.dst}")
    return out


def strongly_connected(nodes, succ) -> list[list[str]]:
    """Tarjan's strongly connected components (iterative), each as a sorted list."""
    index, low, on_stack, stack, comps, counter = {}, {}, set(), [], [], [0]
    for root in nodes:
        if root in index:
            continue
        work = [(root, iter(sorted(succ.get(root, ()))))]
        index[root] = low[root] = counter[0]
        counter[0] += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            v, it = work[-1]
            w = next(it, None)
            if w is not None:
                if w not in index:
                    index[w] = low[w] = counter[0]
                    counter[0] += 1
                    stack.append(w)
                    on_stack.add(w)
                    work.append((w, iter(sorted(succ.get(w, ())))))
                elif w in on_stack:
                    low[v] = min(low[v], index[w])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[v])
            if low[v] == index[v]:
                comp = []
                while True:
                    w = stack.pop()
                    on_stack.discard(w)
                    comp.append(w)
                    if w == v:
                        break
                comps.append(sorted(comp))
    return comps


def circles(edges: list[Edge]) -> list[str]:
    real = [e for e in edges if not e.via_attribute]
    succ: dict[str, set[str]] = {}
    for e in real:
        succ.setdefault(e.src, set()).add(e.dst)
    nodes = sorted({e.src for e in real} | {e.dst for e in real})
    out = []
    for comp in strongly_connected(nodes, succ):
        if len(comp) < 2:
            continue
        members = set(comp)
        inside = sorted({f"{e.where()} {e.src} -> {e.dst}" for e in real
                         if e.src in members and e.dst in members})
        out.append(f"circle of imports between {', '.join(comp)}: " + "; ".join(inside))
    return out


def violations(src_root: Path, top: str = TOP, layers=LAYERS) -> list[str]:
    edges = build_graph(src_root, top)
    return (unlayered(modules_of(src_root, top), layers) + upward_imports(edges, layers)
            + circles(edges) + private_imports(edges))


# -- the real tree -----------------------------------------------------------------------

def test_src_respects_layers():
    found = violations(SRC)
    assert not found, f"{len(found)} layer violation(s):\n" + "\n".join(found)


def test_the_graph_sees_the_real_tree():
    """The reader is not vacuous: it finds known imports of today's tree."""
    edges = build_graph(SRC)
    pairs = {(e.src, e.dst) for e in edges}
    assert ("dlscope.execution.store", "dlscope.atomic") in pairs
    assert ("dlscope.cli", "dlscope.driver.runner") in pairs or any(
        e.src == "dlscope.cli" and e.dst.startswith("dlscope.driver") for e in edges)
    assert layer_of("dlscope") == len(LAYERS) - 1 and layer_of("dlscope.data.cache") == 1


# -- the rules fail on planted faults (fake trees in tmp_path) ---------------------------

def plant(root: Path, files: dict[str, str]) -> Path:
    """Write a fake source tree: {"dlscope/x.py": source}; __init__.py files added."""
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text), encoding="utf-8")
    for d in {p.parent for p in root.rglob("*.py")}:
        (d / "__init__.py").touch(exist_ok=True)
    return root


CLEAN = {
    "dlscope/__init__.py": """
        from dlscope.version import __version__

        def run():
            from dlscope.driver.runner import go
            return go()
        """,
    "dlscope/version.py": "__version__ = '0'\n",
    "dlscope/errors.py": "class UserError(ValueError):\n    pass\n",
    "dlscope/data/__init__.py": """
        from . import _helpers
        from .kinds import build
        from dlscope.data.cache import load
        """,
    "dlscope/data/kinds.py": "from . import cache\nfrom ..errors import UserError\nbuild = 1\n",
    "dlscope/data/cache.py": "import dlscope.errors\nload = 2\n",
    "dlscope/data/_helpers.py": "x = 1\n",
    "dlscope/contract/runspec.py": """
        from dlscope.data import build
        from dlscope import errors
        import dlscope.data.kinds as kinds

        def f():
            return errors.UserError, kinds.build, errors.__name__
        """,
    "dlscope/driver/runner.py": """
        import importlib
        from dlscope.contract.runspec import f

        def go():
            return importlib.import_module("dlscope.data.cache"), f()
        """,
}
CLEAN = {rel: textwrap.dedent(text).lstrip("\n") for rel, text in CLEAN.items()}


def test_rules_pass_a_clean_tree(tmp_path):
    root = plant(tmp_path, CLEAN)
    assert violations(root) == []
    edges = {(e.src, e.dst) for e in build_graph(root)}
    assert ("dlscope", "dlscope.driver.runner") in edges           # function-local
    assert ("dlscope.data.kinds", "dlscope.data.cache") in edges    # `from . import cache`
    assert ("dlscope.data.kinds", "dlscope.errors") in edges        # `from ..errors import`
    assert ("dlscope.driver.runner", "dlscope.data.cache") in edges  # import_module("...")
    assert ("dlscope.contract.runspec", "dlscope.data") in edges    # a name of data/__init__
    assert ("dlscope.contract.runspec", "dlscope.errors") in edges  # `from dlscope import x`


@pytest.mark.parametrize("where, source, expect", [
    ("dlscope/data/cache.py", "from dlscope.contract.runspec import f\n",
     "dlscope/data/cache.py:3: dlscope.data.cache [data] imports dlscope.contract.runspec (f) "
     "[contract]"),
    ("dlscope/data/cache.py", "def g():\n    import dlscope.driver.runner\n",
     "dlscope/data/cache.py:4: dlscope.data.cache [data] imports dlscope.driver.runner"),
    ("dlscope/data/cache.py", "from dlscope import __version__\n",  # a name of the face
     "dlscope/data/cache.py:3: dlscope.data.cache [data] imports dlscope (__version__) [face]"),
    ("dlscope/data/cache.py", "from ..driver import runner\n",  # relative, resolved
     "dlscope/data/cache.py:3: dlscope.data.cache [data] imports dlscope.driver.runner"),
])
def test_rules_catch_planted_upward_import(tmp_path, where, source, expect):
    root = plant(tmp_path, {**CLEAN, where: CLEAN.get(where, "") + source})
    found = upward_imports(build_graph(root))
    assert any(v.startswith(expect) for v in found), found
    assert any(v.startswith(expect) for v in violations(root))


def test_rules_catch_a_file_in_no_layer(tmp_path):
    root = plant(tmp_path, {**CLEAN, "dlscope/stray.py": "x = 1\n"})
    assert violations(root) == ["dlscope.stray: in no layer (add it to LAYERS in "
                                "tests/test_layers.py)"]


def test_rules_catch_planted_circle(tmp_path):
    root = plant(tmp_path, {**CLEAN, "dlscope/data/cache.py": CLEAN["dlscope/data/cache.py"]
                            + "from dlscope.data.kinds import build\n"})
    found = circles(build_graph(root))
    assert len(found) == 1, found
    assert found[0].startswith("circle of imports between dlscope.data.cache, "
                               "dlscope.data.kinds: ")
    assert "dlscope/data/cache.py:3 dlscope.data.cache -> dlscope.data.kinds" in found[0]
    assert "dlscope/data/kinds.py:1 dlscope.data.kinds -> dlscope.data.cache" in found[0]


def test_rules_catch_circle_behind_function_local_import(tmp_path):
    # three files, the last link inside a function, within one layer (no upward import)
    root = plant(tmp_path, {**CLEAN,
                            "dlscope/train/a.py": "from dlscope.train import b\n",
                            "dlscope/train/b.py": "from dlscope.train.c import z\n",
                            "dlscope/train/c.py": """
                                z = 1

                                def later():
                                    from . import a
                                    return a
                                """})
    found = violations(root)
    assert len(found) == 1 and found[0].startswith(
        "circle of imports between dlscope.train.a, dlscope.train.b, dlscope.train.c: "), found
    assert "dlscope/train/c.py:5 dlscope.train.c -> dlscope.train.a" in found[0]


def test_rules_catch_submodule_taking_a_name_from_its_own_package_init(tmp_path):
    # data/__init__ imports kinds; kinds taking `load`, re-exported by data/__init__, closes it
    root = plant(tmp_path, {**CLEAN, "dlscope/data/kinds.py": CLEAN["dlscope/data/kinds.py"]
                            + "from dlscope.data import load\n"})
    found = circles(build_graph(root))
    assert len(found) == 1 and "dlscope.data, " in found[0], found
    assert "dlscope/data/kinds.py:4 dlscope.data.kinds -> dlscope.data" in found[0]


@pytest.mark.parametrize("source, expect", [
    ("from dlscope.data.kinds import _secret\n",
     "dlscope/driver/runner.py:6: dlscope.driver.runner takes the private name _secret "
     "(from dlscope.data.kinds import _secret)"),
    ("from ..data.kinds import build, _secret as public\n",
     "dlscope/driver/runner.py:6: dlscope.driver.runner takes the private name _secret"),
    ("from dlscope.data import kinds\nX = kinds._secret\n",
     "dlscope/driver/runner.py:7: dlscope.driver.runner takes the private name _secret "
     "(dlscope.data.kinds._secret)"),
    ("import dlscope.data.kinds\nX = dlscope.data.kinds._secret\n",
     "dlscope/driver/runner.py:7: dlscope.driver.runner takes the private name _secret"),
    ("from dlscope.data import _helpers\n",
     "dlscope/driver/runner.py:6: dlscope.driver.runner imports the private module "
     "dlscope.data._helpers"),
])
def test_rules_catch_planted_private_import(tmp_path, source, expect):
    runner = CLEAN["dlscope/driver/runner.py"]
    root = plant(tmp_path, {**CLEAN, "dlscope/data/kinds.py": CLEAN["dlscope/data/kinds.py"]
                            + "_secret = 3\n",
                            "dlscope/driver/runner.py": runner + source})
    assert runner.count("\n") == 5  # the planted line is line 6
    found = private_imports(build_graph(root))
    assert any(v.startswith(expect) for v in found), found
    assert any(v.startswith(expect) for v in violations(root))


def test_dunder_and_aliases_are_not_private(tmp_path):
    root = plant(tmp_path, {**CLEAN, "dlscope/driver/runner.py": CLEAN["dlscope/driver/runner.py"]
                            + "from dlscope.data.kinds import build as _build\n"
                            + "from dlscope import errors as _errors\nY = _errors.__doc__\n"})
    assert violations(root) == []
