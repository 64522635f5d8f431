"""Reaching a critical point ‖∇L‖ ≈ 0 of a full-batch loss (SCIENCE.md §2, minimal ratio).

:func:`minimize_grad_norm` switches the objective from the loss L to the gradient norm: it
drives ‖∇L(θ)‖ of the full-batch loss under a threshold and writes the result into the
model (unlike everything in :mod:`dlscope.metrics.hessian`, this moves the model). Any
critical point counts, saddles included: that is what the minimal-ratio experiment samples,
so **no step is ever chosen because it lowers L**; every method minimizes ‖∇L‖² alone.

Methods (all on the full batch, gradients by double backprop):

- ``"newton"`` (default; P up to a few thousand, it needs the dense Hessian). Newton's method
  on the system ∇L(θ) = 0, whose Jacobian is the Hessian H = QΛQᵀ (s = max|λ|), in
  Levenberg-Marquardt form with the damping tied to the residual (Yamashita & Fukushima
  2001; Fan & Yuan 2005): ``d = −Q Λ/(Λ² + ν·s·‖∇L‖) Qᵀ∇L``. The damping vanishes as
  ‖∇L‖ → 0, so the step becomes Newton's −H⁻¹∇L near an isolated critical point, while
  directions with |λ| ≲ √(s‖∇L‖) stay damped: this keeps local quadratic convergence to
  non-isolated critical points too (lines of saddles from redundant units, where H is
  singular). The step is scaled by a backtracking line search on ‖∇L‖² (α = 1, ½, ¼, ⅛;
  Armijo test against the predicted decrease); when no α passes, ν grows ×8 and the search
  repeats; after an accepted step ν shrinks ÷4. ‖∇L‖ therefore never increases between
  accepted iterates, and the method is attracted to whatever critical point is near,
  saddles included. On a 4-3-1 tanh teacher-student net started from Adam checkpoints after
  10-100 epochs, this damping reached ‖∇L‖ < 1e-8 in 12 of 15 runs where a damping that
  does not shrink with ‖∇L‖ reached it in 7 of 15 (docs/methods-minimal-ratio.md).
  Known limit: in a long valley where ∇L lies in H's near-null space, ∇‖∇L‖² = 2H∇L ≈ 0 and
  every ‖∇L‖-merit method (this one, L-BFGS or Adam on ‖∇L‖²) stalls; such runs end
  without reaching the threshold and are reported as missed.
- ``"lbfgs"``: ``torch.optim.LBFGS`` with strong-Wolfe line search on ‖∇L‖² (any P).
- ``"adam"``: ``torch.optim.Adam`` on ‖∇L‖² (any P).

:func:`classify_spectrum` then reads a critical point's Hessian spectrum with a tolerance tied
to the float64 noise floor, ``tol = c · eps · P · max|λ|`` (eps = 2.2e-16, P = the number of
eigenvalues; Weyl's inequality bounds each eigenvalue's change by the spectral norm of the
rounding error of H, and a backward-stable ``eigh`` adds O(eps · P · ‖H‖)): the minimal ratio
(fraction λ > tol), the index (fraction λ < −tol), the near-zero fraction and the kind of
point (minimum, saddle or degenerate).

The result records the loss before and after and the distance moved ‖θ_end − θ_start‖, so
a caller can flag a run that travelled far or whose loss changed a lot.

Thresholds like 1e-6 need float64: convert the model with ``model.double()`` first (the
caller's job); the computation runs in the dtype of the model's parameters.
"""

from __future__ import annotations

import time

import numpy as np
import torch
from torch import nn

from dlscope.errors import UserError
from dlscope.metrics.flat import LossFn, flat_loss, hessian_of, param_shapes, unflatten_params

__all__ = ["EPS64", "METHODS", "TOL_C", "classify_spectrum", "minimize_grad_norm",
           "noise_floor_tol"]

METHODS = {"newton": (500, 1.0), "lbfgs": (3000, 1.0), "adam": (20000, 1e-4)}  # steps, lr
_ARMIJO = 1e-4  # fraction of the predicted decrease of ‖∇L‖² a step must achieve
_HALVINGS = 4   # line-search steps α = 1 … 1/8 before the damping grows
_NU_MAX = 1e12  # damping weight beyond which the Newton method gives up (a stall)


