"""Up-front size limits: estimate what a run will allocate before anything is allocated.

`check_specs` estimates, per run, the bytes of its parameters (weights, gradients and two
Adam moments: 4 float32 copies), of its data (float32 tensors) and, for runs that form a
full Hessian, of that matrix (float64, P x P), and refuses with the estimate and the limit
when one run would not fit in the machine's memory. Estimates are lower bounds: a refused
run could never have finished; an accepted one may still be slow.
"""

from __future__ import annotations

import os

from dlscope.errors import UserError

_MNIST_TRAIN, _MNIST_TEST, _MNIST_PIXELS = 60000, 10000, 28 * 28
# run functions that form the full P x P Hessian of their model
HESSIAN_FNS = ("dlscope.experiments.minimal_ratio:critical_point",)


def memory_bytes() -> int:
    """Physical memory of this machine (env DLSCOPE_MEMORY_LIMIT, in bytes, overrides)."""
    env = os.environ.get("DLSCOPE_MEMORY_LIMIT")
    if env:
        try:
            return int(float(env))
        except ValueError:
            raise UserError(f"DLSCOPE_MEMORY_LIMIT={env!r} is not a number of bytes") from None
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):  # pragma: no cover - not POSIX
        return 16 * 2**30


def gib(n: float) -> str:
    return f"{n / 2**30:.3g} GiB"


def _params(model) -> int | None:
    if model is None:
        return None
    from dlscope import models

    try:
        return models.count_params(model)
    except Exception:  # noqa: BLE001 - not a model description: nothing to estimate
        return None


def estimate(params: dict, fn: str = "") -> dict[str, int]:
    """Bytes one run needs at least: {"parameters": ..., "data": ..., "hessian": ...}."""
    out: dict[str, int] = {}
    n_params = _params(params.get("model"))
    if n_params is not None:
        out["parameters"] = 4 * 4 * n_params
        if fn in HESSIAN_FNS:
            out["hessian"] = 8 * n_params**2
    data = params.get("data")
    if isinstance(data, dict) and data.get("kind", "mnist") == "mnist":
        n = data.get("train_subset") or _MNIST_TRAIN
        out["data"] = 4 * _MNIST_PIXELS * (int(n) + _MNIST_TEST)
    else:
        n = params.get("n_train")
        if isinstance(data, dict):
            n = data.get("n_train", n)
        if isinstance(n, int) and not isinstance(n, bool):
            out["data"] = 4 * 2 * int(n)  # x and y, float32 [N, 1]
    return out


def check_params(what: str, sizes: dict[str, int], limit: int | None = None) -> None:
    limit = memory_bytes() if limit is None else limit
    total = sum(sizes.values())
    if total > limit:
        parts = ", ".join(f"{k} {gib(v)}" for k, v in sizes.items() if v)
        raise UserError(f"{what} needs at least {gib(total)} ({parts}), more than this "
                        f"machine's memory ({gib(limit)}); make it smaller")


def check_specs(specs) -> None:
    """Refuse (UserError) the first run whose estimate exceeds the machine's memory."""
    limit = memory_bytes()
    for s in specs:
        check_params(f"{s.experiment}: run {s.key}", estimate(s.params, s.fn), limit)
