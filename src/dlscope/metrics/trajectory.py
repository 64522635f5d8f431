"""Weight trajectories: PCA of parameter snapshots and the loss on a 2-D plane of weights.

- :func:`pca` reduces snapshot vectors ``X [n, P]`` to ``k`` dimensions by the SVD of the
  centred matrix. With n ≪ P (8 runs × 9 snapshots of a 109k-parameter MLP) it uses the
  n×n Gram matrix (float64): its eigenvectors are the left singular vectors, and the right
  ones follow as ``Vᵀ = Σ⁻¹ Uᵀ Xc``. Otherwise it takes the economy SVD. The sign of each
  component is fixed (its largest-magnitude entry is positive) so results are reproducible.
- :func:`loss_plane` evaluates ``L(center + α·d1 + β·d2)`` on a grid (Li et al. 2018,
  arXiv:1712.09913), batching grid points with ``torch.func.functional_call`` under
  ``vmap`` and ``inference_mode``, in eval mode.
- :func:`variance_shares`: every component's share of a trajectory's variance (centred PCA),
  also for a trajectory of rank below 2 (a straight line).
- :func:`plane_axis` gives a grid axis that contains 0 exactly (the centre itself).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch
from torch import nn
from torch.func import functional_call, vmap

from dlscope.errors import UserError
from dlscope.metrics.flat import flatten_params

__all__ = ["loss_plane", "pca", "plane_axis", "variance_shares"]


def pca(X, k: int = 2) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """PCA of the rows of ``X [n, P]``.

    Returns ``(projection [n, k], components [k, P], explained_variance_ratio [k], mean [P])``
    with ``projection = (X - mean) @ components.T``; components are orthonormal (each
    one's largest-magnitude entry positive), ratios are fractions of the total variance (all
    components), computed in float64.

    Args:
        X: the rows, ``[n, P]`` with n ≥ 2, finite.
        k: the number of components, ``1 ≤ k ≤ min(n − 1, P)``.

    Returns:
        ``(projection, components, explained_variance_ratio, mean)``.

    Raises:
        UserError: a bad shape, ``k``, non-finite data or rank below k.

    Points on a line have one component, along the line, explaining everything:

    >>> proj, comps, ratio, mean = pca([[0.0, 0.0], [1.0, 1.0], [2.0, 2.0]], k=1)
    >>> comps, ratio, mean
    (array([[0.70710678, 0.70710678]]), array([1.]), array([1., 1.]))
    """
    X = np.asarray(X)
    if X.ndim != 2 or X.shape[0] < 2 or X.shape[1] < 1:
        raise UserError(f"pca: need a 2-D array with at least 2 rows, got shape {X.shape}")
    n, p = X.shape
    if not isinstance(k, (int, np.integer)) or not 1 <= k <= min(n - 1, p):
        raise UserError(f"pca: k must be in 1..{min(n - 1, p)} for shape {X.shape}, got {k!r}")
    if not np.isfinite(X).all():
        raise UserError("pca: the data contain NaN or inf")
    mean = X.mean(axis=0, dtype=np.float64)
    Xc = X.astype(np.float64) - mean
    if n < p:
        gram = Xc @ Xc.T
        evals, evecs = np.linalg.eigh(gram)  # ascending
        evals, evecs = np.clip(evals[::-1], 0.0, None), evecs[:, ::-1]
        total = evals.sum()
        s = np.sqrt(evals[:k])
    else:
        _, s, vt = np.linalg.svd(Xc, full_matrices=False)
        total, s = (s**2).sum(), s[:k]
    if not s[-1] > 1e-7 * s[0]:  # the Gram path resolves s to ~1e-8 of s[0]
        raise UserError(f"pca: the centred data have rank < {k}")
    comps = (evecs[:, :k].T @ Xc) / s[:, None] if n < p else vt[:k]
    var = s**2
    signs = np.sign(comps[np.arange(k), np.abs(comps).argmax(axis=1)])
    comps = comps * np.where(signs == 0, 1.0, signs)[:, None]
    ratio = var / total
    return Xc @ comps.T, comps, ratio, mean


def variance_shares(X) -> np.ndarray:
    """The explained-variance shares of the centred PCA of the rows of ``X [n, P]``.

    Args:
        X: The rows (n ≥ 2, finite, not all equal).

    Returns:
        ``[min(n − 1, P)]`` shares, decreasing, summing to 1 (float64; zeros past the rank).

    Raises:
        UserError: a bad shape, non-finite data or rows that are all equal.

    A straight line has everything in one direction:

    >>> variance_shares([[0.0, 0.0], [1.0, 2.0], [3.0, 6.0]])
    array([1., 0.])
    """
    X = np.asarray(X, dtype=np.float64)
    if X.ndim != 2 or X.shape[0] < 2 or not np.isfinite(X).all():
        raise UserError(f"variance_shares: need >= 2 finite rows, got shape {X.shape}")
    Xc = X - X.mean(axis=0)
    if X.shape[0] <= X.shape[1]:
        ev = np.linalg.eigvalsh(Xc @ Xc.T)[::-1]
    else:
        ev = np.linalg.svd(Xc, compute_uv=False) ** 2
    ev = np.clip(ev[:min(X.shape[0] - 1, X.shape[1])], 0.0, None)
    if not ev.sum() > 0:
        raise UserError("variance_shares: the rows are all equal")
    return ev / ev.sum()


def plane_axis(lo: float, hi: float, n: int) -> np.ndarray:
    """At least ``n`` evenly spaced points covering [lo, hi] (widened to hold 0), 0 on the grid.

    Args:
        lo: the lower end (raised to at most 0).
        hi: the upper end (lowered to at least 0).
        n: the number of points, at least 3.

    Returns:
        The axis, with exactly 0.0 at one of its points.

    Raises:
        UserError: ``n < 3``.

    >>> plane_axis(-1.0, 2.0, 4)
    array([-1., 0., 1., 2.])
    """
    lo, hi = min(float(lo), 0.0), max(float(hi), 0.0)
    if n < 3:
        raise UserError(f"plane_axis: need n >= 3, got {n}")
    if hi - lo <= 0:
        lo, hi = -1.0, 1.0
    h = (hi - lo) / (n - 1)
    i0, i1 = int(np.floor(lo / h + 1e-9)), int(np.ceil(hi / h - 1e-9))
    return np.arange(i0, i1 + 1) * h  # index 0 gives exactly 0.0


def _as_vector(v, like: torch.Tensor, what: str) -> torch.Tensor:
    t = torch.as_tensor(np.asarray(v) if not torch.is_tensor(v) else v)
    t = t.to(device=like.device, dtype=like.dtype).reshape(-1)
    if t.numel() != like.numel():
        raise UserError(f"loss_plane: {what} has {t.numel()} entries, the model {like.numel()}")
    return t


def _split_first_linear(model: nn.Module):
    """(prefix, first Linear, rest) when ``model`` is a Sequential of parameter-free modules
    followed by an ``nn.Linear`` and then anything; else None."""
    if not isinstance(model, nn.Sequential):
        return None
    mods = list(model)
    for k, mod in enumerate(mods):
        if isinstance(mod, nn.Linear):
            return nn.Sequential(*mods[:k]), mod, nn.Sequential(*mods[k + 1:])
        if any(True for _ in mod.parameters()) or any(True for _ in mod.buffers()):
            return None
    return None


def _plane_net(model: nn.Module, fast: bool):
    """``(prefix, first, net, n0)``: the fast path's split of ``model`` (``n0``: the first
    Linear's parameter count), or ``(None, None, model, 0)``."""
    split = _split_first_linear(model) if fast else None
    if split is None:
        return None, None, model, 0
    prefix, first, net = split
    return prefix, first, net, sum(p.numel() for p in first.parameters())


