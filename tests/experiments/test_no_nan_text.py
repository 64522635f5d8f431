"""No "nan", "inf" or "None" in what a reader sees: a statistic that cannot be computed (no
finished run, one seed) says why in words, in the stats helpers and in the observations,
verdicts and headline of experiments fed degenerate tables (every seed of a depth collapsed,
a single seed, a single run)."""

from __future__ import annotations

import json
import math
import re

import numpy as np
import pandas as pd
import pytest

from dlscope import experiments
from dlscope.contract import config as configs
from dlscope.contract.runspec import RunResult
from dlscope.experiments import stats
from dlscope.report.fmt import fmt_number

BAD = re.compile(r"\b(nan|inf|none)\b", re.IGNORECASE)


def _texts(exp, cfg, tables) -> list[str]:
    out = list(exp.observations(cfg, tables))
    for v in exp.verdicts(cfg, tables):
        out += [v.statistic, v.rule, v.published]
    head = exp.headline(cfg, tables)
    assert all(isinstance(x, (int, float)) and math.isfinite(x) for x in head.values()), head
    return out


def _clean(texts):
    bad = [t for t in texts if BAD.search(t)]
    assert not bad, bad
    assert texts


def test_stats_texts_of_empty_and_single_seed_values():
    _clean([stats.interval([]).text(), stats.interval([1.0]).text(),
            stats.interval([np.nan, np.inf]).text(), stats.brief([]), stats.brief([np.nan]),
            stats.brief([2.0]), stats.compare([], [1.0, 2.0]).text(),
            stats.compare([1.0], [2.0, 3.0]).text(), stats.compare([], []).text(),
            stats.trend([1, 2], [3, 4]).text(), stats.trend([], []).text()])
    assert stats.compare([], [1.0, 2.0]).text() == \
        "no difference: no finished run on one side (0 vs 2 runs)"
    assert "one seed on a side: no interval" in stats.compare([1.0], [2.0, 3.0]).text()
    assert fmt_number(float("nan")) == "—"


def _function_fit_tables(statuses: dict[str, list[str]]):
    rows = []
    for depth, (model, sts) in enumerate(statuses.items(), 1):
        for seed, st in enumerate(sts):
            loss = 1e-3 * (seed + depth) if st == "ok" else 0.5
            rows.append({"function": "sin", "model": model, "depth": depth, "widths": "[4]",
                         "params": 100 + depth, "seed": seed, "final_loss": loss,
                         "converged": st == "ok", "converged_epoch": 10 if st == "ok" else None,
                         "epochs_run": 20000, "status": st, "stop_rule": "max_epochs",
                         "wall_s": 1.0, "collapsed": st == "collapsed", "init_pred_std": 0.1,
                         "init": "he"})
    res = pd.DataFrame(rows)
    res["log10_final_loss"] = np.log10(res.final_loss)
    return {"results": res}


@pytest.mark.parametrize("statuses", [
    {"d1": ["ok", "ok", "ok"], "d7": ["collapsed", "collapsed", "collapsed"]},  # depth all gone
    {"d1": ["ok"], "d7": ["ok"]},                                               # one seed
    {"d1": ["diverged", "collapsed"], "d7": ["collapsed", "diverged"]},         # nothing finished
])
def test_function_fit_says_why_a_statistic_is_missing(statuses):
    exp = experiments.get("function-fit")
    cfg = configs.resolve(exp, "assignment")
    texts = _texts(exp, cfg, _function_fit_tables(statuses))
    _clean(texts)
    if statuses["d7"] == ["collapsed"] * 3:
        assert any("no run of d7 finished without collapsing or diverging" in t for t in texts)
    json.dumps(exp.statistics(cfg, _function_fit_tables(statuses)))  # still JSON


def _wp_results(n_runs, n=25, dim=600, status="ok"):
    rng = np.random.default_rng(0)
    out = []
    for i in range(n_runs):
        snaps = np.vstack([np.zeros(dim), rng.standard_normal((n - 1, dim))]).cumsum(0)
        arrays = {"snapshots": snaps.astype(np.float32), "epoch": np.arange(n),
                  **{k: np.linspace(1, 0.5, n) for k in ("train_loss", "train_acc",
                                                          "test_loss", "test_acc")}}
        values = {"status": status, "run": i, "seed": i, "epochs_run": n - 1, "params": dim,
                  "layer1": [0, dim // 2], "wall_s": 1.0, "train_loss": 0.5, "train_acc": 0.5,
                  "test_acc": 0.5}
        out.append((None, RunResult(values=values, arrays=arrays)))
    return out


@pytest.mark.parametrize("n_runs, status", [(1, "ok"), (3, "diverged"), (3, "ok")])
def test_weight_pca_single_run_and_failed_runs(n_runs, status):
    exp = experiments.get("weight-pca")
    cfg = configs.resolve(exp, "assignment", overrides={"null_walks": 2})
    tables = exp.analyze(cfg, _wp_results(n_runs, status=status))
    texts = _texts(exp, cfg, tables)
    _clean(texts)
    if n_runs == 1:
        assert any("one run: no interval" in t for t in texts)
