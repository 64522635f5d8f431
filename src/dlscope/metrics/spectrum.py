"""Extreme Hessian eigenpairs by Lanczos (ARPACK's ``eigsh``) on a :class:`HessianOperator`.

``hessian.extreme_eigenvalues`` is the public entry point; :func:`eigenpairs` does the work
and returns an :class:`EigenResult` (values, unit eigenvectors, residuals ``‖Hv − λv‖``,
HVPs used, wall time).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import torch
from scipy.sparse.linalg import LinearOperator, eigsh

from dlscope.metrics.operators import HessianOperator


@dataclass(frozen=True, eq=False)
class EigenResult:
    """Extreme eigenpairs of the Hessian; a part not asked for is ``None``.

    ``top``/``bottom``: eigenvalues ascending; ``top_vectors``/``bottom_vectors``: unit
    eigenvectors as columns ``[P, k]`` (flat-parameter order of ``hessian.flatten_params``),
    column i belongs to value i; ``top_residuals``/``bottom_residuals``: ``‖Hv − λv‖₂``.
    """
    top: np.ndarray | None
    bottom: np.ndarray | None
    top_vectors: np.ndarray | None
    bottom_vectors: np.ndarray | None
    top_residuals: np.ndarray | None
    bottom_residuals: np.ndarray | None
    hvps: int  # all Hessian-vector products, the residual checks included
    wall_s: float
    method: str  # "lanczos" | "dense"

    def to_dict(self) -> dict:
        """Values and residuals as lists (not the vectors), HVPs, wall time, method."""
        def lst(a):
            return None if a is None else [float(v) for v in a]
        return {"top": lst(self.top), "bottom": lst(self.bottom),
                "top_residuals": lst(self.top_residuals),
                "bottom_residuals": lst(self.bottom_residuals),
                "hvps": self.hvps, "wall_s": self.wall_s, "method": self.method}


def _residuals(op: HessianOperator, values, vectors) -> np.ndarray:
    out = []
    for lam, v in zip(values, vectors.T):
        vt = torch.as_tensor(v)
        out.append(float(torch.linalg.vector_norm(op.matvec(vt).cpu().double()
                                                  - lam * vt.double())))
    return np.asarray(out)


def eigenpairs(model, loss_fn, data, k: int = 10, dtype=torch.float64, tol: float = 1e-8,
               batch_size: int | None = None, which: str = "both",
               vectors: bool = False) -> EigenResult:
    """The k largest and/or smallest eigenpairs (see ``hessian.extreme_eigenvalues``)."""
    t0 = time.perf_counter()
    op = HessianOperator(model, loss_fn, data, dtype, batch_size)
    p = op.p
    want_top, want_bottom = which in ("both", "top"), which in ("both", "bottom")
    top = bottom = top_v = bottom_v = None
    if 2 * k + 1 >= p:
        w, v = torch.linalg.eigh(op.dense().cpu().double())
        w, v = w.numpy(), v.numpy()
        k = min(k, p)
        if want_top:
            top, top_v = w[-k:].copy(), v[:, -k:].copy()
        if want_bottom:
            bottom, bottom_v = w[:k].copy(), v[:, :k].copy()
        method = "dense"
    else:
        lin = op.linear_operator()
        tol = max(float(tol), 100 * float(torch.finfo(dtype).eps))
        v0 = np.random.default_rng(0).standard_normal(p).astype(lin.dtype)
        opts = {"k": k, "which": "LA", "tol": tol, "v0": v0, "ncv": min(p, max(2 * k + 1, 40)),
                "return_eigenvectors": vectors}

        def solve(a, kk):
            out = eigsh(a, **{**opts, "k": kk})
            w, v = out if vectors else (out, None)
            order = np.argsort(w)
            return w[order].astype(np.float64), (None if v is None else v[:, order])

        # one BLAS thread in eigsh: no fight with torch. Imported here: importing threadpoolctl
        # sets KMP_DUPLICATE_LIB_OK, and importing dlscope must change no environment
        from threadpoolctl import threadpool_limits

        with threadpool_limits(1, user_api="blas"):
            top, top_v = solve(lin, k if want_top else 1)  # the bottom's shift is λmax
            s = float(top[-1])
            if want_bottom:
                shifted = LinearOperator((p, p), matvec=lambda x: s * np.ravel(x) - lin.matvec(x),
                                         dtype=lin.dtype)
                mu, mv = solve(shifted, k)
                bottom = (s - mu)[::-1].copy()
                bottom_v = None if mv is None else mv[:, ::-1].copy()
            if not want_top:
                top = top_v = None
        method = "lanczos"
    top_r = bottom_r = None
    if vectors:
        top_r = None if top is None else _residuals(op, top, top_v)
        bottom_r = None if bottom is None else _residuals(op, bottom, bottom_v)
    return EigenResult(top, bottom, top_v, bottom_v, top_r, bottom_r,
                       op.products, time.perf_counter() - t0, method)
