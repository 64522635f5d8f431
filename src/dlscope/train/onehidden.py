"""A closed-form training step for E one-input, one-output, one-hidden-layer ReLU MLPs under
MSE at once (function-fit's wide shallow nets, ``1 -> H -> 1``), by their breakpoints.

For a scalar input, hidden unit j is active on one side of its breakpoint ``t_j = -b_j/w_j``:
on the points above it when ``w_j > 0``, below it when ``w_j < 0`` (everywhere or nowhere when
``w_j = 0``). With the points sorted, each unit's active points are one contiguous range
``[lo_j, hi_j)`` (one `searchsorted` call finds them), so

    y_hat_i = c + x_i * sum_{j active at i} a_j w_j + sum_{j active at i} a_j b_j

is two cumulative sums of a difference array (each unit adds its coefficient at lo_j and
takes it away at hi_j), and with ``g = dL/dy_hat`` every gradient is a range sum of the
prefix sums ``P_g`` and ``P_gx`` of ``g`` and ``g * x``:

    S_g = P_g[hi] - P_g[lo],  S_gx = P_gx[hi] - P_gx[lo]
    dL/dw_j = a_j S_gx,  dL/db_j = a_j S_g,  dL/da_j = w_j S_gx + b_j S_g,  dL/dc = sum g

A step is O(N + H log N) per member instead of the O(N H) of a dense one, in about forty
kernels on ``[E, N]`` and ``[E, H]`` tensors, whatever E; the sums run in float64. The
members are stacked (`stacked.StackedMLP`) and updated by the fused Adam/SGD kernel
(`optim.MemberOptimizers`), so member e computes what it computes alone, bit for bit, and what
autograd computes to float tolerance, not bit for bit (the sums run in another order, and a
point within rounding of a breakpoint may fall on the other side of it:
tests/train/test_onehidden.py). It is opt-in (`choose_step(..., closed_form=True)`), and the
experiments that take it record so in their run parameters. Measured against the dense step
it replaced: docs/PERFORMANCE.md.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from dlscope.train.fastpath import mlp_chain
from dlscope.train.optim import FusedOptimizer
from dlscope.train.stacked import StackedMLPStep


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


class OneHiddenStep(StackedMLPStep):
    """The breakpoint step of E ``1 -> H -> 1`` ReLU MLPs under MSE (see the module docstring);
    the rest of the `steps.Step` interface (update, keep, evaluate, module) is
    `StackedMLPStep`'s.

    Args:
        members: models `applies` accepts, one shape, trained in place.
        optimizers: each member's optimizer settings (`TrainConfig.optimizer_settings()`).

    Returns:
        The step.

    Example:
        >>> torch.manual_seed(0) is not None
        True
        >>> net = nn.Sequential(nn.Linear(1, 16), nn.ReLU(), nn.Linear(16, 1))
        >>> ref = nn.Sequential(nn.Linear(1, 16), nn.ReLU(), nn.Linear(16, 1))
        >>> _ = ref.load_state_dict(net.state_dict())
        >>> x = torch.linspace(-1, 1, 50)[:, None]
        >>> y = x.sin()
        >>> step, loss = OneHiddenStep([net], [dict(kind="sgd", lr=0.1)]), torch.empty(1)
        >>> step.forward_backward(x[None], y[None], loss, None)
        >>> torch.nn.functional.mse_loss(ref(x), y).backward()
        >>> torch.allclose(step.gW[0][0], ref[0].weight.grad, atol=1e-6)
        True
        >>> torch.allclose(step.gW[1][0], ref[2].weight.grad, atol=1e-6)
        True
    """

    def __init__(self, members: Sequence[nn.Module], optimizers: Sequence[dict]):
        for m in members:
            if mlp_chain(m) is None or len(list(m.parameters())) != 4:
                raise ValueError("OneHiddenStep takes plain 1 -> H -> 1 ReLU MLPs (see applies)")
        super().__init__(members, False, optimizers)
        self._sorted: tuple | None = None

    def _sort(self, xb: torch.Tensor, yb: torch.Tensor):
        """The batch's points in ascending x, float64: ``xs``, ``ys`` ``[E, N]`` (sorted once
        and kept while every member has the same batch, as in full-batch training)."""
        shared = xb.stride(0) == 0 and yb.stride(0) == 0
        if shared:
            key = (xb.data_ptr(), xb.shape, xb._version, yb.data_ptr(), yb._version)
            if self._sorted is not None and self._sorted[0] == key:
                return self._sorted[1]
        x, y = xb[..., 0].double(), yb[..., 0].double()
        if shared:
            xs, order = x[0].sort()
            xs, ys = xs.expand_as(x).contiguous(), y[0, order].expand_as(y).contiguous()
            self._sorted = (key, (xs, ys))
        else:
            xs, order = x.sort(dim=1)
            ys = y.gather(1, order)
        return xs, ys

    def forward_backward(self, xb: torch.Tensor, yb: torch.Tensor, loss_out: torch.Tensor,
                         pred_out: torch.Tensor | None) -> None:
        """Each member's MSE into `loss_out` and its gradients into the stacked `.gW`/`.gb`."""
        W, b = self.stacked.W, self.stacked.b
        xs, ys = self._sort(xb, yb)
        E, n = xs.shape
        w, bias, a = W[0][:, :, 0].double(), b[0].double(), W[1][:, 0, :].double()
        lo, hi = _active_ranges(xs, w, bias)
        coef = torch.stack((a * w, a * bias), 1)  # [E, 2, H]: slope and intercept per unit
        diff = xs.new_zeros(E, 2, n + 1)
        diff.scatter_add_(2, lo.unsqueeze(1).expand_as(coef), coef)
        diff.scatter_add_(2, hi.unsqueeze(1).expand_as(coef), coef.neg())
        slope, icpt = diff[:, :, :n].cumsum_(2).unbind(1)
        d = slope.mul_(xs).add_(icpt).add_(b[1].double()).sub_(ys)  # y_hat - y, [E, N]
        loss_out.copy_(d.square().mean(1))
        g = d.mul_(2.0 / n)
        prefix = xs.new_zeros(E, 2, n + 1)
        torch.cumsum(g, 1, out=prefix[:, 0, 1:])
        torch.cumsum(g * xs, 1, out=prefix[:, 1, 1:])
        s_g, s_gx = (prefix.gather(2, hi.unsqueeze(1).expand(E, 2, -1))
                     - prefix.gather(2, lo.unsqueeze(1).expand(E, 2, -1))).unbind(1)
        self.gW[0][:, :, 0].copy_(a * s_gx)
        self.gb[0].copy_(a * s_g)
        self.gW[1][:, 0, :].copy_(torch.addcmul(w * s_gx, bias, s_g))
        self.gb[1][:, 0].copy_(g.sum(1))


