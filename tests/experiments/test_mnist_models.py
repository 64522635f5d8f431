"""mnist-models: the equal-parameter CNN family, config validation before anything is
written, a shrunk quick run with seeds (train metrics = full evaluations of the end-of-epoch
model, checked against engine.evaluate), and the verdict on constructed tables."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

import dlscope
from dlscope import experiments, models
from dlscope.contract import config as configs
from dlscope.data import MnistOptions, mnist_dataset
from dlscope.errors import UserError
from dlscope.train.engine import TrainConfig, evaluate, seeded_model, train

EXP = experiments.get("mnist-models")


@pytest.mark.parametrize("target", [20_000, 25_000, 60_000])
def test_cnn_family_has_equal_counts_and_distinct_depths(target):
    specs = [models.cnn_for_params(d, target) for d in (1, 2, 3, 4)]
    for d, s in zip((1, 2, 3, 4), specs):
        built = models.module_params(models.build(s))  # counted on the torch module itself
        assert built == models.count_params(s)
        assert abs(built - target) <= 0.01 * target, (s.name, built)
        assert len(s.fc) == d and s.channels == (8, 16)
    assert len({models.describe(s)["depth"] for s in specs}) == 4
    with pytest.raises(UserError, match="cannot hold"):
        models.cnn_for_params(2, 3000)  # the conv stack alone takes 3,424
    with pytest.raises(UserError, match="more than 1% off"):
        models.cnn_for_params(1, 10_000)  # one hidden layer: steps of 267 parameters

def test_assignment_profile_is_the_equal_parameter_family():
    cfg = configs.resolve(EXP, "assignment")
    assert (cfg.family, cfg.target_params, cfg.fc_layers, cfg.seeds) == (
        "equal-params", 25000, [1, 2, 4], 3)
    assert (cfg.lr, cfg.batch_size, cfg.epochs, cfg.train_subset) == (1e-3, 100, 10, None)
    fam = EXP.model_list(cfg)
    assert [len(s.fc) for _, s in fam] == [1, 2, 4]
    assert all(abs(models.count_params(s) - 25000) <= 250 for _, s in fam)
    specs = EXP.runs(cfg)
    assert len(specs) == 9 and len({s.hash for s in specs}) == 9
    assert sorted({s.params["seed"] for s in specs}) == [0, 1, 2]
    reports = configs.resolve(EXP, "assignment", sets=["family=reports"])
    assert [n for n, _ in EXP.model_list(reports)] == ["cnn-a", "cnn-b", "cnn-c"]
    assert models.count_params("cnn-b") == 206_922
    quick = configs.resolve(EXP, "quick")
    assert (quick.train_subset, quick.epochs, quick.seeds) == (10000, 2, 2)


@pytest.mark.parametrize("bad", [{"models": ["cnn-a", "resnet"]}, {"models": ["mlp:1-8-1"]},
                                 {"models": ["cnn-a", "cnn-a"]}, {"models": []},
                                 {"models": ["cnn:8/k3p1/fc16/in32"]}, {"family": "big"},
                                 {"fc_layers": [1, 1]}, {"fc_layers": [0, 2]}, {"seeds": 0},
                                 {"target_params": 3000}])
def test_bad_config_fails_before_anything_is_written(bad, tmp_path):
    key = next(iter(bad))
    with pytest.raises(UserError, match=key) as err:
        dlscope.run("mnist-models", profile="quick", out=tmp_path / "o", **bad)
    assert "\n" not in str(err.value).strip()
    assert not (tmp_path / "o").exists()


NAMES = ["cnn:4/k3p1/fc16", "mlp:784-16-10"]


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
    out = tmp_path_factory.mktemp("mm")
    return dlscope.run("mnist-models", profile="quick", out=out, executor="local", threads=1,
                       models=NAMES, train_subset=800, epochs=2, seeds=2)


def test_quick_run_writes_seed_rows_statistics_and_a_pipeline_check(quick):
    root = quick.path
    for f in ("results.csv", "curves.csv", "summary.json", "figures/loss.png",
              "figures/accuracy.png"):
        assert (root / f).is_file(), f
    res, cur = quick.tables["results"], quick.tables["curves"]
    assert list(res.columns[:9]) == ["model", "seed", "spec", "params", "train_loss",
                                     "train_acc", "test_loss", "test_acc", "epochs"]
    assert list(cur.columns) == ["model", "seed", "epoch", "train_loss", "train_acc",
                                 "test_loss", "test_acc", "train_loss_running",
                                 "train_acc_running"]
    assert res.model.tolist() == [n for n in NAMES for _ in (0, 1)]
    assert res.seed.tolist() == [0, 1, 0, 1]
    assert res.params.tolist() == [models.count_params(n) for n in NAMES for _ in (0, 1)]
    assert cur.groupby(["model", "seed"]).epoch.apply(list).tolist() == [[0, 1, 2]] * 4
    last = cur[cur.epoch == 2].set_index(["model", "seed"])
    for k in ("train_loss", "train_acc", "test_loss", "test_acc"):
        np.testing.assert_allclose(res.set_index(["model", "seed"])[k], last.loc[
            res.set_index(["model", "seed"]).index, k])
    assert ((cur.test_acc > 0) & (cur.test_acc <= 1)).all()
    first = cur[cur.epoch == 0].set_index(["model", "seed"]).test_acc
    assert (last.test_acc > first + 0.1).all()  # learned something in 2 epochs
    summary = json.loads((root / "summary.json").read_text())
    st = summary["statistics"]
    for n in NAMES:
        iv = st["models"][n]["test_acc"]
        accs = res[res.model == n].test_acc
        assert iv["n"] == 2 and iv["median"] == pytest.approx(accs.median())
        assert iv["lo"] < iv["median"] < iv["hi"] or accs.nunique() == 1
        assert st["models"][n]["runs"] == 2 and st["models"][n]["diverged"] == 0
    (c,) = st["comparisons"]
    accs = res.groupby("model", sort=False).test_acc.mean()
    assert (c["a"], c["b"]) == tuple(NAMES)
    assert c["diff"] == pytest.approx(accs[NAMES[1]] - accs[NAMES[0]])
    (v,) = summary["verdicts"]
    assert v["outcome"] == "pipeline check" and "98.6-99.2%" in v["published"]
    assert any("98.5% test accuracy bar" in o and "pipeline check" in o
               for o in summary["observations"])
    assert set(summary["headline"]) == {f"{n}/test_acc" for n in NAMES}
    back = dlscope.load(root)
    assert set(back.figures) == {"loss", "accuracy"}
    assert back.tables["results"].model.tolist() == res.model.tolist()


def test_train_metrics_are_full_evaluations_of_the_end_of_epoch_model(quick):
    """Retrain one seed independently for 1 and 2 epochs: engine.evaluate of that model on
    the whole training set equals the curve's train metrics, not the running mean."""
    ds = mnist_dataset(MnistOptions(train_subset=800, seed=0))
    cur = quick.tables["curves"]
    c = cur[(cur.model == NAMES[0]) & (cur.seed == 1)].set_index("epoch")
    for epochs in (1, 2):
        model = seeded_model(lambda: models.build(NAMES[0]), 1)
        train(model, ds, TrainConfig(lr=1e-3, batch_size=100, epochs=epochs, eval_test=False),
              seed=1)
        loss, acc = evaluate(model, ds.x_train, ds.y_train, True)
        assert c.loc[epochs, "train_loss"] == pytest.approx(loss, rel=1e-5)
        assert c.loc[epochs, "train_acc"] == pytest.approx(acc, abs=1e-9)
        assert c.loc[epochs, "train_loss_running"] != pytest.approx(loss, rel=1e-3)