def _linear_at(first: nn.Linear, n0: int, z: torch.Tensor, flat: torch.Tensor) -> torch.Tensor:
    """The first Linear applied to ``z`` with the weights held in ``flat[:n0]``."""
    w = flat[:first.weight.numel()].view_as(first.weight)
    b = flat[first.weight.numel():n0] if first.bias is not None else None
    return torch.nn.functional.linear(z, w, b)


def _batched_loss(net: nn.Module, loss_fn: Callable, fast: bool):
    """``vmap`` over grid points of the loss of ``net`` at flat parameters ``flat``: on the
    fast path its input is the first layer's output ``z_c + α·z_1 + β·z_2``."""
    names = [name for name, _ in net.named_parameters()]
    shapes = [p.shape for _, p in net.named_parameters()]
    sizes = [s.numel() for s in shapes]
    buffers = dict(net.named_buffers())

    def point_loss(flat: torch.Tensor, ab: torch.Tensor, inputs: tuple, yb: torch.Tensor):
        h = inputs[0] if not fast else inputs[0] + ab[0] * inputs[1] + ab[1] * inputs[2]
        params = dict(zip(names, (t.view(s) for t, s in zip(flat.split(sizes), shapes))))
        return loss_fn(functional_call(net, {**params, **buffers}, (h,)), yb)

    return vmap(point_loss, in_dims=(0, 0, None, None))


