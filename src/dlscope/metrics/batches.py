"""Data for the curvature and loss metrics: a pair of tensors or any iterable of batches.

``data`` is one of

- a pair ``(x, y)`` of tensors holding the whole data set (``batch_size`` may cut it into
  chunks so that memory stays bounded by a chunk);
- a dlscope :class:`~dlscope.data.Dataset` (its training tensors);
- any *re-iterable* of ``(x, y)`` batches, e.g. a ``torch.utils.data.DataLoader`` or a list;
  the metrics pass over it several times, so a one-shot iterator (a generator) is refused.

The full-data loss is the mean over all samples: with ``loss_fn`` a mean over its batch, the
batch losses (and their gradients, Hessian-vector products) are summed with weights
``len(batch) / N``. Batches are moved to ``device`` (the model's) one at a time.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import torch
from torch import nn

from dlscope.errors import UserError

__all__ = ["as_batches", "full_loss", "iter_batches", "model_device", "n_samples"]


def _is_pair(data) -> bool:
    return (isinstance(data, (tuple, list)) and len(data) == 2
            and all(torch.is_tensor(t) for t in data))


def as_batches(data, batch_size: int | None = None):
    """``data`` as a re-iterable of ``(x, y)`` batches (see the module docstring).

    Args:
        data: a pair of tensors, a dlscope Dataset or a re-iterable of batches.
        batch_size: cut a pair of tensors into chunks of this size (None: one batch).

    Returns:
        A list of ``(x, y)`` chunks for a pair or a Dataset, else ``data`` itself.

    Raises:
        UserError: a bad ``batch_size``, mismatched or empty tensors, a one-shot iterator or
            anything else.

    >>> [tuple(t.tolist() for t in b) for b in as_batches((torch.arange(3), torch.arange(3)), 2)]
    [([0, 1], [0, 1]), ([2], [2])]
    """
    if batch_size is not None and (not isinstance(batch_size, int) or batch_size < 1):
        raise UserError(f"batch_size must be a positive integer or None, got {batch_size!r}")
    if hasattr(data, "x_train") and hasattr(data, "y_train"):
        data = (data.x_train, data.y_train)
    if _is_pair(data):
        x, y = data
        if x.shape[0] != y.shape[0] or x.shape[0] == 0:
            raise UserError(f"x and y must hold the same non-empty batch: "
                            f"{x.shape[0]} vs {y.shape[0]}")
        n = x.shape[0]
        if batch_size is None or batch_size >= n:
            return [(x, y)]
        return [(x[i : i + batch_size], y[i : i + batch_size]) for i in range(0, n, batch_size)]
    if torch.is_tensor(data) or not isinstance(data, Iterable):
        raise UserError("data must be a pair (x, y) of tensors, a dlscope Dataset or an "
                        f"iterable of (x, y) batches (a DataLoader), got {type(data).__name__}")
    if iter(data) is data:
        raise UserError("data is a one-shot iterator (a generator?): the metrics pass over the "
                        "data several times; give a DataLoader, a list of batches or (x, y)")
    return data


def iter_batches(data, device=None, batch_size: int | None = None
                 ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Yield the ``(x, y)`` batches of ``data`` on ``device``, checking each.

    Args:
        data: as for :func:`as_batches`.
        device: where to move each batch (None: where they are).
        batch_size: as for :func:`as_batches`.

    Returns:
        An iterator of ``(x, y)`` tensor pairs.

    Raises:
        UserError: a batch that is not a non-empty ``(x, y)`` pair, or no batches at all.

    >>> [len(x) for x, _ in iter_batches([(torch.ones(2, 1), torch.ones(2))] * 3)]
    [2, 2, 2]
    """
    empty = True
    for i, item in enumerate(as_batches(data, batch_size)):
        if not (isinstance(item, (tuple, list)) and len(item) >= 2
                and torch.is_tensor(item[0]) and torch.is_tensor(item[1])):
            raise UserError(f"batch {i} of data is not an (x, y) pair of tensors")
        x, y = item[0], item[1]
        if x.shape[0] != y.shape[0] or x.shape[0] == 0:
            raise UserError(f"batch {i}: x and y must hold the same non-empty batch: "
                            f"{x.shape[0]} vs {y.shape[0]}")
        empty = False
        if device is not None:
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        yield x, y
    if empty:
        raise UserError("data holds no batches")


def model_device(model: nn.Module) -> torch.device:
    """The device of the model's first parameter.

    Args:
        model: the network.

    Returns:
        The device (CPU for a model without parameters).

    >>> model_device(torch.nn.ReLU())
    device(type='cpu')
    """
    for p in model.parameters():
        return p.device
    return torch.device("cpu")


def n_samples(data, batch_size: int | None = None) -> int:
    """The number of samples in ``data`` (one pass when it is an iterable of batches).

    Args:
        data: as for :func:`as_batches`.
        batch_size: as for :func:`as_batches`.

    Returns:
        The total of the batches' lengths.

    >>> n_samples([(torch.ones(2, 1), torch.ones(2)), (torch.ones(3, 1), torch.ones(3))])
    5
    """
    return sum(int(x.shape[0]) for x, _ in iter_batches(data, batch_size=batch_size))


@torch.no_grad()
def full_loss(model: nn.Module, loss_fn, data, batch_size: int | None = None) -> float:
    """The mean of ``loss_fn`` over all samples of ``data``, in the model's current mode.

    Each batch is moved to the model's device; batch losses are weighted by their sizes.

    Args:
        model: the network.
        loss_fn: a mean over its batch (``F.cross_entropy``, ``F.mse_loss``).
        data: as for :func:`as_batches`.
        batch_size: as for :func:`as_batches`.

    Returns:
        The mean loss over all samples, a float.

    The mean of ``(w·x)²`` with ``w = 0`` and ``y = 1, 2, 3`` is ``(1 + 4 + 9)/3``:

    >>> m = torch.nn.Linear(1, 1, bias=False)
    >>> with torch.no_grad():
    ...     _ = m.weight.zero_()
    >>> data = (torch.ones(3, 1), torch.tensor([[1.0], [2.0], [3.0]]))
    >>> round(full_loss(m, torch.nn.functional.mse_loss, data, batch_size=2), 12)
    4.666666666667
    """
    device = model_device(model)
    total, n = 0.0, 0
    for x, y in iter_batches(data, device, batch_size):
        b = int(x.shape[0])
        total += float(loss_fn(model(x), y)) * b
        n += b
    return total / n
