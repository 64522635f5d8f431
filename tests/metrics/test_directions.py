"""Filter-normalized directions (Li et al. 2018): per-filter norms equal θ's, biases and
norm-layer entries zero, and the 1-D curve at t = 0 is the model's own loss."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from dlscope.errors import UserError
from dlscope.metrics.directions import filter_normalized_direction, loss_curve_1d
from dlscope.metrics.interpolation import evaluate_classifier


def _cnn(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(),
                         nn.Linear(4 * 6 * 6, 5), nn.ReLU(), nn.Linear(5, 3))


def test_per_filter_norms_equal_the_weights_and_biases_are_zero():
    model = _cnn()
    d = filter_normalized_direction(model, seed=3)
    assert set(d) == {k for k, _ in model.named_parameters()}
    for name, p in model.named_parameters():
        assert d[name].shape == p.shape and d[name].dtype == p.dtype
        if p.dim() < 2:  # biases, BatchNorm weight and bias
            assert torch.count_nonzero(d[name]) == 0, name
        else:
            want = p.detach().reshape(p.shape[0], -1).norm(dim=1)
            got = d[name].reshape(p.shape[0], -1).norm(dim=1)
            torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-7)
            # a random direction, not the weights themselves
            cos = F.cosine_similarity(d[name].flatten(), p.detach().flatten(), dim=0)
            assert abs(float(cos)) < 0.5
    # same draw for the same seed, a different one for another seed
    d2 = filter_normalized_direction(model, seed=3)
    d3 = filter_normalized_direction(model, seed=4)
    assert all(torch.equal(d[k], d2[k]) for k in d)
    assert not torch.equal(d["0.weight"], d3["0.weight"])


def test_curve_at_zero_is_the_models_loss_and_the_model_is_restored():
    model = _cnn(1).eval()
    x = torch.randn(64, 1, 8, 8)
    y = torch.randint(0, 3, (64,))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    ev = evaluate_classifier(x, y, batch_size=16)
    d = filter_normalized_direction(model, seed=0)
    df = loss_curve_1d(model, d, [-1.0, -0.5, 0.0, 0.5, 1.0], ev)
    with torch.no_grad():
        want = float(F.cross_entropy(model(x), y))
    assert df.t.tolist() == [-1.0, -0.5, 0.0, 0.5, 1.0]
    assert df.set_index("t").loc[0.0, "loss"] == pytest.approx(want, rel=1e-6)
    # t = 0.5 is the model with every weight filter moved by half its norm: check one value
    moved = _cnn(1).eval()
    moved.load_state_dict(before)
    with torch.no_grad():
        for k, p in moved.named_parameters():
            p.add_(0.5 * d[k])
        want_half = float(F.cross_entropy(moved(x), y))
    assert df.set_index("t").loc[0.5, "loss"] == pytest.approx(want_half, rel=1e-6)
    assert np.all(np.isfinite(df.loss))
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k


def test_mismatched_direction_raises():
    model = _cnn()
    d = filter_normalized_direction(model)
    d.pop("0.bias")
    with pytest.raises(UserError, match="parameter names"):
        loss_curve_1d(model, d, [0.0], lambda m: {})
