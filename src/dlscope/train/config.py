"""What a training run is asked to do (`TrainConfig`) and what it gives back (`TrainResult`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field


class TrainConfig(BaseModel):
    """What a training run is asked to do: optimizer, schedule and stopping rules (a pydantic
    model; unknown fields are rejected).

    Args:
        optimizer: "adam" or "sgd".
        lr: the learning rate (> 0).
        momentum: SGD momentum, in [0, 1).
        weight_decay: the L2 penalty (>= 0).
        batch_size: rows per step; None trains full batch.
        epochs: the epoch budget (>= 1).
        converge_loss: stop once an epoch's training loss is below this.
        converge_rel: stop when the best loss improved by less than this fraction over the
            last `converge_window` epochs.
        converge_window: the epochs the plateau rule looks back.
        eval_every: evaluate the test set every k epochs (and after the last).
        eval_test: whether to evaluate the test set at all.

    Returns:
        The validated configuration; an invalid value raises `pydantic.ValidationError`.

    Example:
        >>> cfg = TrainConfig(optimizer="sgd", lr=0.1, momentum=0.9)
        >>> cfg.optimizer_settings()
        {'kind': 'sgd', 'lr': 0.1, 'momentum': 0.9, 'weight_decay': 0.0}
        >>> try:
        ...     TrainConfig(lr=0)
        ... except ValueError:
        ...     print("rejected")
        rejected
    """
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

    def optimizer_settings(self) -> dict:
        """The optimizer's hyperparameters as `FusedOptimizer` / `torch_optimizer` take them."""
        return {"kind": self.optimizer, "lr": self.lr, "momentum": self.momentum,
                "weight_decay": self.weight_decay}


@dataclass
class TrainResult:
    """What a training run gives back: how it ended, its per-epoch history and per-step curves.

    Args:
        status: "ok" (the epoch budget ran out), "converged" or "diverged".
        epochs_run: the epochs trained.
        converged_epoch: the epoch a convergence rule fired, else None.
        stop_rule: which rule stopped the run (e.g. "loss < 0.01"), else None.
        diverged_step: the 1-based step whose loss was not finite, else None.
        history: per-epoch lists under `rules.HISTORY_KEYS` (None where not evaluated).
        step_loss: every step's mean training loss, float32.
        grad_norm: every step's full-gradient L2 norm when recorded, else None.
        wall_s: the run's seconds (its share, in an ensemble).

    Returns:
        The record; `final(key)` gives the last non-None value of a history column (NaN if none).

    Example:
        >>> r = TrainResult(status="ok", epochs_run=3, history={"train_loss": [0.9, 0.5, None]})
        >>> r.final("train_loss"), r.final("test_loss")
        (0.5, nan)
    """
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
