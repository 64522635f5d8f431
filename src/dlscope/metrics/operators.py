"""The Hessian of a full-data loss as an operator ``v ↦ Hv`` over any data (metrics/batches.py).

:class:`HessianOperator` is what the trace, density and eigenvalue functions share: the flat
parameter vector θ (a ``dtype`` copy on the model's device), ``matvec`` on torch vectors, a
count of the Hessian-vector products (HVPs) done, and a SciPy ``LinearOperator`` view.

One HVP is double backprop in ``torch.func`` form: the ``vjp`` of the gradient function,
whose pullback is ``v ↦ vᵀH = Hv``. With one batch in memory (a pair of tensors and no
``batch_size``) the forward and first backward pass are done once and every product reuses
them; otherwise each product passes over the batches and sums ``len(batch)·H_batch v / N``:
the Hessian of the mean loss over all N samples, memory bounded by one batch.

The algorithms (``hessian_trace``, ``hessian_density``, ``extreme_eigenvalues``) take any
operator, as curvlinops' and pytorch-hessian-eigenthings' do: :func:`as_operator` turns a
:class:`CurvatureOperator` (the base of :class:`HessianOperator`), any object with ``shape``,
``dtype`` and ``matvec`` (a SciPy ``LinearOperator``, say) or a square matrix into the one
interface they use, or builds a :class:`HessianOperator` from ``(model, loss_fn, data)``.
"""

from __future__ import annotations

import numpy as np
import torch
from scipy.sparse.linalg import LinearOperator
from torch import nn
from torch.func import vjp

from dlscope.errors import UserError
from dlscope.metrics.batches import as_batches, iter_batches, model_device
from dlscope.metrics.flat import cast, flat_loss, grad_fn, hessian_of

__all__ = ["CurvatureOperator", "HessianOperator", "WrappedOperator", "as_operator",
           "is_operator"]


class CurvatureOperator:
    """A symmetric ``P×P`` operator on torch vectors, as the curvature algorithms see it.

    Subclasses set ``p`` (the size), ``dtype`` (a torch dtype), ``device`` and ``products``
    (matrix-vector products done so far) and define :meth:`matvec`; the dense matrix, the
    SciPy view and the Rademacher probes follow from those.

    Attributes:
        p: the number of rows (= columns, = parameters).
        dtype: the torch dtype of the vectors.
        device: where the vectors live.
        products: the count of products ``H v`` done.

    >>> op = WrappedOperator(torch.diag(torch.tensor([1.0, 3.0], dtype=torch.float64)))
    >>> op.shape, op.dense(), op.products
    ((2, 2), tensor([[1., 0.],
            [0., 3.]], dtype=torch.float64), 2)
    """

    p: int
    dtype: torch.dtype
    device: torch.device
    products: int

    @property
    def shape(self) -> tuple[int, int]:
        """``(P, P)``."""
        return (self.p, self.p)

    def matvec(self, v: torch.Tensor) -> torch.Tensor:
        """``H v``; defined by the subclasses.

        Args:
            v: a torch vector of length P.

        Returns:
            ``H v`` on :attr:`device`, in :attr:`dtype`.

        >>> WrappedOperator(np.diag([2.0, 3.0])).matvec(torch.ones(2))
        tensor([2., 3.], dtype=torch.float64)
        """
        raise NotImplementedError

    def dense(self) -> torch.Tensor:
        """The ``P×P`` matrix from P products with the unit vectors, symmetrized.

        Returns:
            ``(H + Hᵀ)/2`` as a tensor on :attr:`device`.

        >>> WrappedOperator(np.array([[1.0, 2.0], [0.0, 1.0]])).dense()
        tensor([[1., 1.],
                [1., 1.]], dtype=torch.float64)
        """
        eye = torch.eye(self.p, dtype=self.dtype, device=self.device)
        h = torch.stack([self.matvec(e) for e in eye], dim=1)
        return (h + h.T) / 2

    def linear_operator(self) -> LinearOperator:
        """A symmetric SciPy ``LinearOperator`` on numpy vectors (float32 or float64).

        Returns:
            The operator; each of its products is one :meth:`matvec`.

        >>> WrappedOperator(np.diag([2.0, 3.0])).linear_operator().matvec(np.ones(2))
        array([2., 3.])
        """
        np_dtype = np.float32 if self.dtype == torch.float32 else np.float64

        def mv(v):
            t = torch.as_tensor(np.asarray(v, dtype=np_dtype).reshape(-1))
            return self.matvec(t).cpu().numpy()

        return LinearOperator((self.p, self.p), matvec=mv, rmatvec=mv, dtype=np_dtype)

    def rademacher(self, gen: torch.Generator) -> torch.Tensor:
        """A ±1 vector of length P, drawn on the CPU from ``gen``, then moved to the device.

        Args:
            gen: the CPU random generator.

        Returns:
            The probe, in :attr:`dtype` on :attr:`device`.

        >>> z = WrappedOperator(np.eye(4)).rademacher(torch.Generator().manual_seed(0))
        >>> sorted(set(z.abs().tolist())), z.dtype
        ([1.0], torch.float64)
        """
        z = torch.randint(0, 2, (self.p,), generator=gen, dtype=torch.int8)
        return (2 * z - 1).to(self.device, self.dtype)


