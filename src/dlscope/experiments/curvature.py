"""curvature (HW1 1-2, Hessian spectrum during training): what does the Hessian's eigenvalue
density of an MNIST MLP look like at the start and at the end of training?

Setup: the 784-128-64-10 ReLU MLP trained with Adam (lr 1e-3, batch 64) on a seeded subset of
MNIST. At a few checkpoint epochs (0 = initialisation) we measure on the first
`hessian_subset` training images, in float64: the top Hessian eigenvalue (Lanczos, `eigsh`),
the trace (Hutchinson, Rademacher probes, with its standard error) and, at the first and the
last checkpoint, the eigenvalue density by stochastic Lanczos quadrature (metrics/density.py).
Several seeds; statistics over seeds with 95% t-intervals (experiments/stats.py).

Expected (Sagun et al. 2017, arXiv:1706.04454; Ghorbani, Krishnan & Xiao 2019,
arXiv:1901.10159; SCIENCE.md §5): after training the spectrum is a bulk concentrated near
zero plus a few large outliers (about as many as classes), separated from the bulk by a gap.
Measured rule here: at the end of training (a) at least 90% of the density's mass lies within
|λ| ≤ 1% of λmax, and (b) λmax is at least 10 times the 99th percentile of |λ| under the SLQ
measure (the bulk's edge). Reproduced if the lower ends of the 95% intervals over seeds of
both statistics clear their thresholds; not reproduced if an upper end falls below.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from pydantic import Field, field_validator, model_validator

from dlscope import models, plotting
from dlscope.contract.config import ExperimentConfig
from dlscope.contract.runspec import RunResult, RunSpec
from dlscope.experiments import stats
from dlscope.experiments.inputs import (
    MODEL_HELP,
    ImageInputs,
    Model,
    build_model,
    setup,
    tag,
)
from dlscope.metrics.density import hessian_density, smooth
from dlscope.metrics.hessian import extreme_eigenvalues
from dlscope.metrics.trace import hessian_trace
from dlscope.train.engine import TrainConfig, train

NAME = "curvature"
SECTION = "1-2"
TITLE = "Optimization: Hessian spectrum during training"
QUESTION = ("How does the Hessian's eigenvalue density of an MNIST MLP change from the start "
            "to the end of training: does it become a bulk near zero plus a few outliers?")
MODEL = "mlp:784-128-64-10"
CLAIM = ("After training, the Hessian spectrum is a bulk concentrated near zero plus a few "
         "large outliers separated from it.")
SOURCE = "Sagun et al. 2017 (arXiv:1706.04454); Ghorbani et al. 2019 (arXiv:1901.10159)"
PUBLISHED = ("qualitative: bulk near 0, outliers (about one per class) far above it; no "
             "published numbers for this MLP")
BAND, MASS_MIN, RATIO_MIN = 0.01, 0.9, 10.0


class Config(ExperimentConfig, ImageInputs):
    """Settings of the curvature experiment; defaults: the assignment profile."""
    seeds: int = Field(3, ge=1, description="seeds 0..n-1 (init, batch order and subset)")
    train_subset: int = Field(4000, ge=64, description="training images (seeded subset)")
    model: Model = Field(MODEL, description=MODEL_HELP + "; no dropout or BatchNorm")
    epochs: int = Field(6, ge=1, description="Adam epochs")
    batch: int = Field(64, ge=1, description="mini-batch size")
    lr: float = Field(1e-3, gt=0, description="Adam learning rate")
    checkpoints: list[int] = Field([0, 1, 2, 6], min_length=2,
                                   description="epochs where the Hessian is measured (0 = init)")
    hessian_subset: int = Field(1000, ge=10, description="first n training images for the Hessian")
    density_probes: int = Field(2, ge=1, description="SLQ probes")
    density_steps: int = Field(60, ge=2, description="Lanczos steps per probe")
    trace_probes: int = Field(40, ge=2, description="Hutchinson probe cap")
    trace_rtol: float = Field(0.05, gt=0, description="Hutchinson stop: stderr <= rtol*|trace|")

    @field_validator("checkpoints")
    @classmethod
    def _unique(cls, v: list[int]) -> list[int]:
        if len(set(v)) != len(v) or min(v) < 0:
            raise ValueError(f"values must be distinct and >= 0, got {v}")
        return sorted(v)

    @model_validator(mode="after")
    def _fits(self) -> Config:
        if max(self.checkpoints) > self.epochs or 0 not in self.checkpoints:
            raise ValueError(f"checkpoints must include 0 and lie in [0, epochs={self.epochs}]")
        if self.hessian_subset > self.train_subset:
            raise ValueError("hessian_subset must not exceed train_subset")
        return self


PROFILES = {"quick": {"seeds": 2, "train_subset": 2000, "epochs": 2,
                      "checkpoints": [0, 1, 2], "hessian_subset": 500, "density_steps": 40,
                      "trace_probes": 20, "density_probes": 1}}


def runs(cfg: Config) -> list[RunSpec]:
    su = setup(cfg.model, cfg.data, {"train_subset": cfg.train_subset}, NAME,
               deterministic=True)

    def data(s: int) -> dict:
        return {**su.data, "seed": s}

    return [RunSpec(NAME, f"seed{s}", __name__, {
        "seed": s, "model": su.model, "data": data(s), "data_name": tag(su.info),
        "train": TrainConfig(lr=cfg.lr, batch_size=cfg.batch, epochs=cfg.epochs,
                             eval_test=False).model_dump(),
        "checkpoints": cfg.checkpoints, "hessian_subset": cfg.hessian_subset,
        "density": [cfg.density_probes, cfg.density_steps],
        "trace": [cfg.trace_probes, cfg.trace_rtol]}, data=data(s)) for s in range(cfg.seeds)]


def _model_name(cfg: Config) -> str:
    return cfg.model if isinstance(cfg.model, str) else str(cfg.model.get("factory"))


def run_one(p: dict, ctx) -> RunResult:
    """Train one seed and measure the spectrum at its checkpoints."""
    ds = ctx.dataset(p["data"])
    model = build_model(p, ds, p["seed"], ctx.device)
    n = p["hessian_subset"]
    data = (ds.x_train[:n], ds.y_train[:n])
    first, last = min(p["checkpoints"]), max(p["checkpoints"])
    rows, arrays = [], {}

    def on_epoch(epoch: int, m, _metrics) -> None:
        if epoch not in p["checkpoints"]:
            return
        top = extreme_eigenvalues(m, F.cross_entropy, data, k=1, which="top", tol=1e-6).top
        tr = hessian_trace(m, F.cross_entropy, data, exact=False, max_probes=p["trace"][0],
                           rtol=p["trace"][1], seed=p["seed"])
        row = {"epoch": epoch, "lambda_max": float(top[-1]), "trace": tr.trace,
               "trace_se": tr.stderr, "trace_probes": tr.probes}
        with torch.no_grad():
            row["loss"] = float(F.cross_entropy(m(data[0]), data[1]))
        if epoch in (first, last):
            d = hessian_density(m, F.cross_entropy, data, probes=p["density"][0],
                                steps=p["density"][1], seed=p["seed"])
            arrays[f"ritz_{epoch}"], arrays[f"weights_{epoch}"] = d.ritz, d.weights
            row |= {"mass_band": d.mass(-BAND * d.lambda_max, BAND * d.lambda_max),
                    "bulk_edge": d.quantile_abs(0.99), "slq_lambda_min": d.lambda_min,
                    "slq_lambda_max": d.lambda_max}
            row["outlier_ratio"] = row["lambda_max"] / row["bulk_edge"]
        rows.append(row)

    res = train(model, ds, TrainConfig(**p["train"]), seed=p["seed"], on_epoch=on_epoch)
    return RunResult(values={"status": res.status, "rows": rows, "wall_s": res.wall_s,
                             "params": models.module_params(model)}, arrays=arrays)


def analyze(cfg: Config, results) -> dict[str, pd.DataFrame]:
    """Tables from the run results: results (a row per run) and ritz (Ritz values)."""
    rows, dens = [], []
    for spec, r in results:
        s = spec.params["seed"]
        rows += [{"seed": s, "status": r.status, **row} for row in r.values["rows"]]
        for key in r.arrays:
            if key.startswith("ritz_"):
                e = int(key[5:])
                w = r.arrays[f"weights_{e}"]
                ok = w > 0
                probe = np.broadcast_to(np.arange(w.shape[0])[:, None], w.shape)
                dens.append(pd.DataFrame({"seed": s, "epoch": e, "probe": probe[ok],
                                          "ritz": r.arrays[key][ok], "weight": w[ok]}))
    return {"results": pd.DataFrame(rows),
            "ritz": pd.concat(dens, ignore_index=True) if dens else pd.DataFrame()}


def _density(g: pd.DataFrame, grid: np.ndarray, sigma: float) -> np.ndarray:
    probes = g.groupby("probe").ngroups
    return smooth(g.ritz.to_numpy()[None, :], g.weight.to_numpy()[None, :] / probes * 1.0,
                  grid, sigma)


def figures(cfg: Config, tables) -> dict:
    """The figures, by name, drawn from the tables."""
    res, rz = tables["results"], tables["ritz"]
    if res.empty or rz.empty:
        return {}
    fig, (ax_d, ax_t) = plotting.figure(2, width=5.6, height=4.0)
    lo, hi = rz.ritz.min(), rz.ritz.max()
    sigma = float(np.sqrt(1e-5 * max(1.0, hi - lo)))
    grid = np.linspace(lo - 5 * sigma, hi + 5 * sigma, 2000)
    for (epoch, seed), g in rz.groupby(["epoch", "seed"]):
        d = _density(g, grid, sigma)
        color = "tab:blue" if epoch == rz.epoch.min() else "tab:red"
        ax_d.semilogy(grid, np.maximum(d, d.max() * 1e-7), lw=0.9, color=color, alpha=0.8,
                      label=f"epoch {epoch}" if seed == rz.seed.min() else None)
    plotting.finish(ax_d, f"Hessian density (SLQ, σ = {sigma:.2g}), all seeds", "eigenvalue λ",
                    "density")
    for col, color, label in (("lambda_max", "tab:red", "λmax"), ("trace", "tab:blue", "trace")):
        for seed, g in res.groupby("seed"):
            ax_t.plot(g.epoch, g[col], "o-", color=color, alpha=0.7, ms=3,
                      label=label if seed == res.seed.min() else None)
    ax_t.set_yscale("log")
    plotting.finish(ax_t, f"{_model_name(cfg)}, Hessian on {cfg.hessian_subset} images", "epoch",
                    "λmax, tr H (Hutchinson)")
    return {"density": fig}


def _final(tables) -> pd.DataFrame:
    res = tables["results"]
    return res[(res.epoch == res.epoch.max()) & res.outlier_ratio.notna()]


def statistics(cfg: Config, tables) -> dict:
    """The numbers over seeds behind the verdicts and observations (summary.json)."""
    res = tables["results"]
    out = {}
    for e, g in res.groupby("epoch"):
        out[f"epoch{e}"] = {c: stats.interval(g[c]).to_dict() for c in
                            ("lambda_max", "trace", "mass_band", "outlier_ratio")
                            if c in g and g[c].notna().any()}
    return out


def verdicts(cfg: Config, tables) -> list[stats.Verdict]:
    """The published claims this run tests, each with its outcome."""
    f = _final(tables)
    mass, ratio = stats.interval(f.mass_band), stats.interval(f.outlier_ratio)
    statistic = (f"at epoch {cfg.epochs}: mass within |λ| ≤ {BAND:g}·λmax {mass.text('.3f')}; "
                 f"λmax / 99th percentile of |λ| {ratio.text('.3g')}")
    rule = (f"reproduced if the interval's lower ends clear mass ≥ {MASS_MIN} and ratio ≥ "
            f"{RATIO_MIN:g}; not reproduced if an upper end falls below; else inconclusive")
    if cfg.epochs < 4 or cfg.train_subset < 4000:
        return [stats.pipeline_check(CLAIM, SOURCE, PUBLISHED,
                                     f"quick run ({cfg.epochs} epochs on {cfg.train_subset} "
                                     f"images): {statistic}")]
    if mass.n < stats.MIN_SEEDS:
        outcome = "inconclusive"
    elif mass.lo >= MASS_MIN and ratio.lo >= RATIO_MIN:
        outcome = "reproduced"
    elif mass.hi < MASS_MIN or ratio.hi < RATIO_MIN:
        outcome = "not reproduced"
    else:
        outcome = "inconclusive"
    return [stats.Verdict(CLAIM, SOURCE, PUBLISHED, statistic, rule, outcome)]


def observations(cfg: Config, tables) -> list[str]:
    """What this run shows, in sentences for the report."""
    res, out = tables["results"], []
    for e, g in res.groupby("epoch"):
        se = g.trace_se.median()
        s = (f"epoch {e}: loss on the Hessian subset {stats.interval(g.loss).text('.3g')}; "
             f"λmax {stats.interval(g.lambda_max).text('.3g')}; trace "
             f"{stats.interval(g.trace).text('.3g')} (Hutchinson"
             + (f", median standard error {se:.2g})" if np.isfinite(se) else ")"))
        if g.outlier_ratio.notna().any():
            ritz = g.slq_lambda_min.median()
            s += (f"; density mass within |λ| ≤ {BAND:g}·λmax "
                  f"{stats.interval(g.mass_band).text('.3f')}, λmax / bulk edge (99th "
                  f"percentile of |λ|) {stats.interval(g.outlier_ratio).text('.3g')}"
                  + (f", smallest Ritz value {ritz:.3g}" if np.isfinite(ritz) else ""))
        out.append(s + ".")
    return out


def headline(cfg: Config, tables) -> dict:
    """A few numbers that summarise this run (summary.json's headline)."""
    f = _final(tables)
    return {"final/lambda_max": float(f.lambda_max.median()),
            "final/mass_band": float(f.mass_band.median()),
            "final/outlier_ratio": float(f.outlier_ratio.median())}
