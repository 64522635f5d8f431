"""The Hessian's eigenvalue density by stochastic Lanczos quadrature (SCIENCE.md §5).

Lin, Saad & Yang (2016); Ghorbani, Krishnan & Xiao (2019, arXiv:1901.10159). For a unit
random vector v, ``vᵀ f(H) v = Σ_i (vᵀu_i)² f(λ_i)`` is the integral of f against the
spectral measure seen from v, whose mean over v is the density ``(1/P) Σ_i δ(t − λ_i)``.
m Lanczos steps from v give a tridiagonal T_m = U diag(θ) Uᵀ; Gauss quadrature with nodes
θ_j (the Ritz values) and weights ``U[0, j]²`` is exact for polynomials f up to degree
2m − 1. Averaging over k probes and replacing every node by a Gaussian of width σ gives a
smooth density that integrates to 1. The extreme Ritz values converge to λmin and λmax
first, so the support is right after a few tens of steps.

Lanczos is written out here (SciPy exposes ARPACK's eigenvalues, not its tridiagonal): the
vectors stay on the model's device, every new one is orthogonalized twice against all the
previous ones (full reorthogonalization; memory m·P numbers), and it stops early when the
Krylov space is exhausted (β ≈ 0, e.g. m ≥ P).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import numpy as np
import torch
from scipy.linalg import eigh_tridiagonal

from dlscope.errors import UserError
from dlscope.metrics.operators import as_operator

__all__ = ["DensityResult", "gauss_quadrature", "hessian_density", "lanczos", "smooth"]


def lanczos(matvec, v0: torch.Tensor, steps: int) -> tuple[np.ndarray, np.ndarray]:
    """The Lanczos tridiagonal from ``v0`` (normalized here), with full reorthogonalization.

    Args:
        matvec: ``v ↦ H v`` on torch vectors, H symmetric.
        v0: the starting vector.
        steps: the most steps; fewer when an invariant subspace is reached.

    Returns:
        ``(alpha, beta)``: the diagonal (m entries) and off-diagonal (m − 1) of ``T_m``.

    >>> h = torch.diag(torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64))
    >>> alpha, beta = lanczos(lambda v: h @ v, torch.ones(3, dtype=torch.float64), 3)
    >>> float(alpha.sum())  # the trace of T_3 = tr H
    6.0
    """
    p = v0.numel()
    m = min(int(steps), p)
    basis = torch.zeros(m, p, dtype=v0.dtype, device=v0.device)
    basis[0] = v0 / torch.linalg.vector_norm(v0)
    alpha, beta = [], []
    eps = torch.finfo(v0.dtype).eps
    scale = 0.0
    for j in range(m):
        w = matvec(basis[j])
        a = float(torch.dot(w, basis[j]))
        alpha.append(a)
        vb = basis[: j + 1]
        for _ in range(2):  # full reorthogonalization (twice is enough, Parlett's "twice")
            w = w - vb.T @ (vb @ w)
        b = float(torch.linalg.vector_norm(w))
        scale = max(scale, abs(a), b)
        if j == m - 1 or b <= 100 * eps * max(scale, 1e-300):
            break
        beta.append(b)
        basis[j + 1] = w / b
    return np.asarray(alpha), np.asarray(beta)


def gauss_quadrature(alpha: np.ndarray, beta: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Gauss quadrature of the Lanczos tridiagonal ``(alpha, beta)``.

    Args:
        alpha: the diagonal of ``T_m``.
        beta: its off-diagonal.

    Returns:
        ``(nodes, weights)``: the Ritz values (ascending) and the squared first components
        of ``T_m``'s eigenvectors (summing to 1).

    >>> nodes, weights = gauss_quadrature(np.array([0.0, 0.0]), np.array([1.0]))
    >>> nodes, weights
    (array([-1.,  1.]), array([0.5, 0.5]))
    """
    if len(alpha) == 1:
        return alpha.copy(), np.ones(1)
    theta, u = eigh_tridiagonal(alpha, beta)
    return theta, u[0] ** 2


