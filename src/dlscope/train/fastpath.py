"""The kernels under the fast training steps: an autograd-free forward and backward for plain
MLPs (one model, or E stacked same-shape models), and a malloc setting for CNN activations.

Each function calls the very ATen kernels autograd and `torch.nn.functional` would call, in
the same order, so a step built from them gives the same numbers as the autograd path
(tests/test_engine.py compares them bit for bit); it only removes per-step framework work.
The one exception is the stacked batch-last layout (`batch_last_wins`), which multiplies
``W a`` where autograd would multiply ``a Wᵀ``: stacked members equal their solo runs to float
tolerance either way (tests/test_ensemble.py).
"""

from __future__ import annotations

import ctypes
import os
import sys
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

_MALLOC_TUNED = False


def tune_malloc() -> bool:
    """Once per process, on glibc: serve blocks below 32 MB from the heap and trim it only
    above 256 MB of free memory (mallopt M_MMAP_THRESHOLD / M_TRIM_THRESHOLD), instead of
    glibc's default of mmapping large blocks and returning them at free, which makes every
    step page-fault its multi-MB activations afresh. No effect on numbers.

    Args:
        None; set DLSCOPE_MALLOPT=0 in the environment to leave malloc alone.

    Returns:
        Whether the settings are in place (a second call changes nothing).

    Example:
        >>> tuned = tune_malloc()
        >>> isinstance(tuned, bool), tune_malloc() == tuned
        (True, True)
    """
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


_ACT_KIND = {nn.ReLU: "relu", nn.Tanh: "tanh", nn.Sigmoid: "sigmoid", nn.GELU: "gelu"}
_aten = torch.ops.aten


def _no_hooks(m: nn.Module) -> bool:
    return not (m._forward_hooks or m._forward_pre_hooks or m._backward_hooks
                or getattr(m, "_backward_pre_hooks", None))


