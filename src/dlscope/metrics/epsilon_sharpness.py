"""ε-sharpness of a minimum (Keskar et al. 2017, arXiv:1609.04836, metric 2.1), full space.

With θ the flattened parameters and the box ``C_ε = {z : |z_i| ≤ ε(|θ_i| + 1)}``::

    φ = (max_{z ∈ C_ε} L(θ + z) − L(θ)) / (1 + L(θ)) × 100

on the (fixed) data the caller passes.  The max is approximated as in the paper by a few
iterations of L-BFGS-B (``scipy.optimize.minimize`` on ``−L(θ + z)`` with its exact
gradient, float64 vectors in and out, box bounds).  Loss and gradient come from
``torch.func.functional_call`` on a parameter copy, in eval mode, so the model itself is
never modified (its train/eval flags are restored as found).

Pitfalls handled here:

* scipy's default stopping rule ``gtol=1e-5`` on the projected gradient would end the
  search at iteration 0 for a well-trained model whose gradient entries are all tiny and
  report φ = 0; the tolerances are set to 0 so that only ``max_iter`` (or a failed line
  search) stops it.
* At an exact stationary point (gradient ~0 at z = 0) L-BFGS-B cannot move at all; then the
  search starts from a small seeded random point of the box (``seed``) instead.
* A loss that overflows inside the box ends the search with φ = inf (iterations = -1).
* The reported max is the largest loss actually evaluated (every L-BFGS-B iterate lies in
  the box), so it is a valid lower bound on the true max and never below L(θ).

``lambda_max`` is the scale-free companion: the largest eigenvalue of the Hessian of the same
loss, by Lanczos (``scipy.sparse.linalg.eigsh``, ``which="LA"``, k = 1) on
``metrics.hessian.hvp_operator``.  Only the top end is computed: ``extreme_eigenvalues`` also
runs a second Lanczos for the bottom of the spectrum, whose near-zero cluster costs thousands
of Hessian-vector products on a trained net, and the top one is all a sharpness needs.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from scipy.optimize import Bounds, minimize
from torch import nn
from torch.func import functional_call

from dlscope.errors import UserError
from dlscope.metrics.flat import flatten_params
from dlscope.metrics.hessian import hvp_operator
from dlscope.metrics.input_sensitivity import eval_mode

__all__ = ["lambda_max", "sharpness"]


class _NonFinite(Exception):
    """Raised inside the search when L(θ + z) is inf/nan: the max over the box is +inf."""


# The gradient at z = 0 counts as "~0" when its first-order gain over the whole box,
# Σ_i |g_i| w_i, is below this fraction of (1 + L(θ)).
_FLAT_START = 1e-10
# Size of the random start, as a fraction of each coordinate's box half-width.
_RANDOM_START_SCALE = 0.1


def _check(epsilon, max_iter, x, y) -> None:
    if not (isinstance(epsilon, (int, float)) and np.isfinite(epsilon) and epsilon > 0):
        raise UserError(f"epsilon must be a positive number, got {epsilon!r}")
    if not isinstance(max_iter, int) or max_iter < 1:
        raise UserError(f"max_iter must be a positive integer, got {max_iter!r}")
    if x.shape[0] != y.shape[0]:
        raise UserError(f"x and y differ in length: {x.shape[0]} vs {y.shape[0]}")


class _BoxLoss:
    """``z ↦ (L(θ + z), ∇L(θ + z))`` in float64 numpy, z clipped to the box ``C_ε``; it
    remembers the largest loss evaluated."""

    def __init__(self, model: nn.Module, loss_fn, x, y, epsilon: float):
        named = list(model.named_parameters())
        self.model, self.loss_fn, self.x, self.y = model, loss_fn, x.detach(), y.detach()
        self.theta = flatten_params(model).cpu().to(torch.float64).numpy()
        self.names = [k for k, _ in named]
        self.shapes = [p.shape for _, p in named]
        self.dtypes = [p.dtype for _, p in named]
        self.sizes = [p.numel() for _, p in named]
        self.device = named[0][1].device
        self.width = epsilon * (np.abs(self.theta) + 1.0)  # half-widths of the box C_ε
        self.buffers = {k: b.detach() for k, b in model.named_buffers()}
        self.best = -np.inf

    def __call__(self, z: np.ndarray) -> tuple[float, np.ndarray]:
        flat = torch.from_numpy(self.theta + np.clip(z, -self.width, self.width))
        params = {}
        for name, chunk, shape, dtype in zip(self.names, flat.split(self.sizes), self.shapes,
                                             self.dtypes):
            params[name] = chunk.reshape(shape).to(device=self.device,
                                                   dtype=dtype).requires_grad_()
        with torch.enable_grad():
            out = functional_call(self.model, (params, self.buffers), (self.x,))
            loss = self.loss_fn(out, self.y)
            grads = torch.autograd.grad(loss, list(params.values()), allow_unused=True)
        g = np.concatenate([np.zeros(n) if gi is None
                            else gi.detach().cpu().to(torch.float64).reshape(-1).numpy()
                            for gi, n in zip(grads, self.sizes)])
        return float(loss.detach()), g

    def negative(self, z: np.ndarray) -> tuple[float, np.ndarray]:
        """``(−L, −∇L)`` for the minimizer, recording the max; raises on a non-finite L."""
        value, g = self(z)
        if not np.isfinite(value):
            self.best = np.inf
            raise _NonFinite
        self.best = max(self.best, value)
        return -value, -g


def _search(box: _BoxLoss, max_iter: int, seed: int) -> tuple[float, int]:
    """``(L(θ), iterations)`` of L-BFGS-B maximizing L over the box (``box.best``: the max)."""
    loss0, g0 = box(np.zeros_like(box.theta))
    if not np.isfinite(loss0):
        raise UserError(f"the loss of the model itself is not finite: {loss0}")
    box.best = loss0
    z0 = np.zeros_like(box.theta)
    if float(np.abs(g0) @ box.width) <= _FLAT_START * (1.0 + abs(loss0)):
        rng = np.random.default_rng(seed)
        z0 = _RANDOM_START_SCALE * box.width * rng.uniform(-1.0, 1.0, size=box.theta.shape)
    try:
        res = minimize(box.negative, z0, jac=True, method="L-BFGS-B",
                       bounds=Bounds(-box.width, box.width),
                       options={"maxiter": max_iter, "maxfun": 20 * max_iter + 20, "gtol": 0,
                                "ftol": 0})
        return loss0, int(res.nit)
    except _NonFinite:  # the loss overflows inside the box: φ = inf
        return loss0, -1


def sharpness(
    model: nn.Module,
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    x: torch.Tensor,
    y: torch.Tensor,
    epsilon: float = 1e-3,
    max_iter: int = 10,
    seed: int = 0,
) -> dict:
    """Keskar et al.'s ε-sharpness φ of ``model`` on ``(x, y)`` (see the module docstring).

    Args:
        model: the network (evaluated in eval mode, flags restored; never modified).
        loss_fn: ``loss_fn(output, target)``, the (mean) loss of the batch as a scalar.
        x: the inputs.
        y: the targets.
        epsilon: the box's relative size ε.
        max_iter: L-BFGS-B iterations.
        seed: the random start's seed (used at an exact stationary point only).

    Returns:
        ``{"sharpness": φ, "loss": L(θ), "max_loss": max L found, "epsilon": ε,
        "iterations": L-BFGS-B iterations run (-1: the loss overflowed)}``, plain numbers.

    Raises:
        UserError: bad arguments, a model without parameters or with a non-finite loss.

    For ``L(θ) = θ²`` at θ = 1 the box is ``|z| ≤ 2ε`` and the max is ``(1 + 2ε)²``:

    >>> class Square(torch.nn.Module):
    ...     def __init__(self):
    ...         super().__init__()
    ...         self.w = torch.nn.Parameter(torch.ones(1, dtype=torch.float64))
    ...     def forward(self, x):
    ...         return self.w
    >>> r = sharpness(Square(), lambda out, t: (out ** 2).sum(), torch.zeros(1), torch.zeros(1),
    ...               epsilon=0.1)
    >>> r["max_loss"], r["sharpness"]  # (1.44 − 1) / 2 × 100
    (1.44, 22.0)
    """
    _check(epsilon, max_iter, x, y)
    if not any(True for _ in model.parameters()):
        raise UserError("the model has no parameters")
    box = _BoxLoss(model, loss_fn, x, y, epsilon)
    with eval_mode(model):
        loss0, iterations = _search(box, max_iter, seed)
    max_loss = float(box.best)
    phi = (max_loss - loss0) / (1.0 + loss0) * 100.0
    return {"sharpness": float(phi), "loss": float(loss0), "max_loss": float(max_loss),
            "epsilon": float(epsilon), "iterations": iterations}


def lambda_max(
    model: nn.Module,
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    x: torch.Tensor,
    y: torch.Tensor,
    dtype: torch.dtype = torch.float32,
    tol: float = 1e-4,
    seed: int = 0,
) -> dict:
    """Largest eigenvalue of the Hessian of ``loss_fn(model(x), y)`` w.r.t. all parameters.

    Lanczos (``eigsh``, ``which="LA"``, k = 1) on the HVPs; the dense 2×2 spectrum for P ≤ 2.
    The model is evaluated in eval mode (flags restored) and never modified.

    Args:
        model: the network.
        loss_fn: the batch-mean loss.
        x: the inputs.
        y: the targets.
        dtype: the dtype of the HVPs (float32 by default: faster than float64).
        tol: ARPACK's relative tolerance (floored at 100·eps of ``dtype``).
        seed: the seed of Lanczos's starting vector.

    Returns:
        ``{"lambda_max": λ, "hvps": Hessian-vector products used}``.

    The loss ``mean((w·x + b)²)`` at ``x = ±2`` has Hessian ``diag(8, 2)``:

    >>> m = torch.nn.Linear(1, 1)
    >>> x = torch.tensor([[-2.0], [2.0]])
    >>> lambda_max(m, torch.nn.functional.mse_loss, x, torch.zeros(2, 1))
    {'lambda_max': 8.0, 'hvps': 2}
    """
    from scipy.sparse.linalg import LinearOperator, eigsh
    from threadpoolctl import threadpool_limits

    with eval_mode(model):
        op = hvp_operator(model, loss_fn, x, y, dtype=dtype)
        p = op.shape[0]
        count = {"n": 0}

        def matvec(v):
            count["n"] += 1
            return op.matvec(v)

        counted = LinearOperator((p, p), matvec=matvec, dtype=op.dtype)
        if p <= 2:
            dense = np.column_stack([op.matvec(e) for e in np.eye(p, dtype=op.dtype)])
            return {"lambda_max": float(np.linalg.eigvalsh(dense.astype(np.float64))[-1]),
                    "hvps": p}
        v0 = np.random.default_rng(seed).standard_normal(p).astype(op.dtype)
        with threadpool_limits(1, user_api="blas"):
            top = eigsh(counted, k=1, which="LA", tol=max(tol, 100 * float(
                torch.finfo(dtype).eps)), v0=v0, ncv=min(p, 20), return_eigenvectors=False)
    return {"lambda_max": float(top[0]), "hvps": count["n"]}
