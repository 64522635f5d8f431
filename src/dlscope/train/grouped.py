"""E same-shape CNN members stepped as one network (opt-in: `train_ensemble(...,
group_cnns=True)`): every convolution a grouped convolution with E groups, every fully
connected layer one batched matmul.

Member e trains on its own batches (its own batch order), so the E batches sit side by side in
the channel dimension, ``[B, E*C, H, W]``, and every layer keeps the members apart: grouped
convolutions, pooling and activations act channel by channel, and the fully connected layers
are ``[E, B, in] x [E, in, out]``. The loss is the sum of the members' mean losses, so member
e's gradient is its own; each member's optimizer update is the fused kernel's on its own
parameter views. A member equals its solo run to float tolerance, not bit for bit (grouped and
single convolutions sum in different orders; tests/test_grouped.py).

Why it is opt-in: on a CPU three cnn-b members stepped this way are no faster than the three
one by one (`dlscope bench`: cnn_ensemble_ratio; docs/PERFORMANCE.md), because a CNN step
there is bound by arithmetic, which grouping does not reduce. What it saves is per-layer
calls: E kernels become one, which is what small CNNs pay for on a GPU.
"""
# On the 2-core CPU of docs/PERFORMANCE.md the grouped step took 0.82-1.2x the time of the
# three members one by one; the GPU case is not measured.

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from dlscope.train.optim import FusedOptimizer, MemberOptimizers
from dlscope.train.stacked import member_means

_CHANNELWISE = (nn.ReLU, nn.Tanh, nn.Sigmoid, nn.GELU, nn.MaxPool2d, nn.AvgPool2d)


def _hooked(m: nn.Module) -> bool:
    return bool(m._forward_hooks or m._forward_pre_hooks or m._backward_hooks
                or getattr(m, "_backward_pre_hooks", None))


def _signature(model: nn.Module) -> tuple | None:
    """The layer-by-layer shape of a CNN this step can group, or None: an `nn.Sequential` of
    2-D convolutions (bias, zero padding, no groups), channel-wise pooling and activations,
    one `Flatten`, then linear layers (bias) and activations; no dropout, no hooks."""
    if type(model) is not nn.Sequential or _hooked(model) or len(model) < 3:
        return None
    sig, flat = [], False
    for m in model:
        if _hooked(m):
            return None
        if type(m) is nn.Conv2d and not flat:
            if m.bias is None or m.groups != 1 or m.padding_mode != "zeros" or \
                    isinstance(m.padding, str):
                return None
            sig.append(("conv", tuple(m.weight.shape), m.stride, m.padding, m.dilation))
        elif type(m) is nn.Flatten and not flat and (m.start_dim, m.end_dim) == (1, -1):
            flat = True
            sig.append(("flatten",))
        elif type(m) is nn.Linear and flat and m.bias is not None:
            sig.append(("linear", tuple(m.weight.shape)))
        elif isinstance(m, _CHANNELWISE) and type(m) in _CHANNELWISE:
            sig.append(("fn", repr(m)))
        else:
            return None
    kinds = [s[0] for s in sig]
    if not flat or kinds[0] != "conv" or kinds[-1] != "linear":
        return None
    return tuple(sig)


def groupable(members: Sequence[nn.Module], x: torch.Tensor) -> bool:
    """Whether `GroupedCNNStep` can train these members on inputs like `x` ``[N, C, H, W]``.

    Args:
        members: the modules (two or more same-shape CNNs of convolutions, channel-wise pooling
            and activations, one `Flatten`, then linear layers).
        x: inputs like the training set's.

    Returns:
        True when they group.

    Example:
        >>> from dlscope.train.engine import seeded_model
        >>> build = lambda: nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU(), nn.Flatten(),
        ...                               nn.Linear(32, 2))
        >>> cnns = [seeded_model(build, s) for s in (0, 1)]
        >>> x, y = torch.randn(4, 1, 6, 6), torch.tensor([0, 1, 1, 0])
        >>> groupable(cnns, x), groupable(cnns[:1], x), groupable([cnns[0], nn.Linear(36, 2)], x)
        (True, False, False)
    """
    sigs = {_signature(m) for m in members}
    params = [p for m in members for p in m.parameters()]
    return (len(members) > 1 and len(sigs) == 1 and None not in sigs and x.dim() == 4
            and all(p.requires_grad for p in params)
            and FusedOptimizer.supports(params) and params[0].dtype == x.dtype)


