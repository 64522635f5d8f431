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
    for name in ["mlp:784-128-64-10", "mlp:1-8-8-1:tanh", "cnn:16,32/k3p1/fc128",
                 "cnn:8/k5p2/fc32/drop0.5", "cnn:4/k3p1/fc8/pool1/in3x32/out100:gelu"]:
        spec = models.parse_model(name)
        assert models.parse_model(spec.name) == spec


# SHA-256 (first 16 hex digits) of each module's state_dict (names and float32 bytes) built
# after torch.manual_seed(0), recorded with models.py as it was before the models package
# (commit abf1d95): the package and its factories leave built-in modules bit-identical.
BEFORE_PACKAGE = [
    ("mlp:784-128-64-10", "8a5f1e9ed553dce5"),
    ("mlp:1-8x8-1:tanh", "c6d8329380704a3b"),
    ("cnn-a", "7e8a089a63875fd9"),
    ("cnn-b", "ff82b87e1d6f0022"),
    ("cnn-c", "33fdfb953d1b6037"),
    ("cnn:8/k5p2/fc32,16/drop0.5", "1b0806c3988035c5"),
    ("cnn:4,8/k3p1/pool1/fc16", "d824ad5b9bf4b90c"),
]


@pytest.mark.parametrize("name, digest", BEFORE_PACKAGE)
def test_built_in_modules_are_bit_identical_to_before(name, digest):
    import hashlib

    for _ in range(2):  # and the same seed gives the same module twice
        torch.manual_seed(0)
        h = hashlib.sha256()
        for key, value in models.build(name).state_dict().items():
            h.update(key.encode())
            h.update(value.detach().cpu().numpy().tobytes())
        assert h.hexdigest()[:16] == digest


def test_built_in_dumps_are_unchanged():
    """A run's hash includes model_dump: the package must not change it."""
    assert models.parse_model("cnn-b").model_dump(mode="json") == {
        "kind": "cnn", "in_channels": 1, "input_size": 28, "channels": [16, 32], "kernel": 3,
        "padding": 1, "pool": 2, "fc": [128], "n_classes": 10, "dropout": 0.0,
        "activation": "relu"}
    assert models.parse_model("mlp-pca").model_dump(mode="json") == {
        "kind": "mlp", "input_dim": 784, "hidden": [128, 64], "output_dim": 10,
        "activation": "relu"}
