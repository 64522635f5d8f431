"""Open experiment registration: the contract check, the plugin routes (`--plugin`,
DLSCOPE_PLUGINS, entry points, `dlscope.load(DIR, plugins=...)`), the report's sections
from the registry, and an experiment defined outside the package run from the CLI and from
`dlscope.run`. That experiment is the example of docs/CONTRACT.md, read from the doc, so the
doc cannot drift from what runs."""

from __future__ import annotations

import importlib
import json
import math
import os
import subprocess
import sys
import types
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from helpers import contract_example

import dlscope
from dlscope import experiments
from dlscope.contract.runspec import RunContext, RunSpec, execute
from dlscope.errors import UserError
from dlscope.experiments import registry
from dlscope.report import build_report

MODULE = "toy_width"
NAME = "toy-width"


@pytest.fixture
def clean_registry():
    """The registry as it was before the test (a test may register and unregister)."""
    state = [registry.REGISTRY, registry.PARTS, registry._checked]
    saved = [dict(d) for d in state]
    loaded = registry._entry_points_loaded
    yield
    for d, s in zip(state, saved):
        d.clear()
        d.update(s)
    registry._entry_points_loaded = loaded


@pytest.fixture
def plugin_dir(tmp_path, monkeypatch, clean_registry) -> Path:
    """A folder outside the package holding toy_width.py, on sys.path (and so on the
    sys.path of spawned workers); the module is forgotten afterwards."""
    d = tmp_path / "plugins"
    d.mkdir()
    (d / f"{MODULE}.py").write_text(contract_example(), encoding="utf-8")
    monkeypatch.syspath_prepend(str(d))
    monkeypatch.delitem(sys.modules, MODULE, raising=False)
    monkeypatch.delenv("DLSCOPE_PLUGINS", raising=False)
    yield d
    sys.modules.pop(MODULE, None)


def forget(name: str) -> None:
    registry.REGISTRY.pop(name, None)
    registry._checked.pop(name, None)


def cli(*args: str, env_extra: dict | None = None, cwd=None) -> subprocess.CompletedProcess:
    env = {**os.environ, **(env_extra or {})}
    return subprocess.run([sys.executable, "-m", "dlscope.cli", *args], capture_output=True,
                          text=True, env=env, cwd=cwd, timeout=300, check=False)


def reference_mse(params: dict, width: int) -> tuple[float, float]:
    """A second implementation of the example's training: torch.nn layers, one member."""
    from dlscope.data import function_dataset

    d = dict(params["data"])
    d.pop("kind")
    ds = function_dataset(**d)
    g = torch.Generator().manual_seed(params["seed"])
    w1 = torch.randn(1, width, generator=g)
    w2 = torch.randn(width, 1, generator=g) / math.sqrt(width)
    net = torch.nn.Sequential(torch.nn.Linear(1, width), torch.nn.Tanh(),
                              torch.nn.Linear(width, 1))
    with torch.no_grad():
        net[0].weight.copy_(w1.T)
        net[0].bias.zero_()
        net[2].weight.copy_(w2.T)
        net[2].bias.zero_()
    opt = torch.optim.Adam(net.parameters(), lr=params["lr"])
    for _ in range(params["steps"]):
        opt.zero_grad()
        torch.nn.functional.mse_loss(net(ds.x_train), ds.y_train).backward()
        opt.step()
    with torch.no_grad():
        return (float(torch.nn.functional.mse_loss(net(ds.x_train), ds.y_train)),
                float(torch.nn.functional.mse_loss(net(ds.x_test), ds.y_test)))


# ----------------------------------------------------------------- the contract check

def test_builtins_satisfy_the_contract():
    for name in registry.BUILTIN:
        mod = experiments.get(name)
        assert registry.contract_problems(mod) == [], name


def test_the_example_satisfies_the_contract(plugin_dir):
    mod = importlib.import_module(MODULE)
    assert registry.contract_problems(mod) == []
    assert isinstance(mod, experiments.Experiment)              # the runtime Protocol agrees
    assert experiments.register(mod) is mod
    assert experiments.register(MODULE) is mod                  # again, by path: a no-op
    assert experiments.available()[-1] == NAME                   # after the built-in ones
    assert experiments.part_title("X") == "Outside experiments"  # its PART


def _module(name: str = "bad_exp", **attrs) -> types.ModuleType:
    mod = types.ModuleType(name)
    mod.__dict__.update(attrs)
    return mod