EPS64 = float(np.finfo(np.float64).eps)
TOL_C = 100.0  # default c of the tolerance c·eps·P·max|λ|


def noise_floor_tol(eigenvalues, c: float = TOL_C) -> float:
    """The float64 noise floor of a spectrum: eigenvalues with ``|λ| ≤`` it count as zero.

    Args:
        eigenvalues: the P eigenvalues.
        c: the safety factor.

    Returns:
        ``c · eps · P · max|λ|`` (0 for no eigenvalues).

    >>> noise_floor_tol([1.0, -2.0], c=1.0) == 2 * EPS64 * 2
    True
    """
    ev = np.asarray(eigenvalues, dtype=np.float64)
    return float(c * EPS64 * ev.size * np.max(np.abs(ev))) if ev.size else 0.0


def classify_spectrum(eigenvalues, c: float = TOL_C) -> dict:
    """Signs of a critical point's Hessian spectrum, with ``tol = c·eps·P·max|λ|``.

    Returns ``{minimal_ratio, index, frac_zero, n_pos, n_neg, n_zero, tol, kind}``:
    ``minimal_ratio = #(λ > tol)/P`` (fraction positive), ``index = #(λ < −tol)/P`` (fraction
    negative), ``frac_zero`` the rest. ``kind``: "saddle" if any λ < −tol (a direction of
    descent exists), "minimum" if every λ > tol, "degenerate" if none is negative but some are
    within the tolerance (second order cannot tell minimum from saddle).

    Args:
        eigenvalues: the Hessian's eigenvalues, finite.
        c: the factor of the tolerance.

    Returns:
        The dict above.

    Raises:
        UserError: empty or non-finite eigenvalues, or a bad ``c``.

    >>> r = classify_spectrum([-2.0, 0.0, 1e-20, 3.0])
    >>> r["kind"], r["minimal_ratio"], r["index"], r["frac_zero"]
    ('saddle', 0.25, 0.25, 0.5)
    """
    ev = np.asarray(eigenvalues, dtype=np.float64).ravel()
    if ev.size == 0:
        raise UserError("eigenvalues must be a non-empty array")
    if not np.all(np.isfinite(ev)):
        raise UserError("eigenvalues contain NaN or infinity")
    if not (np.isfinite(c) and c >= 0):
        raise UserError(f"tolerance factor c must be a finite number >= 0, got {c!r}")
    tol = noise_floor_tol(ev, c)
    n_pos, n_neg = int(np.sum(ev > tol)), int(np.sum(ev < -tol))
    n_zero = ev.size - n_pos - n_neg
    kind = "saddle" if n_neg else ("degenerate" if n_zero else "minimum")
    return {"minimal_ratio": n_pos / ev.size, "index": n_neg / ev.size,
            "frac_zero": n_zero / ev.size, "n_pos": n_pos, "n_neg": n_neg, "n_zero": n_zero,
            "tol": tol, "kind": kind}


def _loss_and_grad(f, th, x, y, create_graph=False):
    th = th if th.requires_grad else th.detach().requires_grad_(True)
    loss = f(th, x, y)
    (g,) = torch.autograd.grad(loss, th, create_graph=create_graph)
    return loss, g


def _steps_and_lr(method: str, threshold, max_steps, lr) -> tuple[int, float]:
    if method not in METHODS:
        raise UserError(f"method must be one of {sorted(METHODS)}, got {method!r}")
    if not (isinstance(threshold, (int, float)) and threshold > 0):
        raise UserError(f"threshold must be a positive number, got {threshold!r}")
    steps_default, lr_default = METHODS[method]
    max_steps = steps_default if max_steps is None else max_steps
    if not isinstance(max_steps, int) or max_steps < 0:
        raise UserError(f"max_steps must be a non-negative integer, got {max_steps!r}")
    return max_steps, lr_default if lr is None else float(lr)


