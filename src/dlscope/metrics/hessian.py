"""Exact and iterative Hessians of a full-batch loss, and the minimal ratio (SCIENCE.md §2).

Everything here differentiates ``θ ↦ loss_fn(model(x; θ), y)`` where θ is a float64 (by
default) *copy* of ALL the model's parameters flattened into one vector, evaluated through
``torch.func.functional_call``: the Hessian is the full P×P matrix, cross-layer blocks
included, of the loss on the whole batch ``x, y``. The model passed in is never modified.

- :func:`flatten_params`, :func:`param_shapes`: the flat-vector view of a model.
- :func:`full_hessian`, :func:`hessian_eigenvalues`: exact dense Hessian (P up to a few
  thousand) and its spectrum from a symmetric solver.
- :func:`hvp_operator`, :func:`extreme_eigenvalues`: Hessian-vector products as a SciPy
  ``LinearOperator`` and the k largest / smallest eigenvalues by Lanczos (``eigsh``), over
  a pair of tensors or any iterable of ``(x, y)`` batches (``metrics/batches.py``).
- Trace and spectral density: ``metrics/trace.py`` (Hutchinson), ``metrics/density.py`` (SLQ).
- :func:`minimal_ratio`: fractions of positive, negative and near-zero eigenvalues.

The model is evaluated in its current mode (``train()``/``eval()``): put it in ``eval()``
first if it has dropout or batch norm, or the "Hessian" is that of a random function.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import torch
from scipy.sparse.linalg import LinearOperator
from torch import nn
from torch.func import functional_call, jacrev, jvp, vmap

from dlscope.errors import UserError

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def param_shapes(model: nn.Module) -> list[tuple[str, torch.Size]]:
    """``[(name, shape), ...]`` of the model's parameters, in the order of the flat vector."""
    return [(name, p.shape) for name, p in model.named_parameters()]


def flatten_params(model: nn.Module) -> torch.Tensor:
    """A detached copy of all parameters concatenated in ``named_parameters()`` order."""
    parts = [p.detach().reshape(-1) for _, p in model.named_parameters()]
    if not parts:
        raise UserError("the model has no parameters")
    return torch.cat(parts).clone()


def unflatten_params(theta: torch.Tensor, shapes) -> dict[str, torch.Tensor]:
    """Split a flat vector back into ``{name: tensor}`` (views of ``theta``) for functional_call."""
    total = sum(math.prod(shape) for _, shape in shapes)
    if theta.shape[-1] != total:
        raise UserError(f"flat vector has {theta.shape[-1]} entries, the model has {total}")
    out, i = {}, 0
    for name, shape in shapes:
        n = math.prod(shape)
        out[name] = theta[i : i + n].reshape(shape)
        i += n
    return out


def _cast(t, dtype):
    return t.to(dtype) if torch.is_tensor(t) and t.is_floating_point() else t


def flat_loss(model: nn.Module, loss_fn: LossFn, x, y, dtype=torch.float64):
    """``(f, theta, x, y)``: ``f(theta, x, y)`` is the loss as a function of a flat vector.

    ``theta`` is a ``dtype`` copy of the parameters; floating ``x``/``y`` and the buffers are
    cast to ``dtype`` (copies, so batch-norm statistics of the model are never touched).
    """
    if not isinstance(model, nn.Module):
        raise UserError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if not (torch.is_tensor(x) and torch.is_tensor(y)):
        raise UserError("x and y must be tensors holding the full batch")
    if x.shape[0] != y.shape[0] or x.shape[0] == 0:
        raise UserError(f"x and y must hold the same non-empty batch: {x.shape[0]} vs {y.shape[0]}")
    if not dtype.is_floating_point:
        raise UserError(f"dtype must be a floating dtype, got {dtype}")
    shapes = param_shapes(model)
    theta = flatten_params(model).to(dtype)
    buffers = {n: _cast(b.detach(), dtype).clone() for n, b in model.named_buffers()}

    def f(th: torch.Tensor, xb: torch.Tensor, yb: torch.Tensor) -> torch.Tensor:
        out = functional_call(model, {**unflatten_params(th, shapes), **buffers}, (xb,))
        return loss_fn(out, yb)

    return f, theta, _cast(x, dtype), _cast(y, dtype)


def _grad(f):
    # ``jacrev`` of the scalar loss is its gradient. Not ``torch.func.grad``: forward-mode
    # through it fails ("ZeroTensors are immutable") for ``mse_loss`` in torch 2.13.
    return jacrev(f)


def full_hessian(model: nn.Module, loss_fn: LossFn, x, y, dtype=torch.float64,
                 chunk: int | None = None) -> torch.Tensor:
    """Exact ``P×P`` Hessian of the full-batch loss w.r.t. all parameters (flattened).

    Forward-over-reverse: the Jacobian (``jvp``) of ``grad(loss)`` applied to the identity
    columns, batched with ``vmap``, ``chunk`` columns at a time. ``None`` picks
    ``clamp(131072 // n, 8, P)``: batches that stay in cache, measured 2.4x faster than all
    P columns at once for a 1,021-parameter MLP on 1,000 points (and memory stays bounded,
    ~chunk·n·width values per activation). The result is symmetrized, ``(H + Hᵀ)/2``, which only
    removes round-off. Row/column order is that of :func:`flatten_params`.
    """
    if chunk is not None and (not isinstance(chunk, int) or chunk < 1):
        raise UserError(f"chunk must be a positive integer or None, got {chunk!r}")
    return hessian_of(*flat_loss(model, loss_fn, x, y, dtype), chunk=chunk)


