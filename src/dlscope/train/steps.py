"""One training step, three ways, behind one interface (`Step`), and `choose_step`, which
picks the fastest one that computes what plain autograd would (bit for bit for MLPs, to float
tolerance for CNNs on the CPU).

- `AutogradStep`: any model: forward, `loss.backward()`, optimizer. CNNs (channels-last on
  the CPU: equal to the reference to float tolerance) and models with hooks take it; so does
  every model under `fast=False` (the reference for the others).
- `MLPStep`: a plain MLP (`fastpath.mlp_chain`) without autograd: forward with addmm, the
  backward written out with the ATen kernels autograd would call, gradients into
  preallocated `.grad` tensors. Same numbers as `AutogradStep`, bit for bit on this build.
- `StackedMLPStep`: E same-shape plain MLPs at once (`stacked.StackedMLP`), with baddbmm and
  bmm (narrow nets on long batches with the batch as the last dimension,
  `fastpath.batch_last_wins`). A member equals its solo run to float tolerance, not bit for
  bit: batched and single matmuls sum in different orders.

Per-step overhead, not arithmetic, dominates small trainings on a CPU, so the fast steps do
only what they must: no autograd graph, the optimizer's fused kernel called directly
(`optim.FusedOptimizer`), the loss and argmax written into the loop's preallocated buffers;
and a small step runs on one thread (`threads.step_threads`), which keeps it fast when
other processes compete for the cores.

A batch is ``[members, B, ...]`` (the loop's layout for every step); a step writes each
member's mean loss into `loss_out` ``[members]`` and, for classification, its argmax into
`pred_out` ``[members, B]``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import torch
from torch import nn

from dlscope.train import cnnfast
from dlscope.train.evaluation import evaluate, grad_norm, loss_function
from dlscope.train.fastpath import (
    batch_last_wins,
    loss_and_grad,
    mlp_backward,
    mlp_chain,
    mlp_forward,
    stacked_loss_and_grad,
)
from dlscope.train.grouped import GroupedCNNStep, groupable
from dlscope.train.optim import FusedOptimizer, MemberOptimizers, torch_optimizer
from dlscope.train.stacked import StackedMLP, evaluate_stacked
from dlscope.train.threads import step_threads


class Step(Protocol):
    """What the training loop needs from a step: members are addressed by their position."""

    size: int  # members trained together
    autograd: bool  # whether the loop runs the step with autograd enabled

    def forward_backward(self, xb: torch.Tensor, yb: torch.Tensor, loss_out: torch.Tensor,
                         pred_out: torch.Tensor | None) -> None:
        """Losses and gradients of one batch; the parameters are not changed yet."""

    def grad_norms(self) -> torch.Tensor:
        """Each member's full-gradient L2 norm, between `forward_backward` and `update`."""

    def update(self) -> None:
        """The optimizer step."""

    def evaluate(self, x: torch.Tensor, y: torch.Tensor) -> tuple[list, list]:
        """Each member's (loss, accuracy or None) over a whole set, in eval mode."""

    def module(self, j: int) -> nn.Module:
        """Member j's module, holding its current parameters."""

    def keep(self, positions: Sequence[int]) -> None:
        """Go on with the members at `positions` only (stopped members leave)."""

    def threads(self, batch_size: int) -> int | None:
        """The intra-op threads the loop runs this step on (`threads.step_threads`; None:
        the caller's setting)."""


class _OneModel:
    """What the one-model steps share: the model trains in place; it is its own record."""

    size = 1

    def __init__(self, model: nn.Module, classification: bool):
        self.model, self.classification = model, classification
        model.train()

    def grad_norms(self) -> torch.Tensor:
        return grad_norm(self.model)

    def evaluate(self, x: torch.Tensor, y: torch.Tensor) -> tuple[list, list]:
        loss, acc = evaluate(self.model, x, y, self.classification)
        return [loss], [acc]

    def module(self, j: int) -> nn.Module:
        return self.model

    def keep(self, positions: Sequence[int]) -> None:
        if list(positions) != [0]:
            raise ValueError(f"a one-model step keeps member 0, not {list(positions)}")

    def threads(self, batch_size: int) -> int | None:
        return None


