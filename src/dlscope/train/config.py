"""What a training run is asked to do (`TrainConfig`) and what it gives back (`TrainResult`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field


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

    def optimizer_settings(self) -> dict:
        """The optimizer's hyperparameters as `FusedOptimizer` / `torch_optimizer` take them."""
        return {"kind": self.optimizer, "lr": self.lr, "momentum": self.momentum,
                "weight_decay": self.weight_decay}


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
