"""function-fit (HW1 1-1, simulate a function): is a deep net better than a shallow one
with the same number of parameters at fitting a 1-D function?

Setup: for each target function, a family of fully connected ReLU nets of different depth
whose parameter counts match a budget within 1% (`width_for_params`), trained full batch
with Adam (lr 1e-3, MSE) until converged or 20,000 epochs, from `seeds` initialisations per
function and depth (PyTorch's default init; the data are a fixed grid, so the seed changes
only the init). Same-shape seeds train together as one stacked ensemble
(`dlscope.train.ensemble`). "Converged" is measurable and reported: training loss below
`converge_loss`, or the best loss improving by less than `converge_rel` (relative) over the
last `converge_window` epochs. A net whose prediction no longer varies with x (every ReLU
path dead: std of the prediction < 1% of the target's) is "collapsed": counted as a rate per
depth and drawn, never averaged into a median.

Expected (SCIENCE.md §1): on the oscillating/discontinuous targets (sinc(5x), sgn(sin(5πx)))
deeper nets reach lower loss with the same budget, shallow nets smooth out the high-frequency
parts (Eldan & Shamir 2016, arXiv:1512.03965; Mhaskar & Poggio 2016); narrow deep ReLU nets
also die at initialisation for some seeds, which one seed per depth cannot tell apart from a
bad fit. The verdict compares deep with shallow per function by the 95% Welch interval of the
difference of mean log10 final loss over the seeds that did not collapse or diverge.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch
from pydantic import Field, field_validator

from dlscope import data, models, plotting
from dlscope.contract.config import ExperimentConfig
from dlscope.contract.runspec import RunResult, RunSpec
from dlscope.errors import UserError
from dlscope.experiments import stats
from dlscope.experiments.common import ensemble_ok, seeds_of, setting_statistics, slugs
from dlscope.experiments.inputs import Model, check_factory
from dlscope.models.factory import factory_accepts
from dlscope.train.engine import TrainConfig, seeded_model, train

NAME = "function-fit"
SECTION = "1-1"
TITLE = "Deep vs shallow: simulate a function"
QUESTION = ("With the same number of parameters, does a deeper fully connected net fit a 1-D "
            "function better than a shallower one?")
INIT = "PyTorch default (weights and biases U(±1/√fan_in))"
COLLAPSE = 0.01        # collapsed: std of the prediction below this fraction of the target's
MIN_EPOCHS = 10_000    # fewer full-batch steps than this: under-trained, no verdict
# The stacked ensemble pays off for narrow nets and not for a wide single hidden layer
# (1,000 points, one thread, idle, engine 3, ms a net and step, stacked vs one by one:
# 17-8x6 0.23-0.32 vs 0.92-0.95, 11-17-17 0.25-0.31 vs 0.60-0.64, 183 wide 1.81-1.84 vs 0.58-0.66),
# so nets wider than this go one by one.
ENSEMBLE_MAX_WIDTH = 64
SOURCE = "Eldan & Shamir 2016 (arXiv:1512.03965); HW1 1-1 (SCIENCE.md §1)"


class Config(ExperimentConfig):
    """Settings of the function-fit experiment; defaults: the assignment profile."""
    functions: list[str] = Field(["sin-log", "sinc", "sign-sin"], min_length=1,
                                 description="registry names or expr:<expression in x>")
    param_budget: int = Field(550, ge=10, description="parameters per model (matched within 1%)",
                              json_schema_extra={"memory": ("parameters", 16)})
    depths: list[int] = Field([1, 3, 7], min_length=2, description="hidden layers per model")
    activation: models.Activation = Field("relu",
                                          description="hidden-layer activation of every model")
    n_train: int = Field(1000, ge=8, description="evenly spaced training points",
                         json_schema_extra={"memory": ("data", 8)})
    epochs: int = Field(20000, ge=1, description="full-batch Adam steps at most")
    lr: float = Field(1e-3, gt=0, description="Adam learning rate")
    converge_loss: float = Field(1e-6, gt=0, description="converged: MSE below this")
    converge_rel: float = Field(1e-3, gt=0, description="converged: plateau, relative gain")
    converge_window: int = Field(2000, ge=1, description="epochs the plateau rule looks back")
    seeds: int = Field(10, ge=1, description="initialisations per function and depth")
    seed: int = Field(0, ge=0, description="first init seed (seed, seed+1, ...)")
    model: Model | None = Field(None, description=(
        "a factory py:module:function with `depth` and `size` arguments, called for each "
        "depth with the size that matches param_budget within 1% (default: ReLU MLPs)"))

    @field_validator("model")
    @classmethod
    def _factory(cls, v: Model | None) -> Model | None:
        return check_factory(v, "depth and size arguments (built-in MLPs follow depths)")

    @field_validator("functions")
    @classmethod
    def _known_functions(cls, value: list[str]) -> list[str]:
        from dlscope.data.functions import check_target
        from dlscope.errors import UserError

        for spec in value:
            try:
                check_target(spec)  # finite on a dense grid of its domain, before any run
            except UserError as exc:
                raise ValueError(str(exc)) from None
        return value


PROFILES = {"quick": {"epochs": 3000, "n_train": 400, "converge_window": 1000, "seeds": 2}}


def family(cfg: Config) -> list[tuple[str, object]]:
    """The (label, spec) of each depth: shallow / middle / deep for three depths; with a
    factory, the factory at each depth with the size that matches the budget."""
    depths = sorted(set(cfg.depths))
    names = (["shallow", "middle", "deep"] if len(depths) == 3 else
             [f"depth{d}" for d in depths])
    out = []
    for label, d in zip(names, depths):
        if cfg.model is not None:
            spec = models.parse_model(cfg.model)
            if not factory_accepts(spec, "depth"):
                raise UserError(f"{NAME}: model {spec.name} has no `depth` argument")
            spec = spec.model_copy(update={"kwargs": {**spec.kwargs, "depth": d}})
            out.append((label, models.sized(spec, cfg.param_budget, input_shape=(1,))))
            continue
        widths = models.width_for_params(d, cfg.param_budget)
        out.append((label, models.MLPSpec(input_dim=1, hidden=tuple(widths), output_dim=1,
                                          activation=cfg.activation)))
    return out


def function_data(function: str, n_train: int, seed: int) -> dict:
    """The dataset description of a 1-D target sampled at n_train points."""
    return {"kind": "function", "spec": function, "n_train": n_train, "n_test": 16,
            "seed": seed}


def _closed_form(spec) -> dict:
    """One hidden ReLU layer: trained with the closed-form step (`train.onehidden`: by the
    units' breakpoints, the seeds of a function together; float tolerance of the generic
    step), recorded in the run's parameters."""
    if not isinstance(spec, models.MLPSpec):
        return {}
    one = len(spec.hidden) == 1 and spec.activation == "relu"
    return {"closed_form": "breakpoints"} if one else {}


