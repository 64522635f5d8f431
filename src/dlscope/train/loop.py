"""The training loop: every run, one model or an ensemble, CNN or MLP, goes through `fit`.

A single run is an ensemble of one. Member e's data order is its own: a generator seeded with
`seeds[e]`, one `randperm` per epoch (so a member sees the batches its solo run sees), batches
are index slices of it (no DataLoader, no per-sample Python). Each step writes its losses and
predictions into per-epoch buffers that are read once per epoch: one host sync an epoch gives
the divergence check and the per-step loss curve. Evaluation runs in large batches under
`torch.inference_mode`.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence

import torch
from torch import nn

from dlscope.train.config import TrainConfig, TrainResult
from dlscope.train.rules import History, Stopping
from dlscope.train.steps import Step
from dlscope.train.threads import intra_op_threads

OnEpoch = Callable[[int, nn.Module, dict], None]


class BatchOrder:
    """The members' batches, step-major: step s holds ``[members, B_s]`` row indices, member
    e's rows being its own permutation's slice s (or the whole set when full batch).

    Args:
        n: the training set's rows.
        batch_size: rows per step (the last step takes the rest).
        seeds: each member's batch-order seed.
        device: where the indices live.

    Returns:
        The order; `epoch(members)` draws the next epoch's indices.

    Example:
        >>> cpu = torch.device("cpu")
        >>> order = BatchOrder(10, 4, seeds=[0, 1], device=cpu)
        >>> order.sizes
        [4, 4, 2]
        >>> rows = order.epoch([0, 1])  # member 0's rows: 0-3, 8-11, 16-17
        >>> mine = rows[[0, 1, 2, 3, 8, 9, 10, 11, 16, 17]]
        >>> torch.equal(mine, BatchOrder(10, 4, seeds=[0], device=cpu).epoch([0]))  # its solo order
        True
        >>> BatchOrder(10, 10, seeds=[0], device=cpu).epoch([0]) is None  # full batch
        True
    """

    def __init__(self, n: int, batch_size: int, seeds: Sequence[int], device: torch.device):
        self.n, self.bs, self.device = n, batch_size, device
        self.gens = [torch.Generator(device="cpu").manual_seed(int(s)) for s in seeds]
        full, last = divmod(n, batch_size)
        self.sizes = [batch_size] * full + ([last] if last else [])
        self._buffers: dict[int, tuple] = {}

    def epoch(self, members: Sequence[int]) -> torch.Tensor | None:
        """The next epoch's step-major row order for `members` (None: full batch)."""
        if self.bs >= self.n:
            return None
        A, bs, full = len(members), self.bs, self.n // self.bs
        perms = torch.stack([torch.randperm(self.n, generator=self.gens[e]) for e in members])
        perms = perms.to(self.device)
        parts = [perms[:, :full * bs].reshape(A, full, bs).transpose(0, 1).reshape(-1)]
        if full * bs < self.n:
            parts.append(perms[:, full * bs:].reshape(-1))
        return torch.cat(parts)

    def batches(self, x: torch.Tensor, y: torch.Tensor, order: torch.Tensor | None, A: int):
        """Per step, the rows ``[A, B_s, ...]`` of `x` and `y` in `order`, gathered when the
        step comes (views of `x` and `y` when full batch)."""
        if order is None:
            yield x.unsqueeze(0).expand(A, *x.shape), y.unsqueeze(0).expand(A, *y.shape)
            return
        for idx in order.split(A * self.bs):
            yield (x.index_select(0, idx).view(A, -1, *x.shape[1:]),
                   y.index_select(0, idx).view(A, -1, *y.shape[1:]))

    def buffers(self, A: int, classification: bool, grad_norms: bool):
        """An epoch's per-step losses ``[steps, A]`` and their rows, gradient norms (or None),
        and the predictions (step-major, as `accuracy` reads them) with one ``[A, B_s]`` slot
        a step (or None for regression). Losses and predictions are read before the next epoch, so
        their buffers are reused while A stays; gradient norms are kept, so they are not."""
        if A not in self._buffers:
            losses = torch.empty(len(self.sizes), A, device=self.device)
            preds = (torch.empty(A * self.n, dtype=torch.int64, device=self.device)
                     if classification else None)
            slots = ([p.view(A, -1) for p in preds.split(A * self.bs)] if classification
                     else [None] * len(self.sizes))
            self._buffers = {A: (losses, losses.unbind(0), preds, slots)}
        losses, rows, preds, slots = self._buffers[A]
        return losses, rows, torch.empty_like(losses) if grad_norms else None, preds, slots

    def mean(self, step_losses: list[float]) -> float:
        """The epoch's training loss: the steps' mean losses weighted by batch size."""
        return sum(v * b for v, b in zip(step_losses, self.sizes)) / self.n

    def accuracy(self, preds: torch.Tensor | None, y: torch.Tensor, order: torch.Tensor | None,
                 A: int) -> list[float | None]:
        """Each member's share of right predictions in the epoch (None for regression);
        `preds` are step-major like `order`."""
        if preds is None:
            return [None] * A
        hit = preds == (y.expand(A, self.n).reshape(-1) if order is None else
                        y.index_select(0, order))
        full, last = divmod(self.n, self.bs)
        count = hit[:A * self.bs * full].view(full, A, self.bs).sum((0, 2))
        if last:
            count = count + hit[A * self.bs * full:].view(A, last).sum(1)
        return [c / self.n for c in count.tolist()]


