"""Per-member bookkeeping the training loop keeps: when a run stops (`Stopping`) and what it
recorded on the way (`History`). One of each per member; the loop calls each method in one
place, so every trainer (one model, stacked ensemble, CNN) applies the same rules.

Stopping rules, in the order they are checked after an epoch; the first that fires ends the
member's training and `TrainResult` records which and when:
- a non-finite step loss in the epoch: status "diverged", with the (1-based) step;
- `converge_loss`: the epoch's training loss below it ("loss < threshold");
- `converge_rel`: the best loss so far improved by less than this fraction over the last
  `converge_window` epochs (a plateau);
- `epochs`: the budget (status stays "ok").
"""

from __future__ import annotations

import math

import numpy as np
import torch

from dlscope.train.config import TrainConfig, TrainResult

HISTORY_KEYS = ("epoch", "train_loss", "train_acc", "test_loss", "test_acc")


class Stopping:
    """One member's stopping and divergence rules, and the outcome once one fired.

    Args:
        cfg: the member's configuration (`converge_loss`, `converge_rel`, `converge_window`,
            `epochs`).

    Returns:
        The rules; `diverged` and `stops` are asked after every epoch, then `status`,
        `stop_rule`, `converged_epoch` and `diverged_step` tell the outcome.

    Example:
        >>> s = Stopping(TrainConfig(epochs=5, converge_loss=0.1))
        >>> s.stops(1, 0.5), s.stops(2, 0.05), s.status, s.stop_rule, s.converged_epoch
        (False, True, 'converged', 'loss < 0.1', 2)
        >>> d = Stopping(TrainConfig())
        >>> d.diverged(2, [0.3, float("nan")]), d.status, d.diverged_step  # epoch 2 of 2 steps
        (True, 'diverged', 4)
    """

    def __init__(self, cfg: TrainConfig):
        self.cfg = cfg
        self.best: list[float] = []  # best training loss so far, one entry per epoch
        self.status, self.stop_rule = "ok", None
        self.converged_epoch: int | None = None
        self.diverged_step: int | None = None

    def diverged(self, epoch: int, step_losses: list[float]) -> bool:
        """Whether a loss of this epoch's steps is not finite (NaN or inf); records the step."""
        bad = next((i for i, v in enumerate(step_losses) if not math.isfinite(v)), None)
        if bad is None:
            return False
        self.status = "diverged"
        self.diverged_step = (epoch - 1) * len(step_losses) + bad + 1
        return True

    def stops(self, epoch: int, train_loss: float) -> bool:
        """Whether the member stops after `epoch`, whose mean training loss was `train_loss`."""
        cfg = self.cfg
        if cfg.converge_loss is not None and train_loss < cfg.converge_loss:
            return self._converged(epoch, f"loss < {cfg.converge_loss:g}")
        self.best.append(min(train_loss, self.best[-1]) if self.best else train_loss)
        w = cfg.converge_window
        if cfg.converge_rel is not None and len(self.best) > w:
            old, now = self.best[-1 - w], self.best[-1]
            if old > 0 and (old - now) / old < cfg.converge_rel:
                return self._converged(
                    epoch, f"best loss improved < {cfg.converge_rel:g} over {w} epochs")
        return epoch >= cfg.epochs

    def _converged(self, epoch: int, rule: str) -> bool:
        self.status, self.converged_epoch, self.stop_rule = "converged", epoch, rule
        return True


class History:
    """One member's record: per-epoch metrics, per-step losses (and gradient norms), time.

    Args:
        cfg: the member's configuration (`eval_test`, `eval_every`, `epochs`).

    Returns:
        The empty record; the loop fills it, `result(stopping)` turns it into a `TrainResult`.

    Example:
        >>> h = History(TrainConfig(epochs=2, eval_every=2))
        >>> h.steps(1, [0.9, 0.7], None)
        >>> h.tests(1), h.tests(2)
        (False, True)
        >>> h.epoch(1, 0.8, 0.5, None, None)
        {'epoch': 1, 'train_loss': 0.8, 'train_acc': 0.5, 'test_loss': None, 'test_acc': None}
        >>> r = h.result(Stopping(h.cfg))
        >>> r.epochs_run, r.step_loss.tolist(), r.final("train_loss")
        (1, [0.9, 0.7], 0.8)
    """

    def __init__(self, cfg: TrainConfig):
        self.cfg = cfg
        self.rows: dict[str, list] = {k: [] for k in HISTORY_KEYS}
        self.step_loss: list[float] = []
        self.grad_norm: list[torch.Tensor] = []
        self.epochs_run = 0
        self.wall_s = 0.0

    def steps(self, epoch: int, losses: list[float], norms: torch.Tensor | None) -> None:
        """The losses (and gradient norms) of epoch `epoch`'s steps."""
        self.epochs_run = epoch
        self.step_loss.extend(losses)
        if norms is not None:
            self.grad_norm.append(norms)

    def tests(self, epoch: int) -> bool:
        """Whether the test set is evaluated after `epoch` (every `eval_every`, and the last)."""
        return self.cfg.eval_test and (epoch % self.cfg.eval_every == 0 or
                                       epoch == self.cfg.epochs)

    def epoch(self, epoch: int, train_loss: float, train_acc: float | None,
              test_loss: float | None, test_acc: float | None) -> dict:
        """Append one epoch's row; returns it (as `on_epoch` callbacks receive it)."""
        row = dict(zip(HISTORY_KEYS, (epoch, train_loss, train_acc, test_loss, test_acc)))
        for k, v in row.items():
            self.rows[k].append(v)
        return row

    def result(self, stopping: Stopping) -> TrainResult:
        norms = (torch.cat(self.grad_norm).cpu().numpy().astype(np.float32)
                 if self.grad_norm else None)
        return TrainResult(status=stopping.status, epochs_run=self.epochs_run,
                           converged_epoch=stopping.converged_epoch,
                           stop_rule=stopping.stop_rule, diverged_step=stopping.diverged_step,
                           history=self.rows, step_loss=np.asarray(self.step_loss, np.float32),
                           grad_norm=norms, wall_s=self.wall_s)
