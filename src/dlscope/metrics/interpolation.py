"""Linear interpolation between two trained models (Keskar et al. 2017, Goodfellow et al. 2015).

``interpolate`` evaluates θ(α) = (1 − α)θ_a + αθ_b for each α, without retraining, in eval
mode.  Every parameter *and* every floating-point buffer is interpolated (BatchNorm running
mean/var would otherwise be those of model_a and make θ(α) meaningless); integer buffers
(``num_batches_tracked``) are taken from model_a.  θ(α) is loaded into one deep copy of
model_a, so neither input model is ever modified.

Note on reading the curves: two models from *independent* initializations are generally
separated by a loss barrier near α = 0.5 that says nothing about flatness; say whether the
pair shares its initialization.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn

from dlscope.errors import UserError
from dlscope.metrics.input_sensitivity import eval_mode

__all__ = ["alpha_grid", "evaluate_classifier", "interpolate"]


def alpha_grid(n: int = 31, lo: float = -1.0, hi: float = 2.0) -> np.ndarray:
    """Sorted grid of at least ``n`` points on [lo, hi] that contains exactly 0.0 and 1.0.

    ``np.linspace(lo, hi, n)`` with grid points within 1e-9 of 0 or 1 snapped onto them;
    0.0 and 1.0 (the two models themselves) are added if the grid misses them, even when they
    lie outside [lo, hi].  The default (31 points on [−1, 2]) has step 0.1.

    Args:
        n: the number of points of the linspace, at least 2.
        lo: the lower end.
        hi: the upper end.

    Returns:
        The sorted grid.

    Raises:
        UserError: ``n < 2`` or not ``lo < hi``.

    >>> alpha_grid(4, -0.5, 0.5).round(4).tolist()  # 0 and 1 added
    [-0.5, -0.1667, 0.0, 0.1667, 0.5, 1.0]
    """
    if not isinstance(n, (int, np.integer)) or n < 2:
        raise UserError(f"n must be an integer >= 2, got {n!r}")
    if not (np.isfinite(lo) and np.isfinite(hi) and lo < hi):
        raise UserError(f"need finite lo < hi, got lo={lo!r}, hi={hi!r}")
    grid = np.linspace(float(lo), float(hi), int(n))
    tol = 1e-9 * max(1.0, hi - lo)
    for anchor in (0.0, 1.0):
        grid[np.abs(grid - anchor) <= tol] = anchor
    return np.unique(np.concatenate([grid, [0.0, 1.0]]))


def _structure(model: nn.Module) -> list:
    modules = [(name, type(m)) for name, m in model.named_modules()]
    state = [(k, tuple(v.shape), v.dtype) for k, v in model.state_dict().items()]
    return [modules, state]


def interpolate(
    model_a: nn.Module,
    model_b: nn.Module,
    alphas: Iterable[float],
    evaluate: Callable[[nn.Module], dict],
) -> pd.DataFrame:
    """Evaluate θ(α) = (1 − α)θ_a + αθ_b for each α; one row per α ("alpha" + evaluate's keys).

    ``evaluate(model) -> dict`` is called on a deep copy of model_a holding θ(α), in eval
    mode.  Neither model is modified.

    Args:
        model_a: the model at α = 0.
        model_b: the model at α = 1, of the same architecture.
        alphas: the α values.
        evaluate: ``evaluate(model) -> dict`` of numbers.

    Returns:
        A DataFrame, one row per α: ``alpha`` and ``evaluate``'s keys.

    Raises:
        UserError: models of different architecture (module tree, state-dict keys, shapes or
            dtypes), non-finite alphas, or ``evaluate`` not returning a dict.

    >>> a, b = torch.nn.Linear(1, 1), torch.nn.Linear(1, 1)
    >>> with torch.no_grad():
    ...     _ = a.weight.fill_(1.0), b.weight.fill_(3.0)
    >>> df = interpolate(a, b, [0.0, 0.5, 1.0], lambda m: {"w": m.weight.item()})
    >>> df["w"].tolist()
    [1.0, 2.0, 3.0]
    """
    if _structure(model_a) != _structure(model_b):
        raise UserError("cannot interpolate between models of different architecture")
    alphas = [float(a) for a in np.atleast_1d(np.asarray(alphas, dtype=float))]
    if not all(np.isfinite(alphas)):
        raise UserError(f"alphas must be finite, got {alphas!r}")
    state_a = {k: v.detach().clone() for k, v in model_a.state_dict().items()}
    state_b = {k: v.detach().to(state_a[k].device).clone() for k, v in model_b.state_dict().items()}
    work = copy.deepcopy(model_a)
    rows = []
    for alpha in alphas:
        mixed = {
            k: (1.0 - alpha) * a + alpha * state_b[k] if torch.is_floating_point(a) else a
            for k, a in state_a.items()
        }
        work.load_state_dict(mixed)
        work.eval()
        result = evaluate(work)
        if not isinstance(result, dict):
            raise UserError(f"evaluate must return a dict, got {type(result).__name__}")
        rows.append({"alpha": alpha, **result})
    return pd.DataFrame(rows)


def evaluate_classifier(
    x: torch.Tensor,
    y: torch.Tensor,
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = F.cross_entropy,
    batch_size: int = 4096,
) -> Callable[[nn.Module], dict]:
    """Return ``evaluate(model) -> {"loss": mean loss, "acc": accuracy}`` on the whole (x, y).

    Batches of ``batch_size`` are run under ``torch.no_grad()`` in eval mode (the model's
    flags are restored afterwards); the mean loss is the sum of per-batch mean losses
    weighted by batch size / N, so it equals the full-set mean for a mean-reduced loss_fn.

    Args:
        x: all inputs.
        y: all integer labels.
        loss_fn: ``loss_fn(output, target)``, a batch-mean loss.
        batch_size: samples per forward pass.

    Returns:
        The function ``evaluate(model)``.

    Raises:
        UserError: empty or mismatched ``x``, ``y``, or a bad ``batch_size``.

    >>> m = torch.nn.Linear(1, 2, bias=False)
    >>> with torch.no_grad():
    ...     _ = m.weight.copy_(torch.tensor([[1.0], [-1.0]]))
    >>> evaluate_classifier(torch.tensor([[1.0], [-1.0]]), torch.tensor([0, 0]))(m)["acc"]
    0.5
    """
    if x.shape[0] != y.shape[0] or x.shape[0] == 0:
        raise UserError(f"x and y must be non-empty and equally long: {x.shape[0]}, {y.shape[0]}")
    if not isinstance(batch_size, int) or batch_size < 1:
        raise UserError(f"batch_size must be a positive integer, got {batch_size!r}")
    n = x.shape[0]

    def evaluate(model: nn.Module) -> dict:
        total, correct = 0.0, 0
        with torch.no_grad(), eval_mode(model):
            for xb, yb in zip(x.split(batch_size), y.split(batch_size)):
                out = model(xb)
                total += float(loss_fn(out, yb)) * xb.shape[0]
                correct += int((out.argmax(dim=1) == yb).sum())
        return {"loss": total / n, "acc": correct / n}

    return evaluate