def _table(accs: dict[str, list[float]]) -> dict[str, pd.DataFrame]:
    rows = [{"model": m, "seed": s, "params": 25000, "fc_layers": 1, "status": "ok",
             "test_acc": a, "n_train": 60000} for m, v in accs.items() for s, a in enumerate(v)]
    return {"results": pd.DataFrame(rows)}


def test_verdict_on_constructed_tables():
    cfg = configs.resolve(EXP, "assignment")
    good = EXP.verdicts(cfg, _table({"a": [0.988, 0.990, 0.989], "b": [0.986, 0.991, 0.987]}))
    assert [v.outcome for v in good] == ["reproduced"]
    assert "no clear difference" in good[0].statistic  # b - a: [-0.0065, +0.0052]
    low = EXP.verdicts(cfg, _table({"a": [0.988, 0.990, 0.989], "b": [0.970, 0.971, 0.972]}))
    assert [v.outcome for v in low] == ["not reproduced"]
    assert "no clear difference" not in low[0].statistic
    edge = EXP.verdicts(cfg, _table({"a": [0.988, 0.990, 0.989], "b": [0.99, 0.98, 0.97]}))
    assert [v.outcome for v in edge] == ["inconclusive"]  # median 98.0%, interval covers 98.5%
    one = EXP.verdicts(cfg, _table({"a": [0.99], "b": [0.99]}))
    assert [v.outcome for v in one] == ["inconclusive"]
    quick = configs.resolve(EXP, "quick")
    assert [v.outcome for v in EXP.verdicts(quick, _table({"a": [0.99, 0.99]}))] == [
        "pipeline check"]


