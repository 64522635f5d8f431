"""minimal-ratio (HW1 1-2, what happens when the gradient is almost zero): at the critical
points a small network reaches, how many directions of the full Hessian curve up or down,
and how does that relate to the loss?

Setting (chosen by measurement, docs/methods-minimal-ratio.md): a teacher-student regression
that cannot be interpolated. Inputs x ~ N(0, I₄) (500 points, fixed); targets from a 4-3-1
tanh teacher (rows of W orthogonal, norm 2; output weights +1, −1, +1) plus Gaussian label
noise σ = 0.05, so every critical point has loss > 0 (the global minimum ≈ σ²) and 500
points ≫ 19 parameters. The student is the same 4-3-1 tanh MLP. Each of 100 runs (fresh
init and seed) trains on the MSE with full-batch Adam for a number of epochs cycled through
`train_epochs` (the *phase-2 start*: early checkpoints sit on plateaus near saddles, late
ones near the minimum), then switches the objective to ‖∇L‖²: Newton / Levenberg-Marquardt
steps on ∇L(θ) = 0 with a line search on ‖∇L‖² (`metrics.critical.minimize_grad_norm`;
no step is ever chosen because it lowers L) until ‖∇L‖ < `grad_threshold`. Why not a 1-D
target: tanh nets on sinc(5x) or on a 1-D tanh teacher stall in ill-conditioned valleys
(3 to 4 of 12 runs reached ‖∇L‖ < 1e-8), and nets that can interpolate end at loss ≈ 0.

At the point reached, the exact float64 Hessian of the full-batch loss (all parameters,
cross-layer terms) is diagonalised (`eigvalsh`) and read with tol = c·eps·P·max|λ|
(`metrics.critical.classify_spectrum`, c = `tol_c`): minimal ratio = #(λ > tol)/P, index =
#(λ < −tol)/P, near-zero fraction, and the kind (minimum, saddle, degenerate). The
`tolerances` table repeats this for c = 1 … 1e8. Runs that miss the threshold are kept,
drawn apart and left out of the statistics; runs whose loss changed by more than a factor
`loss_change_flag` during phase 2 are flagged ("moved").

Expected (Dauphin et al. 2014, arXiv:1406.2572, Fig. 1): critical points at higher loss have
a larger index; the lowest are minima (Spearman ρ(loss, index) > 0, ρ(loss, ratio) < 0).
Public peer result: ratio 0.11–0.84 with loss 5e-4 to 0.09.
"""

from __future__ import annotations

import time

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from pydantic import Field, field_validator, model_validator

from dlscope import models
from dlscope.contract.config import ExperimentConfig
from dlscope.contract.runspec import RunResult, RunSpec
from dlscope.experiments import minimal_ratio_report as report
from dlscope.train.engine import TrainConfig, seeded_model, train

NAME = "minimal-ratio"
SECTION = "1-2"
TITLE = "When the gradient is almost zero: minimal ratio and index vs loss"
QUESTION = ("At critical points (‖∇L‖ ≈ 0) reached from 100 fresh initialisations, what "
            "fraction of the full Hessian's eigenvalues is positive (and negative), and how "
            "does it relate to the loss?")
TOL_TABLE = [1.0, 1e2, 1e4, 1e6, 1e8]  # values of c in the tolerance table


