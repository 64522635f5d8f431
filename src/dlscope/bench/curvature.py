"""The bench's curvature figures: an exact 1,000-parameter Hessian spectrum, and HVP rate,
top eigenvalues, trace and density of the bench MLP on 10,000 MNIST images."""

from __future__ import annotations

import time

import torch
import torch.nn.functional as F

from dlscope import models
from dlscope.bench.floors import MLP
from dlscope.bench.timing import Log, load, med
from dlscope.train.engine import seeded_model


def hessian_seconds(log: Log) -> float | None:
    try:
        from dlscope.metrics.hessian import hessian_eigenvalues
    except ImportError as exc:
        log(f"hessian_1k_s: null (dlscope.metrics.hessian unavailable: {exc})")
        return None
    from dlscope import data

    ds = data.function_dataset(spec="sinc", n_train=1000, n_test=16, seed=0)
    widths = models.width_for_params(2, 1000)
    model = seeded_model(lambda: models.build(models.MLPSpec(hidden=tuple(widths))), 0)
    t = time.perf_counter()
    eig = hessian_eigenvalues(model, F.mse_loss, ds.x_train, ds.y_train)
    elapsed = time.perf_counter() - t
    if len(eig) != models.module_params(model):
        log(f"hessian_1k_s: expected {models.module_params(model)} eigenvalues, got {len(eig)}")
    return elapsed


def curvature_figures(log: Log, n: int = 10000, repeats: int = 1) -> dict:
    """Curvature of the 784-128-64-10 MLP (seed 0, at initialisation) on the first ``n``
    MNIST training images, float64, cross-entropy (medians over ``repeats``):

        hvp_per_s             Hessian-vector products per second (HessianOperator.matvec)
        hessian_top5_s        extreme_eigenvalues(k=5, which="top"), tol 1e-8
        hessian_top5_hvps     the HVPs it used
        hessian_trace_s       hessian_trace, Hutchinson, rtol 1e-2, at most 100 probes
        hessian_trace_probes  the probes it used
        hessian_density_s     hessian_density, 1 probe x 80 Lanczos steps (PyHessian-like)
    """
    from dlscope import data
    from dlscope.metrics import extreme_eigenvalues, hessian_density, hessian_trace
    from dlscope.metrics.operators import HessianOperator

    flat = data.mnist_dataset(data.MnistOptions(flatten=True), log=lambda _m: None)
    xy = (flat.x_train[:n], flat.y_train[:n])
    model = seeded_model(lambda: models.build(MLP), 0)
    loss = F.cross_entropy
    rows = []
    for _ in range(max(1, int(repeats))):
        op = HessianOperator(model, loss, xy)
        v = torch.ones(op.p, dtype=torch.float64)
        op.matvec(v)  # warm-up
        k, t = 10, time.perf_counter()
        for _ in range(k):
            op.matvec(v)
        t_hvp = time.perf_counter() - t
        t = time.perf_counter()
        top = extreme_eigenvalues(model, loss, xy, k=5, which="top", return_vectors=True)
        t_top = time.perf_counter() - t
        tr = hessian_trace(model, loss, xy, exact=False, rtol=1e-2, max_probes=100)
        d = hessian_density(model, loss, xy, probes=1, steps=80)
        rows.append({"hvp": k / t_hvp, "top": t_top, "top_hvps": top.hvps - 5,
                     "trace": tr.wall_s, "probes": tr.probes, "density": d.wall_s})
        log(f"bench: curvature on {n:,} images: {k / t_hvp:.1f} HVPs/s; top-5 {t_top:.2f} s "
            f"({top.hvps} HVPs, λmax {top.top[-1]:.4g}); trace {tr.trace:.4g} ± "
            f"{tr.stderr:.2g} in {tr.wall_s:.2f} s ({tr.probes} probes); density "
            f"{d.wall_s:.2f} s (load {load()})")
    return {"hvp_per_s": med(r["hvp"] for r in rows),
            "hessian_top5_s": med(r["top"] for r in rows),
            "hessian_top5_hvps": med(r["top_hvps"] for r in rows),
            "hessian_trace_s": med(r["trace"] for r in rows),
            "hessian_trace_probes": med(r["probes"] for r in rows),
            "hessian_density_s": med(r["density"] for r in rows)}
