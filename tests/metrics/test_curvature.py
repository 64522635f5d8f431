"""Curvature metrics (trace, SLQ density, eigenpairs, data loaders) against exact references:
the dense Hessian (metrics.hessian.full_hessian, checked itself against finite differences in
test_hessian.py), closed forms and the known variance of the estimators."""

import json
import math

import numpy as np
import pytest
import torch
from matplotlib.figure import Figure
from test_hessian import tanh_net  # the same small tanh MLPs as the Hessian tests
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import dlscope
from dlscope.data import Dataset
from dlscope.errors import UserError
from dlscope.metrics import (
    extreme_eigenvalues,
    full_hessian,
    full_loss,
    hessian_density,
    hessian_trace,
    hvp_operator,
)

mse = nn.functional.mse_loss
ce = nn.functional.cross_entropy


@pytest.fixture(scope="module")
def small():
    """A 3-6-3 tanh net (45 parameters), 50 points, cross-entropy, and its exact Hessian."""
    model = tanh_net([3, 6, 3], seed=1)
    g = torch.Generator().manual_seed(2)
    x = torch.randn(50, 3, generator=g)
    y = torch.randint(0, 3, (50,), generator=g)
    h = full_hessian(model, ce, x, y)
    return model, x, y, h, torch.linalg.eigvalsh(h).numpy()


def offdiag_sq(h: torch.Tensor) -> float:
    return float((h ** 2).sum() - (torch.diagonal(h) ** 2).sum())


class Quadratic(nn.Module):
    """L(w) = ½ Σ d_i w_i²: Hessian diag(d) (the batch only sets the output's rows)."""

    def __init__(self, d):
        super().__init__()
        self.w = nn.Parameter(torch.ones(len(d)))
        self.register_buffer("d", torch.as_tensor(d, dtype=torch.float32))

    def forward(self, x):
        return (0.5 * self.d * self.w ** 2).sum().expand(x.shape[0])


def test_trace_exact_for_diagonal_quadratic():
    d = np.arange(60) / 4 - 1.0  # exact in float32
    model = Quadratic(d)
    x = torch.zeros(4, 1)
    res = hessian_trace(model, lambda out, y: out.mean(), (x, x), exact=False, min_probes=3)
    assert res.method == "hutchinson" and res.probes == 3 and res.converged
    assert res.trace == pytest.approx(d.sum(), abs=1e-12) and res.stderr == pytest.approx(0, abs=1e-12)
    exact = hessian_trace(model, lambda out, y: out.mean(), (x, x))  # P = 60: dense path
    assert exact.method == "exact" and exact.trace == pytest.approx(d.sum(), abs=1e-12)


def test_trace_hutchinson_within_its_standard_error(small):
    model, x, y, h, _ = small
    exact = float(torch.trace(h))
    res = hessian_trace(model, ce, (x, y), exact=False, rtol=0.0, max_probes=200, seed=3)
    assert res.probes == res.hvps == 200 and not res.converged and res.params == 45
    # the standard error agrees with the estimator's known variance 2·Σ_{i≠j} H_ij² / N
    assert res.stderr == pytest.approx(math.sqrt(2 * offdiag_sq(h) / 200), rel=0.3)
    assert abs(res.trace - exact) <= 4 * res.stderr
    ex = hessian_trace(model, ce, (x, y), exact=True)
    assert ex.method == "exact" and ex.trace == pytest.approx(exact, rel=1e-12)


def test_trace_within_one_percent_with_enough_probes():
    # A linear least-squares net on near-orthogonal features: H = 2·[X 1]ᵀ[X 1]/n is close to
    # 2I, so Hutchinson's per-probe spread (sqrt(2·Σ_{i≠j} H_ij²)) is ~3% of the trace and
    # a 0.3% standard error needs a few hundred probes, not tens of thousands.
    g = torch.Generator().manual_seed(7)
    x, y = torch.randn(2000, 20, generator=g), torch.randn(2000, 1, generator=g)
    torch.manual_seed(0)
    model = nn.Linear(20, 1)
    h = full_hessian(model, mse, x, y)
    exact = float(torch.trace(h))
    res = hessian_trace(model, mse, (x, y), exact=False, rtol=0.003, max_probes=5000, seed=1)
    assert res.converged and res.stderr <= 0.003 * abs(res.trace) and res.probes < 5000
    assert abs(res.trace - exact) <= 0.01 * abs(exact)
    assert abs(res.trace - exact) <= 4 * res.stderr


