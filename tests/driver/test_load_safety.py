"""A results folder is data, never code: reading one (`dlscope.load`, `dlscope report`)
never imports the module its summary.json records. The module is imported only when the
user names it (`plugins=`, `--plugin`, DLSCOPE_PLUGINS).

The folder is a real one: the toy experiment of docs/CONTRACT.md run once (quick, a few
seconds), then its summary.json pointed at `evilmod`, a copy of the toy whose import writes
a marker file. Copies of evilmod.py lie where an import could find them: in the results
folder, in the working directory, and with both on sys.path (as in a notebook started there),
so a stray import would succeed and leave its marker."""

from __future__ import annotations

import importlib
import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import contract_example

import dlscope
from dlscope.driver.result import NotLoaded
from dlscope.errors import UserError
from dlscope.experiments import registry

EXP = "toy-width"


def evil_source(marker: Path) -> str:
    """The toy experiment, plus a side effect at import: it writes `marker`."""
    future = "from __future__ import annotations\n"
    src = contract_example()
    assert future in src
    return src.replace(future, f"{future}import pathlib\n"
                       f"pathlib.Path({str(marker)!r}).write_text('imported')\n", 1)


def _registry_state():
    return ([dict(d) for d in (registry.REGISTRY, registry.PARTS, registry._checked)],
            registry._entry_points_loaded)


def _restore(state) -> None:
    saved, loaded = state
    for d, s in zip((registry.REGISTRY, registry.PARTS, registry._checked), saved):
        d.clear()
        d.update(s)
    registry._entry_points_loaded = loaded


@pytest.fixture(scope="module")
def toy_out(tmp_path_factory) -> Path:
    """An OUT folder holding one finished quick run of the toy experiment."""
    root = tmp_path_factory.mktemp("toy")
    (root / "toy_width.py").write_text(contract_example(), encoding="utf-8")
    state, old_env = _registry_state(), os.environ.pop("DLSCOPE_PLUGINS", None)
    sys.path.insert(0, str(root))
    try:
        dlscope.run(importlib.import_module("toy_width"), profile="quick", out=root / "out",
                    executor="local", threads=1, progress=False)
    finally:
        sys.path.remove(str(root))
        sys.modules.pop("toy_width", None)
        _restore(state)
        if old_env is not None:
            os.environ["DLSCOPE_PLUGINS"] = old_env
    return root / "out"


class Planted:
    """A copy of the toy folder whose summary.json names `module`, with evilmod.py planted."""

    def __init__(self, root: Path, toy_out: Path, module="evilmod"):
        self.out, self.cwd, self.markers = root / "out", root / "cwd", root / "markers"
        shutil.copytree(toy_out, self.out)
        self.cwd.mkdir()
        self.markers.mkdir()
        self.exp = self.out / EXP
        summary = json.loads((self.exp / "summary.json").read_text())
        summary["module"] = module
        (self.exp / "summary.json").write_text(json.dumps(summary))
        for where in (self.out, self.exp, self.cwd):
            (where / "evilmod.py").write_text(evil_source(self.markers / where.name))

    def imported(self) -> list[str]:
        return sorted(p.name for p in self.markers.iterdir())


@pytest.fixture
def planted(tmp_path, toy_out, monkeypatch):
    """The planted folder; the working directory and sys.path set as a user might have them;
    registry, sys.modules and DLSCOPE_PLUGINS restored afterwards."""
    state = _registry_state()
    p = Planted(tmp_path, toy_out)
    monkeypatch.chdir(p.cwd)
    for d in ("", str(p.cwd), str(p.out), str(p.exp)):
        monkeypatch.syspath_prepend(d)
    monkeypatch.delenv("DLSCOPE_PLUGINS", raising=False)
    monkeypatch.delitem(sys.modules, "evilmod", raising=False)
    importlib.invalidate_caches()
    yield p
    sys.modules.pop("evilmod", None)
    _restore(state)


def cli(*args: str, cwd: Path, pythonpath: list[Path], env_extra=None):
    path = os.pathsep.join([os.environ.get("PYTHONPATH", ""), *map(str, pythonpath)])
    env = {**os.environ, "PYTHONPATH": path, **(env_extra or {})}
    env.pop("DLSCOPE_PLUGINS", None) if not env_extra else None
    return subprocess.run([sys.executable, "-m", "dlscope.cli", *args], capture_output=True,
                          text=True, env=env, cwd=cwd, timeout=300, check=False)


# ------------------------------------------------------------------ dlscope.load

