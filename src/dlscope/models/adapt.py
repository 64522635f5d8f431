"""Fitting a spec to the data's shape, and checking a network is a function of (theta, x)."""

from __future__ import annotations

import math

from pydantic import ValidationError
from torch import nn

from dlscope.errors import UserError
from dlscope.models.factory import FactorySpec
from dlscope.models.specs import CNNSpec, MLPSpec

MNIST_SHAPE = (1, 28, 28)
MNIST_CLASSES = 10


def _data_text(shape: tuple[int, ...], n_classes: int) -> str:
    n = math.prod(shape)
    if len(shape) == 1:
        what = f"vectors of {n:,} inputs"
    else:
        what = f"{'x'.join(map(str, shape))} images ({n:,} inputs)"
    return f"the data has {what} and {n_classes} classes"


def adapt(spec: MLPSpec | CNNSpec | FactorySpec, input_shape: tuple[int, ...],
          n_classes: int) -> MLPSpec | CNNSpec | FactorySpec:
    """The spec with its input and output sizes taken from the data.

    A size written in the spec is replaced only when it is MNIST's (MLP: 784 inputs, 10
    classes; CNN: 1 channel, 28 px, 10 classes: what a name such as "mlp:784-512x3-10" or a
    preset says) or already the data's; any other size is a UserError, so a typo is never
    silently "fixed". An MLP takes any shape flattened (input_dim = prod(input_shape)); a CNN
    needs (channels, height, width) with height == width. Factories are returned unchanged
    (build passes them input_shape / n_classes).

    Args:
        spec: A parsed spec.
        input_shape: One example's shape, e.g. (3, 32, 32) or (D,).
        n_classes: The number of classes.

    Returns:
        The adapted spec (a copy; the same spec when nothing changes).

    >>> adapt(MLPSpec(input_dim=784, hidden=(64,), output_dim=10), (3, 32, 32), 100).name
    'mlp:3072-64-100'
    """
    shape = tuple(int(s) for s in input_shape)
    if isinstance(spec, FactorySpec):
        return spec
    if not shape or min(shape) < 1 or n_classes < 1:
        raise UserError(f"model {spec.name!r}: bad data shape {shape} / {n_classes} classes")
    if isinstance(spec, MLPSpec):
        n_in = math.prod(shape)
        if (spec.input_dim not in (math.prod(MNIST_SHAPE), n_in)
                or spec.output_dim not in (MNIST_CLASSES, n_classes)):
            raise UserError(f"model {spec.name!r} takes {spec.input_dim:,} inputs to "
                            f"{spec.output_dim} classes; {_data_text(shape, n_classes)}")
        return spec.model_copy(update={"input_dim": n_in, "output_dim": n_classes})
    if len(shape) != 3:
        raise UserError(f"model {spec.name!r} is a CNN and needs images (channels, height, "
                        f"width); {_data_text(shape, n_classes)}: use an MLP")
    c, h, w = shape
    if h != w:
        raise UserError(f"model {spec.name!r}: a CNN here takes square images; "
                        f"{_data_text(shape, n_classes)}")
    if (spec.in_channels not in (MNIST_SHAPE[0], c) or spec.input_size not in (MNIST_SHAPE[1], h)
            or spec.n_classes not in (MNIST_CLASSES, n_classes)):
        raise UserError(f"model {spec.name!r} takes {spec.in_channels}x{spec.input_size}x"
                        f"{spec.input_size} images to {spec.n_classes} classes; "
                        f"{_data_text(shape, n_classes)}")
    try:
        out = CNNSpec.model_validate({**spec.model_dump(), "in_channels": c, "input_size": h,
                                      "n_classes": n_classes})
    except ValidationError as exc:  # fewer than 2 classes, images under 4 px
        err = exc.errors()[0]
        raise UserError(f"model {spec.name!r}: {err['loc'][0]} {err['msg']}; "
                        f"{_data_text(shape, n_classes)}") from None
    out.feature_size()
    return out


def _problem(module: nn.Module) -> str | None:
    if isinstance(module, nn.modules.batchnorm._BatchNorm):
        return type(module).__name__  # batch statistics: one example's output depends on the batch
    if isinstance(module, nn.modules.instancenorm._InstanceNorm) and module.track_running_stats:
        return f"{type(module).__name__} with running stats"
    if isinstance(module, nn.modules.dropout._DropoutNd) and module.p > 0:
        return type(module).__name__
    if isinstance(module, nn.RReLU):
        return "RReLU"
    if isinstance(module, nn.MultiheadAttention) and module.dropout > 0:
        return "MultiheadAttention with dropout"
    return None


def deterministic_problem(model: nn.Module) -> str | None:
    """What makes `model` in train mode not a deterministic function of its parameters and
    one input (batch statistics, running buffers, random masks), or None.

    Args:
        model: A built network.

    Returns:
        E.g. "has BatchNorm2d (features.1) and Dropout (classifier.2): this experiment needs
        a deterministic function of the parameters"; None when nothing is found.

    >>> deterministic_problem(nn.Sequential(nn.Linear(2, 2), nn.ReLU())) is None
    True
    """
    found: dict[str, list[str]] = {}
    for name, module in model.named_modules():
        what = _problem(module)
        if what:
            found.setdefault(what, []).append(name or "the model itself")
    if not found:
        return None
    parts = [f"{what} ({', '.join(where)})" for what, where in found.items()]
    listed = parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]
    return f"has {listed}: this experiment needs a deterministic function of the parameters"