def mlp_chain(model: nn.Module) -> list[tuple[nn.Linear, str | None]] | None:
    """The layers of `model` when it is a plain MLP the fast path computes exactly: an
    `nn.Sequential` of an optional leading `Flatten`, then `Linear` layers with bias, each
    optionally followed by ReLU/Tanh/Sigmoid/exact GELU; no hooks, no frozen or shared
    parameters.

    Args:
        model: any module.

    Returns:
        `[(linear, activation name or None), ...]`, or None when `model` is anything else.

    Example:
        >>> chain = mlp_chain(nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2)))
        >>> [(lin.out_features, act) for lin, act in chain]
        [(4, 'relu'), (2, None)]
        >>> mlp_chain(nn.Sequential(nn.Linear(3, 4), nn.Dropout())) is None
        True
    """
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
    """The activation, in place where autograd's backward needs only the output.

    Args:
        z: the pre-activation (overwritten for ReLU, Tanh and Sigmoid).
        act: "relu", "tanh", "sigmoid", "gelu" or None (the identity).

    Returns:
        The activation's output (`z` itself where computed in place).

    Example:
        >>> act_forward(torch.tensor([-1.0, 2.0]), "relu")
        tensor([0., 2.])
    """
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
    """dL/dz from dL/da: the kernels autograd's ReLU/Tanh/Sigmoid/GELU backward nodes call.

    Args:
        g: dL/da, the gradient with respect to the activation's output.
        z: the pre-activation (read by GELU only).
        a: the activation's output.
        act: the activation's name, or None (the identity).

    Returns:
        dL/dz.

    Example:
        >>> act_backward(torch.ones(2), None, torch.tensor([0.0, 2.0]), "relu")
        tensor([0., 1.])
        >>> act_backward(torch.ones(1), None, torch.tensor([0.5]), "tanh")  # 1 - a^2
        tensor([0.7500])
    """
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
    kernels `F.cross_entropy` / `F.mse_loss` and their autograd backward use.

    Args:
        out: the model's output ``[B, C]``.
        y: class indices ``[B]``, or regression targets shaped like `out`.
        classification: cross-entropy, else MSE.
        one: a 0-dim tensor holding 1 (the upstream gradient), in `out`'s dtype and device.

    Returns:
        (the mean loss, a 0-dim tensor; dL/d`out`).

    Example:
        >>> out = torch.randn(5, 3, requires_grad=True)
        >>> y = torch.tensor([0, 1, 2, 0, 1])
        >>> loss, g = loss_and_grad(out.detach(), y, True, torch.ones(()))
        >>> ref = F.cross_entropy(out, y)
        >>> ref.backward()
        >>> torch.equal(loss, ref.detach()), torch.equal(g, out.grad)
        (True, True)
    """
    if classification:
        logp = torch.log_softmax(out, 1)
        loss, tw = _aten.nll_loss_forward(logp, y, None, 1, -100)
        g = _aten.nll_loss_backward(one, logp, y, None, 1, -100, tw)
        return loss, _aten._log_softmax_backward_data(g, logp, 1, logp.dtype)
    loss = _aten.mse_loss(out, y, 1)
    return loss, _aten.mse_loss_backward(one, out, y, 1)


def stacked_loss_and_grad(out: torch.Tensor, y: torch.Tensor, classification: bool,
                          one: torch.Tensor, loss_out: torch.Tensor) -> torch.Tensor:
    """`loss_and_grad` for E members at once; each member's loss is the mean over its
    own B samples, so the upstream gradient is 1/B.

    Args:
        out: the members' outputs ``[E, B, C]``.
        y: class indices ``[E, B]``, or regression targets shaped like `out`.
        classification: cross-entropy, else MSE.
        one: a 0-dim tensor holding 1, in `out`'s dtype and device.
        loss_out: ``[E]``, receives each member's mean loss.

    Returns:
        dL/d`out` ``[E, B, C]``.

    Example:
        >>> out, y = torch.randn(2, 4, 3), torch.randint(0, 3, (2, 4))
        >>> losses = torch.empty(2)
        >>> g = stacked_loss_and_grad(out, y, True, torch.ones(()), losses)
        >>> loss1, g1 = loss_and_grad(out[1], y[1], True, torch.ones(()))
        >>> torch.allclose(losses[1], loss1), torch.allclose(g[1], g1)
        (True, True)
    """
    E, B, C = out.shape
    if classification:
        logp = torch.log_softmax(out, 2).view(E * B, C)
        yf = y.reshape(E * B)
        nll, tw = _aten.nll_loss_forward(logp, yf, None, 0, -100)
        torch.mean(nll.view(E, B), 1, out=loss_out)
        g = _aten.nll_loss_backward(one.div(B).expand(E * B), logp, yf, None, 0, -100, tw)
        return _aten._log_softmax_backward_data(g, logp, 1, logp.dtype).view(E, B, C)
    diff = torch.sub(out, y)
    torch.mean(diff.square().view(E, -1), 1, out=loss_out)
    return diff.mul_(2.0 / (B * C))  # = aten.mse_loss_backward's 2 (out - y) / numel


Saved = tuple[list[torch.Tensor], list[torch.Tensor], list[torch.Tensor]]


def mlp_forward(W: list[torch.Tensor], b: list[torch.Tensor], acts: list[str | None],
                a: torch.Tensor, batch_last: bool = False) -> tuple[torch.Tensor, Saved]:
    """The output of an MLP with weights `W` and biases `b`, and what its backward needs.

    Args:
        W: the weights: ``W[l]`` ``[out, in]`` for one model (addmm), ``[E, out, in]`` for E
            stacked models (baddbmm).
        b: the biases, ``[out]`` or ``[E, out]``.
        acts: each layer's activation name, or None.
        a: the input: ``[B, in]``, or ``[E, B, in]`` when stacked.
        batch_last: (stacked only) `a` is ``[E, in, B]`` and so is every activation
            (``W a + b``, see `batch_last_wins`).

    Returns:
        (the output, the saved inputs, pre- and post-activations for `mlp_backward`).

    Example:
        >>> net = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2))
        >>> chain = mlp_chain(net)
        >>> W = [lin.weight.detach() for lin, _ in chain]
        >>> b = [lin.bias.detach() for lin, _ in chain]
        >>> acts = [act for _, act in chain]
        >>> x = torch.randn(5, 3)
        >>> out, saved = mlp_forward(W, b, acts, x)
        >>> torch.allclose(out, net(x))
        True
    """
    batched = a.dim() == 3
    inputs, pre, post = [a], [], []
    for i, (w, bias, act) in enumerate(zip(W, b, acts)):
        z = (torch.baddbmm(bias.unsqueeze(2), w, a) if batch_last else
             torch.baddbmm(bias.unsqueeze(1), a, w.mT) if batched else
             torch.addmm(bias, a, w.mT))
        a = act_forward(z, act)
        pre.append(z)
        post.append(a)
        if i < len(W) - 1:
            inputs.append(a)
    return a, (inputs, pre, post)


def mlp_backward(W: list[torch.Tensor], acts: list[str | None], saved: Saved,
                 g: torch.Tensor, gW: list[torch.Tensor], gb: list[torch.Tensor],
                 batch_last: bool = False) -> None:
    """Backpropagate `g` (dL/d output, laid out as `mlp_forward`'s output) through its MLP,
    writing the weight and bias gradients in place (mm / bmm, as autograd's Linear backward).

    Args:
        W: the weights, as `mlp_forward` took them.
        acts: the activations, as `mlp_forward` took them.
        saved: what `mlp_forward` returned beside the output.
        g: dL/d output.
        gW: the weight gradients' buffers, written in place.
        gb: the bias gradients' buffers, written in place.
        batch_last: the layout `mlp_forward` ran in.

    Returns:
        None; the gradients are in `gW` and `gb`.

    Example:
        >>> net = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2))
        >>> chain = mlp_chain(net)
        >>> W = [lin.weight.detach() for lin, _ in chain]
        >>> b = [lin.bias.detach() for lin, _ in chain]
        >>> acts = [act for _, act in chain]
        >>> x = torch.randn(5, 3)
        >>> out, saved = mlp_forward(W, b, acts, x)
        >>> gW, gb = [torch.empty_like(w) for w in W], [torch.empty_like(v) for v in b]
        >>> mlp_backward(W, acts, saved, torch.ones_like(out), gW, gb)
        >>> net(x).sum().backward()
        >>> torch.allclose(gW[0], net[0].weight.grad), torch.allclose(gb[1], net[2].bias.grad)
        (True, True)
    """
    inputs, pre, post = saved
    mm = torch.bmm if g.dim() == 3 else torch.mm
    for i in range(len(W) - 1, -1, -1):
        g = act_backward(g, pre[i], post[i], acts[i])
        if batch_last:
            torch.bmm(g, inputs[i].mT, out=gW[i])
            torch.sum(g, -1, out=gb[i])
            if i > 0:
                g = torch.bmm(W[i].mT, g)
            continue
        mm(g.mT, inputs[i], out=gW[i])
        torch.sum(g, -2, out=gb[i])
        if i > 0:
            g = mm(g, W[i])


# Measured on the 2-core machine of docs/PERFORMANCE.md, 2026-12-02, forward and backward of
# 10 stacked function-fit nets on 1,000 points, one thread: 1-11-17-17-1 4.36 -> 3.06 ms,
# 1-17-8x6-1 7.32 -> 3.50 ms; at 32 wide (1-32x3-1) no gain (7.4 vs 7.6 ms; 3.7 vs 4.4 on
# 2 threads), and MNIST MLPs (784 inputs) within noise either way.
BATCH_LAST_MAX_WIDTH = 24


def batch_last_wins(W: Sequence[torch.Tensor], batch_size: int) -> bool:
    """Whether a stacked MLP steps faster with its activations laid out ``[E, features, B]``:
    nets whose every layer is at most `BATCH_LAST_MAX_WIDTH` wide, on batches of at least
    8 times that. Their GEMMs then run over the long batch dimension instead of multiplying
    E tall, thin matrices by tiny ones, which MKL does at a fraction of its rate (measurements
    in the comment above and docs/PERFORMANCE.md).

    Args:
        W: the stacked weights, ``[E, out, in]`` each.
        batch_size: the rows per step.

    Returns:
        True for the batch-last layout.

    Example:
        >>> narrow = [torch.empty(10, 16, 1), torch.empty(10, 1, 16)]
        >>> batch_last_wins(narrow, 1000), batch_last_wins(narrow, 100)
        (True, False)
        >>> batch_last_wins([torch.empty(10, 128, 784)], 1000)
        False
    """
    return (batch_size >= 8 * BATCH_LAST_MAX_WIDTH
            and all(max(w.shape[-2:]) <= BATCH_LAST_MAX_WIDTH for w in W))
