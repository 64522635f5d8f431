"""A hostile user at the command line (issues 15, 26): TOML files, `--set`, numbers per key
type, environment variables, options and names. Every case asserts the exact exit code, the
one line on stderr and that nothing was written. All exit before any training."""

from __future__ import annotations

import subprocess
import sys

import pytest
from hostile_util import FIT, PC, clean_env, last_line, one_line

from dlscope import experiments
from dlscope.contract import config as configs
from dlscope.errors import UserError

FF = experiments.get("function-fit")
# function-fit without --set (a --set would override the TOML under test)
BASE = ["run", "function-fit", "--profile", "quick", "--executor", "local", "--threads", "1"]


def refused(cli, tmp_path, *args, want: str, env: dict | None = None, code: int = 2) -> str:
    """`dlscope ARGS --out tmp/O` exits `code` with one line holding `want`; no folder."""
    out = ["--out", tmp_path / "O"] if args[0] == "run" else []
    got, _, err = cli(*args, *out, env=env, cwd=tmp_path)
    line = one_line(err)
    assert got == code, err
    assert want in line, line
    assert not (tmp_path / "O").exists()
    return line


# ------------------------------------------------------------ TOML files

TOML_REFUSED = {
    "duplicate_keys": ("lr = 0.1\nlr = 0.2\n", "not valid TOML"),
    "table_for_a_scalar": ("[lr]\nvalue = 0.1\n", "lr: Input should be a valid number"),
    "table_for_a_list": ("[depths]\na = 1\n", "depths: Input should be a valid list"),
    "date": ("lr = 1979-05-27\n", "lr: Input should be a valid number"),
    "datetime_in_list": ("functions = [1979-05-27T07:32:00Z]\n", "valid string"),
    "time": ("epochs = 07:32:00\n", "epochs: Input should be a valid integer"),
    "huge_int": ("n_train = 99999999999999999999999999999\n", "n_train needs at least"),
    "int_past_4300_digits": ("n_train = " + "9" * 5000 + "\n", "more than 4300 digits"),
    "inf": ("lr = inf\n", "lr: must be a finite number"),
    "nan": ("lr = nan\n", "lr: Input should be greater than 0"),
    "float_overflow": ("converge_rel = 1e400\n", "converge_rel: must be a finite number"),
    "unicode_key": ('"λ" = 1\n', "unknown key 'λ'"),
    "bare_unicode_key": ("λ = 1\n", "not valid TOML"),
    "unicode_value": ("functions = ['σ(x)']\n", "unknown function 'σ'"),
    "very_long_list": ("depths = [" + ",".join(map(str, range(1, 20001))) + "]\n",
                       "depths: 20,000 entries is more than the limit 10,000"),
    "long_list_duplicate_at_end": ("depths = [" + ",".join(map(str, range(1, 9001)))
                                   + ",1]\n", "depths: 1 appears more than once"),
    "deeply_nested_arrays": ("depths = " + "[" * 5000 + "]" * 5000 + "\n",
                             "arrays nested too deeply"),
    "nested_list_for_ints": ("depths = [[1], [2]]\n", "depths.0: Input should be a valid"),
    "bool_for_int": ("epochs = true\n", "epochs: expected a number, got the boolean true"),
    "not_toml": ("this is not toml\n", "not valid TOML"),
    "unknown_section": ("[function-fit]\nlr = 0.1\n", "unknown key 'function-fit'"),
}


@pytest.mark.parametrize("case", list(TOML_REFUSED))
def test_toml_refused(cli, tmp_path, case):
    text, want = TOML_REFUSED[case]
    (tmp_path / "c.toml").write_text(text, encoding="utf-8")
    line = refused(cli, tmp_path, *BASE, "--config", tmp_path / "c.toml", want=want)
    assert len(line) < 1200  # a 20,000-item list is not echoed back in full


@pytest.mark.parametrize("text", ["", "\ufeff", "\ufeffepochs = 7\n", "# only a comment\n"])
def test_toml_empty_or_bom_is_read(tmp_path, text):
    (tmp_path / "c.toml").write_text(text, encoding="utf-8")
    cfg = configs.resolve(FF, "quick", config_file=tmp_path / "c.toml")
    assert cfg.epochs == (7 if "epochs" in text else FF.PROFILES["quick"]["epochs"])


