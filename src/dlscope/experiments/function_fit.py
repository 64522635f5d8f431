"""function-fit (HW1 1-1, simulate a function): is a deep net better than a shallow one
with the same number of parameters at fitting a 1-D function?

Setup: for each target function, a family of fully connected ReLU nets of different depth
whose parameter counts match a budget within 1% (`width_for_params`), trained full batch
with Adam (lr 1e-3, MSE) until converged or 20,000 epochs. "Converged" is measurable and
reported: training loss below `converge_loss`, or the best loss improving by less than
`converge_rel` (relative) over the last `converge_window` epochs.

Expected: on the smooth target all depths fit well; on the oscillating/discontinuous ones
(sinc(5x), sgn(sin(5πx))) deeper nets reach lower loss with the same budget, shallow nets
smooth out the high-frequency parts (Eldan & Shamir 2016; Mhaskar & Poggio 2016).

Wall time on a 2-core CPU: quick ~15 s, assignment ~2 min (9 models × ≤20,000 full-batch steps).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from pydantic import Field, field_validator

from dlscope import data, models, plotting
from dlscope.execution.config import ExperimentConfig
from dlscope.train.engine import TrainConfig, seeded_model, train
from dlscope.execution.runspec import RunResult, RunSpec

NAME = "function-fit"
SECTION = "1-1"
TITLE = "Deep vs shallow: simulate a function"
QUESTION = ("With the same number of parameters, does a deeper fully connected net fit a 1-D "
            "function better than a shallower one?")


class Config(ExperimentConfig):
    functions: list[str] = Field(["sin-log", "sinc", "sign-sin"],
                                 description="registry names or expr:<expression in x>")
    param_budget: int = Field(550, ge=10, description="parameters per model (matched within 1%)")
    depths: list[int] = Field([1, 3, 7], min_length=2, description="hidden layers per model")
    activation: models.Activation = "relu"
    n_train: int = Field(1000, ge=8, description="evenly spaced training points")
    epochs: int = Field(20000, ge=1, description="full-batch Adam steps at most")
    lr: float = Field(1e-3, gt=0)
    converge_loss: float = Field(1e-6, gt=0, description="converged: MSE below this")
    converge_rel: float = Field(1e-3, gt=0, description="converged: plateau, relative gain")
    converge_window: int = Field(2000, ge=1, description="epochs the plateau rule looks back")
    seed: int = 0

    @field_validator("functions")
    @classmethod
    def _known_functions(cls, value: list[str]) -> list[str]:
        from dlscope.data.functions import resolve
        from dlscope.errors import UserError

        for spec in value:
            try:
                resolve(spec)
            except UserError as exc:
                raise ValueError(str(exc)) from None
        return value


PROFILES = {"quick": {"epochs": 3000, "n_train": 400, "converge_window": 1000}}


def family(cfg: Config) -> list[tuple[str, models.MLPSpec]]:
    """The (label, spec) of each depth: shallow / middle / deep for three depths."""
    depths = sorted(set(cfg.depths))
    names = (["shallow", "middle", "deep"] if len(depths) == 3 else
             [f"depth{d}" for d in depths])
    out = []
    for label, d in zip(names, depths):
        widths = models.width_for_params(d, cfg.param_budget)
        out.append((label, models.MLPSpec(input_dim=1, hidden=tuple(widths), output_dim=1,
                                          activation=cfg.activation)))
    return out


def runs(cfg: Config) -> list[RunSpec]:
    train_cfg = TrainConfig(lr=cfg.lr, epochs=cfg.epochs, batch_size=None, eval_test=False,
                            converge_loss=cfg.converge_loss, converge_rel=cfg.converge_rel,
                            converge_window=cfg.converge_window)
    return [RunSpec(NAME, f"{fn}/{label}", f"{__name__}:fit_one",
                    {"function": fn, "label": label, "model": spec.model_dump(mode="json"),
                     "n_train": cfg.n_train, "train": train_cfg.model_dump(), "seed": cfg.seed})
            for fn in cfg.functions for label, spec in family(cfg)]


def fit_one(p: dict, ctx) -> RunResult:
    ds = ctx.dataset({"kind": "function", "spec": p["function"], "n_train": p["n_train"],
                      "n_test": 16, "seed": p["seed"]})
    spec = models.parse_model(p["model"])
    model = seeded_model(lambda: models.build(spec), p["seed"]).to(ctx.device)
    res = train(model, ds, TrainConfig(**p["train"]), seed=p["seed"])
    lo, hi = float(ds.x_train.min()), float(ds.x_train.max())
    grid = np.linspace(lo, hi, 500, dtype=np.float32)
    import torch

    with torch.inference_mode():
        pred = model(torch.from_numpy(grid[:, None]).to(ctx.device)).cpu().numpy()[:, 0]
    return RunResult(
        values={"status": res.status, "final_loss": res.final("train_loss"),
                "converged": res.status == "converged", "converged_epoch": res.converged_epoch,
                "stop_rule": res.stop_rule, "epochs_run": res.epochs_run,
                "diverged_step": res.diverged_step, "wall_s": res.wall_s},
        arrays={"loss": np.asarray(res.history["train_loss"], dtype=np.float32),
                "x": grid, "y_pred": pred.astype(np.float32)})


def _thin(n: int, max_points: int = 2000) -> np.ndarray:
    """Indices of at most ~max_points epochs, always keeping the first and last."""
    step = max(1, int(np.ceil(n / max_points)))
    return np.unique(np.r_[np.arange(0, n, step), n - 1])


def analyze(cfg: Config, results) -> dict[str, pd.DataFrame]:
    rows, curves, preds = [], [], []
    for spec, r in results:
        p = spec.params
        row = models.describe(p["model"])
        rows.append({"function": p["function"], "model": p["label"], "depth": row["depth"],
                     "widths": row["widths"], "params": row["params"], **{
                         k: r.values[k] for k in ("final_loss", "converged", "converged_epoch",
                                                  "epochs_run", "status", "stop_rule", "wall_s")}})
        loss = r.arrays["loss"]
        idx = _thin(len(loss))
        curves.append(pd.DataFrame({"function": p["function"], "model": p["label"],
                                    "epoch": idx + 1, "loss": loss[idx]}))
        x = r.arrays["x"]
        y_true = data.evaluate(p["function"], x)
        # A net whose output no longer varies with x (every ReLU path dead) "converges" at
        # the constant fit; flag it so a plateau is not read as a fit.
        rows[-1]["collapsed"] = bool(np.std(r.arrays["y_pred"]) < 0.01 * np.std(y_true))
        preds.append(pd.DataFrame({"function": p["function"], "model": p["label"], "x": x,
                                   "y_true": y_true, "y_pred": r.arrays["y_pred"]}))
    return {"results": pd.DataFrame(rows), "curves": pd.concat(curves, ignore_index=True),
            "predictions": pd.concat(preds, ignore_index=True)}


def figures(cfg: Config, tables) -> dict:
    figs = {}
    res = tables["results"]
    for fn, cur in tables["curves"].groupby("function", sort=False):
        fig, ax = plotting.figure()
        for model, c in cur.groupby("model", sort=False):
            params = res[(res.function == fn) & (res.model == model)].params.iloc[0]
            ax.plot(c.epoch, c.loss, label=f"{model} ({params} params)", lw=1.2)
        ax.set_yscale("log")
        plotting.finish(ax, f"{fn}: training loss", "epoch (full-batch step)", "MSE (log)")
        figs[f"{_slug(fn)}_loss"] = fig
    for fn, pr in tables["predictions"].groupby("function", sort=False):
        fig, ax = plotting.figure()
        first = pr[pr.model == pr.model.iloc[0]]
        ax.plot(first.x, first.y_true, color="black", lw=2.5, alpha=0.35, label="ground truth")
        for model, c in pr.groupby("model", sort=False):
            ax.plot(c.x, c.y_pred, lw=1.2, label=model)
        plotting.finish(ax, f"{fn}: predictions", "x", "y")
        figs[f"{_slug(fn)}_fit"] = fig
    return figs


def _slug(text: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_" else "_" for ch in text)[:40]


def observations(cfg: Config, tables) -> list[str]:
    res = tables["results"]
    out = []
    spread = (res.params.max() - res.params.min()) / res.params.min() * 100
    out.append(f"Parameter counts {res.params.min()}–{res.params.max()} "
               f"(spread {spread:.2f}%, budget {cfg.param_budget}).")
    for fn, g in res.groupby("function", sort=False):
        ok = g[g.status != "diverged"]
        best = ok.loc[ok.final_loss.idxmin()] if len(ok) else None
        text = f"{fn}: "
        if best is not None:
            worst = ok.loc[ok.final_loss.idxmax()]
            text += (f"lowest final loss {best.final_loss:.3g} by {best.model} "
                     f"({best.depth} hidden layers), highest {worst.final_loss:.3g} by "
                     f"{worst.model}; ")
        live = ~g.collapsed.astype(bool) if "collapsed" in g else True
        conv = g[g.converged.astype(bool) & live]
        if len(conv):
            first = conv.loc[conv.converged_epoch.idxmin()]
            text += f"{first.model} converged first (epoch {int(first.converged_epoch)}, "
            text += f"{first.stop_rule})."
        else:
            text += f"none converged within {int(g.epochs_run.max())} epochs."
        if "collapsed" in g and g.collapsed.astype(bool).any():
            text += (f" Collapsed to a constant output (dead ReLUs): "
                     f"{', '.join(g[g.collapsed.astype(bool)].model)}.")
        if (g.status == "diverged").any():
            text += f" Diverged: {', '.join(g[g.status == 'diverged'].model)}."
        out.append(text)
    return out


def headline(cfg: Config, tables) -> dict:
    res = tables["results"]
    return {f"{r.function}/{r.model}": float(r.final_loss) for r in res.itertuples()}
