"""One training step, three ways, behind one interface (`Step`), and `choose_step`, which
picks the fastest one that computes what plain autograd would (bit for bit for MLPs, to float
tolerance for CNNs on the CPU).

- `AutogradStep`: any model: forward, `loss.backward()`, optimizer. CNNs (channels-last on
  the CPU: equal to the reference to float tolerance) and models with hooks take it; so does
  every model under `fast=False` (the reference for the others).
- `MLPStep`: a plain MLP (`fastpath.mlp_chain`) without autograd: forward with addmm, the
  backward written out with the ATen kernels autograd would call, gradients into
  preallocated `.grad` tensors. Same numbers as `AutogradStep`, bit for bit on this build.
- `stacked.StackedMLPStep`: E same-shape plain MLPs at once (`stacked.StackedMLP`), with baddbmm and
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
from dlscope.train.evaluation import CNN_EVAL_BATCH, evaluate, grad_norm, loss_function
from dlscope.train.fastpath import loss_and_grad, mlp_backward, mlp_chain, mlp_forward
from dlscope.train.grouped import GroupedCNNStep, groupable
from dlscope.train.onehidden import OneHiddenStep, applies
from dlscope.train.optim import FusedOptimizer, torch_optimizer
from dlscope.train.stacked import StackedMLPStep
from dlscope.train.threads import step_threads


class Step(Protocol):
    """What the training loop needs from a step: members are addressed by their position.

    Args:
        (per method) xb, yb: a batch ``[members, B, ...]``; loss_out ``[members]`` and
        pred_out ``[members, B]`` (or None): where `forward_backward` writes each member's mean
        loss and argmax; j: a member's position; positions: the members to keep.

    Returns:
        (per method) `grad_norms`: ``[members]``; `evaluate`: (losses, accuracies);
        `module`: the member's module; `threads`: the loop's intra-op threads or None.

    Example:
        >>> net = nn.Sequential(nn.Linear(3, 8), nn.ReLU(), nn.Linear(8, 2))
        >>> [step] = choose_step([net], True, torch.zeros(1, 3), [dict(kind="sgd", lr=0.1)])
        >>> step.size, step.autograd
        (1, False)
        >>> xb, yb, loss = torch.randn(1, 16, 3), torch.randint(0, 2, (1, 16)), torch.empty(1)
        >>> step.forward_backward(xb, yb, loss, None)
        >>> before = loss.item()
        >>> step.update()
        >>> step.forward_backward(xb, yb, loss, None)
        >>> loss.item() < before
        True
    """

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
    eval_batch = 8192  # rows per forward pass of `evaluate` (engine.evaluate's default)

    def __init__(self, model: nn.Module, classification: bool):
        self.model, self.classification = model, classification
        model.train()

    def grad_norms(self) -> torch.Tensor:
        return grad_norm(self.model)

    def evaluate(self, x: torch.Tensor, y: torch.Tensor) -> tuple[list, list]:
        loss, acc = evaluate(self.model, x, y, self.classification, batch_size=self.eval_batch)
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
    kernel does not apply, or with `fused=False`). On the CPU channels-last is the faster
    layout for CNN steps (docs/PERFORMANCE.md): the same numbers to float tolerance, not bit for
    bit, since the convolutions sum in another order.

    Args:
        model: the model, trained in place.
        classification: cross-entropy and argmax, else MSE.
        optimizer: the optimizer settings (`TrainConfig.optimizer_settings()`).
        fused: use `FusedOptimizer` where it applies.
        compile: run the model through `torch.compile` (opt-in).
        channels_last: store a CNN's convolution weights channels-last, so oneDNN convolves and
            pools in NHWC, and run a one-channel first convolution into 16 or more channels as
            one GEMM (`cnnfast.FirstConv`).

    Returns:
        The step.

    Example:
        >>> from dlscope.train.engine import seeded_model
        >>> build = lambda: nn.Sequential(nn.Linear(3, 8), nn.Tanh(), nn.Linear(8, 2))
        >>> sgd = dict(kind="sgd", lr=0.1)
        >>> a = AutogradStep(seeded_model(build, 0), True, sgd)
        >>> m = MLPStep(seeded_model(build, 0), True, sgd)
        >>> xb, yb = torch.randn(1, 16, 3), torch.randint(0, 2, (1, 16))
        >>> la, lm = torch.empty(1), torch.empty(1)
        >>> a.forward_backward(xb, yb, la, None)
        >>> m.forward_backward(xb, yb, lm, None)
        >>> torch.equal(la, lm), torch.equal(a.model[0].weight.grad, m.model[0].weight.grad)
        (True, True)
    """

    autograd = True

    def __init__(self, model: nn.Module, classification: bool, optimizer: dict, *,
                 fused: bool = True, compile: bool = False, channels_last: bool = False):
        super().__init__(model, classification)
        if channels_last:  # in place: the parameters stay the same tensors' data
            model.to(memory_format=torch.channels_last)
            self.eval_batch = CNN_EVAL_BATCH
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
    """A plain MLP's step without autograd (`fastpath`); gradients land in the parameters'
    preallocated `.grad`, the same numbers as `AutogradStep`'s.

    Args:
        model: a plain MLP (`fastpath.mlp_chain`), trained in place.
        classification: cross-entropy and argmax, else MSE.
        optimizer: the optimizer settings (`TrainConfig.optimizer_settings()`).

    Returns:
        The step.

    Example:
        >>> net = nn.Sequential(nn.Linear(3, 8), nn.ReLU(), nn.Linear(8, 2))
        >>> step = MLPStep(net, True, dict(kind="adam", lr=0.05))
        >>> xb, yb, loss = torch.randn(1, 32, 3), torch.randint(0, 2, (1, 32)), torch.empty(1)
        >>> first = None
        >>> for _ in range(5):
        ...     step.forward_backward(xb, yb, loss, None)
        ...     first = loss.item() if first is None else first
        ...     step.update()
        >>> loss.item() < first
        True
    """

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