def _active_ranges(xs: torch.Tensor, w: torch.Tensor,
                   b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Each unit's active points ``[lo, hi)`` in the sorted ``xs`` ``[E, N]``: those with
    ``w x + b > 0``, at or above the breakpoint ``t = -b / w`` for ``w > 0``, below it for
    ``w < 0``, all or none for ``w = 0`` (as ``b > 0``). A point exactly at ``t`` (where
    ``w x + b`` is zero up to the rounding of ``t``) counts as above it: one binary search a
    unit, not two.

    Args:
        xs: each member's points, ascending, ``[E, N]``, contiguous.
        w, b: the hidden layer's weights and biases ``[E, H]``.

    Returns:
        ``lo``, ``hi``: int64 ``[E, H]``.

    Example:
        >>> xs = torch.tensor([[-1.0, 0.0, 1.0, 2.0]])
        >>> lo, hi = _active_ranges(xs, torch.tensor([[1.0, -1.0, 0.0, 0.0]]),
        ...                         torch.tensor([[-0.5, 0.5, 1.0, -1.0]]))
        >>> lo.tolist(), hi.tolist()  # x > 0.5; x < 0.5; all; none
        ([[2, 0, 0, 0]], [[4, 2, 4, 0]])
    """
    n = xs.shape[1]
    t = (-b / w).nan_to_num_(posinf=torch.inf, neginf=-torch.inf)  # w = 0: handled below
    k = torch.searchsorted(xs, t)  # the points below t
    lo = torch.where(w > 0, k, 0)
    hi = torch.where(w > 0, n, torch.where(w < 0, k, torch.where(b > 0, n, 0)))
    return lo, hi
