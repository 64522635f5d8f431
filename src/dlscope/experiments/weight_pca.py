"""weight-pca (HW1 1-2, visualize the optimization process): what path do the weights take?

Setup: 8 independent trainings (fresh init and batch-order seed each) of the 784-128-64-10
MLP on flattened MNIST, Adam 1e-3, batch 64, 24 epochs; the parameters are collected every
epoch (25 snapshots, epoch 0 included; the assignment's every 3 epochs gives 9) and scored
(loss/accuracy on a fixed 10,000-image train subset, accuracy on the test set). A PCA fitted
jointly on all snapshots maps them to 2-D, for the whole model and for layer 1's weights;
points are coloured by run, joined in epoch order and labelled with their loss.

Beyond the assignment (Li et al. 2018, arXiv:1712.09913): for run 0 the training loss is drawn
on the plane of that run's top two PCA directions of θ_t − θ_final. Li et al. find 40–90% of a
trajectory's variance in its first two directions; the share is computed per run (whole model
and layer 1), summarised over the runs (the seeds) with a 95% t-interval, and set beside a
random walk's (Antognini & Sohl-Dickstein 2018, arXiv:1806.08805; ~76% for 25 snapshots):
weight_pca_null.py, dlscope.metrics.random_walk.

Expected: every run leaves its own initialization in its own direction (the joint PCA mostly
separates runs); the loss falls fast in the first epochs; test accuracy ~97.5–98% for all runs.
"""

from __future__ import annotations

import time
from typing import Literal

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from matplotlib import colormaps
from matplotlib.colors import LogNorm
from pydantic import Field, field_validator, model_validator

from dlscope import models, plotting
from dlscope.contract.config import ExperimentConfig
from dlscope.contract.runspec import RunResult, RunSpec
from dlscope.experiments import stats
from dlscope.experiments.inputs import (
    ImageData,
    Model,
    build_model,
    check_model,
    is_factory,
    setup,
    tag,
)
from dlscope.experiments.weight_pca_null import null_excess, null_figure, null_text
from dlscope.metrics.flat import flatten_params
from dlscope.metrics.random_walk import walk_null
from dlscope.metrics.trajectory import loss_plane, pca, plane_axis, variance_shares
from dlscope.train.engine import TrainConfig, evaluate, train

NAME = "weight-pca"
SECTION = "1-2"
TITLE = "Optimization: PCA of weight trajectories and the loss landscape"
QUESTION = ("What path do the weights of independently trained networks take, seen in 2-D "
            "through PCA, and what does the loss look like on the plane of one trajectory?")
SCOPES = {"model": "whole model", "layer1": "layer 1 weights"}


LI_CLAIM = ("40-90% of a training trajectory's variance lies in its first two PCA directions "
            "(PCA of theta_t - theta_final over one run's snapshots)")
LI_SOURCE = "Li et al. 2018 (arXiv:1712.09913)"
LI_RANGE = (0.40, 0.90)


class Config(ExperimentConfig, ImageData):
    """Settings of the weight-pca experiment; defaults: the assignment profile."""
    seeds: int = Field(8, ge=1, description="independent trainings (fresh init and seed each); "
                       "`runs` is accepted as an alias")
    epochs: int = Field(24, ge=1, description="epochs per training")
    every: int = Field(1, ge=1, description="collect parameters every k epochs (and epoch 0)")
    model: Model = Field("mlp-pca", description="an MLP spec (sizes adapt to the data) or a "
                         "factory py:module:function; layer 1 is its first Linear/Conv layer")
    lr: float = Field(1e-3, gt=0, description="Adam learning rate")
    batch_size: int = Field(64, ge=1, description="mini-batch size")
    train_subset: int | None = Field(None, ge=1, description="train on n images")
    eval_subset: int = Field(10000, ge=1, description="train images each snapshot is scored on")
    annotate: Literal["train_loss", "train_acc", "test_acc"] = Field(
        "train_loss", description="the number written next to each PCA point")
    landscape: bool = Field(True, description="Li et al. loss plane for run 0")
    landscape_subset: int = Field(5000, ge=1, description="train images of the loss plane")
    grid: int = Field(25, ge=5, description="loss-plane grid points per axis (at least)")
    margin: float = Field(0.25, ge=0, description="plane extends this fraction past the path")
    seed: int = Field(0, ge=0, description="run i uses seed + i; data subsets use seed")
    null_walks: int = Field(8, ge=2, description="simulated random walks per run and scope "
                            "(the null of the top-2 share)")

    @model_validator(mode="before")
    @classmethod
    def _runs_alias(cls, data):
        """`runs` (the old name) sets `seeds`; a user's `runs` wins over a profile's seeds."""
        if isinstance(data, dict) and "runs" in data:
            data = {k: v for k, v in data.items() if k != "runs"} | {"seeds": data["runs"]}
        return data

    @field_validator("model")
    @classmethod
    def _mlp(cls, v: Model) -> Model:
        check_model(v)
        if not is_factory(v) and not isinstance(models.parse_model(v), models.MLPSpec):
            raise ValueError(f"{v!r} is not an MLP (or a factory py:module:function)")
        return v

    @model_validator(mode="after")
    def _snapshots(self):
        if self.every > self.epochs:
            raise ValueError(f"every={self.every} exceeds epochs={self.epochs}")
        if self.landscape and len(snapshot_epochs(self.epochs, self.every)) < 3:
            raise ValueError("the loss plane needs at least 3 snapshots (epochs/every >= 2)")
        return self