def test_density_moments_and_support_match_exact_spectrum(small):
    model, x, y, h, ev = small
    p, k = len(ev), 30
    d = hessian_density(model, ce, (x, y), probes=k, steps=p, seed=4)
    assert d.probes == k and d.hvps <= k * p and np.allclose(d.weights.sum(axis=1), 1.0)
    # SLQ moment = mean over unit Rademacher probes v of vᵀHᵐv: unbiased for tr(Hᵐ)/P with
    # standard error sqrt(2·Σ_{i≠j} (Hᵐ)_ij² / (P² k)); tolerance 4 standard errors.
    for order in (1, 2):
        hm = torch.linalg.matrix_power(h, order)
        se = math.sqrt(2 * offdiag_sq(hm) / (p ** 2 * k))
        assert abs(d.moment(order) - float(np.mean(ev ** order))) <= 4 * se + 1e-12, order
    scale = np.abs(ev).max()
    # steps >= P: each probe's Ritz values are eigenvalues; the extremes are reached
    assert d.lambda_min <= ev[0] + 1e-8 * scale and d.lambda_max >= ev[-1] - 1e-8 * scale
    assert d.grid[0] < ev[0] and d.grid[-1] > ev[-1]
    assert np.trapezoid(d.density, d.grid) == pytest.approx(1.0, abs=1e-3)
    short = hessian_density(model, ce, (x, y), probes=2, steps=15, seed=4)  # m < P
    assert short.grid[0] < ev[0] and short.grid[-1] > ev[-1]
    assert short.lambda_max == pytest.approx(ev[-1], rel=1e-3)  # extremes converge first
    fig = d.plot()
    assert isinstance(fig, Figure) and fig.axes[0].get_yscale() == "log"
    json.dumps(d.to_dict())


def test_eigenvectors_have_small_residuals(small):
    model, x, y, h, ev = small
    scale = np.abs(ev).max()
    res = extreme_eigenvalues(model, ce, (x, y), k=3, return_vectors=True)
    assert res.method == "lanczos"
    np.testing.assert_allclose(res.top, ev[-3:], atol=1e-7 * scale)
    np.testing.assert_allclose(res.bottom, ev[:3], atol=1e-7 * scale)
    hn = h.numpy()
    for lam, vecs, resid in ((res.top, res.top_vectors, res.top_residuals),
                             (res.bottom, res.bottom_vectors, res.bottom_residuals)):
        assert vecs.shape == (45, 3)
        np.testing.assert_allclose(np.linalg.norm(vecs, axis=0), 1.0, atol=1e-8)
        dense_resid = np.linalg.norm(hn @ vecs - vecs * lam, axis=0)  # independent of HVPs
        assert np.all(dense_resid <= 1e-6 * scale) and np.all(resid <= 1e-6 * scale)
        np.testing.assert_allclose(resid, dense_resid, atol=1e-10)
    top_only = extreme_eigenvalues(model, ce, (x, y), k=3, which="top", return_vectors=True)
    assert top_only.bottom is None and top_only.hvps < res.hvps
    np.testing.assert_allclose(top_only.top, ev[-3:], atol=1e-7 * scale)
    res_top = extreme_eigenvalues(model, ce, x, y, k=3, which="top")
    top, bottom = res_top.top, res_top.bottom
    assert bottom is None and top.shape == (3,)
    dense = extreme_eigenvalues(model, ce, (x, y), k=30, return_vectors=True)  # 2k+1 >= P
    assert dense.method == "dense" and np.all(dense.top_residuals <= 1e-10 * scale)
    json.dumps(res.to_dict())


