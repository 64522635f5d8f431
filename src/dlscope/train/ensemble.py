"""Ensembles: N runs of one architecture, each with its own seed (initialization and batch
order) and optionally its own optimizer settings, trained by the fastest exact route.

`train_ensemble` asks `steps.choose_step` for the steps: two or more same-shape plain MLPs are
stacked into one `StackedMLPStep` (one baddbmm/bmm per layer for all members; each member then
equals its solo run to float tolerance, not bit for bit, because batched and single matmuls
sum in different orders); anything else (CNNs, hooked models, mixed shapes) trains member by
member through the same loop, each equal to its solo run bit for bit, unless `group_cnns=True`
asks for same-shape CNNs as one grouped network (`train.grouped`, float tolerance). Either
way member e's result is what `engine.train(members[e], data, cfgs[e], seeds[e], ...)` would
give:

- initialization: a member is built as ``engine.seeded_model(lambda: models.build(spec), seed)``
  (or passed in built);
- data order: member e's own generator seeded with ``seeds[e]``, one ``randperm`` per epoch;
- optimizer: the fused Adam / SGD kernel on each member's parameters, one call per group of
  members sharing hyperparameters (the kernel takes one scalar lr);
- stopping: each member's own rules (`rules.Stopping`); a stopped member leaves the stack and
  the others go on.

    nets = [engine.seeded_model(lambda: models.build(spec), s) for s in seeds]
    results = train_ensemble(nets, ds, cfgs, seeds)      # trains nets in place
    results[i]                                            # an engine.TrainResult
    results = train_ensemble([spec] * 8, ds, cfg, seeds)  # or let it build them:
    results.models                                        # ... the trained nn.Modules
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

from torch import nn

from dlscope import models
from dlscope.train.config import TrainConfig, TrainResult
from dlscope.train.engine import seeded_model
from dlscope.train.fastpath import tune_malloc
from dlscope.train.loop import OnEpoch, fit
from dlscope.train.stacked import StackedMLP, evaluate_stacked, unstack
from dlscope.train.steps import choose_step

__all__ = ["EnsembleResults", "StackedMLP", "evaluate_stacked", "train_ensemble",
           "unstack"]


class EnsembleResults(list):
    """A list of per-member `TrainResult`s plus the trained modules (`.models`) and the
    ensemble's total wall time (`.wall_s`).

    Args:
        results: the members' `TrainResult`s, in the members' order (as `list` takes them).

    Returns:
        The list, to which `train_ensemble` sets `models` and `wall_s`.

    Example:
        >>> out = EnsembleResults([TrainResult(status="ok", epochs_run=1)])
        >>> out.models, out.wall_s = [nn.Identity()], 0.5
        >>> len(out), out[0].status, len(out.models)
        (1, 'ok', 1)
    """

    models: list[nn.Module]
    wall_s: float


def _per_member(value, E: int, what: str) -> list:
    if isinstance(value, (list, tuple)):
        if len(value) != E:
            raise ValueError(f"{what}: {len(value)} given for {E} members")
        return list(value)
    return [value] * E


# long: a docstring with every argument and a doctest; the body itself is 35 lines
def train_ensemble(members: Sequence[nn.Module | models.MLPSpec | str | dict], data,
                   cfgs: TrainConfig | Sequence[TrainConfig], seeds: Sequence[int], *,
                   on_epoch: Sequence[OnEpoch | None] | OnEpoch | None = None,
                   record_grad_norm: bool = False,
                   progress: Callable[[int], None] | None = None,
                   group_cnns: bool = False, closed_form: bool = False) -> EnsembleResults:
    """Train N members of one architecture; member e's result equals `engine.train(members[e],
    data, cfgs[e], seeds[e], ...)` (to float tolerance when stacked, else exactly).

    Args:
        members: built modules (trained in place, like engine.train) or specs (built with
            `seeded_model(build(spec), seed)` on the data's device).
        data: a dlscope Dataset.
        cfgs: one TrainConfig or one per member; all must resolve to the same batch size.
        seeds: one seed per member (its initialization when built here, and its batch order).
        on_epoch: one engine-style callback `(epoch, model, metrics)` per member (or None), or
            a single one given to every member; it sees that member's module holding the
            current parameters.
        record_grad_norm: also record every step's full-gradient norm.
        progress: called with the epoch number after every epoch of the loop.
        group_cnns: step same-shape CNN members as one grouped network (`train.grouped`; equal
            to their solo runs to float tolerance; off by default, see docs/PERFORMANCE.md).
        closed_form: ``1 -> H -> 1`` ReLU MLPs under MSE take `onehidden.OneHiddenStep`
            (as `engine.train(closed_form=True)`; each member equals that solo run bit for bit).

    Returns:
        The `EnsembleResults`: per-member `TrainResult`s (each `wall_s` the member's share of
        the ensemble's wall time), the trained modules and the total wall time.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> from dlscope.data.dataset import Dataset
        >>> x = torch.randn(32, 4, generator=torch.Generator().manual_seed(0))
        >>> ds = Dataset.from_tensors(x, (x[:, 0] > 0).long())
        >>> build = lambda: nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Linear(16, 2))
        >>> from dlscope.train.engine import train
        >>> cfg = TrainConfig(lr=0.05, epochs=2)
        >>> res = train_ensemble([seeded_model(build, s) for s in (0, 1)], ds, cfg, seeds=[0, 1])
        >>> solo = train(seeded_model(build, 1), ds, cfg, seed=1)
        >>> len(res), len(res.models)
        (2, 2)
        >>> abs(res[1].final("train_loss") - solo.final("train_loss")) < 1e-5
        True
    """
    t0 = time.perf_counter()
    tune_malloc()
    seeds = [int(s) for s in seeds]
    E = len(seeds)
    cfgs = _per_member(cfgs, E, "cfgs")
    callbacks = _per_member(on_epoch, E, "on_epoch")
    if E == 0:
        raise ValueError("an ensemble needs at least one member")
    if len(members) != E:
        raise ValueError(f"members: {len(members)} given for {E} seeds")
    x = data.x_train
    nets = [m if isinstance(m, nn.Module) else
            seeded_model(lambda m=m: models.build(models.parse_model(m)), s).to(x.device)
            for m, s in zip(members, seeds)]
    sizes = {len(x) if c.batch_size is None else min(c.batch_size, len(x)) for c in cfgs}
    if len(sizes) != 1:
        raise ValueError(f"ensemble members must share a batch size, got {sorted(sizes)}")
    bs = sizes.pop()
    steps = choose_step(nets, data.n_classes is not None, x,
                        [c.optimizer_settings() for c in cfgs], group_cnns=group_cnns,
                        closed_form=closed_form)
    results: list[TrainResult] = []
    for step in steps:  # one stacked step for all members, or one step per member
        part = slice(len(results), len(results) + step.size)
        results += fit(step, data, cfgs[part], seeds[part], bs, callbacks[part],
                       record_grad_norm=record_grad_norm, progress=progress)
    out = EnsembleResults(results)
    out.models = nets
    out.wall_s = time.perf_counter() - t0
    return out
