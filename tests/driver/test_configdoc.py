"""Every setting is discoverable: `dlscope show`, `run NAME --help`, docs/CONFIG.md, config_of."""

import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

import dlscope
from dlscope import experiments
from dlscope.cli import app
from dlscope.contract import config as configs
from dlscope.driver import configdoc

ROOT = Path(__file__).resolve().parents[2]
NAMES = experiments.available()


@pytest.mark.parametrize("name", NAMES)
def test_show_lists_every_key_with_its_default(name):
    res = CliRunner().invoke(app, ["show", name])
    assert res.exit_code == 0, res.output
    exp = experiments.get(name)
    default = exp.Config()
    lines = res.output[res.output.index("Config keys"):].splitlines()[1:]
    for key in exp.Config.model_fields:
        row = next((ln for ln in lines if ln.split() and ln.split()[0] == key), None)
        assert row is not None, f"{name}: key {key} missing from show"
        shown = configdoc._show(configdoc._json(getattr(default, key)))
        assert shown[:20] in row, f"{name}.{key}: default {shown} not in {row!r}"
    assert exp.QUESTION in res.output


@pytest.mark.parametrize("name", NAMES)
def test_every_key_has_a_description(name):
    cls = experiments.get(name).Config
    missing = [k for k, f in cls.model_fields.items() if not f.description]
    assert not missing, f"{name}: keys without a description: {missing}"


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("profile", ["assignment", "quick"])
def test_toml_round_trips_through_config(name, profile, tmp_path):
    exp = experiments.get(name)
    res = CliRunner().invoke(app, ["show", name, "--toml", "--profile", profile])
    assert res.exit_code == 0, res.output
    path = tmp_path / "c.toml"
    path.write_text(res.output)
    # read back on the assignment profile: the file alone must give the profile's config
    back = configs.resolve(exp, "assignment", path)
    assert configs.to_toml(back) == configs.to_toml(configs.resolve(exp, profile))


def test_config_md_is_up_to_date():
    text = configdoc.markdown([experiments.get(n) for n in NAMES])
    doc = (ROOT / "docs" / "CONFIG.md").read_text(encoding="utf-8")
    assert doc == text, "docs/CONFIG.md is stale: run `dlscope show --markdown > docs/CONFIG.md`"


def test_run_help_ends_with_the_key_table():
    out = subprocess.run([sys.executable, "-m", "dlscope.cli", "run", "param-count", "--help"],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    tail = out.stdout[out.stdout.index("Config keys of param-count"):]
    for key in experiments.get("param-count").Config.model_fields:
        assert f"\n{key} " in tail


def test_config_of_and_completion():
    cls = dlscope.config_of("param-count")
    assert cls is experiments.get("param-count").Config
    assert cls(widths=[4, 8]).widths == [4, 8]
    from dlscope.cli import _complete_name

    assert "param-count" in _complete_name("param")


def test_show_unknown_experiment_is_one_line():
    out = subprocess.run([sys.executable, "-m", "dlscope.cli", "show", "nope"],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 2 and out.stderr.count("\n") == 1 and "unknown experiment" in out.stderr
