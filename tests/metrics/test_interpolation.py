"""Tests for dlscope.metrics.interpolation."""

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from dlscope.errors import UserError
from dlscope.metrics.interpolation import alpha_grid, evaluate_classifier, interpolate


def _mlp(seed, bn=False):
    torch.manual_seed(seed)
    layers = [nn.Linear(6, 10)] + ([nn.BatchNorm1d(10)] if bn else []) + [nn.ReLU()]
    return nn.Sequential(*layers, nn.Linear(10, 3))


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


def _data(n=300):
    g = torch.Generator().manual_seed(5)
    return torch.randn(n, 6, generator=g), torch.randint(0, 3, (n,), generator=g)


def test_endpoints_equal_the_models_and_models_unchanged():
    a, b = _mlp(0), _mlp(1)
    a.train()
    b.eval()
    snaps = _snapshot(a), _snapshot(b)
    x, y = _data()
    evaluate = evaluate_classifier(x, y, batch_size=64)
    df = interpolate(a, b, [0.0, 0.5, 1.0], evaluate)
    assert isinstance(df, pd.DataFrame)
    assert list(df.columns) == ["alpha", "loss", "acc"]
    assert df["alpha"].tolist() == [0.0, 0.5, 1.0]
    _assert_unchanged(a, snaps[0])
    _assert_unchanged(b, snaps[1])

    with torch.no_grad():  # independent reference: plain full-batch evaluation
        for row, model in ((0, a), (2, b)):
            out = model(x)
            assert df["loss"][row] == pytest.approx(float(F.cross_entropy(out, y)), rel=1e-6)
            assert df["acc"][row] == int((out.argmax(1) == y).sum()) / len(y)
    assert a.training and not b.training  # evaluate_classifier restored the flags


def test_midpoint_parameters_and_eval_mode():
    a, b = _mlp(0), _mlp(1)
    seen = {}

    def evaluate(model):
        seen["training"] = [m.training for m in model.modules()]
        seen["params"] = {k: v.detach().clone() for k, v in model.named_parameters()}
        seen["is_copy"] = model is not a and model is not b
        return {"dummy": 1.0}

    rows = interpolate(a, b, [0.5], evaluate)
    assert rows["dummy"].tolist() == [1.0]
    assert seen["is_copy"] and not any(seen["training"])
    pb = dict(b.named_parameters())
    for k, pa in a.named_parameters():
        expected = (pa.detach().numpy() + pb[k].detach().numpy()) / 2
        np.testing.assert_allclose(seen["params"][k].numpy(), expected, rtol=1e-6, atol=1e-7)


def test_batchnorm_buffers_are_interpolated():
    a, b = _mlp(0, bn=True), _mlp(1, bn=True)
    with torch.no_grad():
        a[1].running_mean.fill_(1.0)
        b[1].running_mean.fill_(3.0)
        a[1].running_var.fill_(1.0)
        b[1].running_var.fill_(2.0)
        a[1].num_batches_tracked.fill_(7)
        b[1].num_batches_tracked.fill_(9)
    seen = []

    def evaluate(model):
        bn = model[1]
        seen.append((bn.running_mean.clone(), bn.running_var.clone(), int(bn.num_batches_tracked)))
        return {}

    df = interpolate(a, b, [-1.0, 0.25, 2.0], evaluate)
    assert df.columns.tolist() == ["alpha"]
    for (mean, var, nbt), alpha in zip(seen, [-1.0, 0.25, 2.0]):
        assert torch.allclose(mean, torch.full((10,), 1 + 2 * alpha))
        assert torch.allclose(var, torch.full((10,), 1 + alpha))
        assert nbt == 7
    assert float(a[1].running_mean[0]) == 1.0 and float(b[1].running_mean[0]) == 3.0


def test_mismatched_architectures_raise():
    with pytest.raises(UserError):
        interpolate(_mlp(0), _mlp(0, bn=True), [0.5], lambda m: {})
    wide = nn.Sequential(nn.Linear(6, 11), nn.ReLU(), nn.Linear(11, 3))
    with pytest.raises(UserError):
        interpolate(_mlp(0), wide, [0.5], lambda m: {})
    tanh = nn.Sequential(nn.Linear(6, 10), nn.Tanh(), nn.Linear(10, 3))
    with pytest.raises(UserError):
        interpolate(_mlp(0), tanh, [0.5], lambda m: {})


@pytest.mark.parametrize("n", [31, 25, 7, 40])
def test_alpha_grid(n):
    grid = alpha_grid(n)
    assert len(grid) >= n
    assert grid[0] == -1.0 and grid[-1] == 2.0
    assert np.all(np.diff(grid) > 0)
    assert 0.0 in grid.tolist() and 1.0 in grid.tolist()
    assert np.any(grid == 0.0) and np.any(grid == 1.0)
    if n == 31:
        assert len(grid) == 31
        np.testing.assert_allclose(np.diff(grid), 0.1, atol=1e-12)
    with pytest.raises(UserError):
        alpha_grid(1)
    with pytest.raises(UserError):
        alpha_grid(10, lo=2.0, hi=-1.0)
