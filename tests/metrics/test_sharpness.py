"""Tests for dlscope.metrics.epsilon_sharpness: a quadratic loss whose box maximum is analytic."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from dlscope.errors import UserError
from dlscope.metrics.epsilon_sharpness import sharpness


class Quadratic(nn.Module):
    """Output = the parameter vector itself; the input only sets the batch length."""

    def __init__(self, theta):
        super().__init__()
        self.theta = nn.Parameter(torch.as_tensor(theta, dtype=torch.float64).clone())

    def forward(self, x):
        return self.theta


def quadratic_loss(a):
    a = torch.as_tensor(a, dtype=torch.float64)
    return lambda out, c: 0.5 * (a * (out - c) ** 2).sum()


def analytic_phi(theta, c, a, eps):
    """Each coordinate goes to the box end farthest from c_i."""
    loss = 0.5 * np.sum(a * (theta - c) ** 2)
    width = eps * (np.abs(theta) + 1)
    max_loss = 0.5 * np.sum(a * (np.abs(theta - c) + width) ** 2)
    return (max_loss - loss) / (1 + loss) * 100, loss, max_loss


def _problem(seed, n=40):
    rng = np.random.default_rng(seed)
    theta = rng.normal(size=n) * 2
    c = theta + rng.normal(size=n) * 0.05
    c[:10] = theta[:10] + rng.choice([-1, 1], size=10) * 1e-8  # gradient far below 1e-5
    a = rng.uniform(0.5, 2.0, size=n)
    return theta, c, a


@pytest.mark.parametrize("eps", [1e-3, 5e-4, 1e-2])
def test_quadratic_matches_analytic_max(eps):
    theta, c, a = _problem(0)
    model = Quadratic(theta)
    model.train()
    before = model.theta.detach().clone()
    x = torch.zeros(len(theta))
    out = sharpness(model, quadratic_loss(a), x, torch.as_tensor(c), epsilon=eps, max_iter=50)
    phi, loss, max_loss = analytic_phi(theta, c, a, eps)
    assert out["loss"] == pytest.approx(loss, rel=1e-12)
    assert out["max_loss"] == pytest.approx(max_loss, rel=1e-6)
    assert out["sharpness"] == pytest.approx(phi, rel=1e-6)
    assert out["epsilon"] == eps
    assert 1 <= out["iterations"] <= 50
    assert all(type(out[k]) is float for k in ("sharpness", "loss", "max_loss", "epsilon"))
    assert torch.equal(model.theta.detach(), before)
    assert model.training and model.theta.grad is None


def test_exact_stationary_point_uses_random_start():
    theta, _, a = _problem(1)
    model = Quadratic(theta)
    out = sharpness(
        model,
        quadratic_loss(a),
        torch.zeros(len(theta)),
        torch.as_tensor(theta),
        epsilon=1e-3,
        max_iter=50,
        seed=3,
    )
    phi, loss, _ = analytic_phi(theta, theta, a, 1e-3)
    assert loss == 0.0 and phi > 0
    assert out["sharpness"] == pytest.approx(phi, rel=1e-6)
    assert torch.equal(model.theta.detach(), torch.as_tensor(theta))


def test_mlp_unchanged_eval_mode_and_monotone_in_epsilon():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 16), nn.Tanh(), nn.Dropout(0.5), nn.Linear(16, 3))
    x = torch.randn(64, 5)
    y = torch.randint(0, 3, (64,))
    model.train()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    small = sharpness(model, F.cross_entropy, x, y, epsilon=5e-4, max_iter=5)
    large = sharpness(model, F.cross_entropy, x, y, epsilon=5e-3, max_iter=5)
    for k, v in model.state_dict().items():
        assert torch.equal(v, state[k])
    assert all(m.training for m in model.modules())
    assert all(p.grad is None for p in model.parameters())
    model.eval()
    with torch.no_grad():
        eval_loss = float(F.cross_entropy(model(x), y))
    assert small["loss"] == pytest.approx(eval_loss, rel=1e-6)  # evaluated in eval mode
    assert 0 < small["sharpness"] < large["sharpness"]
    assert small["max_loss"] > small["loss"]


def test_bad_arguments():
    model = Quadratic(np.zeros(3))
    with pytest.raises(UserError):
        sharpness(model, quadratic_loss(np.ones(3)), torch.zeros(3), torch.zeros(3), epsilon=0)
    with pytest.raises(UserError):
        sharpness(model, quadratic_loss(np.ones(3)), torch.zeros(3), torch.zeros(3), max_iter=0)


def test_overflow_inside_the_box_gives_infinite_sharpness():
    model = Quadratic([-0.7])
    out = sharpness(
        model,
        lambda o, _: torch.exp(1000 * o).sum(),
        torch.zeros(1),
        torch.zeros(1),
        epsilon=1.0,
        max_iter=5,
    )
    assert out["loss"] == pytest.approx(np.exp(-700), rel=1e-9)
    assert out["sharpness"] == np.inf and out["max_loss"] == np.inf


class QuadForm(nn.Module):
    """Output = the parameter vector; the loss 0.5 (θ − c)ᵀ A (θ − c) has Hessian A."""

    def __init__(self, theta):
        super().__init__()
        self.theta = nn.Parameter(torch.as_tensor(theta, dtype=torch.float64).clone())

    def forward(self, x):
        return self.theta


@pytest.mark.parametrize("dtype,rel", [(torch.float64, 1e-8), (torch.float32, 1e-4)])
def test_lambda_max_of_a_quadratic_is_its_largest_eigenvalue(dtype, rel):
    from dlscope.metrics.epsilon_sharpness import lambda_max

    rng = np.random.default_rng(4)
    n = 60
    q, _ = np.linalg.qr(rng.normal(size=(n, n)))
    eig = np.concatenate([rng.uniform(-1.0, 2.0, size=n - 1), [7.5]])  # indefinite, top 7.5
    a = torch.as_tensor(q @ np.diag(eig) @ q.T)
    theta = rng.normal(size=n)
    model = QuadForm(theta)
    model.train()

    def loss(out, c):
        r = out - c.to(out.dtype)
        return 0.5 * r @ a.to(out.dtype) @ r

    out = lambda_max(model, loss, torch.zeros(n), torch.as_tensor(theta + 0.1), dtype=dtype)
    assert out["lambda_max"] == pytest.approx(np.linalg.eigvalsh(a.numpy())[-1], rel=rel)
    assert out["hvps"] >= 1
    assert model.training and model.theta.grad is None
    assert torch.equal(model.theta.detach(), torch.as_tensor(theta))