def test_dataloader_path_equals_tensor_path(small):
    model, x, y, h, ev = small
    loader = DataLoader(TensorDataset(x, y), batch_size=16)  # 16, 16, 16, 2: uneven batches
    as_list = [(x[i:i + 7], y[i:i + 7]) for i in range(0, 50, 7)]
    v = np.random.default_rng(0).standard_normal(45)
    for data in (loader, as_list):
        np.testing.assert_allclose(hvp_operator(model, ce, data).matvec(v), h.numpy() @ v,
                                   atol=1e-12)
        a = hessian_trace(model, ce, data, exact=False, max_probes=12, rtol=0, seed=5)
        b = hessian_trace(model, ce, (x, y), exact=False, max_probes=12, rtol=0, seed=5)
        assert a.trace == pytest.approx(b.trace, abs=1e-12) and a.stderr == pytest.approx(b.stderr)
        da = hessian_density(model, ce, data, probes=1, steps=10, seed=6)
        db = hessian_density(model, ce, (x, y), probes=1, steps=10, seed=6)
        np.testing.assert_allclose(da.ritz, db.ritz, atol=1e-10)
        np.testing.assert_allclose(da.density, db.density, rtol=1e-6, atol=1e-12)
        ta = extreme_eigenvalues(model, ce, data, k=2, which="top").top
        np.testing.assert_allclose(ta, ev[-2:], atol=1e-7 * np.abs(ev).max())
        assert hessian_trace(model, ce, data, exact=True).trace == pytest.approx(
            float(torch.trace(h)), rel=1e-12)
        with torch.no_grad():
            assert full_loss(model, ce, data) == pytest.approx(float(ce(model(x), y)), rel=1e-6)
    # chunking a tensor pair gives the same products too
    np.testing.assert_allclose(hvp_operator(model, ce, (x, y), batch_size=9).matvec(v),
                               h.numpy() @ v, atol=1e-12)


def test_bad_input_raises_user_error(small):
    model, x, y, _, _ = small
    with pytest.raises(UserError, match="one-shot"):
        hessian_trace(model, ce, ((x, y) for _ in range(2)))
    with pytest.raises(UserError):
        hessian_trace(model, ce, (x, y), min_probes=5, max_probes=3)
    with pytest.raises(UserError):
        hessian_density(model, ce, (x, y), probes=0)
    with pytest.raises(UserError):
        hessian_density(model, ce, (x, y[:3]))
    with pytest.raises(UserError):
        hessian_trace(model, ce, 3)
    with pytest.raises(UserError):
        extreme_eigenvalues(model, ce, (x, y), k=2, which="middle")
    with pytest.raises(UserError):
        hessian_trace(model, ce, [])


def test_dataset_from_tensors_trains_with_the_engine():
    from dlscope.train.engine import TrainConfig, train

    g = torch.Generator().manual_seed(0)
    x = torch.randn(64, 5, generator=g)
    y = (x[:, 0] > 0).long()
    ds = Dataset.from_tensors(x, y)
    assert ds.n_classes == 2 and "test = train" in ds.source
    model = tanh_net([5, 8, 2], seed=0)
    res = train(model, ds, TrainConfig(lr=1e-2, batch_size=16, epochs=20), seed=0)
    assert res.final("train_acc") > 0.9
    reg = Dataset.from_tensors(x, x[:, 0], x[:8], x[:8, 0])
    assert reg.n_classes is None and reg.y_train.shape == (64, 1) and reg.n_test == 8
    with pytest.raises(UserError):
        Dataset.from_tensors(x, y[:10])
    with pytest.raises(UserError):
        Dataset.from_tensors(x, y, x)
    with pytest.raises(UserError):
        Dataset.from_tensors(x, y, n_classes=1)


def test_package_level_access():
    assert dlscope.metrics.hessian_trace is hessian_trace
    from dlscope.metrics import loss_plane, minimize_grad_norm, pca  # noqa: F401


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu(small):
    model, x, y, _, ev = small
    gpu = tanh_net([3, 6, 3], seed=1).cuda()
    loader = DataLoader(TensorDataset(x, y), batch_size=16)  # CPU batches, moved per batch
    a = hessian_trace(gpu, ce, loader, exact=False, max_probes=12, rtol=0, seed=5)
    b = hessian_trace(model, ce, (x, y), exact=False, max_probes=12, rtol=0, seed=5)
    assert a.trace == pytest.approx(b.trace, rel=1e-9)
    d = hessian_density(gpu, ce, (x.cuda(), y.cuda()), probes=2, steps=45)
    assert d.lambda_max == pytest.approx(ev[-1], rel=1e-8)
