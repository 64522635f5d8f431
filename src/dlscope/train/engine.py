"""Training on in-memory tensors: one model, one seed, per-epoch metrics.

Batches are index slices of a seeded permutation (a fresh one per epoch), so there is no
per-sample Python and no DataLoader. Losses of every step are kept in a preallocated tensor
and read once per epoch, which gives the divergence step and the per-step curve with one
host sync per epoch. Evaluation runs in large batches under `torch.inference_mode`.

Per-step overhead, not arithmetic, dominates small trainings on a CPU, so a step does only
what it must (profile and figures: `dlscope bench`, docs in src/dlscope/bench.py):
- a plain MLP (`nn.Sequential` of Linear and ReLU/Tanh/Sigmoid/GELU layers, as
  `models.build` makes them; no hooks) is stepped without autograd: forward with addmm, the
  backward written out with the very ATen kernels autograd would call, gradients written in
  place into preallocated `.grad` tensors. Same numbers as the autograd path (bit for bit on
  this build; tests/test_engine.py compares them). With the two points below, an MNIST
  epoch of the 784-128-64-10 MLP (batch 64, Adam, 1 thread) went from 2.82 s to 1.26 s on
  the shared 2-core machine, against a FLOP floor of 1.02 s there (medians of 3, interleaved);
- the optimizer is torch's fused Adam/SGD kernel called directly (`_FusedOptimizer`), the
  same arithmetic as `torch.optim.Adam(fused=True)` without `Optimizer.step`'s Python;
- batches are `index_select` of per-epoch `perm.split(bs)` views; the step's loss and
  argmax are written into preallocated per-epoch buffers (no per-step host sync);
- `tune_malloc()` (called by `train`, once per process) keeps freed blocks below 32 MB in
  glibc's heap: a CNN step's multi-MB activations are then reused instead of being mmapped
  and page-faulted afresh every step (cnn-b: 15-35% less time a step, measured).
Every other model (CNNs, anything with hooks) takes the autograd path. `train(fast=False)`
forces it (for tests and comparisons); `train(compile=True)` opts into `torch.compile` of
the model on that path (measured, not a default: see bench.py).

Stopping rules (the first that fires ends training; `TrainResult` records which and when):
- `epochs`: the budget;
- `converge_loss`: training loss below this value ("converged: loss < threshold");
- `converge_rel`: the best loss improved by less than this fraction over the last
  `converge_window` epochs ("converged: plateau");
- a non-finite loss: the run stops, status "diverged", with the step it happened.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from dlscope.train.fastpath import _FusedOptimizer, _MLPStep, mlp_chain, tune_malloc

ENGINE_VERSION = "1"  # bump when a change alters the numbers a run produces


class TrainConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    optimizer: Literal["adam", "sgd"] = "adam"
    lr: float = Field(1e-3, gt=0, description="learning rate")
    momentum: float = Field(0.0, ge=0, lt=1, description="SGD momentum")
    weight_decay: float = Field(0.0, ge=0)
    batch_size: int | None = Field(None, ge=1, description="None: full batch")
    epochs: int = Field(10, ge=1)
    converge_loss: float | None = Field(None, gt=0, description="stop when loss < this")
    converge_rel: float | None = Field(None, gt=0, description="stop on relative plateau")
    converge_window: int = Field(500, ge=1, description="epochs the plateau rule looks back")
    eval_every: int = Field(1, ge=1, description="evaluate the test set every k epochs")
    eval_test: bool = True


@dataclass
class TrainResult:
    status: str  # "ok" | "converged" | "diverged"
    epochs_run: int
    converged_epoch: int | None = None
    stop_rule: str | None = None
    diverged_step: int | None = None
    history: dict[str, list] = field(default_factory=dict)
    step_loss: np.ndarray | None = None
    grad_norm: np.ndarray | None = None
    wall_s: float = 0.0

    def final(self, key: str) -> float:
        values = [v for v in self.history.get(key, []) if v is not None]
        return float(values[-1]) if values else float("nan")


def loss_function(classification: bool) -> Callable:
    return F.cross_entropy if classification else F.mse_loss


def make_optimizer(params, cfg: TrainConfig) -> torch.optim.Optimizer:
    """Adam or SGD with the fused kernel (measured fastest on CPU, see bench), else foreach."""
    params = list(params)
    fused = all(p.device.type in ("cpu", "cuda") for p in params)
    kind = {"fused": True} if fused else {"foreach": True}
    if cfg.optimizer == "adam":
        return torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay, **kind)
    return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum,
                           weight_decay=cfg.weight_decay, **kind)


@torch.inference_mode()
def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor, classification: bool,
             batch_size: int = 8192) -> tuple[float, float | None]:
    """Mean loss and accuracy (None for regression) over the whole set, in eval mode."""
    was_training = model.training
    model.eval()
    loss_fn = loss_function(classification)
    total = torch.zeros((), dtype=torch.float64, device=x.device)
    correct = torch.zeros((), dtype=torch.int64, device=x.device)
    for i in range(0, len(x), batch_size):
        out = model(x[i:i + batch_size])
        yb = y[i:i + batch_size]
        total += loss_fn(out, yb, reduction="sum").double()
        if classification:
            correct += (out.argmax(1) == yb).sum()
    model.train(was_training)
    n = len(x)
    loss = float(total) / (n * (1 if classification else y[0].numel()))
    return loss, (float(correct) / n if classification else None)


def grad_norm(model: nn.Module) -> torch.Tensor:
    """L2 norm of the full parameter gradient (all layers as one vector), as a tensor."""
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    return torch.linalg.vector_norm(torch.stack(torch._foreach_norm(grads)))


def train(model: nn.Module, data, cfg: TrainConfig, seed: int, *,
          record_grad_norm: bool = False,
          on_epoch: Callable[[int, nn.Module, dict], None] | None = None,
          progress: Callable[[int], None] | None = None,
          fast: bool = True, compile: bool = False) -> TrainResult:
    """Train `model` in place on `data` (a dlscope Dataset already on the model's device).

    `on_epoch(epoch, model, metrics)` is called after epoch 0 (before any step, so
    trajectories include the initial point) and after every epoch.
    `fast=False` takes the plain autograd + `torch.optim` path (same numbers; for tests and
    comparisons); `compile=True` runs the model through `torch.compile` on the autograd path
    (opt-in: on this CPU it was measured slower for the course's small models, see bench.py).
    """
    t0 = time.perf_counter()
    tune_malloc()
    classification = data.n_classes is not None
    loss_fn = loss_function(classification)
    x, y = data.x_train, data.y_train
    n = len(x)
    bs = n if cfg.batch_size is None else min(cfg.batch_size, n)
    steps_per_epoch = math.ceil(n / bs)
    gen = torch.Generator(device="cpu").manual_seed(int(seed))
    params = list(model.parameters())
    fused = fast and not compile and _FusedOptimizer.supports(params)
    opt = _FusedOptimizer(params, cfg) if fused else make_optimizer(params, cfg)
    chain = mlp_chain(model) if fused else None
    flatten = chain is not None and type(model[0]) is nn.Flatten
    if chain is not None and (x.dtype != params[0].dtype or (x.dim() != 2 and not flatten)):
        chain = None
    forward = torch.compile(model) if compile else model
    hist: dict[str, list] = {k: [] for k in
                             ("epoch", "train_loss", "train_acc", "test_loss", "test_acc")}
    step_losses: list[float] = []
    norms: list[torch.Tensor] = []
    result = TrainResult(status="ok", epochs_run=0)

    def log_epoch(epoch: int, train_loss: float, train_acc: float | None) -> None:
        hist["epoch"].append(epoch)
        hist["train_loss"].append(train_loss)
        hist["train_acc"].append(train_acc)
        test = cfg.eval_test and (epoch % cfg.eval_every == 0 or epoch == cfg.epochs)
        tl, ta = (evaluate(model, data.x_test, data.y_test, classification)
                  if test else (None, None))
        hist["test_loss"].append(tl)
        hist["test_acc"].append(ta)
        if on_epoch is not None:
            on_epoch(epoch, model, {k: v[-1] for k, v in hist.items()})

    if on_epoch is not None:  # the initial point, for trajectories
        log_epoch(0, *evaluate(model, x, y, classification))

    model.train()
    mlp_step = _MLPStep(chain, flatten, classification) if chain is not None else None
    best: list[float] = []
    sizes = [bs] * (steps_per_epoch - 1) + [n - bs * (steps_per_epoch - 1)]
    # Per-epoch buffers, written by each step in place and read once per epoch.
    losses = torch.empty(steps_per_epoch, device=x.device)
    loss_slots = losses.unbind(0)
    preds = torch.empty(n, dtype=torch.int64, device=x.device) if classification else None
    pred_slots = preds.split(bs) if preds is not None else None
    for epoch in range(1, cfg.epochs + 1):
        gnorms = torch.empty(steps_per_epoch, device=x.device) if record_grad_norm else None
        perm = torch.randperm(n, generator=gen).to(x.device) if bs < n else None
        batches = perm.split(bs) if perm is not None else None
        with torch.no_grad() if mlp_step is not None else contextlib.nullcontext():
            for s in range(steps_per_epoch):
                if batches is None:
                    xb, yb = x, y
                else:
                    idx = batches[s]
                    xb, yb = x.index_select(0, idx), y.index_select(0, idx)
                if mlp_step is not None:
                    loss, out = mlp_step(xb, yb)
                else:
                    out = forward(xb)
                    loss = loss_fn(out, yb)
                    if fused:
                        for p in params:
                            p.grad = None
                    else:
                        opt.zero_grad(set_to_none=True)
                    loss.backward()
                if gnorms is not None:
                    gnorms[s] = grad_norm(model)  # after backward(), before step()
                if mlp_step is not None:
                    opt.step(mlp_step.grads)
                elif fused:
                    grads = [p.grad for p in params]
                    if any(g is None for g in grads):  # a parameter outside the graph
                        if epoch > 1 or s > 0:
                            raise RuntimeError("a parameter lost its gradient mid-training")
                        opt, fused = make_optimizer(params, cfg), False
                        opt.step()
                    else:
                        opt.step(grads)
                else:
                    opt.step()
                loss_slots[s].copy_(loss.detach())
                if pred_slots is not None:
                    torch.argmax(out.detach(), 1, out=pred_slots[s])
        result.epochs_run = epoch
        epoch_losses = losses.tolist()  # the epoch's one host sync
        step_losses.extend(epoch_losses)
        if gnorms is not None:
            norms.append(gnorms)
        bad = [i for i, v in enumerate(epoch_losses) if not math.isfinite(v)]
        if bad:
            result.status = "diverged"
            result.diverged_step = (epoch - 1) * steps_per_epoch + bad[0] + 1
            hist["epoch"].append(epoch)
            hist["train_loss"].append(float("nan"))
            for k in ("train_acc", "test_loss", "test_acc"):
                hist[k].append(None)
            break
        # Running mean over the epoch's batches (weighted by batch size).
        train_loss = sum(v * b for v, b in zip(epoch_losses, sizes)) / n
        train_acc = None
        if preds is not None:
            y_epoch = y if perm is None else y.index_select(0, perm)
            train_acc = int((preds == y_epoch).sum()) / n
        log_epoch(epoch, train_loss, train_acc)
        if progress is not None:
            progress(epoch)
        if cfg.converge_loss is not None and train_loss < cfg.converge_loss:
            result.status, result.converged_epoch = "converged", epoch
            result.stop_rule = f"loss < {cfg.converge_loss:g}"
            break
        best.append(min(train_loss, best[-1]) if best else train_loss)
        w = cfg.converge_window
        if cfg.converge_rel is not None and len(best) > w:
            old, now = best[-1 - w], best[-1]
            if old > 0 and (old - now) / old < cfg.converge_rel:
                result.status, result.converged_epoch = "converged", epoch
                result.stop_rule = f"best loss improved < {cfg.converge_rel:g} over {w} epochs"
                break
    result.history = hist
    result.step_loss = np.asarray(step_losses, dtype=np.float32)
    if norms:
        result.grad_norm = torch.cat(norms).cpu().numpy()
    result.wall_s = time.perf_counter() - t0
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