def _load(model: nn.Module, theta: torch.Tensor, loss_fn: LossFn, x, y) -> tuple[float, float]:
    """Write the flat ``theta`` into the model; ``(loss, ‖∇L‖)`` recomputed there."""
    best = unflatten_params(theta, param_shapes(model))
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.copy_(best[name])
    loss = loss_fn(model(x), y)
    grads = torch.autograd.grad(loss, list(model.parameters()), allow_unused=True)
    gnorm = torch.sqrt(sum((g.detach() ** 2).sum() for g in grads if g is not None)).item()
    return loss.item(), gnorm


def minimize_grad_norm(model: nn.Module, loss_fn: LossFn, x, y, threshold: float = 1e-4,
                       max_steps: int | None = None, lr: float | None = None,
                       method: str = "newton", damping: float = 1.0,
                       time_limit: float | None = None) -> dict:
    """Minimize ‖∇L‖ of the full-batch loss from the model's current parameters, in place.

    Stops as soon as ‖∇L‖ < ``threshold``, after ``max_steps`` iterations, after
    ``time_limit`` seconds, or when the Newton method stalls (no step lowers ‖∇L‖² even at
    damping weight 1e12). The model ends at the evaluated point with the smallest gradient
    norm. Put it in ``eval()`` if it has dropout.

    Args:
        model: the network, moved in place; float64 for thresholds below ~1e-5
            (``model.double()``; the caller's job).
        loss_fn: the batch-mean loss.
        x: all inputs.
        y: all targets.
        threshold: the gradient norm to reach.
        max_steps: Newton/L-BFGS iterations or Adam steps (default 500 / 3000 / 20000).
        lr: Adam's learning rate (default 1e-4), L-BFGS's (1.0), a scale on the Newton step.
        method: ``"newton"``, ``"lbfgs"`` or ``"adam"`` (see the module docstring).
        damping: initial weight ν of the Newton method's damping ν·max|λ(H)|·‖∇L‖.
        time_limit: seconds, or ``None``.

    Returns:
        ``{grad_norm, loss, loss_start, grad_norm_start, distance, reached, stalled, steps,
        history, method, seconds}``: ``grad_norm`` and ``loss`` recomputed on the model as it
        is left, ``distance`` = ‖θ_end − θ_start‖, ``reached`` whether ``grad_norm <
        threshold`` (a failed run is reported, never raised), ``history`` ``{step, loss,
        grad_norm}`` per iteration (for ``"newton"``: per accepted step).

    Raises:
        UserError: bad settings, a model without parameters, Newton with P > 10,000.

    >>> import torch
    >>> m = torch.nn.Linear(1, 1).double()
    >>> x = torch.linspace(-1, 1, 9, dtype=torch.float64)[:, None]
    >>> r = minimize_grad_norm(m, torch.nn.functional.mse_loss, x, 3 * x - 1, threshold=1e-12)
    >>> r["reached"], round(m.weight.item(), 9), round(m.bias.item(), 9)
    (True, 3.0, -1.0)
    """
    max_steps, lr = _steps_and_lr(method, threshold, max_steps, lr)
    params = list(model.parameters())
    if not params:
        raise UserError("the model has no parameters")
    f, theta, xd, yd = flat_loss(model, loss_fn, x, y, params[0].dtype)
    if method == "newton" and theta.numel() > 10_000:
        raise UserError(f"method='newton' needs the dense Hessian; {theta.numel()} parameters "
                        "is too many: use method='lbfgs'")
    run = _Run(f, xd, yd, threshold, max_steps, time_limit)
    loss0, _, norm0 = run.evaluate(theta)
    if not run.done():
        {"newton": _newton, "lbfgs": _lbfgs, "adam": _adam}[method](run, theta, lr, damping)
    loss, gnorm = _load(model, run.best_theta, loss_fn, xd, yd)
    return {"grad_norm": gnorm, "loss": loss, "loss_start": float(loss0),
            "grad_norm_start": norm0, "distance": (run.best_theta - theta).norm().item(),
            "reached": gnorm < threshold, "stalled": run.stalled, "steps": run.steps,
            "history": run.history, "method": method,
            "seconds": time.perf_counter() - run.t0}