@dataclass(frozen=True, eq=False)
class DensityResult:
    """The SLQ density of a Hessian's eigenvalues.

    Attributes:
        grid: the points of the density.
        density: its values on ``grid`` (it integrates to 1).
        ritz: ``[probes, steps]`` Ritz values (NaN past an early stop).
        weights: ``[probes, steps]`` quadrature weights (0 past an early stop), each probe's
            summing to 1.
        sigma: the Gaussian's standard deviation.
        probes: the probes used.
        steps: the Lanczos steps per probe.
        hvps: the operator products used in the call.
        params: P, the operator's size.
        wall_s: the wall time in seconds.

    >>> d = hessian_density(np.diag([1.0, 3.0]), steps=2)
    >>> round(d.moment(1), 9), d.lambda_min, d.lambda_max, round(d.mass(0.0, 2.0), 9)
    (2.0, 1.0, 3.0, 0.5)
    """
    grid: np.ndarray
    density: np.ndarray
    ritz: np.ndarray
    weights: np.ndarray
    sigma: float
    probes: int
    steps: int
    hvps: int
    params: int
    wall_s: float

    def moment(self, order: int) -> float:
        """``Σ w θ^order`` averaged over probes: an estimate of ``tr(H^order)/P``.

        Args:
            order: the moment's order.

        Returns:
            The estimate.

        >>> round(hessian_density(np.diag([1.0, 3.0]), steps=2).moment(2), 9)  # (1 + 9)/2
        5.0
        """
        ok = self.weights > 0
        return float(np.sum(self.weights[ok] * self.ritz[ok] ** order) / self.probes)

    def mass(self, lo: float, hi: float) -> float:
        """The quadrature measure's mass of eigenvalues in ``[lo, hi]`` (a fraction of P).

        Args:
            lo: the interval's lower end.
            hi: its upper end.

        Returns:
            The mass, in ``[0, 1]``.

        >>> round(hessian_density(np.diag([1.0, 3.0]), steps=2).mass(0.0, 5.0), 9)
        1.0
        """
        ok = (self.weights > 0) & (self.ritz >= lo) & (self.ritz <= hi)
        return float(self.weights[ok].sum() / self.probes)

    def quantile_abs(self, q: float) -> float:
        """The q-quantile of |λ| under the quadrature measure.

        Args:
            q: the level, in ``[0, 1]``.

        Returns:
            The smallest Ritz |θ| whose cumulated weight reaches ``q``.

        >>> hessian_density(np.diag([1.0, 3.0]), steps=2).quantile_abs(0.9)
        3.0
        """
        ok = self.weights > 0
        a, w = np.abs(self.ritz[ok]), self.weights[ok] / self.probes
        order = np.argsort(a)
        c = np.cumsum(w[order])
        return float(a[order][min(np.searchsorted(c, q * c[-1]), len(c) - 1)])

    @property
    def lambda_min(self) -> float:
        """The smallest Ritz value (an estimate of λmin, from above)."""
        return float(np.nanmin(self.ritz))

    @property
    def lambda_max(self) -> float:
        """The largest Ritz value (an estimate of λmax, from below)."""
        return float(np.nanmax(self.ritz))

    def to_dict(self) -> dict:
        """The result for JSON (not the grid and density).

        Returns:
            Ritz values and weights per probe, moments, extremes, settings, HVPs, wall time.

        >>> hessian_density(np.diag([1.0, 3.0]), steps=2).to_dict()["ritz"]
        [[1.0, 3.0]]
        """
        return {"ritz": [[float(t) for t, w in zip(r, ws) if w > 0]
                         for r, ws in zip(self.ritz, self.weights)],
                "weights": [[float(w) for w in ws if w > 0] for ws in self.weights],
                "mean": self.moment(1), "second_moment": self.moment(2),
                "lambda_min": self.lambda_min, "lambda_max": self.lambda_max,
                "sigma": self.sigma, "probes": self.probes, "steps": self.steps,
                "hvps": self.hvps, "params": self.params, "wall_s": self.wall_s}

    def plot(self, ax=None, log: bool = True, label: str | None = None):
        """Draw the density (log scale by default, as Ghorbani et al.).

        Args:
            ax: the matplotlib Axes to draw on (None: a new figure).
            log: a log density axis.
            label: the curve's legend label.

        Returns:
            The matplotlib Figure.

        >>> fig = hessian_density(np.diag([1.0, 3.0]), steps=2).plot()
        >>> len(fig.axes)
        1
        """
        from dlscope import plotting

        fig = ax.figure if ax is not None else plotting.figure()[0]
        ax = ax if ax is not None else fig.axes[0]
        d = self.density
        if log:
            floor = max(float(d.max()) * 1e-7, np.finfo(float).tiny)
            ax.semilogy(self.grid, np.maximum(d, floor), lw=1.0, label=label)
            ax.set_ylim(floor, float(d.max()) * 3)
        else:
            ax.plot(self.grid, d, lw=1.0, label=label)
        plotting.finish(ax, f"Hessian eigenvalue density (SLQ, {self.probes} probes x "
                        f"{self.steps} steps, σ = {self.sigma:.2g})", "eigenvalue λ",
                        "density", legend=label is not None)
        return fig


