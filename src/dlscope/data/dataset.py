"""The in-memory dataset every experiment trains on: four tensors and a little metadata."""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch


@dataclass
class Dataset:
    """Train/test tensors.

    Classification: ``x`` float32, ``y`` int64 class indices, ``n_classes`` set.
    Regression: ``x`` and ``y`` float32 ``[N, 1]``, ``n_classes`` None.
    """

    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    name: str
    n_classes: int | None
    source: str

    def to(self, device: str | torch.device) -> Dataset:
        """A new Dataset with all four tensors on ``device``."""
        return replace(
            self,
            x_train=self.x_train.to(device),
            y_train=self.y_train.to(device),
            x_test=self.x_test.to(device),
            y_test=self.y_test.to(device),
        )

    @property
    def input_shape(self) -> tuple[int, ...]:
        """Shape of one input example, e.g. ``(1, 28, 28)``, ``(784,)`` or ``(1,)``."""
        return tuple(self.x_train.shape[1:])

    @property
    def n_train(self) -> int:
        return int(self.x_train.shape[0])

    @property
    def n_test(self) -> int:
        return int(self.x_test.shape[0])

    def __repr__(self) -> str:
        return (
            f"Dataset({self.name!r}, train={tuple(self.x_train.shape)}, "
            f"test={tuple(self.x_test.shape)}, n_classes={self.n_classes}, "
            f"device={self.x_train.device}, source={self.source!r})"
        )
