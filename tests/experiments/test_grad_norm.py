"""grad-norm: the engine's recorded gradient norm against a by-hand autograd computation,
and a shrunk quick-profile run of the experiment."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import dlscope
from dlscope import experiments, models
from dlscope.contract import config as configs
from dlscope.data import MnistOptions, function_dataset, mnist_dataset
from dlscope.errors import UserError
from dlscope.train.engine import TrainConfig, seeded_model, train


def _by_hand(model, xb, yb, loss_fn) -> tuple[float, float]:
    loss = loss_fn(model(xb), yb)
    grads = torch.autograd.grad(loss, list(model.parameters()))
    return float(loss.detach()), float(torch.sqrt(sum((g.double() ** 2).sum() for g in grads)))


def test_full_batch_grad_norm_equals_autograd():
    ds = function_dataset("sinc", n_train=200, n_test=8)
    build = lambda: models.build("mlp:1-16-16-1")
    model = seeded_model(build, 3)
    fresh = seeded_model(build, 3)  # same init: the state before the first step
    res = train(model, ds, TrainConfig(epochs=2, eval_test=False), seed=3, record_grad_norm=True)
    assert res.grad_norm.shape == (2,) and res.step_loss.shape == (2,)
    loss, norm = _by_hand(fresh, ds.x_train, ds.y_train, F.mse_loss)
    assert res.step_loss[0] == pytest.approx(loss, rel=1e-6)
    assert res.grad_norm[0] == pytest.approx(norm, rel=1e-5)
    assert res.grad_norm[1] != pytest.approx(norm, rel=1e-3)  # second step: moved parameters


def test_minibatch_grad_norm_equals_autograd_on_the_engines_first_batch():
    ds = mnist_dataset(MnistOptions(train_subset=500))
    build = lambda: models.build("cnn:4/k3p1/fc16")
    seed, bs = 5, 64
    model, fresh = seeded_model(build, seed), seeded_model(build, seed)
    res = train(model, ds, TrainConfig(batch_size=bs, epochs=1, eval_test=False), seed=seed,
                record_grad_norm=True)
    assert len(res.grad_norm) == -(-500 // bs)
    perm = torch.randperm(500, generator=torch.Generator().manual_seed(seed))  # as the engine
    idx = perm[:bs]
    loss, norm = _by_hand(fresh, ds.x_train[idx], ds.y_train[idx], F.cross_entropy)
    assert res.step_loss[0] == pytest.approx(loss, rel=1e-6)
    assert res.grad_norm[0] == pytest.approx(norm, rel=1e-5)


SMALL = {"function_epochs": 150, "mnist_epochs": 2, "train_subset": 600,
         "mnist_model": "cnn:4/k3p1/fc16"}


def test_quick_run_writes_seed_rows_statistics_figures_and_reloads(tmp_path):
    r = dlscope.run("grad-norm", profile="quick", out=tmp_path, executor="local", threads=1,
                    **SMALL)
    root = tmp_path / "grad-norm"
    for f in ("curves.csv", "results.csv", "summary.json", "config.toml",
              "figures/function.png", "figures/mnist.png"):
        assert (root / f).is_file(), f
    cur, res = r.tables["curves"], r.tables["results"]
    assert list(cur.columns) == ["task", "seed", "step", "epoch", "loss", "grad_norm"]
    fn, mn = cur[cur.task == "function"], cur[cur.task == "mnist"]
    assert len(fn) == 2 * 150 and fn.epoch.max() == 150  # full batch: one step per epoch
    assert fn.groupby("seed").size().to_dict() == {0: 150, 1: 150}
    assert mn[mn.seed == 0].epoch.tolist() == [1] * 6 + [2] * 6  # 600 / 100 per epoch
    assert (cur.grad_norm > 0).all() and cur.loss.notna().all()
    assert set(res.status) == {"ok"} and res.seed.tolist() == [0, 1, 0, 1]
    # the table's summaries are medians over the first/last 5% of each seed's curve
    for row in res.itertuples():
        c = cur[(cur.task == row.task) & (cur.seed == row.seed)]
        k = max(1, len(c) // 20)
        assert row.final_grad_norm == pytest.approx(c.grad_norm.iloc[-k:].median())
        assert row.first_loss == pytest.approx(c.loss.iloc[:k].median())
    st = r.summary["statistics"]
    assert "no published number" in st["published"] and r.summary["verdicts"] == []
    for task in ("function", "mnist"):
        iv = st["tasks"][task]["final_grad_norm"]
        vals = res[res.task == task].final_grad_norm
        assert iv["n"] == 2 and iv["mean"] == pytest.approx(vals.mean())
        assert iv["lo"] <= vals.mean() <= iv["hi"]
        assert st["tasks"][task]["runs"] == 2 and st["tasks"][task]["diverged"] == 0
    assert len(r.observations) == 2 and all("gradient norm" in o and "2 seeds" in o
                                            for o in r.observations)
    assert r.summary["headline"]["mnist/final_grad_norm"] == pytest.approx(
        res[res.task == "mnist"].final_grad_norm.median())
    back = dlscope.load(root)
    assert set(back.figures) == {"function", "mnist"}
    assert back.tables["curves"].shape == cur.shape


def test_function_seeds_train_as_an_ensemble_equal_to_solo_runs():
    import dataclasses

    from dlscope.contract.runspec import RunContext, execute
    from dlscope.experiments import grad_norm

    cfg = configs.resolve(grad_norm, "quick", overrides={"tasks": ["function"],
                                                         "function_epochs": 40})
    specs = [dataclasses.replace(s, threads=1) for s in grad_norm.runs(cfg)]
    assert len(specs) == 2 and {s.group for s in specs} == {"function"}
    together = execute(specs)  # -> record_many
    ctx = RunContext(device=torch.device("cpu"), threads=1)
    for spec, got in zip(specs, together):
        alone = grad_norm.run_one(spec.params, ctx)
        np.testing.assert_allclose(got.arrays["grad_norm"], alone.arrays["grad_norm"],
                                   rtol=1e-4, atol=1e-7)
        np.testing.assert_allclose(got.arrays["loss"], alone.arrays["loss"], rtol=1e-4)


@pytest.mark.parametrize("bad", [{"tasks": ["cifar"]}, {"tasks": []},
                                 {"tasks": ["mnist", "mnist"]}, {"function": "nonsense"},
                                 {"mnist_model": "mlp:1-4-1"}, {"function_model": "cnn-a"},
                                 {"function_model": "bogus:1"}, {"mnist_lr": 0}, {"seeds": 0}])
def test_bad_config_is_a_user_error(bad, tmp_path):
    with pytest.raises(UserError):
        dlscope.run("grad-norm", profile="quick", out=tmp_path / "o", **bad)
    assert not (tmp_path / "o").exists()


def test_assignment_defaults_record_both_tasks():
    cfg = configs.resolve(experiments.get("grad-norm"), "assignment")
    specs = experiments.get("grad-norm").runs(cfg)
    assert [s.key for s in specs] == [f"{t}/seed={i}" for t in ("function", "mnist")
                                      for i in range(3)]
    assert cfg.seeds == 3 and configs.resolve(experiments.get("grad-norm"), "quick").seeds == 2
    assert cfg.function_batch is None and cfg.mnist_batch == 100
    assert [s.group for s in specs] == ["function"] * 3 + [None] * 3  # cnn-c: one by one
