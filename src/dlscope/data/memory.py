"""How much memory this machine has (the bound for refusing data that could never fit).

It lives in the data layer so that loaders can refuse an oversized file before reading it;
``dlscope.contract.limits.memory_bytes`` is this same function.
"""

from __future__ import annotations

import os
from decimal import Decimal

from dlscope.errors import UserError


def memory_bytes() -> int:
    """Physical memory of this machine (env DLSCOPE_MEMORY_LIMIT, in bytes, overrides).

    Returns:
        Bytes, an int (16 GiB where the platform cannot tell).
    """
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
    """``n`` bytes as text in GiB, e.g. ``"1.5 GiB"``."""
    if n >= 2**1000:  # an int too large for a float (n_train=9**400)
        return f"{Decimal(n) / 2**30:.3g} GiB"
    return f"{n / 2**30:.3g} GiB"
