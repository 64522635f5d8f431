"""Measurements on trained models; none of them knows about experiments.

- `dlscope.metrics.hessian`: exact full Hessians (float64), HVPs, extreme eigenvalues, minimal ratio
- `dlscope.metrics.critical`: reaching ‖∇L‖ ≈ 0
- `dlscope.metrics.sensitivity(model, x, output="softmax"|"logits")`: per-sample input-Jacobian norms
- `dlscope.metrics.sharpness(model, loss_fn, x, y, epsilon)`: Keskar et al. ε-sharpness
- `dlscope.metrics.interpolate(model_a, model_b, alphas, evaluate)`: θ(α) = (1−α)θ_a + αθ_b
- `dlscope.metrics.trajectory`: PCA of parameter snapshots and loss planes
"""

from dlscope.metrics import hessian
from dlscope.metrics.hessian import minimal_ratio
from dlscope.metrics.interpolation import alpha_grid, evaluate_classifier, interpolate
from dlscope.metrics.sensitivity import loss_input_grad_norm, sensitivity
from dlscope.metrics.sharpness import sharpness

__all__ = ["alpha_grid", "evaluate_classifier", "hessian", "interpolate",
           "loss_input_grad_norm", "minimal_ratio", "sensitivity", "sharpness"]