def fit(step: Step, data, cfgs: Sequence[TrainConfig], seeds: Sequence[int], batch_size: int,
        on_epoch: Sequence[OnEpoch | None], *, record_grad_norm: bool = False,
        progress: Callable[[int], None] | None = None) -> list[TrainResult]:
    """Train `step`'s members on `data` (member e with `cfgs[e]`, `seeds[e]`), in place.

    A member leaves the step when a rule of its own stops it (`rules.Stopping`); the others go
    on. The loop runs on the step's thread count (`Step.threads`: one thread for a small step).

    Args:
        step: the members' step (`steps.choose_step`).
        data: a dlscope Dataset.
        cfgs: each member's configuration.
        seeds: each member's batch-order seed.
        batch_size: rows per step, shared by the members.
        on_epoch: per member, `(epoch, module, metrics)` run after epoch 0 (before any step, so
            trajectories include the initial point) and after every epoch, or None.
        record_grad_norm: also record every step's full-gradient norm.
        progress: called with the epoch number after every epoch.

    Returns:
        One `TrainResult` per member; a result's `wall_s` is the member's share of the time
        (setup split evenly, each epoch split among the members that trained in it).

    Example:
        >>> from dlscope.data.dataset import Dataset
        >>> from dlscope.train.steps import choose_step
        >>> x = torch.randn(32, 4, generator=torch.Generator().manual_seed(0))
        >>> ds = Dataset.from_tensors(x, (x[:, 0] > 0).long())
        >>> net = nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Linear(16, 2))
        >>> cfg = TrainConfig(lr=0.05, epochs=2, batch_size=16)
        >>> [step] = choose_step([net], True, ds.x_train, [cfg.optimizer_settings()])
        >>> seen = []
        >>> [r] = fit(step, ds, [cfg], [0], 16, [lambda epoch, m, row: seen.append(epoch)])
        >>> r.epochs_run, seen, len(r.step_loss), r.final("train_loss") < r.history["train_loss"][0]
        (2, [0, 1, 2], 4, True)
    """
    with intra_op_threads(step.threads(batch_size)):
        return _fit(step, data, cfgs, seeds, batch_size, on_epoch, record_grad_norm, progress)


# long: the one training loop, kept whole so it reads in one screen
def _fit(step: Step, data, cfgs: Sequence[TrainConfig], seeds: Sequence[int], batch_size: int,
         on_epoch: Sequence[OnEpoch | None], record_grad_norm: bool,
         progress: Callable[[int], None] | None) -> list[TrainResult]:
    t_mark, x, y = time.perf_counter(), data.x_train, data.y_train
    order = BatchOrder(len(x), batch_size, seeds, x.device)
    stops, logs = [Stopping(c) for c in cfgs], [History(c) for c in cfgs]
    alive = list(range(len(cfgs)))  # members still training, in the step's order
    classification = data.n_classes is not None

    def log_epoch(epoch: int, rows: dict[int, tuple]) -> None:  # rows: e -> train loss, acc
        tested = [e for e in rows if logs[e].tests(epoch)]
        test = step.evaluate(data.x_test, data.y_test) if tested else None
        for e, train in rows.items():
            j = alive.index(e)
            tested_row = (test[0][j], test[1][j]) if e in tested else (None, None)
            metrics = logs[e].epoch(epoch, *train, *tested_row)
            if on_epoch[e] is not None:
                on_epoch[e](epoch, step.module(j), metrics)

    if any(cb is not None for cb in on_epoch):  # the initial point, for trajectories
        loss, acc = step.evaluate(x, y)
        log_epoch(0, {e: (loss[e], acc[e]) for e in alive if on_epoch[e] is not None})
    for epoch in range(1, max(c.epochs for c in cfgs) + 1):
        A, perm = len(alive), order.epoch(alive)
        losses, loss_rows, norms, preds, pred_slots = order.buffers(A, classification,
                                                                   record_grad_norm)
        with torch.set_grad_enabled(step.autograd):
            for s, (xb, yb) in enumerate(order.batches(x, y, perm, A)):
                step.forward_backward(xb, yb, loss_rows[s], pred_slots[s])
                if norms is not None:
                    norms[s] = step.grad_norms()  # after backward, before the update
                step.update()
        step_losses = losses.t().tolist()  # the epoch's one host sync
        accs = order.accuracy(preds, y, perm, A)
        rows = {}
        for j, e in enumerate(alive):
            logs[e].steps(epoch, step_losses[j], None if norms is None else norms[:, j])
            if stops[e].diverged(epoch, step_losses[j]):
                logs[e].epoch(epoch, math.nan, None, None, None)
            else:
                rows[e] = (order.mean(step_losses[j]), accs[j])
        log_epoch(epoch, rows)
        if progress is not None:
            progress(epoch)
        stopped = [e for e in alive if e not in rows or stops[e].stops(epoch, rows[e][0])]
        now = time.perf_counter()
        for e in alive:
            logs[e].wall_s += (now - t_mark) / A
        t_mark = now
        if stopped:
            for e in stopped:
                step.module(alive.index(e))  # its final parameters into its module
            keep = [j for j, e in enumerate(alive) if e not in stopped]
            alive = [alive[j] for j in keep]
            if not alive:
                break
            step.keep(keep)
    return [log.result(stop) for log, stop in zip(logs, stops)]
