"""The fast paths under engine.train: fused optimizer kernels called directly, an
autograd-free step for plain MLPs, and a malloc setting for CNN activations.

Everything here gives the same numbers as the plain torch path (tests/test_engine.py
compares them bit for bit); it only removes per-step framework overhead (see bench.py).
"""

from __future__ import annotations

import ctypes
import os
import sys
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

if TYPE_CHECKING:
    from dlscope.train.engine import TrainConfig

_MALLOC_TUNED = False


def tune_malloc() -> bool:
    """Once per process, on glibc: serve blocks below 32 MB from the heap and trim it only
    above 256 MB of free memory (mallopt M_MMAP_THRESHOLD / M_TRIM_THRESHOLD), instead of
    glibc's default of mmapping large blocks and returning them at free, which makes every
    step page-fault its multi-MB activations afresh. No effect on numbers. Set
    DLSCOPE_MALLOPT=0 to leave malloc alone. Returns whether the settings are in place."""
    global _MALLOC_TUNED
    if _MALLOC_TUNED:
        return True
    if not sys.platform.startswith("linux") or os.environ.get("DLSCOPE_MALLOPT", "1") == "0":
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        m_trim_threshold, m_mmap_threshold = -1, -3
        _MALLOC_TUNED = bool(libc.mallopt(m_mmap_threshold, 32 << 20)
                             and libc.mallopt(m_trim_threshold, 256 << 20))
    except (OSError, AttributeError):
        return False
    return _MALLOC_TUNED


class _FusedOptimizer:
    """torch.optim's fused Adam / SGD kernels called directly, with the state kept here.

    Same arithmetic as `torch.optim.Adam(fused=True)` / `SGD(fused=True)` (their `step` calls
    exactly `torch._fused_adam_` / `torch._fused_sgd_` with these arguments; tests compare
    the parameters bit for bit), without the per-step Python of `Optimizer.step` (grouping,
    state lookups, profiler hooks: 0.1-0.5 ms a step here, as much as the kernel itself).
    `grads` are passed in each step, so gradients may live anywhere (autograd's fresh
    `.grad`, or the MLP fast path's preallocated buffers).
    """

    def __init__(self, params: list[torch.Tensor], cfg: TrainConfig):
        self.params = params
        self.cfg = cfg
        if cfg.optimizer == "adam":
            self.exp_avg = [torch.zeros_like(p, memory_format=torch.preserve_format)
                            for p in params]
            self.exp_avg_sq = [torch.zeros_like(p, memory_format=torch.preserve_format)
                               for p in params]
            # torch.optim keeps one float32 step tensor per parameter, all equal: one suffices.
            self._step = torch.zeros((), dtype=torch.float32, device=params[0].device)
            self.steps = [self._step] * len(params)
        else:
            self.momentum_buffer: list[torch.Tensor] | None = None

    @staticmethod
    def supports(params: list[torch.Tensor]) -> bool:
        if not params:
            return False
        p0 = params[0]
        return (p0.device.type in ("cpu", "cuda") and p0.dtype in (torch.float32, torch.float64)
                and all(p.device == p0.device and p.dtype == p0.dtype for p in params))

    @torch.no_grad()
    def step(self, grads: list[torch.Tensor]) -> None:
        cfg = self.cfg
        if cfg.optimizer == "adam":
            self._step.add_(1)
            torch._fused_adam_(self.params, grads, self.exp_avg, self.exp_avg_sq, [],
                               self.steps, amsgrad=False, lr=cfg.lr, beta1=0.9, beta2=0.999,
                               weight_decay=cfg.weight_decay, eps=1e-8, maximize=False,
                               grad_scale=None, found_inf=None)
            return
        first = cfg.momentum != 0 and self.momentum_buffer is None
        if first:
            self.momentum_buffer = [torch.empty_like(g) for g in grads]
        torch._fused_sgd_(self.params, grads,
                          [] if cfg.momentum == 0 else self.momentum_buffer,
                          weight_decay=cfg.weight_decay, momentum=cfg.momentum, lr=cfg.lr,
                          dampening=0.0, nesterov=False, maximize=False, is_first_step=first,
                          grad_scale=None, found_inf=None)


_ACT_KIND = {nn.ReLU: "relu", nn.Tanh: "tanh", nn.Sigmoid: "sigmoid", nn.GELU: "gelu"}
_aten = torch.ops.aten


def _no_hooks(m: nn.Module) -> bool:
    return not (m._forward_hooks or m._forward_pre_hooks or m._backward_hooks
                or getattr(m, "_backward_pre_hooks", None))


