"""minimal-ratio end to end: critical points, exact spectra, missed runs kept apart, and the
statistics and verdict recomputed from the tables."""

import json

import numpy as np
import pandas as pd
import pytest
import torch

import dlscope
from dlscope import experiments, models
from dlscope.contract import config as configs
from dlscope.errors import UserError
from dlscope.experiments import minimal_ratio_report as report

EPS = np.finfo(np.float64).eps
SMALL = {"runs": 3, "n_train": 100, "train_epochs": [10, 300], "max_steps": 25, "threads": 1,
         "executor": "local"}  # one process: torch.func's warm-up is paid once


def test_quick_run_tables_figures_and_independent_recount(tmp_path):
    r = dlscope.run("minimal-ratio", profile="quick", out=tmp_path, **SMALL)
    root = tmp_path / "minimal-ratio"
    res = pd.read_csv(root / "results.csv")
    assert list(res.columns[:9]) == ["run", "start_epochs", "loss", "grad_norm", "reached",
                                     "n_params", "minimal_ratio", "index", "frac_zero"]
    assert (res.n_params == models.count_params("mlp:4-3-1:tanh")).all()
    assert np.allclose(res.minimal_ratio + res["index"] + res.frac_zero, 1.0)
    assert (res.reached == (res.grad_norm < 1e-8)).all()
    assert list(res.start_epochs) == [10, 300, 10]
    assert (res.loss_start > 0).all() and (res.distance >= 0).all()
    spectra = pd.read_csv(root / "spectra.csv")
    tols = pd.read_csv(root / "tolerances.csv")
    for row in res.itertuples():  # recount from the stored spectrum with the stated rule
        ev = spectra[spectra.run == row.run].eigenvalue.to_numpy()
        assert len(ev) == row.n_params
        tol = 100 * EPS * len(ev) * np.abs(ev).max()
        assert row.tol == pytest.approx(tol)
        assert row.minimal_ratio == pytest.approx((ev > tol).mean())
        assert row.index == pytest.approx((ev < -tol).mean())
        kind = "saddle" if (ev < -tol).any() else "degenerate" if (np.abs(ev) <= tol).any() \
            else "minimum"
        assert row.kind == kind
        t = tols[tols.run == row.run]
        assert list(t.c) == report_c() and np.allclose(t.rel_tol, t.c * EPS * len(ev))
    for name in ("minimal_ratio", "spectra"):
        assert (root / "figures" / f"{name}.png").stat().st_size > 5000
    summary = json.loads((root / "summary.json").read_text())
    assert summary["headline"]["runs"] == 3
    assert summary["headline"]["reached"] == int(res.reached.sum())
    assert summary["verdicts"][0]["outcome"] == "pipeline check"  # 3 runs are no evidence
    assert summary["statistics"]["reached"] == int(res.reached.sum())
    assert r.observations[0].startswith(f"{int(res.reached.sum())} of 3 runs reached")


def report_c():
    return list(experiments.get("minimal-ratio").TOL_TABLE)


def test_missed_threshold_is_reported_not_mixed_in(tmp_path):
    r = dlscope.run("minimal-ratio", profile="quick", out=tmp_path,
                    **{**SMALL, "runs": 2, "max_steps": 1, "grad_threshold": 1e-12})
    res = r.tables["results"]
    assert not res.reached.any() and (res.status == "missed").all()
    assert {f["run"] for f in r.summary["flagged"]} == {"run000", "run001"}
    assert r.observations[0].startswith("0 of 2 runs reached")
    assert r.summary["headline"]["reached"] == 0


def test_one_run_spectrum_is_complete_and_sorted():
    exp = experiments.get("minimal-ratio")
    cfg = configs.resolve(exp, "quick", overrides={"runs": 2, "n_train": 64, "max_steps": 5,
                                                   "model": "mlp:2-2-1:tanh",
                                                   "teacher_width": 2, "train_epochs": [20]})
    from dlscope.contract.runspec import RunContext

    out = exp.run_one(exp.runs(cfg)[1].params,
                             RunContext(device=torch.device("cpu"), threads=1))
    ev = out.arrays["eigenvalues"]
    assert ev.size == out.values["n_params"] == models.count_params("mlp:2-2-1:tanh")
    assert np.all(np.diff(ev) >= 0) and ev.dtype == np.float64
    assert out.values["lambda_max"] == pytest.approx(ev[-1])


