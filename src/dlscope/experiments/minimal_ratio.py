"""minimal-ratio (HW1 1-2, what happens when the gradient is almost zero): at the critical
points a small network reaches, how many directions of the full Hessian curve upward, and
how does that relate to the loss?

Setup: 100 independent runs (fresh init and seed each) of a small tanh MLP (1-12-12-1,
193 parameters) on sin(5πx)/(5πx) over [-1, 1]. Each run trains on the MSE with full-batch
Adam (the training budget cycles through `train_epochs`, so the runs end at different
losses), then switches the objective to the gradient norm: Levenberg-Marquardt steps on
∇L(θ) = 0 with the exact float64 Hessian (`metrics.critical.minimize_grad_norm`) until
‖∇L‖ < `grad_threshold`. At that point the exact full Hessian of the full-batch loss (all
parameters, cross-layer terms included) is diagonalised with `eigvalsh`, and
minimal ratio = #(λ > tol) / #params with tol = rel_tol · max|λ|; the negative and near-zero
fractions are reported too. Runs that never reach the threshold are kept, flagged and
drawn apart, never mixed in.

Expected (Dauphin et al. 2014): lower loss, fewer negative directions, ratio toward 1 (a
negative Spearman correlation between loss and minimal ratio). Public peer result: ratio
0.11–0.84 with loss 5e-4 to 0.09.

Wall time on a 2-core CPU: quick ~20 s; assignment (100 runs) ~3 min with two workers.
"""

from __future__ import annotations

import time

import numpy as np
import pandas as pd
import torch.nn.functional as F
from pydantic import Field, field_validator

from dlscope import models, plotting
from dlscope.execution.config import ExperimentConfig
from dlscope.train.engine import TrainConfig, seeded_model, train
from dlscope.execution.runspec import RunResult, RunSpec

NAME = "minimal-ratio"
SECTION = "1-2"
TITLE = "When the gradient is almost zero: minimal ratio vs loss"
QUESTION = ("At critical points (‖∇L‖ ≈ 0) reached from 100 fresh initialisations, what "
            "fraction of the full Hessian's eigenvalues is positive, and how does it relate "
            "to the loss?")


class Config(ExperimentConfig):
    runs: int = Field(100, ge=2, description="independent trainings (fresh init each)")
    model: str = Field("mlp:1-12-12-1:tanh", description="a small net: a few hundred params")
    function: str = Field("sinc", description="target function (registry name or expr:...)")
    n_train: int = Field(200, ge=8, description="evenly spaced training points")
    train_epochs: list[int] = Field([300, 1000, 3000], min_length=1,
                                    description="full-batch Adam steps, cycled over runs")
    lr: float = Field(1e-2, gt=0, description="Adam learning rate of the loss phase")
    grad_threshold: float = Field(1e-5, gt=0, description="stop when ‖∇L‖ is below this")
    max_steps: int = Field(500, ge=1, description="gradient-norm phase step budget")
    method: str = Field("newton", description="newton | lbfgs | adam (metrics.critical)")
    rel_tol: float = Field(1e-6, gt=0, description="|λ| ≤ rel_tol·max|λ| counts as zero")
    seed: int = 0

    @field_validator("model")
    @classmethod
    def _small_model(cls, value: str) -> str:
        from dlscope.errors import UserError

        try:
            spec = models.parse_model(value)
        except UserError as exc:
            raise ValueError(str(exc)) from None
        if not isinstance(spec, models.MLPSpec) or spec.input_dim != 1 or spec.output_dim != 1:
            raise ValueError("needs a 1-D regression MLP (mlp:1-...-1)")
        if models.count_params(spec) > 3000:
            raise ValueError("the exact Hessian needs a small net (at most 3,000 parameters)")
        return value

    @field_validator("method")
    @classmethod
    def _known_method(cls, value: str) -> str:
        if value not in ("newton", "lbfgs", "adam"):
            raise ValueError(f"unknown method {value!r} (newton, lbfgs, adam)")
        return value


