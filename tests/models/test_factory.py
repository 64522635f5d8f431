"""User model factories (`py:module:function`): parsing, the source hash, building on real and
meta devices, sizing for a parameter budget, and how another process finds the module."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from dlscope import models
from dlscope.errors import UserError

NETS = textwrap.dedent('''
    import math
    from torch import nn

    NOT_CALLABLE = 3

    def small_mlp(size=16, input_shape=(1, 28, 28), n_classes=10, depth=1):
        dims = [math.prod(input_shape)] + [size] * depth
        layers = [nn.Flatten()]
        for a, b in zip(dims[:-1], dims[1:]):
            layers += [nn.Linear(a, b), nn.ReLU()]
        return nn.Sequential(*layers, nn.Linear(size, n_classes))

    def conv(width=4):  # names neither input_shape nor n_classes
        return nn.Sequential(nn.Conv2d(1, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(),
                             nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(width, 10))

    def shrinking(size=1):  # fewer parameters as size grows
        return nn.Linear(1, max(1, 1000 - size))

    def not_a_module():
        return [1, 2]

    def raises(size=1):
        raise TypeError("size must be even\\nsecond line")
''')


@pytest.fixture
def nets(tmp_path, monkeypatch):
    """mynets.py in a fresh folder that is the working directory (not on sys.path)."""
    path = tmp_path / "mynets.py"
    path.write_text(NETS)
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv(models.FACTORY_PATH_ENV, raising=False)
    monkeypatch.delitem(sys.modules, "mynets", raising=False)
    yield path
    sys.modules.pop("mynets", None)


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def mlp_count(d: int, s: int, k: int, depth: int = 1) -> int:  # hand-written closed form
    return (d + 1) * s + (depth - 1) * (s + 1) * s + (s + 1) * k


def test_parse_forms_and_round_trips(nets):
    spec = models.parse_model("py:mynets:small_mlp")
    assert (spec.kind, spec.target, spec.kwargs) == ("factory", "mynets:small_mlp", {})
    assert spec.source_sha256 == sha(nets)
    table = models.parse_model({"factory": "py:mynets:small_mlp", "size": 32, "depth": 2})
    assert table.kwargs == {"depth": 2, "size": 32}
    assert table.name == "py:mynets:small_mlp,depth=2,size=32"
    assert models.parse_model(table.name) == table
    dump = json.loads(json.dumps(table.model_dump(mode="json")))
    assert dump["kind"] == "factory" and models.parse_model(dump) == table
    assert models.parse_model(table) is table
    odd = models.parse_model("py:mynets:small_mlp,size=8,depth=1")
    assert odd.kwargs == {"depth": 1, "size": 8}
    assert "mynets" in sys.modules and str(nets.parent) not in sys.path  # cwd only while importing


def test_source_edit_changes_hash_and_stale_spec_is_refused(nets):
    old = models.parse_model("py:mynets:small_mlp,size=8")
    assert models.count_params(old, (4,), 3) == mlp_count(4, 8, 3)
    nets.write_text(NETS.replace("depth=1)", "depth=2)") + "# edited\n")
    new = models.parse_model("py:mynets:small_mlp,size=8")
    assert new.source_sha256 == sha(nets) != old.source_sha256
    # a stored dump keeps its own hash (no recomputation) and is refused by build
    again = models.parse_model(old.model_dump(mode="json"))
    assert again.source_sha256 == old.source_sha256
    with pytest.raises(UserError, match=r"^factory module mynets changed since the run was "
                                         r"planned: rerun$"):
        models.build(again, (4,), 3)
    with pytest.raises(UserError, match="changed since"):
        models.count_params(again, (4,), 3)
    # the new spec runs the edited code (the module is reloaded in this process)
    assert models.count_params(new, (4,), 3) == mlp_count(4, 8, 3, depth=2)
    assert models.module_params(models.build(new, (4,), 3)) == mlp_count(4, 8, 3, depth=2)


@pytest.mark.parametrize("name, message", [
    ("py:mynets", r"write py:module\.path:function"),
    ("py:mynets:small-mlp", r"write py:module\.path:function"),
    ("py:no_such_mod_xyz:f", r"cannot import module 'no_such_mod_xyz' \(ModuleNotFoundError: "
                             r"No module named 'no_such_mod_xyz'\)"),
    ("py:mynets:missing", r"module 'mynets' has no attribute 'missing'"),
    ("py:mynets:NOT_CALLABLE", r"NOT_CALLABLE is a int, not callable"),
    ("py:mynets:small_mlp,sise=3", r"unexpected keyword argument 'sise'"),
    ("py:mynets:small_mlp,n_classes=3", r"n_classes come\(s\) from the data"),
    ("py:math:sqrt", r"module 'math' has no source file to hash"),
])
def test_parse_errors_are_one_line(nets, name, message):
    with pytest.raises(UserError, match=message) as err:
        models.parse_model(name)
    assert "\n" not in str(err.value)


def test_module_whose_own_import_fails(nets):
    (nets.parent / "broken.py").write_text("import no_such_dependency_xyz\ndef f():\n    pass\n")
    with pytest.raises(UserError, match=r"cannot import module 'broken' \(ModuleNotFoundError: "
                                        r"No module named 'no_such_dependency_xyz'\)"):
        models.parse_model("py:broken:f")


def test_build_passes_data_sizes_and_counts_match(nets):
    spec = models.parse_model({"factory": "py:mynets:small_mlp", "size": 6})
    net = models.build(spec, (3, 8, 8), 5)
    assert net(torch.zeros(2, 3, 8, 8)).shape == (2, 5)
    assert models.count_params(spec, (3, 8, 8), 5) == models.module_params(net) \
        == mlp_count(192, 6, 5)
    assert models.count_params(spec) == mlp_count(784, 6, 10)  # the factory's defaults
    conv = models.parse_model("py:mynets:conv,width=3")  # takes neither: gets neither
    assert models.module_params(models.build(conv, (1, 28, 28), 10)) \
        == models.count_params(conv, (1, 28, 28), 10) == (9 + 1) * 3 + 2 * 3 + (3 + 1) * 10


def test_factory_build_is_seeded_and_meta_count_draws_nothing(nets):
    spec = models.parse_model("py:mynets:small_mlp,size=5")
    torch.manual_seed(3)
    a = [p.clone() for p in models.build(spec, (4,), 2).parameters()]
    torch.manual_seed(3)
    models.count_params(spec, (4,), 2)
    models.describe(spec, (4,), 2)
    b = list(models.build(spec, (4,), 2).parameters())
    assert all(torch.equal(x, y) for x, y in zip(a, b))


def test_factory_errors_at_build(nets):
    with pytest.raises(UserError, match=r"^factory py:mynets:not_a_module returned list, not a "
                                        r"torch\.nn\.Module$"):
        models.build("py:mynets:not_a_module")
    with pytest.raises(UserError, match=r"^factory py:mynets:raises,size=3: raised TypeError: "
                                        r"size must be even$"):
        models.build("py:mynets:raises,size=3")


def test_describe_factory(nets):
    row = models.describe("py:mynets:conv,width=3", (1, 28, 28), 10)
    assert row == {"model": "py:mynets:conv,width=3", "kind": "factory", "depth": 2,
                   "widths": "", "params": 76}
    assert models.describe("py:mynets:small_mlp,depth=3", (4,), 2)["depth"] == 4


@pytest.mark.parametrize("target", [490, 4960, 10000, 40000])
def test_sized_matches_brute_force(nets, target):
    spec = models.parse_model("py:mynets:small_mlp,depth=2")
    got = models.sized(spec, target, input_shape=(4,), n_classes=3, max_size=4096)
    brute = min(range(1, 4097), key=lambda s: (abs(mlp_count(4, s, 3, 2) - target), s))
    assert got.kwargs == {"depth": 2, "size": brute}
    n = models.count_params(got, (4,), 3)
    assert n == mlp_count(4, brute, 3, 2) and abs(n - target) <= 0.01 * target


def test_sized_errors_and_sweep(nets):
    spec = models.parse_model("py:mynets:small_mlp")
    with pytest.raises(UserError, match=r"nearest count to 7 is 11 at size=1 \(\+57\.1%, more "
                                        r"than 1% off\)"):
        models.sized(spec, 7, input_shape=(4,), n_classes=3)  # 8 * size + 3
    with pytest.raises(UserError, match="has no parameter 'width'"):
        models.sized(spec, 1000, size_arg="width")
    with pytest.raises(UserError, match=r"decreases with size \(1,998 at 1, 2 at 1000\)"):
        models.sized(models.parse_model("py:mynets:shrinking"), 500, max_size=2000)
    sweep = models.sizes_for(spec, [4, 8, 16])
    assert [s.kwargs["size"] for s in sweep] == [4, 8, 16]
    assert [models.count_params(s, (4,), 3) for s in sweep] == [35, 67, 131]
    with pytest.raises(UserError, match=r"sizes must be whole numbers >= 1, got \[0, 2\.5\]"):
        models.sizes_for(spec, [4, 0, 2.5])


def test_factory_path_env_finds_a_module_elsewhere(nets, tmp_path, monkeypatch):
    other = tmp_path / "elsewhere"
    other.mkdir()
    monkeypatch.chdir(other)
    monkeypatch.delitem(sys.modules, "mynets", raising=False)
    with pytest.raises(UserError, match="cannot import module 'mynets'"):
        models.parse_model("py:mynets:small_mlp")
    monkeypatch.setenv(models.FACTORY_PATH_ENV, str(nets.parent))
    assert models.parse_model("py:mynets:small_mlp").source_sha256 == sha(nets)
    assert str(nets.parent) not in sys.path


@pytest.mark.slow  # a fresh interpreter imports torch (~8 s on a busy machine); the quick
# version is test_factory_path_env_finds_a_module_elsewhere
def test_fresh_process_builds_a_stored_spec_via_env(nets, tmp_path):
    """What a worker does: parse the dump from params and build, from another folder, with
    nothing but DLSCOPE_FACTORY_PATH pointing at the driver's working directory."""
    spec = models.parse_model("py:mynets:small_mlp,size=7")
    elsewhere = tmp_path / "worker_cwd"
    elsewhere.mkdir()
    code = ("import json, sys; from dlscope import models; "
            "s = models.parse_model(json.loads(sys.argv[1])); "
            "print(models.module_params(models.build(s, (4,), 3)))")
    src = str(Path(models.__file__).resolve().parents[2])
    env = {**os.environ, "PYTHONPATH": src, models.FACTORY_PATH_ENV: str(nets.parent)}
    out = subprocess.run([sys.executable, "-P", "-c", code, json.dumps(spec.model_dump())],
                         cwd=elsewhere, env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert int(out.stdout) == mlp_count(4, 7, 3)
