"""The closed-form 1 -> H -> 1 ReLU step (train/onehidden.py) against the autograd reference
path (`train(fast=False)`: nn.Sequential, loss.backward(), torch.optim): per-step losses and
final parameters over a few hundred full-batch Adam steps, gradients of one step in float64,
and which models it takes."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from dlscope.data.dataset import Dataset
from dlscope.train.engine import TrainConfig, seeded_model, train
from dlscope.train.onehidden import OneHiddenStep, applies
from dlscope.train.steps import choose_step


def _net(h: int = 183, act=nn.ReLU):
    return nn.Sequential(nn.Linear(1, h), act(), nn.Linear(h, 1))


def _data(n: int = 1000) -> Dataset:
    x = torch.linspace(-2, 3, n)[:, None]
    return Dataset.from_tensors(x, torch.sin(3 * x) * torch.exp(-0.2 * x))


def test_gradients_equal_autograd_in_float64():
    torch.manual_seed(3)
    net = _net(37).double()
    ref = _net(37).double()
    ref.load_state_dict(net.state_dict())
    x = torch.linspace(-2, 3, 200, dtype=torch.float64)[:, None]
    y = torch.sin(3 * x)
    step, loss = OneHiddenStep(net, dict(kind="sgd", lr=0.1)), torch.empty(1, dtype=torch.float64)
    step.forward_backward(x[None], y[None], loss, None)
    out = F.mse_loss(ref(x), y)
    out.backward()
    torch.testing.assert_close(loss[0], out.detach(), rtol=1e-12, atol=0)
    for p, q in zip(net.parameters(), ref.parameters()):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-10, atol=1e-14)


@pytest.mark.parametrize("kind", ["adam", "sgd"])
def test_training_equals_the_autograd_path_to_float_tolerance(kind):
    ds = _data()
    cfg = TrainConfig(lr=1e-3 if kind == "adam" else 0.01, optimizer=kind, epochs=300,
                      batch_size=None, eval_test=False)
    a, b = seeded_model(_net, 5), seeded_model(_net, 5)
    ra = train(a, ds, cfg, seed=0, fast=False)
    rb = train(b, ds, cfg, seed=0, closed_form=True)
    assert rb.status == ra.status == "ok"
    assert len(rb.history["train_loss"]) == 300 and rb.epochs_run == 300
    torch.testing.assert_close(torch.tensor(rb.history["train_loss"]),
                               torch.tensor(ra.history["train_loss"]), rtol=2e-5, atol=1e-7)
    torch.testing.assert_close(torch.as_tensor(rb.step_loss), torch.as_tensor(ra.step_loss),
                               rtol=2e-5, atol=1e-7)
    assert rb.history["train_loss"][-1] < 0.5 * rb.history["train_loss"][0]  # it learned
    for p, q in zip(b.parameters(), a.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-4, atol=1e-5)


def test_which_models_and_tasks_it_takes():
    x = torch.zeros(10, 1)
    assert applies(_net(8), False, x)
    assert not applies(_net(8), True, x)  # classification
    assert not applies(_net(8, nn.Tanh), False, x)  # closed form holds for ReLU only
    assert not applies(nn.Sequential(nn.Linear(2, 8), nn.ReLU(), nn.Linear(8, 1)), False,
                       torch.zeros(10, 2))
    assert not applies(nn.Sequential(nn.Linear(1, 8), nn.ReLU(), nn.Linear(8, 8), nn.ReLU(),
                                     nn.Linear(8, 1)), False, x)
    assert not applies(_net(8), False, x.double())
    adam = [dict(kind="adam", lr=1e-3)] * 2
    nets = [_net(8), _net(8)]
    assert [type(s).__name__ for s in choose_step(nets, False, x, adam, closed_form=True)] == [
        "OneHiddenStep", "OneHiddenStep"]
    assert [type(s).__name__ for s in choose_step(nets, False, x, adam)] == ["StackedMLPStep"]
    assert [type(s).__name__ for s in choose_step(nets[:1], False, x, adam[:1])] == ["MLPStep"]
    with pytest.raises(ValueError, match="member 0"):
        OneHiddenStep(_net(8), adam[0]).keep([1])
