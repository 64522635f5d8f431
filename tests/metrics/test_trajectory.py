"""dlscope.metrics.trajectory against references: numpy SVD, a planted plane, engine.evaluate."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from dlscope import models
from dlscope.data import MnistOptions, mnist_dataset
from dlscope.errors import UserError
from dlscope.metrics.flat import flatten_params
from dlscope.metrics.trajectory import loss_plane, pca, plane_axis
from dlscope.train.engine import TrainConfig, evaluate, seeded_model, train


@pytest.mark.parametrize("shape", [(12, 300), (60, 7)])  # Gram path (n < P) and economy SVD
def test_pca_equals_direct_svd(shape):
    X = np.random.default_rng(1).normal(size=shape).astype(np.float32) * 3 + 1
    proj, comps, ratio, mean = pca(X, k=3)
    Xc = X.astype(np.float64) - X.astype(np.float64).mean(0)
    u, s, vt = np.linalg.svd(Xc, full_matrices=False)
    signs = np.sign((vt[:3] * comps).sum(1))  # align the arbitrary signs
    np.testing.assert_allclose(mean, X.mean(0, dtype=np.float64), rtol=1e-12)
    np.testing.assert_allclose(comps, vt[:3] * signs[:, None], atol=1e-8)
    np.testing.assert_allclose(proj, u[:, :3] * s[:3] * signs, atol=1e-8)
    np.testing.assert_allclose(ratio, s[:3] ** 2 / (s**2).sum(), rtol=1e-10)
    np.testing.assert_allclose(comps @ comps.T, np.eye(3), atol=1e-10)
    np.testing.assert_allclose(proj, (X - mean) @ comps.T, atol=1e-8)
    assert (comps[np.arange(3), np.abs(comps).argmax(1)] > 0).all()  # sign convention


def test_pca_recovers_planted_plane():
    rng = np.random.default_rng(2)
    P, n = 2000, 40
    basis, _ = np.linalg.qr(rng.normal(size=(P, 2)))
    coords = rng.normal(size=(n, 2)) * [5.0, 2.0]
    X = 7.0 + coords @ basis.T + 1e-3 * rng.normal(size=(n, P))
    proj, comps, ratio, _ = pca(X, 2)
    assert ratio.sum() > 0.999 and ratio[0] > ratio[1]
    # the components span the planted plane, and the projection is its coordinates (rotated)
    np.testing.assert_allclose(np.linalg.norm(comps @ basis, axis=0), 1.0, atol=1e-4)
    rot = comps @ basis
    np.testing.assert_allclose(proj, (coords - coords.mean(0)) @ rot.T, atol=5e-3)


@pytest.mark.parametrize("bad, k", [(np.zeros((1, 5)), 1), (np.ones((4, 3)), 1),
                                    (np.eye(4), 4), (np.full((3, 3), np.nan), 1)])
def test_pca_bad_input(bad, k):
    with pytest.raises(UserError):
        pca(bad, k)


def test_plane_axis_contains_zero_and_covers_range():
    for lo, hi, n in [(-3.2, 0.5, 21), (0.3, 4.0, 25), (-1, -0.2, 5), (0.0, 0.0, 7)]:
        a = plane_axis(lo, hi, n)
        assert len(a) >= n and 0.0 in a
        assert a[0] <= min(lo, 0) + 1e-12 and a[-1] >= max(hi, 0) - 1e-12
        np.testing.assert_allclose(np.diff(a), np.diff(a)[0])
    with pytest.raises(UserError):
        plane_axis(0, 1, 2)


@pytest.fixture(scope="module")
def trained():
    """A small MLP and a small CNN, trained briefly on 1,000 MNIST images."""
    out = {}
    for name, flatten in (("mlp:784-24-12-10", True), ("cnn:4,8/k3p1/fc16", False)):
        ds = mnist_dataset(MnistOptions(flatten=flatten, train_subset=1000))
        model = seeded_model(lambda name=name: models.build(name), 0)
        train(model, ds, TrainConfig(batch_size=100, epochs=1, eval_test=False), seed=0)
        out[name] = (model, ds.x_train[:600], ds.y_train[:600])
    return out


def _directions(model, seed=0):
    g = torch.Generator().manual_seed(seed)
    c = flatten_params(model)
    d1, d2 = torch.randn(len(c), generator=g), torch.randn(len(c), generator=g)
    return c, d1 / d1.norm(), d2 / d2.norm()


@pytest.mark.parametrize("name", ["mlp:784-24-12-10", "cnn:4,8/k3p1/fc16"])
def test_loss_plane_origin_equals_evaluate(trained, name):
    model, x, y = trained[name]
    c, d1, d2 = _directions(model)
    alphas, betas = plane_axis(-1.0, 0.5, 5), plane_axis(-0.2, 0.7, 4)
    grid = loss_plane(model, F.cross_entropy, x, y, c.numpy(), d1, d2, alphas, betas, chunk=4,
                      batch_size=250)
    assert grid.shape == (len(alphas), len(betas))
    ref, _ = evaluate(model, x, y, classification=True)
    assert grid[alphas == 0.0, betas == 0.0][0] == pytest.approx(ref, rel=1e-5)
    np.testing.assert_array_equal(flatten_params(model), c)  # the model is left untouched


@pytest.mark.parametrize("fast", [True, False])
def test_loss_plane_off_origin_equals_moved_model(trained, fast):
    model, x, y = trained["mlp:784-24-12-10"]
    c, d1, d2 = _directions(model, seed=1)
    alphas, betas = np.array([-0.8, 0.0, 1.3]), np.array([0.4, -2.0])
    grid = loss_plane(model, F.cross_entropy, x, y, c, d1, d2, alphas, betas, fast=fast)
    moved = copy.deepcopy(model)
    for i, a in enumerate(alphas):
        for j, b in enumerate(betas):
            torch.nn.utils.vector_to_parameters(c + a * d1 + b * d2, moved.parameters())
            ref, _ = evaluate(moved, x, y, classification=True)
            assert grid[i, j] == pytest.approx(ref, rel=2e-5), (a, b)


def test_loss_plane_rejects_wrong_sizes(trained):
    model, x, y = trained["mlp:784-24-12-10"]
    c, d1, d2 = _directions(model)
    with pytest.raises(UserError):
        loss_plane(model, F.cross_entropy, x, y, c[:-1], d1, d2, [0.0], [0.0])
    with pytest.raises(UserError):
        loss_plane(model, F.cross_entropy, x, y[:-1], c, d1, d2, [0.0], [0.0])


def test_flatten_params_takes_a_channels_last_cnn():
    """The fast step trains CPU CNNs channels-last; their flat vector is the same numbers in
    the same order as torch's own `parameters_to_vector` of the contiguous module."""
    model = models.build("cnn-c")
    expected = torch.nn.utils.parameters_to_vector(model.parameters()).detach()
    model.to(memory_format=torch.channels_last)
    assert torch.equal(flatten_params(model), expected)
