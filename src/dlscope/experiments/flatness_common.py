"""What the two flatness experiments (interpolation, sensitivity) share: matched training,
learning-rate scaling with the batch size, and seed bands in figures (SCIENCE.md §3, §4).

Matched training (Hoffer et al. 2017, arXiv:1705.08741; Keskar et al. 2017 compare models
at near-100% train accuracy): every model of a comparison trains until one common criterion
fires, instead of for a fixed number of epochs (which gives batch 64 sixteen times the steps
of batch 1024):
- `train_acc` (default): full-evaluation train accuracy (eval mode, the whole training set,
  after each epoch) ≥ `target`;
- `train_loss`: full-evaluation train loss ≤ `target`;
- `steps`: `max_steps` optimizer steps for every model (rounded up to whole epochs).
A step cap (`max_steps`) bounds the first two; a model that hits it has status "missed"
(counted as a failure rate and left out of the statistics). The criterion is checked at the
end of every epoch, so it fires at most one epoch late; the step at which it fired is
recorded (`criterion_step`). Learning rate: lr(B) = lr · (B / lr_base_batch)^k with k = 0
(`none`), 1 (`linear`, Goyal et al. 2017) or ½ (`sqrt`, Krizhevsky 2014; Hoffer et al.).
"""

from __future__ import annotations

import math
import time
from typing import Literal

import numpy as np
import pandas as pd
import torch
from pydantic import Field, model_validator

from dlscope import models
from dlscope.contract.config import ExperimentConfig
from dlscope.experiments import stats
from dlscope.metrics.flat import flatten_params
from dlscope.train.engine import TrainConfig, evaluate, train

N_MNIST_TRAIN = 60000


class MatchedConfig(ExperimentConfig):
    """Config fields of matched training (the experiments' Configs derive from this).

    Example:
        >>> cfg = MatchedConfig(seeds=2, seed=5)
        >>> cfg.n_train, cfg.run_seeds(), cfg.matched()
        (8192, [5, 6], {'criterion': 'train_acc', 'target': 0.99, 'max_steps': 12000})
        >>> cfg.criterion_text()
        'train accuracy ≥ 99% (full evaluation after each epoch; cap 12,000 steps)'
    """
    criterion: Literal["train_acc", "train_loss", "steps"] = Field(
        "train_acc", description="common stopping criterion: full-eval train accuracy >= "
        "target, full-eval train loss <= target, or the same number of steps (max_steps)")
    target: float = Field(0.99, gt=0, description="train accuracy (fraction) or train loss "
                                                  "at which every model stops")
    max_steps: int = Field(12000, ge=1, description="step cap (criterion 'steps': the steps)")
    lr_scaling: Literal["none", "linear", "sqrt"] = Field(
        "none", description="learning rate vs batch size: lr·(B/lr_base_batch)^{0, 1, 1/2}")
    lr_base_batch: int = Field(64, ge=1, description="batch size at which lr applies as given")
    seeds: int = Field(3, ge=1, description="seeds (fresh init and batch order) per setting")
    seed: int = Field(0, ge=0, description="first seed; also the seed of the data subsets")
    train_subset: int = Field(8192, ge=0, le=N_MNIST_TRAIN,
                              description="training images (seeded subset); 0: all 60,000")

    @model_validator(mode="after")
    def _target(self):
        if self.criterion == "train_acc" and not 0 < self.target <= 1:
            raise ValueError(f"target: a train accuracy is a fraction in (0, 1], got "
                             f"{self.target}")
        too_big = [b for b in self.batch_sizes_used() if b > self.n_train]
        if too_big:
            raise ValueError(f"batch size {max(too_big)} > the {self.n_train} training images "
                             f"(train_subset): the largest possible batch is {self.n_train}")
        return self

    @property
    def n_train(self) -> int:
        """The training images used: `train_subset`, or all 60,000 for 0."""
        return self.train_subset or N_MNIST_TRAIN

    def batch_sizes_used(self) -> list[int]:  # overridden by each experiment
        """The batch sizes the experiment trains with (checked against `n_train`)."""
        return []

    def run_seeds(self) -> list[int]:
        """The seeds of each setting: `seed`, `seed` + 1, ... (`seeds` of them)."""
        return [self.seed + i for i in range(self.seeds)]

    def matched(self) -> dict:
        """The criterion as recorded in every RunSpec's params."""
        return {"criterion": self.criterion, "target": self.target,
                "max_steps": self.max_steps}

    def criterion_text(self) -> str:
        """The stopping criterion in words, for observations and verdicts."""
        if self.criterion == "steps":
            return f"the same number of steps ({self.max_steps:,}, whole epochs)"
        what = ("train accuracy ≥ " + f"{100 * self.target:g}%" if self.criterion == "train_acc"
                else f"train loss ≤ {self.target:g}")
        return f"{what} (full evaluation after each epoch; cap {self.max_steps:,} steps)"

    def lr_scaling_text(self) -> str:
        """How the learning rate follows the batch size, in words (`lr_scaling`).

        Example:
            >>> MatchedConfig().lr_scaling_text()
            'the same lr at every batch size'
            >>> MatchedConfig(lr_scaling="sqrt").lr_scaling_text()
            'lr scaled by the square root of batch size / 64'
        """
        base = self.lr_base_batch
        return {"none": "the same lr at every batch size",
                "linear": f"lr scaled linearly with batch size / {base}",
                "sqrt": f"lr scaled by the square root of batch size / {base}"}[self.lr_scaling]


