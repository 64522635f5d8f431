"""Specs adapted to the data's shape (MNIST names on CIFAR-sized data, vectors), the rule that
refuses other mismatches, and the check for networks that are not functions of (theta, x)."""

from __future__ import annotations

from collections import OrderedDict

import pytest
import torch
from torch import nn

from dlscope import models
from dlscope.errors import UserError

# hand-computed counts: conv (c_in * k^2 + 1) * c_out, linear (in + 1) * out
CIFAR_MLP = 3073 * 512 + 2 * 513 * 512 + 513 * 10             # mlp:784-512x3-10 on 3x32x32
CIFAR_CNN_B = 28 * 16 + 145 * 32 + (32 * 8 * 8 + 1) * 128 + 129 * 10   # 32 -> 16 -> 8 px
CIFAR100_CNN_A = 76 * 10 + 251 * 20 + (20 * 5 * 5 + 1) * 120 + 121 * 100  # 32-28-14-10-5 px


@pytest.mark.parametrize("name, shape, k, params, out_name", [
    ("mlp:784-512x3-10", (3, 32, 32), 10, CIFAR_MLP, "mlp:3072-512-512-512-10"),
    ("cnn-b", (3, 32, 32), 10, CIFAR_CNN_B, "cnn:16,32/k3p1/fc128/in3x32"),
    ("cnn-a", (3, 32, 32), 100, CIFAR100_CNN_A, "cnn:10,20/k5p0/fc120/in3x32/out100"),
    ("mlp:784-64-10", (20,), 3, 21 * 64 + 65 * 3, "mlp:20-64-3"),
    ("mlp:3072-64-10", (3, 32, 32), 10, 3073 * 64 + 65 * 10, "mlp:3072-64-10"),
    ("cnn:8/k3p1/fc16/in32", (3, 32, 32), 10, 28 * 8 + (8 * 16 * 16 + 1) * 16 + 17 * 10,
     "cnn:8/k3p1/fc16/in3x32"),
])
def test_adapt_to_the_data(name, shape, k, params, out_name):
    spec = models.adapt(models.parse_model(name), shape, k)
    assert spec.name == out_name and models.parse_model(out_name) == spec
    assert models.count_params(spec) == params
    net = models.build(spec)
    assert models.module_params(net) == params
    assert net(torch.zeros(2, *shape)).shape == (2, k)
    # build / count_params / describe adapt built-ins themselves when given the data's sizes
    assert models.count_params(name, shape, k) == params
    assert models.module_params(models.build(name, shape, k)) == params
    assert models.describe(name, shape, k)["params"] == params


def test_adapt_keeps_the_spec_on_mnist():
    for name in ["cnn-b", "mlp-pca", "mlp:784-512x3-10"]:
        spec = models.parse_model(name)
        assert models.adapt(spec, (1, 28, 28), 10) == spec


@pytest.mark.parametrize("name, shape, k, message", [
    ("mlp:100-10", (3, 32, 32), 10, "model 'mlp:100-10' takes 100 inputs to 10 classes; the "
                                    "data has 3x32x32 images (3,072 inputs) and 10 classes"),
    ("mlp:784-20", (3, 32, 32), 10, "model 'mlp:784-20' takes 784 inputs to 20 classes; the "
                                    "data has 3x32x32 images (3,072 inputs) and 10 classes"),
    ("mlp:1-8-1", (5,), 2, "model 'mlp:1-8-1' takes 1 inputs to 1 classes; the data has "
                           "vectors of 5 inputs and 2 classes"),
    ("cnn-b", (50,), 10, "model 'cnn:16,32/k3p1/fc128' is a CNN and needs images (channels, "
                         "height, width); the data has vectors of 50 inputs and 10 classes: use "
                         "an MLP"),
    ("cnn-b", (3, 32, 16), 10, "a CNN here takes square images"),
    ("cnn:8/k3p1/fc16/in2x28", (3, 28, 28), 10, "takes 2x28x28 images to 10 classes; the data "
                                                "has 3x28x28 images (2,352 inputs)"),
    ("cnn:8/k3p1/fc16/in24", (1, 32, 32), 10, "takes 1x24x24 images"),
    ("cnn:8/k3p1/fc16/out7", (1, 28, 28), 5, "to 7 classes"),
    ("cnn-a", (1, 8, 8), 10, "the image collapses to nothing"),
])
def test_adapt_refuses_other_mismatches(name, shape, k, message):
    with pytest.raises(UserError) as err:
        models.adapt(models.parse_model(name), shape, k)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_cnn_for_params_on_cifar_shapes():
    for fc_layers in (1, 2, 4):
        spec = models.cnn_for_params(fc_layers, 100_000, in_channels=3, input_size=32,
                                     n_classes=10)
        n = models.module_params(models.build(spec))
        assert n == models.count_params(spec) and abs(n - 100_000) <= 1000
        assert models.build(spec)(torch.zeros(1, 3, 32, 32)).shape == (1, 10)