def stackable(members: Sequence[nn.Module], x: torch.Tensor) -> bool:
    """Whether `StackedMLPStep` can train these members on inputs like `x`: plain MLPs of one
    shape, in `x`'s dtype, on a device the fused optimizer takes.

    Args:
        members: the modules.
        x: inputs like the training set's.

    Returns:
        True when they stack.

    Example:
        >>> nets = [nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2)) for _ in range(2)]
        >>> x = torch.zeros(8, 3)
        >>> stackable(nets, x), stackable(nets, x.double()), stackable([nets[0], nn.Flatten()], x)
        (True, False, False)
    """
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
                compile: bool = False, group_cnns: bool = False,
                closed_form: bool = False) -> list[Step]:
    """The steps that train `members` (each with its optimizer settings) on inputs like `x`:
    one `StackedMLPStep` for two or more stackable MLPs, else one step per member (members
    one by one: each then equals its solo run bit for bit), `MLPStep` where it applies.

    CNN members go one by one unless `group_cnns=True` asks for one `grouped.GroupedCNNStep`
    (equal to the solo runs to float tolerance; not the default: on the CPU a CNN step is
    bound by arithmetic, which grouping does not reduce, see docs/PERFORMANCE.md); on the CPU
    they train channels-last.

    Args:
        members: the modules to train.
        classification: cross-entropy, else MSE.
        x: inputs like the training set's.
        optimizers: each member's optimizer settings.
        fast: False forces `AutogradStep` with `torch.optim` and the module's own memory format
            (the reference path).
        compile: `AutogradStep` with `torch.compile`.
        group_cnns: same-shape CNNs as one `grouped.GroupedCNNStep`.
        closed_form: members that `onehidden.applies` to (``1 -> H -> 1`` ReLU MLPs under
            MSE) train together with `onehidden.OneHiddenStep`, by their breakpoints (float
            tolerance, not bit for bit, of `MLPStep`; each member bit for bit as alone;
            opt-in).

    Returns:
        The steps, covering the members in their order.

    Example:
        >>> nets = [nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2)) for _ in range(2)]
        >>> sgd = [dict(kind="sgd", lr=0.1)] * 2
        >>> [type(s).__name__ for s in choose_step(nets, True, torch.zeros(8, 3), sgd)]
        ['StackedMLPStep']
        >>> [type(s).__name__ for s in choose_step(nets, True, torch.zeros(8, 3), sgd, fast=False)]
        ['AutogradStep', 'AutogradStep']
    """
    if (fast and not compile and closed_form
            and all(applies(m, classification, x) for m in members)
            and len({m[0].weight.shape for m in members}) == 1):
        return [OneHiddenStep(members, optimizers)]
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