class GroupedCNNStep:
    """The `Step` (see `steps.Step`) of E same-shape CNNs as one grouped network.

    Args:
        members: the CNNs (`groupable`); they receive their parameters on `module(j)`.
        classification: cross-entropy and argmax, else MSE.
        optimizers: each member's optimizer settings.

    Returns:
        The step.

    Example:
        >>> from dlscope.train.engine import seeded_model
        >>> build = lambda: nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU(), nn.Flatten(),
        ...                               nn.Linear(32, 2))
        >>> cnns = [seeded_model(build, s) for s in (0, 1)]
        >>> x, y = torch.randn(4, 1, 6, 6), torch.tensor([0, 1, 1, 0])
        >>> step = GroupedCNNStep(cnns, True, [dict(kind="sgd", lr=0.1)] * 2)
        >>> losses = torch.empty(2)
        >>> step.forward_backward(x.expand(2, *x.shape), y.expand(2, 4), losses, None)
        >>> torch.allclose(losses, torch.stack([F.cross_entropy(m(x), y) for m in cnns]))
        True
    """

    autograd = True

    def __init__(self, members: Sequence[nn.Module], classification: bool,
                 optimizers: Sequence[dict]):
        self.templates = list(members)
        self.classification = classification
        self.layers = list(members[0])
        cl = members[0][0].weight.device.type == "cpu"  # oneDNN convolves NHWC faster
        self.stacked: list[torch.Tensor | None] = []  # per layer: [weight, bias] stacked, or None
        for mods in zip(*members):
            if type(mods[0]) is nn.Conv2d:
                w = torch.cat([m.weight.detach() for m in mods])  # [E*out, in, k, k]
                w = w.contiguous(memory_format=torch.channels_last) if cl else w.clone()
                b = torch.cat([m.bias.detach() for m in mods])
            elif type(mods[0]) is nn.Linear:
                w = torch.stack([m.weight.detach() for m in mods])  # [E, out, in]
                b = torch.stack([m.bias.detach() for m in mods])
            else:
                self.stacked.append(None)
                continue
            self.stacked.append([w.requires_grad_(), b.requires_grad_()])
        self._collect()
        self.opt = MemberOptimizers(optimizers, lambda js: self._views(js, self.leaves))

    @property
    def size(self) -> int:
        return len(self.templates)

    def _collect(self) -> None:
        self.leaves = [t for pair in self.stacked if pair is not None for t in pair]
        # a convolution's tensors hold the members one after the other along dim 0
        # ([E*out, ...]), a linear layer's on a leading member dimension ([E, ...])
        self.concatenated = [type(layer) is nn.Conv2d for layer, pair in
                             zip(self.layers, self.stacked) if pair is not None for _ in pair]

    def _member(self, t: torch.Tensor, concatenated: bool) -> torch.Tensor:
        """``[E, ...]``: a stacked tensor (or its gradient) with the members on dim 0."""
        return t.view(self.size, -1, *t.shape[1:]) if concatenated else t

    def _views(self, positions: Sequence[int], tensors: list[torch.Tensor]):
        """Members' views of stacked tensors (the leaves, or their gradients), member after
        member, each in `nn.Module.parameters()` order and shape."""
        return [self._member(t, c)[j] for j in positions
                for t, c in zip(tensors, self.concatenated)]

    def _forward(self, xb: torch.Tensor) -> torch.Tensor:
        """All members' outputs ``[E, B, out]`` for their batches `xb` ``[E, B, C, H, W]``."""
        E, B = xb.shape[:2]
        h = xb.transpose(0, 1).reshape(B, E * xb.shape[2], *xb.shape[3:])
        for layer, pair in zip(self.layers, self.stacked):
            if type(layer) is nn.Conv2d:
                h = F.conv2d(h, pair[0], pair[1], layer.stride, layer.padding, layer.dilation,
                             groups=E)
            elif type(layer) is nn.Flatten:
                h = h.reshape(B, E, -1).transpose(0, 1)  # member e: its channels, as Flatten
            elif type(layer) is nn.Linear:
                h = torch.baddbmm(pair[1].unsqueeze(1), h, pair[0].mT)
            else:
                h = layer(h)
        return h

    def _losses(self, out: torch.Tensor, y: torch.Tensor, reduction: str) -> torch.Tensor:
        """Each member's loss ``[E]``: the mean (or sum) over its own samples."""
        E, B = out.shape[:2]
        if self.classification:
            per = F.cross_entropy(out.reshape(E * B, -1), y.reshape(E * B), reduction="none")
            per = per.view(E, B)
        else:
            per = (out - y).square().reshape(E, -1)
        return per.mean(1) if reduction == "mean" else per.sum(1)

    def forward_backward(self, xb, yb, loss_out, pred_out) -> None:
        out = self._forward(xb)
        losses = self._losses(out, yb, "mean")
        for p in self.leaves:
            p.grad = None
        losses.sum().backward()
        loss_out.copy_(losses.detach())
        if pred_out is not None:
            torch.argmax(out.detach(), 2, out=pred_out)

    def _grads(self) -> list[torch.Tensor]:
        return [p.grad if p.grad is not None else torch.zeros_like(p) for p in self.leaves]

    def grad_norms(self) -> torch.Tensor:
        grads = self._views(range(self.size), self._grads())
        per = len(self.leaves)
        norms = torch.stack([torch.linalg.vector_norm(g) for g in grads]).view(self.size, per)
        return torch.linalg.vector_norm(norms, dim=1)

    def update(self) -> None:
        grads = self._grads()
        self.opt.step(lambda js: self._views(js, grads))

    def threads(self, batch_size: int) -> int | None:
        return None

    @torch.inference_mode()
    def evaluate(self, x: torch.Tensor, y: torch.Tensor, chunk: int = 500):
        """Per-member (loss, accuracy) lists over a shared set, as `engine.evaluate` gives
        them (mean loss accumulated in float64; accuracy None for regression)."""
        E = self.size
        total = torch.zeros(E, dtype=torch.float64, device=x.device)
        correct = torch.zeros(E, dtype=torch.int64, device=x.device)
        for i in range(0, len(x), chunk):
            xb, yb = x[i:i + chunk], y[i:i + chunk]
            out = self._forward(xb.unsqueeze(0).expand(E, *xb.shape))
            yb_e = yb.unsqueeze(0).expand(E, *yb.shape)
            total += self._losses(out, yb_e, "sum").double()
            if self.classification:
                correct += (out.argmax(2) == yb_e).sum(1)
        return member_means(total, correct, x, y, self.classification)

    @torch.no_grad()
    def module(self, j: int) -> nn.Module:
        template = self.templates[j]
        for p, src in zip(template.parameters(), self._views([j], self.leaves)):
            p.copy_(src)
        return template

    def keep(self, positions: Sequence[int]) -> None:
        positions = list(positions)
        idx = torch.tensor(positions, device=self.leaves[0].device)
        for layer, pair in zip(self.layers, self.stacked):
            for i, t in enumerate(pair or ()):
                conv = type(layer) is nn.Conv2d
                kept = self._member(t.detach(), conv).index_select(0, idx)
                if conv:
                    kept = kept.reshape(-1, *t.shape[1:])
                    if t.dim() == 4 and t.is_contiguous(memory_format=torch.channels_last):
                        kept = kept.contiguous(memory_format=torch.channels_last)
                pair[i] = kept.clone().requires_grad_()
        self.templates = [self.templates[j] for j in positions]
        self._collect()
        self.opt.keep(positions, lambda js: self._views(js, self.leaves))
