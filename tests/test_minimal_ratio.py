"""minimal-ratio end to end: critical points, exact spectra, missed runs kept apart."""

import json

import numpy as np
import pandas as pd
import pytest
import torch

import dlscope
from dlscope.execution import config as configs
from dlscope import experiments, models
from dlscope.errors import UserError


def test_quick_run_tables_figures_and_independent_recount(tmp_path):
    dlscope.run("minimal-ratio", profile="quick", out=tmp_path, runs=3, n_train=64,
                    model="mlp:1-6-6-1:tanh", train_epochs=[100, 300], threads=1)
    root = tmp_path / "minimal-ratio"
    res = pd.read_csv(root / "results.csv")
    assert list(res.columns[:8]) == ["run", "loss", "grad_norm", "reached", "n_params",
                                     "minimal_ratio", "frac_negative", "frac_zero"]
    assert (res.n_params == models.count_params("mlp:1-6-6-1:tanh")).all()
    fractions = res.minimal_ratio + res.frac_negative + res.frac_zero
    assert np.allclose(fractions, 1.0)
    assert (res.reached == (res.grad_norm < 1e-5)).all()
    spectra = pd.read_csv(root / "spectra.csv")
    for row in res.itertuples():  # recount from the stored spectrum with the stated rule
        ev = spectra[spectra.run == row.run].eigenvalue.to_numpy()
        assert len(ev) == row.n_params
        tol = 1e-6 * np.abs(ev).max()
        assert row.minimal_ratio == pytest.approx((ev > tol).mean())
        assert row.frac_negative == pytest.approx((ev < -tol).mean())
    for name in ("minimal_ratio", "spectra"):
        assert (root / "figures" / f"{name}.png").stat().st_size > 5000
    summary = json.loads((root / "summary.json").read_text())
    assert summary["headline"]["runs"] == 3
    assert summary["headline"]["reached"] == int(res.reached.sum())


def test_missed_threshold_is_reported_not_mixed_in(tmp_path):
    r = dlscope.run("minimal-ratio", profile="quick", out=tmp_path, runs=2, n_train=64,
                    model="mlp:1-6-6-1:tanh", train_epochs=[50], max_steps=1,
                    grad_threshold=1e-12, threads=1)
    res = r.tables["results"]
    assert not res.reached.any() and (res.status == "missed").all()
    assert {f["run"] for f in r.summary["flagged"]} == {"run000", "run001"}
    assert r.observations[0].startswith("0 of 2 runs reached")
    assert r.summary["headline"]["reached"] == 0


def test_one_run_spectrum_is_complete_and_sorted():
    exp = experiments.get("minimal-ratio")
    cfg = configs.resolve(exp, "quick", overrides={"runs": 2, "n_train": 32,
                                                   "model": "mlp:1-4-4-1:tanh",
                                                   "train_epochs": [20]})
    from dlscope.execution.runspec import RunContext

    out = exp.critical_point(exp.runs(cfg)[1].params,
                             RunContext(device=torch.device("cpu"), threads=1))
    ev = out.arrays["eigenvalues"]
    assert ev.size == out.values["n_params"] == models.count_params("mlp:1-4-4-1:tanh")
    assert np.all(np.diff(ev) >= 0) and ev.dtype == np.float64
    assert out.values["lambda_max"] == pytest.approx(ev[-1])


@pytest.mark.parametrize("item", ["model=mlp:784-128-64-10", "model=cnn-b", "method=sgd",
                                  "runs=1", "grad_threshold=0"])
def test_bad_config_is_a_user_error(item):
    with pytest.raises(UserError):
        configs.resolve(experiments.get("minimal-ratio"), sets=[item])


@pytest.mark.slow
def test_assignment_profile_acceptance(tmp_path):
    r = dlscope.run("minimal-ratio", out=tmp_path)
    res = r.tables["results"]
    assert len(res) == 100 and res.reached.mean() >= 0.5