@pytest.mark.parametrize("n,k", [(800, 300), (60000, 10000)])
def test_train_eval_sample_is_a_fixed_seeded_subset(n, k):
    a, b = EXP.train_eval_indices(n, k, 0), EXP.train_eval_indices(n, k, 0)
    assert np.array_equal(a, b) and len(np.unique(a)) == k and a.min() >= 0 and a.max() < n
    assert not np.array_equal(a, EXP.train_eval_indices(n, k, 1))  # another data seed
    assert EXP.train_eval_indices(n, 0, 0) is None and EXP.train_eval_indices(n, n, 0) is None


def test_sampled_train_curves_change_only_where_the_sample_replaces_the_full_set(tmp_path):
    """The same tiny run with the whole set (train_eval_sample=0, today's path) and with a
    300-image sample: identical training, test curves, running means, epoch 0 and final train
    metrics; epochs in between equal a direct evaluation of those 300 images by the
    end-of-epoch model (retrained independently, forward and cross-entropy by hand)."""
    import torch
    import torch.nn.functional as F
    kw = dict(profile="quick", executor="local", threads=1, models=[NAMES[0]],
              train_subset=800, epochs=3, seeds=1)
    full = dlscope.run("mnist-models", out=tmp_path / "full", train_eval_sample=0, **kw)
    samp = dlscope.run("mnist-models", out=tmp_path / "samp", train_eval_sample=300, **kw)
    cf, cs = full.tables["curves"], samp.tables["curves"]
    same = ["epoch", "test_loss", "test_acc", "train_loss_running", "train_acc_running"]
    pd.testing.assert_frame_equal(cf[same], cs[same])
    ends = cf.epoch.isin([0, 3])
    pd.testing.assert_frame_equal(cf[ends], cs[ends])
    for k in METRICS_ALL:
        assert full.tables["results"][k].tolist() == samp.tables["results"][k].tolist()
    ds = mnist_dataset(MnistOptions(train_subset=800, seed=0))
    idx = torch.from_numpy(EXP.train_eval_indices(800, 300, 0))
    xs, ys = ds.x_train[idx], ds.y_train[idx]
    direct = {}

    def on_epoch(epoch, m, metrics):
        with torch.no_grad():
            m.eval()
            out = m(xs)
            m.train()
        direct[epoch] = (F.cross_entropy(out.double(), ys).item(),
                         (out.argmax(1) == ys).double().mean().item())
    model = seeded_model(lambda: models.build(NAMES[0]), 0)
    train(model, ds, TrainConfig(lr=1e-3, batch_size=100, epochs=3, eval_test=False), seed=0,
          on_epoch=on_epoch)
    c = cs.set_index("epoch")
    for e in (1, 2):
        assert c.loc[e, "train_loss"] == pytest.approx(direct[e][0], rel=1e-5)
        assert c.loc[e, "train_acc"] == pytest.approx(direct[e][1], abs=1e-9)
        assert c.loc[e, "train_loss"] != pytest.approx(cf.set_index("epoch").loc[e, "train_loss"],
                                                       rel=1e-6)
    assert samp.figures and "300-image sample" in EXP.train_sample_text(
        configs.resolve(EXP, "quick", sets=["train_eval_sample=300"]), 800)


METRICS_ALL = ("train_loss", "train_acc", "test_loss", "test_acc", "train_loss_running",
               "train_acc_running")
