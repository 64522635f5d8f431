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
Seeds: `seeds` trainings (init and batch order from seed, seed+1, ...) on the same random
labels (fixed by `seed`, as Zhang et al. fix theirs); same-shape MLP seeds train together as
one stacked ensemble (`dlscope.train.ensemble`). The verdict reads the median and 95%
t-interval over seeds of the final train and test accuracy (rule in `verdicts`).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from matplotlib.ticker import MaxNLocator
from pydantic import Field

from dlscope import models
from dlscope.contract.config import ExperimentConfig
from dlscope.contract.runspec import RunResult, RunSpec
from dlscope.experiments import stats
from dlscope.experiments.common import (
    FAILED,
    ensemble_ok,
    loss_accuracy_figure,
    seeds_of,
    setting_statistics,
)
from dlscope.experiments.inputs import (
    MODEL_HELP,
    ImageInputs,
    Model,
    build_model,
    setup,
    tag,
)
from dlscope.train.engine import TrainConfig, evaluate, train

NAME = "random-labels"
SECTION = "1-3"
TITLE = "Generalization: fitting random labels"
QUESTION = ("Can a network memorize training images (MNIST by default) whose labels are "
            "uniformly random, "
            "and what happens to its test accuracy?")

THRESHOLDS = (0.5, 0.9, 0.95)


class Config(ExperimentConfig, ImageInputs):
    """Settings of the random-labels experiment; defaults: the assignment profile."""
    model: Model = Field("mlp:784-512x3-10", description=MODEL_HELP)
    label_noise: float = Field(1.0, ge=0.0, le=1.0,
                               description="fraction of training labels made uniformly random")
    train_subset: int = Field(10000, ge=0,
                              description="training images (seeded subset); 0: all 60,000")
    epochs: int = Field(30, ge=1, description="training epochs")
    lr: float = Field(5e-4, gt=0, description="Adam learning rate")
    batch_size: int = Field(128, ge=1, description="minibatch size")
    decay_epoch: int = Field(24, ge=0, description="epochs before the lr drops; 0: constant lr")
    decay: float = Field(0.1, gt=0, le=1, description="lr factor after decay_epoch")
    seeds: int = Field(3, ge=1, description="trainings (init and batch order seeds)")
    seed: int = Field(0, ge=0, description="seed of the labels and subset; first init seed")


PROFILES = {"quick": {"model": "mlp:784-256-10", "train_subset": 1000, "epochs": 4,
                      "decay_epoch": 3, "seeds": 2}}
MIN_EPOCHS = 20        # fewer epochs: under-trained (memorization takes 20-30), no verdict
MEMORIZED = 0.95       # median final train accuracy on the random labels that counts as ~100%
CHANCE = (0.08, 0.12)  # test accuracy interval that counts as chance (10% ± 2 points)
SOURCE = "Zhang et al. 2017 (arXiv:1611.03530)"
PUBLISHED = "CIFAR-10 MLP 1x512: 99.34% train / 10.61% test accuracy on random labels"


def runs(cfg: Config) -> list[RunSpec]:
    train_cfg = TrainConfig(lr=cfg.lr, epochs=cfg.epochs, batch_size=cfg.batch_size)
    su = setup(cfg.model, cfg.data, {"train_subset": cfg.train_subset or None, "seed": cfg.seed,
                                     "label_noise": cfg.label_noise}, NAME)
    return [RunSpec(NAME, f"p={cfg.label_noise:g}/seed={s}", __name__,
                    {"model": su.model, "data": su.data, "data_name": tag(su.info),
                     "train": train_cfg.model_dump(), "decay_epoch": cfg.decay_epoch,
                     "decay": cfg.decay, "seed": s}, group=su.spec.name, data=su.data)
            for s in seeds_of(cfg)]


def phases(train_cfg: dict, decay_epoch: int, decay: float) -> list[TrainConfig]:
    """The step schedule: `decay_epoch` epochs at lr, the rest at lr * decay."""
    tc = TrainConfig(**train_cfg)
    if not 0 < decay_epoch < tc.epochs:
        return [tc]
    return [tc.model_copy(update={"epochs": decay_epoch}),
            tc.model_copy(update={"epochs": tc.epochs - decay_epoch, "lr": tc.lr * decay})]


def run_one(p: dict, ctx) -> RunResult:
    return _train_all([p], ctx)[0]


def run_many(ps: list[dict], ctx) -> list[RunResult]:
    """Seeds of one MLP trained together as one stacked ensemble, phase by phase (each member
    equals its solo run to float tolerance); one by one where the model is no plain MLP."""
    return _train_all(ps, ctx)