@pytest.mark.parametrize("what, want", [
    ("/dev/zero", "larger than"), ("folder", "is a folder"), ("missing", "No such file"),
    ("latin1", "not UTF-8"), ("binary", "not UTF-8")])
def test_config_file_that_is_not_a_config(cli, tmp_path, what, want):
    path = {"/dev/zero": "/dev/zero", "folder": tmp_path, "missing": tmp_path / "no.toml",
            "latin1": tmp_path / "l.toml", "binary": tmp_path / "b.toml"}[what]
    if what == "latin1":
        path.write_bytes("lr = 0.001 # caf\xe9\n".encode("latin-1"))
    if what == "binary":
        path.write_bytes(bytes(range(256)) * 4)
    refused(cli, tmp_path, *FIT, "--config", path, want=want)


# ------------------------------------------------------------ numbers per key type

NUMBERS = [  # (key=value, message): int, float and list keys of function-fit
    ("epochs=-1", "epochs: Input should be greater than or equal to 1"),
    ("epochs=0", "epochs: Input should be greater than or equal to 1"),
    ("epochs=10000000000", "more than the limit 1,000,000"),
    ("epochs=1e23", "epochs: expected an integer"),
    ("epochs=nan", "epochs: expected an integer, got nan"),
    ("epochs=true", "epochs: expected a number, got the boolean true"),
    ("n_train=-8", "n_train: Input should be greater than or equal to 8"),
    ("n_train=10000000000000", "n_train needs at least"),
    ("n_train=" + "9" * 400, "n_train needs at least"),
    ("n_train=1e10", "n_train: expected an integer, got 10000000000.0"),
    ("param_budget=1000000000000", "param_budget needs at least"),
    ("param_budget=-5", "param_budget: Input should be greater than or equal to 10"),
    ("seed=-1", "seed: Input should be greater than or equal to 0"),
    ("seed=" + "9" * 30, "seed: must be < 2**63"),
    ("seeds=0", "seeds: Input should be greater than or equal to 1"),
    ("seeds=1000000000", "seeds is more than the limit 10,000"),
    ("converge_window=-1", "converge_window: Input should be greater than or equal to 1"),
    ("lr=inf", "lr: must be a finite number"),
    ("lr=-inf", "lr: Input should be greater than 0"),
    ("lr=nan", "lr: Input should be greater than 0"),
    ("lr=-1e308", "lr: Input should be greater than 0"),
    ("lr=1e400", "lr: must be a finite number"),
    ("lr=" + "9" * 5000, "more than 4300 digits"),
    ("converge_loss=0", "converge_loss: Input should be greater than 0"),
    ("converge_rel=-inf", "converge_rel: Input should be greater than 0"),
    ("depths=[1,1]", "depths: 1 appears more than once"),
    ("depths=[0,1]", "depth and target must be >= 1"),
    ("depths=[-3,1]", "depth and target must be >= 1"),
    ("depths=[1,nan]", "depths: expected an integer, got nan"),
    ("depths=[1,true]", "depths: expected a number, got the boolean true"),
    ("functions=[]", "functions: List should have at least 1 item"),
    ("functions=['sinc','sinc']", "'sinc' appears more than once"),
    ("functions=[1,2]", "functions.0: Input should be a valid string"),
]


@pytest.mark.parametrize("item, message", NUMBERS)
def test_numbers_refused_before_anything_is_written(cli, tmp_path, item, message):
    line = refused(cli, tmp_path, *FIT, "--set", item, want=message)
    assert line.startswith("error: ")


@pytest.mark.parametrize("item, message", NUMBERS[:12])
def test_config_refusals_in_process(item, message):
    """The same refusals from `dlscope.run`'s path: a UserError naming the experiment."""
    with pytest.raises(UserError) as info:
        configs.resolve(FF, "quick", sets=[item])
    assert message in str(info.value) and str(info.value).startswith("function-fit: ")


# ------------------------------------------------------------ --set syntax abuse

