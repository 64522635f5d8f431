"""param-count (HW1 1-3): how do train and test performance change with the number of
parameters of one model structure?

Setup: MLPs 784-w-10 (one hidden ReLU layer; `depth` layers of width w if set) for ten
widths w = 2 ... 1024, i.e. 1,600 to 814,000 parameters (a span of ~500x), each trained from
its own seeded init with Adam (lr 1e-3, batch 64) for 30 epochs on a fixed 5,000-image
MNIST training subset. The small subset makes over-fitting visible (and the sweep fast):
the large models reach ~100% train accuracy and a near-zero train loss while their test
loss rises again. Final train metrics come from a full evaluation of the training subset in
eval mode (engine.evaluate), not from the running mean of the last epoch; test metrics from
the whole 10,000-image test set.

Expected (SCIENCE.md §3): accuracy rises with the parameter count and saturates; train and
test separate once a model can fit its 5,000 images: over-parameterised nets still
generalize, and more parameters do not hurt the test accuracy (Zhang et al. 2017; Neyshabur
et al. 2017).

Each width trains from `seeds` initialisations (seed, seed+1, ...: init and batch order; the
subset is fixed by `seed`); same-width seeds train together as one stacked ensemble
(`dlscope.train.ensemble`). Statistics per width: median and 95% t-interval of the mean over
seeds; the verdicts use Spearman's rho of test accuracy against parameter count.
"""

from __future__ import annotations

from typing import Annotated

import numpy as np
import pandas as pd
from pydantic import Field, field_validator

from dlscope import models
from dlscope.contract.config import ExperimentConfig
from dlscope.contract.runspec import RunResult, RunSpec
from dlscope.experiments import stats
from dlscope.experiments.common import (
    FAILED,
    ensemble_ok,
    full_metrics,
    loss_accuracy_figure,
    seeds_of,
    setting_statistics,
    train_and_evaluate,
)
from dlscope.experiments.inputs import (
    ImageData,
    Model,
    build_model,
    check_factory,
    setup,
    tag,
)
from dlscope.train.engine import TrainConfig

NAME = "param-count"
SECTION = "1-3"
TITLE = "Generalization: number of parameters"
QUESTION = ("How do training and test loss and accuracy change with the number of parameters "
            "of models of the same structure?")


class Config(ExperimentConfig, ImageData):
    """Settings of the param-count experiment; defaults: the assignment profile."""
    widths: list[Annotated[int, Field(ge=1)]] = Field(
        [2, 4, 8, 16, 32, 64, 128, 256, 512, 1024], min_length=2,
        description="hidden width of each model (one model per width)")
    depth: int = Field(1, ge=1, le=8, description="hidden layers, all of the same width")
    train_subset: int = Field(5000, ge=0,
                              description="training images (seeded subset); 0: all 60,000")
    epochs: int = Field(30, ge=1, description="training epochs for every model")
    lr: float = Field(1e-3, gt=0, description="Adam learning rate")
    batch_size: int = Field(64, ge=1, description="minibatch size")
    seeds: int = Field(3, ge=1, description="seeds per width (init and batch order)")
    seed: int = Field(0, ge=0, description="seed of the subset; first init/order seed")
    model: Model | None = Field(None, description="a factory py:module:function with a `size` "
                                "argument, called with each width (default: MLPs of `depth` "
                                "hidden layers of that width)")

    @field_validator("model")
    @classmethod
    def _model(cls, v: Model | None) -> Model | None:
        return check_factory(v, "a size argument (built-in MLPs are set by widths and depth)")


PROFILES = {"quick": {"widths": [2, 32, 256], "train_subset": 1000, "epochs": 3, "seeds": 2}}
FIT = 0.99     # train accuracy from which a model has fitted its training set
SOURCES = {"rise": "Zhang et al. 2017 (arXiv:1611.03530); HW1 1-3 (SCIENCE.md §3)",
           "fitted": "Neyshabur et al. 2015 (arXiv:1412.6614); Zhang et al. 2017"}


def specs(cfg: Config, su=None) -> list:
    """The model spec of each width, narrowest first (MLPs on flattened MNIST by default)."""
    widths = sorted(set(cfg.widths))
    if su is not None and isinstance(su.spec, models.FactorySpec):
        return models.sizes_for(su.spec, widths)
    mlps = [models.MLPSpec(input_dim=784, hidden=(w,) * cfg.depth, output_dim=10)
            for w in widths]
    return mlps if su is None else [models.adapt(m, su.info.input_shape, su.info.n_classes)
                                    for m in mlps]