class Config(ExperimentConfig):
    """Settings of the minimal-ratio experiment; defaults: the assignment profile."""
    runs: int = Field(100, ge=2, description="independent trainings (fresh init each)")
    model: str = Field("mlp:4-3-1:tanh", description="the student: a small MLP (≤ 3,000 params)")
    target: str = Field("teacher", description="'teacher' (tanh teacher + noise, inputs "
                        "N(0, I)) or a 1-D function spec (then model must be mlp:1-...-1)")
    teacher_width: int = Field(3, ge=1, description="hidden units of the teacher (≤ input dim)")
    n_train: int = Field(500, ge=8, description="training points",
                         json_schema_extra={"memory": ("data", 8)})
    label_noise: float = Field(0.05, ge=0, description="std of Gaussian noise on the targets")
    train_epochs: list[int] = Field([10, 30, 100, 300, 1000], min_length=1,
                                    description="full-batch Adam epochs before phase 2, "
                                    "cycled over runs (the phase-2 start)")
    lr: float = Field(1e-2, gt=0, description="Adam learning rate of the loss phase")
    grad_threshold: float = Field(1e-8, gt=0, description="phase 2 stops when ‖∇L‖ < this")
    max_steps: int = Field(80, ge=1, description="phase-2 iteration budget (Newton steps)")
    time_limit: float = Field(60.0, gt=0, description="phase-2 wall-clock cap per run (s); "
                              "a safety net: the step budget decides, whatever the load")
    method: str = Field("newton", description="newton | lbfgs | adam (metrics.critical)")
    tol_c: float = Field(100.0, ge=0, description="c in tol = c·eps·P·max|λ|")
    loss_change_flag: float = Field(2.0, gt=1, description="flag a run whose loss changed by "
                                    "more than this factor during phase 2")
    seed: int = Field(0, ge=0, description="seeds the data (teacher, noise) and the inits")

    @field_validator("model")
    @classmethod
    def _small_model(cls, value: str) -> str:
        from dlscope.errors import UserError

        try:
            spec = models.parse_model(value)
        except UserError as exc:
            raise ValueError(str(exc)) from None
        if not isinstance(spec, models.MLPSpec) or spec.output_dim != 1:
            raise ValueError("needs a regression MLP with one output (mlp:d-...-1)")
        if models.count_params(spec) > 3000:
            raise ValueError("the exact Hessian needs a small net (at most 3,000 parameters)")
        return value

    @field_validator("method")
    @classmethod
    def _known_method(cls, value: str) -> str:
        if value not in ("newton", "lbfgs", "adam"):
            raise ValueError(f"unknown method {value!r} (newton, lbfgs, adam)")
        return value

    @model_validator(mode="after")
    def _target_fits_model(self):
        d = models.parse_model(self.model).input_dim
        if self.target == "teacher":
            if self.teacher_width > d:
                raise ValueError(f"teacher_width {self.teacher_width} exceeds the input "
                                 f"dimension {d} (orthogonal teacher rows)")
        elif d != 1:
            raise ValueError(f"a function target needs a 1-D input model, not {self.model}")
        else:
            from dlscope.data.functions import check_target

            check_target(self.target)  # UserError: unknown, or not finite on its domain
        return self


PROFILES = {"quick": {"runs": 10, "n_train": 200, "train_epochs": [10, 1000],
                      "max_steps": 30}}


def function_data(p: dict) -> dict:
    """The dataset description of a 1-D target (its points do not depend on the seed)."""
    return {"kind": "function", "spec": p["target"], "n_train": p["n_train"], "n_test": 16,
            "seed": 0}


def memory(params: dict) -> dict[str, int]:
    """The contract's memory hook: each run forms its model's full P x P Hessian (float64)."""
    return {"hessian": 8 * models.count_params(params["model"]) ** 2}


def runs(cfg: Config) -> list[RunSpec]:
    out = []
    for i in range(cfg.runs):
        epochs = cfg.train_epochs[i % len(cfg.train_epochs)]
        params = {"run": i, "seed": cfg.seed * 100003 + i, "data_seed": cfg.seed,
                  "model": cfg.model, "target": cfg.target, "teacher_width": cfg.teacher_width,
                  "n_train": cfg.n_train, "label_noise": cfg.label_noise,
                  "train": TrainConfig(lr=cfg.lr, epochs=epochs, eval_test=False).model_dump(),
                  "grad_threshold": cfg.grad_threshold, "max_steps": cfg.max_steps,
                  "time_limit": cfg.time_limit, "method": cfg.method, "tol_c": cfg.tol_c,
                  "loss_change_flag": cfg.loss_change_flag}
        out.append(RunSpec(NAME, f"run{i:03d}", __name__, params, data=(
            function_data(params) if cfg.target != "teacher" else None)))
    return out


def teacher_data(d: int, width: int, n: int, noise: float, seed: int):
    """float64 ``(x, y)``: x ~ N(0, I_d); y = tanh(x Wᵀ)·a + noise·N(0, 1), W with orthogonal
    rows of norm 2, a = (+1, −1, +1, …); all drawn from a generator seeded with ``seed``."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g, dtype=torch.float64)
    q = torch.linalg.qr(torch.randn(d, d, generator=g, dtype=torch.float64))[0]
    w = 2 * q[:width]
    a = torch.tensor([(-1.0) ** i for i in range(width)], dtype=torch.float64)
    y = (torch.tanh(x @ w.T) @ a)[:, None]
    return x, y + noise * torch.randn(n, 1, generator=g, dtype=torch.float64)


def _data(p: dict, ctx):
    from dlscope.data.dataset import Dataset

    if p["target"] == "teacher":
        d = models.parse_model(p["model"]).input_dim
        x, y = teacher_data(d, p["teacher_width"], p["n_train"], p["label_noise"], p["data_seed"])
        ds = Dataset(x.float(), y.float(), x[:8].float(), y[:8].float(), name="teacher",
                     n_classes=None, source="tanh teacher + Gaussian noise")
        return ds.to(ctx.device), x.to(ctx.device), y.to(ctx.device)
    ds = ctx.dataset(function_data(p))
    x, y = ds.x_train.double(), ds.y_train.double()
    if p["label_noise"] > 0:
        g = torch.Generator().manual_seed(p["data_seed"])
        y = y + p["label_noise"] * torch.randn(y.shape, generator=g, dtype=torch.float64).to(y)
        ds = Dataset(ds.x_train, y.float(), ds.x_test, ds.y_test, ds.name, None, ds.source)
    return ds, x, y


_WARM = []


def _warm_up():
    """torch.func's first Hessian in a process costs seconds: pay it outside the time limit."""
    if not _WARM:
        from dlscope.metrics.hessian import hessian_eigenvalues

        one = torch.ones(2, 1, dtype=torch.float64)
        hessian_eigenvalues(torch.nn.Linear(1, 1).double(), F.mse_loss, one, one)
        _WARM.append(True)