PROFILES = {"quick": {"runs": 12, "n_train": 100, "train_epochs": [150, 500, 1500]}}


def runs(cfg: Config) -> list[RunSpec]:
    out = []
    for i in range(cfg.runs):
        epochs = cfg.train_epochs[i % len(cfg.train_epochs)]
        params = {"run": i, "seed": cfg.seed * 100003 + i, "model": cfg.model,
                  "function": cfg.function, "n_train": cfg.n_train,
                  "train": TrainConfig(lr=cfg.lr, epochs=epochs, eval_test=False).model_dump(),
                  "grad_threshold": cfg.grad_threshold, "max_steps": cfg.max_steps,
                  "method": cfg.method, "rel_tol": cfg.rel_tol}
        out.append(RunSpec(NAME, f"run{i:03d}", f"{__name__}:critical_point", params))
    return out


def critical_point(p: dict, ctx) -> RunResult:
    from dlscope.metrics.critical import minimize_grad_norm
    from dlscope.metrics.hessian import hessian_eigenvalues, minimal_ratio

    t0 = time.perf_counter()
    ds = ctx.dataset({"kind": "function", "spec": p["function"], "n_train": p["n_train"],
                      "n_test": 16, "seed": 0})
    spec = models.parse_model(p["model"])
    model = seeded_model(lambda: models.build(spec), p["seed"]).to(ctx.device)
    trained = train(model, ds, TrainConfig(**p["train"]), seed=p["seed"])
    model = model.double()
    x, y = ds.x_train.double(), ds.y_train.double()
    crit = minimize_grad_norm(model, F.mse_loss, x, y, threshold=p["grad_threshold"],
                              max_steps=p["max_steps"], method=p["method"])
    eig = hessian_eigenvalues(model, F.mse_loss, x, y)
    ratio = minimal_ratio(eig, rel_tol=p["rel_tol"])
    status = "diverged" if trained.status == "diverged" else (
        "ok" if crit["reached"] else "missed")
    return RunResult(
        values={"status": status, "run": p["run"], "loss": float(crit["loss"]),
                "grad_norm": float(crit["grad_norm"]), "reached": bool(crit["reached"]),
                "n_params": int(eig.size), "loss_before": trained.final("train_loss"),
                "train_epochs": p["train"]["epochs"], "steps": int(crit["steps"]),
                **{k: float(ratio[k]) for k in ("minimal_ratio", "frac_negative", "frac_zero",
                                                "lambda_min", "lambda_max")},
                "wall_s": time.perf_counter() - t0},
        arrays={"eigenvalues": eig.astype(np.float64)})


COLUMNS = ["run", "loss", "grad_norm", "reached", "n_params", "minimal_ratio", "frac_negative",
           "frac_zero", "lambda_min", "lambda_max", "loss_before", "train_epochs", "steps",
           "status"]


def analyze(cfg: Config, results) -> dict[str, pd.DataFrame]:
    rows = [{k: r.values.get(k) for k in COLUMNS} for _, r in results]
    spectra = [pd.DataFrame({"run": r.values["run"], "index": np.arange(len(ev)),
                             "eigenvalue": ev})
               for _, r in results for ev in [r.arrays["eigenvalues"]]]
    return {"results": pd.DataFrame(rows, columns=COLUMNS),
            "spectra": pd.concat(spectra, ignore_index=True) if spectra else
            pd.DataFrame(columns=["run", "index", "eigenvalue"])}


def _spearman(df: pd.DataFrame) -> tuple[float, float, int]:
    from scipy.stats import spearmanr

    ok = df[df.reached.astype(bool)]
    if len(ok) < 3:
        return float("nan"), float("nan"), len(ok)
    rho, pval = spearmanr(ok.loss, ok.minimal_ratio)
    return float(rho), float(pval), len(ok)


