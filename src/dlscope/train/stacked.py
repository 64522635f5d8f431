"""E same-shape plain MLPs as one: each layer's weights stacked into one ``[E, out, in]``
tensor, so that a step or an evaluation is one batched matmul per layer for all members
instead of E small ones, each with its own Python and dispatch overhead; and
`StackedMLPStep`, the training step (`steps.Step`) that drives a `StackedMLP`."""

from __future__ import annotations

import copy
from collections.abc import Sequence

import torch
from torch import nn

from dlscope.train.fastpath import (
    act_forward,
    batch_last_wins,
    mlp_backward,
    mlp_chain,
    mlp_forward,
    stacked_loss_and_grad,
)
from dlscope.train.optim import MemberOptimizers
from dlscope.train.threads import step_threads


class StackedMLP:
    """The parameters of E same-shape plain MLPs (see `fastpath.mlp_chain`) stacked on a new
    leading dimension: ``W[l]`` is ``[E, out, in]``, ``b[l]`` is ``[E, out]``.

    Args:
        members: the E modules (copied from; they keep their own parameters).

    Returns:
        The stack; `forward(x)` gives all members' outputs ``[E, N, out]``.

    Example:
        >>> from dlscope.train.engine import seeded_model
        >>> build = lambda: nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))
        >>> nets = [seeded_model(build, s) for s in (0, 1)]
        >>> x, y = torch.randn(5, 3), torch.tensor([0, 1, 1, 0, 1])
        >>> st = StackedMLP(nets)
        >>> st.size, tuple(st.W[0].shape)
        (2, (2, 4, 3))
        >>> torch.allclose(st.forward(x)[1], nets[1](x))
        True
    """

    def __init__(self, members: Sequence[nn.Module]):
        if not members:
            raise ValueError("an ensemble needs at least one member")
        chains = [mlp_chain(m) for m in members]
        if any(c is None for c in chains):
            raise ValueError("ensemble members must be plain MLPs (nn.Sequential of Linear and "
                             "ReLU/Tanh/Sigmoid/GELU, as models.build makes them)")
        shape = [(lin.weight.shape, act) for lin, act in chains[0]]
        if any([(lin.weight.shape, act) for lin, act in c] != shape for c in chains[1:]):
            raise ValueError("ensemble members must have the same shape and activations")
        self.templates = list(members)
        self.flatten = type(members[0][0]) is nn.Flatten
        self.acts = [act for _, act in chains[0]]
        with torch.no_grad():
            self.W = [torch.stack([c[i][0].weight.detach() for c in chains])
                      for i in range(len(shape))]
            self.b = [torch.stack([c[i][0].bias.detach() for c in chains])
                      for i in range(len(shape))]

    @property
    def size(self) -> int:
        return self.W[0].shape[0]

    def member_tensors(self, e: int, tensors: list[list[torch.Tensor]] | None = None):
        """Member e's parameter views in `nn.Module.parameters()` order (weight, bias, ...)."""
        W, b = tensors if tensors is not None else (self.W, self.b)
        return [t for pair in zip(W, b) for t in (pair[0][e], pair[1][e])]

    @torch.no_grad()
    def copy_to(self, e: int, module: nn.Module) -> nn.Module:
        """Write member e's current parameters into `module` (same shape) in place."""
        for p, src in zip(module.parameters(), self.member_tensors(e)):
            p.copy_(src)
        return module

    def select(self, positions: Sequence[int]) -> None:
        """Keep only the members at `positions` (in that order), in fresh stacked tensors."""
        idx = torch.tensor(list(positions), device=self.W[0].device)
        self.W = [w.index_select(0, idx) for w in self.W]
        self.b = [b.index_select(0, idx) for b in self.b]
        self.templates = [self.templates[j] for j in positions]

    def unstack(self) -> list[nn.Module]:
        """Independent modules (copies of the members' modules) with the stacked parameters."""
        return [self.copy_to(e, copy.deepcopy(m)) for e, m in enumerate(self.templates)]

    @torch.inference_mode()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """All members' outputs ``[E, N, out]`` for one shared input ``x`` ``[N, ...]``.

        The first layer is one GEMM against the members' weights side by side."""
        a = x.flatten(1) if self.flatten else x
        E, out0, in0 = self.W[0].shape
        z = torch.mm(a, self.W[0].reshape(E * out0, in0).t())
        z = z.view(len(a), E, out0).transpose(0, 1).add(self.b[0].unsqueeze(1))
        a = act_forward(z, self.acts[0])
        for w, b, act in zip(self.W[1:], self.b[1:], self.acts[1:]):
            a = act_forward(torch.baddbmm(b.unsqueeze(1), a, w.transpose(1, 2)), act)
        return a