def test_a_bad_module_gets_one_line_naming_what_is_missing(plugin_dir):
    good = importlib.import_module(MODULE)
    with pytest.raises(UserError) as err:
        experiments.register(_module(NAME="x", SECTION="1", TITLE="t", QUESTION="q",
                                     Config=good.Config, PROFILES={}, runs=good.runs))
    msg = str(err.value)
    assert "\n" not in msg
    assert msg == ("experiment module bad_exp: missing run_one, analyze, figures, observations "
                   "(the contract: docs/CONTRACT.md)")
    parts = {k: getattr(good, k) for k in registry.CONTRACT}
    with pytest.raises(UserError, match=r"NAME 'a/b' is not a folder name \(.*\); Config is "
                                        r"not a pydantic model class; PROFILES is not a dict"):
        experiments.register(_module(**{**parts, "NAME": "a/b", "Config": dict,
                                        "PROFILES": {"quick": 1}}))
    with pytest.raises(UserError, match="TITLE is not a non-empty string; run_many is not "
                                        "callable"):
        experiments.register(_module(**{**parts, "TITLE": "", "run_many": 3}))
    with pytest.raises(UserError, match="clashes with the registered 'function-fit'"):
        experiments.register(_module(**{**parts, "NAME": "function-fit"}))
    with pytest.raises(UserError, match="takes an experiment module"):
        experiments.register(object())
    assert "bad_exp" not in registry.REGISTRY.values()


def test_a_missing_run_function_is_caught_before_anything_is_written(plugin_dir, tmp_path,
                                                                      monkeypatch):
    mod = experiments.register(MODULE)
    monkeypatch.setattr(mod, "runs", lambda cfg: [RunSpec(NAME, "k", "no_such_module_xyz", {})])
    with pytest.raises(UserError, match=r"run module 'no_such_module_xyz': cannot import it"):
        dlscope.run(NAME, profile="quick", out=tmp_path / "out", progress=False)
    assert not (tmp_path / "out").exists()


# ----------------------------------------------------------------- the outside experiment

def test_outside_experiment_from_dlscope_run_and_load(plugin_dir, tmp_path):
    mod = importlib.import_module(MODULE)
    out = tmp_path / "out"
    # process executor: the spawned workers import toy_width from plugin_dir themselves
    r = dlscope.run(mod, profile="quick", out=out, executor="process", workers=2, threads=1,
                    progress=False)
    df = r.tables["results"]
    cfg = mod.Config.model_validate(mod.PROFILES["quick"])
    assert sorted(zip(df["width"], df["seed"])) == [(w, s) for w in cfg.widths
                                                   for s in range(cfg.seeds)]
    assert (df["status"] == "ok").all()
    summary = json.loads((out / NAME / "summary.json").read_text())
    assert summary["module"] == MODULE and summary["section"] == "X"
    assert summary["verdicts"][0]["outcome"] == "pipeline check"     # quick: under-trained
    assert (out / NAME / "figures" / "test_mse.png").stat().st_size > 5_000

    # each group ran as one stacked model in a worker; every member's numbers match an
    # independent one-member torch.nn implementation (and run_one, here in this process)
    ctx = RunContext(device=torch.device("cpu"), threads=1)
    for spec in mod.runs(cfg):
        row = df[(df["width"] == spec.params["width"]) & (df["seed"] == spec.params["seed"])]
        train, test = reference_mse(spec.params, spec.params["width"])
        np.testing.assert_allclose(row[["train_mse", "test_mse"]].to_numpy()[0], [train, test],
                                   rtol=1e-4)
        one = mod.run_one(spec.params, ctx).values
        np.testing.assert_allclose([one["train_mse"], one["test_mse"]], [train, test],
                                   rtol=1e-4)

    # a fresh registry (a new session): dlscope.load names the recorded module, imports it
    # only when the caller names it (tests/driver/test_load_safety.py: the folder is data)
    forget(NAME)
    sys.modules.pop(MODULE, None)
    with pytest.raises(UserError, match=r"written by experiment module 'toy_width', which is "
                                        r"not loaded; to allow it: .*plugins=\['toy_width'\]"):
        dlscope.load(out / NAME)
    assert MODULE not in sys.modules
    back = dlscope.load(out / NAME, plugins=[MODULE])
    assert NAME in registry.REGISTRY and back.name == NAME
    pd.testing.assert_frame_equal(back.tables["results"], df, check_dtype=False)
    assert back.observations == r.observations and set(back.figures) == {"test_mse"}

    # named but not importable any more: one clear line
    forget(NAME)
    sys.modules.pop(MODULE, None)
    (plugin_dir / f"{MODULE}.py").unlink()
    importlib.invalidate_caches()
    with pytest.raises(UserError, match=r"experiment module 'toy_width': cannot import it"):
        dlscope.load(out / NAME, plugins=[MODULE])


