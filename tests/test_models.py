"""Model specs: the reports' published parameter counts, the width solver, short names."""

import pytest
import torch

from dlscope import models
from dlscope.errors import UserError


@pytest.mark.parametrize("name, published", [
    # SCIENCE.md section 1: the reports' function-fit nets and the 16/32 CNN.
    ("mlp:1-8x8-1", 529),                 # Linear(1,8), 7 x Linear(8,8), Linear(8,1)
    ("mlp:1-10x6-1", 581),                # h=10, n=5
    ("mlp:1-14x11-1", 2143),              # h=14, n=10
    ("mlp:1-5-10-10-10-10-9-5-1", 555),
    ("mlp:1-5-12-15-10-10-1", 558),
    ("mlp:1-26-18-1", 557),
    ("cnn-b", 206922),                    # conv 16,32 k3 pad 1 + fc 128 at 28x28
])
def test_published_parameter_counts(name, published):
    spec = models.parse_model(name)
    assert models.count_params(spec) == published
    assert models.module_params(models.build(spec)) == published


@pytest.mark.parametrize("name", ["cnn-a", "cnn-c", "mlp-pca", "cnn:8/k5p2/fc32,16/drop0.5"])
def test_closed_form_count_matches_torch(name):
    spec = models.parse_model(name)
    assert models.count_params(spec) == models.module_params(models.build(spec))


def test_built_models_run_on_their_inputs():
    x = torch.zeros(2, 1, 28, 28)
    for name in ["cnn-a", "cnn-b", "cnn-c", "mlp-pca"]:
        assert models.build(name)(x).shape == (2, 10)


@pytest.mark.parametrize("depth", [1, 2, 3, 4, 5, 7, 10])
@pytest.mark.parametrize("target", [300, 550, 2000, 20000])
def test_width_solver_within_one_percent(depth, target):
    widths = models.width_for_params(depth, target)
    assert len(widths) == depth
    n = models.mlp_params(widths)
    assert abs(n - target) / target <= 0.01
    assert n == models.count_params(models.MLPSpec(hidden=tuple(widths)))


@pytest.mark.parametrize("bad", ["mlp:784", "mlp:1-0-1", "mlp:1-a-1", "cnn:16/q3",
                                 "resnet", "mlp:1-4-1:swish", "cnn:4,4,4,4,4,4/k5p0/fc8"])
def test_bad_names_are_user_errors(bad):
    with pytest.raises(UserError):
        models.parse_model(bad)


def test_spec_name_round_trips():
    for name in ["mlp:784-128-64-10", "mlp:1-8-8-1:tanh", "cnn:16,32/k3p1/fc128"]:
        spec = models.parse_model(name)
        assert models.parse_model(spec.name) == spec
