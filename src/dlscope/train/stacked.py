"""E same-shape plain MLPs as one: each layer's weights stacked into one ``[E, out, in]``
tensor, so that a step or an evaluation is one batched matmul per layer for all members
instead of E small ones, each with its own Python and dispatch overhead."""

from __future__ import annotations

import copy
from collections.abc import Sequence

import torch
from torch import nn

from dlscope.train.fastpath import act_forward, mlp_chain


class StackedMLP:
    """The parameters of E same-shape plain MLPs (see `fastpath.mlp_chain`) stacked on a new
    leading dimension: ``W[l]`` is ``[E, out, in]``, ``b[l]`` is ``[E, out]``."""

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
    """Independent modules holding the members' current parameters (`StackedMLP.unstack`)."""
    return stacked.unstack()


@torch.inference_mode()
def evaluate_stacked(stacked: StackedMLP, x: torch.Tensor, y: torch.Tensor,
                     classification: bool, batch_size: int = 8192):
    """Per-member (loss, accuracy) lists over a shared set, as `engine.evaluate` computes them
    (mean loss accumulated in float64; accuracy None for regression)."""
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
    """Per-member (mean loss, accuracy or None) from summed losses ``[E]`` and correct counts
    ``[E]`` over the set (x, y); a regression loss is averaged over every output too."""
    n = len(x)
    loss = (total / (n * (1 if classification else y[0].numel()))).tolist()
    acc = [c / n for c in correct.tolist()] if classification else [None] * len(loss)
    return loss, acc