def run_one(p: dict, ctx) -> RunResult:
    from dlscope.metrics.critical import classify_spectrum, minimize_grad_norm
    from dlscope.metrics.hessian import hessian_eigenvalues

    _warm_up()
    t0 = time.perf_counter()
    ds, x, y = _data(p, ctx)
    spec = models.parse_model(p["model"])
    model = seeded_model(lambda: models.build(spec), p["seed"]).to(ctx.device)
    trained = train(model, ds, TrainConfig(**p["train"]), seed=p["seed"])
    model = model.double()
    theta_norm = float(torch.cat([q.detach().ravel() for q in model.parameters()]).norm())
    crit = minimize_grad_norm(model, F.mse_loss, x, y, threshold=p["grad_threshold"],
                              max_steps=p["max_steps"], method=p["method"],
                              time_limit=p["time_limit"])
    eig = hessian_eigenvalues(model, F.mse_loss, x, y)
    cls = classify_spectrum(eig, p["tol_c"])
    factor = max(crit["loss"] / crit["loss_start"], crit["loss_start"] / crit["loss"]) \
        if crit["loss"] > 0 and crit["loss_start"] > 0 else float("inf")
    status = ("diverged" if trained.status == "diverged" else "missed" if not crit["reached"]
              else "moved" if factor > p["loss_change_flag"] else "ok")
    return RunResult(
        values={"status": status, "run": p["run"], "start_epochs": p["train"]["epochs"],
                "loss_start": crit["loss_start"], "loss": float(crit["loss"]),
                "loss_factor": factor, "grad_norm_start": crit["grad_norm_start"],
                "grad_norm": float(crit["grad_norm"]), "reached": bool(crit["reached"]),
                "stalled": bool(crit["stalled"]), "distance": crit["distance"],
                "theta_norm_start": theta_norm, "steps": int(crit["steps"]),
                "phase2_s": crit["seconds"], "n_params": int(eig.size),
                **{k: cls[k] for k in ("minimal_ratio", "index", "frac_zero", "kind", "tol")},
                "lambda_min": float(eig.min()), "lambda_max": float(eig.max()),
                "wall_s": time.perf_counter() - t0},
        arrays={"eigenvalues": eig.astype(np.float64)})


COLUMNS = ["run", "start_epochs", "loss", "grad_norm", "reached", "n_params", "minimal_ratio",
           "index", "frac_zero", "kind", "tol", "lambda_min", "lambda_max", "loss_start",
           "loss_factor", "grad_norm_start", "distance", "theta_norm_start", "stalled", "steps",
           "phase2_s", "wall_s", "status"]


def analyze(cfg: Config, results) -> dict[str, pd.DataFrame]:
    """Tables from the run results: results (a row per critical point) and spectra."""
    from dlscope.metrics.critical import classify_spectrum

    rows = [{k: r.values.get(k) for k in COLUMNS} for _, r in results]
    spectra, tols = [], []
    for _, r in results:
        ev = r.arrays["eigenvalues"]
        spectra.append(pd.DataFrame({"run": r.values["run"], "k": np.arange(len(ev)),
                                     "eigenvalue": ev}))
        for c in TOL_TABLE:
            cls = classify_spectrum(ev, c)
            tols.append({"run": r.values["run"], "c": c, "rel_tol": cls["tol"] / np.abs(ev).max()
                         if np.abs(ev).max() > 0 else 0.0, "reached": r.values["reached"],
                         **{k: cls[k] for k in ("tol", "minimal_ratio", "index", "frac_zero",
                                                "kind")}})
    return {"results": pd.DataFrame(rows, columns=COLUMNS),
            "spectra": pd.concat(spectra, ignore_index=True) if spectra else
            pd.DataFrame(columns=["run", "k", "eigenvalue"]),
            "tolerances": pd.DataFrame(tols, columns=["run", "c", "rel_tol", "reached", "tol",
                                                      "minimal_ratio", "index", "frac_zero",
                                                      "kind"])}


figures = report.figures
observations = report.observations
statistics = report.statistics
verdicts = report.verdicts
headline = report.headline