def scaled_lr(lr: float, batch_size: int, rule: str, base: int) -> float:
    """lr · (batch_size / base)^k, k = 0, 1, 1/2 for rule none, linear, sqrt.

    Args:
        lr: The learning rate at batch size `base`.
        batch_size: The batch size trained with.
        rule: "none", "linear" or "sqrt".
        base: The batch size at which `lr` applies as given.

    Returns:
        The learning rate for `batch_size`.

    Example:
        >>> [scaled_lr(0.1, 256, rule, 64) for rule in ("none", "linear", "sqrt")]
        [0.1, 0.4, 0.2]
    """
    k = {"none": 0.0, "linear": 1.0, "sqrt": 0.5}[rule]
    return float(lr * (batch_size / base) ** k)


class _Reached(Exception):
    """Raised from train's on_epoch hook to stop at the epoch the criterion fired."""


# long: its docstring (two worked examples) is half of it; the body is 34 lines
def train_matched(model, ds, tc: TrainConfig, matched: dict, seed: int) -> dict:
    """Train `model` in place until `matched` fires (see the module docstring).

    `tc` gives optimizer, lr and batch size (its epochs are replaced by the cap). Returns the
    status ("ok": reached, or ran its steps; "missed": capped; "diverged"), `reached`, `steps`
    run, `criterion_step` (None unless it fired), `epochs`, `wall_s`, and the full-evaluation
    train accuracy and loss after each epoch (`curve`, for the criteria that evaluate).

    Args:
        model: The classifier, trained in place.
        ds: The `Dataset`.
        tc: Optimizer, learning rate and batch size.
        matched: {"criterion": ..., "target": ..., "max_steps": ...}
            (`MatchedConfig.matched()`).
        seed: Seed of the batch order.

    Returns:
        {"status", "reached", "steps", "criterion_step", "epochs", "steps_per_epoch",
        "wall_s", "curve"}; `curve` is an (epochs evaluated) x 3 array of (step, train loss,
        train accuracy).

    Example:
        >>> from dlscope.data.dataset import Dataset
        >>> x = torch.randn(8, 2, generator=torch.Generator().manual_seed(0))
        >>> ds = Dataset.from_tensors(x, (x[:, 0] > 0).long(), n_classes=2)
        >>> net = models.build(models.parse_model("mlp:2-8-2"))
        >>> tc = TrainConfig(lr=0.01, batch_size=4)
        >>> r = train_matched(net, ds, tc, {"criterion": "steps", "target": 1.0,
        ...                                 "max_steps": 5}, seed=0)
        >>> r["status"], r["steps"], r["epochs"], r["criterion_step"]
        ('ok', 6, 3, None)
        >>> r = train_matched(net, ds, tc, {"criterion": "train_acc", "target": 0.01,
        ...                                 "max_steps": 100}, seed=0)
        >>> r["steps"], r["criterion_step"], r["curve"].shape
        (2, 2, (1, 3))
    """
    n = len(ds.x_train)
    bs = tc.batch_size or n
    if bs > n:  # the configs reject this earlier; never cap silently
        raise ValueError(f"batch size {bs} > {n} training images")
    spe = math.ceil(n / bs)
    epochs = math.ceil(matched["max_steps"] / spe)
    crit, target = matched["criterion"], matched["target"]
    curve: list[tuple[int, float, float]] = []
    fired: dict = {}

    def on_epoch(epoch, m, _metrics):
        if epoch == 0 or crit == "steps":
            return
        loss, acc = evaluate(m, ds.x_train, ds.y_train, True)
        curve.append((epoch * spe, loss, acc))
        if (acc >= target) if crit == "train_acc" else (loss <= target):
            fired["epoch"] = epoch
            raise _Reached

    t0 = time.perf_counter()
    cfg = tc.model_copy(update={"epochs": epochs, "eval_test": False, "converge_loss": None,
                                "converge_rel": None})
    status, ran = "ok", epochs
    try:
        res = train(model, ds, cfg, seed=seed, on_epoch=on_epoch)
        ran = res.epochs_run
        if res.status == "diverged":
            status = "diverged"
        elif crit != "steps":
            status = "missed"
    except _Reached:
        ran = fired["epoch"]
    steps = ran * spe
    return {"status": status, "reached": status == "ok", "steps": steps,
            "criterion_step": steps if "epoch" in fired else None, "epochs": ran,
            "steps_per_epoch": spe, "wall_s": time.perf_counter() - t0,
            "curve": np.asarray(curve, dtype=np.float64).reshape(-1, 3)}


