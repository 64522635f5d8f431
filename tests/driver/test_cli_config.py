"""Config resolution and the CLI's contract: bad input is one line, exit 2, nothing written."""

import subprocess
import sys

import pytest
from helpers import cli

from dlscope import experiments
from dlscope.contract import config
from dlscope.errors import UserError

FF = experiments.get("function-fit")


def dlscope(*args, cwd=None):
    """The real console entry point in a fresh interpreter."""
    return subprocess.run([sys.executable, "-m", "dlscope.cli", *args], capture_output=True,
                          text=True, cwd=cwd, timeout=120)


def test_profiles_and_overrides_are_typed():
    cfg = config.resolve(FF, "quick", sets=["lr=0.01", "depths=[1,2]", "functions=['sinc']"])
    assert cfg.lr == 0.01 and cfg.depths == [1, 2] and cfg.functions == ["sinc"]
    assert cfg.epochs == FF.PROFILES["quick"]["epochs"]
    assert config.resolve(FF).epochs == FF.Config().epochs  # assignment = defaults


def test_toml_file_then_sets(tmp_path):
    f = tmp_path / "c.toml"
    f.write_text('epochs = 7\nlr = 0.5\n')
    cfg = config.resolve(FF, "quick", config_file=f, sets=["lr=0.25"])
    assert (cfg.epochs, cfg.lr) == (7, 0.25)


def test_resolved_config_round_trips_through_toml():
    cfg = config.resolve(FF, "quick", sets=["functions=['expr:x**2']"])
    assert config.from_toml(FF, config.to_toml(cfg)) == cfg


@pytest.mark.parametrize("item, words", [
    ("lr=0", "lr"), ("lr=-1", "lr"), ("epochs=0", "epochs"), ("epochs=abc", "epochs"),
    ("bogus=1", "unknown key 'bogus'"), ("functions=['nope']", "unknown function 'nope'"),
    ("functions=['expr:__import__(1)']", "functions"), ("depths=[1]", "depths"),
])
def test_bad_values_are_one_clear_user_error(item, words):
    with pytest.raises(UserError) as err:
        config.resolve(FF, "quick", sets=[item])
    msg = str(err.value)
    assert words in msg and "\n" not in msg


def test_unknown_key_lists_valid_keys():
    with pytest.raises(UserError, match="valid keys: functions, param_budget"):
        config.resolve(FF, sets=["epoch=3"])


def test_cli_bad_input_exits_2_and_writes_nothing(tmp_path, monkeypatch, capsys):
    out = tmp_path / "out"
    for args in (["run", "function-fit", "--set", "lr=-1"],
                 ["run", "function-fit", "--set", "nope=1"],
                 ["run", "no-such-experiment"],
                 ["run", "function-fit", "--profile", "huge"],
                 ["run", "function-fit", "--config", str(tmp_path / "missing.toml")],
                 ["run", "function-fit", "--executor", "slurm"]):
        code, _, err = cli(monkeypatch, capsys, *args, "--out", str(out))
        assert code == 2, (args, err)
        lines = [line for line in err.splitlines() if line.strip()]
        assert len(lines) == 1 and lines[0].startswith("error: "), err
        assert not out.exists()


def test_console_script_exit_code_in_a_fresh_interpreter(tmp_path):
    r = dlscope("run", "function-fit", "--set", "epochs=0", "--out", str(tmp_path / "o"))
    assert r.returncode == 2 and r.stderr.startswith("error: function-fit: epochs")
    assert not (tmp_path / "o").exists()


def test_cli_list_and_version(monkeypatch, capsys):
    code, out, _ = cli(monkeypatch, capsys, "list")
    assert code == 0 and "function-fit" in out
    code, out, _ = cli(monkeypatch, capsys, "--version")
    assert code == 0 and out.startswith("dlscope ")


def test_cli_report_on_empty_folder_exits_2(tmp_path, monkeypatch, capsys):
    code, _, err = cli(monkeypatch, capsys, "report", str(tmp_path))
    assert code == 2 and err.startswith("error: ")