def _train_all(ps: list[dict], ctx) -> list[RunResult]:
    from dlscope.train.ensemble import train_ensemble

    ds = ctx.dataset(ps[0]["data"])
    clean = ctx.dataset({**ps[0]["data"], "label_noise": 0.0})
    changed = float((ds.y_train != clean.y_train).double().mean())
    nets = [build_model(p, ds, p["seed"], ctx.device) for p in ps]
    together = len(ps) > 1 and ensemble_ok(nets) and all(p["data"] == ps[0]["data"] for p in ps)
    keys = ("epoch", "train_loss", "train_acc", "test_loss", "test_acc", "running_loss",
            "running_acc", "lr")
    full = [{k: [] for k in keys} for _ in ps]
    offset, status, wall = [0] * len(ps), ["ok"] * len(ps), [0.0] * len(ps)
    alive = list(range(len(ps)))
    for i, tc in enumerate(phases(ps[0]["train"], ps[0]["decay_epoch"], ps[0]["decay"])):

        def on_epoch(epoch, m, metrics, e, i=i, tc=tc):  # whole train set, at the epoch's end
            if i > 0 and epoch == 0:
                return  # already logged as the last epoch of the previous phase
            loss, acc = evaluate(m, ds.x_train, ds.y_train, True)
            for k, v in (("epoch", offset[e] + epoch), ("train_loss", loss), ("train_acc", acc),
                         ("test_loss", metrics["test_loss"]), ("test_acc", metrics["test_acc"]),
                         ("running_loss", metrics["train_loss"]),
                         ("running_acc", metrics["train_acc"]), ("lr", tc.lr)):
                full[e][k].append(np.nan if v is None else v)

        cbs = [lambda ep, m, met, e=e: on_epoch(ep, m, met, e) for e in alive]
        seeds = [ps[e]["seed"] + i for e in alive]
        if together:
            results = train_ensemble([nets[e] for e in alive], ds, tc, seeds, on_epoch=cbs)
        else:
            results = [train(nets[e], ds, tc, seed=s, on_epoch=cb)
                       for e, s, cb in zip(alive, seeds, cbs)]
        for e, res in zip(list(alive), results):
            offset[e] += res.epochs_run
            wall[e] += res.wall_s
            if res.status == "diverged":
                status[e] = "diverged"
                alive.remove(e)
        if not alive:
            break
    return [RunResult(
        values={"status": status[e], "epochs_run": offset[e], "wall_s": wall[e],
                "n_train": ds.n_train, "labels_changed": changed,
                "params": models.module_params(nets[e])},
        arrays={k: np.asarray(v, dtype=np.int64 if k == "epoch" else np.float64)
                for k, v in full[e].items()}) for e in range(len(ps))]


def analyze(cfg: Config, results) -> dict[str, pd.DataFrame]:
    """Tables from the run results: curves (per epoch) and results (a row per run)."""
    curves, rows = [], []
    for spec, r in results:
        a = r.arrays
        n = len(a["epoch"])
        seed = spec.params["seed"]
        curves.append(pd.DataFrame({"label_noise": cfg.label_noise, "seed": seed,
                                    "epoch": a["epoch"],
                                    **{k: a[k][:n] for k in ("train_loss", "train_acc",
                                                             "test_loss", "test_acc",
                                                             "running_loss", "running_acc",
                                                             "lr")}}))
        c = curves[-1]
        row = {"model": models.parse_model(spec.params["model"]).name, "seed": seed,
               "params": r.values["params"], "n_train": r.values["n_train"],
               "label_noise": cfg.label_noise, "labels_changed": r.values["labels_changed"],
               "epochs": int(c.epoch.max()), "status": r.values["status"],
               "final_train_acc": float(c.train_acc.iloc[-1]),
               "max_train_acc": float(c.train_acc.max()),
               "final_test_acc": float(c.test_acc.iloc[-1]),
               "final_train_loss": float(c.train_loss.iloc[-1]),
               "final_test_loss": float(c.test_loss.iloc[-1]), "wall_s": r.values["wall_s"],
               "data": spec.params.get("data_name", "MNIST")}
        for t in THRESHOLDS:
            row[f"epoch_{round(t * 100)}"] = first_epoch(c, t)
        rows.append(row)
    return {"curves": pd.concat(curves, ignore_index=True), "results": pd.DataFrame(rows)}


def first_epoch(curve: pd.DataFrame, threshold: float) -> float:
    """The first epoch whose full-evaluation train accuracy is >= threshold (NaN if none)."""
    hit = curve[curve.train_acc >= threshold]
    return float(hit.epoch.iloc[0]) if len(hit) else float("nan")


def figures(cfg: Config, tables) -> dict:
    """The figures, by name, drawn from the tables."""
    c = tables["curves"].copy()
    res = tables["results"]
    c["failed"] = c.seed.isin(res.seed[res.status.isin(FAILED)])
    fig, axes = loss_accuracy_figure(
        c, "epoch", {"train (random labels)": "train", "test (true labels)": "test"},
        titles=(f"Random labels (p={cfg.label_noise:g}): loss (faint: each seed)",
                "accuracy (whole sets, eval mode, end of epoch)"), xlabel="epoch", chance=True)
    axes[1].set_ylim(0, 101)
    first = c[c.seed == c.seed.iloc[0]]
    drops = first.epoch[first.lr.diff() < 0] - 1 if "lr" in first else []
    for ax in axes:
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        for e in drops:
            ax.axvline(e, color="C3", lw=0.8, ls="--", label=f"lr x{cfg.decay:g} after epoch {e}")
        ax.legend(fontsize=7)
    return {"loss_accuracy": fig}


