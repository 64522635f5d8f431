"""Up-front size limits: estimate what a run will allocate before anything is allocated.

`check_specs` estimates, per run, the bytes of its parameters (weights, gradients and two
Adam moments: 4 float32 copies), of its data (from its RunSpec's data description) and of
whatever the experiment's `memory(params)` hook adds (minimal-ratio: the full float64 P x P
Hessian), and refuses with the estimate and the limit when one run would not fit in the
machine's memory. Estimates are lower bounds: a refused
run could never have finished; an accepted one may still be slow.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from decimal import Decimal

from dlscope import models
from dlscope.data import nbytes as data_nbytes
from dlscope.errors import UserError


def memory_bytes() -> int:
    """Physical memory of this machine (env DLSCOPE_MEMORY_LIMIT, in bytes, overrides)."""
    env = os.environ.get("DLSCOPE_MEMORY_LIMIT")
    if env:
        try:
            value = int(float(env))
        except (ValueError, OverflowError):  # 'lots', 'nan', 'inf'
            raise UserError(f"DLSCOPE_MEMORY_LIMIT={env!r} is not a number of bytes") from None
        if value <= 0:
            raise UserError(f"DLSCOPE_MEMORY_LIMIT={env!r}: must be a positive number of bytes")
        return value
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):  # pragma: no cover - not POSIX
        return 16 * 2**30


def gib(n: float) -> str:
    if n >= 2**1000:  # an int too large for a float (n_train=9**400)
        return f"{Decimal(n) / 2**30:.3g} GiB"
    return f"{n / 2**30:.3g} GiB"


def _params(model) -> int | None:
    if model is None:
        return None
    try:
        return models.count_params(model)
    except Exception:  # noqa: BLE001 - not a model description: nothing to estimate
        return None


def estimate(spec, memory: Callable[[dict], dict] | None = None) -> dict[str, int]:
    """Bytes one run needs at least: {"parameters": ..., "data": ..., and what the
    experiment's `memory(params)` hook adds (e.g. "hessian")}.

    Parameters: 4 float32 copies of the model its params["model"] describes (weights,
    gradients, two Adam moments); data: what its data description's kind says it takes
    (dlscope.data.nbytes)."""
    out: dict[str, int] = {}
    n_params = _params(spec.params.get("model"))
    if n_params is not None:
        out["parameters"] = 4 * 4 * n_params
    n_data = data_nbytes(spec.data)
    if n_data is not None:
        out["data"] = n_data
    if memory is not None:
        out.update({k: int(v) for k, v in memory(spec.params).items()})
    return out


def check_params(what: str, sizes: dict[str, int], limit: int | None = None) -> None:
    limit = memory_bytes() if limit is None else limit
    total = sum(sizes.values())
    if total > limit:
        parts = ", ".join(f"{k} {gib(v)}" for k, v in sizes.items() if v)
        raise UserError(f"{what} needs at least {gib(total)} ({parts}), more than this "
                        f"machine's memory ({gib(limit)}); make it smaller")


def check_specs(specs, memory: Callable[[dict], dict] | None = None) -> None:
    """Refuse (UserError) the first run whose estimate exceeds the machine's memory.

    `memory` is the experiment's optional hook `memory(params) -> {part: bytes}` (the
    contract, docs/CONTRACT.md) for what only the experiment knows it allocates."""
    limit = memory_bytes()
    for s in specs:
        check_params(f"{s.experiment}: run {s.key}", estimate(s, memory), limit)
