"""The built-in specs (MLP, CNN): their short names, modules and closed-form counts."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from dlscope.errors import UserError

Activation = Literal["relu", "tanh", "sigmoid", "gelu"]
ACTIVATIONS = {"relu": nn.ReLU, "tanh": nn.Tanh, "sigmoid": nn.Sigmoid, "gelu": nn.GELU}


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
        """`cnn:C1,C2/kKpP/fcF`, then only what differs from the defaults (MNIST's 1x28
        input and 10 classes, pool 2, no dropout, ReLU), so that parse_model(name) == self."""
        ch = ",".join(map(str, self.channels))
        fc = ",".join(map(str, self.fc))
        text = f"cnn:{ch}/k{self.kernel}p{self.padding}/fc{fc}"
        if self.pool != 2:
            text += f"/pool{self.pool}"
        if self.dropout:
            text += f"/drop{self.dropout:g}"
        if self.in_channels != 1:
            text += f"/in{self.in_channels}x{self.input_size}"
        elif self.input_size != 28:
            text += f"/in{self.input_size}"
        if self.n_classes != 10:
            text += f"/out{self.n_classes}"
        return text + ("" if self.activation == "relu" else f":{self.activation}")

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


def _activation(act: str, name: str) -> Activation:
    if act and act not in ACTIVATIONS:
        raise UserError(f"model {name!r}: unknown activation {act!r} "
                        f"(one of {sorted(ACTIVATIONS)})")
    return act or "relu"  # type: ignore[return-value]


def parse_builtin(name: str) -> MLPSpec | CNNSpec:
    """The MLP or CNN spec of a short name or preset (UserError when it is neither)."""
    text = PRESETS.get(name.strip(), name.strip())
    kind, _, rest = text.partition(":")
    if kind == "mlp":
        dims_text, _, act = rest.partition(":")
        dims = _ints(dims_text, name)
        if len(dims) < 2:
            raise UserError(f"model {name!r}: an MLP needs at least input and output sizes")
        return MLPSpec(input_dim=dims[0], hidden=tuple(dims[1:-1]), output_dim=dims[-1],
                       activation=_activation(act, name))
    if kind == "cnn":
        body, _, act = rest.partition(":")
        parts = body.split("/")
        spec: dict = {"channels": tuple(_ints(parts[0], name)),
                      "activation": _activation(act, name)}
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
            elif part.startswith("in"):  # in28 (size) or in3x32 (channels x size)
                c, _, s = part[2:].rpartition("x")
                spec["input_size"] = _int(s, name)
                if c:
                    spec["in_channels"] = _int(c, name)
            elif part.startswith("out"):
                spec["n_classes"] = _int(part[3:], name)
            else:
                raise UserError(f"model {name!r}: cannot read {part!r}")
        cnn = CNNSpec(**spec)
        cnn.feature_size()
        return cnn
    known = ", ".join(sorted(PRESETS))
    raise UserError(f"unknown model {name!r}: use mlp:IN-H1-..-OUT, cnn:C1,C2/kKpP/fcF, "
                    f"py:module:function or a preset ({known})")


def build_builtin(spec: MLPSpec | CNNSpec) -> nn.Module:
    """A freshly initialised torch module for a built-in spec (uses torch's global RNG)."""
    act = ACTIVATIONS[spec.activation]
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


def count_builtin(spec: MLPSpec | CNNSpec) -> int:
    """Exact parameter count of a built-in spec (closed form, no module built)."""
    if isinstance(spec, MLPSpec):
        dims = [spec.input_dim, *spec.hidden, spec.output_dim]
        return sum((a + 1) * b for a, b in zip(dims[:-1], dims[1:]))
    chans = [spec.in_channels, *spec.channels]
    conv = sum((a * spec.kernel**2 + 1) * b for a, b in zip(chans[:-1], chans[1:]))
    dims = [chans[-1] * spec.feature_size() ** 2, *spec.fc, spec.n_classes]
    return conv + sum((a + 1) * b for a, b in zip(dims[:-1], dims[1:]))
