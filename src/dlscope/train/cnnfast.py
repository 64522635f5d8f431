"""The CNN training step's one special kernel: a first convolution over a one-channel image as
one matrix product.

oneDNN handles a convolution with a single input channel poorly: cnn-b's first layer takes a
fifth to a third of the whole step for 2% of its multiply-accumulates (docs/PERFORMANCE.md).
Written as the k*k shifted copies of the padded image (`cols`, [k*k, B*H*W], nine contiguous
copies) times the [C, k*k] weight, it is one GEMM forward and one for the weight gradient,
and its output is already channels-last. The input needs no gradient, so none is computed.
The sums run in another order than oneDNN's: the same numbers to float tolerance
(tests/test_cnnfast.py).

It wins only for 16 or more output channels (`MIN_CHANNELS`): MKL's GEMM with 8-10 output
columns runs at a fraction of its rate (the measurements: the comment at `MIN_CHANNELS`).

`forward_of(model)` returns the training forward that uses it, or None where it does not
apply (the caller then runs the module itself).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn


class FirstConv(torch.autograd.Function):
    """conv2d(x, weight, bias, padding) for x [B, 1, H, W] that needs no input gradient. A row
    of ones under the k*k shifted copies carries the bias, so forward and backward are one
    GEMM each (the bias gradient is the product's last row).

    Args:
        (of `FirstConv.apply`) x: the images ``[B, 1, H, W]``; weight: ``[C, 1, k, k]``;
        bias: ``[C]``; padding: the zero padding on every side.

    Returns:
        The convolution ``[B, C, Ho, Wo]``, channels-last in memory.

    Example:
        >>> x = torch.randn(2, 1, 6, 6)
        >>> w, b = torch.randn(16, 1, 3, 3, requires_grad=True), torch.randn(16, requires_grad=True)
        >>> out = FirstConv.apply(x, w, b, 1)
        >>> torch.allclose(out, F.conv2d(x, w, b, padding=1), atol=1e-5)
        True
        >>> out.sum().backward()
        >>> gw, w.grad = w.grad, None
        >>> F.conv2d(x, w, b, padding=1).sum().backward()
        >>> torch.allclose(gw, w.grad, atol=1e-4)
        True
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor,
                padding: int) -> torch.Tensor:
        B, _, H, W = x.shape
        C, _, k, _ = weight.shape
        xp = F.pad(x[:, 0], (padding,) * 4) if padding else x[:, 0]
        Ho, Wo = H + 2 * padding - k + 1, W + 2 * padding - k + 1
        cols = x.new_empty(k * k + 1, B, Ho, Wo)
        for i in range(k):
            for j in range(k):
                cols[i * k + j].copy_(xp[:, i:i + Ho, j:j + Wo])
        cols[k * k].fill_(1.0)
        cols = cols.view(k * k + 1, B * Ho * Wo)
        w_aug = torch.cat([weight.reshape(C, k * k), bias.view(C, 1)], 1)  # [C, k*k + 1]
        y = cols.t() @ w_aug.t()  # [B*Ho*Wo, C]: NHWC
        ctx.save_for_backward(cols, weight)
        return y.view(B, Ho, Wo, C).permute(0, 3, 1, 2)

    @staticmethod
    def backward(ctx, g: torch.Tensor):
        cols, weight = ctx.saved_tensors
        kk = cols.shape[0] - 1
        g2 = g.permute(0, 2, 3, 1).reshape(-1, g.shape[1])  # a view when g is channels-last
        both = cols @ g2  # [k*k + 1, C]: weight gradient rows, then the bias gradient
        gw = torch.empty_like(weight)  # the weight's own strides (channels-last or not)
        gw.copy_(both[:kk].t().reshape(weight.shape))
        return None, gw, both[kk].clone(), None


# Measured on the 2-core machine of docs/PERFORMANCE.md: cnn-b's first layer (1 -> 16
# channels, 3x3, 100 MNIST images) took 0.8-3.0 ms forward and 3.6-7.6 ms for its weight
# gradient with oneDNN, 0.5 + 0.5 ms and 1.4 ms as FirstConv. Forward plus weight gradient
# of 100 MNIST images, 2026-12-02, oneDNN channels-last against `FirstConv`, one thread: 8
# channels k5 6.97 vs 13.20 ms, 8 k3 6.75 vs 7.65, 10 k5 13.92 vs 20.90; 16 k5 15.07 vs
# 7.85, 16 k3 13.73 vs 5.52, 32 k3 27.08 vs 9.21, 32 k5 33.54 vs 14.49 (two threads alike).
MIN_CHANNELS = 16  # output channels from which FirstConv beats oneDNN (measured above)


def _plain_first_conv(layer: nn.Module) -> bool:
    return (type(layer) is nn.Conv2d and layer.in_channels == 1 and layer.groups == 1
            and layer.out_channels >= MIN_CHANNELS
            and layer.bias is not None and layer.stride == (1, 1) and layer.dilation == (1, 1)
            and layer.padding_mode == "zeros" and isinstance(layer.padding, tuple)
            and len(set(layer.padding)) == 1 and layer.kernel_size[0] == layer.kernel_size[1]
            and not (layer._forward_hooks or layer._forward_pre_hooks
                     or layer._backward_hooks or getattr(layer, "_backward_pre_hooks", None)))


def forward_of(model: nn.Module) -> Callable[[torch.Tensor], torch.Tensor] | None:
    """The training forward of a plain `nn.Sequential` CNN on the CPU whose first layer
    convolves a one-channel image into `MIN_CHANNELS` or more channels: `FirstConv` for that
    layer, the module's own layers after it.

    Args:
        model: any module.

    Returns:
        The forward function, or None when the model is anything else.

    Example:
        >>> net = nn.Sequential(nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.Flatten(),
        ...                     nn.Linear(16 * 36, 2))
        >>> x = torch.randn(2, 1, 6, 6)
        >>> torch.allclose(forward_of(net)(x), net(x), atol=1e-5)
        True
        >>> forward_of(nn.Sequential(nn.Conv2d(1, 8, 3), nn.ReLU())) is None  # under 16 channels
        True
    """
    if (type(model) is not nn.Sequential or len(model) < 2 or not _plain_first_conv(model[0])
            or model[0].weight.device.type != "cpu"
            or model._forward_hooks or model._forward_pre_hooks):
        return None
    first, rest = model[0], model[1:]
    pad = first.padding[0]

    def forward(xb: torch.Tensor) -> torch.Tensor:
        return rest(FirstConv.apply(xb, first.weight, first.bias, pad))
    return forward
