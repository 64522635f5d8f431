"""The model and the data an image experiment runs on: the user's own, or the built-in ones.

Every image experiment's config has a `model` (a built-in spec such as "mlp:784-128-64-10",
or a factory "py:mypkg.nets:small_cnn" / a TOML table `{factory = "py:...", width = 32}`) and
a `data` ("mnist", "cifar10:PATH", "npz:FILE" or a table with a `kind`). The config checks
only their form, so a results folder's config.toml reads back on a machine without the data
or the factory; `setup` (called by `runs`, before anything is written) loads the data's
shape, adapts a built-in spec to it (dlscope.models.adapt) and imports the factory (its
source's SHA-256 enters the run's hash through the spec).

What the report and the verdicts say about the data comes from the `data` column the
experiments put in their results tables (`tag`): "MNIST", "CIFAR-10" (verified copies only),
or the kind with "(other data)".
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from pydantic import BaseModel, Field, field_validator

from dlscope import data as datalib
from dlscope import models
from dlscope.errors import UserError
from dlscope.train.engine import seeded_model

DATA_HELP = ("dataset: mnist, cifar10:PATH (the official python archive or its folder), "
             "npz:FILE (x_train, y_train, x_test, y_test), or a TOML table with a kind")
MODEL_HELP = ("a built-in spec (mlp:..., cnn:..., a preset; input and output sizes adapt to "
              "the data) or a factory py:module:function (a TOML table {factory = "
              "\"py:...\", keyword = value} passes keyword arguments)")
Model = str | dict[str, Any]
Data = str | dict[str, Any]


def is_factory(model: Model) -> bool:
    """Whether `model` names a user factory (a "py:" string or a table).

    Example:
        >>> is_factory("py:mynets:small_cnn"), is_factory("mlp:784-10")
        (True, False)
    """
    return isinstance(model, dict) or (isinstance(model, str) and model.startswith("py:"))


def check_model(model: Model) -> Model:
    """The form of a config's `model`, for a field validator (ValueError when wrong). A
    factory is not imported here: a results folder reads back without it.

    Example:
        >>> check_model("mlp:784-64-10")
        'mlp:784-64-10'
        >>> check_model("py:nomodule")
        Traceback (most recent call last):
        ...
        ValueError: model 'py:nomodule': a factory is py:module:function
    """
    if isinstance(model, dict):
        target = model.get("factory", model.get("target"))
        if not isinstance(target, str) or not target:
            raise ValueError(f"model table {model!r}: needs factory = \"py:module:function\"")
        return model
    if not isinstance(model, str):
        raise ValueError(f"model {model!r}: a name or a table")
    if model.startswith("py:"):
        module, sep, fn = model[3:].partition(":")
        if not (module and sep and fn):
            raise ValueError(f"model {model!r}: a factory is py:module:function")
        return model
    try:
        models.parse_model(model)
    except UserError as e:
        raise ValueError(str(e)) from None
    return model


def check_factory(model: Model | None, needs: str) -> Model | None:
    """A config's optional `model` that must be a factory (family experiments size it
    themselves); ValueError saying what it `needs` otherwise.

    Example:
        >>> check_factory(None, "a size argument") is None
        True
        >>> check_factory("mlp:784-10", "a size argument")
        Traceback (most recent call last):
        ...
        ValueError: model 'mlp:784-10': a factory py:module:function with a size argument
    """
    if model is not None and not is_factory(check_model(model)):
        raise ValueError(f"model {model!r}: a factory py:module:function with {needs}")
    return model


def check_data(data: Data) -> Data:
    """The form of a config's `data`, for a field validator (the files are not read here).

    Example:
        >>> check_data("npz:mine.npz")
        'npz:mine.npz'
        >>> check_data("imagenet")
        Traceback (most recent call last):
        ...
        ValueError: data 'imagenet': one of mnist, cifar10:PATH, npz:FILE
    """
    if isinstance(data, dict):
        if not isinstance(data.get("kind"), str):
            raise ValueError(f"data table {data!r}: needs a kind")
        return data
    if isinstance(data, str):
        kind, sep, path = data.strip().partition(":")
        if data.strip() == "mnist" or (sep and kind in ("cifar10", "npz") and path.strip()):
            return data
    raise ValueError(f"data {data!r}: one of mnist, cifar10:PATH, npz:FILE")


class ImageData(BaseModel):
    """Config mixin of the image experiments: the `data` key (its form checked here, the
    files read by `setup`)."""
    data: Data = Field("mnist", description=DATA_HELP)

    @field_validator("data")
    @classmethod
    def _data(cls, v: Data) -> Data:
        return check_data(v)


class ImageInputs(ImageData):
    """`ImageData` plus a `model` of any form (`check_model`); an experiment may redeclare the
    field with its own default, the check still applies."""
    model: Model = Field("mlp:784-128-64-10", description=MODEL_HELP)

    @field_validator("model")
    @classmethod
    def _model(cls, v: Model) -> Model:
        return check_model(v)


@dataclass(frozen=True)
class Setup:
    """What `setup` resolved: the spec (adapted, or the factory with its source hash), the
    dataset description runs ask `ctx.dataset` for, and what the data is."""
    spec: Any
    data: dict
    info: datalib.DataInfo

    @property
    def flatten(self) -> bool:
        return isinstance(self.spec, models.MLPSpec)

    @property
    def model(self) -> dict:
        """The spec as JSON (what a run's params hold)."""
        return self.spec.model_dump(mode="json")


def describe_data(data: Data) -> tuple[dict, datalib.DataInfo]:
    """(description, info) of a config's `data`; UserError for anything unusable."""
    desc = datalib.parse_data(data)
    info = datalib.info(desc)
    if info is None:
        raise UserError(f"data {data!r}: kind {desc['kind']!r} has no image shape")
    return desc, info


def setup(model: Model, data: Data, options: dict, experiment: str,
          deterministic: bool = False) -> Setup:
    """Resolve a config's model and data (loads the data's arrays once per process).

    Args:
        model: The config's model.
        data: The config's data.
        options: Image options of the runs (train_subset, seed, label_noise, ...); flatten
            is set here (a built-in MLP gets flattened images).
        experiment: Its name, for messages.
        deterministic: Refuse a model that is no deterministic function of its parameters
            (BatchNorm, dropout): Hessians, interpolation and sharpness need one.

    Returns:
        The `Setup`.
    """
    desc, info = describe_data(data)
    spec = models.adapt(models.parse_model(model), info.input_shape, info.n_classes)
    flatten = isinstance(spec, models.MLPSpec)
    full = {**desc, **{k: v for k, v in options.items() if k != "flatten"}, "flatten": flatten}
    if deterministic and isinstance(spec, models.FactorySpec):
        with torch.device("meta"):
            problem = models.deterministic_problem(
                models.build(spec, info.input_shape, info.n_classes))
        if problem:
            raise UserError(f"{experiment}: model {spec.name} {problem}")
    return Setup(spec, full, info)


def tag(info: datalib.DataInfo) -> str:
    """How tables and verdicts name the data: "MNIST", "CIFAR-10" (verified copies only), or
    the kind followed by "(other data)".

    Example:
        >>> tag(datalib.DataInfo((3, 32, 32), 10, "cifar10", True, "archive"))
        'CIFAR-10'
        >>> tag(datalib.DataInfo((3, 32, 32), 10, "other", False, "archive"))
        'other (other data)'
    """
    if info.official and info.name in ("mnist", "cifar10"):
        return {"mnist": "MNIST", "cifar10": "CIFAR-10"}[info.name]
    return f"{info.name} (other data)"


def build_model(p: dict, ds, seed: int, device) -> torch.nn.Module:
    """The run's model (`p["model"]`, a spec's JSON), initialised from `seed`, on `device`."""
    spec = models.parse_model(p["model"])
    return seeded_model(lambda: models.build(spec, tuple(ds.input_shape), ds.n_classes),
                        seed).to(device)
