"""The closed-form 1 -> H -> 1 ReLU step by breakpoints (train/onehidden.py) against the
autograd reference path (`train(fast=False)`: nn.Sequential, loss.backward(), torch.optim):
per-step losses and final parameters over a few hundred full-batch Adam steps and over
mini-batches, gradients of one step in float64 (dead, always-on and flat units included),
members of a stack against their solo runs, and which models it takes."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from dlscope.data.dataset import Dataset
from dlscope.train.engine import TrainConfig, seeded_model, train
from dlscope.train.ensemble import train_ensemble
from dlscope.train.onehidden import OneHiddenStep, applies
from dlscope.train.steps import choose_step


def _net(h: int = 183, act=nn.ReLU):
    return nn.Sequential(nn.Linear(1, h), act(), nn.Linear(h, 1))


def _data(n: int = 1000) -> Dataset:
    x = torch.linspace(-2, 3, n)[:, None]
    return Dataset.from_tensors(x, torch.sin(3 * x) * torch.exp(-0.2 * x))


@pytest.mark.parametrize("shuffled", [False, True])
def test_gradients_equal_autograd_in_float64(shuffled):
    torch.manual_seed(3)
    net = _net(37).double()
    with torch.no_grad():  # a flat unit on and one off, a unit whose breakpoint is outside
        net[0].weight[:2] = 0.0
        net[0].bias[:2] = torch.tensor([0.7, -0.3], dtype=torch.float64)
        net[0].weight[2], net[0].bias[2] = 1.0, 9.0
    ref = _net(37).double()
    ref.load_state_dict(net.state_dict())
    x = torch.linspace(-2, 3, 200, dtype=torch.float64)[:, None]
    if shuffled:  # the points in any order: the step sorts them
        x = x[torch.randperm(200, generator=torch.Generator().manual_seed(1))]
    y = torch.sin(3 * x)
    step = OneHiddenStep([net], [dict(kind="sgd", lr=0.1)])
    loss = torch.empty(1, dtype=torch.float64)
    step.forward_backward(x[None], y[None], loss, None)
    out = F.mse_loss(ref(x), y)
    out.backward()
    torch.testing.assert_close(loss[0], out.detach(), rtol=1e-12, atol=0)
    grads = [step.gW[0][0], step.gb[0][0], step.gW[1][0], step.gb[1][0]]
    for g, q in zip(grads, ref.parameters()):
        torch.testing.assert_close(g, q.grad, rtol=1e-10, atol=1e-14)
    step.update()
    assert torch.equal(step.module(0)[0].bias, net[0].bias)  # the module holds the update
    assert not torch.equal(net[0].bias, ref[0].bias)


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


def test_mini_batches_equal_the_autograd_path_to_float_tolerance():
    """Each member's batch is its own shuffled slice: sorted per step."""
    ds = _data(300)
    cfg = TrainConfig(lr=1e-3, epochs=20, batch_size=64, eval_test=False)
    a, b = seeded_model(_net, 2), seeded_model(_net, 2)
    ra = train(a, ds, cfg, seed=4, fast=False)
    rb = train(b, ds, cfg, seed=4, closed_form=True)
    torch.testing.assert_close(torch.as_tensor(rb.step_loss), torch.as_tensor(ra.step_loss),
                               rtol=2e-5, atol=1e-7)
    for p, q in zip(b.parameters(), a.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-4, atol=1e-5)


def test_a_member_of_a_stack_equals_its_solo_run_bit_for_bit():
    ds = _data(500)
    cfgs = [TrainConfig(lr=1e-3, epochs=e, batch_size=None, eval_test=False)
            for e in (200, 60, 200, 130)]  # members 1 and 3 leave the stack early
    nets = [seeded_model(_net, s) for s in range(4)]
    res = train_ensemble(nets, ds, cfgs, seeds=range(4), closed_form=True)
    assert [r.epochs_run for r in res] == [200, 60, 200, 130]
    for s in (0, 1, 3):
        solo = seeded_model(_net, s)
        r = train(solo, ds, cfgs[s], seed=s, closed_form=True)
        assert r.history["train_loss"] == res[s].history["train_loss"]
        for p, q in zip(solo.parameters(), res.models[s].parameters()):
            assert torch.equal(p, q)


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
        "OneHiddenStep"]
    mixed = [_net(8), _net(9)]  # two widths: not one stack
    assert [type(s).__name__ for s in choose_step(mixed, False, x, adam, closed_form=True)] == [
        "MLPStep", "MLPStep"]
    assert [type(s).__name__ for s in choose_step(nets, False, x, adam)] == ["StackedMLPStep"]
    assert [type(s).__name__ for s in choose_step(nets[:1], False, x, adam[:1])] == ["MLPStep"]
    with pytest.raises(ValueError, match="1 -> H -> 1"):
        OneHiddenStep([nn.Sequential(nn.Linear(1, 8), nn.ReLU(), nn.Linear(8, 8), nn.ReLU(),
                                     nn.Linear(8, 1))], adam[:1])
