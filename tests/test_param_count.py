"""param-count: parameter counts are exact and span two decades; a shrunk quick run writes
its table, figure and summary."""

from __future__ import annotations

import json

import pandas as pd
import pytest

import dlscope
from dlscope import models
from dlscope.errors import UserError
from dlscope.experiments import param_count as pc

COLUMNS = ["model", "widths", "params", "train_loss", "train_acc", "test_loss", "test_acc"]


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
    assert len(df) == len(pc.PROFILES["quick"]["widths"])
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
    assert r.observations
