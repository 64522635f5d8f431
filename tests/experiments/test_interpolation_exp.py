"""interpolation experiment: pairs, shared inits, and θ(α) at α = 0, 1 equal to the two
trained models evaluated directly from their saved arrays."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pandas as pd
import pytest

import dlscope
from dlscope.contract.runspec import RunSpec
from dlscope.data import build_dataset
from dlscope.errors import UserError
from dlscope.execution.store import Store
from dlscope.experiments import interpolation as ip
from dlscope.train.engine import evaluate


def spec_of(d: dict) -> RunSpec:
    return RunSpec(d["experiment"], d["key"], d["fn"], d["params"], data=d.get("data"))


def test_runs_dedupe_the_common_model_and_record_init_and_criterion():
    shared = ip.runs(ip.Config())
    assert len(shared) == 9  # 3 seeds x 3 trainings: (bs 64, lr 1e-3) is in both pairs
    assert {s.params["init_seed"] for s in shared} == {0, 1, 2}
    assert sorted(s.params["train"]["batch_size"] for s in shared) == [64] * 6 + [1024] * 3
    assert all(s.params["matched"] == {"criterion": "train_acc", "target": 0.99,
                                       "max_steps": 12000} for s in shared)
    indep = ip.runs(ip.Config(shared_init=False, seed=5, seeds=1))
    by_key = {s.key: s.params["init_seed"] for s in indep}
    assert by_key == {"bs=64,lr=0.001,init=5,seed=5": 5, "bs=1024,lr=0.001,init=1005,seed=5":
                      1005, "bs=64,lr=0.01,init=1005,seed=5": 1005}
    scaled = ip.runs(ip.Config(lr_scaling="sqrt", seeds=1))
    assert sorted(s.params["train"]["lr"] for s in scaled) == pytest.approx([1e-3, 4e-3, 1e-2])


def test_bad_config_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="batch_pair"):
        dlscope.run(ip.NAME, profile="quick", out=tmp_path, batch_pair=[64])
    with pytest.raises(UserError, match="lr_pair"):
        dlscope.run(ip.NAME, profile="quick", out=tmp_path, lr_pair=[1e-3, -1.0])
    with pytest.raises(UserError, match="alpha_min"):
        dlscope.run(ip.NAME, profile="quick", out=tmp_path, alpha_min=2.0, alpha_max=-1.0)
    with pytest.raises(UserError, match="largest possible batch is 1000"):
        dlscope.run(ip.NAME, profile="quick", out=tmp_path, train_subset=1000,
                    batch_pair=[64, 1024])
    assert not (tmp_path / ip.NAME).exists()


def test_quick_run_endpoints_equal_the_trained_models(tmp_path):
    r = dlscope.run(ip.NAME, profile="quick", out=tmp_path, train_subset=500, max_steps=16, batch_pair=[64, 250],
                    n_alpha=7, curve_points=5, executor="local", threads=1)
    root = tmp_path / ip.NAME
    res = pd.read_csv(root / "results.csv")
    assert list(res.columns[:7]) == ["pair", "seed", "alpha", "train_loss", "train_acc",
                                     "test_loss", "test_acc"]
    assert res.shared_init.all()
    mods = pd.read_csv(root / "models.csv")
    assert len(mods) == 8 and set(mods.seed) == {0, 1}  # 2 pairs x 2 ends x 2 seeds
    assert (mods.steps == 16).all() and not mods.reached.any()  # capped: missed
    curves = pd.read_csv(root / "curves.csv")
    assert len(curves) == 6 * 5 and set(curves.t) == {-1.0, -0.5, 0.0, 0.5, 1.0}
    for _, g in res.groupby(["pair", "seed"]):
        a = g.alpha.to_numpy()
        assert (a == 0.0).sum() == 1 and (a == 1.0).sum() == 1
        assert a.min() == -1.0 and a.max() == 2.0 and np.all(np.diff(a) > 0)
    assert {p.name for p in (root / "figures").iterdir()} == {
        "pair1_batch_64_vs_250.png", "pair2_lr_0_001_vs_0_01.png"}
    summary = json.loads((root / "summary.json").read_text())
    assert summary["headline"]["shared_init"] is True and not summary["failed"]
    assert [v["outcome"] for v in summary["verdicts"]] == ["pipeline check"] * 2
    assert summary["statistics"]["pipeline_check"].startswith("6 of 6 models missed")

    cfg = r.config
    ds = build_dataset(ip.inputs(cfg).data)
    store = Store(root)
    stored = [json.loads(p.read_text()) for p in (root / "runs").glob("*/spec.json")]
    specs = {s["key"]: replace(spec_of(s), device=s["device"], threads=s["threads"])
             for s in stored}
    assert len(specs) == 6
    for pr in ip.pairs(cfg):
        g = res[(res.pair == pr["pair"]) & (res.seed == pr["seed"])].set_index("alpha")
        for alpha, end in ((0.0, pr["a"]), (1.0, pr["b"])):
            spec = specs[ip._key(end, pr["seed"])]
            run = store.load(spec)
            assert run is not None
            model = ip.rebuild(spec.params, run.arrays)
            tl, ta = evaluate(model, ds.x_train, ds.y_train, True)
            vl, va = evaluate(model, ds.x_test, ds.y_test, True)
            np.testing.assert_allclose([g.loc[alpha, "train_loss"], g.loc[alpha, "test_loss"]],
                                       [tl, vl], rtol=1e-5)
            assert g.loc[alpha, "train_acc"] == pytest.approx(ta, abs=1e-12)
            assert g.loc[alpha, "test_acc"] == pytest.approx(va, abs=1e-12)
            # and equal to what the run itself measured right after training
            assert run.values["train_loss"] == pytest.approx(tl, rel=1e-5)
            assert run.values["test_acc"] == pytest.approx(va, abs=1e-12)
            # the filter-normalized curve at t = 0 is the model itself
            cv = curves[curves.run == spec.key].set_index("t")
            assert cv.loc[0.0, "train_loss"] == pytest.approx(tl, rel=1e-5)
