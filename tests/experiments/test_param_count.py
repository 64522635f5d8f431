"""param-count: parameter counts are exact and span two decades; a shrunk quick run writes
its table, figure and summary."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

import dlscope
from dlscope import models
from dlscope.errors import UserError
from dlscope.experiments import param_count as pc

COLUMNS = ["model", "widths", "params", "seed", "train_loss", "train_acc", "test_loss",
           "test_acc"]


def test_assignment_family_spans_two_decades_with_exact_counts():
    cfg = pc.Config()
    specs = pc.specs(cfg)
    assert len(specs) >= 10
    counts = [models.count_params(s) for s in specs]
    assert counts == [models.module_params(models.build(s)) for s in specs]
    assert counts == sorted(counts) and max(counts) / min(counts) >= 100


def test_bad_widths_are_a_user_error(tmp_path):
    with pytest.raises(UserError, match="widths"):
        dlscope.run(pc.NAME, profile="quick", out=tmp_path, widths=[0, 8])
    with pytest.raises(UserError, match="widths"):
        dlscope.run(pc.NAME, profile="quick", out=tmp_path, widths=[8])


def test_quick_run_counts_and_outputs(tmp_path):
    r = dlscope.run(pc.NAME, profile="quick", out=tmp_path, train_subset=300, epochs=1)
    root = tmp_path / pc.NAME
    df = pd.read_csv(root / "results.csv")
    assert list(df.columns[: len(COLUMNS)]) == COLUMNS
    widths = pc.PROFILES["quick"]["widths"]
    assert len(df) == 2 * len(widths)                        # quick: 2 seeds per width
    assert all(sorted(g.seed) == [0, 1] for _, g in df.groupby("model"))
    # seeds differ: the two inits of a width give different numbers
    assert (df.groupby("model").test_loss.nunique() == 2).all()
    for row in df.itertuples():
        built = models.build(row.model)
        assert row.params == models.count_params(row.model) == models.module_params(built)
        assert str(row.widths) == "-".join(map(str, models.parse_model(row.model).hidden))
    assert df.params.max() / df.params.min() >= 100
    assert df[["train_acc", "test_acc"]].apply(lambda c: c.between(0, 1)).all().all()
    assert (root / "figures" / "loss_accuracy.png").exists()
    summary = json.loads((root / "summary.json").read_text())
    assert summary["runs"] == len(df) and not summary["failed"]
    assert summary["headline"]["params_max"] == int(df.params.max())
    st = summary["statistics"]
    assert set(st["settings"]) == set(df.model)
    for model, s in st["settings"].items():
        iv = s["test_acc"]
        assert iv["n"] == 2 and iv["median"] == pytest.approx(df[df.model == model].test_acc.median())
        assert s["failures"]["runs"] == 2 and s["failures"]["diverged"] == 0
    assert {"rho", "p_value", "n"} <= set(st["test_acc_vs_params"])
    # one epoch on 300 images: under-trained, pipeline checks only
    assert [v["outcome"] for v in summary["verdicts"]] == ["pipeline check"] * 2
    assert r.observations


def _sweep(test_acc_of_width, train_acc: float = 1.0, seeds: int = 3) -> dict:
    rows = []
    for w in (2, 4, 8, 16, 32, 64):
        spec = models.MLPSpec(input_dim=784, hidden=(w,), output_dim=10)
        for s in range(seeds):
            te = test_acc_of_width(w) + 0.002 * (s - (seeds - 1) / 2)   # same spread per width
            rows.append({"model": spec.name, "widths": str(w), "params": models.count_params(spec),
                         "seed": s, "train_loss": 0.01, "train_acc": train_acc,
                         "test_loss": 1 - te, "test_acc": te, "gap_acc": train_acc - te,
                         "gap_loss": 0.0, "n_train": 1000, "epochs": 30, "status": "ok"})
    return {"results": pd.DataFrame(rows)}


@pytest.mark.parametrize("acc, outcome", [
    (lambda w: 0.8 + 0.02 * np.log2(w), "reproduced"),       # rises with parameters
    (lambda w: 0.95 - 0.02 * np.log2(w), "not reproduced"),  # falls with parameters
    (lambda w: 0.9, "inconclusive"),                         # flat: seed spread only, rho 0
])
def test_verdicts_on_known_sweeps(acc, outcome):
    t = _sweep(acc)
    v = pc.verdicts(pc.Config(), t)
    assert [x.outcome for x in v] == [outcome, outcome]
    assert "Spearman" in v[0].statistic
    st = pc.statistics(pc.Config(), t)
    assert len(st["fitted_models"]) == 6


def test_under_trained_sweep_is_a_pipeline_check():
    v = pc.verdicts(pc.Config(), _sweep(lambda w: 0.8 + 0.02 * np.log2(w), train_acc=0.9))
    assert [x.outcome for x in v] == ["pipeline check"] * 2


def test_diverged_seed_is_left_out_of_the_statistics():
    t = _sweep(lambda w: 0.9)
    df = t["results"]
    df.loc[0, ["status", "test_acc"]] = ["diverged", 0.1]
    s = pc.statistics(pc.Config(), t)["settings"][df.model[0]]
    assert s["test_acc"]["n"] == 2 and s["test_acc"]["median"] > 0.85
    assert s["failures"]["diverged"] == 1