def test_run_many_is_used_for_a_group_and_matches_run_one(plugin_dir, monkeypatch):
    mod = importlib.import_module(MODULE)
    cfg = mod.Config.model_validate({"widths": [3, 5], "seeds": 3, "steps": 20})
    specs = [s for s in mod.runs(cfg) if s.group == "width=5"]
    calls = []
    real = mod.run_many
    monkeypatch.setattr(mod, "run_many", lambda ps, ctx: calls.append(len(ps)) or real(ps, ctx))
    together = execute(specs)
    assert calls == [3]                                          # one batch of three
    alone = [execute([s])[0] for s in specs]                     # run_one each ...
    assert calls == [3, 1, 1, 1]                                 # ... is a stack of one
    for a, b in zip(together, alone):
        np.testing.assert_allclose([a.values["test_mse"]], [b.values["test_mse"]], rtol=1e-5)
    assert len({a.values["test_mse"] for a in together}) == 3    # three different seeds


def test_outside_experiment_from_the_cli(plugin_dir, tmp_path, monkeypatch):
    out = tmp_path / "out"
    env = {"PYTHONPATH": os.pathsep.join([str(plugin_dir), os.environ.get("PYTHONPATH", "")])}
    res = cli("run", NAME, "--plugin", MODULE, "--profile", "quick", "--out", str(out),
              "--threads", "1", "--executor", "local", env_extra=env)
    assert res.returncode == 0, res.stderr
    assert "width 16 minus width 2: test MSE difference" in res.stdout
    summary = json.loads((out / NAME / "summary.json").read_text())
    assert summary["module"] == MODULE and summary["runs"] == 4 and not summary["failed"]

    # the report through DLSCOPE_PLUGINS (in this process: the same CLI code, one start-up
    # less): its section under its PART, after the built-in ones
    forget(NAME)
    sys.modules.pop(MODULE, None)
    monkeypatch.setenv("DLSCOPE_PLUGINS", f" {MODULE} ,")
    monkeypatch.setattr(sys, "argv", ["dlscope", "report", str(out)])
    from dlscope.cli import main

    main()
    assert registry.REGISTRY[NAME] == MODULE
    page = (out / "report.html").read_text()
    ids = [page.index(f'id="exp-{n}"') for n in [*registry.BUILTIN, NAME]]
    assert ids == sorted(ids)
    assert "Outside experiments" in page and "Toy: width vs fit of sinc(5x)" in page


def test_list_and_bad_plugins_in_the_cli(plugin_dir, monkeypatch, capsys):
    from dlscope.cli import main

    monkeypatch.setattr(sys, "argv", ["dlscope", "list", "--plugin", MODULE])
    main()
    lines = capsys.readouterr().out.splitlines()
    assert [ln.split()[0] for ln in lines] == [*registry.BUILTIN, NAME]
    assert lines[-1].split(None, 2)[1:] == ["X", "Toy: width vs fit of sinc(5x)"]

    monkeypatch.setattr(sys, "argv", ["dlscope", "list", "--plugin", "no_such_pkg.exp"])
    with pytest.raises(SystemExit) as exit_:
        main()
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and err.count("\n") == 1
    assert err.startswith("error: --plugin 'no_such_pkg.exp': cannot import it (No module named")

    monkeypatch.setenv("DLSCOPE_PLUGINS", "no_such_pkg.exp")
    with pytest.raises(UserError, match="DLSCOPE_PLUGINS 'no_such_pkg.exp': cannot import it"):
        experiments.available()


def test_entry_points_register_and_a_broken_one_only_warns(plugin_dir, tmp_path, monkeypatch):
    site = tmp_path / "site"
    for dist, value in (("toyplug", MODULE), ("brokenplug", "no_such_pkg.exp")):
        info = site / f"{dist}-0.1.dist-info"
        info.mkdir(parents=True)
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 0.1\n")
        (info / "entry_points.txt").write_text(f"[dlscope.experiments]\n{dist} = {value}\n")
    monkeypatch.syspath_prepend(str(site))
    registry._entry_points_loaded = False
    with pytest.warns(UserWarning, match="entry point brokenplug = no_such_pkg.exp"):
        names = experiments.available()
    assert names[-1] == NAME and experiments.get(NAME).__name__ == MODULE


def test_unknown_folders_render_generically(plugin_dir, tmp_path):
    out = tmp_path / "out"
    dlscope.run(importlib.import_module(MODULE), profile="quick", out=out, executor="local",
                threads=1, progress=False)
    forget(NAME)                          # a report built where the plugin is not registered
    page = build_report(out).read_text()
    section = page[page.index(f'id="exp-{NAME}"'):]
    assert "Toy: width vs fit of sinc(5x)" in section[:section.index("</h3>")]  # from summary
    assert 'id="part-X"' in page and "test_mse.png" in section
    assert page.index('id="exp-sensitivity"') < page.index(f'id="exp-{NAME}"')