def statistics(cfg: Config, tables) -> dict:
    """The numbers over seeds behind the verdicts and observations (summary.json)."""
    res = tables["results"]
    return {"interval": "t-interval (95%) of the mean over the seeds that did not diverge; "
                        "median shown",
            "settings": setting_statistics(
                res, ["label_noise"], ["final_train_acc", "final_test_acc", "max_train_acc",
                                       "final_train_loss", "final_test_loss",
                                       *[f"epoch_{round(t * 100)}" for t in THRESHOLDS]]),
            "reached": {f"epoch_{round(t * 100)}": int(res[f"epoch_{round(t * 100)}"].notna().sum())
                        for t in THRESHOLDS}}


def verdicts(cfg: Config, tables) -> list[stats.Verdict]:
    """The published claims this run tests, each with its outcome."""
    res = tables["results"]
    ok = res[~res.status.isin(FAILED)]
    claim = ("A network memorizes uniformly random training labels (train accuracy towards "
             "100%) while its test accuracy stays at chance (10%)")
    published = stats.published_for(PUBLISHED, "CIFAR-10", stats.data_of(res))
    if cfg.epochs < MIN_EPOCHS:
        return [stats.pipeline_check(claim, SOURCE, published,
                                     f"{cfg.epochs} epochs (< {MIN_EPOCHS}): memorization "
                                     "takes 20-30 epochs here, the nets are under-trained")]
    tr, te = stats.interval(ok.final_train_acc), stats.interval(ok.final_test_acc)
    if tr.n < stats.MIN_SEEDS:
        outcome = "inconclusive"
    elif (tr.median >= MEMORIZED and tr.lo >= MEMORIZED - 0.05 and CHANCE[0] <= te.lo
          and te.hi <= CHANCE[1]):
        outcome = "reproduced"
    elif tr.hi < MEMORIZED - 0.05 or te.lo > CHANCE[1] or te.hi < CHANCE[0]:
        outcome = "not reproduced"
    else:
        outcome = "inconclusive"
    return [stats.Verdict(
        claim, SOURCE, published,
        f"final train accuracy {tr.text('.1f', 100, '%')}; test accuracy "
        f"{te.text('.1f', 100, '%')}",
        f"reproduced if the median train accuracy is >= {100 * MEMORIZED:.0f}% with the "
        f"interval's low end >= {100 * MEMORIZED - 5:.0f}%, and the test interval lies within "
        f"[{100 * CHANCE[0]:.0f}%, {100 * CHANCE[1]:.0f}%]; not reproduced if the train "
        f"interval lies below {100 * MEMORIZED - 5:.0f}% or the test interval outside that "
        "band; otherwise (or fewer than 2 seeds) inconclusive", outcome)]


def observations(cfg: Config, tables) -> list[str]:
    """What this run shows, in sentences for the report."""
    res = tables["results"]
    st = statistics(cfg, tables)["settings"]
    out = []
    for noise, g in res.groupby("label_noise", sort=False):
        s = st[str(noise)]
        iv = {k: stats.Interval(**s[k]) for k in s if k != "failures"}
        r = g.iloc[0]
        text = (f"{r.model} ({r.params:,} params) on {r.n_train:,} images with a fraction "
                f"{noise:g} of random labels ({100 * r.labels_changed:.1f}% of labels "
                f"actually changed), {len(g)} seeds: after {r.epochs} epochs train accuracy "
                f"{iv['final_train_acc'].text('.1f', 100, '%')}, test accuracy "
                f"{iv['final_test_acc'].text('.1f', 100, '%')}, test loss "
                f"{iv['final_test_loss'].text('.3g')}.")
        if 0 < cfg.decay_epoch < r.epochs:
            text += f" Adam lr {cfg.lr:g}, x{cfg.decay:g} after epoch {cfg.decay_epoch}."
        for t in THRESHOLDS:
            k = f"epoch_{round(t * 100)}"
            n = int(g[k].notna().sum())
            if n:
                text += (f" Train accuracy passed {round(t * 100)}% in {n} of {len(g)} seeds "
                         f"(median epoch {g[k].median():g}).")
        if not g.epoch_50.notna().any():
            text += " Train accuracy never passed 50%: the nets did not memorize."
        if s["failures"]["diverged"]:
            text += f" Diverged: {s['failures']['diverged']} seed(s), not in the statistics."
        out.append(text)
    return out


def headline(cfg: Config, tables) -> dict:
    """A few numbers that summarise this run (summary.json's headline)."""
    res = tables["results"]
    ok = res[~res.status.isin(FAILED)]
    return {k: (None if ok[k].isna().all() else float(ok[k].median())) for k in
            ("final_train_acc", "final_test_acc", "max_train_acc",
             *[f"epoch_{round(t * 100)}" for t in THRESHOLDS])}
