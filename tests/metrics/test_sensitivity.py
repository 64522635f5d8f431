"""Tests for dlscope.metrics.input_sensitivity, against closed forms and finite differences."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from dlscope.errors import UserError
from dlscope.metrics.input_sensitivity import loss_input_grad_norm, sensitivity


def _snapshot(model):
    return (
        {k: v.detach().clone() for k, v in model.state_dict().items()},
        [m.training for m in model.modules()],
    )


def _assert_unchanged(model, snap):
    state, flags = snap
    for k, v in model.state_dict().items():
        assert torch.equal(v, state[k]), k
    assert [m.training for m in model.modules()] == flags
    assert all(p.grad is None for p in model.parameters())


def _fd_jacobian_norm(f, xi, h=1e-6):
    """Frobenius norm of the Jacobian of f (one sample -> vector) by central differences."""
    flat = xi.reshape(-1)
    cols = []
    for j in range(flat.numel()):
        e = torch.zeros_like(flat)
        e[j] = h
        plus = f((flat + e).reshape(xi.shape))
        minus = f((flat - e).reshape(xi.shape))
        cols.append(((plus - minus) / (2 * h)).numpy())
    return float(np.linalg.norm(np.stack(cols)))


def test_linear_softmax_closed_form():
    torch.manual_seed(0)
    d, k, n = 5, 4, 20
    model = nn.Linear(d, k).double()
    x = torch.randn(n, d, dtype=torch.float64) * 2
    model.train()
    snap = _snapshot(model)
    got = sensitivity(model, x).numpy()
    _assert_unchanged(model, snap)

    w = model.weight.detach().numpy()
    b = model.bias.detach().numpy()
    for i in range(n):
        z = w @ x[i].numpy() + b
        p = np.exp(z - z.max())
        p /= p.sum()
        expected = np.linalg.norm((np.diag(p) - np.outer(p, p)) @ w)
        assert got[i] == pytest.approx(expected, rel=1e-5, abs=1e-12)

    logits = sensitivity(model, x, output="logits", batch_size=7).numpy()
    np.testing.assert_allclose(logits, np.linalg.norm(w), rtol=1e-10)
    _assert_unchanged(model, snap)


def test_mlp_matches_finite_differences_and_batch_size():
    torch.manual_seed(1)
    model = nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 3)).double()
    x = torch.randn(10, 6, dtype=torch.float64)
    got = sensitivity(model, x, batch_size=3)
    np.testing.assert_allclose(got.numpy(), sensitivity(model, x, batch_size=512).numpy())
    with torch.no_grad():
        for i in range(4):
            fd = _fd_jacobian_norm(lambda v: torch.softmax(model(v[None]), 1)[0], x[i])
            assert float(got[i]) == pytest.approx(fd, rel=1e-6)
            fd_logits = _fd_jacobian_norm(lambda v: model(v[None])[0], x[i])
            got_logits = float(sensitivity(model, x[i : i + 1], output="logits")[0])
            assert got_logits == pytest.approx(fd_logits, rel=1e-6)


def test_conv_net_image_shaped_input_and_eval_mode():
    torch.manual_seed(2)
    model = nn.Sequential(
        nn.Conv2d(1, 3, 3, padding=1),
        nn.BatchNorm2d(3),
        nn.Tanh(),
        nn.Dropout(0.5),
        nn.Flatten(),
        nn.Linear(3 * 6 * 6, 4),
    ).double()
    with torch.no_grad():  # non-trivial running stats
        model[1].running_mean.uniform_(-0.5, 0.5)
        model[1].running_var.uniform_(0.5, 2.0)
    model.train()
    snap = _snapshot(model)
    x = torch.randn(5, 1, 6, 6, dtype=torch.float64)
    got = sensitivity(model, x, batch_size=2)
    assert got.shape == (5,)
    _assert_unchanged(model, snap)
    model.eval()  # the reference: eval-mode network (dropout off, running stats)
    with torch.no_grad():
        for i in (0, 3):
            fd = _fd_jacobian_norm(lambda v: torch.softmax(model(v[None]), 1)[0], x[i])
            assert float(got[i]) == pytest.approx(fd, rel=1e-6)


def test_unknown_output_raises():
    model = nn.Linear(3, 2)
    with pytest.raises(UserError):
        sensitivity(model, torch.randn(2, 3), output="probs")


def test_loss_input_grad_norm_per_sample_and_batch_size_free():
    torch.manual_seed(3)
    model = nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 3)).double()
    x = torch.randn(12, 6, dtype=torch.float64)
    y = torch.randint(0, 3, (12,))
    model.train()
    snap = _snapshot(model)
    got = loss_input_grad_norm(model, F.cross_entropy, x, y, batch_size=5)
    _assert_unchanged(model, snap)

    ref = []
    for i in range(12):
        xi = x[i : i + 1].clone().requires_grad_(True)
        (g,) = torch.autograd.grad(F.cross_entropy(model(xi), y[i : i + 1]), xi)
        ref.append(float(g.norm()))
    np.testing.assert_allclose(got.numpy(), ref, rtol=1e-10)

    # Duplicating the batch (and changing the chunk size) leaves the per-sample values alone;
    # the batch-mean version would halve its per-sample gradients.
    doubled = loss_input_grad_norm(model, F.cross_entropy, torch.cat([x, x]), torch.cat([y, y]))
    np.testing.assert_allclose(doubled.numpy(), np.concatenate([ref, ref]), rtol=1e-10)
    xb = x.clone().requires_grad_(True)
    (gb,) = torch.autograd.grad(F.cross_entropy(model(xb), y), xb)
    np.testing.assert_allclose(gb.norm(dim=1).numpy() * 12, ref, rtol=1e-10)
