"""RunSpec (its hash and JSON form), RunResult, RunContext, resolve_run and execute
(dlscope.contract.runspec), checked against references computed here.

The hash's documented identity (docs/CONTRACT.md, the module docstring): the first 16 hex
digits of the sha256 of the canonical JSON (sorted keys, no spaces) of
    {"fn", "params", "device", "threads", "engine": ENGINE_VERSION}
plus "data" (the description) when the spec has one, plus "data_identity" when its kind
reports one (data read from outside). `experiment`, `key` and `group` are labels: not in it.
"""

from __future__ import annotations

import hashlib
import json
import sys
import textwrap

import pytest
import torch

from dlscope.contract import runspec
from dlscope.contract.runspec import (
    RunContext,
    RunResult,
    RunSpec,
    build_dataset,
    cached_dataset,
    canonical_json,
    execute,
    resolve_run,
)
from dlscope.data import kinds
from dlscope.errors import UserError
from dlscope.train.engine import ENGINE_VERSION

FN = "mypkg.exp"
PARAMS = {"seed": 0, "lr": 1e-3, "model": {"width": [8, 8], "act": "tanh"}}
DATA = {"kind": "function", "spec": "sinc", "n_train": 8, "n_test": 4, "seed": 0}


def reference_hash(ident: dict) -> str:
    """The documented hash, written out independently of the code."""
    text = json.dumps(ident, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def base_spec(**changes) -> RunSpec:
    fields = dict(experiment="x", key="seed=0", fn=FN, params=PARAMS, device="cpu", threads=1,
                  group=None, data=None)
    fields.update(changes)
    return RunSpec(**fields)


# -- canonical JSON and the hash -----------------------------------------------------------

def test_canonical_json_ignores_key_order_at_every_depth():
    a = {"b": 1, "a": {"y": [1, {"q": 2, "p": 1}], "x": 0.5}}
    b = {"a": {"x": 0.5, "y": [1, {"p": 1, "q": 2}]}, "b": 1}
    assert canonical_json(a) == canonical_json(b) == \
        '{"a":{"x":0.5,"y":[1,{"p":1,"q":2}]},"b":1}'
    assert canonical_json({"l": [2, 1]}) != canonical_json({"l": [1, 2]})  # lists keep order


def test_hash_is_sha256_of_the_documented_identity():
    spec = base_spec()
    assert spec.hash == reference_hash({"fn": FN, "params": PARAMS, "device": "cpu",
                                        "threads": 1, "engine": ENGINE_VERSION})
    assert len(spec.hash) == 16 and int(spec.hash, 16) >= 0


def test_hash_with_generated_data_covers_the_description_only():
    spec = base_spec(data=DATA)  # "function" data: generated from the description alone
    assert kinds.identity(DATA) is None
    assert spec.hash == reference_hash({"fn": FN, "params": PARAMS, "device": "cpu",
                                        "threads": 1, "engine": ENGINE_VERSION, "data": DATA})
    assert spec.hash != base_spec().hash


def test_hash_covers_the_identity_of_data_read_from_outside(monkeypatch):
    fingerprint = {"sha256": "aa" * 32}
    monkeypatch.setitem(kinds.IDENTITIES, "toykind", lambda **opts: dict(fingerprint))
    desc = {"kind": "toykind", "size": 3}
    spec = base_spec(data=desc)
    expected = {"fn": FN, "params": PARAMS, "device": "cpu", "threads": 1,
                "engine": ENGINE_VERSION, "data": desc, "data_identity": {"sha256": "aa" * 32}}
    assert spec.hash == reference_hash(expected)
    before = spec.hash
    fingerprint["sha256"] = "bb" * 32  # the same description, other files on disk
    assert spec.hash != before
    assert spec.hash == reference_hash({**expected, "data_identity": {"sha256": "bb" * 32}})


@pytest.mark.parametrize("change", [
    {"fn": "mypkg.other"},
    {"params": {**PARAMS, "seed": 1}},
    {"params": {**PARAMS, "model": {"width": [8, 9], "act": "tanh"}}},  # nested
    {"params": {**PARAMS, "extra": None}},  # a new key, even None
    {"device": "cuda"},
    {"threads": 2},
    {"data": DATA},
    {"data": {**DATA, "n_train": 9}},
], ids=lambda c: next(iter(c)))
def test_hash_changes_with_what_changes_numbers(change):
    base = base_spec(data=DATA if "data" in change and change["data"] != DATA else None)
    assert base_spec(**change).hash != base.hash


def test_hash_changes_with_the_engine_version(monkeypatch):
    before = base_spec().hash
    monkeypatch.setattr(runspec, "ENGINE_VERSION", f"{ENGINE_VERSION}-next")
    assert base_spec().hash != before
    assert base_spec().hash == reference_hash({"fn": FN, "params": PARAMS, "device": "cpu",
                                               "threads": 1, "engine": f"{ENGINE_VERSION}-next"})


@pytest.mark.parametrize("change", [
    {"key": "another label"},
    {"experiment": "renamed"},
    {"group": "width=8"},
    {"params": {"model": {"act": "tanh", "width": [8, 8]}, "lr": 1e-3, "seed": 0}},  # reordered
    {"data": None},
], ids=lambda c: next(iter(c)))
def test_hash_ignores_labels_and_key_order(change):
    assert base_spec(**change).hash == base_spec().hash


def test_to_json_holds_every_field_and_rebuilds_the_same_spec():
    spec = base_spec(group="g", data=DATA, params={**PARAMS, "pair": (1, 2)})
    js = spec.to_json()
    assert js == {"experiment": "x", "key": "seed=0", "fn": FN,
                  "params": {**PARAMS, "pair": (1, 2)}, "data": DATA, "device": "cpu",
                  "threads": 1, "group": "g", "hash": spec.hash}
    # what the store writes (spec.json) read back: tuples became lists, same hash
    back = json.loads(json.dumps(js))
    rebuilt = RunSpec(**{k: v for k, v in back.items() if k != "hash"})
    assert rebuilt.params["pair"] == [1, 2]
    assert rebuilt.hash == spec.hash == back["hash"]


def test_run_result_status():
    assert RunResult({}).status == "ok"  # no status: ok
    assert RunResult({"status": "diverged"}).status == "diverged"
    assert RunResult({"status": 3}).status == "3"
    assert RunResult({}).arrays == {} and RunResult({}).arrays is not RunResult({}).arrays


# -- RunContext.dataset --------------------------------------------------------------------

def test_context_dataset_is_built_once_per_description_whatever_its_key_order():
    ctx = RunContext(device=torch.device("cpu"), threads=1)
    reordered = dict(reversed(list(DATA.items())))
    assert list(reordered) != list(DATA)
    a = ctx.dataset(DATA)
    hits = cached_dataset.cache_info().hits
    b = ctx.dataset(reordered)
    assert b is a and cached_dataset.cache_info().hits == hits + 1
    fresh = build_dataset(canonical_json(DATA), "cpu")
    assert fresh is not a
    for name in ("x_train", "y_train", "x_test", "y_test"):
        assert torch.equal(getattr(a, name), getattr(fresh, name))
    # the reference: sinc on an even grid of 8 points in its default domain
    x = a.x_train[:, 0].double()
    assert a.x_train.shape == (8, 1) and torch.all(x[1:] > x[:-1])
    expect = torch.where(x == 0, torch.ones_like(x), torch.sin(5 * torch.pi * x) / (5 * torch.pi * x))
    assert torch.allclose(a.y_train[:, 0].double(), expect, atol=1e-6)


# -- resolve_run and execute ---------------------------------------------------------------

TOY = '''
"""A toy experiment module for the runspec tests."""
import torch
from dlscope.contract.runspec import RunResult


def run_one(params, ctx):
    if params.get("fail"):
        raise ValueError(f"planted failure at x={params['x']}")
    return RunResult({"x": params["x"], "square": params["x"] ** 2, "via": "one",
                      "threads": torch.get_num_threads(), "ctx_threads": ctx.threads,
                      "device": str(ctx.device)})
'''
TOY_MANY = TOY + '''

def run_many(params_list, ctx):
    return [RunResult({**run_one(p, ctx).values, "via": "many", "n": len(params_list)})
            for p in params_list]
'''


@pytest.fixture
def toy(tmp_path, monkeypatch):
    """Write modules dlscope_toy_one (run_one only), dlscope_toy_many (and run_many),
    dlscope_toy_none (neither) and dlscope_toy_bad (run_many not callable) on sys.path."""
    names = {"dlscope_toy_one": TOY, "dlscope_toy_many": TOY_MANY,
             "dlscope_toy_none": "X = 1\n", "dlscope_toy_bad": TOY + "run_many = 3\n"}
    for name, text in names.items():
        (tmp_path / f"{name}.py").write_text(textwrap.dedent(text))
    monkeypatch.syspath_prepend(str(tmp_path))
    yield
    for name in names:
        sys.modules.pop(name, None)


def spec_of(fn, x, threads=1, **params):
    return RunSpec("toy", f"x={x}", fn, {"x": x, **params}, threads=threads)


def test_resolve_run_finds_run_one_and_run_many(toy):
    one, many = resolve_run("dlscope_toy_many")
    assert one.__name__ == "run_one" and many.__name__ == "run_many"
    assert one.__module__ == many.__module__ == "dlscope_toy_many"
    one, many = resolve_run("dlscope_toy_one")
    assert one.__module__ == "dlscope_toy_one" and many is None
    assert resolve_run("dlscope_toy_bad")[1] is None  # not callable: as if absent


@pytest.mark.parametrize("fn, message", [
    ("dlscope_toy_one:run_one", "not a module path"),
    ("", "not a module path"),
    (None, "not a module path"),
    ("dlscope_toy_absent", "cannot import it"),
    ("dlscope_toy_none", "it has no run_one()"),
])
def test_resolve_run_names_what_is_wrong(toy, fn, message):
    with pytest.raises(UserError) as err:
        resolve_run(fn)
    assert str(err.value) == str(err.value).strip() and "\n" not in str(err.value)
    assert f"run module {fn!r}: " in str(err.value) and message in str(err.value)


def test_execute_runs_one_spec_with_its_threads_then_restores_them(toy):
    assert torch.get_num_threads() == 1  # tests/conftest.py
    [r] = execute([spec_of("dlscope_toy_many", 3, threads=2)])
    assert r.values == {"x": 3, "square": 9, "via": "one", "threads": 2, "ctx_threads": 2,
                        "device": "cpu"}
    assert torch.get_num_threads() == 1


def test_execute_runs_a_group_through_run_many_in_order(toy):
    specs = [spec_of("dlscope_toy_many", x) for x in (2, -1, 5)]
    out = execute(specs)
    assert [(r.values["x"], r.values["square"], r.values["via"], r.values["n"]) for r in out] == \
        [(2, 4, "many", 3), (-1, 1, "many", 3), (5, 25, "many", 3)]
    solo = execute([spec_of("dlscope_toy_one", x) for x in (2, -1, 5)])  # no run_many
    assert [(r.values["square"], r.values["via"]) for r in solo] == \
        [(4, "one"), (1, "one"), (25, "one")]


def test_execute_passes_errors_up_and_still_restores_threads(toy):
    with pytest.raises(ValueError, match="planted failure at x=7"):
        execute([spec_of("dlscope_toy_one", 7, threads=3, fail=True)])
    assert torch.get_num_threads() == 1


def test_execute_makes_its_context_with_the_given_factory(toy):
    made = []

    class Ctx(RunContext):
        def __init__(self, device, threads):
            made.append((device, threads))
            super().__init__(device=device, threads=threads)

    [r] = execute([spec_of("dlscope_toy_one", 4, threads=2)], context=Ctx)
    assert made == [(torch.device("cpu"), 2)] and r.values["square"] == 16