PROFILES = {"quick": {"seeds": 4, "epochs": 6, "every": 2, "train_subset": 10000, "grid": 21}}


def snapshot_epochs(epochs: int, every: int) -> list[int]:
    """The epochs whose weights are kept: every `every`-th and the last."""
    return sorted({*range(0, epochs + 1, every), epochs})


def eval_indices(n_train: int, n: int, seed: int) -> np.ndarray:
    """The fixed train subset snapshots (first n) and the loss plane (a prefix) are scored on."""
    return np.random.default_rng([seed, 2]).permutation(n_train)[:min(n, n_train)]


def runs(cfg: Config) -> list[RunSpec]:
    tc = TrainConfig(lr=cfg.lr, batch_size=cfg.batch_size, epochs=cfg.epochs, eval_test=False)
    su = setup(cfg.model, cfg.data, {"train_subset": cfg.train_subset, "seed": cfg.seed}, NAME,
               deterministic=cfg.landscape)
    data = su.data
    land = {"subset": cfg.landscape_subset, "grid": cfg.grid, "margin": cfg.margin}
    return [RunSpec(NAME, f"run={i}", __name__,
                    {"run": i, "seed": cfg.seed + i, "model": su.model, "train": tc.model_dump(),
                     "every": cfg.every, "data": data, "data_name": tag(su.info),
                     "eval_subset": cfg.eval_subset,
                     "landscape": land if (i == 0 and cfg.landscape) else None}, group="mlp",
                    data=data)
            for i in range(cfg.seeds)]


def _prepare(p: dict, ds, device):
    """One run's fresh model, config, snapshot callback and snapshot store."""
    model = build_model(p, ds, p["seed"], device)
    idx = torch.from_numpy(eval_indices(ds.n_train, p["eval_subset"], p["data"]["seed"]))
    xs, ys = ds.x_train[idx.to(ds.x_train.device)], ds.y_train[idx.to(ds.x_train.device)]
    tc = TrainConfig(**p["train"])
    keep = set(snapshot_epochs(tc.epochs, p["every"]))
    snaps, rows = [], []

    def on_epoch(epoch: int, m, _metrics) -> None:
        if epoch in keep:
            snaps.append(flatten_params(m).cpu().numpy().astype(np.float32))
            rows.append((epoch, *evaluate(m, xs, ys, True),
                         *evaluate(m, ds.x_test, ds.y_test, True)))

    return model, tc, on_epoch, (idx, snaps, rows)


def run_one(p: dict, ctx) -> RunResult:
    ds = ctx.dataset(p["data"])
    model, tc, on_epoch, state = _prepare(p, ds, ctx.device)
    res = train(model, ds, tc, seed=p["seed"], on_epoch=on_epoch)
    return _finish(p, ds, model, res, state)


def run_many(ps: list[dict], ctx) -> list[RunResult]:
    """The same runs trained together as one stacked ensemble (dlscope.train.ensemble): each
    member keeps its own init and data order, and equals its solo run to float tolerance."""
    from dlscope.train.ensemble import train_ensemble

    ds = ctx.dataset(ps[0]["data"])
    prepared = [_prepare(p, ds, ctx.device) for p in ps]
    results = train_ensemble([m for m, *_ in prepared], ds, [tc for _, tc, *_ in prepared],
                             [p["seed"] for p in ps], on_epoch=[cb for _, _, cb, _ in prepared])
    return [_finish(p, ds, model, results[i], state)
            for i, (p, (model, _, _, state)) in enumerate(zip(ps, prepared))]


