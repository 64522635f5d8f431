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
from dlscope.metrics.operators import HessianOperator


def lanczos(matvec, v0: torch.Tensor, steps: int) -> tuple[np.ndarray, np.ndarray]:
    """``(alpha, beta)`` of the Lanczos tridiagonal from ``v0`` (normalized here), with full
    reorthogonalization; fewer than ``steps`` when an invariant subspace is reached."""
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
    """Nodes (Ritz values, ascending) and weights (squared first eigenvector components)."""
    if len(alpha) == 1:
        return alpha.copy(), np.ones(1)
    theta, u = eigh_tridiagonal(alpha, beta)
    return theta, u[0] ** 2


@dataclass(frozen=True, eq=False)
class DensityResult:
    """SLQ density: ``density`` on ``grid``; ``ritz``/``weights`` ``[probes, steps]`` (NaN /
    0 past an early stop), each probe's weights summing to 1."""
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
        """``Σ w θ^order`` averaged over probes: an estimate of ``tr(H^order)/P``."""
        ok = self.weights > 0
        return float(np.sum(self.weights[ok] * self.ritz[ok] ** order) / self.probes)

    def mass(self, lo: float, hi: float) -> float:
        """The quadrature measure's mass of eigenvalues in ``[lo, hi]`` (a fraction of P)."""
        ok = (self.weights > 0) & (self.ritz >= lo) & (self.ritz <= hi)
        return float(self.weights[ok].sum() / self.probes)

    def quantile_abs(self, q: float) -> float:
        """The q-quantile of |λ| under the quadrature measure."""
        ok = self.weights > 0
        a, w = np.abs(self.ritz[ok]), self.weights[ok] / self.probes
        order = np.argsort(a)
        c = np.cumsum(w[order])
        return float(a[order][min(np.searchsorted(c, q * c[-1]), len(c) - 1)])

    @property
    def lambda_min(self) -> float:
        return float(np.nanmin(self.ritz))

    @property
    def lambda_max(self) -> float:
        return float(np.nanmax(self.ritz))

    def to_dict(self) -> dict:
        """Ritz values and weights per probe, moments, extremes, settings, HVPs, wall time."""
        return {"ritz": [[float(t) for t, w in zip(r, ws) if w > 0]
                         for r, ws in zip(self.ritz, self.weights)],
                "weights": [[float(w) for w in ws if w > 0] for ws in self.weights],
                "mean": self.moment(1), "second_moment": self.moment(2),
                "lambda_min": self.lambda_min, "lambda_max": self.lambda_max,
                "sigma": self.sigma, "probes": self.probes, "steps": self.steps,
                "hvps": self.hvps, "params": self.params, "wall_s": self.wall_s}

    def plot(self, ax=None, log: bool = True, label: str | None = None):
        """Draw the density (log scale by default, as Ghorbani et al.); returns the Figure."""
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
    """``(1/k) Σ_probes Σ_j w_j N(grid; θ_j, σ²)``."""
    ok = weights > 0
    t, w = ritz[ok], weights[ok] / ritz.shape[0]
    out = np.zeros_like(grid)
    for i in range(0, len(t), 256):  # bounded memory: 256 nodes x grid at a time
        z = (grid[:, None] - t[None, i : i + 256]) / sigma
        out += np.exp(-0.5 * z * z) @ w[i : i + 256]
    return out / (sigma * math.sqrt(2 * math.pi))


def hessian_density(model, loss_fn, data, *, probes: int = 1, steps: int = 80,
                    sigma: float | None = None, n_grid: int = 2000, seed: int = 0,
                    dtype=torch.float64, batch_size: int | None = None) -> DensityResult:
    """The Hessian's eigenvalue density over ``data`` (metrics/batches.py) by SLQ.

    ``probes`` Rademacher unit vectors (from ``torch.Generator().manual_seed(seed)``),
    ``steps`` Lanczos steps each (``probes·steps`` HVPs; memory ``steps·P`` numbers).
    ``sigma``: the Gaussian's standard deviation; default PyHessian's,
    ``sqrt(1e-5·max(1, λmax − λmin))``. The grid spans the Ritz values plus 5σ and 1% of
    their range on each side, ``n_grid`` points.
    """
    t0 = time.perf_counter()
    for name, v in (("probes", probes), ("steps", steps), ("n_grid", n_grid)):
        if not isinstance(v, int) or v < 1:
            raise UserError(f"{name} must be a positive integer, got {v!r}")
    if sigma is not None and not (math.isfinite(sigma) and sigma > 0):
        raise UserError(f"sigma must be a positive number or None, got {sigma!r}")
    op = HessianOperator(model, loss_fn, data, dtype, batch_size)
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
                         probes, m, op.products, op.p, time.perf_counter() - t0)