def smooth(ritz: np.ndarray, weights: np.ndarray, grid: np.ndarray, sigma: float) -> np.ndarray:
    """The Gaussian-smoothed density ``(1/k) Σ_probes Σ_j w_j N(grid; θ_j, σ²)``.

    Args:
        ritz: ``[k, m]`` nodes.
        weights: ``[k, m]`` weights (0: not a node).
        grid: the points.
        sigma: the Gaussian's standard deviation.

    Returns:
        The density on ``grid``.

    >>> d = smooth(np.array([[0.0]]), np.array([[1.0]]), np.array([0.0]), 1.0)
    >>> d, float(1 / np.sqrt(2 * np.pi))
    (array([0.39894228]), 0.3989422804014327)
    """
    ok = weights > 0
    t, w = ritz[ok], weights[ok] / ritz.shape[0]
    out = np.zeros_like(grid)
    for i in range(0, len(t), 256):  # bounded memory: 256 nodes x grid at a time
        z = (grid[:, None] - t[None, i : i + 256]) / sigma
        out += np.exp(-0.5 * z * z) @ w[i : i + 256]
    return out / (sigma * math.sqrt(2 * math.pi))


# long: the docstring (Args, a closed-form example); the body is ~25 lines
def hessian_density(op, loss_fn=None, data=None, *, probes: int = 1, steps: int = 80,
                    sigma: float | None = None, n_grid: int = 2000, seed: int = 0,
                    dtype=torch.float64, batch_size: int | None = None) -> DensityResult:
    """The eigenvalue density of a Hessian (or any symmetric operator) by SLQ.

    ``hessian_density(op, ...)`` with an operator (``shape``, ``dtype``, ``matvec``, see
    ``metrics/operators.py``) or ``hessian_density(model, loss_fn, data, ...)``, which builds
    the :class:`~dlscope.metrics.operators.HessianOperator` of the mean loss over ``data``.
    ``probes`` Rademacher unit vectors (from ``torch.Generator().manual_seed(seed)``),
    ``steps`` Lanczos steps each (``probes·steps`` products; memory ``steps·P`` numbers).
    The grid spans the Ritz values plus 5σ and 1% of their range on each side.

    Args:
        op: an operator, or a model.
        loss_fn: the batch-mean loss (with a model only).
        data: the data, ``metrics/batches.py`` (with a model only).
        probes: the number of probes.
        steps: Lanczos steps per probe.
        sigma: the Gaussian's standard deviation; default PyHessian's,
            ``sqrt(1e-5·max(1, λmax − λmin))``.
        n_grid: the grid's points.
        seed: the probes' seed.
        dtype: the dtype of an operator built here.
        batch_size: the chunk size of an operator built here.

    Returns:
        A :class:`DensityResult`.

    Raises:
        UserError: bad settings, or non-finite products.

    The Hessian of ``mean((w·x + b)²)`` at ``x = ±2`` is ``diag(8, 2)``: two steps find
    both eigenvalues, each with weight 1/2:

    >>> m = torch.nn.Linear(1, 1)
    >>> x, y = torch.tensor([[-2.0], [2.0]]), torch.zeros(2, 1)
    >>> d = hessian_density(m, torch.nn.functional.mse_loss, (x, y), steps=2)
    >>> np.round(d.ritz, 9), np.round(d.weights, 9), d.hvps
    (array([[2., 8.]]), array([[0.5, 0.5]]), 2)
    """
    t0 = time.perf_counter()
    for name, v in (("probes", probes), ("steps", steps), ("n_grid", n_grid)):
        if not isinstance(v, int) or v < 1:
            raise UserError(f"{name} must be a positive integer, got {v!r}")
    if sigma is not None and not (math.isfinite(sigma) and sigma > 0):
        raise UserError(f"sigma must be a positive number or None, got {sigma!r}")
    op = as_operator(op, loss_fn, data, dtype, batch_size)
    start = op.products
    gen = torch.Generator().manual_seed(int(seed))
    m = min(steps, op.p)
    ritz = np.full((probes, m), np.nan)
    weights = np.zeros((probes, m))
    for i in range(probes):
        alpha, beta = lanczos(op.matvec, op.rademacher(gen), m)
        if not (np.all(np.isfinite(alpha)) and np.all(np.isfinite(beta))):
            raise UserError("the Hessian-vector products are not finite (NaN or inf loss?)")
        theta, w = gauss_quadrature(alpha, beta)
        ritz[i, : len(theta)], weights[i, : len(theta)] = theta, w
    lo, hi = float(np.nanmin(ritz)), float(np.nanmax(ritz))
    sig = sigma if sigma is not None else math.sqrt(1e-5 * max(1.0, hi - lo))
    pad = 5 * sig + 0.01 * (hi - lo)
    grid = np.linspace(lo - pad, hi + pad, n_grid)
    return DensityResult(grid, smooth(ritz, weights, grid, sig), ritz, weights, float(sig),
                         probes, m, op.products - start, op.p, time.perf_counter() - t0)
