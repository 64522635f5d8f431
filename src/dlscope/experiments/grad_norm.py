"""grad-norm (HW1 1-2, gradient norm during training): how do the loss and the norm of the
gradient evolve over the iterations?

Setup: at every iteration the engine records the loss and the L2 norm of the full parameter
gradient (all layers as one vector), computed after `backward()` and before `step()`. Two
tasks by default: a 1-D function fit (sinc(5x) on [-1, 1], a 1-32-32-32-1 ReLU MLP, full
batch Adam 1e-3, 5,000 steps) and MNIST (cnn-c, Adam 1e-3, batch 100, 3 epochs = 1,800 steps).

Expected: the norm does not simply shrink with the loss. It often rises early (the net
leaves the flat start), then decays with the loss on the full-batch fit (with Adam's typical
spikes); with mini-batches it stays at the level of the batch-gradient noise even as the
loss keeps falling, so ‖∇L‖ ≈ 0 is never reached by plain training (what minimal-ratio needs).

Each task runs `seeds` seeds (init and batch order); the figures draw the median over seeds
with the range as a band, the summary gives final loss and final gradient norm with 95%
intervals over seeds. There is no published number to reproduce here (the assignment asks for
the figure), so the experiment issues no verdict.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from pydantic import Field, field_validator

from dlscope import models, plotting
from dlscope.contract.config import ExperimentConfig
from dlscope.contract.runspec import RunResult, RunSpec
from dlscope.data.functions import check_target
from dlscope.errors import UserError
from dlscope.experiments import stats
from dlscope.experiments.inputs import (
    MODEL_HELP,
    ImageData,
    Model,
    build_model,
    check_model,
    setup,
    tag,
)
from dlscope.train.engine import TrainConfig, train

NAME = "grad-norm"
SECTION = "1-2"
TITLE = "Optimization: gradient norm during training"
QUESTION = ("How do the training loss and the L2 norm of the full parameter gradient evolve "
            "over the iterations, on a 1-D function fit and on MNIST?")


class Config(ExperimentConfig, ImageData):
    """Settings of the grad-norm experiment; defaults: the assignment profile."""
    tasks: list[Literal["function", "mnist"]] = Field(["function", "mnist"], min_length=1,
                                                      description="which trainings to record")
    function: str = Field("sinc", description="target function (registry name or expr:...)")
    function_model: str = Field("mlp:1-32-32-32-1", description="MLP with input 1, output 1")
    function_points: int = Field(1000, ge=8, description="evenly spaced training points",
                                 json_schema_extra={"memory": ("data", 8)})
    function_epochs: int = Field(5000, ge=1, description="epochs (= steps when full batch)")
    function_batch: int | None = Field(None, ge=1, description="None: full batch")
    function_lr: float = Field(1e-3, gt=0, description="Adam learning rate (function)")
    mnist_model: Model = Field("cnn-c", description="model of the image task: " + MODEL_HELP)
    mnist_epochs: int = Field(3, ge=1, description="MNIST epochs")
    mnist_batch: int = Field(100, ge=1, description="MNIST mini-batch size")
    mnist_lr: float = Field(1e-3, gt=0, description="Adam learning rate (MNIST)")
    train_subset: int | None = Field(None, ge=1, description="image task: n train images")
    seeds: int = Field(3, ge=1, description="seeds per task (init and batch order)")
    seed: int = Field(0, ge=0, description="first seed (seeds are seed..seed+seeds-1); data subset")

    @field_validator("tasks")
    @classmethod
    def _unique(cls, v: list[str]) -> list[str]:
        if len(set(v)) != len(v):
            raise ValueError(f"a task is named twice in {v}")
        return v

    @field_validator("function")
    @classmethod
    def _function(cls, v: str) -> str:
        try:
            check_target(v)  # finite on a dense grid of its domain, before any run
        except UserError as e:
            raise ValueError(str(e)) from None
        return v

    @field_validator("function_model")
    @classmethod
    def _model(cls, v: str) -> str:
        try:
            spec = models.parse_model(v)
        except UserError as e:
            raise ValueError(str(e)) from None
        if not (isinstance(spec, models.MLPSpec) and spec.input_dim == 1
                and spec.output_dim == 1):
            raise ValueError(f"model {v!r} does not fit the task's input and output sizes")
        return v

    @field_validator("mnist_model")
    @classmethod
    def _image_model(cls, v: Model) -> Model:
        return check_model(v)  # its sizes are checked against the data by `runs`


PROFILES = {"quick": {"function_epochs": 1500, "mnist_epochs": 2, "train_subset": 10000,
                      "seeds": 2}}
OK = ("ok", "converged")


def runs(cfg: Config) -> list[RunSpec]:
    out = []
    for task in cfg.tasks:
        if task == "function":
            data = {"kind": "function", "spec": cfg.function, "n_train": cfg.function_points,
                    "n_test": 16, "seed": cfg.seed}
            tc = TrainConfig(lr=cfg.function_lr, batch_size=cfg.function_batch,
                             epochs=cfg.function_epochs, eval_test=False)
            model, what = cfg.function_model, cfg.function
        else:
            su = setup(cfg.mnist_model, cfg.data, {"train_subset": cfg.train_subset,
                                                   "seed": cfg.seed}, NAME)
            data = {k: v for k, v in su.data.items() if k != "flatten" or v}  # CNN: as before
            tc = TrainConfig(lr=cfg.mnist_lr, batch_size=cfg.mnist_batch,
                             epochs=cfg.mnist_epochs, eval_test=False)
            model, what = su.spec, tag(su.info)
        spec = models.parse_model(model)
        group = task if isinstance(spec, models.MLPSpec) else None  # same-shape MLPs: ensemble
        out += [RunSpec(NAME, f"{task}/seed={s}", __name__, {
            "task": task, "what": what, "data": data, "train": tc.model_dump(),
            "model": spec.model_dump(mode="json"), "seed": s}, group=group, data=data)
            for s in range(cfg.seed, cfg.seed + cfg.seeds)]
    return out


def run_one(p: dict, ctx) -> RunResult:
    ds = ctx.dataset(p["data"])
    model = build_model(p, ds, p["seed"], ctx.device)
    tc = TrainConfig(**p["train"])
    res = train(model, ds, tc, seed=p["seed"], record_grad_norm=True)
    return _result(ds, tc, model, res)


def run_many(ps: list[dict], ctx) -> list[RunResult]:
    """Same-shape MLP seeds trained together as one stacked ensemble (dlscope.train.ensemble);
    each member equals its solo run to float tolerance."""
    from dlscope.train.ensemble import train_ensemble

    ds = ctx.dataset(ps[0]["data"])
    tcs = [TrainConfig(**p["train"]) for p in ps]
    nets = [build_model(p, ds, p["seed"], ctx.device) for p in ps]
    results = train_ensemble(nets, ds, tcs, [p["seed"] for p in ps], record_grad_norm=True)
    return [_result(ds, tc, m, r) for tc, m, r in zip(tcs, nets, results)]


def _result(ds, tc: TrainConfig, model, res) -> RunResult:
    n = len(res.grad_norm)
    return RunResult(
        values={"status": res.status, "steps": n, "epochs_run": res.epochs_run,
                "steps_per_epoch": -(-ds.n_train // (tc.batch_size or ds.n_train)),
                "batch": tc.batch_size or ds.n_train, "n_train": ds.n_train,
                "params": models.module_params(model), "wall_s": res.wall_s,
                "diverged_step": res.diverged_step},
        arrays={"loss": res.step_loss[:n].astype(np.float32),
                "grad_norm": res.grad_norm.astype(np.float32)})


def analyze(cfg: Config, results) -> dict[str, pd.DataFrame]:
    """Tables from the run results: results (a row per run) and curves (per iteration)."""
    rows, curves = [], []
    for spec, r in results:
        p, v = spec.params, r.values
        step = np.arange(1, v["steps"] + 1)
        c = pd.DataFrame({"task": p["task"], "seed": p["seed"], "step": step,
                          "epoch": (step - 1) // v["steps_per_epoch"] + 1,
                          "loss": r.arrays["loss"], "grad_norm": r.arrays["grad_norm"]})
        curves.append(c)
        ok = c[(c.loss > 0) & (c.grad_norm > 0)]
        rows.append({"task": p["task"], "seed": p["seed"], "data": p["what"],
                     "model": models.parse_model(p["model"]).name, "params": v["params"],
                     "batch": v["batch"], "n_train": v["n_train"], "steps": v["steps"],
                     "epochs": v["epochs_run"], "status": r.status,
                     "first_loss": _window(c, "loss", False),
                     "final_loss": _window(c, "loss", True),
                     "first_grad_norm": _window(c, "grad_norm", False),
                     "final_grad_norm": _window(c, "grad_norm", True),
                     "peak_grad_norm": float(c.grad_norm.max()),
                     "peak_step": (int(c.step[c.grad_norm.idxmax()])
                                   if c.grad_norm.notna().any() else 0),
                     "min_grad_norm": float(c.grad_norm.min()),
                     "spikes": _jumps(c.grad_norm.to_numpy()),
                     "rho_loss_norm": float(np.log(ok.loss).corr(np.log(ok.grad_norm),
                                                                 method="spearman")),
                     "wall_s": v["wall_s"]})
    return {"results": pd.DataFrame(rows), "curves": pd.concat(curves, ignore_index=True)}


def _smooth(values: np.ndarray, n: int) -> np.ndarray:
    """Centred running mean over n points (edges: the points available)."""
    if n <= 1:
        return values
    kernel = np.ones(n)
    return np.convolve(values, kernel, "same") / np.convolve(np.ones_like(values), kernel, "same")


def _spans_decades(v: pd.Series) -> bool:
    v = v[np.isfinite(v) & (v > 0)]
    return len(v) > 0 and v.max() / v.min() > 10


def figures(cfg: Config, tables) -> dict:
    """The figures, by name, drawn from the tables."""
    figs, res = {}, tables["results"]
    for task, c in tables["curves"].groupby("task", sort=False):
        r = res[res.task == task]
        good = set(r.seed[r.status.isin(OK)])
        fig = Figure(figsize=(6.4, 5.2), layout="constrained")
        ax_loss, ax_norm = fig.subplots(2, 1, sharex=True)
        full = bool(r.batch.iloc[0] >= r.n_train.iloc[0])
        window = 1 if full else max(1, int(c.groupby("seed").size().max()) // 100)
        for ax, col, color in ((ax_loss, "loss", "tab:blue"), (ax_norm, "grad_norm", "tab:red")):
            per_seed = {}
            for seed, g in c.groupby("seed"):
                y = _smooth(g[col].to_numpy(dtype=np.float64), window)
                ok = seed in good
                ax.plot(g.step, y, "-" if ok else "x--", color=color if ok else "grey", lw=0.5,
                        alpha=0.3 if ok else 0.6, label=None if ok else f"seed {seed} (failed)")
                if ok:
                    per_seed[seed] = pd.Series(y, index=g.step.to_numpy())
            if per_seed:
                m = pd.DataFrame(per_seed)  # steps x seeds (NaN past a shorter run's end)
                what = "per iteration" if window == 1 else f"running mean of {window} iterations"
                ax.fill_between(m.index, m.min(axis=1), m.max(axis=1), color=color, alpha=0.2,
                                lw=0, label=f"range over {m.shape[1]} seeds")
                ax.plot(m.index, m.median(axis=1), color=color, lw=1.4,
                        label=f"median over seeds ({what})")
            if _spans_decades(c[col]):
                ax.set_yscale("log")
        batch = "full batch" if full else f"batch {int(r.batch.iloc[0])}"
        plotting.finish(ax_loss, f"{task}: {r.data.iloc[0]}, {r.model.iloc[0]} "
                        f"({int(r.params.iloc[0]):,} params), {batch}", "",
                        "training loss" + (" (MSE)" if task == "function" else " (cross-entropy)"))
        plotting.finish(ax_norm, "gradient norm after backward(), before step()", "iteration",
                        "‖∇L‖₂ (all parameters)")
        figs[task] = fig
    return figs


def _window(c: pd.DataFrame, col: str, last: bool) -> float:
    """Median over the first or last 5% of the iterations."""
    k = max(1, len(c) // 20)
    part = c[col].iloc[-k:] if last else c[col].iloc[:k]
    return float(part.median())


def _jumps(g: np.ndarray, factor: float = 100.0, lookback: int = 100) -> int:
    """Spikes: how many times the norm rises above `factor` x its minimum over the previous
    `lookback` iterations (rises within `lookback` iterations of the last one count once)."""
    if len(g) <= lookback:
        return 0
    prev_min = np.lib.stride_tricks.sliding_window_view(g[:-1], lookback).min(axis=1)
    high = np.flatnonzero(g[lookback:] > factor * prev_min)
    return int(len(high) > 0) + int(np.count_nonzero(np.diff(high) > lookback))


STAT_COLS = ("first_loss", "final_loss", "first_grad_norm", "final_grad_norm", "peak_grad_norm",
             "rho_loss_norm")


def statistics(cfg: Config, tables) -> dict:
    """The numbers over seeds behind the verdicts and observations (summary.json)."""
    out: dict = {"interval": "95% t-interval of the mean over seeds (stats.interval); first/final "
                 "= median over the first/last 5% of the iterations",
                 "published": "no published number: the assignment asks for the figure",
                 "tasks": {}}
    for task, r in tables["results"].groupby("task", sort=False):
        ok = r[r.status.isin(OK)]
        out["tasks"][task] = {**{k: stats.interval(ok[k]).to_dict() for k in STAT_COLS},
                              **stats.failure_rates(r.status, failed=("diverged",))}
    return out


def verdicts(cfg: Config, tables) -> list[stats.Verdict]:
    """None: no published claim to test (see statistics()['published'])."""
    return []  # no published claim to test (see statistics()["published"])


def observations(cfg: Config, tables) -> list[str]:
    """What this run shows, in sentences for the report."""
    out = []
    for task, r in tables["results"].groupby("task", sort=False):
        ok = r[r.status.isin(OK)]
        if not len(ok):
            out.append(f"{task} ({r.data.iloc[0]}, {r.model.iloc[0]}): no seed finished without "
                       "diverging, nothing to summarise.")
        else:
            out.append(_task_text(task, r, ok))
        bad = r[~r.status.isin(OK)]
        if len(bad):
            out.append(f"{task}: {len(bad)} of {len(r)} seeds failed ("
                       + ", ".join(f"seed {b.seed}: {b.status}" for b in bad.itertuples())
                       + "); drawn grey, excluded from the medians.")
    return out


def _task_text(task: str, r: pd.DataFrame, ok: pd.DataFrame) -> str:
    """The observation of one task over its finished seeds `ok` (of all its seeds `r`)."""
    iv = {k: stats.brief(ok[k], empty="no finite value") for k in STAT_COLS}
    ratio = stats.brief(ok.final_grad_norm / ok.first_grad_norm, empty="no finite value")
    full = r.batch.iloc[0] >= r.n_train.iloc[0]
    batch = "full batch" if full else f"batch {int(r.batch.iloc[0])}"
    return (
        f"{task} ({r.data.iloc[0]}, {r.model.iloc[0]}, {batch}, {int(r.steps.max())} "
        f"iterations; median [95% t-interval of the mean] over {len(ok)} seeds): loss over "
        f"the first/last 5% of the iterations {iv['first_loss']} -> {iv['final_loss']}; "
        f"gradient norm {iv['first_grad_norm']} -> {iv['final_grad_norm']} (final/first "
        f"{ratio}); largest norm {iv['peak_grad_norm']}; Spearman correlation of loss and "
        f"gradient norm over the iterations {iv['rho_loss_norm']}; spikes (a rise above "
        f"100x the minimum of the previous 100 iterations) per seed: "
        f"{', '.join(str(int(x)) for x in ok.spikes)}.")


def headline(cfg: Config, tables) -> dict:
    """A few numbers that summarise this run (summary.json's headline)."""
    out = {}
    for task, r in tables["results"].groupby("task", sort=False):
        ok = r[r.status.isin(OK)]
        out[f"{task}/final_loss"] = float(ok.final_loss.median())
        out[f"{task}/final_grad_norm"] = float(ok.final_grad_norm.median())
    return out
