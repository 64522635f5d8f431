"""Model specs (MLP, CNN), exact parameter counts, and widths for a parameter budget.

A spec is plain data (a pydantic model) that can be written to a config file, hashed into
a run id and parsed from a short name:

    mlp:784-128-64-10        input 784, hidden 128 and 64, output 10 (ReLU)
    mlp:1-8x8-1:tanh         eight hidden layers of width 8, tanh
    cnn:16,32/k3p1/fc128     conv 1->16->32 (kernel 3, padding 1, 2x2 max-pool after each), fc 128
    cnn-b                    a preset (see PRESETS): the reports' models
"""

from __future__ import annotations

import math
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from dlscope.errors import UserError

Activation = Literal["relu", "tanh", "sigmoid", "gelu"]
_ACT = {"relu": nn.ReLU, "tanh": nn.Tanh, "sigmoid": nn.Sigmoid, "gelu": nn.GELU}


class MLPSpec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    kind: Literal["mlp"] = "mlp"
    input_dim: int = Field(1, ge=1)
    hidden: tuple[Annotated[int, Field(ge=1)], ...] = (16,)
    output_dim: int = Field(1, ge=1)
    activation: Activation = "relu"

    @property
    def name(self) -> str:
        dims = [self.input_dim, *self.hidden, self.output_dim]
        act = "" if self.activation == "relu" else f":{self.activation}"
        return "mlp:" + "-".join(map(str, dims)) + act


class CNNSpec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    kind: Literal["cnn"] = "cnn"
    in_channels: int = Field(1, ge=1)
    input_size: int = Field(28, ge=4)
    channels: tuple[Annotated[int, Field(ge=1)], ...] = (16, 32)
    kernel: int = Field(3, ge=1)
    padding: int = Field(1, ge=0)
    pool: int = Field(2, ge=1, description="max-pool size after each conv; 1 = none")
    fc: tuple[Annotated[int, Field(ge=1)], ...] = (128,)
    n_classes: int = Field(10, ge=2)
    dropout: float = Field(0.0, ge=0.0, lt=1.0)
    activation: Activation = "relu"

    @property
    def name(self) -> str:
        ch = ",".join(map(str, self.channels))
        fc = ",".join(map(str, self.fc))
        return f"cnn:{ch}/k{self.kernel}p{self.padding}/fc{fc}"

    def feature_size(self) -> int:
        """Spatial side after the conv/pool stack (raises if it collapses)."""
        s = self.input_size
        for _ in self.channels:
            s = s + 2 * self.padding - self.kernel + 1
            s = s // self.pool
            if s < 1:
                raise UserError(f"model {self.name}: the image collapses to nothing")
        return s


PRESETS: dict[str, str] = {
    # The reports' CNNs (SCIENCE.md section 1).
    "cnn-a": "cnn:10,20/k5p0/fc120",  # conv 10,20 k5 + fc 120
    "cnn-b": "cnn:16,32/k3p1/fc128",  # 206,922 params at 28x28
    "cnn-c": "cnn:8,16/k3p1/fc64",
    "mlp-pca": "mlp:784-128-64-10",  # the weight-pca / bench MLP
}


def _ints(text: str, what: str) -> list[int]:
    out: list[int] = []
    for part in text.replace(",", "-").split("-"):
        if "x" in part:  # WIDTHxCOUNT: COUNT layers of WIDTH
            w, _, n = part.partition("x")
            out += [_int(w, what)] * _int(n, what)
        else:
            out.append(_int(part, what))
    return out


