"""The trace of the Hessian: Hutchinson's estimator, or exact on small nets (SCIENCE.md §5).

Hutchinson (1990): for Rademacher probes z (entries ±1 with equal probability),
``E[zᵀHz] = tr H``; the estimate is the mean of ``zᵀHz`` over the probes and its standard
error the sample standard deviation over √probes. Its variance is ``2·Σ_{i≠j} H_ij²`` per
probe: zero for a diagonal Hessian (the estimate is then exact from the first probe).
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass

import numpy as np
import torch

from dlscope.errors import UserError
from dlscope.metrics.operators import HessianOperator

EXACT_MAX_PARAMS = 1000  # exact=None: the dense Hessian (P products) up to this many parameters


@dataclass(frozen=True)
class TraceResult:
    """``trace ± stderr`` from ``probes`` probes (``method="exact"``: stderr 0, probes 0)."""
    trace: float
    stderr: float
    probes: int
    hvps: int
    method: str       # "hutchinson" | "exact"
    converged: bool   # hutchinson: stderr ≤ rtol·|trace| reached before max_probes
    params: int
    wall_s: float

    def to_dict(self) -> dict:
        return asdict(self)


def hessian_trace(model, loss_fn, data, *, rtol: float = 1e-2, max_probes: int = 1000,
                  min_probes: int | None = None, exact: bool | None = None, seed: int = 0,
                  dtype=torch.float64, batch_size: int | None = None) -> TraceResult:
    """The trace of the Hessian of the mean loss over ``data`` (metrics/batches.py).

    Hutchinson with Rademacher probes, one HVP each, until the standard error is at most
    ``rtol·|estimate|`` (checked from ``min_probes`` probes on, default ``min(10,
    max_probes)``) or ``max_probes`` probes were used (then ``converged`` is False).
    ``exact=True`` sums the diagonal of the dense Hessian instead (P HVPs' worth of work,
    P² memory: small nets only); ``exact=None`` does so when P ≤ 1000.
    Probes are drawn from ``torch.Generator().manual_seed(seed)``.
    """
    t0 = time.perf_counter()
    if min_probes is None:
        min_probes = min(10, max_probes) if isinstance(max_probes, int) else 10
    if not (isinstance(max_probes, int) and isinstance(min_probes, int)
            and 2 <= min_probes <= max_probes):
        raise UserError(f"need integers 2 <= min_probes <= max_probes, got {min_probes!r}, "
                        f"{max_probes!r}")
    if not (math.isfinite(rtol) and rtol >= 0):
        raise UserError(f"rtol must be a finite number >= 0, got {rtol!r}")
    if exact not in (None, True, False):
        raise UserError(f"exact must be True, False or None, got {exact!r}")
    op = HessianOperator(model, loss_fn, data, dtype, batch_size)
    if exact or (exact is None and op.p <= EXACT_MAX_PARAMS):
        tr = float(torch.diagonal(op.dense()).sum())
        return TraceResult(tr, 0.0, 0, op.products, "exact", True, op.p,
                           time.perf_counter() - t0)
    gen = torch.Generator().manual_seed(int(seed))
    samples: list[float] = []
    converged = False
    while len(samples) < max_probes:
        z = op.rademacher(gen)
        samples.append(float(torch.dot(z, op.matvec(z))))
        if len(samples) >= min_probes:
            a = np.asarray(samples)
            se = float(a.std(ddof=1) / math.sqrt(len(a)))
            if se <= rtol * abs(a.mean()):
                converged = True
                break
    a = np.asarray(samples)
    se = float(a.std(ddof=1) / math.sqrt(len(a)))
    if not all(math.isfinite(s) for s in samples):
        raise UserError("the Hessian-vector products are not finite (NaN or inf loss?)")
    return TraceResult(float(a.mean()), se, len(a), op.products, "hutchinson", converged,
                       op.p, time.perf_counter() - t0)
