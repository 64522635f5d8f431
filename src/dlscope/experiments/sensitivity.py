"""sensitivity (HW1 1-3, flatness vs generalization part 2): how do sharpness, input
sensitivity and the generalization gap change with the training batch size?

Setup: MLPs 784-128-64-10 trained with Adam (lr 1e-3, scaling with the batch size selectable)
on a fixed seeded subset of MNIST (8,192 images), one model per batch size (16 … 4096) and
seed (3 seeds: fresh init and batch order), every model trained to the same criterion
(matched training, `flatness_common`: by default full-evaluation train accuracy ≥ 99%, with
a step cap; a model that misses it is flagged and left out of the statistics). The subset
keeps the largest batch at half the data (Keskar's large batch is 10% of it: 1,024 here) and
lets batch 4096 reach 99% within the cap; on all 60,000 images it would need several times
the compute. For each model:
- train (full evaluation) and test loss and accuracy; the generalization gap = test loss −
  train loss, and train accuracy − test accuracy;
- sensitivity (Novak et al. 2018): mean over test points of ‖∂softmax(f(x))/∂x‖_F per point;
  the logits' version and the per-sample ‖∂loss/∂x‖ as extra columns;
- sharpness: Keskar et al.'s ε-sharpness at ε = 1e-3 and 5e-4 (box |z_i| ≤ ε(|θ_i| + 1),
  L-BFGS-B) and λmax, the top Hessian eigenvalue of the training loss (Lanczos), both on a
  fixed seeded subset of 2,048 training images.

Expected (Keskar et al. 2017, arXiv:1609.04836): at matched train accuracy, large-batch
models sit in sharper minima (MNIST F1: φ = 1.23 ± 0.83 at batch 256 vs 205 ± 70 at 10% of
the data, ε = 1e-3) and generalize a little worse (test accuracy 98.03% vs 97.81%); Novak et
al. 2018 (arXiv:1802.08760): sensitivity grows with the generalization gap. `verdicts` test
both with intervals over seeds; a run whose models mostly miss the criterion (the quick
profile) is a pipeline check and issues none.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from pydantic import Field, field_validator

from dlscope import plotting
from dlscope.contract.runspec import RunResult, RunSpec
from dlscope.experiments import stats
from dlscope.experiments.flatness_common import (
    MatchedConfig,
    band,
    bs_axis,
    iv,
    pipeline_reason,
    scaled_lr,
    train_matched,
)
from dlscope.experiments.inputs import (
    ImageInputs,
    build_model,
    setup,
    tag,
)
from dlscope.metrics.epsilon_sharpness import lambda_max, sharpness
from dlscope.metrics.input_sensitivity import loss_input_grad_norm, sensitivity
from dlscope.train.engine import TrainConfig, evaluate

NAME = "sensitivity"
SECTION = "1-3"
TITLE = "Flatness vs generalization: sharpness, sensitivity and gap against batch size"
QUESTION = ("At matched training, how do sharpness, input sensitivity and the generalization "
            "gap of a network change with the batch size it was trained with?")


class Config(MatchedConfig, ImageInputs):
    """Settings of the sensitivity experiment; defaults: the assignment profile."""
    batch_sizes: list[int] = Field([16, 64, 256, 1024, 4096], min_length=2,
                                   description="batch sizes (one model per batch size and seed)")
    lr: float = Field(1e-3, gt=0, description="Adam learning rate at lr_base_batch")
    sensitivity_points: int = Field(0, ge=0, le=10000,
                                    description="first test points for sensitivity; 0: all")
    sharpness_epsilons: list[float] = Field([1e-3, 5e-4], min_length=1,
                                            description="box sizes ε of the ε-sharpness")
    sharpness_iter: int = Field(10, ge=1, description="L-BFGS-B iterations of the sharpness")
    sharpness_points: int = Field(2048, ge=1, le=60000, description=(
        "fixed seeded training subset for ε-sharpness and λmax (≤ training images)"))

    @field_validator("batch_sizes")
    @classmethod
    def _batches(cls, v: list[int]) -> list[int]:
        if min(v) < 1 or len(set(v)) != len(v):
            raise ValueError("batch sizes must be distinct and >= 1")
        return sorted(v)

    @field_validator("sharpness_epsilons")
    @classmethod
    def _eps(cls, v: list[float]) -> list[float]:
        if min(v) <= 0 or len(set(v)) != len(v):
            raise ValueError("sharpness_epsilons must be distinct and > 0")
        return v

    def batch_sizes_used(self) -> list[int]:
        return self.batch_sizes


PROFILES = {"quick": {"seeds": 2, "train_subset": 1024, "batch_sizes": [16, 64, 256, 1024],
                      "max_steps": 64, "sensitivity_points": 500, "sharpness_points": 512,
                      "sharpness_iter": 3}}


def _sharp_col(eps: float) -> str:
    return f"sharpness@{eps:g}"


def runs(cfg: Config) -> list[RunSpec]:
    su = setup(cfg.model, cfg.data, {"train_subset": cfg.train_subset or None,
                                     "seed": cfg.seed}, NAME, deterministic=True)
    if cfg.sharpness_points > cfg.n_train:
        from dlscope.errors import UserError
        raise UserError(f"{NAME}: sharpness_points={cfg.sharpness_points} > {cfg.n_train} "
                        f"training images")
    out = []
    for bs in cfg.batch_sizes:
        lr = scaled_lr(cfg.lr, bs, cfg.lr_scaling, cfg.lr_base_batch)
        tc = TrainConfig(lr=lr, batch_size=bs, epochs=1, eval_test=False)
        for s in cfg.run_seeds():
            out.append(RunSpec(NAME, f"bs={bs},seed={s}", __name__, {
                "model": su.model, "data": su.data, "data_name": tag(su.info),
                "train": tc.model_dump(),
                "matched": cfg.matched(), "lr_scaling": cfg.lr_scaling, "seed": s,
                "data_seed": cfg.seed, "sensitivity_points": cfg.sensitivity_points,
                "sharpness": {"epsilons": cfg.sharpness_epsilons, "max_iter":
                              cfg.sharpness_iter, "points": cfg.sharpness_points}},
                data=su.data))
    return out


def run_one(p: dict, ctx) -> RunResult:
    ds = ctx.dataset(p["data"])
    model = build_model(p, ds, p["seed"], ctx.device)
    tr = train_matched(model, ds, TrainConfig(**p["train"]), p["matched"], p["seed"])
    train_loss, train_acc = evaluate(model, ds.x_train, ds.y_train, True)
    test_loss, test_acc = evaluate(model, ds.x_test, ds.y_test, True)
    n = p["sensitivity_points"] or ds.n_test
    x, y = ds.x_test[:n], ds.y_test[:n]
    sens = sensitivity(model, x, output="softmax").cpu().numpy()
    sens_logits = sensitivity(model, x, output="logits").cpu().numpy()
    loss_grad = loss_input_grad_norm(model, F.cross_entropy, x, y).cpu().numpy()
    sh = p["sharpness"]
    idx = np.random.default_rng([p["data_seed"], 7]).permutation(ds.n_train)[:sh["points"]]
    idx_t = torch.from_numpy(np.sort(idx)).to(ds.x_train.device)
    xs, ys = ds.x_train[idx_t], ds.y_train[idx_t]
    values = {"status": tr["status"], "reached": tr["reached"], "steps": tr["steps"],
              "criterion_step": tr["criterion_step"], "epochs_run": tr["epochs"],
              "train_wall_s": tr["wall_s"], "train_loss": train_loss, "train_acc": train_acc,
              "test_loss": test_loss, "test_acc": test_acc,
              "sensitivity": float(sens.mean()), "sensitivity_logits":
              float(sens_logits.mean()), "loss_grad_norm": float(loss_grad.mean())}
    for eps in sh["epsilons"]:
        r = sharpness(model, F.cross_entropy, xs, ys, epsilon=eps, max_iter=sh["max_iter"],
                      seed=p["seed"])
        values[_sharp_col(eps)] = r["sharpness"]
    lm = lambda_max(model, F.cross_entropy, xs, ys, seed=p["seed"])
    values.update(lambda_max=lm["lambda_max"], lambda_hvps=lm["hvps"])
    return RunResult(values=values, arrays={"sensitivity": sens.astype(np.float32),
                                            "criterion_curve": tr["curve"]})


COLUMNS = ["batch_size", "seed", "lr", "reached", "steps", "criterion_step", "train_loss",
           "train_acc", "test_loss", "test_acc", "loss_gap", "acc_gap", "sensitivity",
           "sensitivity_logits", "loss_grad_norm"]


def analyze(cfg: Config, results) -> dict[str, pd.DataFrame]:
    """Tables from the run results: results (a row per trained model)."""
    rows = []
    for spec, r in results:
        v = r.values
        row = {"batch_size": spec.params["train"]["batch_size"], "seed": spec.params["seed"],
               "lr": spec.params["train"]["lr"], **{k: v[k] for k in (
                   "reached", "steps", "criterion_step", "train_loss", "train_acc", "test_loss",
                   "test_acc", "sensitivity", "sensitivity_logits", "loss_grad_norm")},
               "loss_gap": v["test_loss"] - v["train_loss"],
               "acc_gap": v["train_acc"] - v["test_acc"]}
        row.update({_sharp_col(e): v[_sharp_col(e)] for e in cfg.sharpness_epsilons})
        row.update(lambda_max=v["lambda_max"], data=spec.params.get("data_name", "MNIST"),
                   status=v["status"], criterion=cfg.criterion,
                   target=cfg.target, lr_scaling=cfg.lr_scaling, wall_s=v["train_wall_s"])
        rows.append(row)
    extra = [_sharp_col(e) for e in cfg.sharpness_epsilons] + ["lambda_max", "data", "status",
                                                                "criterion", "target",
                                                                "lr_scaling", "wall_s"]
    df = pd.DataFrame(rows, columns=COLUMNS + extra)
    return {"results": df.sort_values(["batch_size", "seed"], ignore_index=True)}


def _metrics(cfg: Config) -> list[tuple[str, str]]:
    return ([(_sharp_col(e), f"ε-sharpness φ (%), ε = {e:g}") for e in cfg.sharpness_epsilons]
            + [("lambda_max", "λmax of the training loss"),
               ("sensitivity", "sensitivity ‖∂softmax/∂x‖_F"),
               ("loss_gap", "test loss − train loss"), ("acc_gap", "train acc − test acc")])


def figures(cfg: Config, tables) -> dict:
    """The figures, by name, drawn from the tables."""
    df = tables["results"]
    by_bs = df.groupby("batch_size")
    note = f"matched: {cfg.criterion_text()}; band: IQR over seeds, ×: missed"
    figs = {}
    mets = _metrics(cfg)
    for fname, chunk in (("sharpness", mets[:-3]), ("sensitivity_gap", mets[-3:])):
        fig, axes = plotting.figure(ncols=len(chunk), width=4.4)
        for i, (ax, (col, label)) in enumerate(zip(np.atleast_1d(axes), chunk)):
            band(ax, by_bs, col, f"C{i}", label)
            bs_axis(ax, df.batch_size)
            if col.startswith(("sharpness", "lambda")) and (df[col] > 0).all():
                ax.set_yscale("log")
            plotting.finish(ax, label, "batch size (log)", label.split(" ")[0])
        fig.suptitle(note, fontsize=8)
        figs[fname] = fig
    fig, (ax1, ax2, ax3) = plotting.figure(ncols=3, width=4.4)
    for i, (col, label) in enumerate((("train_acc", "train"), ("test_acc", "test"))):
        band(ax1, by_bs, col, f"C{i}", label, scale=100)
    for i, (col, label) in enumerate((("train_loss", "train"), ("test_loss", "test"))):
        band(ax2, by_bs, col, f"C{i}", label)
    band(ax3, by_bs, "steps", "C2", "steps run")
    for ax, t, u in ((ax1, "accuracy", "accuracy (%)"), (ax2, "loss", "cross-entropy (log)"),
                     (ax3, "steps to the criterion", "optimizer steps (log)")):
        bs_axis(ax, df.batch_size)
        if t != "accuracy":
            ax.set_yscale("log")
        plotting.finish(ax, t, "batch size (log)", u)
    fig.suptitle(note, fontsize=8)
    figs["loss_accuracy"] = fig
    fig, (ax1, ax2) = plotting.figure(ncols=2)
    for ax, gap, unit in ((ax1, "loss_gap", "test − train loss"),
                          (ax2, "acc_gap", "train − test accuracy (points)")):
        scale = 100 if gap == "acc_gap" else 1
        for i, (bs, g) in enumerate(by_bs):
            ok = g.reached.astype(bool)
            ax.plot(scale * g[gap][ok], g.sensitivity[ok], "o", color=f"C{i}", label=f"bs {bs}")
            ax.plot(scale * g[gap][~ok], g.sensitivity[~ok], "x", color="grey")
        plotting.finish(ax, "sensitivity vs generalization gap", unit,
                        "sensitivity ‖∂softmax/∂x‖_F")
    figs["sensitivity_vs_gap"] = fig
    return figs


def _ok(df: pd.DataFrame) -> pd.DataFrame:
    return df[df.reached.astype(bool)]


def statistics(cfg: Config, tables) -> dict:
    """The numbers over seeds behind the verdicts and observations (summary.json)."""
    df = tables["results"]
    ok = _ok(df)
    out: dict = {"matched_criterion": cfg.criterion_text(), "lr_scaling": cfg.lr_scaling,
                 "interval": "95% t-interval of the mean over seeds (median shown)",
                 "pipeline_check": pipeline_reason(df, cfg), "per_batch_size": {}}
    for bs, g in df.groupby("batch_size"):
        gk = ok[ok.batch_size == bs]
        out["per_batch_size"][str(bs)] = {
            **{c: stats.interval(gk[c]).to_dict() for c, _ in _metrics(cfg)
               + [("test_acc", ""), ("steps", "")]},
            "failures": stats.failure_rates(g.status, ("missed", "diverged"))}
    lo, hi = ok[ok.batch_size == df.batch_size.min()], ok[ok.batch_size == df.batch_size.max()]
    out["largest_minus_smallest_batch"] = {c: stats.compare(lo[c], hi[c]).to_dict()
                                           for c, _ in _metrics(cfg)}
    out["trend_with_batch_size"] = {c: stats.trend(np.log2(ok.batch_size), ok[c]).to_dict()
                                    for c, _ in _metrics(cfg)}
    out["sensitivity_vs_gap"] = {g: stats.trend(ok[g], ok.sensitivity).to_dict()
                                 for g in ("loss_gap", "acc_gap")}
    return out


_KESKAR = "Keskar et al. 2017 (arXiv:1609.04836)"


KESKAR = {  # Keskar et al. 2017's numbers, by the data they were measured on (SCIENCE.md §3, §7)
    "MNIST": {"sharpness": "MNIST F1: φ 1.23 ± 0.83 (batch 256) vs 205.14 ± 69.52 (10% of the "
                           "data), ε = 1e-3; large batch sharper in every network at both ε",
              "gap": "MNIST F1: test accuracy 98.03% (small) vs 97.81% (large) at ~100% train"},
    "CIFAR-10": {"sharpness": "CIFAR-10 C1: φ 28.58 ± 3.13 (small batch) vs 707.23 ± 43.04 "
                              "(10% of the data), ε = 1e-3",
                 "gap": "CIFAR-10 C1: test accuracy 80.04 ± 0.12% (small) vs 77.26 ± 0.42% "
                        "(large) at 99.9 / 99.7% train"}}


def verdicts(cfg: Config, tables) -> list[stats.Verdict]:
    """The published claims this run tests, each with its outcome."""
    df = tables["results"]
    b0, b1 = int(df.batch_size.min()), int(df.batch_size.max())
    data = stats.data_of(df)
    keskar = KESKAR.get(data, KESKAR["MNIST"])
    on = "CIFAR-10" if data == "CIFAR-10" else "MNIST"
    claims = [(c, f"At matched training, batch {b1} gives a higher {label} than batch {b0}",
               _KESKAR, stats.published_for(pub, on, data)) for c, label, pub in (
        [(_sharp_col(e), f"ε-sharpness (ε = {e:g})", keskar["sharpness"])
         for e in cfg.sharpness_epsilons]
        + [("lambda_max", "top Hessian eigenvalue λmax", ("large-batch minima have larger "
            "curvature (the Hessian's large positive eigenvalues)")),
           ("loss_gap", "generalization gap (test − train loss)", keskar["gap"])])]
    novak = ("Sensitivity grows with the generalization gap (test − train loss)",
             "Novak et al. 2018 (arXiv:1802.08760)",
             "Jacobian norm correlates with the gap over thousands of models")
    why = pipeline_reason(df, cfg)
    if why is not None:
        return ([stats.pipeline_check(claim, src, pub, why) for _, claim, src, pub in claims]
                + [stats.pipeline_check(*novak, why)])
    ok = _ok(df)
    lo, hi = ok[ok.batch_size == b0], ok[ok.batch_size == b1]
    out = []
    for col, claim, src, pub in claims:
        d = stats.compare(lo[col], hi[col])
        t = stats.trend(np.log2(ok.batch_size), ok[col])
        out.append(stats.Verdict(claim, src, pub, f"{col}: batch {b1} − batch {b0}: "
                                 f"{_diff_text(d, b0, b1, lo, hi)}; over all batch sizes "
                                 f"{t.text()}",
                                 stats.DIFFERENCE_RULE, stats.outcome_of_difference(d, +1)))
    t = stats.trend(ok.loss_gap, ok.sensitivity)
    ta = stats.trend(ok.acc_gap, ok.sensitivity)
    out.append(stats.Verdict(*novak, f"sensitivity vs loss gap over {t.n} models: {t.text()} "
                             f"(vs accuracy gap: {ta.text()})", stats.TREND_RULE,
                             stats.outcome_of_trend(t, +1)))
    return out


def observations(cfg: Config, tables) -> list[str]:
    """What this run shows, in sentences for the report."""
    df = tables["results"]
    ok = _ok(df)
    out = [(f"Matched training: {cfg.criterion_text()}; {cfg.lr_scaling_text()}; "
           f"{int(df.reached.sum())} of {len(df)} models reached it. Numbers are medians "
           f"[95% t-intervals of the mean over seeds].")]
    why = pipeline_reason(df, cfg)
    if why:
        out.append(f"Pipeline check, not evidence: {why}. Medians below are over all models, "
                   f"reached or not.")
    for bs, g in (df if why else ok).groupby("batch_size"):
        out.append(f"Batch {bs} (lr {g.lr.iloc[0]:g}, {len(g)} models): steps run "
                   f"{iv(g.steps, '.0f')}; train accuracy {iv(g.train_acc, '.2f', 100)}%; "
                   f"test accuracy {iv(g.test_acc, '.2f', 100)}%; λmax {iv(g.lambda_max)}; "
                   f"ε-sharpness {iv(g[_sharp_col(cfg.sharpness_epsilons[0])])}; "
                   f"sensitivity {iv(g.sensitivity)}; loss gap {iv(g.loss_gap)}.")
    if why:
        return out
    b0, b1 = df.batch_size.min(), df.batch_size.max()
    lo, hi = ok[ok.batch_size == b0], ok[ok.batch_size == b1]
    for col, label in _metrics(cfg):
        d = stats.compare(lo[col], hi[col])
        out.append(f"{label}, batch {b1} − batch {b0}: {_diff_text(d, b0, b1, lo, hi)}.")
    return out


def _diff_text(d: stats.Difference, b0, b1, lo: pd.DataFrame, hi: pd.DataFrame) -> str:
    """`d.text()`, naming the batch size without a value: none of its models reached the
    criterion (`lo`, `hi`: the models that reached it), or none has a finite value."""
    why = "reached the criterion" if not (len(lo) and len(hi)) else "has a finite value"
    return d.text(names=(f"batch {b0}", f"batch {b1}"), empty="no model of {} " + why)


def headline(cfg: Config, tables) -> dict:
    """A few numbers that summarise this run (summary.json's headline)."""
    ok = _ok(tables["results"])
    out = {}
    for bs, g in ok.groupby("batch_size"):
        for c, _ in _metrics(cfg) + [("test_acc", "")]:
            out[f"bs{int(bs)}/{c}"] = float(g[c].median())
    return out