def _finish(p: dict, ds, model, res, state) -> RunResult:
    idx, snaps, rows = state
    first = next(m for m in model.modules()
                 if isinstance(m, (torch.nn.Linear, torch.nn.Conv1d, torch.nn.Conv2d)))
    offset = 0
    for prm in model.parameters():
        if prm is first.weight:
            break
        offset += prm.numel()
    table = np.asarray(rows, dtype=np.float64)
    arrays = {"snapshots": np.stack(snaps), "epoch": table[:, 0].astype(np.int64),
              "train_loss": table[:, 1], "train_acc": table[:, 2], "test_loss": table[:, 3],
              "test_acc": table[:, 4]}
    values = {"status": res.status, "run": p["run"], "seed": p["seed"],
              "epochs_run": res.epochs_run, "params": int(arrays["snapshots"].shape[1]),
              "layer1": [offset, offset + first.weight.numel()], "wall_s": res.wall_s,
              **{k: float(arrays[k][-1]) for k in ("train_loss", "train_acc", "test_acc")}}
    if p["landscape"] and len(snaps) >= 3:
        lp, t0 = p["landscape"], time.perf_counter()
        diffs = arrays["snapshots"] - arrays["snapshots"][-1]  # θ_t − θ_final
        _, comps, ratio, _ = pca(diffs, 2)
        xy = diffs.astype(np.float64) @ comps.T
        span = np.ptp(xy, axis=0)
        axes = [plane_axis(xy[:, j].min() - lp["margin"] * span[j],
                           xy[:, j].max() + lp["margin"] * span[j], lp["grid"]) for j in (0, 1)]
        sub = idx[:lp["subset"]].to(ds.x_train.device)
        grid = loss_plane(model, F.cross_entropy, ds.x_train[sub], ds.y_train[sub],
                          arrays["snapshots"][-1], comps[0], comps[1], *axes)
        arrays.update(plane_alpha=axes[0], plane_beta=axes[1], plane_loss=grid, traj_xy=xy,
                      plane_var=ratio)
        values.update(plane_var=[float(r) for r in ratio], landscape_s=time.perf_counter() - t0)
    return RunResult(values=values, arrays=arrays)


def analyze(cfg: Config, results) -> dict[str, pd.DataFrame]:
    """Tables from the run results: results, variance, trajectory, landscape, run_variance."""
    res = [r for _, r in results]
    meta = pd.DataFrame([{"run": r.values["run"], "seed": r.values["seed"], "epoch": e,
                          **{k: r.arrays[k][j] for k in ("train_loss", "train_acc", "test_acc")}}
                         for r in res for j, e in enumerate(r.arrays["epoch"])])
    points, var, per_run, null = [], [], [], []
    for j, scope in enumerate(SCOPES):
        sl = [slice(None) if scope == "model" else slice(*r.values["layer1"]) for r in res]
        X = np.concatenate([r.arrays["snapshots"][:, s] for r, s in zip(res, sl)])
        proj, _, ratio, _ = pca(X, 2)
        points.append(meta.assign(scope=scope, pc1=proj[:, 0], pc2=proj[:, 1]))
        for r, sel in zip(res, sl):  # each run's own trajectory, as Li et al.
            snaps = r.arrays["snapshots"][:, sel]
            if len(snaps) >= 3 and np.isfinite(snaps).all() and (snaps != snaps[0]).any():
                ratio1 = variance_shares(snaps)  # centred: as of theta_t - theta_final
                per_run.append({"scope": scope, "run": r.values["run"], "seed": r.values["seed"],
                                "status": r.status, "pc1": ratio1[0], "pc2": ratio1[1],
                                "pc12": ratio1[0] + ratio1[1]})
                nl = walk_null(snaps, 2, cfg.null_walks, seed=[cfg.seed, r.values["run"], j])
                null.append({"scope": scope, "run": r.values["run"], **nl,
                             "training": per_run[-1]["pc12"]})
        var.append({"scope": scope, "fit": f"joint, {len(res)} runs x {len(X) // len(res)} "
                    f"snapshots", "dim": X.shape[1], "pc1": ratio[0], "pc2": ratio[1]})
    cols = ["scope", "run", "seed", "epoch", "pc1", "pc2", "train_loss", "train_acc", "test_acc"]
    tables = {"points": pd.concat(points, ignore_index=True)[cols]}
    if per_run:
        tables["run_variance"] = pd.DataFrame(per_run)
        tables["null"] = pd.DataFrame(null).assign(excess=lambda d: d.training - d.simulated)
    tables["results"] = pd.DataFrame([{**{k: r.values[k] for k in (
        "run", "seed", "status", "epochs_run", "params", "train_loss", "train_acc", "test_acc",
        "wall_s")}, "data": getattr(spec, "params", {}).get("data_name", "MNIST")}
        for spec, r in results])
    land = next((r for r in res if "plane_loss" in r.arrays), None)
    if land is not None:
        a, b = np.meshgrid(land.arrays["plane_alpha"], land.arrays["plane_beta"], indexing="ij")
        tables["landscape"] = pd.DataFrame({"alpha": a.ravel(), "beta": b.ravel(),
                                            "loss": land.arrays["plane_loss"].ravel()})
        xy = land.arrays["traj_xy"]
        tables["trajectory"] = pd.DataFrame({
            "run": land.values["run"], "epoch": land.arrays["epoch"], "alpha": xy[:, 0],
            "beta": xy[:, 1], "train_loss": land.arrays["train_loss"],
            "test_acc": land.arrays["test_acc"]})
        r1, r2 = land.arrays["plane_var"]
        var.append({"scope": "trajectory", "fit": f"run {land.values['run']}: theta_t - "
                    "theta_final", "dim": land.arrays["snapshots"].shape[1], "pc1": r1, "pc2": r2})
    tables["variance"] = pd.DataFrame(var).assign(pc12=lambda d: d.pc1 + d.pc2)
    return tables


