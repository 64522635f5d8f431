"""The bench's yardsticks: forward multiply-accumulates of a model, FLOPs of a training epoch
(the formula is in the package docstring), and this machine's float32 GEMM rate."""

from __future__ import annotations

import statistics
import time
from itertools import pairwise

import torch

from dlscope import models

MLP = "mlp:784-128-64-10"
CNN = "cnn-b"


def macs_per_image(spec) -> int:
    """Multiply-accumulates of one forward pass (convolutions and linear layers)."""
    spec = models.parse_model(spec)
    if isinstance(spec, models.MLPSpec):
        dims = [spec.input_dim, *spec.hidden, spec.output_dim]
        return sum(a * b for a, b in pairwise(dims))
    total, side, chans = 0, spec.input_size, [spec.in_channels, *spec.channels]
    for c_in, c_out in pairwise(chans):
        side = side + 2 * spec.padding - spec.kernel + 1
        total += c_out * side * side * c_in * spec.kernel ** 2
        side //= spec.pool
    dims = [chans[-1] * side * side, *spec.fc, spec.n_classes]
    return total + sum(a * b for a, b in pairwise(dims))


def flops_per_epoch(spec, images: int) -> int:
    """3 x 2 x MACs per image x images: forward 2 FLOPs a MAC, backward twice the forward."""
    return 3 * 2 * macs_per_image(spec) * images


def sgemm_gflops(n: int = 2048, repeats: int = 3) -> float:
    """float32 n x n matmul throughput, median of `repeats` (after one warm-up)."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    out = torch.empty(n, n)
    torch.mm(a, b, out=out)
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        torch.mm(a, b, out=out)
        times.append(time.perf_counter() - t)
    return 2 * n ** 3 / statistics.median(times) / 1e9
