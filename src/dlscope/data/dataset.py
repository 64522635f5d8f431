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

    @classmethod
    def from_tensors(cls, x_train, y_train, x_test=None, y_test=None, *,
                     n_classes: int | None = None, name: str = "tensors") -> Dataset:
        """A Dataset of one's own tensors, to train with ``dlscope.train.engine.train``.

        Classification when ``y_train`` holds integers (class indices; ``n_classes`` defaults
        to the largest label + 1), regression when it holds floats (``[N]`` becomes
        ``[N, 1]``). Inputs become float32. Without a test set the test tensors are the
        training tensors (the ``source`` says so; or train with ``eval_test=False``).
        """
        from dlscope.errors import UserError

        if (x_test is None) != (y_test is None):
            raise UserError("give both x_test and y_test, or neither")
        pairs = [(x_train, y_train, "train")] + ([(x_test, y_test, "test")]
                                                 if x_test is not None else [])
        out = []
        for x, y, what in pairs:
            x, y = torch.as_tensor(x), torch.as_tensor(y)
            if x.ndim < 1 or x.shape[0] == 0 or y.ndim < 1 or x.shape[0] != y.shape[0]:
                raise UserError(f"x_{what} and y_{what} must hold the same non-empty number "
                                f"of samples, got shapes {tuple(x.shape)} and {tuple(y.shape)}")
            if x.ndim == 1:
                x = x[:, None]
            out.append((x.float(), y))
        classification = not out[0][1].is_floating_point()
        fixed = []
        for x, y in out:
            if classification != (not y.is_floating_point()):
                raise UserError("y_train and y_test must both hold class indices or both floats")
            if classification:
                if y.ndim != 1 or bool((y < 0).any()):
                    raise UserError("class labels must be a 1-D tensor of indices >= 0")
                y = y.long()
            else:
                y = y.float()[:, None] if y.ndim == 1 else y.float()
            fixed.append((x, y))
        if classification:
            top = int(max(int(y.max()) for _, y in fixed)) + 1
            n_classes = top if n_classes is None else int(n_classes)
            if n_classes < top:
                raise UserError(f"n_classes={n_classes} but a label is {top - 1}")
        elif n_classes is not None:
            raise UserError("n_classes is for integer labels; y_train holds floats")
        (xtr, ytr), (xte, yte) = fixed[0], fixed[-1]
        source = "tensors" if len(fixed) == 2 else "tensors (no test set: test = train)"
        return cls(xtr, ytr, xte, yte, name, n_classes, source)

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
