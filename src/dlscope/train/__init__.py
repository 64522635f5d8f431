"""Training: the loop, its step variants (autograd, MLP fast path, stacked ensemble), the fused
optimizer and the stopping rules. Knows nothing of experiments or of the run machinery.

Where things are:
- `loop.fit`: the one training loop (a single run is an ensemble of one);
- `steps`: the `Step` interface and its variants, and `choose_step`, which picks one;
- `optim.FusedOptimizer`: torch's fused Adam / SGD kernels called directly;
- `rules`: the stopping / divergence rules and the history a run records;
- `fastpath`: the autograd-free MLP kernels; `stacked`: E MLPs as one;
- `engine.train` (one model) and `ensemble.train_ensemble` (N members): the entry points.
"""

from dlscope.train.config import TrainConfig, TrainResult
from dlscope.train.engine import (
    ENGINE_VERSION,
    evaluate,
    grad_norm,
    loss_function,
    resolve_device,
    seeded_model,
    train,
)
from dlscope.train.ensemble import EnsembleResults, train_ensemble
from dlscope.train.optim import FusedOptimizer, torch_optimizer
from dlscope.train.stacked import StackedMLP, evaluate_stacked, unstack

__all__ = ["ENGINE_VERSION", "EnsembleResults", "FusedOptimizer", "StackedMLP", "TrainConfig",
           "TrainResult", "evaluate", "evaluate_stacked", "grad_norm", "loss_function",
           "resolve_device", "seeded_model", "torch_optimizer", "train",
           "train_ensemble", "unstack"]