class HessianOperator(CurvatureOperator):
    """``H`` of ``θ ↦ mean loss of model(x; θ)`` over ``data``, at the model's parameters.

    Args:
        model: the network (evaluated in its current mode, never modified).
        loss_fn: ``loss_fn(output, target)``, the batch-mean loss.
        data: a pair of tensors, a dlscope Dataset or an iterable of ``(x, y)`` batches
            (``metrics/batches.py``).
        dtype: the floating dtype of θ and of the products.
        batch_size: chunk a pair of tensors into batches of this size.

    Raises:
        UserError: a bad model, dtype or data.

    A linear model ``w·x + b`` under the mean squared error on ``x = ±2`` has
    ``H = 2·[[mean x², mean x], [mean x, 1]] = [[8, 0], [0, 2]]``:

    >>> m = torch.nn.Linear(1, 1)
    >>> x = torch.tensor([[-2.0], [2.0]])
    >>> op = HessianOperator(m, torch.nn.functional.mse_loss, (x, torch.zeros(2, 1)))
    >>> op.shape, op.matvec(torch.tensor([1.0, 1.0])), op.products
    ((2, 2), tensor([8., 2.], dtype=torch.float64), 1)
    """

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
        self._g = grad_fn(self.f)
        self._cached = None
        if isinstance(self.batches, list) and len(self.batches) == 1:
            x, y = self._cast(*first)
            self.n = int(x.shape[0])
            self._cached = self._pullback(x, y)
        else:
            self.n = None  # counted on the first product

    def _cast(self, x, y):
        return cast(x, self.dtype), cast(y, self.dtype)

    def _pullback(self, x, y):
        return vjp(lambda t: self._g(t, x, y), self.theta)[1]

    def batch_list(self):
        """The batches, cast and on the device, one at a time.

        Returns:
            An iterator of ``(x, y)`` pairs.

        >>> x, y = torch.ones(5, 1), torch.zeros(5, 1)
        >>> op = HessianOperator(torch.nn.Linear(1, 1), torch.nn.functional.mse_loss, (x, y),
        ...                      batch_size=2)
        >>> [(len(xb), xb.dtype) for xb, _ in op.batch_list()]
        [(2, torch.float64), (2, torch.float64), (1, torch.float64)]
        """
        for x, y in iter_batches(self.batches, self.device):
            yield self._cast(x, y)

    def matvec(self, v: torch.Tensor) -> torch.Tensor:
        """``H v`` for a torch vector ``v`` of length P (any device; the result on θ's).

        Args:
            v: the vector.

        Returns:
            ``H v``, the batch HVPs summed with weights ``len(batch)/N``.

        For ``mean((w·x)²)`` over ``x = 1, 1, 2`` in two batches, ``H = 2·mean(x²) = 4``:

        >>> m = torch.nn.Linear(1, 1, bias=False)
        >>> x = torch.tensor([[1.0], [1.0], [2.0]])
        >>> op = HessianOperator(m, torch.nn.functional.mse_loss, (x, torch.zeros(3, 1)),
        ...                      batch_size=2)
        >>> op.matvec(torch.ones(1))
        tensor([4.], dtype=torch.float64)
        """
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
        """The exact ``P×P`` Hessian (forward-over-reverse per batch, weighted by batch size).

        Returns:
            The symmetrized Hessian on θ's device (counted as P products).

        >>> m = torch.nn.Linear(1, 1)
        >>> x = torch.tensor([[-2.0], [2.0]])
        >>> HessianOperator(m, torch.nn.functional.mse_loss, (x, torch.zeros(2, 1))).dense()
        tensor([[8., 0.],
                [0., 2.]], dtype=torch.float64)
        """
        h, n = None, 0
        for x, y in self.batch_list():
            b = int(x.shape[0])
            hb = hessian_of(self.f, self.theta, x, y) * b
            h = hb if h is None else h + hb
            n += b
        self.products += self.p
        return h / n


