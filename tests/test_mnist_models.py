"""mnist-models: config validation before anything is written, and a shrunk quick run."""

from __future__ import annotations

import json

import numpy as np
import pytest

import dlscope
from dlscope.execution import config as configs
from dlscope import experiments, models
from dlscope.errors import UserError


EXP = experiments.get("mnist-models")


def test_assignment_profile_is_the_reports_setup():
    cfg = configs.resolve(EXP, "assignment")
    assert cfg.models == ["cnn-a", "cnn-b", "cnn-c"]
    assert (cfg.lr, cfg.batch_size, cfg.epochs, cfg.train_subset) == (1e-3, 100, 10, None)
    assert models.count_params("cnn-b") == 206_922
    quick = configs.resolve(EXP, "quick")
    assert quick.train_subset == 10000 and quick.epochs == 2
    specs = EXP.runs(cfg)
    assert [s.key for s in specs] == cfg.models and len({s.hash for s in specs}) == 3


@pytest.mark.parametrize("bad", [["cnn-a", "resnet"], ["mlp:1-8-1"], ["cnn-a", "cnn-a"], [],
                                 ["cnn:8/k3p1/fc16/in32"]])
def test_bad_models_fail_before_anything_is_written(bad, tmp_path):
    with pytest.raises(UserError, match="models"):
        dlscope.run("mnist-models", profile="quick", out=tmp_path / "o", models=bad)
    assert not (tmp_path / "o").exists()


def test_quick_run_writes_tables_figures_summary_and_reloads(tmp_path):
    names = ["cnn:4/k3p1/fc16", "mlp:784-16-10"]
    r = dlscope.run("mnist-models", profile="quick", out=tmp_path, executor="local", threads=1,
                    models=names, train_subset=800, epochs=2)
    root = tmp_path / "mnist-models"
    for f in ("results.csv", "curves.csv", "summary.json", "figures/loss.png",
              "figures/accuracy.png"):
        assert (root / f).is_file(), f
    res, cur = r.tables["results"], r.tables["curves"]
    assert list(res.columns[:8]) == ["model", "spec", "params", "train_loss", "train_acc",
                                     "test_loss", "test_acc", "epochs"]
    assert "status" in res.columns
    assert list(cur.columns) == ["model", "epoch", "train_loss", "train_acc", "test_loss",
                                 "test_acc"]
    assert res.model.tolist() == names
    assert res.params.tolist() == [models.count_params(n) for n in names]
    assert cur.groupby("model").epoch.apply(list).to_dict() == {n: [1, 2] for n in names}
    last = cur[cur.epoch == 2].set_index("model")
    for k in ("train_loss", "train_acc", "test_loss", "test_acc"):
        np.testing.assert_allclose(res.set_index("model")[k], last.loc[names, k])
    assert ((cur.test_acc > 0.1) & (cur.test_acc <= 1)).all()  # learned something in 2 epochs
    summary = json.loads((root / "summary.json").read_text())
    assert summary["observations"] and set(summary["headline"]) == {f"{n}/test_acc" for n in names}
    assert any("98.5% test accuracy bar" in o for o in summary["observations"])
    back = dlscope.load(root)
    assert set(back.figures) == {"loss", "accuracy"}
    assert back.tables["results"].model.tolist() == names
