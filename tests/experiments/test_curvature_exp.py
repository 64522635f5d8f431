"""The curvature experiment: a shrunk quick run end to end, its tables against the metrics
they come from, and config errors."""

import numpy as np
import pytest

import dlscope
from dlscope.errors import UserError

SMALL = {"train_subset": 256, "hessian_subset": 64, "epochs": 2, "checkpoints": [0, 2],
         "density_steps": 20, "trace_probes": 4}


def test_quick_run_tables_figures_statistics_verdict(tmp_path):
    r = dlscope.run("curvature", profile="quick", out=tmp_path, executor="local", threads=1,
                    **SMALL)
    root = tmp_path / "curvature"
    for f in ("results.csv", "ritz.csv", "summary.json", "figures/density.png"):
        assert (root / f).is_file(), f
    res, rz = r.tables["results"], r.tables["ritz"]
    assert sorted(res.seed.unique()) == [0, 1] and sorted(res.epoch.unique()) == [0, 2]
    assert (res.lambda_max > 0).all() and (res.trace_se > 0).all()
    # Ritz values lie inside the spectrum: the SLQ λmax never exceeds Lanczos' λmax
    assert (res.slq_lambda_max <= res.lambda_max * (1 + 1e-6)).all()
    assert res.mass_band.between(0, 1).all()
    for (_seed, _epoch), g in rz.groupby(["seed", "epoch"]):
        assert g.weight.sum() == pytest.approx(1.0, abs=1e-9)  # one probe: weights sum to 1
    assert res.loss[res.epoch == 2].max() < res.loss[res.epoch == 0].min()  # it trained
    v = r.summary["verdicts"]
    assert len(v) == 1 and v[0]["outcome"] == "pipeline check"
    st = r.summary["statistics"]["epoch2"]["lambda_max"]
    assert st["n"] == 2 and st["lo"] <= st["mean"] <= st["hi"]
    assert len(r.observations) == 2 and "λmax" in r.observations[0]
    assert np.isfinite(r.summary["headline"]["final/outlier_ratio"])


@pytest.mark.parametrize("bad", [{"checkpoints": [1, 2]}, {"checkpoints": [0, 9]},
                                 {"hessian_subset": 5000}, {"seeds": 0}, {"lr": 0}])
def test_bad_config_is_a_user_error(bad, tmp_path):
    with pytest.raises(UserError):
        dlscope.run("curvature", profile="quick", out=tmp_path / "o", **bad)
    assert not (tmp_path / "o").exists()
