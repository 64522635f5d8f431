"""Pieces the experiments share: MNIST model validation and data options, one training run
followed by a full evaluation, unique file-name slugs, statistics over seeds per setting, and
the two-panel (loss, accuracy) figure with per-seed faint lines under a bold median."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence

import numpy as np
import pandas as pd

from dlscope import models, plotting
from dlscope.errors import UserError
from dlscope.experiments import stats
from dlscope.train.engine import TrainConfig, evaluate, seeded_model, train

FAILED = ("collapsed", "diverged", "missed")   # statuses kept in tables, left out of statistics


def mnist_spec(name: str) -> models.MLPSpec | models.CNNSpec:
    """A model spec for 28x28 MNIST with 10 classes, or ValueError saying why not."""
    try:
        spec = models.parse_model(name)
    except UserError as e:
        raise ValueError(str(e)) from None
    if isinstance(spec, models.MLPSpec):
        ok = spec.input_dim == 784 and spec.output_dim == 10
    else:
        ok = spec.in_channels == 1 and spec.input_size == 28 and spec.n_classes == 10
    if not ok:
        raise ValueError(f"model {name!r} does not take 28x28 MNIST to 10 classes")
    return spec


def mnist_data_options(model: str, train_subset: int | None, seed: int, **extra) -> dict:
    """`MnistOptions` fields for `model` (flattened images for an MLP); 0/None subset: all."""
    return {**extra, "train_subset": train_subset or None, "seed": seed,
            "flatten": isinstance(mnist_spec(model), models.MLPSpec)}


def train_and_evaluate(p: dict, ctx, init_seed: int | None = None):
    """Train `p["model"]` on `p["data"]` with `p["train"]` (batch order from `p["seed"]`,
    init from `init_seed`, default the same seed); return (model, dataset, TrainResult,
    metrics) where metrics are the full-set train/test loss and accuracy in eval mode."""
    ds = ctx.dataset({"kind": "mnist", **p["data"]})
    spec = models.parse_model(p["model"])
    seed = p["seed"] if init_seed is None else init_seed
    model = seeded_model(lambda: models.build(spec), seed).to(ctx.device)
    res = train(model, ds, TrainConfig(**p["train"]), seed=p["seed"])
    return model, ds, res, full_metrics(model, ds)


def full_metrics(model, ds) -> dict:
    """Loss and accuracy of `model` on the whole train and test sets, in eval mode."""
    train_loss, train_acc = evaluate(model, ds.x_train, ds.y_train, True)
    test_loss, test_acc = evaluate(model, ds.x_test, ds.y_test, True)
    return {"train_loss": train_loss, "train_acc": train_acc, "test_loss": test_loss,
            "test_acc": test_acc}


def ensemble_ok(nets) -> bool:
    """True when every net is a plain MLP the stacked ensemble (train.ensemble) can train."""
    from dlscope.train.fastpath import mlp_chain

    return all(mlp_chain(n) is not None for n in nets)


def slug(text: str, max_len: int = 40) -> str:
    """A file-name-safe version of text (letters, digits, - and _)."""
    return "".join(ch if ch.isalnum() or ch in "-_" else "_" for ch in str(text))[:max_len]


def slugs(names: Iterable[str], max_len: int = 40) -> dict[str, str]:
    """A file-name-safe slug per distinct name, never two alike: where cleaned names repeat
    (``expr:x+2`` and ``expr:x*2`` both clean to ``expr_x_2``) each gets a short hash of its
    original text as a suffix."""
    names = list(dict.fromkeys(str(n) for n in names))
    clean = {n: slug(n, max_len) for n in names}
    counts = pd.Series(list(clean.values())).value_counts()
    out = {}
    for n in names:
        s = clean[n]
        if counts.get(s, 0) > 1:
            s = f"{s}_{hashlib.sha256(n.encode()).hexdigest()[:6]}"
        out[n] = s
    return out


def seeds_of(cfg) -> list[int]:
    """The seeds of a config with `seed` (the first) and `seeds` (how many)."""
    return [cfg.seed + i for i in range(cfg.seeds)]


def setting_statistics(df: pd.DataFrame, by: Sequence[str], metrics: Sequence[str],
                       status: str = "status", failed: Sequence[str] = FAILED) -> dict:
    """Per setting (the values of the `by` columns, joined by '/'): the median and 95%
    t-interval over seeds of each metric, from the runs whose status is not a failure, and
    the failure counts and rates as numbers of their own."""
    out = {}
    for key, g in df.groupby(list(by), sort=False):
        key = key if isinstance(key, tuple) else (key,)
        ok = g[~g[status].isin(failed)]
        out["/".join(str(k) for k in key)] = {
            **{m: stats.interval(ok[m]).to_dict() for m in metrics},
            "failures": stats.failure_rates(g[status], failed)}
    return out


def median_band(ax, x, ys: np.ndarray, color, label: str, marker: str = "-"):
    """Bold median over the rows of `ys` (seeds x points, NaN ignored) with a min-max band."""
    with np.errstate(all="ignore"):
        med = np.nanmedian(ys, axis=0)
        lo, hi = np.nanmin(ys, axis=0), np.nanmax(ys, axis=0)
    ax.fill_between(x, lo, hi, color=color, alpha=0.15, lw=0)
    ax.plot(x, med, marker, color=color, lw=2, ms=4, label=label)


def loss_accuracy_figure(df: pd.DataFrame, x: str, lines: dict[str, str], *, seed="seed",
                         failed_col: str | None = "failed", logx: bool = False,
                         titles=("loss", "accuracy"), xlabel: str = "",
                         loss_label: str = "cross-entropy (log)", chance: bool = False):
    """Two panels, loss (log) and accuracy (%), against `x`; for each line (label -> column
    prefix, e.g. {"train": "train", "test": "test"}: columns `<prefix>_loss`, `<prefix>_acc`)
    one faint line per seed under a bold median with a min-max band over seeds. Rows whose
    `failed_col` is true are drawn as grey crosses and left out of the median."""
    fig, (ax1, ax2) = plotting.figure(ncols=2)
    bad = (df[failed_col].astype(bool) if failed_col and failed_col in df
           else pd.Series(False, index=df.index))
    for k, (label, prefix) in enumerate(lines.items()):
        color = f"C{k}"
        for ax, col, scale in ((ax1, f"{prefix}_loss", 1.0), (ax2, f"{prefix}_acc", 100.0)):
            good = df[~bad]
            for _, g in good.groupby(seed, sort=False):
                ax.plot(g[x], scale * g[col], "-", color=color, lw=0.7, alpha=0.3)
            wide = good.pivot_table(index=seed, columns=x, values=col, aggfunc="first")
            if len(wide):
                median_band(ax, wide.columns.to_numpy(), scale * wide.to_numpy(), color,
                            f"{label}: median of {len(wide)} seeds (band: range)",
                            "-o" if len(wide.columns) < 30 else "-")
            if bad.any():
                b = df[bad]
                ax.plot(b[x], scale * b[col], "x", color="grey", ms=7,
                        label=f"{label}: failed runs (not in median)" if k == 0 else None)
    ax1.set_yscale("log")
    if chance:
        ax1.axhline(np.log(10), color="grey", lw=0.8, ls=":", label="ln 10 (chance)")
        ax2.axhline(10, color="grey", lw=0.8, ls=":", label="chance (10%)")
    for ax in (ax1, ax2):
        if logx:
            ax.set_xscale("log")
    plotting.finish(ax1, titles[0], xlabel, loss_label)
    plotting.finish(ax2, titles[1], xlabel, "accuracy (%)")
    return fig, (ax1, ax2)