class _Run:
    """Bookkeeping shared by the methods: best iterate, history, stopping rules."""

    def __init__(self, f, x, y, threshold, max_steps, time_limit):
        self.f, self.x, self.y = f, x, y
        self.threshold, self.max_steps, self.time_limit = threshold, max_steps, time_limit
        self.t0, self.steps, self.history = time.perf_counter(), 0, []
        self.best_norm, self.best_theta, self.stalled = float("inf"), None, False

    def seen(self, th, loss, g) -> float:
        norm = g.detach().norm().item()
        if norm < self.best_norm:  # NaN never compares smaller
            self.best_norm, self.best_theta = norm, th.detach().clone()
        return norm

    def evaluate(self, th):
        loss, g = _loss_and_grad(self.f, th, self.x, self.y)
        return loss.detach(), g, self.seen(th, loss, g)

    def log(self, loss, norm):
        self.history.append({"step": self.steps, "loss": float(loss), "grad_norm": norm})

    def done(self) -> bool:
        elapsed = time.perf_counter() - self.t0
        out_of_time = self.time_limit is not None and elapsed > self.time_limit
        return self.best_norm < self.threshold or self.steps >= self.max_steps or out_of_time


def _newton(run: _Run, theta, lr, damping):
    th = theta.clone()
    loss, g, norm = run.evaluate(th)
    nu = damping  # LM weight: the damping term is nu·max|λ|·‖∇L‖ (Fan & Yuan 2005)
    while not run.done():
        lam, q = torch.linalg.eigh(hessian_of(run.f, th, run.x, run.y))
        s = lam.abs().max().clamp_min(1e-300)
        gq = q.T @ g
        run.steps += 1
        step = None
        while step is None and nu <= _NU_MAX:
            den = lam**2 + nu * s * norm
            d = -lr * (q @ (lam / den * gq))
            slope = -2 * lr * float((lam**2 / den * gq**2).sum())  # d‖∇L(θ+αd)‖²/dα at 0
            alpha = 1.0
            for _ in range(_HALVINGS):
                new_loss, new_g, new_norm = run.evaluate(th + alpha * d)
                if new_norm**2 <= norm**2 + _ARMIJO * alpha * slope:  # NaN fails too
                    step = alpha * d
                    break
                alpha /= 2
            nu = max(nu / 4, 1e-12) if step is not None else nu * 8
        if step is None:  # no step lowers ‖∇L‖²: a stall, reported as such
            run.stalled = True
            return
        th, loss, g, norm = th + step, new_loss, new_g, new_norm
        run.log(loss, norm)


def _lbfgs(run: _Run, theta, lr, damping):
    th = theta.clone().requires_grad_(True)
    opt = torch.optim.LBFGS([th], lr=lr, max_iter=20, history_size=100,
                            line_search_fn="strong_wolfe", tolerance_grad=0.0,
                            tolerance_change=0.0)
    last = {}

    def closure():
        opt.zero_grad()
        loss, g = _loss_and_grad(run.f, th, run.x, run.y, create_graph=True)
        last["loss"], last["norm"] = loss.item(), run.seen(th, loss, g)
        obj = g.dot(g)
        obj.backward()
        return obj

    while not run.done():
        opt.param_groups[0]["max_iter"] = min(20, run.max_steps - run.steps)
        opt.step(closure)
        run.steps = opt.state[th]["n_iter"]
        run.log(last["loss"], last["norm"])
        if last["norm"] != last["norm"]:  # NaN: the line search blew up
            return


def _adam(run: _Run, theta, lr, damping):
    th = theta.clone().requires_grad_(True)
    opt = torch.optim.Adam([th], lr=lr)
    while not run.done():
        opt.zero_grad()
        loss, g = _loss_and_grad(run.f, th, run.x, run.y, create_graph=True)
        norm = run.seen(th, loss, g)
        if norm != norm:  # noqa: PLR0124 (NaN)
            return
        g.dot(g).backward()
        opt.step()
        run.steps += 1
        run.log(loss.item(), norm)