def pipeline_reason(df: pd.DataFrame, cfg: MatchedConfig) -> str | None:
    """Why a run is a pipeline check (None when it is evidence): more than half of its models
    missed the matched criterion, or fewer than 2 seeds were asked for.

    Args:
        df: One row per trained model, with a boolean `reached` column.
        cfg: The experiment's config.

    Returns:
        The reason in words, or None.

    Example:
        >>> cfg = MatchedConfig(seeds=3)
        >>> pipeline_reason(pd.DataFrame({"reached": [True, True, False]}), cfg) is None
        True
        >>> pipeline_reason(pd.DataFrame({"reached": [True, False, False]}), cfg)
        '2 of 3 models missed the matched criterion (train accuracy ≥ 99% ...)'
    """
    n, ok = len(df), int(df.reached.sum()) if len(df) else 0
    if n == 0:
        return "no finished models"
    if cfg.seeds < stats.MIN_SEEDS:
        return f"{cfg.seeds} seed per setting: no interval"
    if ok < n / 2:
        return (f"{n - ok} of {n} models missed the matched criterion "
                f"({cfg.criterion_text()})")
    return None


def iv(values, fmt: str = ".3g", scale: float = 1.0) -> str:
    """`stats.brief` as the flatness experiments word it: '(1 seed)' and 'n/a'.

    Args:
        values: One number per seed; NaN and ±inf are left out.
        fmt: Format spec of each number.
        scale: Factor applied to each number first (100 for a percentage).

    Returns:
        'median [lo, hi]' (95% t-interval of the mean), 'median (1 seed)', or 'n/a'.

    Example:
        >>> iv([0.2, 0.4]), iv([0.5], ".2f", 100), iv([])
        ('0.3 [-0.971, 1.57]', '50.00 (1 seed)', 'n/a')
    """
    return stats.brief(values, fmt, scale, few="(1 seed)", empty="n/a")


def band(ax, groups, col: str, color: str,
         label: str, scale: float = 1.0, marker: str = "o") -> None:
    """Per-seed faint points, the median line and the interquartile band of `col` per x.

    `groups` is a DataFrame grouped by the x column holding `reached`: models that missed the
    criterion are drawn as grey crosses and left out of the median and band.

    Args:
        ax: The matplotlib axes.
        groups: `df.groupby(x column)`.
        col: The column drawn.
        color: Color of the points, line and band.
        label: The median line's legend label (" (median)" is added).
        scale: Factor applied to the values (100 for a percentage).
        marker: Marker of the points and the median line.

    Returns:
        None; draws on `ax`.

    Example:
        >>> from dlscope import plotting
        >>> df = pd.DataFrame({"bs": [64, 64, 64, 256, 256], "acc": [0.9, 0.8, 0.5, 0.7, 0.6],
        ...                    "reached": [True, True, False, True, True]})
        >>> fig, ax = plotting.figure()
        >>> band(ax, df.groupby("bs"), "acc", "C0", "test", scale=100)
        >>> ax.lines[-1].get_ydata().tolist(), ax.lines[-1].get_label()
        ([85.0, 65.0], 'test (median)')
    """
    xs, med, lo, hi = [], [], [], []
    for x, g in groups:
        ok = g[g.reached.astype(bool)]
        bad = g[~g.reached.astype(bool)]
        ax.plot([x] * len(ok), scale * ok[col], marker, color=color, alpha=0.3, ms=4, ls="none")
        if len(bad):
            ax.plot([x] * len(bad), scale * bad[col], "x", color="grey", ms=5, ls="none")
        v = scale * ok[col].to_numpy(dtype=float)
        v = v[np.isfinite(v)]
        if len(v):
            xs.append(x)
            med.append(np.median(v))
            lo.append(np.percentile(v, 25))
            hi.append(np.percentile(v, 75))
    ax.plot(xs, med, marker + "-", color=color, label=f"{label} (median)")
    if xs:
        ax.fill_between(xs, lo, hi, color=color, alpha=0.2, lw=0)


