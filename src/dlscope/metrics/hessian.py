"""Exact and iterative Hessians of a full-batch loss, and the minimal ratio (SCIENCE.md §2).

Everything here differentiates ``θ ↦ loss_fn(model(x; θ), y)`` where θ is a float64 (by
default) *copy* of ALL the model's parameters flattened into one vector, evaluated through
``torch.func.functional_call``: the Hessian is the full P×P matrix, cross-layer blocks
included, of the loss on the whole batch ``x, y``. The model passed in is never modified.

- :func:`flatten_params`, :func:`param_shapes`: the flat-vector view of a model (these
  primitives live in ``metrics/flat.py`` and are re-exported here).
- :func:`full_hessian`, :func:`hessian_eigenvalues`: exact dense Hessian (P up to a few
  thousand) and its spectrum from a symmetric solver.
- :func:`hvp_operator`: Hessian-vector products as a SciPy ``LinearOperator``, over a pair
  of tensors or any iterable of ``(x, y)`` batches (``metrics/batches.py``);
  :func:`extreme_eigenvalues` (``metrics/spectrum.py``, re-exported): the k largest /
  smallest eigenvalues by Lanczos.
- Trace and spectral density: ``metrics/trace.py`` (Hutchinson), ``metrics/density.py`` (SLQ).
- :func:`minimal_ratio`: fractions of positive, negative and near-zero eigenvalues.

The model is evaluated in its current mode (``train()``/``eval()``): put it in ``eval()``
first if it has dropout or batch norm, or the "Hessian" is that of a random function.
"""

from __future__ import annotations

import numpy as np
import torch
from scipy.sparse.linalg import LinearOperator
from torch import nn

from dlscope.errors import UserError
from dlscope.metrics.flat import (
    LossFn,
    cast,
    flat_loss,
    flatten_params,
    grad_fn,
    hessian_of,
    param_shapes,
    unflatten_params,
)
from dlscope.metrics.operators import HessianOperator
from dlscope.metrics.spectrum import EigenResult, extreme_eigenvalues

# the primitives live in metrics/flat.py; re-exported so ``hessian.flatten_params`` etc. work
__all__ = ["EigenResult", "LossFn", "cast", "extreme_eigenvalues", "flat_loss",
           "flatten_params", "full_hessian", "grad_fn", "hessian_eigenvalues", "hessian_of",
           "hvp_operator", "minimal_ratio", "param_shapes", "unflatten_params"]


def full_hessian(model: nn.Module, loss_fn: LossFn, x, y, dtype=torch.float64,
                 chunk: int | None = None) -> torch.Tensor:
    """Exact ``P×P`` Hessian of the full-batch loss w.r.t. all parameters (flattened).

    Forward-over-reverse (:func:`~dlscope.metrics.flat.hessian_of`), ``chunk`` identity
    columns per ``vmap`` batch (``None``: ``clamp(131072 // n, 8, P)``, batches that stay in
    cache, memory bounded). The result is symmetrized, ``(H + Hᵀ)/2``, which only removes
    round-off.

    Args:
        model: the network (evaluated in its current mode, never modified).
        loss_fn: ``loss_fn(output, target)``, the batch-mean loss.
        x: all inputs.
        y: all targets.
        dtype: the floating dtype of the computation.
        chunk: Hessian columns per batch, or ``None``.

    Returns:
        The Hessian, rows and columns in :func:`flatten_params` order.

    Raises:
        UserError: a bad ``chunk`` (or model, batch, dtype).

    The loss ``mean((w·x − y)²)`` has Hessian ``2·mean(x²)``:

    >>> m = torch.nn.Linear(1, 1, bias=False)
    >>> x = torch.tensor([[1.0], [2.0]])
    >>> full_hessian(m, torch.nn.functional.mse_loss, x, torch.zeros(2, 1))
    tensor([[5.]], dtype=torch.float64)
    """
    if chunk is not None and (not isinstance(chunk, int) or chunk < 1):
        raise UserError(f"chunk must be a positive integer or None, got {chunk!r}")
    return hessian_of(*flat_loss(model, loss_fn, x, y, dtype), chunk=chunk)