SETS = [
    ("=", "--set '=': expected key=value"),
    ("a", "--set 'a': expected key=value"),
    ("", "--set '': expected key=value"),
    (" = ", "expected key=value"),
    ("a==b", "unknown key 'a'"),
    ("lr.b.c=1", "lr: Input should be a valid number"),
    ("functions.x=1", "functions: Input should be a valid list"),
    ("λ=1", "unknown key 'λ'"),
    ("lr=λ", "lr: Input should be a valid number"),
    ("functions=['" + "x" * 100_000 + "']", "expression is longer than 500 characters"),
    ("x" * 100_000 + "=1", "unknown key 'xxxx"),
    ("depths=" + "[" * 5000 + "]" * 5000, "arrays nested too deeply"),
    ("lr=[", "lr: Input should be a valid number"),
]


@pytest.mark.parametrize("item, message", SETS, ids=[f"set{i}" for i in range(len(SETS))])
def test_set_syntax_abuse(cli, tmp_path, item, message):
    line = refused(cli, tmp_path, *FIT, "--set", item, want=message)
    assert len(line) <= 1010  # a 100 KB value is cut, not echoed


# ------------------------------------------------------------ environment variables


@pytest.mark.parametrize("value, message", [
    ("lots", "DLSCOPE_MEMORY_LIMIT='lots' is not a number of bytes"),
    ("nan", "is not a number of bytes"), ("inf", "is not a number of bytes"),
    ("-5", "must be a positive number of bytes"), ("0", "must be a positive number of bytes"),
    ("", None)])
def test_memory_limit_env(cli, tmp_path, value, message):
    if message is None:  # empty means unset: the sweep is accepted (stopped here by --device)
        refused(cli, tmp_path, *FIT, "--device", "tpu", want="--device 'tpu'",
                env={"DLSCOPE_MEMORY_LIMIT": value})
        return
    refused(cli, tmp_path, *FIT, want=message, env={"DLSCOPE_MEMORY_LIMIT": value})


@pytest.mark.parametrize("value, message", [
    ("no.such.module", "DLSCOPE_PLUGINS 'no.such.module': cannot import it"),
    (",,,;;;$$", "DLSCOPE_PLUGINS ';;;$$': cannot import it"),
    ("os", "experiment module os: missing NAME"),
])
def test_plugins_env_garbage(cli, tmp_path, value, message):
    refused(cli, tmp_path, *FIT, want=message, env={"DLSCOPE_PLUGINS": value})
    code, _, err = cli("list", env={"DLSCOPE_PLUGINS": value})
    assert code == 2 and message in one_line(err)


@pytest.mark.parametrize("what, message", [
    ("file", "does not exist or is not a folder"), ("missing", "does not exist or is not"),
    ("empty", "does not hold the four IDX files"), ("garbage", "does not hold the four IDX")])
def test_mnist_dir_env_odd(cli, tmp_path, what, message):
    target = tmp_path / what
    if what == "file":
        target.write_text("x")
    elif what in ("empty", "garbage"):
        target.mkdir()
    if what == "garbage":
        (target / "train-images-idx3-ubyte").write_bytes(b"\x00" * 10)
    refused(cli, tmp_path, *PC, want=message, env={"DLSCOPE_MNIST_DIR": str(target)})


def test_cache_env_at_a_file_is_reported_not_fatal(cli, tmp_path):
    """DLSCOPE_CACHE naming a file: `data info` says so and exits 0; the file is untouched."""
    (tmp_path / "afile").write_text("mine")
    code, out, err = cli("data", "info", env={"DLSCOPE_CACHE": str(tmp_path / "afile")})
    assert code == 0 and "Traceback" not in err, err
    assert '"mnist"' in out and (tmp_path / "afile").read_text() == "mine"


# ------------------------------------------------------------ options and names

OPTIONS = [
    (["--workers", "0"], "--workers must be a whole number >= 1, got 0"),
    (["--workers", "-1"], "--workers must be a whole number >= 1, got -1"),
    (["--executor", "process", "--workers", str(10**9)], "--workers 1000000000: more than"),
    (["--workers", "abc"], "Invalid value for '--workers'"),
    (["--workers", "1.5"], "Invalid value for '--workers'"),
    (["--threads", "0"], "--threads must be a whole number >= 1, got 0"),
    (["--threads", "-1"], "--threads must be a whole number >= 1, got -1"),
    (["--threads", str(10**9)], "--threads 1000000000: more than"),
    (["--threads", "100000"], "--threads 100000: more than"),
    (["--device", "cuda"], "CUDA is not available on this machine"),
    (["--device", "cuda:99"], "CUDA is not available on this machine"),
    (["--device", "tpu"], "--device 'tpu': not a device"),
    (["--device", ""], "--device '': not a device"),
    (["--device", "mps"], "MPS is not available on this machine"),
    (["--executor", "nope"], "unknown executor 'nope'"),
    (["--profile", "nope"], "unknown profile 'nope' (one of: assignment, quick)"),
    (["--profile", ""], "unknown profile ''"),
    (["--no-such-option"], "No such option: --no-such-option"),
]


