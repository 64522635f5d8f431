"""CNN members stepped as one grouped network (`train_ensemble(..., group_cnns=True)`) equal
the same runs trained alone with engine.train, to float tolerance: per-step losses, gradient
norms, histories, stopping and final parameters, with different optimizers and budgets."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from test_ensemble import assert_same_run, solo
from torch import nn

from dlscope import models
from dlscope.data import Dataset
from dlscope.train.engine import TrainConfig, seeded_model
from dlscope.train.ensemble import train_ensemble
from dlscope.train.grouped import groupable
from dlscope.train.steps import choose_step


def images(n=96, side=8, seed=0) -> Dataset:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n + 24, 1, side, side, generator=g)
    y = (x.flatten(1) @ torch.randn(side * side, 5, generator=g)).argmax(1)
    return Dataset(x[:n], y[:n], x[n:], y[n:], "img", 5, "test")


@pytest.mark.parametrize("spec", [
    "cnn:4,6/k3p1/fc12/in8",  # two conv blocks, ReLU after each pool
    {"kind": "cnn", "channels": [3], "kernel": 3, "padding": 0, "fc": [8, 8],
     "input_size": 8, "activation": "tanh", "n_classes": 5}])  # tanh before the pool
def test_grouped_members_equal_their_solo_runs(spec):
    data = images()
    cfgs = [TrainConfig(lr=1e-2, batch_size=16, epochs=3),
            TrainConfig(optimizer="sgd", lr=0.1, momentum=0.9, batch_size=16, epochs=3),
            TrainConfig(lr=1e-2, batch_size=16, epochs=2),   # leaves the group after 2
            TrainConfig(lr=3e-3, batch_size=16, epochs=3, weight_decay=1e-3)]
    seeds = [0, 1, 2, 3]
    nets = [seeded_model(lambda: models.build(spec), s) for s in seeds]
    [step] = choose_step(nets, True, data.x_train, [c.optimizer_settings() for c in cfgs],
                         group_cnns=True)
    assert type(step).__name__ == "GroupedCNNStep"
    res = train_ensemble([spec] * 4, data, cfgs, seeds, record_grad_norm=True,
                         group_cnns=True)
    assert res[2].epochs_run == 2 and res[0].epochs_run == 3
    for e in range(4):
        r, m = solo(spec, data, cfgs[e], seeds[e], record_grad_norm=True)
        assert_same_run(res[e], res.models[e], r, m, rtol=1e-4)
        np.testing.assert_allclose(res[e].grad_norm, r.grad_norm, rtol=1e-4)
    assert not np.allclose(res[0].step_loss, res[3].step_loss)  # members really differ


def test_what_cannot_be_grouped_goes_one_by_one():
    data = images()
    x = data.x_train
    cnn = [seeded_model(lambda: models.build("cnn:4/k3p1/fc8/in8"), s) for s in (0, 1)]
    assert groupable(cnn, x)
    assert not groupable(cnn[:1], x)                                  # one member
    assert not groupable([cnn[0], seeded_model(lambda: models.build("cnn:5/k3p1/fc8/in8"), 1)],
                         x)                                           # different shapes
    dropout = [seeded_model(lambda: models.build("cnn:4/k3p1/fc8/in8/drop0.5"), s)
               for s in (0, 1)]
    assert not groupable(dropout, x)                                  # dropout draws
    bn = [nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2), nn.Flatten(),
                        nn.Linear(72, 5)) for _ in range(2)]
    assert not groupable(bn, x)
    mlp = [seeded_model(lambda: models.build("mlp:64-8-5"), s) for s in (0, 1)]
    assert not groupable(mlp, x.flatten(1))
    hooked = [seeded_model(lambda: models.build("cnn:4/k3p1/fc8/in8"), s) for s in (0, 1)]
    hooked[1][0].register_forward_hook(lambda *a: None)
    assert not groupable(hooked, x)
    # without group_cnns the members go one by one, as before
    steps = choose_step(cnn, True, x, [{"kind": "adam", "lr": 1e-3}] * 2)
    assert [type(s).__name__ for s in steps] == ["AutogradStep", "AutogradStep"]