def runs(cfg: Config) -> list[RunSpec]:
    train_cfg = TrainConfig(lr=cfg.lr, epochs=cfg.epochs, batch_size=cfg.batch_size,
                            eval_test=False)
    su = setup(cfg.model or "mlp:784-10", cfg.data,
               {"train_subset": cfg.train_subset or None, "seed": cfg.seed}, NAME)
    shape = {"input_shape": list(su.info.input_shape), "n_classes": su.info.n_classes}
    return [RunSpec(NAME, f"{spec.name}/seed={s}", __name__,
                    {"model": spec.model_dump(mode="json"), "data": su.data,
                     "data_name": tag(su.info), **shape,
                     "train": train_cfg.model_dump(), "seed": s}, group=spec.name,
                    data=su.data)
            for spec in specs(cfg, su) for s in seeds_of(cfg)]


def run_one(p: dict, ctx) -> RunResult:
    model, ds, res, m = train_and_evaluate(p, ctx)
    return _result(model, ds, res, m)


def run_many(ps: list[dict], ctx) -> list[RunResult]:
    """Same-width seeds trained together as one stacked ensemble (each member equals its solo
    run to float tolerance); one by one where the model is no plain MLP."""
    from dlscope.train.ensemble import train_ensemble

    ds = ctx.dataset(ps[0]["data"])
    nets = [build_model(p, ds, p["seed"], ctx.device) for p in ps]
    if not ensemble_ok(nets) or any(p["data"] != ps[0]["data"] for p in ps):
        return [run_one(p, ctx) for p in ps]
    results = train_ensemble(nets, ds, [TrainConfig(**p["train"]) for p in ps],
                             [p["seed"] for p in ps])
    return [_result(m, ds, r, full_metrics(m, ds)) for m, r in zip(nets, results)]


def _result(model, ds, res, m: dict) -> RunResult:
    return RunResult(
        values={"status": res.status, "epochs_run": res.epochs_run, "wall_s": res.wall_s,
                "module_params": models.module_params(model), "n_train": ds.n_train,
                **m, "running_train_loss": res.final("train_loss")},
        arrays={"running_train_loss": np.asarray(res.history["train_loss"], np.float64)})


def analyze(cfg: Config, results) -> dict[str, pd.DataFrame]:
    """Tables from the run results: results (a row per run)."""
    rows = []
    for spec, r in results:
        p = spec.params
        d = models.describe(models.parse_model(p["model"]), tuple(p.get("input_shape", ())) or None,
                            p.get("n_classes"))
        v = r.values
        if v["module_params"] != d["params"]:
            raise RuntimeError(f"{d['model']}: module has {v['module_params']} parameters, "
                               f"count_params says {d['params']}")
        rows.append({"model": d["model"], "widths": d["widths"], "params": d["params"],
                     "seed": spec.params["seed"],
                     **{k: v[k] for k in ("train_loss", "train_acc", "test_loss", "test_acc")},
                     "gap_acc": v["train_acc"] - v["test_acc"],
                     "gap_loss": v["test_loss"] - v["train_loss"], "n_train": v["n_train"],
                     "epochs": v["epochs_run"], "status": v["status"], "wall_s": v["wall_s"],
                     "data": p.get("data_name", "MNIST")})
    df = pd.DataFrame(rows).sort_values(["params", "seed"], ignore_index=True)
    df["failed"] = df.status.isin(FAILED)
    return {"results": df}


def figures(cfg: Config, tables) -> dict:
    """The figures, by name, drawn from the tables."""
    df = tables["results"]
    n = int(df.n_train.iloc[0])
    fig, _ = loss_accuracy_figure(
        df, "params", {"train (full evaluation)": "train", "test": "test"}, logx=True,
        titles=(f"loss vs parameters ({n:,} train images)",
                f"accuracy vs parameters (faint: each of {df.seed.nunique()} seeds)"),
        xlabel="parameters (log)")
    return {"loss_accuracy": fig}


def _ok(df: pd.DataFrame) -> pd.DataFrame:
    return df[~df.status.isin(FAILED)]


def _fitted(df: pd.DataFrame) -> pd.DataFrame:
    """The finished runs of the widths whose median train accuracy is >= FIT."""
    ok = _ok(df)
    med = ok.groupby("model").train_acc.median()
    return ok[ok.model.isin(med[med >= FIT].index)]


def statistics(cfg: Config, tables) -> dict:
    """The numbers over seeds behind the verdicts and observations (summary.json)."""
    df = tables["results"]
    ok, fit = _ok(df), _fitted(df)
    largest, second = _largest_two(df)
    return {"interval": "t-interval (95%) of the mean over the seeds that finished; "
                        "median shown",
            "settings": setting_statistics(
                df, ["model"], ["train_acc", "test_acc", "train_loss", "test_loss", "gap_acc"]),
            "test_acc_vs_params": stats.trend(ok.params, ok.test_acc).to_dict(),
            "test_acc_vs_params_fitted": stats.trend(fit.params, fit.test_acc).to_dict(),
            "fitted_models": sorted(fit.model.unique(), key=models.count_params),
            "largest_minus_second_test_acc": stats.compare(
                ok[ok.model == second].test_acc, ok[ok.model == largest].test_acc).to_dict()}


def _largest_two(df: pd.DataFrame) -> tuple[str, str]:
    order = df.drop_duplicates("model").sort_values("params").model.tolist()
    return order[-1], order[-2]


