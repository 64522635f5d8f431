"""The experiment registry: the built-in experiments in the assignment's order, then outside
ones. An experiment is a module that satisfies `Experiment` (docs/CONTRACT.md).

An outside experiment (a module in the user's own package or working folder) is registered by
`register(module)`, which checks the contract and says in one line what is missing. Routes
that end there:

- `dlscope.experiments.register(mymodule)` (or `dlscope.run(mymodule, ...)`) in Python;
- `--plugin mypkg.myexp` on `dlscope run`, `list` and `report` (repeatable);
- the environment variable `DLSCOPE_PLUGINS=mypkg.myexp,other.exp` (module paths);
- an entry point in the group `dlscope.experiments` of an installed package, e.g. in its
  pyproject.toml: `[project.entry-points."dlscope.experiments"]` `myexp = "mypkg.myexp"`;
- `dlscope.load(DIR, plugins=["mypkg.myexp"])`.

A results folder is data: the module its summary.json records is never imported because the
folder names it; `dlscope.load` refuses, in one line naming the module, until the user
names it by one of the routes above.

Modules are imported only when asked for (`get`), so `dlscope list` does not load torch
nine times over for nothing and a broken module breaks only itself.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import importlib.util
import os
import re
import sys
import warnings
from types import ModuleType
from typing import Protocol, runtime_checkable

from pydantic import BaseModel

from dlscope.errors import UserError

# name -> module path, in the assignment's order (deep vs shallow, optimization,
# generalization); outside experiments are appended as they are registered.
BUILTIN: dict[str, str] = {
    "function-fit": "dlscope.experiments.function_fit",
    "mnist-models": "dlscope.experiments.mnist_models",
    "weight-pca": "dlscope.experiments.weight_pca",
    "grad-norm": "dlscope.experiments.grad_norm",
    "minimal-ratio": "dlscope.experiments.minimal_ratio",
    "curvature": "dlscope.experiments.curvature",
    "random-labels": "dlscope.experiments.random_labels",
    "param-count": "dlscope.experiments.param_count",
    "interpolation": "dlscope.experiments.interpolation",
    "sensitivity": "dlscope.experiments.sensitivity",
}
REGISTRY: dict[str, str] = dict(BUILTIN)
# The report's part titles, by SECTION; an outside experiment may add one with `PART`.
PARTS: dict[str, str] = {"1-1": "Deep vs shallow", "1-2": "Optimization",
                         "1-3": "Generalization"}
PLUGINS_ENV = "DLSCOPE_PLUGINS"
ENTRY_POINT_GROUP = "dlscope.experiments"
NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")   # becomes a folder name

_checked: dict[str, ModuleType] = {}     # name -> the module that passed the check
_entry_points_loaded = False


@runtime_checkable
class Experiment(Protocol):
    """The experiment contract, as a module's top-level names (docs/CONTRACT.md).

    Optional, used when present: `run_many(params_list, ctx) -> list[RunResult]` (specs that
    share a `group` run as one batch), `memory(params) -> {part: bytes}` (what a run
    allocates beyond its model and data, for the up-front size limits), `PART` (title of its
    SECTION's part in the report), `headline`, `statistics` and `verdicts` (each
    `(cfg, tables) -> ...`).

    Example:
        >>> isinstance(get("grad-norm"), Experiment)
        True
    """

    NAME: str            # the experiment's name on the command line and its folder name
    SECTION: str         # the report groups experiments by it, e.g. "1-2"
    TITLE: str
    QUESTION: str        # one sentence
    Config: type         # a pydantic model (ExperimentConfig); defaults = assignment profile
    PROFILES: dict       # profile name -> config overrides, e.g. {"quick": {...}}

    def runs(self, cfg) -> list: ...                      # the RunSpecs, fn=__name__
    def run_one(self, params: dict, ctx) -> object: ...   # one RunSpec -> RunResult
    def analyze(self, cfg, results: list) -> dict: ...    # -> {table name: DataFrame}
    def figures(self, cfg, tables: dict) -> dict: ...     # -> {figure name: Figure}
    def observations(self, cfg, tables: dict) -> list: ...  # -> sentences


def _members(proto: type) -> list[str]:
    own = [k for k, v in vars(proto).items() if callable(v) and not k.startswith("_")]
    return [*proto.__annotations__, *own]


CONTRACT = _members(Experiment)
STRINGS = ("NAME", "SECTION", "TITLE", "QUESTION")
OPTIONAL_CALLABLES = ("run_many", "memory", "headline", "statistics", "verdicts")


def contract_problems(module) -> list[str]:
    """What `module` lacks or has wrong, as short phrases; [] when it satisfies the contract.

    Args:
        module: The experiment module (or any object with its names as attributes).

    Returns:
        One phrase per problem ("missing runs, figures", "NAME is not a non-empty string").

    Example:
        >>> import types
        >>> contract_problems(types.ModuleType("m"))
        ['missing NAME, SECTION, TITLE, QUESTION, Config, PROFILES, runs, run_one, analyze,
          figures, observations']
        >>> contract_problems(get("grad-norm"))
        []
    """
    members = CONTRACT
    missing = [m for m in members if not hasattr(module, m)]
    problems = [f"missing {', '.join(missing)}"] if missing else []
    for m in STRINGS:
        v = getattr(module, m, "")
        if m not in missing and not (isinstance(v, str) and v.strip()):
            problems.append(f"{m} is not a non-empty string")
    name = getattr(module, "NAME", "")
    if isinstance(name, str) and name.strip() and (not NAME_PATTERN.fullmatch(name)
                                                   or name == "all"):
        problems.append(f"NAME {name!r} is not a folder name (letters, digits, . _ -; not 'all')")
    cfg = getattr(module, "Config", None)
    if "Config" not in missing and not (isinstance(cfg, type) and issubclass(cfg, BaseModel)):
        problems.append("Config is not a pydantic model class")
    profiles = getattr(module, "PROFILES", None)
    if "PROFILES" not in missing and not (isinstance(profiles, dict) and all(
            isinstance(k, str) and isinstance(v, dict) for k, v in profiles.items())):
        problems.append("PROFILES is not a dict of name -> dict of overrides")
    for m in [*members[len(Experiment.__annotations__):], *OPTIONAL_CALLABLES]:
        if hasattr(module, m) and not callable(getattr(module, m)):
            problems.append(f"{m} is not callable")
    return problems


def check(module) -> None:
    """Raise UserError (one line) unless `module` satisfies the experiment contract.

    Args:
        module: The experiment module.

    Returns:
        None.

    Raises:
        UserError: Naming the module and its `contract_problems`.

    Example:
        >>> import types
        >>> check(types.ModuleType("m"))
        Traceback (most recent call last):
        ...
        dlscope.errors.UserError: experiment module m: missing NAME, ... docs/CONTRACT.md)
    """
    problems = contract_problems(module)
    if problems:
        where = getattr(module, "__name__", repr(module))
        raise UserError(f"experiment module {where}: {'; '.join(problems)} "
                        f"(the contract: docs/CONTRACT.md)")


def _import(path: str, via: str) -> ModuleType:
    try:
        return importlib.import_module(path)
    except ImportError as exc:
        raise UserError(f"{via} {path!r}: cannot import it ({exc})") from None


def register(module: ModuleType | str) -> ModuleType:
    """Check an experiment module (or its import path) against the contract and add it to the
    registry under its NAME; returns the module. Registering the same module again is a no-op;
    another module under a registered NAME is an error.

    Args:
        module: The module, or its import path.

    Returns:
        The module.

    Raises:
        UserError: When it cannot be imported, fails `check`, or its NAME is taken.

    Example:
        >>> register("dlscope.experiments.grad_norm").NAME
        'grad-norm'
    """
    if isinstance(module, str):
        module = _import(module, "experiment module")
    if not isinstance(module, ModuleType):
        raise UserError(f"register() takes an experiment module, got {type(module).__name__}")
    check(module)
    name, path = module.NAME, module.__name__
    if REGISTRY.get(name, path) != path:
        raise UserError(f"experiment {name!r} from {path} clashes with the registered "
                        f"{name!r} from {REGISTRY[name]}: rename one (its NAME)")
    REGISTRY[name] = path
    _checked[name] = module
    part = getattr(module, "PART", None)
    if isinstance(part, str) and part:
        PARTS.setdefault(module.SECTION, part)
    return module


def load_plugins(paths, via: str = "--plugin") -> list[ModuleType]:
    """Import and register experiment modules by import path (the CLI's --plugin).

    Args:
        paths: Import paths.
        via: Where the paths came from, for error messages.

    Returns:
        The registered modules.

    Example:
        >>> [m.NAME for m in load_plugins(["dlscope.experiments.curvature"])]
        ['curvature']
    """
    return [register(_import(p, via)) for p in paths]


def _entry_points() -> None:
    """Register the installed packages' experiments, once per process. A broken one is a
    warning, not an error: the user did not ask for it in this command."""
    global _entry_points_loaded
    if _entry_points_loaded:
        return
    _entry_points_loaded = True
    for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        try:
            register(ep.load())
        except Exception as exc:  # noqa: BLE001 - anything a third-party import raises
            warnings.warn(f"entry point {ep.name} = {ep.value} ({ENTRY_POINT_GROUP}): "
                          f"skipped: {exc}", stacklevel=2)


def discover() -> None:
    """Register what DLSCOPE_PLUGINS names and what installed packages declare.

    Returns:
        None; the modules land in `REGISTRY`.

    Example:
        >>> discover()
        >>> "function-fit" in REGISTRY
        True
    """
    _entry_points()
    paths = [p.strip() for p in os.environ.get(PLUGINS_ENV, "").split(",") if p.strip()]
    load_plugins(paths, via=PLUGINS_ENV)


def _findable(path: str) -> bool:
    if path in sys.modules:
        return True
    try:
        return importlib.util.find_spec(path) is not None
    except (ImportError, ValueError):
        return False


def available() -> list[str]:
    """Registered experiments whose module exists: the assignment's order, then outside ones.

    Returns:
        Their names.

    Example:
        >>> available()[:3]
        ['function-fit', 'mnist-models', 'weight-pca']
    """
    discover()
    return [name for name, path in REGISTRY.items() if _findable(path)]


def get(name: str) -> ModuleType:
    """The checked module of a registered experiment (UserError for an unknown name).

    Args:
        name: The experiment's NAME.

    Returns:
        Its module, imported and checked against the contract (once per process).

    Raises:
        UserError: For an unknown name, a module that fails `check`, or one whose NAME
            differs.

    Example:
        >>> get("grad-norm").NAME
        'grad-norm'
        >>> get("nope")
        Traceback (most recent call last):
        ...
        dlscope.errors.UserError: unknown experiment 'nope' (one of: function-fit, ...)
    """
    if name not in REGISTRY or not _findable(REGISTRY[name]):
        names = available()
        if name not in names:
            raise UserError(f"unknown experiment {name!r} (one of: {', '.join(names)})")
    path = REGISTRY[name]
    mod = _checked.get(name)
    if mod is not None and mod.__name__ == path:
        return mod
    mod = importlib.import_module(path)
    check(mod)
    if mod.NAME != name:
        raise UserError(f"experiment {name!r}: its module {path} says NAME = {mod.NAME!r}")
    _checked[name] = mod
    return mod


def describe(name: str) -> dict[str, str]:
    """SECTION/TITLE/QUESTION of a registered experiment without importing it (read from its
    source with `ast` unless it is imported already), as {"section": ...}; {} if unknown.
    The report uses it for experiments that left no summary, so a broken module can never
    break the report.

    Args:
        name: The experiment's NAME.

    Returns:
        {"section": ..., "title": ..., "question": ...} (the string constants found).

    Example:
        >>> describe("curvature")["section"], describe("nope")
        ('1-2', {})
    """
    path = REGISTRY.get(name)
    if path is None:
        return {}
    mod = sys.modules.get(path)
    if mod is not None:
        return {k.lower(): v for k in ("SECTION", "TITLE", "QUESTION")
                if isinstance(v := getattr(mod, k, None), str)}
    return _constants_from_source(path)


def _constants_from_source(path: str) -> dict[str, str]:
    import ast
    from pathlib import Path

    try:
        spec = importlib.util.find_spec(path)
        origin = spec.origin if spec else None
        tree = ast.parse(Path(origin).read_bytes()) if origin else None
    except (ImportError, OSError, SyntaxError, ValueError):
        return {}
    out = {}
    for node in tree.body if tree else []:
        if isinstance(node, ast.Assign) and len(node.targets) == 1 and \
                isinstance(node.targets[0], ast.Name) and \
                node.targets[0].id in ("SECTION", "TITLE", "QUESTION"):
            try:
                value = ast.literal_eval(node.value)
            except ValueError:
                continue
            if isinstance(value, str):
                out[node.targets[0].id.lower()] = value
    return out


def part_title(section: str) -> str:
    """The report's title for a SECTION's group.

    Args:
        section: An experiment's SECTION, e.g. "1-2".

    Returns:
        The part's title; the section itself when none is known; "Other experiments" for an
        empty or unknown ("?") section.

    Example:
        >>> part_title("1-2"), part_title(""), part_title("2-1")
        ('Optimization', 'Other experiments', '2-1')
    """
    return PARTS.get(section, "Other experiments" if section in ("", "?") else section)