def unstack(stacked: StackedMLP) -> list[nn.Module]:
    """Independent modules holding the members' current parameters (`StackedMLP.unstack`).

    Args:
        stacked: the stack.

    Returns:
        One new module per member, in the stack's order.

    Example:
        >>> from dlscope.train.engine import seeded_model
        >>> build = lambda: nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))
        >>> nets = [seeded_model(build, s) for s in (0, 1)]
        >>> x, y = torch.randn(5, 3), torch.tensor([0, 1, 1, 0, 1])
        >>> copies = unstack(StackedMLP(nets))
        >>> copies[0] is nets[0], torch.equal(copies[0][0].weight, nets[0][0].weight)
        (False, True)
    """
    return stacked.unstack()


@torch.inference_mode()
def evaluate_stacked(stacked: StackedMLP, x: torch.Tensor, y: torch.Tensor,
                     classification: bool, batch_size: int = 8192):
    """Per-member loss and accuracy over a shared set, as `engine.evaluate` computes
    them (mean loss accumulated in float64).

    Args:
        stacked: the stack.
        x: the inputs.
        y: the targets.
        classification: cross-entropy and accuracy, else MSE.
        batch_size: rows per forward pass, all members together.

    Returns:
        (the members' losses, their accuracies (None each for regression)), two lists.

    Example:
        >>> from dlscope.train.engine import seeded_model
        >>> build = lambda: nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))
        >>> nets = [seeded_model(build, s) for s in (0, 1)]
        >>> x, y = torch.randn(5, 3), torch.tensor([0, 1, 1, 0, 1])
        >>> from dlscope.train.evaluation import evaluate
        >>> loss, acc = evaluate_stacked(StackedMLP(nets), x, y, True)
        >>> ref_loss, ref_acc = evaluate(nets[1], x, y, True)
        >>> abs(loss[1] - ref_loss) < 1e-6, acc[1] == ref_acc
        (True, True)
    """
    E = stacked.size
    chunk = max(256, batch_size // E)
    total = torch.zeros(E, dtype=torch.float64, device=x.device)
    correct = torch.zeros(E, dtype=torch.int64, device=x.device)
    for i in range(0, len(x), chunk):
        out = stacked.forward(x[i:i + chunk])  # [E, n, C]
        yb = y[i:i + chunk]
        if classification:
            logp = torch.log_softmax(out, 2)
            nll = -logp.gather(2, yb.view(1, -1, 1).expand(E, -1, 1)).squeeze(2)
            total += nll.sum(1).double()  # float32 chunk sums, as engine.evaluate
            correct += (out.argmax(2) == yb).sum(1)
        else:
            total += (out - yb).pow(2).flatten(1).sum(1).double()
    return member_means(total, correct, x, y, classification)


def member_means(total: torch.Tensor, correct: torch.Tensor, x: torch.Tensor, y: torch.Tensor,
                 classification: bool) -> tuple[list, list]:
    """Per-member mean loss and accuracy from summed losses and correct counts over the set
    (x, y); a regression loss is averaged over every output too.

    Args:
        total: the members' summed losses ``[E]``.
        correct: the members' correct predictions ``[E]`` (unused for regression).
        x: the set's inputs (their count is the divisor).
        y: the set's targets.
        classification: whether accuracies are computed.

    Returns:
        (the mean losses, the accuracies or None each), two lists.

    Example:
        >>> total, correct = torch.tensor([2.0, 4.0], dtype=torch.float64), torch.tensor([1, 2])
        >>> member_means(total, correct, torch.zeros(4, 3), torch.zeros(4), True)
        ([0.5, 1.0], [0.25, 0.5])
    """
    n = len(x)
    loss = (total / (n * (1 if classification else y[0].numel()))).tolist()
    acc = [c / n for c in correct.tolist()] if classification else [None] * len(loss)
    return loss, acc


class StackedMLPStep:
    """The `Step` (see `steps.Step`) of E same-shape plain MLPs stepped as one (`StackedMLP`);
    each member's optimizer update is the fused kernel's on its own parameter views, one call per
    group of members that share hyperparameters (the kernel takes one scalar lr). The members'
    modules receive their parameters when `module(j)` is asked for.

    Args:
        members: the plain MLPs, one shape (`steps.stackable`).
        classification: cross-entropy and argmax, else MSE.
        optimizers: each member's optimizer settings.

    Returns:
        The step.

    Example:
        >>> from dlscope.train.engine import seeded_model
        >>> build = lambda: nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))
        >>> nets = [seeded_model(build, s) for s in (0, 1)]
        >>> x, y = torch.randn(5, 3), torch.tensor([0, 1, 1, 0, 1])
        >>> import torch.nn.functional as F
        >>> step = StackedMLPStep(nets, True, [dict(kind="adam", lr=1e-2)] * 2)
        >>> losses = torch.empty(2)
        >>> step.forward_backward(x.expand(2, 5, 3), y.expand(2, 5), losses, None)
        >>> torch.allclose(losses, torch.stack([F.cross_entropy(n(x), y) for n in nets]))
        True
        >>> before = nets[0][0].weight.detach().clone()
        >>> step.update()
        >>> torch.equal(step.module(0)[0].weight, before)  # the update reached member 0's module
        False
    """

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
