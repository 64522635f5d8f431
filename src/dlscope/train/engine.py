"""Training one model: `train(model, data, cfg, seed)`, an ensemble of one through the loop
(`loop.fit`) with the fastest exact step for the model (`steps.choose_step`); plus the
helpers every experiment uses around it (evaluation, seeded construction, the device)."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from dlscope.errors import UserError
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
          fast: bool = True, compile: bool = False, closed_form: bool = False) -> TrainResult:
    """Train `model` in place on `data` (a dlscope Dataset already on the model's device).

    `on_epoch(epoch, model, metrics)` is called after epoch 0 (before any step, so
    trajectories include the initial point) and after every epoch. Which step trains the model:
    `steps.choose_step`; when training stops and what the result records: `rules`. A CNN
    trained on the CPU (fast path) comes back with channels-last convolution weights: the
    same values, another memory layout (`model.to(memory_format=torch.contiguous_format)`
    restores the default).

    Args:
        model: the module to train, in place.
        data: a dlscope Dataset (classification when `data.n_classes` is set, else regression).
        cfg: the optimizer, batch size, epochs and stopping rules.
        seed: the seed of the batch order (one `randperm` per epoch).
        record_grad_norm: also record every step's full-gradient norm (`TrainResult.grad_norm`).
        on_epoch: the per-epoch callback `(epoch, model, metrics)`, or None.
        progress: called with the epoch number after every epoch, or None.
        fast: False takes the plain autograd + `torch.optim` path (the same numbers; for tests
            and comparisons).
        compile: run the model through `torch.compile` on the autograd path (opt-in, not a
            default: see docs/PERFORMANCE.md).
        closed_form: a ``1 -> H -> 1`` ReLU MLP under MSE takes `onehidden.OneHiddenStep`
            (equal to the default step to float tolerance, not bit for bit; opt-in).

    Returns:
        The run's `TrainResult`.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> from dlscope.data.dataset import Dataset
        >>> x = torch.randn(32, 4, generator=torch.Generator().manual_seed(0))
        >>> ds = Dataset.from_tensors(x, (x[:, 0] > 0).long())
        >>> build = lambda: nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Linear(16, 2))
        >>> cfg = TrainConfig(lr=0.05, epochs=2)
        >>> r = train(seeded_model(build, 0), ds, cfg, seed=0)
        >>> r.status, r.epochs_run, r.final("train_loss") < r.history["train_loss"][0]
        ('ok', 2, True)
        >>> train(seeded_model(build, 0), ds, cfg, seed=0, fast=False).history == r.history
        True
    """
    tune_malloc()
    x = data.x_train
    [step] = choose_step([model], data.n_classes is not None, x, [cfg.optimizer_settings()],
                         fast=fast, compile=compile, closed_form=closed_form)
    bs = len(x) if cfg.batch_size is None else min(cfg.batch_size, len(x))
    [result] = fit(step, data, [cfg], [seed], bs, [on_epoch],
                   record_grad_norm=record_grad_norm, progress=progress)
    return result


def resolve_device(device: str) -> torch.device:
    """The torch device a run's `device` setting names.

    Args:
        device: "auto" (CUDA when available, else the CPU), "cpu", "cuda" or "cuda:N".

    Returns:
        The `torch.device`; asking for CUDA where there is none raises `UserError`.

    Example:
        >>> resolve_device("cpu")
        device(type='cpu')
        >>> resolve_device("auto").type in ("cpu", "cuda")
        True
    """
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"device {device!r}: CUDA is not available on this machine")
    return torch.device(device)


def seeded_model(build_fn: Callable[[], nn.Module], seed: int) -> nn.Module:
    """Build a model with torch's global RNG seeded, leaving the caller's RNG state as it was.

    Args:
        build_fn: builds the model (its initialization draws from torch's global RNG).
        seed: the seed the RNG holds while `build_fn` runs.

    Returns:
        The built model: the same seed builds the same parameters.

    Example:
        >>> state = torch.random.get_rng_state()
        >>> a, b = (seeded_model(lambda: nn.Linear(3, 2), 7) for _ in range(2))
        >>> torch.equal(a.weight, b.weight), torch.equal(state, torch.random.get_rng_state())
        (True, True)
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(seed))
        return build_fn()
