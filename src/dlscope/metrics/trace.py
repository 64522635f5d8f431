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
from dlscope.metrics.operators import CurvatureOperator, as_operator

__all__ = ["EXACT_MAX_PARAMS", "TraceResult", "hessian_trace"]

EXACT_MAX_PARAMS = 1000  # exact=None: the dense Hessian (P products) up to this many parameters


@dataclass(frozen=True)
class TraceResult:
    """``trace ± stderr`` from ``probes`` probes (``method="exact"``: stderr 0, probes 0).

    Attributes:
        trace: the estimate (or the exact trace).
        stderr: its standard error.
        probes: the Rademacher probes used.
        hvps: the operator products used in the call.
        method: ``"hutchinson"`` or ``"exact"``.
        converged: hutchinson: ``stderr ≤ rtol·|trace|`` reached before ``max_probes``.
        params: P, the operator's size.
        wall_s: the wall time in seconds.

    >>> hessian_trace(np.diag([1.0, 2.0])).to_dict()["trace"]
    3.0
    """
    trace: float
    stderr: float
    probes: int
    hvps: int
    method: str
    converged: bool
    params: int
    wall_s: float

    def to_dict(self) -> dict:
        """The fields as a dict (``dataclasses.asdict``).

        Returns:
            ``{trace, stderr, probes, hvps, method, converged, params, wall_s}``.

        >>> sorted(hessian_trace(np.eye(2)).to_dict())[:3]
        ['converged', 'hvps', 'method']
        """
        return asdict(self)


def _hutchinson(op: CurvatureOperator, rtol: float, min_probes: int, max_probes: int,
                seed: int) -> tuple[list[float], bool]:
    gen = torch.Generator().manual_seed(int(seed))
    samples: list[float] = []
    while len(samples) < max_probes:
        z = op.rademacher(gen)
        samples.append(float(torch.dot(z, op.matvec(z))))
        if len(samples) >= min_probes:
            a = np.asarray(samples)
            se = float(a.std(ddof=1) / math.sqrt(len(a)))
            if se <= rtol * abs(a.mean()):
                return samples, True
    return samples, False


# long: the docstring (Args, a closed-form example); the body is ~25 lines of checks
def hessian_trace(op, loss_fn=None, data=None, *, rtol: float = 1e-2, max_probes: int = 1000,
                  min_probes: int | None = None, exact: bool | None = None, seed: int = 0,
                  dtype=torch.float64, batch_size: int | None = None) -> TraceResult:
    """The trace of the Hessian of the mean loss over ``data`` (or of any operator).

    ``hessian_trace(op, ...)`` with an operator (``shape``, ``dtype``, ``matvec``, see
    ``metrics/operators.py``) or ``hessian_trace(model, loss_fn, data, ...)``, which builds
    the :class:`~dlscope.metrics.operators.HessianOperator`. Hutchinson with Rademacher
    probes (from ``torch.Generator().manual_seed(seed)``), one product each, until the
    standard error is at most ``rtol·|estimate|`` (checked from ``min_probes`` probes on) or
    ``max_probes`` probes were used (then ``converged`` is False).

    Args:
        op: an operator, or a model.
        loss_fn: the batch-mean loss (with a model only).
        data: the data, ``metrics/batches.py`` (with a model only).
        rtol: the relative standard error to reach.
        max_probes: the most probes.
        min_probes: the fewest probes before the test (default ``min(10, max_probes)``).
        exact: True sums the diagonal of the dense matrix (P products' worth of work, P²
            memory: small nets only); None does so when P ≤ 1000.
        seed: the probes' seed.
        dtype: the dtype of an operator built here.
        batch_size: the chunk size of an operator built here.

    Returns:
        A :class:`TraceResult`.

    Raises:
        UserError: bad settings, or non-finite products.

    The Hessian of ``mean((w·x + b)²)`` at ``x = ±2`` is ``diag(8, 2)``; Hutchinson is exact
    for a diagonal matrix:

    >>> m = torch.nn.Linear(1, 1)
    >>> x, y = torch.tensor([[-2.0], [2.0]]), torch.zeros(2, 1)
    >>> r = hessian_trace(m, torch.nn.functional.mse_loss, (x, y), exact=False)
    >>> r.trace, r.stderr, r.method, r.converged
    (10.0, 0.0, 'hutchinson', True)
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
    op = as_operator(op, loss_fn, data, dtype, batch_size)
    start = op.products
    if exact or (exact is None and op.p <= EXACT_MAX_PARAMS):
        tr = float(torch.diagonal(op.dense()).sum())
        return TraceResult(tr, 0.0, 0, op.products - start, "exact", True, op.p,
                           time.perf_counter() - t0)
    samples, converged = _hutchinson(op, rtol, min_probes, max_probes, seed)
    a = np.asarray(samples)
    se = float(a.std(ddof=1) / math.sqrt(len(a)))
    if not all(math.isfinite(s) for s in samples):
        raise UserError("the Hessian-vector products are not finite (NaN or inf loss?)")
    return TraceResult(float(a.mean()), se, len(a), op.products - start, "hutchinson",
                       converged, op.p, time.perf_counter() - t0)
