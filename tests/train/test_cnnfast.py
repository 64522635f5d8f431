"""`dlscope.train.cnnfast.FirstConv`: a one-channel convolution as one GEMM, checked against
torch's conv2d (forward) and finite differences (`torch.autograd.gradcheck`, float64)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from dlscope import models
from dlscope.train.cnnfast import FirstConv, forward_of


@pytest.mark.parametrize("k,padding,size", [(3, 1, 8), (5, 0, 12), (3, 2, 7)])
def test_forward_equals_conv2d(k, padding, size):
    g = torch.Generator().manual_seed(k + padding)
    x = torch.randn(6, 1, size, size, generator=g)
    w, b = torch.randn(4, 1, k, k, generator=g), torch.randn(4, generator=g)
    y = FirstConv.apply(x, w, b, padding)
    torch.testing.assert_close(y, F.conv2d(x, w, b, padding=padding), rtol=1e-5, atol=1e-5)
    assert y.is_contiguous(memory_format=torch.channels_last)


def test_gradients_match_finite_differences():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, 1, 6, 6, generator=g, dtype=torch.float64)
    w = torch.randn(2, 1, 3, 3, generator=g, dtype=torch.float64, requires_grad=True)
    b = torch.randn(2, generator=g, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda w, b: FirstConv.apply(x, w, b, 1), (w, b))
    w_cl = w.detach().contiguous(memory_format=torch.channels_last).requires_grad_()
    FirstConv.apply(x, w_cl, b, 1).sum().backward()
    assert w_cl.grad.stride() == w_cl.stride()  # the fused optimizer needs matching strides
    ref = torch.autograd.grad(F.conv2d(x, w, b, padding=1).sum(), (w, b))
    torch.testing.assert_close(w_cl.grad, ref[0])


def test_forward_of_applies_to_plain_one_channel_cnns_only():
    x = torch.randn(5, 1, 28, 28)
    cnn = models.build("cnn-b")
    fwd = forward_of(cnn)
    assert fwd is not None
    torch.testing.assert_close(fwd(x), cnn(x), rtol=1e-4, atol=1e-5)
    hooked = models.build("cnn-b")
    hooked[0].register_forward_hook(lambda *a: None)
    strided = nn.Sequential(nn.Conv2d(1, 16, 3, stride=2), nn.Flatten())
    three = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten())
    nobias = nn.Sequential(nn.Conv2d(1, 16, 3, bias=False), nn.Flatten())
    narrow = models.build("cnn-c")  # 8 channels: oneDNN is faster there
    for model in (hooked, strided, three, nobias, narrow, models.build("mlp:784-10")):
        assert forward_of(model) is None