def test_cnn_names_round_trip_every_field():
    spec = models.CNNSpec(in_channels=3, input_size=32, channels=(4, 8), kernel=5, padding=2,
                          pool=1, fc=(16,), n_classes=100, dropout=0.25, activation="tanh")
    assert spec.name == "cnn:4,8/k5p2/fc16/pool1/drop0.25/in3x32/out100:tanh"
    assert models.parse_model(spec.name) == spec


def test_deterministic_problem_names_the_layers():
    net = nn.Sequential(OrderedDict(
        features=nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU()),
        classifier=nn.Sequential(nn.Flatten(), nn.Linear(4, 4), nn.Dropout(0.5), nn.Linear(4, 2))))
    assert models.deterministic_problem(net) == (
        "has BatchNorm2d (features.1) and Dropout (classifier.2): this experiment needs a "
        "deterministic function of the parameters")
    two = nn.Sequential(nn.Linear(2, 2), nn.BatchNorm1d(2), nn.Linear(2, 2), nn.BatchNorm1d(2),
                        nn.InstanceNorm1d(2, track_running_stats=True))
    assert models.deterministic_problem(two) == (
        "has BatchNorm1d (1, 3) and InstanceNorm1d with running stats (4): this experiment "
        "needs a deterministic function of the parameters")
    assert models.deterministic_problem(nn.BatchNorm2d(3)).startswith(
        "has BatchNorm2d (the model itself)")
    assert "Dropout" in models.deterministic_problem(models.build("cnn:8/k5p2/fc32/drop0.5"))


@pytest.mark.parametrize("net", [
    nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2)),
    nn.Sequential(nn.Linear(3, 4), nn.Dropout(0.0), nn.LayerNorm(4), nn.GroupNorm(2, 4)),
    nn.Sequential(nn.InstanceNorm1d(4), nn.Linear(4, 2)),
])
def test_deterministic_problem_passes_plain_nets(net):
    assert models.deterministic_problem(net) is None
    assert models.deterministic_problem(models.build("cnn-b")) is None


def test_deterministic_problem_is_right_about_train_mode():
    """The flagged nets really are not functions of (theta, x): the same input gives another
    output beside another batch (BatchNorm) or on another call (Dropout); the plain one not."""
    torch.manual_seed(0)
    x, y = torch.randn(4, 3), torch.randn(4, 3)
    bn = nn.Sequential(nn.Linear(3, 3), nn.BatchNorm1d(3)).train()
    drop = nn.Sequential(nn.Linear(3, 3), nn.Dropout(0.5)).train()
    plain = nn.Sequential(nn.Linear(3, 3), nn.Tanh()).train()
    assert not torch.allclose(bn(torch.cat([x[:2], y[:2]]))[:2], bn(x)[:2])
    assert not torch.equal(drop(x), drop(x))
    assert torch.equal(plain(torch.cat([x[:2], y[:2]]))[:2], plain(x)[:2])
    assert [models.deterministic_problem(n) is None for n in (bn, drop, plain)] == \
        [False, False, True]