class AutogradStep(_OneModel):
    """Forward, `loss.backward()`, then the fused optimizer (or `torch.optim` where the fused
    kernel does not apply, or with `fused=False`). `compile=True` runs the model through
    `torch.compile` (opt-in; docs/PERFORMANCE.md has the measurement). `channels_last=True`
    stores a CNN's convolution weights channels-last, so oneDNN convolves and pools in NHWC,
    and runs a one-channel first convolution into 16 or more channels as one GEMM
    (`cnnfast.FirstConv`); on the CPU a
    cnn-b step took 16 instead of 26 ms (docs/PERFORMANCE.md), the same numbers to float
    tolerance, not bit for bit: the convolutions sum in another order."""

    autograd = True

    def __init__(self, model: nn.Module, classification: bool, optimizer: dict, *,
                 fused: bool = True, compile: bool = False, channels_last: bool = False):
        super().__init__(model, classification)
        if channels_last:  # in place: the parameters stay the same tensors' data
            model.to(memory_format=torch.channels_last)
        self.params = list(model.parameters())
        self.settings = optimizer
        self.fused = fused and FusedOptimizer.supports(self.params)
        self.opt = (FusedOptimizer(self.params, **optimizer) if self.fused else
                    torch_optimizer(self.params, **optimizer))
        self.forward = (torch.compile(model) if compile else
                        (channels_last and cnnfast.forward_of(model)) or model)
        self.loss_fn = loss_function(classification)
        self.updates = 0

    def forward_backward(self, xb, yb, loss_out, pred_out) -> None:
        out = self.forward(xb[0])
        loss = self.loss_fn(out, yb[0])
        for p in self.params:
            p.grad = None
        loss.backward()
        loss_out.copy_(loss.detach())
        if pred_out is not None:
            torch.argmax(out.detach(), 1, out=pred_out[0])

    def update(self) -> None:
        if self.fused:
            grads = [p.grad for p in self.params]
            if all(g is not None for g in grads):
                self.opt.step(grads)
            elif self.updates:
                raise RuntimeError("a parameter lost its gradient mid-training")
            else:  # a parameter outside the graph: torch.optim skips it, the fused call can't
                self.opt, self.fused = torch_optimizer(self.params, **self.settings), False
                self.opt.step()
        else:
            self.opt.step()
        self.updates += 1


class MLPStep(_OneModel):
    """A plain MLP's step without autograd; gradients land in the parameters' `.grad`."""

    autograd = False

    def __init__(self, model: nn.Module, classification: bool, optimizer: dict):
        super().__init__(model, classification)
        chain = mlp_chain(model)
        if chain is None:
            raise ValueError("MLPStep takes a plain MLP (see fastpath.mlp_chain)")
        self.flatten = type(model[0]) is nn.Flatten
        self.W = [lin.weight.detach() for lin, _ in chain]
        self.b = [lin.bias.detach() for lin, _ in chain]
        self.acts = [act for _, act in chain]
        for lin, _ in chain:  # preallocated .grad, written in place every step
            for p in (lin.weight, lin.bias):
                p.grad = torch.empty_like(p)
        self.gW = [lin.weight.grad for lin, _ in chain]
        self.gb = [lin.bias.grad for lin, _ in chain]
        self.grads = [g for pair in zip(self.gW, self.gb) for g in pair]
        self.one = torch.ones((), dtype=self.W[0].dtype, device=self.W[0].device)
        self.opt = FusedOptimizer(list(model.parameters()), **optimizer)

    def forward_backward(self, xb, yb, loss_out, pred_out) -> None:
        a = xb[0].flatten(1) if self.flatten else xb[0]
        out, saved = mlp_forward(self.W, self.b, self.acts, a)
        loss, g = loss_and_grad(out, yb[0], self.classification, self.one)
        mlp_backward(self.W, self.acts, saved, g, self.gW, self.gb)
        loss_out.copy_(loss)
        if pred_out is not None:
            torch.argmax(out, 1, out=pred_out[0])

    def update(self) -> None:
        self.opt.step(self.grads)

    def threads(self, batch_size: int) -> int | None:
        return step_threads(self.W, batch_size)