def runs(cfg: Config) -> list[RunSpec]:
    train_cfg = TrainConfig(lr=cfg.lr, epochs=cfg.epochs, batch_size=None, eval_test=False,
                            converge_loss=cfg.converge_loss, converge_rel=cfg.converge_rel,
                            converge_window=cfg.converge_window)
    return [RunSpec(NAME, f"{fn}/{label}/seed={s}", __name__,
                    {"function": fn, "label": label, "model": spec.model_dump(mode="json"),
                     "n_train": cfg.n_train, "train": train_cfg.model_dump(), "seed": s,
                     "data_seed": cfg.seed, **_closed_form(spec)}, group=f"{fn}/{label}",
                    data=function_data(fn, cfg.n_train, cfg.seed))
            for fn in cfg.functions for label, spec in family(cfg) for s in seeds_of(cfg)]


def _prepare(p: dict, ctx):
    ds = ctx.dataset(function_data(p["function"], p["n_train"], p["data_seed"]))
    spec = models.parse_model(p["model"])
    model = seeded_model(lambda: models.build(spec, (1,)), p["seed"]).to(ctx.device)
    grid = np.linspace(float(ds.x_train.min()), float(ds.x_train.max()), 200, dtype=np.float32)
    return ds, model, grid, _predict(model, grid, ctx.device)


def _predict(model, grid: np.ndarray, device) -> np.ndarray:
    with torch.inference_mode():
        return model(torch.from_numpy(grid[:, None]).to(device)).cpu().numpy()[:, 0]


def is_collapsed(y_pred, y_true) -> bool:
    """A prediction that no longer varies with x: its std is below COLLAPSE x the target's."""
    return bool(np.std(y_pred) < COLLAPSE * np.std(y_true))


def _finish(p: dict, model, res, grid, init_pred, device) -> RunResult:
    pred = _predict(model, grid, device)
    y_true = data.evaluate(p["function"], grid)
    collapsed = is_collapsed(pred, y_true) and res.status != "diverged"
    return RunResult(
        values={"status": "collapsed" if collapsed else res.status, "train_status": res.status,
                "final_loss": res.final("train_loss"), "converged": res.status == "converged",
                "converged_epoch": res.converged_epoch, "stop_rule": res.stop_rule,
                "epochs_run": res.epochs_run, "diverged_step": res.diverged_step,
                "init_pred_std": float(np.std(init_pred)), "wall_s": res.wall_s},
        arrays={"loss": np.asarray(res.history["train_loss"], dtype=np.float32),
                "x": grid, "y_pred": pred.astype(np.float32)})


