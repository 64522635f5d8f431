"""sensitivity experiment: one fresh training per batch size; a shrunk quick run writes its
table (sensitivity, logits sensitivity, sharpness), figures and summary."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

import dlscope
from dlscope.errors import UserError
from dlscope.experiments import sensitivity as se

COLUMNS = ["batch_size", "train_loss", "train_acc", "test_loss", "test_acc", "sensitivity",
           "sensitivity_logits", "sharpness"]


def test_runs_one_fresh_training_per_batch_size():
    cfg = se.Config()
    specs = se.runs(cfg)
    assert len(specs) >= 5
    assert [s.params["train"]["batch_size"] for s in specs] == [16, 64, 256, 1024, 4096]
    assert len({s.params["train"]["epochs"] for s in specs}) == 1
    assert {s.params["seed"] for s in specs} == {cfg.seed}
    assert specs[0].params["sharpness"]["epsilon"] == 1e-3


def test_bad_config_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="batch_sizes"):
        dlscope.run(se.NAME, profile="quick", out=tmp_path, batch_sizes=[16, 16])
    with pytest.raises(UserError, match="sharpness_points"):
        dlscope.run(se.NAME, profile="quick", out=tmp_path, sharpness_points=5000)


def test_quick_run_writes_results_and_figures(tmp_path):
    dlscope.run(se.NAME, profile="quick", out=tmp_path, train_subset=400, epochs=1,
                batch_sizes=[16, 128, 400], sensitivity_points=200, sharpness_points=200,
                sharpness_iter=2, executor="local", threads=1)
    root = tmp_path / se.NAME
    df = pd.read_csv(root / "results.csv")
    assert list(df.columns[: len(COLUMNS)]) == COLUMNS
    assert df.batch_size.tolist() == [16, 128, 400]
    assert df.steps.tolist() == [25, 4, 1]
    assert (df.sensitivity > 0).all() and (df.sensitivity_logits > df.sensitivity).all()
    assert (df.sharpness >= 0).all() and np.isfinite(df.sharpness).all()
    assert {p.name for p in (root / "figures").iterdir()} == {
        "loss_accuracy.png", "sensitivity.png", "sharpness.png"}
    summary = json.loads((root / "summary.json").read_text())
    assert not summary["failed"] and "bs16/sharpness" in summary["headline"]
