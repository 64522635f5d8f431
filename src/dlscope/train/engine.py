"""Training one model: `train(model, data, cfg, seed)`, an ensemble of one through the loop
(`loop.fit`) with the fastest exact step for the model (`steps.choose_step`); plus the
helpers every experiment uses around it (evaluation, seeded construction, the device)."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from dlscope.train.config import TrainConfig, TrainResult
from dlscope.train.evaluation import evaluate, grad_norm, loss_function
from dlscope.train.fastpath import tune_malloc
from dlscope.train.loop import OnEpoch, fit
from dlscope.train.steps import choose_step

ENGINE_VERSION = "3"  # bump when a change alters the numbers a run produces

__all__ = ["ENGINE_VERSION", "TrainConfig", "TrainResult", "evaluate", "grad_norm",
           "loss_function", "resolve_device", "seeded_model", "train"]


def train(model: nn.Module, data, cfg: TrainConfig, seed: int, *,
          record_grad_norm: bool = False, on_epoch: OnEpoch | None = None,
          progress: Callable[[int], None] | None = None,
          fast: bool = True, compile: bool = False) -> TrainResult:
    """Train `model` in place on `data` (a dlscope Dataset already on the model's device).

    `on_epoch(epoch, model, metrics)` is called after epoch 0 (before any step, so
    trajectories include the initial point) and after every epoch.
    `fast=False` takes the plain autograd + `torch.optim` path (same numbers; for tests and
    comparisons); `compile=True` runs the model through `torch.compile` on the autograd path
    (opt-in, not a default: see docs/PERFORMANCE.md). Which step trains the model:
    `steps.choose_step`; when training stops and what the result records: `rules`. A CNN
    trained on the CPU (fast path) comes back with channels-last convolution weights: the
    same values, another memory layout (`model.to(memory_format=torch.contiguous_format)`
    restores the default).
    """
    tune_malloc()
    x = data.x_train
    [step] = choose_step([model], data.n_classes is not None, x, [cfg.optimizer_settings()],
                         fast=fast, compile=compile)
    bs = len(x) if cfg.batch_size is None else min(cfg.batch_size, len(x))
    [result] = fit(step, data, [cfg], [seed], bs, [on_epoch],
                   record_grad_norm=record_grad_norm, progress=progress)
    return result


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        from dlscope.errors import UserError
        raise UserError(f"device {device!r}: CUDA is not available on this machine")
    return torch.device(device)


def seeded_model(build_fn: Callable[[], nn.Module], seed: int) -> nn.Module:
    """Build a model with torch's global RNG seeded, leaving the caller's RNG state as it was."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(seed))
        return build_fn()