@pytest.mark.parametrize("extra, message", OPTIONS, ids=[" ".join(o) for o, _ in OPTIONS])
def test_bad_options_are_one_line(cli, tmp_path, extra, message):
    import torch

    if "cuda" in extra[-1] and torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    if extra[-1] == "mps" and torch.backends.mps.is_available():
        pytest.skip("this machine has MPS")
    refused(cli, tmp_path, *FIT, *extra, want=message)


@pytest.mark.parametrize("args, message", [
    (["run", "nope"], "unknown experiment 'nope' (one of: function-fit"),
    (["run", ""], "unknown experiment ''"),
    (["run", "FUNCTION-FIT"], "unknown experiment 'FUNCTION-FIT'"),
    (["run", "../../etc/passwd"], "unknown experiment '../../etc/passwd'"),
    (["show", "nope"], "unknown experiment 'nope'"),
    (["run"], "Missing argument 'name'"),
    (["nope"], "No such command 'nope'"),
    (["run", "all", "--set", "lr=1"], "run all: --config and --set apply to one experiment"),
])
def test_unknown_names_are_one_line(cli, tmp_path, args, message):
    refused(cli, tmp_path, *args, want=message)


def test_absurd_model_width_is_refused_with_the_estimate(cli, tmp_path):
    line = refused(cli, tmp_path, *PC, "--set", "widths=[2,100000000000]", want="needs at least")
    assert "machine's memory" in line


# ------------------------------------------------------------ every run failing


@pytest.mark.parametrize("expr", ["expr:x/0", "expr:sqrt(x)"])
def test_a_target_not_finite_on_its_domain_is_refused_before_any_run(cli, tmp_path, expr):
    code, _, err = cli(*FIT, "--set", f"functions=['{expr}']", "--out", tmp_path / "O")
    assert code == 2, err
    line = one_line(err)  # refused up front: no run started, no progress lines
    assert f"function '{expr}' is not finite on [-1, 1]" in line
    assert not (tmp_path / "O").exists()  # no config.toml, no empty folders


FAULT_SCRIPT = ("import sys, dlscope.experiments.function_fit as m\n"
                "def boom(p, ctx):\n    raise RuntimeError('disk on fire')\n"
                "m.run_one = boom\nm.run_many = lambda ps, ctx: [boom(p, ctx) for p in ps]\n"
                "from dlscope.cli import main\n"
                "sys.argv = ['dlscope', *sys.argv[1:]]\nmain()\n")


def test_every_run_failing_on_a_fault_is_one_line(tmp_path):
    """A fault (not bad input) in every run: exit 1, one line, nothing written."""
    p = subprocess.run([sys.executable, "-c", FAULT_SCRIPT, *FIT, "--out", str(tmp_path / "O")],
                       capture_output=True, text=True, timeout=120, env=clean_env())
    assert p.returncode == 1
    line = last_line(p.stderr)
    assert "all 2 runs failed, no tables written" in line and "RuntimeError: disk on fire" in line
    assert not (tmp_path / "O").exists()


@pytest.mark.slow
def test_a_fault_shows_the_traceback_on_request(tmp_path):
    """--traceback / DLSCOPE_DEBUG=1 show the full trace of the same fault."""
    base = [sys.executable, "-c", FAULT_SCRIPT]
    args = [*FIT, "--out", str(tmp_path / "O")]
    p = subprocess.run([*base, "--traceback", *args], capture_output=True, text=True,
                       timeout=120, env=clean_env())
    assert p.returncode == 1 and "Traceback (most recent call last)" in p.stderr
    p = subprocess.run([*base, *args], capture_output=True, text=True, timeout=120,
                       env=clean_env({"DLSCOPE_DEBUG": "1"}))
    assert p.returncode == 1 and "Traceback (most recent call last)" in p.stderr