# long: two thirds docstring (Args, a closed-form example); the body is one grid loop
@torch.inference_mode()
def loss_plane(model: nn.Module, loss_fn: Callable, x: torch.Tensor, y: torch.Tensor,
               center, d1, d2, alphas: Sequence[float], betas: Sequence[float], *,
               chunk: int = 16, batch_size: int = 10000, fast: bool = True) -> np.ndarray:
    """Mean loss of ``center + α·d1 + β·d2`` for every (α, β) of the grid.

    The model's own parameters are not changed; buffers are used as they are; eval mode.
    Fast path (``fast=True``, a Sequential whose first parametrised module is a Linear, e.g.
    every MLP): the first layer is linear in its weights, so its output at a grid point is
    ``z_c + α·z_1 + β·z_2`` with the three products computed once per data batch, which
    removes most of an MLP's work. Same numbers up to float32 rounding.

    Args:
        model: the network.
        loss_fn: ``loss_fn(output, target)``, a batch-mean loss (e.g. F.cross_entropy).
        x: the inputs.
        y: the targets.
        center: the plane's origin, a flat vector in ``flatten_params`` order (numpy/torch).
        d1: the first direction, likewise.
        d2: the second direction, likewise.
        alphas: the grid's coefficients of ``d1``.
        betas: the grid's coefficients of ``d2``.
        chunk: grid points evaluated at once (``vmap``).
        batch_size: data points per batch.
        fast: use the fast path when the model allows it.

    Returns:
        The losses, ``[len(alphas), len(betas)]`` float64.

    Raises:
        UserError: empty grids, mismatched data or vectors of the wrong length.

    For ``L(w) = mean((w·x)²) = w²`` (``x = ±1``) along ``d1 = 1`` from ``w = 0``:

    >>> m = torch.nn.Sequential(torch.nn.Linear(1, 1, bias=False))
    >>> x = torch.tensor([[-1.0], [1.0]])
    >>> loss_plane(m, torch.nn.functional.mse_loss, x, torch.zeros(2, 1), [0.0], [1.0],
    ...            [0.0], [-1.0, 0.0, 2.0], [0.0])
    array([[1.], [0.], [4.]])
    """
    alphas = np.asarray(alphas, dtype=np.float64).reshape(-1)
    betas = np.asarray(betas, dtype=np.float64).reshape(-1)
    if len(alphas) < 1 or len(betas) < 1 or len(x) < 1 or len(x) != len(y):
        raise UserError("loss_plane: need non-empty alphas, betas and matching x, y")
    like = flatten_params(model)
    c, u, v = (_as_vector(t, like, w) for t, w in ((center, "center"), (d1, "d1"), (d2, "d2")))
    prefix, first, net, n0 = _plane_net(model, fast)
    batched = _batched_loss(net, loss_fn, first is not None)
    grid_a, grid_b = np.meshgrid(alphas, betas, indexing="ij")
    coef = torch.tensor(np.stack([grid_a.ravel(), grid_b.ravel()], 1), dtype=like.dtype,
                        device=like.device)
    was_training = model.training
    model.eval()
    total = torch.zeros(len(coef), dtype=torch.float64, device=like.device)
    try:
        for j in range(0, len(x), batch_size):
            xb, yb = x[j:j + batch_size], y[j:j + batch_size]
            z = xb if first is None else prefix(xb)
            inputs = (z,) if first is None else tuple(_linear_at(first, n0, z, t)
                                                      for t in (c, u, v))
            for i in range(0, len(coef), chunk):
                ab = coef[i:i + chunk]
                flats = c[n0:] + ab[:, :1] * u[n0:] + ab[:, 1:] * v[n0:]
                total[i:i + len(ab)] += batched(flats, ab, inputs, yb).double() * len(xb)
    finally:
        model.train(was_training)
    return (total / len(x)).cpu().numpy().reshape(len(alphas), len(betas))
