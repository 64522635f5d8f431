"""Loss, accuracy and gradient norm of one model: what the training loop records."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

# Rows per forward pass when evaluating a CNN on the CPU: mnist-models' 25k-parameter CNN
# evaluated 10,000 images in 0.30 s at 100-1,000 rows and 0.41 s at `evaluate`'s default
# 8,192 (whose activations leave the caches), one thread, 2026-12-05; the per-image logits
# are bit for bit the same at every batch size (docs/PERFORMANCE.md).
CNN_EVAL_BATCH = 500


def loss_function(classification: bool) -> Callable:
    """The training loss of a task: cross-entropy for classification, else MSE.

    Args:
        classification: whether the targets are class indices.

    Returns:
        `F.cross_entropy` or `F.mse_loss`.

    Example:
        >>> loss_function(True) is F.cross_entropy, loss_function(False) is F.mse_loss
        (True, True)
    """
    return F.cross_entropy if classification else F.mse_loss


@torch.inference_mode()
def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor, classification: bool,
             batch_size: int = 8192) -> tuple[float, float | None]:
    """Mean loss and accuracy over the whole set, in eval mode (the model's mode is restored).

    Args:
        model: the model to evaluate.
        x: the inputs.
        y: the targets (class indices for classification).
        classification: cross-entropy and accuracy, or MSE averaged over every output.
        batch_size: rows per forward pass (the sums accumulate in float64).

    Returns:
        (mean loss, accuracy); the accuracy is None for regression.

    Example:
        >>> model = nn.Linear(2, 2)
        >>> with torch.no_grad():  # always logits (1, 0): class 0
        ...     _ = model.weight.zero_(), model.bias.copy_(torch.tensor([1.0, 0.0]))
        >>> loss, acc = evaluate(model, torch.zeros(4, 2), torch.tensor([0, 0, 1, 1]), True)
        >>> round(loss, 4), acc  # the mean of log(1 + 1/e) and log(1 + e)
        (0.8133, 0.5)
    """
    was_training = model.training
    model.eval()
    loss_fn = loss_function(classification)
    total = torch.zeros((), dtype=torch.float64, device=x.device)
    correct = torch.zeros((), dtype=torch.int64, device=x.device)
    for i in range(0, len(x), batch_size):
        out = model(x[i:i + batch_size])
        yb = y[i:i + batch_size]
        total += loss_fn(out, yb, reduction="sum").double()
        if classification:
            correct += (out.argmax(1) == yb).sum()
    model.train(was_training)
    n = len(x)
    loss = float(total) / (n * (1 if classification else y[0].numel()))
    return loss, (float(correct) / n if classification else None)


def grad_norm(model: nn.Module) -> torch.Tensor:
    """L2 norm of the full parameter gradient (all layers as one vector), as a tensor.

    Args:
        model: a model whose parameters hold `.grad` (parameters without one are skipped).

    Returns:
        A 0-dim tensor.

    Example:
        >>> m = nn.Linear(1, 1)
        >>> m.weight.grad, m.bias.grad = torch.full((1, 1), 3.0), torch.tensor([4.0])
        >>> grad_norm(m)
        tensor(5.)
    """
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    return torch.linalg.vector_norm(torch.stack(torch._foreach_norm(grads)))