def _int(text: str, what: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise UserError(f"model {what!r}: {text!r} is not a whole number") from None
    if value < 1:
        raise UserError(f"model {what!r}: sizes must be >= 1, got {value}")
    return value


def parse_model(name: str | dict | MLPSpec | CNNSpec) -> MLPSpec | CNNSpec:
    """A spec from a short name, a preset, a dict, or a spec (returned as is)."""
    if isinstance(name, (MLPSpec, CNNSpec)):
        return name
    if isinstance(name, dict):
        cls = CNNSpec if name.get("kind") == "cnn" else MLPSpec
        return cls.model_validate(name)
    text = PRESETS.get(name.strip(), name.strip())
    kind, _, rest = text.partition(":")
    if kind == "mlp":
        dims_text, _, act = rest.partition(":")
        dims = _ints(dims_text, name)
        if len(dims) < 2:
            raise UserError(f"model {name!r}: an MLP needs at least input and output sizes")
        if act and act not in _ACT:
            raise UserError(f"model {name!r}: unknown activation {act!r} (one of {sorted(_ACT)})")
        return MLPSpec(input_dim=dims[0], hidden=tuple(dims[1:-1]), output_dim=dims[-1],
                       activation=act or "relu")
    if kind == "cnn":
        parts = rest.split("/")
        spec: dict = {"channels": tuple(_ints(parts[0], name))}
        for part in parts[1:]:
            if part.startswith("fc"):
                spec["fc"] = tuple(_ints(part[2:], name)) if part[2:] else ()
            elif part.startswith("k"):
                k, _, p = part[1:].partition("p")
                spec["kernel"] = _int(k, name)
                spec["padding"] = int(p) if p else 0
            elif part.startswith("pool"):
                spec["pool"] = _int(part[4:], name)
            elif part.startswith("drop"):
                spec["dropout"] = float(part[4:])
            elif part.startswith("in"):
                spec["input_size"] = _int(part[2:], name)
            else:
                raise UserError(f"model {name!r}: cannot read {part!r}")
        cnn = CNNSpec(**spec)
        cnn.feature_size()
        return cnn
    known = ", ".join(sorted(PRESETS))
    raise UserError(f"unknown model {name!r}: use mlp:IN-H1-..-OUT, cnn:C1,C2/kKpP/fcF or a "
                    f"preset ({known})")


def build(spec: MLPSpec | CNNSpec | str) -> nn.Module:
    """A freshly initialised torch module for a spec (uses torch's global RNG)."""
    spec = parse_model(spec)
    act = _ACT[spec.activation]
    layers: list[nn.Module] = []
    if isinstance(spec, MLPSpec):
        dims = [spec.input_dim, *spec.hidden]
        for a, b in zip(dims[:-1], dims[1:]):
            layers += [nn.Linear(a, b), act()]
        layers.append(nn.Linear(dims[-1], spec.output_dim))
        if spec.input_dim > 1:
            layers.insert(0, nn.Flatten())
        return nn.Sequential(*layers)
    chans = [spec.in_channels, *spec.channels]
    for a, b in zip(chans[:-1], chans[1:]):
        block = [nn.Conv2d(a, b, spec.kernel, padding=spec.padding), act()]
        if spec.pool > 1:
            # ReLU commutes with max pooling (max(relu(x)) = relu(max(x)), gradients included:
            # both route a window's gradient to its first maximum, or nowhere when it is <= 0),
            # so ReLU goes after the pool, on 1/pool^2 of the elements
            pool = nn.MaxPool2d(spec.pool)
            block = [block[0], pool, block[1]] if spec.activation == "relu" else [*block, pool]
        layers += block
    layers.append(nn.Flatten())
    dims = [chans[-1] * spec.feature_size() ** 2, *spec.fc]
    for a, b in zip(dims[:-1], dims[1:]):
        layers += [nn.Linear(a, b), act()]
        if spec.dropout:
            layers.append(nn.Dropout(spec.dropout))
    layers.append(nn.Linear(dims[-1], spec.n_classes))
    return nn.Sequential(*layers)


def count_params(spec: MLPSpec | CNNSpec | str) -> int:
    """Exact parameter count from the spec alone (closed form, no module built)."""
    spec = parse_model(spec)
    if isinstance(spec, MLPSpec):
        dims = [spec.input_dim, *spec.hidden, spec.output_dim]
        return sum((a + 1) * b for a, b in zip(dims[:-1], dims[1:]))
    chans = [spec.in_channels, *spec.channels]
    conv = sum((a * spec.kernel**2 + 1) * b for a, b in zip(chans[:-1], chans[1:]))
    dims = [chans[-1] * spec.feature_size() ** 2, *spec.fc, spec.n_classes]
    return conv + sum((a + 1) * b for a, b in zip(dims[:-1], dims[1:]))


def module_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def mlp_params(widths: list[int], input_dim: int = 1, output_dim: int = 1) -> int:
    dims = [input_dim, *widths, output_dim]
    return sum((a + 1) * b for a, b in zip(dims[:-1], dims[1:]))


def width_for_params(depth: int, target: int, input_dim: int = 1, output_dim: int = 1) -> list[int]:
    """Hidden widths for `depth` hidden layers whose MLP has about `target` parameters.

    All layers get a width w except the first, whose width w1 fine-tunes the count (a
    uniform width moves the count in steps of ~2w per unit, too coarse for a 1% match at
    small budgets). Among the (w, w1) pairs closest to the budget, the one with w1 nearest
    to w wins, so the family stays as uniform as the budget allows.
    """
    if depth < 1 or target < 1:
        raise UserError(f"width_for_params: depth and target must be >= 1 (got {depth}, {target})")
    if depth == 1:
        w = max(1, round((target - output_dim) / (input_dim + 1 + output_dim)))
        return [w]
    best: tuple[float, int, list[int]] | None = None
    w_max = max(2, int(math.sqrt(target)) + 2)
    for w in range(1, w_max + 1):
        for w1 in range(max(1, w // 3), 3 * w + 1):
            widths = [w1] + [w] * (depth - 1)
            err = abs(mlp_params(widths, input_dim, output_dim) - target)
            cand = (err, abs(w1 - w), widths)
            if best is None or cand[:2] < best[:2]:
                best = cand
    assert best is not None
    return best[2]


def cnn_for_params(fc_layers: int, target: int, channels: tuple[int, ...] = (8, 16),
                   kernel: int = 5, padding: int = 0, pool: int = 2, in_channels: int = 1,
                   input_size: int = 28, n_classes: int = 10, tol: float = 0.01) -> CNNSpec:
    """A CNN with a fixed conv stack and `fc_layers` hidden fully connected layers whose
    widths bring the whole net to about `target` parameters.

    The conv stack's parameters are exact and fixed; the fully connected head is an MLP from
    the flattened features to `n_classes`, sized by `width_for_params` for the remaining
    budget. Varying `fc_layers` at one `target` gives a family of equal size and different
    depth (SCIENCE.md section 1: 2 conv layers plus 1, 2 or 4 fully connected layers).
    A count more than `tol` (relative) from `target` is a UserError: with one hidden layer
    the count moves in steps of (features + 1 + n_classes), too coarse for small budgets.
    """
    if fc_layers < 1:
        raise UserError(f"cnn_for_params: fc_layers must be >= 1 (got {fc_layers})")
    base = CNNSpec(in_channels=in_channels, input_size=input_size, channels=tuple(channels),
                   kernel=kernel, padding=padding, pool=pool, fc=(), n_classes=n_classes)
    flat = channels[-1] * base.feature_size() ** 2
    conv = count_params(base) - (flat + 1) * n_classes
    budget = target - conv
    if budget < mlp_params([1] * fc_layers, flat, n_classes):
        raise UserError(f"cnn_for_params: {target:,} parameters cannot hold the conv stack "
                        f"({conv:,}) and {fc_layers} fully connected layers")
    widths = width_for_params(fc_layers, budget, input_dim=flat, output_dim=n_classes)
    spec = base.model_copy(update={"fc": tuple(widths)})
    got = count_params(spec)
    if abs(got - target) > tol * target:
        raise UserError(f"cnn_for_params: the nearest count to {target:,} with {fc_layers} "
                        f"fully connected layers is {got:,} ({100 * (got / target - 1):+.1f}%, "
                        f"more than {100 * tol:g}% off): choose another target")
    return spec


def describe(spec: MLPSpec | CNNSpec | str) -> dict:
    """One row for a setup table: name, kind, depth, widths, params."""
    spec = parse_model(spec)
    if isinstance(spec, MLPSpec):
        widths = list(spec.hidden)
        return {"model": spec.name, "kind": "mlp", "depth": len(widths),
                "widths": "-".join(map(str, widths)), "params": count_params(spec)}
    return {"model": spec.name, "kind": "cnn", "depth": len(spec.channels) + len(spec.fc),
            "widths": "-".join(map(str, [*spec.channels, *spec.fc])),
            "params": count_params(spec)}