class StackedMLPStep:
    """E same-shape plain MLPs stepped as one (`StackedMLP`); each member's optimizer update
    is the fused kernel's on its own parameter views, one call per group of members that
    share hyperparameters (the kernel takes one scalar lr). The members' modules receive
    their parameters when `module(j)` is asked for."""

    autograd = False

    def __init__(self, members: Sequence[nn.Module], classification: bool,
                 optimizers: Sequence[dict]):
        self.stacked = st = StackedMLP(members)
        self.classification = classification
        self.one = torch.ones((), dtype=st.W[0].dtype, device=st.W[0].device)
        self.opt = MemberOptimizers(optimizers, self._params)
        self._new_grads()

    @property
    def size(self) -> int:
        return self.stacked.size

    def _params(self, positions: Sequence[int], tensors=None) -> list[torch.Tensor]:
        return [t for j in positions for t in self.stacked.member_tensors(j, tensors)]

    def _new_grads(self) -> None:
        self.gW = [torch.empty_like(w) for w in self.stacked.W]
        self.gb = [torch.empty_like(b) for b in self.stacked.b]
        self.grads = {tuple(js): self._params(js, [self.gW, self.gb])  # views, made once
                      for js in self.opt.groups.values()}

    def forward_backward(self, xb, yb, loss_out, pred_out) -> None:
        st = self.stacked
        a = xb.reshape(*xb.shape[:2], -1) if st.flatten else xb
        last = batch_last_wins(st.W, a.shape[1])  # then [E, features, B] throughout
        out, saved = mlp_forward(st.W, st.b, st.acts, a.mT if last else a, batch_last=last)
        if last:
            out = out.mT.contiguous()
        g = stacked_loss_and_grad(out, yb, self.classification, self.one, loss_out)
        mlp_backward(st.W, st.acts, saved, g.mT if last else g, self.gW, self.gb,
                     batch_last=last)
        if pred_out is not None:
            torch.argmax(out, 2, out=pred_out)

    def grad_norms(self) -> torch.Tensor:
        E = self.size
        per = [torch.linalg.vector_norm(g.reshape(E, -1), dim=1) for g in (*self.gW, *self.gb)]
        return torch.linalg.vector_norm(torch.stack(per), dim=0)

    def update(self) -> None:
        self.opt.step(lambda js: self.grads[tuple(js)])

    def threads(self, batch_size: int) -> int | None:
        return step_threads(self.stacked.W, batch_size)

    def evaluate(self, x: torch.Tensor, y: torch.Tensor) -> tuple[list, list]:
        return evaluate_stacked(self.stacked, x, y, self.classification)

    def module(self, j: int) -> nn.Module:
        return self.stacked.copy_to(j, self.stacked.templates[j])

    def keep(self, positions: Sequence[int]) -> None:
        self.stacked.select(positions)
        self.opt.keep(positions, self._params)
        self._new_grads()


def stackable(members: Sequence[nn.Module], x: torch.Tensor) -> bool:
    """Whether `StackedMLPStep` can train these members on inputs like `x`: plain MLPs of one
    shape, in `x`'s dtype, on a device the fused optimizer takes."""
    chains = [mlp_chain(m) for m in members]
    if any(c is None for c in chains):
        return False
    shapes = {tuple((lin.weight.shape, act) for lin, act in c) for c in chains}
    flatten = {type(m[0]) is nn.Flatten for m in members}
    params = [p for m in members for p in m.parameters()]
    return (len(shapes) == 1 and len(flatten) == 1 and (x.dim() == 2 or flatten == {True})
            and params[0].dtype == x.dtype and FusedOptimizer.supports(params))


def choose_step(members: Sequence[nn.Module], classification: bool, x: torch.Tensor,
                optimizers: Sequence[dict], *, fast: bool = True,
                compile: bool = False, group_cnns: bool = False) -> list[Step]:
    """The steps that train `members` (each with its optimizer settings) on inputs like `x`:
    one `StackedMLPStep` for two or more stackable MLPs, else one step per member (members
    one by one: each then equals its solo run bit for bit), `MLPStep` where it applies.

    CNN members go one by one unless `group_cnns=True` asks for one `grouped.GroupedCNNStep`
    (equal to the solo runs to float tolerance): their steps are arithmetic-bound, and 3 cnn-b
    members grouped measured no faster than one by one on the CPU (docs/PERFORMANCE.md); on
    the CPU they train channels-last. `fast=False` forces `AutogradStep`
    with `torch.optim` and the module's own memory format (the reference path)."""
    if fast and not compile and len(members) > 1 and stackable(members, x):
        return [StackedMLPStep(members, classification, optimizers)]
    if fast and not compile and group_cnns and groupable(members, x):
        return [GroupedCNNStep(members, classification, optimizers)]
    steps: list[Step] = []
    for m, settings in zip(members, optimizers):
        if fast and not compile and stackable([m], x):
            steps.append(MLPStep(m, classification, settings))
        else:
            steps.append(AutogradStep(m, classification, settings, fused=fast and not compile,
                                      compile=compile,
                                      channels_last=fast and not compile and _cpu_cnn(m, x)))
    return steps


def _cpu_cnn(model: nn.Module, x: torch.Tensor) -> bool:
    """A model with 2-D convolutions training on the CPU on 4-D inputs: the channels-last case."""
    return (x.device.type == "cpu" and x.dim() == 4
            and any(isinstance(m, nn.Conv2d) for m in model.modules()))
