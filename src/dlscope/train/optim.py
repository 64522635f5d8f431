"""The optimizers a training step uses: torch's fused Adam / SGD kernels called directly
(`FusedOptimizer`), and `torch_optimizer`, the plain `torch.optim` one for everything else."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Literal

import torch

Kind = Literal["adam", "sgd"]
# torch.optim's defaults, which the experiments use: not settable, so not silently varied.
ADAM_BETAS, ADAM_EPS = (0.9, 0.999), 1e-8


def torch_optimizer(params, *, kind: Kind, lr: float, momentum: float = 0.0,
                    weight_decay: float = 0.0) -> torch.optim.Optimizer:
    """`torch.optim.Adam` / `SGD`, fused where the parameters allow it, else foreach.

    Args:
        params: the parameters to optimize.
        kind: "adam" or "sgd".
        lr: the learning rate.
        momentum: SGD momentum (ignored by Adam).
        weight_decay: the L2 penalty.

    Returns:
        The `torch.optim.Optimizer`.

    Example:
        >>> p = torch.nn.Parameter(torch.tensor([1.0]))
        >>> opt = torch_optimizer([p], kind="sgd", lr=0.5)
        >>> p.grad = torch.tensor([2.0])
        >>> opt.step()
        >>> type(opt).__name__, p.item()  # 1 - 0.5 * 2
        ('SGD', 0.0)
    """
    params = list(params)
    fused = all(p.device.type in ("cpu", "cuda") for p in params)
    impl = {"fused": True} if fused else {"foreach": True}
    if kind == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay, **impl)
    return torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay, **impl)


class FusedOptimizer:
    """torch.optim's fused Adam / SGD kernels called directly, with the state kept here.

    Same arithmetic as `torch.optim.Adam(fused=True)` / `SGD(fused=True)`: their `step` calls
    exactly `torch._fused_adam_` / `torch._fused_sgd_` with these arguments. What it leaves out
    is the per-step Python of `Optimizer.step` (grouping, state lookups, profiler hooks), which
    costs as much as the kernel itself for the course's small models. `grads` are passed to each
    `step`, so gradients may live anywhere (autograd's fresh `.grad`, or an autograd-free step's
    preallocated buffers). `select` keeps some members, with their state. The kernels are
    elementwise, so one call over all members equals a call per member.

    Args:
        params: the tensors to update in place; may hold several members' tensors, member after
            member, `len(params) // members` each (the stacked ensemble's per-member views).
        kind: "adam" or "sgd".
        lr: the learning rate.
        momentum: SGD momentum.
        weight_decay: the L2 penalty.
        members: how many members `params` holds.

    Returns:
        The optimizer; `step(grads)` updates `params`.

    Example:
        >>> p = torch.nn.Parameter(torch.tensor([1.0, -2.0]))
        >>> q = torch.nn.Parameter(p.detach().clone())
        >>> fused = FusedOptimizer([p], kind="adam", lr=0.1)
        >>> ref = torch.optim.Adam([q], lr=0.1, fused=True)
        >>> for _ in range(3):
        ...     fused.step([2 * p.detach()])
        ...     q.grad = 2 * q.detach()
        ...     ref.step()
        >>> torch.equal(p, q)
        True
    """

    def __init__(self, params: Sequence[torch.Tensor], *, kind: Kind, lr: float,
                 momentum: float = 0.0, weight_decay: float = 0.0, members: int = 1):
        if kind not in ("adam", "sgd"):
            raise ValueError(f"optimizer kind {kind!r}: 'adam' or 'sgd'")
        if members < 1 or len(params) % members:
            raise ValueError(f"{len(params)} tensors do not split into {members} members")
        self.params = list(params)
        self.kind, self.lr, self.momentum, self.weight_decay = kind, lr, momentum, weight_decay
        self.members = members
        self.exp_avg: list[torch.Tensor] = []
        self.exp_avg_sq: list[torch.Tensor] = []
        self.momentum_buffer: list[torch.Tensor] | None = None
        if kind == "adam":
            self.exp_avg = [torch.zeros_like(p, memory_format=torch.preserve_format)
                            for p in self.params]
            self.exp_avg_sq = [torch.zeros_like(p, memory_format=torch.preserve_format)
                               for p in self.params]
            # torch.optim keeps one float32 step tensor per parameter, all equal: one suffices.
            self.step_count = torch.zeros((), dtype=torch.float32, device=self.params[0].device)
            self.steps = [self.step_count] * len(self.params)

    @staticmethod
    def supports(params: Sequence[torch.Tensor]) -> bool:
        """Whether the fused kernels take these tensors (one float dtype, one cpu/cuda device)."""
        if not params:
            return False
        p0 = params[0]
        return (p0.device.type in ("cpu", "cuda") and p0.dtype in (torch.float32, torch.float64)
                and all(p.device == p0.device and p.dtype == p0.dtype for p in params))

    @torch.no_grad()
    def step(self, grads: list[torch.Tensor]) -> None:
        if self.kind == "adam":
            self.step_count.add_(1)
            torch._fused_adam_(self.params, grads, self.exp_avg, self.exp_avg_sq, [],
                               self.steps, amsgrad=False, lr=self.lr,
                               beta1=ADAM_BETAS[0], beta2=ADAM_BETAS[1],
                               weight_decay=self.weight_decay, eps=ADAM_EPS, maximize=False,
                               grad_scale=None, found_inf=None)
            return
        first = self.momentum != 0 and self.momentum_buffer is None
        if first:
            self.momentum_buffer = [torch.empty_like(g) for g in grads]
        torch._fused_sgd_(self.params, grads,
                          [] if self.momentum == 0 else self.momentum_buffer,
                          weight_decay=self.weight_decay, momentum=self.momentum, lr=self.lr,
                          dampening=0.0, nesterov=False, maximize=False, is_first_step=first,
                          grad_scale=None, found_inf=None)

    def select(self, members: Sequence[int], params: Sequence[torch.Tensor]) -> FusedOptimizer:
        """The optimizer of only `members` (indices into this one's members, in the new order),
        stepping `params` (their tensors, wherever they now live), each member's state and
        step count carried over."""
        per = len(self.params) // self.members
        if len(params) != per * len(members):
            raise ValueError(f"{len(params)} tensors given for {len(members)} members of {per}")
        new = FusedOptimizer(params, kind=self.kind, lr=self.lr, momentum=self.momentum,
                             weight_decay=self.weight_decay, members=len(members))
        sel = [m * per + k for m in members for k in range(per)]
        if self.kind == "adam":
            new.exp_avg = [self.exp_avg[i] for i in sel]
            new.exp_avg_sq = [self.exp_avg_sq[i] for i in sel]
            new.step_count = self.step_count
            new.steps = [new.step_count] * len(new.params)
        elif self.momentum_buffer is not None:
            new.momentum_buffer = [self.momentum_buffer[i] for i in sel]
        return new


Tensors = Callable[[list[int]], list[torch.Tensor]]  # member positions -> their tensors


class MemberOptimizers:
    """The optimizers of members stepped together: one `FusedOptimizer` per group of
    members that share hyperparameters (the kernel takes one scalar lr).

    Args:
        settings: each member's optimizer settings (`TrainConfig.optimizer_settings()`).
        tensors_of: member positions -> those members' parameter tensors, member after member.

    Returns:
        The optimizers; `step(grads_of)` updates every member, `keep` drops members.

    Example:
        >>> w = [torch.zeros(1), torch.zeros(1), torch.zeros(1)]
        >>> opts = MemberOptimizers([dict(kind="sgd", lr=0.1), dict(kind="sgd", lr=1.0),
        ...                          dict(kind="sgd", lr=0.1)], lambda js: [w[j] for j in js])
        >>> opts.groups
        {(('kind', 'sgd'), ('lr', 0.1)): [0, 2], (('kind', 'sgd'), ('lr', 1.0)): [1]}
        >>> opts.step(lambda js: [torch.ones(1) for _ in js])
        >>> [t.item() for t in w]
        [-0.1, -1.0, -0.1]
    """

    def __init__(self, settings: Sequence[dict], tensors_of: Tensors):
        self.groups: dict[tuple, list[int]] = {}  # hyperparameters -> member positions
        for j, member_settings in enumerate(settings):
            self.groups.setdefault(tuple(sorted(member_settings.items())), []).append(j)
        self.opts = {key: FusedOptimizer(tensors_of(js), members=len(js), **dict(key))
                     for key, js in self.groups.items()}

    def step(self, grads_of: Tensors) -> None:
        for key, opt in self.opts.items():
            opt.step(grads_of(self.groups[key]))

    def keep(self, positions: Sequence[int], tensors_of: Tensors) -> None:
        """Go on with the members at `positions` only, renumbered in that order, each with its
        state; `tensors_of` gives their tensors at the new positions."""
        new_position = {old: new for new, old in enumerate(positions)}
        groups, opts = {}, {}
        for key, js in self.groups.items():
            kept = [i for i, j in enumerate(js) if j in new_position]  # index in the group
            if kept:
                groups[key] = [new_position[js[i]] for i in kept]
                opts[key] = self.opts[key].select(kept, tensors_of(groups[key]))
        self.groups, self.opts = groups, opts
