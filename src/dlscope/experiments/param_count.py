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
Measured (assignment profile, seed 0): from 1,600 parameters (w=2: train 58.1% / test 55.3%)
to 814,090 (w=1024: train 100% with loss 3e-4 / test 95.5% with loss 0.21); train accuracy
is 100% from 50,890 parameters on; the train-test accuracy gap peaks at 8 points
(w=16-32) and falls to 4.5 at w=1024; the test loss decreases monotonically in this range.

Wall time on this 2-core CPU, shared with other jobs while measured (load ~3): assignment
19 s (10 runs on 2 process workers; 44 s at load ~4); quick 8 s (3 widths spanning 127x,
1,000 images, 3 epochs).
"""

from __future__ import annotations

from typing import Annotated

import numpy as np
import pandas as pd
from pydantic import Field

from dlscope import models, plotting
from dlscope.execution.config import ExperimentConfig
from dlscope.train.engine import TrainConfig
from dlscope.experiments.mnist_common import train_and_evaluate
from dlscope.execution.runspec import RunResult, RunSpec

NAME = "param-count"
SECTION = "1-3"
TITLE = "Generalization: number of parameters"
QUESTION = ("How do training and test loss and accuracy change with the number of parameters "
            "of models of the same structure?")


class Config(ExperimentConfig):
    widths: list[Annotated[int, Field(ge=1)]] = Field(
        [2, 4, 8, 16, 32, 64, 128, 256, 512, 1024], min_length=2,
        description="hidden width of each model (one model per width)")
    depth: int = Field(1, ge=1, le=8, description="hidden layers, all of the same width")
    train_subset: int = Field(5000, ge=0, le=60000,
                              description="training images (seeded subset); 0: all 60,000")
    epochs: int = Field(30, ge=1, description="training epochs for every model")
    lr: float = Field(1e-3, gt=0, description="Adam learning rate")
    batch_size: int = Field(64, ge=1, description="minibatch size")
    seed: int = Field(0, ge=0, description="seed of the subset, inits and batch order")


PROFILES = {"quick": {"widths": [2, 32, 256], "train_subset": 1000, "epochs": 3}}


def specs(cfg: Config) -> list[models.MLPSpec]:
    return [models.MLPSpec(input_dim=784, hidden=(w,) * cfg.depth, output_dim=10)
            for w in sorted(set(cfg.widths))]


def runs(cfg: Config) -> list[RunSpec]:
    train_cfg = TrainConfig(lr=cfg.lr, epochs=cfg.epochs, batch_size=cfg.batch_size,
                            eval_test=False)
    data = {"train_subset": cfg.train_subset or None, "seed": cfg.seed, "flatten": True}
    return [RunSpec(NAME, spec.name, f"{__name__}:run_fn",
                    {"model": spec.model_dump(mode="json"), "data": data,
                     "train": train_cfg.model_dump(), "seed": cfg.seed})
            for spec in specs(cfg)]


def run_fn(p: dict, ctx) -> RunResult:
    model, ds, res, m = train_and_evaluate(p, ctx)
    train_loss, train_acc, test_loss, test_acc = (
        m["train_loss"], m["train_acc"], m["test_loss"], m["test_acc"])
    return RunResult(
        values={"status": res.status, "epochs_run": res.epochs_run, "wall_s": res.wall_s,
                "module_params": models.module_params(model), "n_train": ds.n_train,
                "train_loss": train_loss, "train_acc": train_acc, "test_loss": test_loss,
                "test_acc": test_acc, "running_train_loss": res.final("train_loss")},
        arrays={"running_train_loss": np.asarray(res.history["train_loss"], np.float64)})


def analyze(cfg: Config, results) -> dict[str, pd.DataFrame]:
    rows = []
    for spec, r in results:
        d = models.describe(spec.params["model"])
        v = r.values
        if v["module_params"] != d["params"]:
            raise RuntimeError(f"{d['model']}: module has {v['module_params']} parameters, "
                               f"count_params says {d['params']}")
        rows.append({"model": d["model"], "widths": d["widths"], "params": d["params"],
                     **{k: v[k] for k in ("train_loss", "train_acc", "test_loss", "test_acc")},
                     "gap_acc": v["train_acc"] - v["test_acc"],
                     "gap_loss": v["test_loss"] - v["train_loss"], "n_train": v["n_train"],
                     "epochs": v["epochs_run"], "status": v["status"], "wall_s": v["wall_s"]})
    df = pd.DataFrame(rows).sort_values("params", ignore_index=True)
    return {"results": df}


_WORD = {"loss": "loss", "acc": "accuracy"}


def figures(cfg: Config, tables) -> dict:
    df = tables["results"]
    fig, (ax1, ax2) = plotting.figure(ncols=2)
    for ax, key, scale, unit in ((ax1, "loss", 1, "cross-entropy (log)"),
                                 (ax2, "acc", 100, "accuracy (%)")):
        ax.plot(df.params, scale * df[f"train_{key}"], "o-", label="train (full evaluation)")
        ax.plot(df.params, scale * df[f"test_{key}"], "s-", label="test")
        ax.set_xscale("log")
        if key == "loss":
            ax.set_yscale("log")
        n = int(df.n_train.iloc[0])
        plotting.finish(ax, f"{_WORD[key]} vs parameters ({n:,} train images)",
                        "parameters (log)", unit)
    return {"loss_accuracy": fig}


def observations(cfg: Config, tables) -> list[str]:
    df = tables["results"]
    lo, hi = df.iloc[0], df.iloc[-1]
    best = df.loc[df.test_acc.idxmax()]
    best_loss = df.loc[df.test_loss.idxmin()]
    return [
        (f"{len(df)} models from {lo.params:,} to {hi.params:,} parameters "
         f"({hi.params / lo.params:.0f}x), {int(lo.epochs)} epochs on {int(lo.n_train):,} "
         f"images."),
        (f"Smallest ({lo.model}): train {100 * lo.train_acc:.1f}% / test "
         f"{100 * lo.test_acc:.1f}%; largest ({hi.model}): train {100 * hi.train_acc:.1f}% / "
         f"test {100 * hi.test_acc:.1f}% (train loss {hi.train_loss:.2g}, test loss "
         f"{hi.test_loss:.2g})."),
        (f"Best test accuracy {100 * best.test_acc:.2f}% at {best.params:,} parameters; "
         f"lowest test loss {best_loss.test_loss:.3g} at {best_loss.params:,} parameters; "
         f"train-test accuracy gap {100 * lo.gap_acc:.1f} points at the smallest model, "
         f"{100 * df.gap_acc.max():.1f} at most, {100 * hi.gap_acc:.1f} at the largest."),
    ]


def headline(cfg: Config, tables) -> dict:
    df = tables["results"]
    return {"params_min": int(df.params.min()), "params_max": int(df.params.max()),
            "test_acc_min": float(df.test_acc.min()), "test_acc_max": float(df.test_acc.max()),
            "train_acc_min": float(df.train_acc.min()),
            "train_acc_max": float(df.train_acc.max())}