def figures(cfg: Config, tables) -> dict:
    df = tables["results"]
    reached = df[df.reached.astype(bool)]
    missed = df[~df.reached.astype(bool)]
    fig, ax = plotting.figure(width=6.0, height=4.2)
    sc = ax.scatter(reached.loss, reached.minimal_ratio, c=np.log10(reached.grad_norm),
                    cmap="viridis", s=22, label=f"‖∇L‖ < {cfg.grad_threshold:g} "
                    f"({len(reached)})")
    if len(missed):
        ax.scatter(missed.loss, missed.minimal_ratio, marker="x", color="tab:red", s=28,
                   label=f"threshold missed ({len(missed)})")
    ax.set_xscale("log")
    ax.set_ylim(-0.02, 1.02)
    fig.colorbar(sc, ax=ax, label="log10 ‖∇L‖")
    rho, _, _ = _spearman(df)
    plotting.finish(ax, f"minimal ratio vs loss ({len(df)} runs, Spearman ρ = {rho:.2f})",
                    "training loss at the critical point (MSE, log)",
                    "minimal ratio (fraction λ > 0)")
    figs = {"minimal_ratio": fig}
    spectra = tables.get("spectra")
    if spectra is not None and len(reached):
        fig2, ax2 = plotting.figure(width=6.0, height=3.6)
        picks = [reached.loc[reached.loss.idxmin()], reached.loc[reached.loss.idxmax()]]
        for row, name in zip(picks, ["lowest loss", "highest loss"]):
            ev = np.sort(spectra[spectra.run == row.run].eigenvalue.to_numpy())
            ax2.plot(np.arange(len(ev)), ev, label=f"{name}: run {int(row.run)}, "
                     f"loss {row.loss:.2g}, ratio {row.minimal_ratio:.2f}")
        ax2.set_yscale("symlog", linthresh=1e-6)
        plotting.finish(ax2, "Hessian spectra at two critical points", "eigenvalue index",
                        "eigenvalue (symlog)")
        figs["spectra"] = fig2
    return figs


def observations(cfg: Config, tables) -> list[str]:
    df = tables["results"]
    ok = df[df.reached.astype(bool)]
    out = [f"{len(ok)} of {len(df)} runs reached ‖∇L‖ < {cfg.grad_threshold:g} "
           f"({len(df) - len(ok)} missed; shown as red crosses, excluded from statistics)."]
    if len(ok):
        out.append(f"Minimal ratio {ok.minimal_ratio.min():.3f}–{ok.minimal_ratio.max():.3f} "
                   f"over losses {ok.loss.min():.2g}–{ok.loss.max():.2g} "
                   f"({int(ok.n_params.iloc[0])} parameters); negative fraction "
                   f"{ok.frac_negative.min():.3f}–{ok.frac_negative.max():.3f}, near-zero "
                   f"fraction up to {ok.frac_zero.max():.3f}.")
    rho, pval, n = _spearman(df)
    if n >= 3:
        if pval >= 0.05:
            trend = "no significant trend at the 5% level"
        elif rho < 0:
            trend = "lower loss goes with a higher minimal ratio, as Dauphin et al. predict"
        else:
            trend = "lower loss goes with a LOWER minimal ratio, against Dauphin et al."
        out.append(f"Spearman correlation between loss and minimal ratio: ρ = {rho:.2f} "
                   f"(p = {pval:.2g}, {n} runs): {trend}.")
    return out


def headline(cfg: Config, tables) -> dict:
    df = tables["results"]
    rho, pval, n = _spearman(df)
    ok = df[df.reached.astype(bool)]
    return {"runs": len(df), "reached": len(ok), "spearman_rho": rho,
            "spearman_p": pval, "ratio_min": float(ok.minimal_ratio.min()) if n else None,
            "ratio_max": float(ok.minimal_ratio.max()) if n else None}
