"""Loss, accuracy and gradient norm of one model: what the training loop records."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn


def loss_function(classification: bool) -> Callable:
    return F.cross_entropy if classification else F.mse_loss


@torch.inference_mode()
def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor, classification: bool,
             batch_size: int = 8192) -> tuple[float, float | None]:
    """Mean loss and accuracy (None for regression) over the whole set, in eval mode."""
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
    """L2 norm of the full parameter gradient (all layers as one vector), as a tensor."""
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    return torch.linalg.vector_norm(torch.stack(torch._foreach_norm(grads)))
