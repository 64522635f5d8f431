"""A model's parameters as one flat vector θ, and its loss and Hessian as functions of θ.

The primitives every curvature module builds on (``hessian.py``, ``operators.py``,
``spectrum.py``, ``critical.py``, ``sharpness.py``, ``trajectory.py``): the one parameter
flattener of dlscope (:func:`flatten_params`, ``named_parameters()`` order), its inverse
(:func:`unflatten_params`), the loss ``f(θ, x, y)`` through ``torch.func.functional_call``
(:func:`flat_loss`), its gradient (:func:`grad_fn`) and the exact Hessian (:func:`hessian_of`).
Nothing here modifies a model.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping

import torch
from torch import nn
from torch.func import functional_call, jacrev, jvp, vmap

from dlscope.errors import UserError

__all__ = ["LossFn", "cast", "flat_loss", "flatten_params", "grad_fn", "hessian_of",
           "param_shapes", "unflatten_params"]

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def param_shapes(model: nn.Module) -> list[tuple[str, torch.Size]]:
    """The names and shapes of the model's parameters, in the order of the flat vector.

    Args:
        model: any ``torch.nn.Module``.

    Returns:
        ``[(name, shape), ...]`` in ``named_parameters()`` order.

    >>> param_shapes(torch.nn.Linear(2, 1))
    [('weight', torch.Size([1, 2])), ('bias', torch.Size([1]))]
    """
    return [(name, p.shape) for name, p in model.named_parameters()]


def flatten_params(params: nn.Module | Mapping) -> torch.Tensor:
    """A detached copy of all parameters concatenated into one vector.

    The one flattener of dlscope. Any memory format works (a CNN trained channels-last
    too, which ``parameters_to_vector``'s views refuse); mixed dtypes follow torch's type
    promotion.

    Args:
        params: a model (its ``named_parameters()`` order) or a mapping ``{name: tensor or
            array}`` (its iteration order).

    Returns:
        A new 1-D tensor holding every entry, parameter after parameter.

    Raises:
        UserError: there are no parameters.

    >>> m = torch.nn.Linear(2, 1)
    >>> with torch.no_grad():
    ...     _ = m.weight.copy_(torch.tensor([[1.0, 2.0]])), m.bias.fill_(3.0)
    >>> flatten_params(m)
    tensor([1., 2., 3.])
    >>> flatten_params({"a": torch.ones(2, 1), "b": torch.zeros(1)})
    tensor([1., 1., 0.])
    """
    tensors = (params.parameters() if isinstance(params, nn.Module) else params.values())
    parts = [torch.as_tensor(p).detach().reshape(-1) for p in tensors]
    if not parts:
        raise UserError("the model has no parameters")
    return torch.cat(parts)  # a new tensor, never a view of a parameter


def unflatten_params(theta: torch.Tensor, shapes) -> dict[str, torch.Tensor]:
    """Split a flat vector back into named tensors, for ``functional_call``.

    Args:
        theta: a vector in the order of :func:`flatten_params`.
        shapes: ``[(name, shape), ...]`` as from :func:`param_shapes`.

    Returns:
        ``{name: tensor}``, views of ``theta``.

    Raises:
        UserError: ``theta`` does not have as many entries as the shapes hold.

    >>> unflatten_params(torch.arange(3.0), [("w", (1, 2)), ("b", (1,))])
    {'w': tensor([[0., 1.]]), 'b': tensor([2.])}
    """
    total = sum(math.prod(shape) for _, shape in shapes)
    if theta.shape[-1] != total:
        raise UserError(f"flat vector has {theta.shape[-1]} entries, the model has {total}")
    out, i = {}, 0
    for name, shape in shapes:
        n = math.prod(shape)
        out[name] = theta[i : i + n].reshape(shape)
        i += n
    return out


def cast(t, dtype: torch.dtype):
    """``t`` in ``dtype`` if it is a floating tensor; anything else unchanged.

    Args:
        t: a tensor (or any object).
        dtype: the floating dtype wanted.

    Returns:
        ``t.to(dtype)`` for a floating tensor, else ``t`` itself (integer labels stay integer).

    >>> cast(torch.tensor([1.5]), torch.float64).dtype, cast(torch.tensor([1]), torch.float64).dtype
    (torch.float64, torch.int64)
    """
    return t.to(dtype) if torch.is_tensor(t) and t.is_floating_point() else t


def flat_loss(model: nn.Module, loss_fn: LossFn, x, y, dtype=torch.float64):
    """The loss of ``model`` on ``(x, y)`` as a function of a flat parameter vector.

    ``theta`` is a ``dtype`` copy of the parameters; floating ``x``/``y`` and the buffers are
    cast to ``dtype`` (copies, so batch-norm statistics of the model are never touched).

    Args:
        model: the network; evaluated in its current mode, never modified.
        loss_fn: ``loss_fn(output, target)``, a scalar tensor.
        x: the inputs, a tensor ``[n, ...]``.
        y: the targets, a tensor ``[n, ...]``.
        dtype: the floating dtype of the computation.

    Returns:
        ``(f, theta, x, y)`` with ``f(theta, x, y)`` the loss, ``theta`` the flat parameters
        and ``x``, ``y`` cast to ``dtype``.

    Raises:
        UserError: a bad model, batch or dtype.

    >>> m = torch.nn.Linear(1, 1, bias=False)
    >>> f, theta, x, y = flat_loss(m, torch.nn.functional.mse_loss, torch.ones(2, 1),
    ...                            torch.zeros(2, 1))
    >>> float(f(torch.tensor([3.0], dtype=torch.float64), x, y))  # (3·1 − 0)²
    9.0
    """
    if not isinstance(model, nn.Module):
        raise UserError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if not (torch.is_tensor(x) and torch.is_tensor(y)):
        raise UserError("x and y must be tensors holding the full batch")
    if x.shape[0] != y.shape[0] or x.shape[0] == 0:
        raise UserError(f"x and y must hold the same non-empty batch: {x.shape[0]} vs {y.shape[0]}")
    if not dtype.is_floating_point:
        raise UserError(f"dtype must be a floating dtype, got {dtype}")
    shapes = param_shapes(model)
    theta = flatten_params(model).to(dtype)
    buffers = {n: cast(b.detach(), dtype).clone() for n, b in model.named_buffers()}

    def f(th: torch.Tensor, xb: torch.Tensor, yb: torch.Tensor) -> torch.Tensor:
        out = functional_call(model, {**unflatten_params(th, shapes), **buffers}, (xb,))
        return loss_fn(out, yb)

    return f, theta, cast(x, dtype), cast(y, dtype)


def grad_fn(f):
    """The gradient function of ``f(theta, x, y)`` with respect to ``theta``.

    ``jacrev`` of the scalar loss, not ``torch.func.grad``: forward-mode through the latter
    fails ("ZeroTensors are immutable") for ``mse_loss`` in torch 2.13.

    Args:
        f: a scalar function ``f(theta, x, y)`` as from :func:`flat_loss`.

    Returns:
        ``g(theta, x, y) = ∇_θ f(theta, x, y)``.

    >>> g = grad_fn(lambda th, x, y: (x * th ** 2).sum())
    >>> g(torch.tensor([1.0, 2.0]), torch.tensor([3.0, 1.0]), None)  # 2·x·θ
    tensor([6., 4.])
    """
    return jacrev(f)


def hessian_of(f, theta: torch.Tensor, x, y, chunk: int | None = None) -> torch.Tensor:
    """The symmetrized Hessian ``(H + Hᵀ)/2`` at ``theta`` of ``f(theta, x, y)``.

    Forward-over-reverse: the Jacobian (``jvp``) of :func:`grad_fn` applied to the identity
    columns, batched with ``vmap``, ``chunk`` columns at a time (``None``: ``clamp(131072 //
    n, 8, P)``, batches that stay in cache, memory ~chunk·n·width values per activation).

    Args:
        f: a scalar function ``f(theta, x, y)`` as from :func:`flat_loss`.
        theta: the point, a flat vector of P entries.
        x: the inputs (``x.shape[0]`` sets the default chunk).
        y: the targets.
        chunk: columns per ``vmap`` batch, or ``None``.

    Returns:
        The ``P×P`` Hessian, in ``theta``'s dtype and device.

    >>> hessian_of(lambda th, x, y: (x * th ** 2).sum(), torch.tensor([1.0, 2.0]),
    ...            torch.tensor([3.0, 1.0]), None)  # diag(2·x)
    tensor([[6., 0.],
            [0., 2.]])
    """
    p = theta.numel()
    chunk = min(p, max(8, 131072 // x.shape[0])) if chunk is None else chunk
    g = grad_fn(f)

    def column(v: torch.Tensor) -> torch.Tensor:
        return jvp(lambda t: g(t, x, y), (theta,), (v,))[1]

    eye = torch.eye(p, dtype=theta.dtype, device=theta.device)
    h = vmap(column, chunk_size=chunk)(eye)
    return (h + h.T) / 2