def run_one(p: dict, ctx) -> RunResult:
    ds, model, grid, init_pred = _prepare(p, ctx)
    res = train(model, ds, TrainConfig(**p["train"]), seed=p["seed"],
                closed_form=bool(p.get("closed_form")))
    return _finish(p, model, res, grid, init_pred, ctx.device)


def run_many(ps: list[dict], ctx) -> list[RunResult]:
    """Same-shape seeds trained together as one stacked ensemble (each member equals its solo
    run to float tolerance, tests/test_ensemble.py; bit for bit with the closed-form step);
    one by one where the net is no plain MLP, or wider than ENSEMBLE_MAX_WIDTH without the
    closed-form step."""
    from dlscope.train.ensemble import train_ensemble

    prep = [_prepare(p, ctx) for p in ps]
    nets = [m for _, m, _, _ in prep]
    spec = models.parse_model(ps[0]["model"])
    closed = bool(ps[0].get("closed_form"))
    wide = not isinstance(spec, models.MLPSpec) or max(spec.hidden) > ENSEMBLE_MAX_WIDTH
    if (wide and not closed) or not ensemble_ok(nets):
        return [run_one(p, ctx) for p in ps]
    results = train_ensemble(nets, prep[0][0], [TrainConfig(**p["train"]) for p in ps],
                             [p["seed"] for p in ps], closed_form=closed)
    return [_finish(p, m, r, g, i0, ctx.device)
            for p, (_, m, g, i0), r in zip(ps, prep, results)]


def _grid(n: int, max_points: int = 300) -> np.ndarray:
    """The epochs (1-based) curves keep: about max_points evenly spaced, shared by all runs."""
    return np.unique(np.linspace(1, n, min(n, max_points)).round().astype(int))


def analyze(cfg: Config, results) -> dict[str, pd.DataFrame]:
    """Tables from the run results: results (a row per run), curves and predictions."""
    rows, curves, preds = [], [], []
    keep = _grid(cfg.epochs)
    for spec, r in results:
        p, v = spec.params, r.values
        d = models.describe(models.parse_model(p["model"]), (1,), None)
        rows.append({"function": p["function"], "model": p["label"], "depth": d["depth"],
                     "widths": d["widths"], "params": d["params"], "seed": p["seed"],
                     **{k: v[k] for k in ("final_loss", "converged", "converged_epoch",
                                          "epochs_run", "status", "stop_rule", "wall_s")},
                     "collapsed": v["status"] == "collapsed",
                     "init_pred_std": v["init_pred_std"], "init": INIT})
        loss = r.arrays["loss"]
        idx = np.union1d(keep[keep <= len(loss)], [len(loss)]) - 1
        curves.append(pd.DataFrame({"function": p["function"], "model": p["label"],
                                    "seed": p["seed"], "epoch": idx + 1, "loss": loss[idx]}))
        x = r.arrays["x"]
        preds.append(pd.DataFrame({"function": p["function"], "model": p["label"],
                                   "seed": p["seed"], "x": x,
                                   "y_true": data.evaluate(p["function"], x),
                                   "y_pred": r.arrays["y_pred"]}))
    res = pd.DataFrame(rows)
    res["log10_final_loss"] = np.log10(res.final_loss.where(res.final_loss > 0))
    return {"results": res, "curves": pd.concat(curves, ignore_index=True),
            "predictions": pd.concat(preds, ignore_index=True)}


def _failed(df: pd.DataFrame) -> pd.Series:
    return df.status.isin(("collapsed", "diverged"))


# long: three figures of one experiment, each a few plotting calls
def figures(cfg: Config, tables) -> dict:
    """Per function its training-loss curves and fitted functions; the final losses of all."""
    res = tables["results"]
    names = slugs(res.function.unique())
    order = list(dict.fromkeys(res.model))
    figs = {}
    for fn, cur in tables["curves"].groupby("function", sort=False):
        figs[f"{names[fn]}_loss"] = _loss_figure(fn, cur, res, order)
    for fn, pr in tables["predictions"].groupby("function", sort=False):
        figs[f"{names[fn]}_fit"] = _fit_figure(fn, pr, res, order)
    figs["final_loss"] = _final_loss_figure(res, list(names), order)
    return figs


