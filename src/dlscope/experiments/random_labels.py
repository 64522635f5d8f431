"""random-labels (HW1 1-3): can a network fit MNIST whose training labels are random?

Setup: the training labels of a fixed MNIST training subset are replaced by uniformly random
labels (a seeded fraction `label_noise`, default 1 = all, Zhang et al.'s corruption
fraction; `MnistOptions(label_noise=p, seed=seed)`), the test labels stay true. An MLP
784-512x3-10 (ReLU, 932k parameters) is trained with Adam (lr 5e-4, batch 128) for 30
epochs, the lr dropped x0.1 after epoch 24 (`decay_epoch`, `decay`: a step schedule; at a
constant lr the train accuracy oscillates between 93% and 97% once it is high, measured
over 40 epochs). After every epoch the whole training set (the random labels) and the test
set are evaluated in eval mode; `curves.csv` reports these full evaluations (`train_loss`,
`train_acc`), and the engine's running means over the epoch's batches as `running_loss`,
`running_acc`; the memorization epochs (`epoch_50`, `epoch_90`, `epoch_95` in results.csv)
use the full evaluations.

Why a 10,000-image subset (Zhang et al. used all 50k of CIFAR-10): an epoch costs in
proportion to the images, and memorization takes 20-30 epochs; 10k images keep the
assignment profile to a few minutes on 2 cores and are still far too many to fit by chance.

Expected (Zhang et al. 2017, arXiv:1611.03530): the net memorizes the random labels, train
accuracy towards 100%, while the test accuracy stays at chance (~10%); memorization starts
slowly (the loss sits near ln 10 for several epochs) and then accelerates. SCIENCE.md: a
784-700x3 MLP reached 100% train accuracy on MNIST in ~50 epochs.
Measured (assignment profile, seed 0): train loss stays near ln 10 for ~5 epochs; train
accuracy passes 50% at epoch 12, 90% at epoch 21, 95% at epoch 25 and ends at 97.5% (loss
0.096) after 30 epochs, while the test accuracy stays at 10.7% and the test loss climbs to
8.4. About 90% of the labels actually differ from the truth (a random label may hit the
true class).

Wall time on this 2-core CPU, shared with other jobs while measured (load 3-6): assignment
127 s (1 run, 2 threads; 8 min at load ~6); quick 7 s (a 1,000-image subset, MLP
784-256-10, 4 epochs: it does NOT memorize, ~30% train accuracy; it only shows the pipeline).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from pydantic import Field, field_validator

from dlscope import models, plotting
from dlscope.execution.config import ExperimentConfig
from dlscope.train.engine import TrainConfig, evaluate, seeded_model, train
from dlscope.experiments.mnist_common import mnist_spec
from dlscope.execution.runspec import RunResult, RunSpec

NAME = "random-labels"
SECTION = "1-3"
TITLE = "Generalization: fitting random labels"
QUESTION = ("Can a network memorize MNIST training images whose labels are uniformly random, "
            "and what happens to its test accuracy?")

THRESHOLDS = (0.5, 0.9, 0.95)


class Config(ExperimentConfig):
    model: str = Field("mlp:784-512x3-10", description="MNIST model (mlp:784-...-10 or cnn:)")
    label_noise: float = Field(1.0, ge=0.0, le=1.0,
                               description="fraction of training labels made uniformly random")
    train_subset: int = Field(10000, ge=0, le=60000,
                              description="training images (seeded subset); 0: all 60,000")
    epochs: int = Field(30, ge=1, description="training epochs")
    lr: float = Field(5e-4, gt=0, description="Adam learning rate")
    batch_size: int = Field(128, ge=1, description="minibatch size")
    decay_epoch: int = Field(24, ge=0, description="epochs before the lr drops; 0: constant lr")
    decay: float = Field(0.1, gt=0, le=1, description="lr factor after decay_epoch")
    seed: int = Field(0, ge=0, description="seed of the labels, the subset, init and order")

    @field_validator("model")
    @classmethod
    def _model(cls, v: str) -> str:
        mnist_spec(v)
        return v


PROFILES = {"quick": {"model": "mlp:784-256-10", "train_subset": 1000, "epochs": 4,
                      "decay_epoch": 3}}


def data_options(cfg: Config) -> dict:
    spec = mnist_spec(cfg.model)
    return {"label_noise": cfg.label_noise, "train_subset": cfg.train_subset or None,
            "seed": cfg.seed, "flatten": isinstance(spec, models.MLPSpec)}


def runs(cfg: Config) -> list[RunSpec]:
    train_cfg = TrainConfig(lr=cfg.lr, epochs=cfg.epochs, batch_size=cfg.batch_size)
    return [RunSpec(NAME, f"p={cfg.label_noise:g}", f"{__name__}:run_fn",
                    {"model": mnist_spec(cfg.model).model_dump(mode="json"),
                     "data": data_options(cfg), "train": train_cfg.model_dump(),
                     "decay_epoch": cfg.decay_epoch, "decay": cfg.decay, "seed": cfg.seed})]


def phases(train_cfg: dict, decay_epoch: int, decay: float) -> list[TrainConfig]:
    """The step schedule: `decay_epoch` epochs at lr, the rest at lr * decay."""
    tc = TrainConfig(**train_cfg)
    if not 0 < decay_epoch < tc.epochs:
        return [tc]
    return [tc.model_copy(update={"epochs": decay_epoch}),
            tc.model_copy(update={"epochs": tc.epochs - decay_epoch, "lr": tc.lr * decay})]


def run_fn(p: dict, ctx) -> RunResult:
    ds = ctx.dataset({"kind": "mnist", **p["data"]})
    clean = ctx.dataset({"kind": "mnist", **p["data"], "label_noise": 0.0})
    changed = float((ds.y_train != clean.y_train).double().mean())
    spec = models.parse_model(p["model"])
    model = seeded_model(lambda: models.build(spec), p["seed"]).to(ctx.device)
    full: dict[str, list] = {k: [] for k in ("epoch", "train_loss", "train_acc", "test_loss",
                                             "test_acc", "running_loss", "running_acc", "lr")}
    offset, status, wall = 0, "ok", 0.0
    for i, tc in enumerate(phases(p["train"], p["decay_epoch"], p["decay"])):

        def on_epoch(epoch, m, metrics, i=i, tc=tc, start=offset):  # whole train set, at end
            if i > 0 and epoch == 0:
                return  # already logged as the last epoch of the previous phase
            loss, acc = evaluate(m, ds.x_train, ds.y_train, True)
            for k, v in (("epoch", start + epoch), ("train_loss", loss), ("train_acc", acc),
                         ("test_loss", metrics["test_loss"]), ("test_acc", metrics["test_acc"]),
                         ("running_loss", metrics["train_loss"]),
                         ("running_acc", metrics["train_acc"]), ("lr", tc.lr)):
                full[k].append(np.nan if v is None else v)

        res = train(model, ds, tc, seed=p["seed"] + i, on_epoch=on_epoch)
        offset += res.epochs_run
        wall += res.wall_s
        if res.status == "diverged":
            status = "diverged"
            break
    return RunResult(
        values={"status": status, "epochs_run": offset, "wall_s": wall, "n_train": ds.n_train,
                "labels_changed": changed, "params": models.module_params(model)},
        arrays={k: np.asarray(v, dtype=np.int64 if k == "epoch" else np.float64)
                for k, v in full.items()})


def analyze(cfg: Config, results) -> dict[str, pd.DataFrame]:
    curves, rows = [], []
    for spec, r in results:
        a = r.arrays
        n = len(a["epoch"])
        curves.append(pd.DataFrame({"label_noise": cfg.label_noise, "epoch": a["epoch"],
                                    **{k: a[k][:n] for k in ("train_loss", "train_acc",
                                                             "test_loss", "test_acc",
                                                             "running_loss", "running_acc",
                                                             "lr")}}))
        c = curves[-1]
        row = {"model": models.parse_model(spec.params["model"]).name,
               "params": r.values["params"], "n_train": r.values["n_train"],
               "label_noise": cfg.label_noise, "labels_changed": r.values["labels_changed"],
               "epochs": int(c.epoch.max()), "status": r.values["status"],
               "final_train_acc": float(c.train_acc.iloc[-1]),
               "max_train_acc": float(c.train_acc.max()),
               "final_test_acc": float(c.test_acc.iloc[-1]),
               "final_train_loss": float(c.train_loss.iloc[-1]),
               "final_test_loss": float(c.test_loss.iloc[-1]), "wall_s": r.values["wall_s"]}
        for t in THRESHOLDS:
            row[f"epoch_{round(t * 100)}"] = first_epoch(c, t)
        rows.append(row)
    return {"curves": pd.concat(curves, ignore_index=True), "results": pd.DataFrame(rows)}


def first_epoch(curve: pd.DataFrame, threshold: float) -> float:
    """The first epoch whose full-evaluation train accuracy is >= threshold (NaN if none)."""
    hit = curve[curve.train_acc >= threshold]
    return float(hit.epoch.iloc[0]) if len(hit) else float("nan")


def figures(cfg: Config, tables) -> dict:
    c = tables["curves"]
    fig, (ax1, ax2) = plotting.figure(ncols=2)
    ax1.plot(c.epoch, c.train_loss, label="train (random labels)")
    ax1.plot(c.epoch, c.test_loss, label="test (true labels)")
    ax1.axhline(np.log(10), color="grey", lw=0.8, ls=":", label="ln 10 (chance)")
    ax1.set_yscale("log")
    ax2.plot(c.epoch, 100 * c.train_acc, label="train (random labels)")
    ax2.plot(c.epoch, 100 * c.test_acc, label="test (true labels)")
    ax2.axhline(10, color="grey", lw=0.8, ls=":", label="chance")
    ax2.set_ylim(0, 101)
    drops = c.epoch[c.lr.diff() < 0] - 1 if "lr" in c else []
    for ax in (ax1, ax2):
        for e in drops:
            ax.axvline(e, color="C3", lw=0.8, ls="--", label=f"lr x{cfg.decay:g} after epoch {e}")
    plotting.finish(ax1, f"Random labels (p={cfg.label_noise:g}): loss", "epoch",
                    "cross-entropy (log)")
    plotting.finish(ax2, "accuracy (whole sets, eval mode, end of epoch)", "epoch",
                    "accuracy (%)")
    return {"loss_accuracy": fig}


def observations(cfg: Config, tables) -> list[str]:
    out = []
    for r in tables["results"].itertuples():
        text = (f"{r.model} ({r.params:,} params) on {r.n_train:,} images with a fraction "
                f"{r.label_noise:g} of random labels ({100 * r.labels_changed:.1f}% of labels "
                f"actually changed): after {r.epochs} epochs train accuracy "
                f"{100 * r.final_train_acc:.1f}% (max {100 * r.max_train_acc:.1f}%), train loss "
                f"{r.final_train_loss:.3g}; test accuracy {100 * r.final_test_acc:.1f}%, test "
                f"loss {r.final_test_loss:.3g}.")
        if 0 < cfg.decay_epoch < r.epochs:
            text += (f" Adam lr {cfg.lr:g}, x{cfg.decay:g} after epoch {cfg.decay_epoch}.")
        reached = [f"{round(t * 100)}% at epoch {int(getattr(r, f'epoch_{round(t * 100)}'))}"
                   for t in THRESHOLDS if np.isfinite(getattr(r, f"epoch_{round(t * 100)}"))]
        text += (" Train accuracy passed " + ", ".join(reached) + "." if reached else
                 " Train accuracy never passed 50%: the net did not memorize.")
        out.append(text)
    return out


def headline(cfg: Config, tables) -> dict:
    r = tables["results"].iloc[0]
    return {k: (None if pd.isna(r[k]) else float(r[k])) for k in
            ("final_train_acc", "final_test_acc", "max_train_acc",
             *[f"epoch_{round(t * 100)}" for t in THRESHOLDS])}
