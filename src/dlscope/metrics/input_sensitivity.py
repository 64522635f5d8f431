"""Input sensitivity of a trained network (Novak et al. 2018, arXiv:1802.08760).

``sensitivity`` is the per-sample Frobenius norm of the Jacobian of the network's softmax
output (or of its logits) with respect to its input, ``‖∂f(x_i)/∂x_i‖_F``; average it over
test points for the paper's metric.  ``loss_input_grad_norm`` is the course handout's
"Frobenius norm of gradients of loss to input", computed per sample.  It must be: the
version seen in the wild takes the gradient of the *batch-mean* loss ``L = (1/B) Σ_i ℓ_i``
and reports the norm of the whole ``[B, ...]`` gradient.  Since ``∂L/∂x_i = (1/B)
∂ℓ_i/∂x_i``, that norm is ``(1/B) · sqrt(Σ_i ‖∂ℓ_i/∂x_i‖²) ≈ (1/√B) · rms_i ‖∂ℓ_i/∂x_i‖``
and, averaged over batches or compared across runs, it shrinks with the batch size by
construction: a model evaluated with batch 1024 looks ~32x "flatter" than the same model
with batch 1.  It measures the evaluation batch size, not the model.

Implementation: in eval mode the samples of a batch are independent, so for each output
class c the gradient of ``Σ_i f(x_i)[c]`` with respect to the batch is, in row i, exactly
sample i's Jacobian row c.  K backward passes on one forward graph (K = number of classes)
give all N Jacobians; for a CNN this is faster than ``vmap(jacrev(f))``, for an MLP about
as fast.  It is only valid without batch-coupling layers, which is
why the model is evaluated in eval mode (BatchNorm uses running stats, dropout is off).
The model is never modified: its train/eval flags are restored as found and no ``.grad`` is
written to its parameters.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch
from torch import nn

from dlscope.errors import UserError

__all__ = ["eval_mode", "loss_input_grad_norm", "sensitivity"]

_OUTPUTS = ("softmax", "logits")


@contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Put every submodule of ``model`` in eval mode, restoring each one's flag on exit.

    Args:
        model: the network.

    Returns:
        A context manager yielding ``model``.

    >>> m = torch.nn.Sequential(torch.nn.Dropout()).train()
    >>> with eval_mode(m):
    ...     m.training, m[0].training
    (False, False)
    >>> m.training, m[0].training
    (True, True)
    """
    flags = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield model
    finally:
        for m, flag in flags:
            m.training = flag


def _check_batch_size(batch_size: int) -> None:
    if not isinstance(batch_size, int) or batch_size < 1:
        raise UserError(f"batch_size must be a positive integer, got {batch_size!r}")


def sensitivity(
    model: nn.Module,
    x: torch.Tensor,
    output: str = "softmax",
    batch_size: int = 512,
) -> torch.Tensor:
    """Per-sample Frobenius norm of ``∂f(x_i)/∂x_i`` for a classifier; returns a tensor [N].

    ``f`` is ``softmax(model(x))`` for ``output="softmax"`` (Novak et al.'s sensitivity) or
    the raw logits for ``output="logits"``.  The norm runs over all output classes and all
    input entries of each sample.  The model is evaluated in eval mode (flags restored
    afterwards), ``batch_size`` samples at a time.

    Args:
        model: a classifier, output ``[batch, classes]``.
        x: the inputs, any shape ``[N, ...]``.
        output: ``"softmax"`` or ``"logits"``.
        batch_size: samples per forward pass.

    Returns:
        The N norms, a tensor ``[N]``.

    Raises:
        UserError: a bad ``output``, ``batch_size`` or model output shape.

    A linear map ``W x`` has Jacobian ``W`` at every input (``‖W‖_F = 5`` here):

    >>> m = torch.nn.Linear(2, 2, bias=False)
    >>> with torch.no_grad():
    ...     _ = m.weight.copy_(torch.tensor([[3.0, 0.0], [0.0, 4.0]]))
    >>> sensitivity(m, torch.randn(3, 2), output="logits")
    tensor([5., 5., 5.])
    """
    if output not in _OUTPUTS:
        raise UserError(f"output must be one of {_OUTPUTS}, got {output!r}")
    _check_batch_size(batch_size)
    if x.dim() < 1 or x.shape[0] == 0:
        return torch.zeros(0, dtype=x.dtype, device=x.device)
    norms = []
    with eval_mode(model), torch.enable_grad():
        for xb in x.split(batch_size):
            xb = xb.detach().requires_grad_(True)
            out = model(xb)
            if out.dim() != 2 or out.shape[0] != xb.shape[0]:
                raise UserError(f"model output must be [batch, classes], got {tuple(out.shape)}")
            if output == "softmax":
                out = torch.softmax(out, dim=1)
            n_classes = out.shape[1]
            sq = torch.zeros(xb.shape[0], dtype=out.dtype, device=out.device)
            for c in range(n_classes):
                (g,) = torch.autograd.grad(
                    out[:, c].sum(), xb, retain_graph=c < n_classes - 1, allow_unused=True
                )
                if g is not None:
                    sq += g.reshape(g.shape[0], -1).pow(2).sum(dim=1)
            norms.append(sq.sqrt().detach())
    return torch.cat(norms)