def test_load_refuses_an_unnamed_module_without_importing_it(planted):
    assert importlib.util.find_spec("evilmod") is not None   # a stray import would succeed
    for target in (planted.exp, planted.out):                  # the experiment, the OUT folder
        with pytest.raises(NotLoaded) as info:
            dlscope.load(target)
        msg = str(info.value)
        assert msg == (f"{planted.exp}: written by experiment module 'evilmod', which is not "
                       "loaded; to allow it: dlscope.load(DIR, plugins=['evilmod']) or "
                       "DLSCOPE_PLUGINS=evilmod")
        assert "\n" not in msg and isinstance(info.value, UserError)
    assert planted.imported() == [] and "evilmod" not in sys.modules
    assert EXP not in registry.REGISTRY


def test_load_imports_the_module_the_caller_names(planted, toy_out):
    r = dlscope.load(planted.exp, plugins=["evilmod"])
    assert len(planted.imported()) == 1           # one copy, the first on sys.path
    assert r.name == EXP and registry.REGISTRY[EXP] == "evilmod"
    # the same numbers as the folder's own table, and the figure redrawn from it
    rows = (planted.exp / "results.csv").read_text().strip().splitlines()
    assert len(r.tables["results"]) == len(rows) - 1 == 4
    assert set(r.figures) == {"test_mse"}
    assert r.observations == json.loads((toy_out / EXP / "summary.json").read_text())[
        "observations"]


def test_load_takes_the_environment_or_a_module_object(planted, monkeypatch):
    monkeypatch.setenv("DLSCOPE_PLUGINS", "evilmod")
    assert dlscope.load(planted.out)[EXP].name == EXP          # the OUT folder: a dict
    assert len(planted.imported()) == 1
    monkeypatch.delenv("DLSCOPE_PLUGINS")
    registry.REGISTRY.pop(EXP)
    registry._checked.pop(EXP)
    with pytest.raises(NotLoaded):
        dlscope.load(planted.exp)
    assert dlscope.load(planted.exp, plugins=sys.modules["evilmod"]).name == EXP


def test_a_builtin_name_uses_the_builtin_module_never_the_recorded_one(planted):
    summary = json.loads((planted.exp / "summary.json").read_text())
    (planted.exp / "summary.json").write_text(json.dumps({**summary, "experiment": "grad-norm"}))
    with pytest.raises(UserError, match="not a readable results folder"):   # toy's config
        dlscope.load(planted.exp)
    assert planted.imported() == [] and "evilmod" not in sys.modules


@pytest.mark.parametrize("module, words", [
    ("dlscope.experiments.evil", "module 'dlscope.experiments.evil', which is not one of "
                                 "dlscope's built-in experiments; refused (not imported)"),
    ("os", "module 'os', which is not loaded; to allow it: dlscope.load(DIR, plugins=['os'])"),
    ("evilmod; import os", "summary.json names no module path ('evilmod; import os')"),
    (None, "summary.json names no module path (None)"),
])
def test_other_recorded_names_are_refused_the_same_way(planted, monkeypatch, module, words):
    # dlscope.experiments.evil would be importable: evil.py beside the package's path
    import dlscope.experiments as pkg

    (planted.cwd / "evil.py").write_text(evil_source(planted.markers / "dlscope-evil"))
    monkeypatch.setattr(pkg, "__path__", [*pkg.__path__, str(planted.cwd)])
    monkeypatch.delitem(sys.modules, "dlscope.experiments.evil", raising=False)
    summary = json.loads((planted.exp / "summary.json").read_text())
    (planted.exp / "summary.json").write_text(json.dumps({**summary, "module": module}))
    with pytest.raises(NotLoaded) as info:
        dlscope.load(planted.exp)
    assert words in str(info.value) and "\n" not in str(info.value)
    assert planted.imported() == [] and "dlscope.experiments.evil" not in sys.modules


# ------------------------------------------------------------------ dlscope report

def test_report_reads_the_folder_without_importing_the_module(planted):
    r = cli("report", str(planted.out), cwd=planted.cwd,
            pythonpath=[planted.cwd, planted.out, planted.exp])
    assert r.returncode == 0, r.stderr
    assert "Traceback" not in r.stderr and planted.imported() == []
    page = (planted.out / "report.html").read_text()
    section = page[page.index(f'id="exp-{EXP}"'):]             # rendered from its files
    assert "Toy: width vs fit of sinc(5x)" in section[:section.index("</h3>")]


def test_report_imports_a_plugin_only_when_named(planted):
    r = cli("report", str(planted.out), "--plugin", "evilmod", cwd=planted.cwd,
            pythonpath=[planted.out])
    assert r.returncode == 0, r.stderr
    assert len(planted.imported()) == 1       # the named module (python -m: the cwd first)


def test_report_names_a_missing_plugin_in_one_line(planted):
    r = cli("report", str(planted.out), "--plugin", "no_such_mod", cwd=planted.cwd,
            pythonpath=[])
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert r.stderr.strip().count("\n") == 0 and "'no_such_mod': cannot import it" in r.stderr
