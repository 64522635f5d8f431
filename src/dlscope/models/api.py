"""parse_model, build, count_params and describe over every kind of spec."""

from __future__ import annotations

from torch import nn

from dlscope.errors import UserError
from dlscope.models.adapt import adapt
from dlscope.models.factory import FactorySpec, call_factory, count_module, parse_factory
from dlscope.models.specs import CNNSpec, MLPSpec, build_builtin, count_builtin, parse_builtin

Spec = MLPSpec | CNNSpec | FactorySpec
DEPTH_LAYERS = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d,
                nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)


def parse_model(name: str | dict | Spec) -> Spec:
    """A spec from a short name, a preset, `py:module:function[,k=v...]`, a dict, or a spec
    (returned as is).

    Dicts: a spec dump ({"kind": "mlp" | "cnn" | "factory", ...}; a factory dump keeps its
    stored source hash), or {"factory": "py:module:function", **kwargs} (a TOML table), whose
    hash is taken now. A dict without kind is an MLP dump (as before factories).
    """
    if isinstance(name, (MLPSpec, CNNSpec, FactorySpec)):
        return name
    if isinstance(name, dict):
        if name.get("kind") == "factory" or "factory" in name:
            return parse_factory(name)
        cls = CNNSpec if name.get("kind") == "cnn" else MLPSpec
        return cls.model_validate(name)
    if not isinstance(name, str):
        raise UserError(f"model {name!r}: expected a name, a table or a spec")
    if name.strip().startswith("py:"):
        return parse_factory(name)
    return parse_builtin(name)


def _fit(spec: Spec, input_shape, n_classes) -> Spec:
    if isinstance(spec, FactorySpec) or input_shape is None or n_classes is None:
        return spec
    return adapt(spec, input_shape, n_classes)


def build(spec: Spec | str | dict, input_shape: tuple[int, ...] | None = None,
          n_classes: int | None = None) -> nn.Module:
    """A freshly initialised torch module for a spec (uses torch's global RNG).

    Built-in specs are first adapted to the data (see adapt) when both input_shape and
    n_classes are given; a factory is called with its kwargs plus those of input_shape /
    n_classes its signature names, after checking its module's source hash.
    """
    spec = _fit(parse_model(spec), input_shape, n_classes)
    if isinstance(spec, FactorySpec):
        return call_factory(spec, input_shape, n_classes)
    return build_builtin(spec)


def count_params(spec: Spec | str | dict, input_shape: tuple[int, ...] | None = None,
                 n_classes: int | None = None) -> int:
    """Exact parameter count: closed form for built-ins (adapted as build does), a build on
    torch's meta device for factories (no memory)."""
    spec = _fit(parse_model(spec), input_shape, n_classes)
    if isinstance(spec, FactorySpec):
        model = call_factory(spec, input_shape, n_classes, meta=True)
        return count_module(model, f"factory {spec.name}")
    return count_builtin(spec)


def describe(spec: Spec | str | dict, input_shape: tuple[int, ...] | None = None,
             n_classes: int | None = None) -> dict:
    """One row for a setup table: model (name), kind, depth, widths, params.

    A factory's depth is its number of Linear / Conv layers (built on the meta device); its
    widths are ""."""
    spec = _fit(parse_model(spec), input_shape, n_classes)
    if isinstance(spec, MLPSpec):
        widths = list(spec.hidden)
        return {"model": spec.name, "kind": "mlp", "depth": len(widths),
                "widths": "-".join(map(str, widths)), "params": count_builtin(spec)}
    if isinstance(spec, CNNSpec):
        return {"model": spec.name, "kind": "cnn", "depth": len(spec.channels) + len(spec.fc),
                "widths": "-".join(map(str, [*spec.channels, *spec.fc])),
                "params": count_builtin(spec)}
    model = call_factory(spec, input_shape, n_classes, meta=True)
    depth = sum(isinstance(m, DEPTH_LAYERS) for m in model.modules())
    return {"model": spec.name, "kind": "factory", "depth": depth, "widths": "",
            "params": count_module(model, f"factory {spec.name}")}