def _loss_figure(fn: str, cur: pd.DataFrame, res: pd.DataFrame, order: list[str]):
    """Training loss per epoch of each model fitting `fn`: faint seeds under a bold median."""
    fig, ax = plotting.figure()
    for k, model in enumerate(order):
        c, r = cur[cur.model == model], res[(res.function == fn) & (res.model == model)]
        bad = set(r.seed[_failed(r)])
        for seed, g in c.groupby("seed"):
            ax.plot(g.epoch, g.loss, color="grey" if seed in bad else f"C{k}",
                    ls="--" if seed in bad else "-", lw=0.9 if seed in bad else 0.7,
                    alpha=0.8 if seed in bad else 0.35)
        wide = c[~c.seed.isin(bad)].pivot(index="seed", columns="epoch", values="loss")
        if len(wide):
            wide = wide.ffill(axis=1)      # a stopped run stays at its final loss
            ax.plot(wide.columns, wide.median(axis=0), color=f"C{k}", lw=2,
                    label=f"{model} ({r.params.iloc[0]} params): median of {len(wide)}")
    if _failed(res[res.function == fn]).any():
        ax.plot([], [], "--", color="grey", label="collapsed/diverged seeds (not in median)")
    ax.set_yscale("log")
    plotting.finish(ax, f"{fn}: training loss (faint: each seed)",
                    "epoch (full-batch step)", "MSE (log)")
    return fig


def _fit_figure(fn: str, pr: pd.DataFrame, res: pd.DataFrame, order: list[str]):
    """One panel per model: the truth of `fn`, each seed's fitted function and their median."""
    fig, axes = plotting.figure(ncols=len(order), width=3.6)
    for ax, model in zip(np.atleast_1d(axes), order):
        c = pr[pr.model == model]
        r = res[(res.function == fn) & (res.model == model)]
        bad = set(r.seed[_failed(r)])
        first = c[c.seed == c.seed.iloc[0]]
        ax.plot(first.x, first.y_true, color="black", lw=2.5, alpha=0.35, label="truth")
        for seed, g in c.groupby("seed"):
            ax.plot(g.x, g.y_pred, color="red" if seed in bad else "C0",
                    ls=":" if seed in bad else "-", lw=0.8 if seed in bad else 0.6,
                    alpha=0.8 if seed in bad else 0.3)
        ok = c[~c.seed.isin(bad)].pivot(index="seed", columns="x", values="y_pred")
        if len(ok):
            ax.plot(ok.columns, ok.median(axis=0), color="C0", lw=1.8,
                    label=f"median of {len(ok)} seeds")
        if bad:
            ax.plot([], [], ":", color="red", label=f"collapsed/diverged ({len(bad)})")
        plotting.finish(ax, f"{fn}: {model}", "x", "y")
    return fig


def _final_loss_figure(res: pd.DataFrame, fns: list[str], order: list[str]):
    """One panel per function: the final loss of each seed per model, with the median."""
    fig, axes = plotting.figure(ncols=len(fns), width=4.0)
    for ax, fn in zip(np.atleast_1d(axes), fns):
        r = res[res.function == fn]
        ticks = []
        for k, model in enumerate(order):
            g = r[r.model == model]
            jit = np.linspace(-0.15, 0.15, len(g)) if len(g) > 1 else np.zeros(1)
            bad = _failed(g).to_numpy()
            ax.plot(k + jit[~bad], g.final_loss[~bad], "o", color=f"C{k}", alpha=0.6, ms=4)
            ax.plot(k + jit[bad], g.final_loss[bad], "x", color="red", ms=7,
                    label="collapsed/diverged" if bad.any() and k == 0 else None)
            if (~bad).any():
                ax.hlines(np.median(g.final_loss[~bad]), k - 0.25, k + 0.25, color="black",
                          lw=2, label="median" if k == 0 else None)
            ticks.append(f"{model}\n{int(g.depth.iloc[0])} hidden\ncollapsed "
                         f"{int(g.collapsed.sum())}/{len(g)}")
        ax.set_xticks(range(len(order)), ticks, fontsize=7)
        ax.set_yscale("log")
        plotting.finish(ax, f"{fn}: final loss per seed", "", "final MSE (log)")
    return fig


def _log_losses(res: pd.DataFrame, fn: str, model: str) -> pd.Series:
    g = res[(res.function == fn) & (res.model == model)]
    return g.log10_final_loss[~_failed(g)]