def _label(col: str, v: float) -> str:
    return f"{v:.2g}" if col == "train_loss" else f"{100 * v:.1f}"


def figures(cfg: Config, tables) -> dict:
    """The figures, by name, drawn from the tables."""
    figs, var = {}, tables["variance"].set_index("scope")
    for scope, pts in tables["points"].groupby("scope", sort=False):
        fig, ax = plotting.figure(width=6.4, height=5.0)
        colors = _colors(pts.run.nunique())
        for k, (run, g) in enumerate(pts.sort_values("epoch").groupby("run")):
            ax.plot(g.pc1, g.pc2, "-o", ms=4, lw=1, color=colors[k], label=f"run {run}")
            ax.plot(g.pc1.iloc[:1], g.pc2.iloc[:1], "o", ms=8, mfc="none", color=colors[k])
            lab = g.iloc[sorted({*range(0, len(g), -(-len(g) // 9)), len(g) - 1})]  # <= 10
            for x, y, v in zip(lab.pc1, lab.pc2, lab[cfg.annotate]):
                ax.annotate(_label(cfg.annotate, v), (x, y), fontsize=6, xytext=(2, 2),
                            textcoords="offset points", color=colors[k])
        what = {"train_loss": "train loss", "train_acc": "train acc. %",
                "test_acc": "test acc. %"}[cfg.annotate]
        v = var.loc[scope]
        plotting.finish(ax, f"{SCOPES.get(scope, scope)}: joint PCA (labels: {what}; "
                        "open circle = epoch 0)", f"PC1 ({100 * v.pc1:.1f}% of variance)",
                        f"PC2 ({100 * v.pc2:.1f}%)")
        figs[f"pca_{scope}"] = fig
    if "landscape" in tables and "trajectory" in tables and "trajectory" in var.index:
        grid = tables["landscape"].pivot(index="beta", columns="alpha", values="loss")
        fig, ax = plotting.figure(width=6.4, height=5.0)
        levels = np.geomspace(grid.values.min(), grid.values.max(), 25)
        cs = ax.contourf(grid.columns, grid.index, grid.values, levels=levels, cmap="viridis",
                         norm=LogNorm())
        ax.contour(grid.columns, grid.index, grid.values, levels=levels[::3], colors="white",
                   linewidths=0.4)
        fig.colorbar(cs, ax=ax, ticks=levels[::4], format="%.3g",
                     label="training loss (cross-entropy, log colour)")
        tr = tables["trajectory"].sort_values("epoch")
        ax.plot(tr.alpha, tr.beta, "-o", color="red", ms=4, lw=1.2, label="trajectory")
        ax.plot([0], [0], "*", color="white", ms=12, mec="black", label="final weights")
        for x, y, e in zip(tr.alpha, tr.beta, tr.epoch):
            ax.annotate(f"ep {e}", (x, y), fontsize=6, color="white", xytext=(3, 3),
                        textcoords="offset points")
        v = var.loc["trajectory"]
        plotting.finish(ax, f"Loss on the plane of run {tr.run.iloc[0]}'s top-2 PCA directions "
                        f"({100 * v.pc12:.1f}% of its variance)", "α (direction 1, weight units)",
                        "β (direction 2, weight units)")
        figs["landscape"] = fig
    if "null" in tables:
        figs["null"] = null_figure(tables["null"], SCOPES, LI_RANGE)
    return figs


def _colors(n: int) -> list:
    cmap = colormaps["tab10" if n <= 10 else "viridis"]
    return [cmap(i if n <= 10 else i / max(1, n - 1)) for i in range(n)]


def observations(cfg: Config, tables) -> list[str]:
    """What this run shows, in sentences for the report."""
    out, var, res = [], tables["variance"].set_index("scope"), tables["results"]
    pts = tables["points"]
    for scope, name in SCOPES.items():
        v, p = var.loc[scope], pts[pts.scope == scope]
        start = _pairwise(p[p.epoch == p.epoch.min()][["pc1", "pc2"]].to_numpy())
        end = _pairwise(p[p.epoch == p.epoch.max()][["pc1", "pc2"]].to_numpy())
        spread = (f"; in the PC plane the runs' epoch-0 points are {start:.3g} apart on "
                  f"average, their final points {end:.3g}") if p.run.nunique() > 1 else ""
        out.append(f"{name.capitalize()} ({int(v.dim)} values, {v.fit}): PC1 explains "
                   f"{100 * v.pc1:.1f}% and PC2 {100 * v.pc2:.1f}% of the variance "
                   f"({100 * v.pc12:.1f}% together){spread}.")
    if "trajectory" in var.index:
        v, land = var.loc["trajectory"], tables["landscape"]
        origin = land.loc[(land.alpha.abs() + land.beta.abs()).idxmin()]
        low = land.loc[land.loss.idxmin()]
        out.append(f"Li et al. plane ({v.fit}): the top two directions explain "
                   f"{100 * v.pc12:.1f}% of the trajectory's variance (Li et al. 2018: 40-90%); "
                   f"on the {land.alpha.nunique()}x{land.beta.nunique()} grid the loss ranges "
                   f"{land.loss.min():.3g}-{land.loss.max():.3g}, {origin.loss:.3g} at the final "
                   f"weights, lowest at (alpha, beta) = ({low.alpha:.3g}, {low.beta:.3g}).")
    if "null" in tables:
        out += [f"{SCOPES[sc].capitalize()}: {null_text(tables, sc)}." for sc in SCOPES]
    if "run_variance" in tables:
        rv = tables["run_variance"]
        per = "; ".join(f"{SCOPES[sc]} {stats.brief(g.pc12, '.1f', 100)}%, range "
                        f"{100 * g.pc12.min():.1f}-{100 * g.pc12.max():.1f}%"
                        for sc, g in rv.groupby("scope", sort=False))
        out.append(f"Each run's own trajectory (theta_t - theta_final), share of its variance in "
                   f"its top two PCA directions, median [95% t-interval of the mean] over "
                   f"{rv.run.nunique()} runs: {per} (Li et al. 2018: 40-90%).")
    ok = res[res.status.isin(["ok", "converged"])]
    if not len(ok):
        out.append(f"No run finished its {int(res.epochs_run.max())} epochs without diverging: "
                   "no final loss or accuracy to summarise.")
    else:
        out.append(f"After {int(res.epochs_run.max())} epochs, median [95% t-interval of the "
                   f"mean] over {len(ok)} runs: train loss {_brief(ok.train_loss)}, train "
                   f"accuracy {_brief(ok.train_acc, '.2f', 100, '%')} ({cfg.eval_subset}-image "
                   f"subset), test accuracy {_brief(ok.test_acc, '.2f', 100, '%')}"
                   + (f" (min {100 * ok.test_acc.min():.2f}%, max {100 * ok.test_acc.max():.2f}"
                      "%)." if ok.test_acc.notna().any() else "."))
    bad = res[~res.status.isin(["ok", "converged"])]
    if len(bad):
        out.append(f"Runs not ok: {', '.join(f'{r.run} ({r.status})' for r in bad.itertuples())}.")
    return out


def _brief(values, fmt: str = ".3g", scale: float = 1.0, unit: str = "") -> str:
    """`stats.brief` followed by `unit`, or "no finite value"."""
    text = stats.brief(values, fmt, scale, empty="")
    return text + unit if text else "no finite value"


def under_trained(cfg: Config) -> bool:
    """Shorter than the assignment's trainings (60,000 images, 24 epochs): a pipeline check."""
    return cfg.train_subset is not None or cfg.epochs < Config.model_fields["epochs"].default


def statistics(cfg: Config, tables) -> dict:
    """The numbers over seeds behind the verdicts and observations (summary.json)."""
    res, var = tables["results"], tables["variance"].set_index("scope")
    ok = res[res.status.isin(["ok", "converged"])]
    out: dict = {"interval": "95% t-interval of the mean over runs (seeds; stats.interval)",
                 "joint_pca": {sc: {k: float(var.loc[sc, k]) for k in ("pc1", "pc2", "pc12")}
                               for sc in var.index},
                 **{k: stats.interval(ok[k]).to_dict() for k in ("train_loss", "test_acc")},
                 **stats.failure_rates(res.status, failed=("diverged",))}
    if "run_variance" in tables:
        out["run_pc12"] = {sc: stats.interval(g.pc12).to_dict()
                           for sc, g in tables["run_variance"].groupby("scope", sort=False)}
    if "null" in tables:
        out["null_excess"] = {sc: {**null_excess(tables, sc)[0].to_dict(), "says":
                                   null_excess(tables, sc)[1]} for sc in SCOPES}
    return out


def verdicts(cfg: Config, tables) -> list[stats.Verdict]:
    """The published claims this run tests, each with its outcome."""
    published = stats.published_for(
        f"{100 * LI_RANGE[0]:.0f}-{100 * LI_RANGE[1]:.0f}% in the first two directions",
        "CIFAR-10", stats.data_of(tables.get("results", pd.DataFrame())))
    snaps = len(snapshot_epochs(cfg.epochs, cfg.every))
    if under_trained(cfg) or snaps < 4 or "run_variance" not in tables:
        why = (f"{cfg.train_subset or 60000:,} images, {cfg.epochs} epochs, {snaps} snapshots: "
               "shorter than the assignment's trainings (and 3 snapshots span a plane), "
               "pipeline check, not evidence")
        return [stats.pipeline_check(LI_CLAIM, LI_SOURCE, published, why)]
    rv = tables["run_variance"]
    g = rv[rv.scope == "model"]
    iv = stats.interval(g.pc12)
    text = (f"whole model, per run: {iv.text('.1f', 100, '%')}, range "
            f"{100 * g.pc12.min():.1f}-{100 * g.pc12.max():.1f}%"
            + (f"; beside a random walk: {null_text(tables)}" if "null" in tables else ""))
    lo, hi = LI_RANGE
    if iv.n < stats.MIN_SEEDS:
        outcome = "inconclusive"
    elif lo <= iv.lo and iv.hi <= hi:
        outcome = "reproduced"
    elif iv.hi < lo or iv.lo > hi:
        outcome = "not reproduced"
    else:
        outcome = "inconclusive"
    rule = (f"reproduced if the 95% interval of the mean over runs lies inside "
            f"[{100 * lo:.0f}%, {100 * hi:.0f}%]; not reproduced if it lies wholly outside; "
            f"otherwise (or fewer than {stats.MIN_SEEDS} runs) inconclusive")
    return [stats.Verdict(LI_CLAIM, LI_SOURCE, published, text, rule, outcome)]


def _pairwise(xy: np.ndarray) -> float:
    if len(xy) < 2:
        return 0.0
    d = np.sqrt(((xy[:, None] - xy[None]) ** 2).sum(-1))
    return float(d[np.triu_indices(len(xy), 1)].mean())


def headline(cfg: Config, tables) -> dict:
    """A few numbers that summarise this run (summary.json's headline)."""
    var, res = tables["variance"].set_index("scope"), tables["results"]
    out = {f"{s}_pc12_var": float(var.loc[s].pc12) for s in var.index}
    ok = res[res.status.isin(["ok", "converged"])]
    if "null" in tables and null_excess(tables)[0].n:
        out["model_pc12_minus_null"] = null_excess(tables)[0].mean
    if len(ok):
        out.update(test_acc_mean=float(ok.test_acc.mean()),
                   train_loss_mean=float(ok.train_loss.mean()))
    return out
