"""sensitivity experiment: one matched training per batch size and seed; a shrunk quick run
writes its table (seed column, three sharpness measures, gaps), figures, statistics and
pipeline-check verdicts; the verdict logic on constructed tables."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

import dlscope
from dlscope.errors import UserError
from dlscope.experiments import sensitivity as se

COLUMNS = ["batch_size", "seed", "lr", "reached", "steps", "criterion_step", "train_loss",
           "train_acc", "test_loss", "test_acc", "loss_gap", "acc_gap", "sensitivity"]


def test_runs_one_matched_training_per_batch_size_and_seed():
    cfg = se.Config()
    specs = se.runs(cfg)
    assert len(specs) == 5 * 3
    assert sorted({s.params["train"]["batch_size"] for s in specs}) == [16, 64, 256, 1024, 4096]
    assert {s.params["seed"] for s in specs} == {0, 1, 2}
    assert {json.dumps(s.params["matched"]) for s in specs} == {json.dumps(
        {"criterion": "train_acc", "target": 0.99, "max_steps": 12000})}
    assert specs[0].params["sharpness"]["epsilons"] == [1e-3, 5e-4]
    lin = se.runs(se.Config(lr_scaling="linear", seeds=1))
    assert [s.params["train"]["lr"] for s in lin] == pytest.approx(
        [1e-3 * b / 64 for b in (16, 64, 256, 1024, 4096)])


def test_bad_config_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="batch_sizes"):
        dlscope.run(se.NAME, profile="quick", out=tmp_path, batch_sizes=[16, 16])
    with pytest.raises(UserError, match="sharpness_points"):
        dlscope.run(se.NAME, profile="quick", out=tmp_path, sharpness_points=5000)
    with pytest.raises(UserError, match="4096 > the 1024 training images"):
        dlscope.run(se.NAME, profile="quick", out=tmp_path, batch_sizes=[16, 4096])
    with pytest.raises(UserError, match="target"):
        dlscope.run(se.NAME, profile="quick", out=tmp_path, target=1.5)
    assert not (tmp_path / se.NAME).exists()


def test_quick_run_writes_results_figures_and_a_pipeline_check(tmp_path):
    dlscope.run(se.NAME, profile="quick", out=tmp_path, train_subset=400, max_steps=4,
                batch_sizes=[16, 400], sensitivity_points=200, sharpness_points=200,
                sharpness_iter=2, executor="local", threads=1)
    root = tmp_path / se.NAME
    df = pd.read_csv(root / "results.csv")
    assert list(df.columns[: len(COLUMNS)]) == COLUMNS
    assert df.batch_size.tolist() == [16, 16, 400, 400] and df.seed.tolist() == [0, 1, 0, 1]
    assert df.steps.tolist() == [25, 25, 4, 4]  # 4 steps rounded up to whole epochs
    assert not df.reached.any() and (df.status == "missed").all()
    assert (df.sensitivity > 0).all() and (df.sensitivity_logits > df.sensitivity).all()
    for col in ("sharpness@0.001", "sharpness@0.0005", "lambda_max"):
        assert (df[col] > 0).all() and np.isfinite(df[col]).all()
    np.testing.assert_allclose(df.loss_gap, df.test_loss - df.train_loss)
    assert {p.name for p in (root / "figures").iterdir()} == {
        "loss_accuracy.png", "sharpness.png", "sensitivity_gap.png", "sensitivity_vs_gap.png"}
    summary = json.loads((root / "summary.json").read_text())
    assert not summary["failed"]
    assert {v["outcome"] for v in summary["verdicts"]} == {"pipeline check"}
    assert len(summary["verdicts"]) == 5
    assert summary["statistics"]["per_batch_size"]["16"]["failures"]["missed"] == 2
    assert any("Pipeline check, not evidence" in o for o in summary["observations"])


def _table(sharp_lo, sharp_hi, gap_lo, gap_hi, sens_lo, sens_hi, reached=True):
    rows = []
    for bs, sh, gap, sens in ((16, sharp_lo, gap_lo, sens_lo), (1024, sharp_hi, gap_hi,
                                                                 sens_hi)):
        for i, (a, g, s) in enumerate(zip(sh, gap, sens)):
            rows.append({"batch_size": bs, "seed": i, "reached": reached, "status": "ok",
                         "sharpness@0.001": a, "sharpness@0.0005": a / 2, "lambda_max": a,
                         "loss_gap": g, "acc_gap": g / 10, "sensitivity": s})
    return {"results": pd.DataFrame(rows)}


def test_verdicts_on_constructed_tables():
    cfg = se.Config(batch_sizes=[16, 1024])
    clear = _table([1.0, 1.1, 0.9], [5.0, 5.2, 4.9], [0.10, 0.11, 0.09], [0.30, 0.31, 0.29],
                   [0.10, 0.11, 0.09], [0.30, 0.31, 0.29])
    out = {v.claim.split(" gives a higher ")[-1].split(" than")[0] if "gives" in v.claim
           else "novak": v.outcome for v in se.verdicts(cfg, clear)}
    assert set(out.values()) == {"reproduced"} and len(out) == 5
    reversed_ = _table([5.0, 5.2, 4.9], [1.0, 1.1, 0.9], [0.10, 0.11, 0.09],
                       [0.30, 0.31, 0.29], [0.30, 0.29, 0.31], [0.10, 0.09, 0.11])
    v = se.verdicts(cfg, reversed_)
    assert v[0].outcome == "not reproduced" and v[3].outcome == "reproduced"
    assert v[4].outcome == "not reproduced"  # sensitivity falls as the gap grows
    noisy = _table([1.0, 5.0, 3.0], [2.0, 4.0, 3.1], [0.1, 0.3, 0.2], [0.3, 0.1, 0.2],
                   [0.1, 0.3, 0.2], [0.2, 0.1, 0.3])
    assert {x.outcome for x in se.verdicts(cfg, noisy)} == {"inconclusive"}
    missed = _table([1.0, 1.1, 0.9], [5.0, 5.2, 4.9], [0.1] * 3, [0.3] * 3, [0.1] * 3,
                    [0.3] * 3, reached=False)
    assert {x.outcome for x in se.verdicts(cfg, missed)} == {"pipeline check"}