class WrappedOperator(CurvatureOperator):
    """Any object with ``shape``, ``dtype`` and ``matvec`` seen as a :class:`CurvatureOperator`.

    A torch ``dtype`` means ``matvec`` takes and returns torch vectors (on ``op.device`` if
    it has one, else the CPU); a numpy dtype (a SciPy ``LinearOperator``, a dense numpy
    matrix) means numpy vectors. A torch or numpy matrix itself works too (``@``).

    Args:
        op: the operator, symmetric, of shape ``(P, P)``.

    Raises:
        UserError: ``op`` is not square.

    >>> op = WrappedOperator(np.array([[2.0, 1.0], [1.0, 2.0]]))
    >>> op.matvec(torch.tensor([1.0, 0.0])), op.dtype, op.products
    (tensor([2., 1.], dtype=torch.float64), torch.float64, 1)
    """

    def __init__(self, op):
        shape = tuple(int(n) for n in op.shape)
        if len(shape) != 2 or shape[0] != shape[1] or shape[0] < 1:
            raise UserError(f"the operator must be square, got shape {shape}")
        self.op, self.p, self.products = op, shape[0], 0
        self.is_torch = isinstance(op.dtype, torch.dtype)
        if self.is_torch:
            self.dtype = op.dtype
            self.device = torch.device(getattr(op, "device", "cpu"))
        else:
            self.np_dtype = np.dtype(op.dtype)
            self.dtype = torch.float32 if self.np_dtype == np.float32 else torch.float64
            self.device = torch.device("cpu")

    def _apply(self, v):
        return self.op.matvec(v) if hasattr(self.op, "matvec") else self.op @ v

    def matvec(self, v: torch.Tensor) -> torch.Tensor:
        """``op.matvec(v)`` as a torch vector.

        Args:
            v: a torch vector of length P.

        Returns:
            The product, in :attr:`dtype` on :attr:`device`.

        >>> WrappedOperator(torch.eye(2) * 3).matvec(torch.ones(2))
        tensor([3., 3.])
        """
        self.products += 1
        if self.is_torch:
            out = self._apply(v.to(self.device, self.dtype).reshape(-1))
            return torch.as_tensor(out).to(self.device, self.dtype).reshape(-1)
        out = self._apply(v.detach().cpu().numpy().astype(self.np_dtype).reshape(-1))
        return torch.as_tensor(np.asarray(out).reshape(-1)).to(self.dtype)


def is_operator(obj) -> bool:
    """Whether ``obj`` has the operator interface (``shape``, ``dtype``, ``matvec``).

    Args:
        obj: anything.

    Returns:
        True for a :class:`CurvatureOperator`, a SciPy ``LinearOperator`` or any object with
        those three attributes (a model is never one).

    >>> is_operator(WrappedOperator(np.eye(2))), is_operator(torch.nn.Linear(1, 1))
    (True, False)
    """
    return (not isinstance(obj, nn.Module)
            and all(hasattr(obj, a) for a in ("shape", "dtype", "matvec")))


def as_operator(obj, loss_fn=None, data=None, dtype=torch.float64,
                batch_size: int | None = None) -> CurvatureOperator:
    """The operator the curvature algorithms run on, from an operator or a model.

    Args:
        obj: a :class:`CurvatureOperator` (used as it is), any object with ``shape``,
            ``dtype`` and ``matvec`` (wrapped in a :class:`WrappedOperator`), a square torch
            or numpy matrix, or a model (a :class:`HessianOperator` is built).
        loss_fn: the batch-mean loss; only with a model.
        data: the data (``metrics/batches.py``); only with a model.
        dtype: the dtype of a :class:`HessianOperator` built here.
        batch_size: the chunk size of a :class:`HessianOperator` built here.

    Returns:
        A :class:`CurvatureOperator`.

    Raises:
        UserError: a model without ``loss_fn`` and ``data``, an operator with them, or
            anything else.

    >>> as_operator(torch.eye(3, dtype=torch.float64)).shape
    (3, 3)
    """
    if isinstance(obj, nn.Module):
        if loss_fn is None or data is None:
            raise UserError("a model needs loss_fn and data: f(model, loss_fn, data, ...)")
        return HessianOperator(obj, loss_fn, data, dtype, batch_size)
    matrix = (torch.is_tensor(obj) or isinstance(obj, np.ndarray)) and obj.ndim == 2
    if not (matrix or is_operator(obj)):
        raise UserError("expected a model or an operator (shape, dtype, matvec), got "
                        f"{type(obj).__name__}")
    if loss_fn is not None or data is not None:
        raise UserError("loss_fn and data go with a model; an operator takes neither")
    return obj if isinstance(obj, CurvatureOperator) else WrappedOperator(obj)
