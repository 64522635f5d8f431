"""dlscope.metrics.critical: driving ‖∇L‖ to ~0, checked with plain autograd."""

import itertools

import numpy as np
import pytest
import torch
from torch import nn

from dlscope.errors import UserError
from dlscope.metrics.critical import EPS64, classify_spectrum, minimize_grad_norm, noise_floor_tol
from dlscope.metrics.hessian import hessian_eigenvalues, minimal_ratio

mse = nn.functional.mse_loss


def autograd_grad_norm(model, x, y):
    loss = mse(model(x), y)
    grads = torch.autograd.grad(loss, list(model.parameters()))
    return torch.sqrt(sum((g**2).sum() for g in grads)).item(), loss.item()


def teacher_data():
    # Targets from a 3-2-1 tanh teacher plus noise on Gaussian inputs: isolated, well
    # conditioned minima that a pure ‖∇L‖ method reaches (1-D fits stall in flat valleys).
    g = torch.Generator().manual_seed(0)
    x = torch.randn(200, 3, generator=g, dtype=torch.float64)
    w = 1.5 * torch.randn(2, 3, generator=g, dtype=torch.float64)
    y = torch.tanh(x @ w.T) @ torch.tensor([[1.0], [-1.0]], dtype=torch.float64)
    return x, y + 0.05 * torch.randn(200, 1, generator=g, dtype=torch.float64)


def tiny_net(seed, hidden=2, adam_steps=300):
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(3, hidden), nn.Tanh(), nn.Linear(hidden, 1)).double()
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


class Poly(nn.Module):
    """f(a, b, c) = (a² − 1)² + (b² − 1)² + c² as a "model" whose output is the loss.

    Critical points: a, b ∈ {0, ±1}, c = 0, with Hessian diag(12a² − 4, 12b² − 4, 2):
    (±1, ±1, 0) minima at f = 0; (0, ±1, 0) and (±1, 0, 0) saddles at f = 1 with one negative
    direction (index 1/3); (0, 0, 0) a saddle at f = 2 with index 2/3.
    """

    def __init__(self, start):
        super().__init__()
        self.theta = nn.Parameter(torch.tensor(start, dtype=torch.float64))

    def forward(self, x):
        a, b, c = self.theta
        f = (a**2 - 1) ** 2 + (b**2 - 1) ** 2 + c**2
        return f.expand(x.shape[0], 1)


def poly_loss(out, y):
    return out.mean()


DUMMY = torch.zeros(1, 1, dtype=torch.float64)


@pytest.mark.parametrize("start,saddle,value,index", [
    ((0.3, 0.7, 0.2), (0.0, 1.0, 0.0), 1.0, 1 / 3),
    ((-0.2, 0.25, -0.3), (0.0, 0.0, 0.0), 2.0, 2 / 3),
])
def test_phase2_started_near_a_saddle_converges_to_it(start, saddle, value, index):
    model = Poly(start)
    r = minimize_grad_norm(model, poly_loss, DUMMY, DUMMY, threshold=1e-12)
    assert r["reached"] and r["grad_norm"] < 1e-12
    assert torch.allclose(model.theta.detach(), torch.tensor(saddle, dtype=torch.float64),
                          atol=1e-12)
    assert r["loss"] == pytest.approx(value, abs=1e-12)  # not the minimum at f = 0
    assert r["loss_start"] == pytest.approx(Poly(start)(DUMMY)[0, 0].item())
    assert r["distance"] == pytest.approx(
        float(np.linalg.norm(np.subtract(saddle, start))), rel=1e-9)
    ev = hessian_eigenvalues(model, poly_loss, DUMMY, DUMMY)
    exact = sorted([12 * saddle[0] ** 2 - 4, 12 * saddle[1] ** 2 - 4, 2.0])  # closed form
    assert np.allclose(ev, exact, atol=1e-9)
    cls = classify_spectrum(ev)
    assert cls["kind"] == "saddle" and cls["index"] == pytest.approx(index)
    assert cls["minimal_ratio"] == pytest.approx(1 - index) and cls["frac_zero"] == 0


