"""A closed-form training step for the one-input, one-output, one-hidden-layer ReLU MLP under
MSE (function-fit's wide shallow nets, ``1 -> H -> 1``).

The generic fast step (`steps.MLPStep`) runs about a dozen kernels over ``[N, H]`` for such a
net, several of them shapes MKL handles badly (a K=1 GEMM for the outer product, a GEMM with
one output column), so a 1-183-1 step on 1,000 points costs ~0.55-0.65 ms for ~60 µs of
arithmetic (docs/PERFORMANCE.md). For a scalar input x and ReLU hidden units,
``h = relu(x w1 + b1) = (x w1 + b1) * m`` with ``m = [x w1 + b1 > 0]``, so with ``g = dL/dy``
every gradient is a combination of two masked sums ``S_gx = mᵀ (g x)`` and ``S_g = mᵀ g``:

    dL/dw1 = w2 * S_gx,   dL/db1 = w2 * S_g,   dL/dw2 = w1 * S_gx + b1 * S_g,   dL/db2 = Σ g

Both sums come from one ``[2, N] x [N, H]`` GEMM over the mask, so a step is four passes over
``[N, H]`` (outer product plus bias, ReLU, the output GEMV, the mask and its GEMM) and a few
``[H]``-sized ops, then the fused Adam/SGD kernel (`optim.FusedOptimizer`). The sums run in
another order than autograd's: the same numbers to float tolerance, not bit for bit
(tests/train/test_onehidden.py), so it is opt-in (`choose_step(..., closed_form=True)`), and
the experiments that take it record so in their run parameters.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from dlscope.train.evaluation import evaluate, grad_norm
from dlscope.train.fastpath import mlp_chain
from dlscope.train.optim import FusedOptimizer
from dlscope.train.threads import step_threads


def applies(model: nn.Module, classification: bool, x: torch.Tensor) -> bool:
    """Whether `OneHiddenStep` trains `model` on inputs like `x`: a plain ``1 -> H -> 1`` MLP
    (`fastpath.mlp_chain`) with a ReLU hidden layer and a linear output, under MSE, on CPU
    inputs ``[N, 1]`` of its dtype.

    Args:
        model: any module.
        classification: the task (only regression applies).
        x: inputs like the training set's.

    Returns:
        True when the closed-form step applies.

    Example:
        >>> net = nn.Sequential(nn.Linear(1, 8), nn.ReLU(), nn.Linear(8, 1))
        >>> applies(net, False, torch.zeros(4, 1)), applies(net, True, torch.zeros(4, 1))
        (True, False)
        >>> applies(nn.Sequential(nn.Linear(1, 8), nn.Tanh(), nn.Linear(8, 1)), False,
        ...         torch.zeros(4, 1))
        False
    """
    chain = mlp_chain(model)
    if classification or chain is None or len(chain) != 2 or type(model[0]) is nn.Flatten:
        return False
    (l1, a1), (l2, a2) = chain
    params = list(model.parameters())
    return (a1 == "relu" and a2 is None and l1.in_features == 1 and l2.out_features == 1
            and x.dim() == 2 and x.shape[1] == 1 and x.device.type == "cpu"
            and params[0].dtype == x.dtype and FusedOptimizer.supports(params))


class OneHiddenStep:
    """The closed-form step of a ``1 -> H -> 1`` ReLU MLP under MSE (see the module
    docstring); gradients land in the parameters' preallocated `.grad`.

    Args:
        model: a model `applies` accepts, trained in place.
        optimizer: the optimizer settings (`TrainConfig.optimizer_settings()`).

    Returns:
        The step (the loop's `steps.Step` interface).

    Example:
        >>> torch.manual_seed(0) is not None
        True
        >>> net = nn.Sequential(nn.Linear(1, 16), nn.ReLU(), nn.Linear(16, 1))
        >>> ref = nn.Sequential(nn.Linear(1, 16), nn.ReLU(), nn.Linear(16, 1))
        >>> _ = ref.load_state_dict(net.state_dict())
        >>> x = torch.linspace(-1, 1, 50)[:, None]
        >>> y = x.sin()
        >>> step, loss = OneHiddenStep(net, dict(kind="sgd", lr=0.1)), torch.empty(1)
        >>> step.forward_backward(x[None], y[None], loss, None)
        >>> torch.nn.functional.mse_loss(ref(x), y).backward()
        >>> torch.allclose(net[0].weight.grad, ref[0].weight.grad, atol=1e-6)
        True
        >>> torch.allclose(net[2].weight.grad, ref[2].weight.grad, atol=1e-6)
        True
    """

    size = 1
    autograd = False

    def __init__(self, model: nn.Module, optimizer: dict):
        if mlp_chain(model) is None or len(list(model.parameters())) != 4:
            raise ValueError("OneHiddenStep takes a plain 1 -> H -> 1 ReLU MLP (see applies)")
        self.model = model
        model.train()
        self.params = list(model.parameters())  # w1 [H, 1], b1 [H], w2 [1, H], b2 [1]
        for p in self.params:
            p.grad = torch.empty_like(p)
        self.grads = [p.grad for p in self.params]
        self.w1, self.b1, self.w2, self.b2 = (p.detach() for p in self.params)
        self.opt = FusedOptimizer(self.params, **optimizer)
        self.sums = torch.empty(0, dtype=self.w1.dtype)

    def forward_backward(self, xb: torch.Tensor, yb: torch.Tensor, loss_out: torch.Tensor,
                         pred_out: torch.Tensor | None) -> None:
        """MSE loss of the batch into `loss_out` and the four gradients into `.grad`."""
        x, y = xb[0], yb[0]  # [N, 1]
        n = x.shape[0]
        h = torch.addcmul(self.b1, x, self.w1.mT).relu_()  # [N, H]
        d = torch.addmm(self.b2, h, self.w2.mT).sub_(y)  # y_hat - y, [N, 1]
        torch.mean(d.square(), 0, out=loss_out)
        g = d.mul_(2.0 / n)[:, 0]  # dL/dy_hat
        if self.sums.shape != (2, n):
            self.sums = torch.empty(2, n, dtype=g.dtype, device=g.device)
        torch.mul(g, x[:, 0], out=self.sums[0])
        self.sums[1].copy_(g)
        s_gx, s_g = torch.mm(self.sums, h.sign_())  # masked sums [H] each (h >= 0: sign = m)
        gw1, gb1, gw2, gb2 = self.grads
        w2 = self.w2[0]
        torch.mul(s_gx, w2, out=gw1[:, 0])
        torch.mul(s_g, w2, out=gb1)
        torch.addcmul(self.w1[:, 0] * s_gx, self.b1, s_g, out=gw2[0])
        torch.sum(g, 0, keepdim=True, out=gb2)

    def update(self) -> None:
        """The optimizer step."""
        self.opt.step(self.grads)

    def grad_norms(self) -> torch.Tensor:
        """The full-gradient L2 norm."""
        return grad_norm(self.model)

    def evaluate(self, x: torch.Tensor, y: torch.Tensor) -> tuple[list, list]:
        """(loss, None) over a whole set, in eval mode."""
        loss, acc = evaluate(self.model, x, y, False)
        return [loss], [acc]

    def module(self, j: int) -> nn.Module:
        """The model (member 0)."""
        return self.model

    def keep(self, positions: Sequence[int]) -> None:
        """A one-model step keeps member 0 only."""
        if list(positions) != [0]:
            raise ValueError(f"a one-model step keeps member 0, not {list(positions)}")

    def threads(self, batch_size: int) -> int | None:
        """One thread for a small step (`threads.step_threads`)."""
        return step_threads([self.w1, self.w2], batch_size)
