"""The thread rule of the training steps (`dlscope.train.threads`): a small MLP step runs on
one thread whatever torch's setting, so its numbers do not depend on that setting; a large
step and an autograd step keep the caller's threads."""

from __future__ import annotations

import numpy as np
import torch

from dlscope import models
from dlscope.data import Dataset
from dlscope.train.engine import TrainConfig, seeded_model, train
from dlscope.train.ensemble import train_ensemble
from dlscope.train.threads import SMALL_STEP_MACS, intra_op_threads, step_threads


def data(n=512, d=784, k=10, seed=0) -> Dataset:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g)
    y = torch.randint(0, k, (n,), generator=g)
    return Dataset(x_train=x, y_train=y, x_test=x[:64], y_test=y[:64], name="t", n_classes=k,
                   source="test")


def test_step_threads_counts_the_forward_macs():
    w = [torch.empty(128, 784), torch.empty(64, 128), torch.empty(10, 64)]
    macs_per_row = 784 * 128 + 128 * 64 + 64 * 10  # 109,184
    assert step_threads(w, 64) == 1  # 6,987,776 MACs
    small = SMALL_STEP_MACS // macs_per_row  # the largest batch below the limit
    assert step_threads(w, small) == 1
    assert step_threads(w, small + 1) is None
    stacked = [torch.empty(8, *t.shape) for t in w]  # 8 members: 8x the MACs
    assert step_threads(stacked, 64) is None
    assert step_threads([], 64) is None


def test_intra_op_threads_sets_and_restores():
    torch.set_num_threads(2)
    with intra_op_threads(1):
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == 2
    with intra_op_threads(None):
        assert torch.get_num_threads() == 2


def _run(threads: int, spec="mlp:784-128-64-10", bs=64):
    torch.set_num_threads(threads)
    seen = []
    model = seeded_model(lambda: models.build(spec), 0)
    cfg = TrainConfig(lr=1e-3, batch_size=bs, epochs=1, eval_test=True)
    res = train(model, data(n=4096), cfg, seed=0,
                on_epoch=lambda e, m, met: seen.append(torch.get_num_threads()))
    assert torch.get_num_threads() == threads  # restored after training
    return res, [p.detach().clone() for p in model.parameters()], seen


def test_small_mlp_numbers_do_not_depend_on_torch_threads():
    # before the rule this run differed between 1 and 2 threads (step losses by 2.4e-7)
    r1, p1, seen1 = _run(1)
    r2, p2, seen2 = _run(2)
    assert seen1 == seen2 == [1, 1]  # the loop (and its callbacks) ran on one thread
    assert np.array_equal(r1.step_loss, r2.step_loss)
    assert r1.history == r2.history
    assert all(torch.equal(a, b) for a, b in zip(p1, p2))


def test_large_and_autograd_steps_keep_the_callers_threads():
    *_, seen = _run(2, bs=256)  # 256 x 109,184 MACs: above the limit
    assert seen == [2, 2]
    *_, seen = _run(2, spec="mlp:784-8-10", bs=64)  # tiny: one thread
    assert seen == [1, 1]
    torch.set_num_threads(2)
    seen = []
    x = data(n=64, d=784)
    img = Dataset(x_train=x.x_train.view(-1, 1, 28, 28), y_train=x.y_train,
                  x_test=x.x_test.view(-1, 1, 28, 28), y_test=x.y_test, name="img",
                  n_classes=10, source="test")
    train_ensemble(["cnn-a"] * 2, img, TrainConfig(lr=1e-3, batch_size=32, epochs=1,
                                                   eval_test=False), [0, 1],
                   on_epoch=lambda e, m, met: seen.append(torch.get_num_threads()))
    assert seen == [2, 2, 2, 2]  # CNN members (autograd steps): torch's setting