def mlp_chain(model: nn.Module) -> list[tuple[nn.Linear, str | None]] | None:
    """`[(linear, activation), ...]` when `model` is a plain MLP the fast path computes
    exactly (an `nn.Sequential` of an optional leading `Flatten`, then `Linear` layers with
    bias, each optionally followed by ReLU/Tanh/Sigmoid/exact GELU; no hooks, no frozen or
    shared parameters), else None."""
    from torch.nn.modules import module as _mod

    if type(model) is not nn.Sequential or not _no_hooks(model):
        return None
    if any(getattr(_mod, name, None) for name in (
            "_global_forward_hooks", "_global_forward_pre_hooks", "_global_backward_hooks",
            "_global_backward_pre_hooks")):
        return None
    mods = list(model)
    if mods and type(mods[0]) is nn.Flatten:
        if (mods[0].start_dim, mods[0].end_dim) != (1, -1) or not _no_hooks(mods[0]):
            return None
        mods = mods[1:]
    chain: list[tuple[nn.Linear, str | None]] = []
    i = 0
    while i < len(mods):
        lin = mods[i]
        if type(lin) is not nn.Linear or lin.bias is None or not _no_hooks(lin):
            return None
        act = None
        if i + 1 < len(mods):
            a = mods[i + 1]
            act = _ACT_KIND.get(type(a))
            if act is None or not _no_hooks(a) or (act == "gelu" and a.approximate != "none"):
                return None
        chain.append((lin, act))
        i += 2 if act is not None else 1
    params = [p for lin, _ in chain for p in (lin.weight, lin.bias)]
    if not chain or len({id(p) for p in params}) != len(params):
        return None
    if any(not p.requires_grad or getattr(p, "_post_accumulate_grad_hooks", None)
           or getattr(p, "_backward_hooks", None) for p in params):
        return None
    return chain


def act_forward(z: torch.Tensor, act: str | None) -> torch.Tensor:
    """The activation, in place where autograd's backward needs only the output."""
    if act is None:
        return z
    if act == "relu":
        return z.relu_()
    if act == "tanh":
        return z.tanh_()
    if act == "sigmoid":
        return z.sigmoid_()
    return F.gelu(z)  # keeps z: gelu's backward needs the input


def act_backward(g: torch.Tensor, z: torch.Tensor, a: torch.Tensor, act: str | None):
    """dL/dz from dL/da: the kernels autograd's ReLU/Tanh/Sigmoid/GELU backward nodes call."""
    if act is None:
        return g
    if act == "relu":
        return _aten.threshold_backward(g, a, 0)
    if act == "tanh":
        return _aten.tanh_backward(g, a)
    if act == "sigmoid":
        return _aten.sigmoid_backward(g, a)
    return _aten.gelu_backward(g, z, approximate="none")


def loss_and_grad(out: torch.Tensor, y: torch.Tensor, classification: bool,
                  one: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean cross-entropy (or MSE) of a batch and its gradient w.r.t. `out`, with the
    kernels `F.cross_entropy` / `F.mse_loss` and their autograd backward use."""
    if classification:
        logp = torch.log_softmax(out, 1)
        loss, tw = _aten.nll_loss_forward(logp, y, None, 1, -100)
        g = _aten.nll_loss_backward(one, logp, y, None, 1, -100, tw)
        return loss, _aten._log_softmax_backward_data(g, logp, 1, logp.dtype)
    loss = _aten.mse_loss(out, y, 1)
    return loss, _aten.mse_loss_backward(one, out, y, 1)


class _MLPStep:
    """One training step of a plain MLP without autograd; gradients land in `p.grad`."""

    def __init__(self, chain: list[tuple[nn.Linear, str | None]], flatten: bool,
                 classification: bool):
        self.W = [lin.weight.detach() for lin, _ in chain]
        self.b = [lin.bias.detach() for lin, _ in chain]
        self.acts = [act for _, act in chain]
        self.flatten = flatten
        self.classification = classification
        for lin, _ in chain:  # preallocated .grad, written in place every step
            for p in (lin.weight, lin.bias):
                p.grad = torch.empty_like(p)
        self.gW = [lin.weight.grad for lin, _ in chain]
        self.gb = [lin.bias.grad for lin, _ in chain]
        self.grads = [g for pair in zip(self.gW, self.gb) for g in pair]
        self.one = torch.ones((), dtype=self.W[0].dtype, device=self.W[0].device)

    def __call__(self, xb: torch.Tensor, yb: torch.Tensor):
        """(loss, output) of the batch; the gradients are in the parameters' .grad."""
        a = xb.flatten(1) if self.flatten else xb
        inputs, pre, post = [a], [], []
        last = len(self.W) - 1
        for i, (w, b, act) in enumerate(zip(self.W, self.b, self.acts)):
            z = torch.addmm(b, a, w.t())
            a = act_forward(z, act)
            pre.append(z)
            post.append(a)
            if i < last:
                inputs.append(a)
        out = a
        loss, g = loss_and_grad(out, yb, self.classification, self.one)
        for i in range(last, -1, -1):
            g = act_backward(g, pre[i], post[i], self.acts[i])
            torch.mm(g.t(), inputs[i], out=self.gW[i])
            torch.sum(g, 0, out=self.gb[i])
            if i > 0:
                g = torch.mm(g, self.W[i])
        return loss, out
