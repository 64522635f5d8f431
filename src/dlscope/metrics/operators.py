"""The Hessian of a full-data loss as an operator ``v ↦ Hv`` over any data (metrics/batches.py).

:class:`HessianOperator` is what the trace, density and eigenvalue functions share: the flat
parameter vector θ (a ``dtype`` copy on the model's device), ``matvec`` on torch vectors, a
count of the Hessian-vector products (HVPs) done, and a SciPy ``LinearOperator`` view.

One HVP is double backprop in ``torch.func`` form: the ``vjp`` of the gradient function,
whose pullback is ``v ↦ vᵀH = Hv``. With one batch in memory (a pair of tensors and no
``batch_size``) the forward and first backward pass are done once and every product reuses
them; otherwise each product passes over the batches and sums ``len(batch)·H_batch v / N``:
the Hessian of the mean loss over all N samples, memory bounded by one batch.
"""

from __future__ import annotations

import numpy as np
import torch
from scipy.sparse.linalg import LinearOperator
from torch import nn
from torch.func import vjp

from dlscope.errors import UserError
from dlscope.metrics.batches import as_batches, iter_batches, model_device
from dlscope.metrics.hessian import _cast, _grad, flat_loss, hessian_of


class HessianOperator:
    """``H`` of ``θ ↦ mean loss of model(x; θ)`` over ``data``, at the model's parameters."""

    def __init__(self, model: nn.Module, loss_fn, data, dtype=torch.float64,
                 batch_size: int | None = None):
        if not isinstance(model, nn.Module):
            raise UserError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        if not (isinstance(dtype, torch.dtype) and dtype.is_floating_point):
            raise UserError(f"dtype must be a floating torch dtype, got {dtype!r}")
        self.device = model_device(model)
        self.dtype = dtype
        self.batches = as_batches(data, batch_size)
        first = next(iter_batches(self.batches, self.device))
        self.f, self.theta, _, _ = flat_loss(model, loss_fn, first[0], first[1], dtype)
        self.p = int(self.theta.numel())
        self.products = 0
        self._g = _grad(self.f)
        self._cached = None
        if isinstance(self.batches, list) and len(self.batches) == 1:
            x, y = self._cast(*first)
            self.n = int(x.shape[0])
            self._cached = self._pullback(x, y)
        else:
            self.n = None  # counted on the first product

    def _cast(self, x, y):
        return _cast(x, self.dtype), _cast(y, self.dtype)

    def _pullback(self, x, y):
        return vjp(lambda t: self._g(t, x, y), self.theta)[1]

    def batch_list(self):
        """The batches, cast and on the device, one at a time."""
        for x, y in iter_batches(self.batches, self.device):
            yield self._cast(x, y)

    def matvec(self, v: torch.Tensor) -> torch.Tensor:
        """``H v`` for a torch vector ``v`` of length P (any device; the result on θ's)."""
        v = v.to(self.device, self.dtype).reshape(-1)
        self.products += 1
        if self._cached is not None:
            return self._cached(v)[0]
        out, n = torch.zeros_like(self.theta), 0
        for x, y in self.batch_list():
            b = int(x.shape[0])
            out += b * self._pullback(x, y)(v)[0]
            n += b
        if self.n is None:
            self.n = n
        return out / n

    def dense(self) -> torch.Tensor:
        """The exact ``P×P`` Hessian (forward-over-reverse per batch, weighted by batch size)."""
        h, n = None, 0
        for x, y in self.batch_list():
            b = int(x.shape[0])
            hb = hessian_of(self.f, self.theta, x, y) * b
            h = hb if h is None else h + hb
            n += b
        self.products += self.p
        return h / n

    def linear_operator(self) -> LinearOperator:
        """A symmetric SciPy ``LinearOperator`` on numpy vectors (float32 or float64)."""
        np_dtype = np.float32 if self.dtype == torch.float32 else np.float64

        def mv(v):
            t = torch.as_tensor(np.asarray(v, dtype=np_dtype).reshape(-1))
            return self.matvec(t).cpu().numpy()

        return LinearOperator((self.p, self.p), matvec=mv, rmatvec=mv, dtype=np_dtype)

    def rademacher(self, gen: torch.Generator) -> torch.Tensor:
        """A ±1 vector of length P (drawn on the CPU from ``gen``, then moved to θ's device)."""
        z = torch.randint(0, 2, (self.p,), generator=gen, dtype=torch.int8)
        return (2 * z - 1).to(self.device, self.dtype)
