"""Measurements on trained models; none of them knows about experiments.

- `dlscope.metrics.flat`: the flat parameter vector θ (`flatten_params`, the one flattener),
  the loss and the exact Hessian as functions of θ
- `dlscope.metrics.hessian`: exact full Hessians (float64), HVPs, minimal ratio
- curvature of any operator (`HessianOperator`, any object with `shape`, `dtype`,
  `matvec`), or of a model over a pair of tensors or a DataLoader (`data`,
  metrics/batches.py): `hessian_trace` (Hutchinson or exact), `hessian_density` (stochastic
  Lanczos quadrature), `extreme_eigenvalues(..., which="top", return_vectors=True)` (an
  `EigenResult`), `hvp_operator`, `full_loss`, `iter_batches`
- `dlscope.metrics.critical`: reaching ‖∇L‖ ≈ 0 (`minimize_grad_norm`)
- `dlscope.metrics.sensitivity(model, x, output="softmax"|"logits")`: per-sample
  input-Jacobian norms (module `dlscope.metrics.input_sensitivity`)
- `dlscope.metrics.sharpness(model, loss_fn, x, y, epsilon)`: Keskar et al. ε-sharpness
  (module `dlscope.metrics.epsilon_sharpness`)
- `dlscope.metrics.interpolate(model_a, model_b, alphas, evaluate)`: θ(α) = (1−α)θ_a + αθ_b
- `dlscope.metrics.trajectory`: PCA of parameter snapshots and loss planes (`pca`, `loss_plane`)
"""

from dlscope.metrics import hessian
from dlscope.metrics.batches import full_loss, iter_batches
from dlscope.metrics.critical import minimize_grad_norm
from dlscope.metrics.density import DensityResult, hessian_density
from dlscope.metrics.epsilon_sharpness import sharpness
from dlscope.metrics.flat import flatten_params
from dlscope.metrics.hessian import full_hessian, hessian_eigenvalues, hvp_operator, minimal_ratio
from dlscope.metrics.input_sensitivity import loss_input_grad_norm, sensitivity
from dlscope.metrics.interpolation import alpha_grid, evaluate_classifier, interpolate
from dlscope.metrics.operators import CurvatureOperator, HessianOperator
from dlscope.metrics.spectrum import EigenResult, extreme_eigenvalues
from dlscope.metrics.trace import TraceResult, hessian_trace
from dlscope.metrics.trajectory import loss_plane, pca

__all__ = ["CurvatureOperator", "DensityResult", "EigenResult", "HessianOperator",
           "TraceResult", "alpha_grid", "evaluate_classifier", "extreme_eigenvalues",
           "flatten_params", "full_hessian", "full_loss", "hessian", "hessian_density",
           "hessian_eigenvalues", "hessian_trace", "hvp_operator", "interpolate",
           "iter_batches", "loss_input_grad_norm", "loss_plane", "minimal_ratio",
           "minimize_grad_norm", "pca", "sensitivity", "sharpness"]