def loss_input_grad_norm(
    model: nn.Module,
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    x: torch.Tensor,
    y: torch.Tensor,
    batch_size: int = 512,
) -> torch.Tensor:
    """Per-sample norm ``‖∂ℓ(x_i, y_i)/∂x_i‖`` of the loss gradient w.r.t. the input; [N].

    The course handout's "Frobenius norm of gradients of loss to input", per sample (why
    per sample: the module docstring).
    Here ``ℓ(x_i, y_i) = loss_fn(model(x_i[None]), y_i[None])`` (a one-sample batch, so it does
    not matter whether ``loss_fn`` takes a mean or a sum).  It is computed with
    ``torch.func.vmap(grad(ℓ))`` over each chunk of ``batch_size`` samples, in eval mode.

    Args:
        model: the network.
        loss_fn: ``loss_fn(output, target)`` on a one-sample batch.
        x: the inputs ``[N, ...]``.
        y: the targets ``[N, ...]``.
        batch_size: samples per ``vmap`` chunk.

    Returns:
        The N norms, a tensor ``[N]``.

    Raises:
        UserError: a bad ``batch_size`` or ``x``, ``y`` of different lengths.

    For ``ℓ = (w·x − y)²`` the gradient is ``2·(w·x − y)·w`` (here ``w = 2``):

    >>> m = torch.nn.Linear(1, 1, bias=False)
    >>> with torch.no_grad():
    ...     _ = m.weight.fill_(2.0)
    >>> x, y = torch.tensor([[1.0], [3.0]]), torch.tensor([[0.0], [5.0]])
    >>> loss_input_grad_norm(m, torch.nn.functional.mse_loss, x, y)  # 2·|2x − y|·2
    tensor([8., 4.])
    """
    from torch.func import functional_call, grad, vmap

    _check_batch_size(batch_size)
    if x.shape[0] != y.shape[0]:
        raise UserError(f"x and y differ in length: {x.shape[0]} vs {y.shape[0]}")
    params = {k: v.detach() for k, v in model.named_parameters()}
    buffers = {k: v.detach() for k, v in model.named_buffers()}

    def sample_loss(xi: torch.Tensor, yi: torch.Tensor) -> torch.Tensor:
        out = functional_call(model, (params, buffers), (xi.unsqueeze(0),))
        return loss_fn(out, yi.unsqueeze(0))

    per_sample_grad = vmap(grad(sample_loss))
    norms = []
    with eval_mode(model):
        for xb, yb in zip(x.split(batch_size), y.split(batch_size)):
            g = per_sample_grad(xb.detach(), yb)
            norms.append(g.reshape(g.shape[0], -1).norm(dim=1).detach())
    if not norms:
        return torch.zeros(0, dtype=x.dtype, device=x.device)
    return torch.cat(norms)
