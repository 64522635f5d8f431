"""random-labels: the labels are uniform, seeded and leave the test set alone; a shrunk
quick run writes its tables, figure and summary."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from scipy import stats

import dlscope
from dlscope.data import MnistOptions, mnist_dataset
from dlscope.errors import UserError
from dlscope.experiments import random_labels as rl


@pytest.fixture(scope="module")
def clean():
    return mnist_dataset(MnistOptions())


def labels(**kw):
    ds = mnist_dataset(MnistOptions(**kw))
    return ds.y_train.numpy(), ds.y_test.numpy()


def test_random_labels_are_uniform_and_independent_of_the_truth(clean):
    y, y_test = labels(label_noise=1.0, seed=0)
    counts = np.bincount(y, minlength=10)
    assert len(counts) == 10
    assert stats.chisquare(counts).pvalue > 1e-3  # uniform over the 10 classes
    truth = clean.y_train.numpy()
    table = np.zeros((10, 10), dtype=np.int64)
    np.add.at(table, (truth, y), 1)
    assert stats.chi2_contingency(table).pvalue > 1e-3  # independent of the true label
    agree = float((y == truth).mean())
    assert abs(agree - 0.1) < 4 * np.sqrt(0.09 / len(y))
    np.testing.assert_array_equal(y_test, clean.y_test.numpy())  # test labels untouched


def test_random_labels_are_reproducible_from_the_seed(clean):
    a, ta = labels(label_noise=1.0, seed=3, train_subset=5000)
    b, tb = labels(label_noise=1.0, seed=3, train_subset=5000)
    c, _ = labels(label_noise=1.0, seed=4, train_subset=5000)
    np.testing.assert_array_equal(a, b)
    assert (a != c).mean() > 0.8  # a different seed: different labels (~90% differ)
    np.testing.assert_array_equal(ta, clean.y_test.numpy())
    np.testing.assert_array_equal(tb, clean.y_test.numpy())


def test_partial_corruption_changes_about_p_times_nine_tenths(clean):
    y, _ = labels(label_noise=0.5, seed=1)
    changed = float((y != clean.y_train.numpy()).mean())
    assert abs(changed - 0.5 * 0.9) < 0.01


def test_bad_config_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="label_noise"):
        dlscope.run(rl.NAME, profile="quick", out=tmp_path, label_noise=1.5)
    with pytest.raises(UserError, match="model"):
        dlscope.run(rl.NAME, profile="quick", out=tmp_path, model="mlp:10-5-3")
    assert not (tmp_path / rl.NAME).exists()


def test_quick_run_writes_tables_figure_summary(tmp_path):
    r = dlscope.run(rl.NAME, profile="quick", out=tmp_path, train_subset=300, epochs=2,
                    executor="local", threads=1)
    root = tmp_path / rl.NAME
    curves = pd.read_csv(root / "curves.csv").sort_values(["seed", "epoch"])
    assert {"seed", "epoch", "train_loss", "train_acc", "test_loss", "test_acc"} <= set(
        curves.columns)
    assert curves.seed.tolist() == [0, 0, 0, 1, 1, 1]          # quick: 2 seeds
    assert curves.epoch.tolist() == [0, 1, 2] * 2
    assert curves.notna().all().all()
    assert (root / "results.csv").exists() and (root / "figures" / "loss_accuracy.png").exists()
    summary = json.loads((root / "summary.json").read_text())
    assert summary["experiment"] == rl.NAME and summary["observations"]
    table = r.tables["results"]
    assert table.seed.tolist() == [0, 1]
    assert table.final_train_loss.nunique() == 2               # different inits
    assert table.labels_changed.nunique() == 1                 # the same random labels
    res = table.iloc[0]
    assert res.n_train == 300 and 0.8 < res.labels_changed < 0.97
    s = summary["statistics"]["settings"]["1.0"]
    assert s["final_train_acc"]["n"] == 2 and s["failures"]["runs"] == 2
    assert s["final_test_acc"]["median"] == pytest.approx(table.final_test_acc.median())
    assert [v["outcome"] for v in summary["verdicts"]] == ["pipeline check"]
    # the test accuracy is computed against the true labels: near chance, not 0
    assert 0.0 < curves.test_acc.iloc[-1] < 0.5
    again = dlscope.load(root)
    assert set(again.figures) == {"loss_accuracy"}


def _results(train, test, status=None) -> dict:
    n = len(train)
    return {"results": pd.DataFrame({
        "label_noise": 1.0, "seed": range(n), "status": status or ["ok"] * n,
        "final_train_acc": train, "final_test_acc": test})}


@pytest.mark.parametrize("train, test, outcome", [
    ([0.99, 0.985, 0.992], [0.101, 0.098, 0.104], "reproduced"),      # memorized, chance
    ([0.40, 0.45, 0.42], [0.101, 0.098, 0.104], "not reproduced"),    # did not memorize
    ([0.99, 0.985, 0.992], [0.50, 0.52, 0.49], "not reproduced"),     # test far above chance
    ([0.99, 0.60, 0.95], [0.101, 0.098, 0.104], "inconclusive"),      # interval too wide
    ([0.99], [0.10], "inconclusive"),                                 # one seed
])
def test_verdict_on_known_tables(train, test, outcome):
    v = rl.verdicts(rl.Config(), _results(train, test))
    assert [x.outcome for x in v] == [outcome]
    assert "99.34%" in v[0].published and "Zhang" in v[0].source


def test_diverged_seed_is_left_out_and_short_runs_are_pipeline_checks():
    t = _results([0.99, 0.985, 0.992, 0.1], [0.101, 0.098, 0.104, 0.1],
                 status=["ok", "ok", "ok", "diverged"])
    assert [x.outcome for x in rl.verdicts(rl.Config(), t)] == ["reproduced"]
    assert [x.outcome for x in rl.verdicts(rl.Config(epochs=4), t)] == ["pipeline check"]
