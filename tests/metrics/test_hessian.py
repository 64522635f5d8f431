"""dlscope.metrics.hessian against independent references: closed forms, numpy, finite differences."""

import copy
import itertools

import numpy as np
import pytest
import torch
from torch import nn

from dlscope.errors import UserError
from dlscope.metrics.hessian import (
    extreme_eigenvalues,
    flatten_params,
    full_hessian,
    hessian_eigenvalues,
    hvp_operator,
    minimal_ratio,
    param_shapes,
    unflatten_params,
)

mse = nn.functional.mse_loss
ce = nn.functional.cross_entropy


def snapshot(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def assert_unchanged(model, snap):
    for k, v in model.state_dict().items():
        assert v.dtype == snap[k].dtype and torch.equal(v, snap[k]), k
    assert all(p.grad is None for p in model.parameters())


def tanh_net(sizes, seed=0):
    torch.manual_seed(seed)
    layers = []
    for a, b in itertools.pairwise(sizes):
        layers += [nn.Linear(a, b), nn.Tanh()]
    return nn.Sequential(*layers[:-1])


def reference_grad(model, loss_fn, x, y, theta):
    """Gradient by plain autograd on a float64 deep copy, parameters set from ``theta``."""
    m = copy.deepcopy(model).double()
    with torch.no_grad():
        i = 0
        for p in m.parameters():
            p.copy_(theta[i : i + p.numel()].view_as(p))
            i += p.numel()
    xd = x.double()
    yd = y.double() if y.is_floating_point() else y
    return torch.cat([g.reshape(-1) for g in torch.autograd.grad(loss_fn(m(xd), yd), list(m.parameters()))])


def test_flatten_roundtrip_and_order():
    model = tanh_net([3, 5, 2])
    theta = flatten_params(model)
    shapes = param_shapes(model)
    assert [n for n, _ in shapes] == ["0.weight", "0.bias", "2.weight", "2.bias"]
    assert theta.numel() == 3 * 5 + 5 + 5 * 2 + 2
    back = unflatten_params(theta, shapes)
    for name, p in model.named_parameters():
        assert torch.equal(back[name], p.detach())
    assert torch.equal(theta[:15], model[0].weight.detach().reshape(-1))
    with pytest.raises(UserError):
        unflatten_params(theta[:-1], shapes)


def test_linear_regression_closed_form():
    # float32 model and data: the Hessian is still computed in float64 on exact casts.
    torch.manual_seed(1)
    n, d = 40, 4
    x = torch.randn(n, d)
    y = torch.randn(n, 1)
    model = nn.Linear(d, 1)
    snap = snapshot(model)
    a = np.hstack([x.double().numpy(), np.ones((n, 1))])  # weight first, then bias
    h_ref = 2.0 / n * a.T @ a
    h = full_hessian(model, mse, x, y)
    assert h.dtype == torch.float64 and h.shape == (d + 1, d + 1)
    np.testing.assert_allclose(h.numpy(), h_ref, rtol=0, atol=1e-12)
    ev = hessian_eigenvalues(model, mse, x, y)
    assert isinstance(ev, np.ndarray) and np.all(np.diff(ev) >= 0)
    np.testing.assert_allclose(ev, np.linalg.eigvalsh(h_ref), rtol=0, atol=1e-10)
    assert_unchanged(model, snap)


@pytest.mark.parametrize("loss", ["mse", "ce"])
def test_two_layer_tanh_matches_finite_differences(loss):
    torch.manual_seed(2)
    model = tanh_net([3, 5, 2], seed=3)
    x = torch.randn(30, 3)
    y = torch.randn(30, 2) if loss == "mse" else torch.randint(0, 2, (30,))
    loss_fn = mse if loss == "mse" else ce
    snap = snapshot(model)
    h = full_hessian(model, loss_fn, x, y)
    assert torch.equal(h, h.T)
    theta = flatten_params(model).double()
    eps = 1e-5
    fd = torch.empty_like(h)
    for i in range(theta.numel()):
        e = torch.zeros_like(theta)
        e[i] = eps
        fd[:, i] = (reference_grad(model, loss_fn, x, y, theta + e)
                    - reference_grad(model, loss_fn, x, y, theta - e)) / (2 * eps)
    np.testing.assert_allclose(h.numpy(), fd.numpy(), rtol=0, atol=1e-6)
    cross = h[:20, 20:]  # layer-1 parameters × layer-2 parameters
    assert cross.abs().max() > 1e-2  # the cross-layer block is really there and was checked
    assert torch.allclose(full_hessian(model, loss_fn, x, y, chunk=7), h, rtol=0, atol=1e-14)
    assert_unchanged(model, snap)


def test_extreme_eigenvalues_match_exact_spectrum():
    torch.manual_seed(4)
    model = tanh_net([4, 16, 12, 3], seed=5)  # 323 parameters
    x = torch.randn(200, 4)
    y = torch.randint(0, 3, (200,))
    snap = snapshot(model)
    ev = hessian_eigenvalues(model, ce, x, y)
    assert ev.size == 323 and ev[0] < 0 < ev[-1]
    r = extreme_eigenvalues(model, ce, x, y, k=3)
    top, bottom = r.top, r.bottom
    scale = np.abs(ev).max()
    assert top.shape == bottom.shape == (3,)
    np.testing.assert_allclose(top, ev[-3:], rtol=0, atol=1e-6 * scale)
    np.testing.assert_allclose(bottom, ev[:3], rtol=0, atol=1e-6 * scale)
    rb = extreme_eigenvalues(model, ce, x, y, k=3, batch_size=64)  # chunked HVPs
    top_b, bottom_b = rb.top, rb.bottom
    np.testing.assert_allclose(np.r_[bottom_b, top_b], np.r_[ev[:3], ev[-3:]], rtol=0,
                               atol=1e-6 * scale)
    r32 = extreme_eigenvalues(model, ce, x, y, k=3, dtype=torch.float32)
    top32, bottom32 = r32.top, r32.bottom
    np.testing.assert_allclose(np.r_[bottom32, top32], np.r_[ev[:3], ev[-3:]], rtol=0,
                               atol=1e-4 * scale)
    assert_unchanged(model, snap)


def test_hvp_operator_full_and_chunked_equal_dense():
    model = tanh_net([3, 6, 2], seed=6)
    torch.manual_seed(7)
    x = torch.randn(50, 3)
    y = torch.randn(50, 2)
    snap = snapshot(model)
    h = full_hessian(model, mse, x, y).numpy()
    v = np.random.default_rng(0).standard_normal(h.shape[0])
    for bs in (None, 7, 50, 1000):  # 7: uneven chunks, weighted by their size
        op = hvp_operator(model, mse, x, y, batch_size=bs)
        assert op.shape == h.shape
        np.testing.assert_allclose(op.matvec(v), h @ v, rtol=0, atol=1e-12)
        np.testing.assert_allclose(op.matvec(2 * v), 2 * (h @ v), rtol=0, atol=1e-12)  # reusable
    with pytest.raises(UserError):
        hvp_operator(model, mse, x, y, batch_size=0)
    assert_unchanged(model, snap)


def test_saddle_of_deep_linear_chain_analytic():
    # y_hat = w2·w1·x: L = mean((w1 w2 x − y)²); Hessian in closed form.
    model = nn.Sequential(nn.Linear(1, 1, bias=False), nn.Linear(1, 1, bias=False)).double()
    torch.manual_seed(8)
    x = torch.randn(25, 1, dtype=torch.float64)
    y = 1.7 * x + 0.1 * torch.randn(25, 1, dtype=torch.float64)
    xs, ys = x.numpy().ravel(), y.numpy().ravel()

    def analytic(w1, w2):
        off = np.mean(4 * w1 * w2 * xs**2 - 2 * xs * ys)
        return np.array([[np.mean(2 * w2**2 * xs**2), off], [off, np.mean(2 * w1**2 * xs**2)]])

    for w1, w2 in [(0.0, 0.0), (0.3, -1.1)]:
        with torch.no_grad():
            model[0].weight.fill_(w1)
            model[1].weight.fill_(w2)
        np.testing.assert_allclose(full_hessian(model, mse, x, y).numpy(), analytic(w1, w2),
                                   rtol=0, atol=1e-12)
    model[0].weight.data.zero_()
    model[1].weight.data.zero_()
    ev = hessian_eigenvalues(model, mse, x, y)  # the origin: a strict saddle, λ = ±2|mean(xy)|
    c = 2 * abs(np.mean(xs * ys))
    np.testing.assert_allclose(ev, [-c, c], rtol=1e-12)
    r = extreme_eigenvalues(model, mse, x, y, k=1)  # P = 2: the dense fallback
    top, bottom = r.top, r.bottom
    np.testing.assert_allclose([bottom[0], top[0]], [-c, c], rtol=1e-12)
    r = minimal_ratio(ev)
    assert r["minimal_ratio"] == 0.5 and r["frac_negative"] == 0.5 and r["frac_zero"] == 0.0


def test_saddle_of_tanh_net_at_zero_weights():
    # 2-3-1 tanh net with W1 = b1 = W2 = 0 and b2 = mean(y): a critical point whose spectrum is
    # {2 (b2), ±‖v‖ per hidden unit (W2_j ↔ W1_j coupling), 0 (the rest)}, v = −2·mean((y−ȳ)x).
    torch.manual_seed(9)
    model = tanh_net([2, 3, 1]).double()
    x = torch.randn(60, 2, dtype=torch.float64)
    y = (x @ torch.tensor([[1.0], [-2.0]], dtype=torch.float64)) + 0.5
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()
        model[2].bias.fill_(y.mean().item())
    v = -2 * ((y - y.mean()) * x).mean(0).numpy()
    nv = np.linalg.norm(v)
    expected = np.sort(np.r_[2.0, [nv] * 3, [-nv] * 3, np.zeros(6)])
    ev = hessian_eigenvalues(model, mse, x, y)
    np.testing.assert_allclose(ev, expected, rtol=0, atol=1e-12)
    r = minimal_ratio(ev)
    assert (r["minimal_ratio"], r["frac_negative"], r["frac_zero"]) == (4 / 13, 3 / 13, 6 / 13)
    assert r["n"] == 13 and r["lambda_min"] == pytest.approx(-nv, abs=1e-12)


def test_minimal_ratio_hand_made_spectrum():
    ev = [-2.0, -1e-9, 0.0, 1e-8, 3.0, 5.0, 1000.0]
    r = minimal_ratio(ev)  # tol = 1e-6 · 1000 = 1e-3
    assert r["tol"] == pytest.approx(1e-3)
    assert r["minimal_ratio"] == 3 / 7 and r["frac_negative"] == 1 / 7 and r["frac_zero"] == 3 / 7
    assert r["minimal_ratio"] + r["frac_negative"] + r["frac_zero"] == pytest.approx(1.0)
    assert (r["n"], r["lambda_min"], r["lambda_max"]) == (7, -2.0, 1000.0)
    r = minimal_ratio(np.array(ev), rel_tol=1e-12)  # tol 1e-9: -1e-9 is zero, 1e-8 positive
    assert r["minimal_ratio"] == 4 / 7 and r["frac_negative"] == 1 / 7 and r["frac_zero"] == 2 / 7
    assert minimal_ratio(torch.tensor([1.0, -1.0]))["minimal_ratio"] == 0.5


@pytest.mark.parametrize("bad", [[], [[1.0, 2.0]], [1.0, float("nan")], [1.0, float("inf")]])
def test_minimal_ratio_rejects_bad_input(bad):
    with pytest.raises(UserError):
        minimal_ratio(bad)


def test_bad_arguments_raise_user_error():
    model = nn.Linear(2, 1)
    x, y = torch.randn(5, 2), torch.randn(5, 1)
    with pytest.raises(UserError):
        full_hessian(model, mse, x, y[:4])
    with pytest.raises(UserError):
        full_hessian(model, mse, x, y, chunk=0)
    with pytest.raises(UserError):
        extreme_eigenvalues(model, mse, x, y, k=0)
    with pytest.raises(UserError):
        full_hessian(lambda t: t, mse, x, y)
