"""Matched training (experiments.flatness_common): it stops at the first epoch whose full
evaluation meets the criterion and records that step; a model that hits the cap is "missed";
learning-rate scaling rules; a batch larger than the training set is a UserError (exit 2)."""

from __future__ import annotations

import math
import subprocess
import sys

import pytest

from dlscope import models
from dlscope.data import MnistOptions, mnist_dataset
from dlscope.experiments.flatness_common import scaled_lr, train_matched
from dlscope.train.engine import TrainConfig, evaluate, seeded_model, train

SPEC = models.parse_model("mlp:784-16-10")


@pytest.fixture(scope="module")
def ds():
    return mnist_dataset(MnistOptions(train_subset=300, seed=0, flatten=True))


def _net(seed=1):
    return seeded_model(lambda: models.build(SPEC), seed)


def _acc_after(ds, epochs, bs, seed=1):
    m = _net()
    train(m, ds, TrainConfig(lr=3e-3, batch_size=bs, epochs=epochs, eval_test=False), seed=seed)
    return evaluate(m, ds.x_train, ds.y_train, True)


@pytest.mark.parametrize("crit,target", [("train_acc", 0.9), ("train_loss", 0.3)])
def test_stops_at_the_first_epoch_meeting_the_criterion(ds, crit, target):
    bs = 32
    spe = math.ceil(300 / bs)
    m = _net()
    r = train_matched(m, ds, TrainConfig(lr=3e-3, batch_size=bs), {
        "criterion": crit, "target": target, "max_steps": 2000}, seed=1)
    assert r["status"] == "ok" and r["reached"]
    k = r["epochs"]
    assert r["criterion_step"] == r["steps"] == k * spe and k >= 2
    # an independent check: plain train() for k and k-1 epochs with the same seeds
    loss_k, acc_k = _acc_after(ds, k, bs)
    loss_before, acc_before = _acc_after(ds, k - 1, bs)
    assert evaluate(m, ds.x_train, ds.y_train, True) == pytest.approx((loss_k, acc_k), rel=1e-5)
    if crit == "train_acc":
        assert acc_k >= target > acc_before
    else:
        assert loss_k <= target < loss_before
    # the curve holds the full evaluation after each epoch, the last one at the criterion
    assert r["curve"].shape == (k, 3) and r["curve"][-1, 0] == k * spe


def test_cap_gives_missed_and_steps_criterion_runs_whole_epochs(ds):
    r = train_matched(_net(), ds, TrainConfig(lr=1e-4, batch_size=100),
                      {"criterion": "train_acc", "target": 0.999, "max_steps": 7}, seed=0)
    assert r["status"] == "missed" and not r["reached"] and r["criterion_step"] is None
    assert r["steps"] == 9  # 7 steps rounded up to whole epochs of 3 steps
    r = train_matched(_net(), ds, TrainConfig(lr=1e-3, batch_size=64),
                      {"criterion": "steps", "target": 0.99, "max_steps": 12}, seed=0)
    assert r["status"] == "ok" and r["steps"] == 15 and r["criterion_step"] is None


def test_lr_scaling_rules():
    assert scaled_lr(1e-3, 1024, "none", 64) == 1e-3
    assert scaled_lr(1e-3, 1024, "linear", 64) == pytest.approx(16e-3)
    assert scaled_lr(1e-3, 1024, "sqrt", 64) == pytest.approx(4e-3)
    assert scaled_lr(1e-3, 16, "sqrt", 64) == pytest.approx(0.5e-3)


@pytest.mark.parametrize("exp,sets", [
    ("sensitivity", ["train_subset=1000", "batch_sizes=[16, 4096]"]),
    ("interpolation", ["train_subset=1000", "batch_pair=[64, 2048]"])])
def test_batch_larger_than_the_training_set_exits_2(tmp_path, exp, sets):
    cmd = [sys.executable, "-m", "dlscope.cli", "run", exp, "--profile", "quick", "--out",
           str(tmp_path)]
    for s in sets:
        cmd += ["--set", s]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert p.returncode == 2, p.stderr
    assert "> the 1000 training images" in p.stderr and "largest possible batch is 1000" \
        in p.stderr
    assert not (tmp_path / exp).exists()