def hessian_of(f, theta: torch.Tensor, x, y, chunk: int | None = None) -> torch.Tensor:
    """Symmetrized Hessian at ``theta`` of ``f(theta, x, y)`` (as from :func:`flat_loss`)."""
    p = theta.numel()
    chunk = min(p, max(8, 131072 // x.shape[0])) if chunk is None else chunk
    g = _grad(f)

    def column(v: torch.Tensor) -> torch.Tensor:
        return jvp(lambda t: g(t, x, y), (theta,), (v,))[1]

    eye = torch.eye(p, dtype=theta.dtype, device=theta.device)
    h = vmap(column, chunk_size=chunk)(eye)
    return (h + h.T) / 2


def hessian_eigenvalues(model: nn.Module, loss_fn: LossFn, x, y) -> np.ndarray:
    """All eigenvalues (ascending, float64) of :func:`full_hessian`, by ``eigvalsh``."""
    return torch.linalg.eigvalsh(full_hessian(model, loss_fn, x, y)).cpu().numpy()


def _data(x, y):
    return x if y is None else (x, y)


def hvp_operator(model: nn.Module, loss_fn: LossFn, x, y=None, dtype=torch.float64,
                 batch_size: int | None = None) -> LinearOperator:
    """The full-data Hessian as a symmetric ``LinearOperator`` (``v ↦ H v``).

    ``hvp_operator(model, loss_fn, x, y)`` or ``hvp_operator(model, loss_fn, data)`` with
    ``data`` a pair of tensors or an iterable of ``(x, y)`` batches (a DataLoader), see
    ``metrics/batches.py``. Double backprop in ``torch.func`` form (``metrics/operators.py``):
    ``vjp`` of the gradient function, whose pullback is ``v ↦ vᵀH = Hv``. With one batch in
    memory and no ``batch_size`` the forward and first backward pass are done once and every
    product reuses them (measured ~2-3x faster than ``jvp(grad)`` per product on a ReLU
    MLP). Otherwise each product passes over the chunks (or batches) and sums the chunk HVPs
    with weights ``len(chunk)/n``: equal to the full-data HVP when ``loss_fn`` is a mean over
    the batch (the convention here), memory bounded by a chunk. The products run on the
    model's device.
    """
    from dlscope.metrics.operators import HessianOperator

    return HessianOperator(model, loss_fn, _data(x, y), dtype, batch_size).linear_operator()


def extreme_eigenvalues(model: nn.Module, loss_fn: LossFn, x, y=None, k: int = 10,
                        dtype=torch.float64, tol: float = 1e-8,
                        batch_size: int | None = None, which: str = "both",
                        return_vectors: bool = False):
    """``(top, bottom)``: the k largest and k smallest Hessian eigenvalues, each ascending.

    ``data`` as for :func:`hvp_operator` (``x, y`` or one ``data`` argument). ``which``:
    ``"both"``, ``"top"`` or ``"bottom"`` (the part not asked for is ``None``; the bottom
    costs many more products than the top on a trained net). With ``return_vectors=True``
    the result is an :class:`~dlscope.metrics.spectrum.EigenResult` instead, holding the
    unit eigenvectors (columns, flat-parameter order), the residuals ``‖Hv − λv‖`` (one
    extra HVP per pair), the HVPs used and the wall time.

    Lanczos (``scipy.sparse.linalg.eigsh``, Krylov dimension ``max(2k+1, 40)``) on
    :func:`hvp_operator`. The top ones come from ``which='LA'``. For the bottom ones we run
    ``'LA'`` on the shifted operator ``s·I − H`` with ``s = λmax`` (eigenvalues ``s − λ ≥ 0``,
    the largest ones are ``s − λmin``, ...) and map back ``λ = s − μ``; ARPACK's stopping test
    ``‖r‖ ≤ tol·|θ|`` then bounds residuals by ``tol·λmax`` instead of by ``tol·|λ|`` for Ritz
    values near 0, where a trained net's smallest eigenvalues cluster. Measured on a trained
    5,829-parameter MLP: 3,236 HVPs vs 3,724 for ``which='SA'`` (8,716 vs 13,284 with
    ARPACK's default Krylov dimension 21), same eigenvalues to 1e-15. ``tol`` is floored at
    100·eps of ``dtype`` (float32 HVPs: ~2x faster, eigenvalues to ~1e-6 relative). If
    ``2k+1 ≥ P`` the dense spectrum is used instead. Install ``threadpoolctl`` (or set
    ``OPENBLAS_NUM_THREADS=1``): SciPy's BLAS threads otherwise slow torch's HVPs 2-3x.
    """
    from dlscope.metrics.spectrum import eigenpairs

    if not isinstance(k, int) or k < 1:
        raise UserError(f"k must be a positive integer, got {k!r}")
    if which not in ("both", "top", "bottom"):
        raise UserError(f"which must be 'both', 'top' or 'bottom', got {which!r}")
    res = eigenpairs(model, loss_fn, _data(x, y), k=k, dtype=dtype, tol=tol,
                     batch_size=batch_size, which=which, vectors=return_vectors)
    return res if return_vectors else (res.top, res.bottom)


def minimal_ratio(eigenvalues, rel_tol: float = 1e-6) -> dict:
    """Fractions of positive / negative / near-zero eigenvalues, with a relative tolerance.

    ``tol = rel_tol·max|λ|``; ``minimal_ratio = #(λ > tol)/n``, ``frac_negative =
    #(λ < −tol)/n``, ``frac_zero = #(|λ| ≤ tol)/n`` (they sum to 1). Also returns ``tol``,
    ``n``, ``lambda_min`` and ``lambda_max``.
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