def hessian_eigenvalues(model: nn.Module, loss_fn: LossFn, x, y) -> np.ndarray:
    """All eigenvalues of :func:`full_hessian` (float64), by ``eigvalsh``.

    Args:
        model: the network.
        loss_fn: the batch-mean loss.
        x: all inputs.
        y: all targets.

    Returns:
        The P eigenvalues, ascending, as a numpy array.

    A linear model ``w·x + b`` under the mean squared error has Hessian
    ``2·[[mean x², mean x], [mean x, 1]]``, here ``[[8, 0], [0, 2]]``:

    >>> m = torch.nn.Linear(1, 1)
    >>> x = torch.tensor([[-2.0], [2.0]])
    >>> hessian_eigenvalues(m, torch.nn.functional.mse_loss, x, torch.zeros(2, 1))
    array([2., 8.])
    """
    return torch.linalg.eigvalsh(full_hessian(model, loss_fn, x, y)).cpu().numpy()


def hvp_operator(model: nn.Module, loss_fn: LossFn, x, y=None, dtype=torch.float64,
                 batch_size: int | None = None) -> LinearOperator:
    """The full-data Hessian as a symmetric SciPy ``LinearOperator`` (``v ↦ H v``).

    ``hvp_operator(model, loss_fn, x, y)`` or ``hvp_operator(model, loss_fn, data)``; the
    products are those of :class:`~dlscope.metrics.operators.HessianOperator` (double
    backprop; one batch in memory reuses its forward and first backward pass), run on the
    model's device.

    Args:
        model: the network.
        loss_fn: the batch-mean loss.
        x: all inputs, or ``data`` (a pair of tensors or an iterable of ``(x, y)`` batches,
            ``metrics/batches.py``) when ``y`` is ``None``.
        y: all targets, or ``None``.
        dtype: the dtype of the products (float32 or float64).
        batch_size: chunk a pair of tensors into batches of this size (memory bound).

    Returns:
        A ``LinearOperator`` of shape ``(P, P)`` on numpy vectors.

    >>> m = torch.nn.Linear(1, 1)
    >>> x = torch.tensor([[-2.0], [2.0]])
    >>> hvp_operator(m, torch.nn.functional.mse_loss, x, torch.zeros(2, 1)).matvec([1.0, 1.0])
    array([8., 2.])
    """
    data = x if y is None else (x, y)
    return HessianOperator(model, loss_fn, data, dtype, batch_size).linear_operator()


def minimal_ratio(eigenvalues, rel_tol: float = 1e-6) -> dict:
    """Fractions of positive / negative / near-zero eigenvalues, with a relative tolerance.

    ``tol = rel_tol·max|λ|``; ``minimal_ratio = #(λ > tol)/n``, ``frac_negative =
    #(λ < −tol)/n``, ``frac_zero = #(|λ| ≤ tol)/n`` (they sum to 1).

    Args:
        eigenvalues: a 1-D array or tensor of finite eigenvalues.
        rel_tol: the tolerance relative to ``max|λ|``.

    Returns:
        ``{minimal_ratio, frac_negative, frac_zero, tol, n, lambda_min, lambda_max}``.

    Raises:
        UserError: empty, non-finite or not 1-D eigenvalues, or a bad ``rel_tol``.

    >>> r = minimal_ratio([-1.0, 0.0, 2.0, 4.0])
    >>> r["minimal_ratio"], r["frac_negative"], r["frac_zero"], r["tol"]
    (0.5, 0.25, 0.25, 4e-06)
    """
    ev = np.asarray(eigenvalues.detach().cpu() if torch.is_tensor(eigenvalues) else eigenvalues,
                    dtype=np.float64)
    if ev.ndim != 1 or ev.size == 0:
        raise UserError(f"eigenvalues must be a non-empty 1-D array, got shape {ev.shape}")
    if not np.all(np.isfinite(ev)):
        raise UserError("eigenvalues contain NaN or infinity")
    if not (np.isfinite(rel_tol) and rel_tol >= 0):
        raise UserError(f"rel_tol must be a finite number >= 0, got {rel_tol!r}")
    n = ev.size
    tol = float(rel_tol * np.max(np.abs(ev)))
    pos, neg = int(np.sum(ev > tol)), int(np.sum(ev < -tol))
    return {"minimal_ratio": pos / n, "frac_negative": neg / n, "frac_zero": (n - pos - neg) / n,
            "tol": tol, "n": n, "lambda_min": float(ev.min()), "lambda_max": float(ev.max())}