def verdicts(cfg: Config, tables) -> list[stats.Verdict]:
    """The published claims this run tests, each with its outcome."""
    df = tables["results"]
    ok, fit = _ok(df), _fitted(df)
    rise = ("Test accuracy rises with the parameter count of one structure; over-parameterised "
            "nets still generalize")
    no_harm = ("Once a model fits its training set, more parameters do not hurt its test "
               "accuracy (it keeps rising or stays flat)")
    published = {"rise": "qualitative (CIFAR-10/ImageNet nets with more parameters than images "
                         "generalize)",
                 "fitted": "qualitative: test error keeps falling as hidden units grow past the "
                           "size that reaches 0 training error (Fig. 1, MNIST and CIFAR-10)"}
    top = ok[ok.params == ok.params.max()]
    acc = top.train_acc.median() if len(top) else np.nan
    if not acc >= FIT:  # also when there is no finished run or no finite accuracy
        why = (f"the largest model reaches a median train accuracy of {100 * acc:.1f}% (< "
               f"{100 * FIT:.0f}%): train and test have not separated, the sweep is "
               "under-trained" if np.isfinite(acc) else
               "no model finished training with a finite train accuracy: no sweep to judge")
        return [stats.pipeline_check(rise, SOURCES["rise"], published["rise"], why),
                stats.pipeline_check(no_harm, SOURCES["fitted"], published["fitted"], why)]
    t_all = stats.trend(ok.params, ok.test_acc)
    t_fit = stats.trend(fit.params, fit.test_acc)
    n_fit = fit.model.nunique()
    return [
        stats.Verdict(rise, SOURCES["rise"], published["rise"],
                      f"test accuracy vs parameters over {ok.model.nunique()} widths x seeds: "
                      f"{t_all.text()}", stats.TREND_RULE, stats.outcome_of_trend(t_all, +1)),
        stats.Verdict(no_harm, SOURCES["fitted"], published["fitted"],
                      f"over the {n_fit} widths with median train accuracy >= {100 * FIT:.0f}%: "
                      f"{t_fit.text()}",
                      "reproduced if Spearman's rho >= 0 is not contradicted: rho > 0 with "
                      "p < 0.05 reproduces, rho < 0 with p < 0.05 does not; otherwise (or fewer "
                      "than 5 points, or fewer than 2 fitted widths) inconclusive",
                      "inconclusive" if n_fit < 2 else stats.outcome_of_trend(t_fit, +1))]


def _iv(st: dict, model: str, key: str, pct: bool = True) -> str:
    iv = stats.Interval(**st["settings"][model][key])
    return iv.text(".1f", 100, "%") if pct else iv.text(".2g")


def observations(cfg: Config, tables) -> list[str]:
    """What this run shows, in sentences for the report."""
    df = tables["results"]
    st = statistics(cfg, tables)
    order = df.drop_duplicates("model").sort_values("params")
    lo, hi = order.iloc[0], order.iloc[-1]
    _, second = _largest_two(df)
    d = st["largest_minus_second_test_acc"]
    diff = stats.Difference(d["n_a"], d["n_b"], d["diff"], d["lo"], d["hi"], d["p_value"])
    failed = df[df.status.isin(FAILED)]
    out = [
        (f"{len(order)} models from {lo.params:,} to {hi.params:,} parameters "
         f"({hi.params / lo.params:.0f}x), {df.seed.nunique()} seeds each, {int(lo.epochs)} "
         f"epochs on {int(lo.n_train):,} images."),
        (f"Smallest ({lo.model}): train {_iv(st, lo.model, 'train_acc')}, test "
         f"{_iv(st, lo.model, 'test_acc')}. Largest ({hi.model}): train "
         f"{_iv(st, hi.model, 'train_acc')}, test {_iv(st, hi.model, 'test_acc')}, test loss "
         f"{_iv(st, hi.model, 'test_loss', pct=False)}."),
        (f"Test accuracy vs parameters: {stats.Trend(**st['test_acc_vs_params']).text()}; "
         f"largest vs second largest ({second}): "
         f"{diff.text('.2f', 100, ' points', names=(second, hi.model))}."),
    ]
    if len(failed):
        names = ", ".join(f"{r.model}/seed={r.seed} ({r.status})" for r in failed.itertuples())
        out.append(f"Failed runs (not in the statistics): {names}.")
    return out


def headline(cfg: Config, tables) -> dict:
    """A few numbers that summarise this run (summary.json's headline)."""
    df = _ok(tables["results"])
    if not len(df):
        return {}  # no finished run: no number to headline
    med = df.groupby("params")[["train_acc", "test_acc"]].median()
    return {"params_min": int(df.params.min()), "params_max": int(df.params.max()),
            "test_acc_min": float(med.test_acc.min()), "test_acc_max": float(med.test_acc.max()),
            "train_acc_min": float(med.train_acc.min()),
            "train_acc_max": float(med.train_acc.max())}