def test_teacher_data_is_seeded_and_has_the_stated_noise():
    exp = experiments.get("minimal-ratio")
    x, y = exp.teacher_data(4, 3, 4000, 0.05, seed=7)
    x2, y2 = exp.teacher_data(4, 3, 4000, 0.0, seed=7)
    assert torch.equal(x, x2)  # same generator draws, noise comes last
    assert (y - y2).std().item() == pytest.approx(0.05, rel=0.05)
    assert not torch.equal(exp.teacher_data(4, 3, 10, 0.05, seed=8)[0], x[:10])


def fake_tables(loss, index, reached=None):
    n = len(loss)
    index = np.asarray(index, float)
    return {"results": pd.DataFrame({
        "run": range(n), "start_epochs": 10, "loss": loss, "index": index,
        "minimal_ratio": 1 - index, "frac_zero": 0.0, "n_params": 19,
        "reached": np.ones(n, bool) if reached is None else reached,
        "kind": np.where(index > 0, "saddle", "minimum"), "status": "ok"})}


@pytest.mark.parametrize("sign,outcome", [(+1, "reproduced"), (-1, "not reproduced")])
def test_verdict_follows_the_sign_of_the_index_trend(sign, outcome):
    cfg = configs.resolve(experiments.get("minimal-ratio"))
    loss = np.geomspace(1e-3, 1, 40)
    index = np.clip(np.linspace(0, 0.5, 40)[::sign] + 0.02 * np.sin(np.arange(40)), 0, 1)
    (v,) = report.verdicts(cfg, fake_tables(loss, index))
    assert v.outcome == outcome and "Dauphin" in v.source
    st = report.statistics(cfg, fake_tables(loss, index))
    assert st["counts"]["saddle"] + st["counts"]["minimum"] == 40
    from scipy.stats import spearmanr

    assert st["index_vs_loss"]["rho"] == pytest.approx(spearmanr(loss, index).statistic)


def test_verdict_is_a_pipeline_check_or_inconclusive_when_too_few_reach():
    cfg = configs.resolve(experiments.get("minimal-ratio"))
    loss = np.geomspace(1e-3, 1, 40)
    index = np.linspace(0, 0.5, 40)
    assert report.verdicts(cfg, fake_tables(loss[:10], index[:10]))[0].outcome == \
        "pipeline check"
    few = np.arange(40) < 31  # 31 reached of 80: enough points, under half the runs
    t = fake_tables(np.concatenate([loss, loss]), np.concatenate([index, index]),
                    np.concatenate([few, np.zeros(40, bool)]))
    assert report.verdicts(cfg, t)[0].outcome == "inconclusive"


@pytest.mark.parametrize("item", ["model=mlp:784-128-64-10", "model=cnn-b", "method=sgd",
                                  "runs=1", "grad_threshold=0", "teacher_width=5",
                                  "target=sinc", "loss_change_flag=1"])
def test_bad_config_is_a_user_error(item):
    with pytest.raises(UserError):
        configs.resolve(experiments.get("minimal-ratio"), sets=[item])


def test_function_target_needs_a_known_function():
    with pytest.raises(UserError):
        configs.resolve(experiments.get("minimal-ratio"),
                        sets=["model=mlp:1-3-1:tanh", "target=no-such-function"])
    cfg = configs.resolve(experiments.get("minimal-ratio"),
                          sets=["model=mlp:1-3-1:tanh", "target=sinc"])
    assert cfg.target == "sinc"


@pytest.mark.slow
def test_assignment_profile_acceptance(tmp_path):
    r = dlscope.run("minimal-ratio", out=tmp_path)
    res = r.tables["results"]
    assert len(res) == 100 and res.reached.mean() >= 0.8
    ok = res[res.reached]
    assert np.log10(ok.loss.max() / ok.loss.min()) >= 2  # critical points over 2+ decades
    assert r.summary["verdicts"][0]["outcome"] != "pipeline check"