def test_a_loss_descent_method_from_the_same_start_finds_the_minimum():
    # The contrast that makes the test above meaningful: descending L walks past the saddle.
    model = Poly((0.3, 0.7, 0.2))
    opt = torch.optim.LBFGS(model.parameters(), line_search_fn="strong_wolfe", max_iter=200)

    def closure():
        opt.zero_grad()
        loss = poly_loss(model(DUMMY), DUMMY)
        loss.backward()
        return loss

    opt.step(closure)
    assert model(DUMMY)[0, 0].item() < 1e-10
    assert classify_spectrum(hessian_eigenvalues(model, poly_loss, DUMMY, DUMMY))["kind"] == \
        "minimum"


@pytest.mark.parametrize("model_fn", [lambda: Poly((0.45, 1.6, -0.7)),
                                      lambda: tiny_net(5, adam_steps=20)])
def test_accepted_steps_never_increase_the_gradient_norm(model_fn):
    built = model_fn()
    model, x, y, loss = (built, DUMMY, DUMMY, poly_loss) if isinstance(built, Poly) else \
        (*built, mse)
    r = minimize_grad_norm(model, loss, x, y, threshold=1e-10, max_steps=40)
    norms = [r["grad_norm_start"]] + [h["grad_norm"] for h in r["history"]]
    assert len(norms) > 3
    assert all(b <= a for a, b in itertools.pairwise(norms)), norms
    assert r["grad_norm"] == pytest.approx(min(norms), rel=1e-6, abs=1e-15)


def random_spectrum_matrix(eigenvalues, seed=0):
    rng = np.random.default_rng(seed)
    q, _ = np.linalg.qr(rng.standard_normal((len(eigenvalues), len(eigenvalues))))
    return (q * np.asarray(eigenvalues)) @ q.T


def test_tolerance_rule_on_constructed_spectra():
    # 10 exact zeros, 15 positive and 15 negative eigenvalues over four decades, rotated by a
    # random orthogonal Q, plus a symmetric perturbation E of spectral norm exactly the stated
    # floor eps·P·max|λ|. Weyl: every computed eigenvalue moves by at most ‖E‖₂ plus eigh's
    # own O(eps·P·max|λ|) error, so c = 100 separates the zeros from λ ≥ 1e-3.
    rng = np.random.default_rng(1)
    pos, neg = np.geomspace(1e-3, 10, 15), -np.geomspace(1e-3, 10, 15)
    lam = np.concatenate([np.zeros(10), pos, neg])
    p = lam.size
    e = rng.standard_normal((p, p))
    e = e + e.T
    e *= EPS64 * p * 10 / np.linalg.norm(e, 2)
    ev = np.linalg.eigvalsh(random_spectrum_matrix(lam) + e)
    r = classify_spectrum(ev)
    assert r["tol"] == pytest.approx(100 * EPS64 * p * np.abs(ev).max())
    assert (r["n_pos"], r["n_neg"], r["n_zero"]) == (15, 15, 10) and r["kind"] == "saddle"
    assert r["minimal_ratio"] == 15 / 40 and r["index"] == 15 / 40 and r["frac_zero"] == 10 / 40
    zeros = np.sort(np.abs(ev))[:10]
    assert zeros.max() <= 2 * EPS64 * p * 10  # the floor the rule is built on holds
    assert classify_spectrum(ev, c=0)["n_zero"] < 10  # no tolerance: noise gets a sign
    # just above and below the tolerance, and the three kinds
    tol = noise_floor_tol([10.0] * 8)
    assert classify_spectrum([10.0] * 7 + [1.01 * tol])["kind"] == "minimum"
    assert classify_spectrum([10.0] * 7 + [0.99 * tol])["kind"] == "degenerate"
    assert classify_spectrum([10.0] * 7 + [-1.01 * tol])["kind"] == "saddle"
    assert classify_spectrum([10.0] * 7 + [-0.99 * tol])["kind"] == "degenerate"


def test_classify_rejects_bad_input():
    for bad in ([], [1.0, float("nan")]):
        with pytest.raises(UserError):
            classify_spectrum(bad)
    with pytest.raises(UserError):
        classify_spectrum([1.0], c=-1)