def seed_lines(ax, g: pd.DataFrame, x: str, col: str, color: str, label: str, scale=1.0):
    """Per-seed faint lines under the median over seeds.

    Args:
        ax: The matplotlib axes.
        g: Rows with a `seed` column, `x` and `col`.
        x: The x column.
        col: The y column.
        color: The lines' color.
        label: The median line's legend label (" (median)" is added).
        scale: Factor applied to the values.

    Returns:
        None; draws on `ax`.

    Example:
        >>> from dlscope import plotting
        >>> g = pd.DataFrame({"step": [0, 1, 0, 1], "seed": [0, 0, 1, 1],
        ...                   "loss": [2.0, 1.0, 3.0, 2.0]})
        >>> fig, ax = plotting.figure()
        >>> seed_lines(ax, g, "step", "loss", "C1", "train")
        >>> len(ax.lines), ax.lines[-1].get_ydata().tolist()
        (3, [2.5, 1.5])
    """
    for _, s in g.groupby("seed"):
        ax.plot(s[x], scale * s[col], color=color, alpha=0.25, lw=0.8)
    med = g.groupby(x)[col].median()
    ax.plot(med.index, scale * med.to_numpy(), color=color, lw=2, label=f"{label} (median)")


def bs_axis(ax, batch_sizes) -> None:
    """A log-2 batch-size axis ticked at the batch sizes themselves.

    Args:
        ax: The matplotlib axes.
        batch_sizes: The batch sizes (repeats and floats allowed).

    Returns:
        None; sets the x axis of `ax`.

    Example:
        >>> from dlscope import plotting
        >>> fig, ax = plotting.figure()
        >>> bs_axis(ax, [64, 256.0, 64])
        >>> ax.get_xscale(), ax.get_xticks().tolist()
        ('log', [64, 256])
    """
    bs = sorted({int(b) for b in batch_sizes})
    ax.set_xscale("log", base=2)
    ax.set_xticks(bs, [str(b) for b in bs])
    ax.set_xticks([], minor=True)


def rebuild(params: dict, arrays: dict) -> torch.nn.Module:
    """The trained model of a run, from its spec params and saved arrays.

    Args:
        params: The run's params, with "model" (and, for a factory, the data's "input_shape"
            and "n_classes").
        arrays: The run's saved arrays; "param.<name>" ones are the state dict.

    Returns:
        The model with those weights, in eval mode.

    Example:
        >>> net = models.build(models.parse_model("mlp:2-3-2"))
        >>> arrays = {f"param.{k}": v.detach().numpy() for k, v in net.named_parameters()}
        >>> x = torch.ones(1, 2)
        >>> torch.equal(rebuild({"model": "mlp:2-3-2"}, arrays)(x), net(x))
        True
    """
    shape = params.get("input_shape")  # a factory is told the data's shape and classes
    model = models.build(models.parse_model(params["model"]), tuple(shape) if shape else None,
                         params.get("n_classes"))
    state = {k[len("param."):]: torch.from_numpy(np.array(v)) for k, v in arrays.items()
             if k.startswith("param.")}
    model.load_state_dict(state)
    return model.eval()


def flat_params(arrays: dict) -> np.ndarray:
    """All saved parameters of a run ("param.*" arrays) as one float64 vector.

    ``metrics.flat.flatten_params`` of the arrays in sorted-name order (not the model's
    ``named_parameters()`` order: distances and norms do not depend on it, and the sorted
    order keeps the stored numbers bit for bit).

    Args:
        arrays: The run's saved arrays.

    Returns:
        The "param.*" arrays, flattened and concatenated in sorted-name order.

    Example:
        >>> arrays = {"param.b": np.array([3.0]), "param.a": np.ones((1, 2)), "loss": 0.5}
        >>> flat_params(arrays).tolist()
        [1.0, 1.0, 3.0]
    """
    params = {k: torch.from_numpy(np.array(v, dtype=np.float64)) for k, v in sorted(arrays.items())
              if k.startswith("param.")}
    return flatten_params(params).numpy()
