"""dlscope.metrics.critical: driving ‖∇L‖ to ~0, checked with plain autograd."""

import pytest
import torch
from torch import nn

from dlscope.errors import UserError
from dlscope.metrics.critical import minimize_grad_norm
from dlscope.metrics.hessian import hessian_eigenvalues, minimal_ratio

mse = nn.functional.mse_loss


def autograd_grad_norm(model, x, y):
    loss = mse(model(x), y)
    grads = torch.autograd.grad(loss, list(model.parameters()))
    return torch.sqrt(sum((g**2).sum() for g in grads)).item(), loss.item()


def teacher_data():
    # Targets from a 1-5-1 tanh teacher: a realizable fit with finite, isolated minima (a
    # sinc target's loss keeps falling as weights grow, with no critical point to reach).
    teacher = tiny_net(100, adam_steps=0)[0]
    x = torch.linspace(-2, 2, 100, dtype=torch.float64)[:, None]
    with torch.no_grad():
        for p in teacher.parameters():
            p.mul_(2)
        return x, teacher(x)


def tiny_net(seed, hidden=5, adam_steps=1000):
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(1, hidden), nn.Tanh(), nn.Linear(hidden, 1)).double()
    if adam_steps == 0:
        return model, None, None
    x, y = teacher_data()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(adam_steps):
        opt.zero_grad()
        mse(model(x), y).backward()
        opt.step()
    return model, x, y


def test_newton_reaches_1e_minus_6_and_reports_true_norm():
    model, x, y = tiny_net(0)
    g0, _ = autograd_grad_norm(model, x, y)
    assert g0 > 1e-4  # a real job to do
    before = [p.detach().clone() for p in model.parameters()]
    r = minimize_grad_norm(model, mse, x, y, threshold=1e-6)
    assert r["reached"] and r["grad_norm"] < 1e-6 and r["method"] == "newton"
    g, loss = autograd_grad_norm(model, x, y)  # independent: the model's own autograd
    assert r["grad_norm"] == pytest.approx(g, rel=1e-6, abs=1e-15)
    assert r["loss"] == pytest.approx(loss, rel=1e-12)
    assert any(not torch.equal(a, p) for a, p in zip(before, model.parameters()))  # in place
    assert all(p.dtype == torch.float64 for p in model.parameters())
    assert r["steps"] == len(r["history"]) >= 1
    assert r["history"][-1]["grad_norm"] == pytest.approx(r["grad_norm"], rel=1e-6)


def test_newton_converges_to_a_saddle_when_started_near_one():
    # 2-3-1 tanh net near W1 = b1 = W2 = 0, b2 = mean(y): a strict saddle (see test_hessian).
    torch.manual_seed(9)
    x = torch.randn(60, 2, dtype=torch.float64)
    y = x @ torch.tensor([[1.0], [-2.0]], dtype=torch.float64) + 0.5
    model = nn.Sequential(nn.Linear(2, 3), nn.Tanh(), nn.Linear(3, 1)).double()
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(1e-3 * torch.randn_like(p))
        model[2].bias.add_(y.mean())
    r = minimize_grad_norm(model, mse, x, y, threshold=1e-10)
    assert r["reached"] and autograd_grad_norm(model, x, y)[0] < 1e-10
    ev = hessian_eigenvalues(model, mse, x, y)
    assert minimal_ratio(ev)["frac_negative"] == 3 / 13  # a saddle, not a minimum
    assert r["loss"] == pytest.approx(y.var(unbiased=False).item(), rel=1e-4)


def test_max_steps_one_is_not_reached():
    model, x, y = tiny_net(1, adam_steps=50)
    r = minimize_grad_norm(model, mse, x, y, threshold=1e-10, max_steps=1)
    assert r["reached"] is False and r["steps"] == 1
    g, _ = autograd_grad_norm(model, x, y)
    assert r["grad_norm"] == pytest.approx(g, rel=1e-6) and g > 1e-10


def test_already_critical_takes_no_step():
    model, x, y = tiny_net(2, adam_steps=50)
    g, _ = autograd_grad_norm(model, x, y)
    before = [p.detach().clone() for p in model.parameters()]
    r = minimize_grad_norm(model, mse, x, y, threshold=2 * g)
    assert r["reached"] and r["steps"] == 0
    assert all(torch.equal(a, p) for a, p in zip(before, model.parameters()))


@pytest.mark.parametrize("method,threshold", [("lbfgs", 1e-8), ("adam", 1e-4), ("newton", 1e-10)])
def test_every_method_on_linear_regression(method, threshold):
    # A quadratic loss: its only critical point is the least-squares solution.
    torch.manual_seed(3)
    x = torch.randn(50, 3, dtype=torch.float64)
    y = x @ torch.tensor([[1.0], [-2.0], [0.5]], dtype=torch.float64) + 0.3
    y = y + 0.1 * torch.randn(50, 1, dtype=torch.float64)
    model = nn.Linear(3, 1).double()
    lr = 1e-2 if method == "adam" else None
    r = minimize_grad_norm(model, mse, x, y, threshold=threshold, method=method, lr=lr)
    assert r["reached"], r["grad_norm"]
    g, _ = autograd_grad_norm(model, x, y)
    assert g < threshold and r["grad_norm"] == pytest.approx(g, rel=1e-6, abs=1e-14)
    a = torch.cat([x, torch.ones(50, 1, dtype=torch.float64)], 1)
    sol = torch.linalg.lstsq(a, y).solution.ravel()
    theta = torch.cat([model.weight.detach().ravel(), model.bias.detach()])
    assert torch.allclose(theta, sol, rtol=0, atol=10 * threshold)


def test_bad_arguments_raise_user_error():
    model, x, y = tiny_net(4, adam_steps=0)
    for kwargs in ({"method": "sgd"}, {"threshold": 0}, {"max_steps": -1}):
        with pytest.raises(UserError):
            minimize_grad_norm(model, mse, x, y, **kwargs)
