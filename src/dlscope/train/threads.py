"""How many intra-op threads a training step runs on, and the context that sets them.

A small step is a chain of short ops (a 64-row MLP step's matmuls take tens of microseconds).
With two OpenMP threads each op ends at a barrier that waits for both; when another process
holds one of the cores the second thread is descheduled for a scheduler slice (milliseconds)
and every op waits for it, so a small step on two threads is many times slower than on one
under contention (docs/PERFORMANCE.md has the measurements). A step below `SMALL_STEP_MACS`
therefore runs on one thread whatever torch's setting; the other cores serve other runs (the
process pool runs one per core). Larger steps keep the caller's setting.

The thread count changes a run's numbers in the last bits (1- and 2-thread runs of one MLP
differ by ~1e-7), so the rule is fixed, never chosen by the load of the moment: a run's numbers
depend on its configuration only (ENGINE_VERSION "2" introduced the rule).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence

import torch

# Measured on a 2-core machine, 2026-12-02, one MNIST MLP epoch (784-128-64-10, batch 64;
# docs/PERFORMANCE.md): 0.95 s on 2 threads and 1.01 s on 1 when idle, but 44.6 s on 2
# threads and 1.07 s on 1 with one competing busy process; a stacked ensemble of 8 of those
# MLPs: 1.5 s on 1 thread, 0.95 s on 2.
SMALL_STEP_MACS = 1 << 24  # forward multiply-accumulates of one step, all members together


def step_threads(weights: Sequence[torch.Tensor], batch_size: int) -> int | None:
    """The intra-op threads of a training step: 1 for a small step on the CPU (below
    `SMALL_STEP_MACS`), else None (the caller's setting).

    Args:
        weights: the step's weight matrices (stacked ones count every member); a linear layer's
            forward costs one multiply-accumulate per weight and row.
        batch_size: the rows per step.

    Returns:
        1, or None.

    Example:
        >>> step_threads([torch.empty(128, 784), torch.empty(10, 128)], 64)
        1
        >>> step_threads([torch.empty(()).expand(4096, 4096)], 4096) is None
        True
    """
    if not weights or weights[0].device.type != "cpu":
        return None
    macs = batch_size * sum(w.numel() for w in weights)
    return 1 if macs < SMALL_STEP_MACS else None


@contextlib.contextmanager
def intra_op_threads(n: int | None) -> Iterator[None]:
    """torch's intra-op thread count set to `n` for the block, and restored after it.

    Args:
        n: the threads inside the block (None: left as it is).

    Returns:
        A context manager.

    Example:
        >>> before = torch.get_num_threads()
        >>> with intra_op_threads(1):
        ...     torch.get_num_threads()
        1
        >>> torch.get_num_threads() == before
        True
    """
    old = torch.get_num_threads()
    if n is None or n == old:
        yield
        return
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)