def diff_text(d: stats.Difference, order: list[str]) -> str:
    """`d.text()`, or which depth has no run that finished without collapsing or diverging."""
    none = [m for m, n in ((order[-1], d.n_b), (order[0], d.n_a)) if n == 0]
    if none:
        return (f"no difference: no run of {' or '.join(none)} finished without collapsing or "
                "diverging")
    return d.text()


def statistics(cfg: Config, tables) -> dict:
    """The numbers over seeds behind the verdicts and observations (summary.json)."""
    res = tables["results"]
    order = list(dict.fromkeys(res.model))
    out = {"interval": "t-interval (95%) of the mean of log10 final MSE over the seeds that "
                       "neither collapsed nor diverged; median shown",
           "settings": setting_statistics(res, ["function", "model"], ["log10_final_loss"]),
           "collapse_rate_by_depth": {m: float(res[res.model == m].collapsed.mean())
                                      for m in order},
           "converged_rate": {f"{f}/{m}": float(g.converged.mean())
                              for (f, m), g in res.groupby(["function", "model"], sort=False)},
           "deep_minus_shallow_log10_loss": {}}
    for fn in res.function.unique():
        d = stats.compare(_log_losses(res, fn, order[0]), _log_losses(res, fn, order[-1]))
        out["deep_minus_shallow_log10_loss"][fn] = d.to_dict()
    return out


def verdicts(cfg: Config, tables) -> list[stats.Verdict]:
    """The published claims this run tests, each with its outcome."""
    res = tables["results"]
    order = list(dict.fromkeys(res.model))
    claim = (f"At equal parameter count the deepest net ({order[-1]}) fits a 1-D function to a "
             f"lower training MSE than the shallowest ({order[0]})")
    published = "qualitative (depth separation, no number for this setting)"
    if cfg.epochs < MIN_EPOCHS:
        return [stats.pipeline_check(claim, SOURCE, published,
                                     f"{cfg.epochs} full-batch steps (< {MIN_EPOCHS:,}): "
                                     "the nets are under-trained")]
    out = []
    for fn in res.function.unique():
        d = stats.compare(_log_losses(res, fn, order[0]), _log_losses(res, fn, order[-1]))
        out.append(stats.Verdict(
            f"{claim}: {fn}", SOURCE, published,
            f"mean log10 MSE {order[-1]} − {order[0]}: {diff_text(d, order)} ({d.n_b} and "
            f"{d.n_a} seeds "
            "that did not collapse or diverge)", stats.DIFFERENCE_RULE,
            stats.outcome_of_difference(d, expected_sign=-1)))
    return out


def observations(cfg: Config, tables) -> list[str]:
    """What this run shows, in sentences for the report."""
    res = tables["results"]
    st = statistics(cfg, tables)
    order = list(dict.fromkeys(res.model))
    spread = (res.params.max() - res.params.min()) / res.params.min() * 100
    out = [(f"Parameter counts {res.params.min()}–{res.params.max()} (spread {spread:.2f}%, "
            f"budget {cfg.param_budget}); {cfg.seeds} seeds per function and depth; init: "
            f"{INIT}.")]
    rates = ", ".join(f"{m} {100 * r:.0f}%" for m, r in st["collapse_rate_by_depth"].items())
    out.append(f"Collapsed to a constant output (dead ReLUs), over all functions: {rates}.")
    for fn in res.function.unique():
        parts = []
        for m in order:
            iv = st["settings"][f"{fn}/{m}"]["log10_final_loss"]
            f = st["settings"][f"{fn}/{m}"]["failures"]
            med = f"{10 ** iv['median']:.3g}" if iv["n"] else "—"
            conv = st["converged_rate"][f"{fn}/{m}"]
            parts.append(f"{m} {med} ({iv['n']} seeds; {f['collapsed']} collapsed, "
                         f"{f['diverged']} diverged; {100 * conv:.0f}% converged)")
        d = st["deep_minus_shallow_log10_loss"][fn]
        diff = stats.Difference(d["n_a"], d["n_b"], d["diff"], d["lo"], d["hi"], d["p_value"])
        out.append(f"{fn}: median final MSE " + "; ".join(parts) + f". {order[-1]} − "
                   f"{order[0]} in log10 MSE: {diff_text(diff, order)}.")
    return out


def headline(cfg: Config, tables) -> dict:
    """A few numbers that summarise this run (summary.json's headline)."""
    res = tables["results"]
    ok = res[~_failed(res)]
    return {f"{f}/{m}": float(g.final_loss.median())
            for (f, m), g in ok.groupby(["function", "model"], sort=False)}
