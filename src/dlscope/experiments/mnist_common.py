"""Pieces the MNIST generalization experiments share: model validation and one training run
followed by a full evaluation of the train and test sets."""

from __future__ import annotations

from dlscope import models
from dlscope.train.engine import TrainConfig, evaluate, seeded_model, train
from dlscope.errors import UserError


def mnist_spec(name: str) -> models.MLPSpec | models.CNNSpec:
    """A model spec for 28x28 MNIST with 10 classes, or ValueError saying why not."""
    try:
        spec = models.parse_model(name)
    except UserError as e:
        raise ValueError(str(e)) from None
    if isinstance(spec, models.MLPSpec):
        ok = spec.input_dim == 784 and spec.output_dim == 10
    else:
        ok = spec.in_channels == 1 and spec.input_size == 28 and spec.n_classes == 10
    if not ok:
        raise ValueError(f"model {name!r} does not take 28x28 MNIST to 10 classes")
    return spec


def train_and_evaluate(p: dict, ctx, init_seed: int | None = None):
    """Train `p["model"]` on `p["data"]` with `p["train"]` (batch order from `p["seed"]`,
    init from `init_seed`, default the same seed); return (model, dataset, TrainResult,
    metrics) where metrics are the full-set train/test loss and accuracy in eval mode."""
    ds = ctx.dataset({"kind": "mnist", **p["data"]})
    spec = models.parse_model(p["model"])
    seed = p["seed"] if init_seed is None else init_seed
    model = seeded_model(lambda: models.build(spec), seed).to(ctx.device)
    res = train(model, ds, TrainConfig(**p["train"]), seed=p["seed"])
    train_loss, train_acc = evaluate(model, ds.x_train, ds.y_train, True)
    test_loss, test_acc = evaluate(model, ds.x_test, ds.y_test, True)
    return model, ds, res, {"train_loss": train_loss, "train_acc": train_acc,
                            "test_loss": test_loss, "test_acc": test_acc}
