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
from dlscope.experiments.inputs import build_model
from dlscope.train.engine import TrainConfig, evaluate, train

FAILED = ("collapsed", "diverged", "missed")   # statuses kept in tables, left out of statistics


def mnist_spec(name: str) -> models.MLPSpec | models.CNNSpec:
    """A model spec for 28x28 MNIST with 10 classes, or ValueError saying why not.

    Args:
        name: A model name `models.parse_model` reads ("mlp:784-64-10", a preset, ...).

    Returns:
        The `models.MLPSpec` or `models.CNNSpec`.

    Raises:
        ValueError: When the name does not parse or the model does not take 28x28 MNIST to
            10 classes (a pydantic validator turns it into a config error).

    Example:
        >>> mnist_spec("mlp:784-64-10").hidden
        (64,)
        >>> mnist_spec("mlp:100-10")
        Traceback (most recent call last):
        ...
        ValueError: model 'mlp:100-10' does not take 28x28 MNIST to 10 classes
    """
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
    """`MnistOptions` fields for `model` (flattened images for an MLP); 0/None subset: all.

    Args:
        model: The model's name (see `mnist_spec`).
        train_subset: Training images to keep; 0 or None keeps all.
        seed: Seed of the subset's draw.
        **extra: Further `MnistOptions` fields, passed through.

    Returns:
        A dict of `MnistOptions` fields.

    Example:
        >>> mnist_data_options("mlp:784-10", 0, 3)
        {'train_subset': None, 'seed': 3, 'flatten': True}
    """
    return {**extra, "train_subset": train_subset or None, "seed": seed,
            "flatten": isinstance(mnist_spec(model), models.MLPSpec)}


def train_and_evaluate(p: dict, ctx, init_seed: int | None = None):
    """Train `p["model"]` on `p["data"]` with `p["train"]` (batch order from `p["seed"]`,
    init from `init_seed`, default the same seed); return (model, dataset, TrainResult,
    metrics) where metrics are the full-set train/test loss and accuracy in eval mode.

    Args:
        p: A run's params: "model" (a spec's JSON), "data" (a dataset description), "train"
            (`TrainConfig` fields) and "seed".
        ctx: The run context; `ctx.dataset(p["data"])` gives the data and `ctx.device` the
            device.
        init_seed: Seed of the initial weights; None: `p["seed"]`.

    Returns:
        (model, dataset, `TrainResult`, metrics) with metrics as in `full_metrics`.

    Example:
        >>> import torch
        >>> from types import SimpleNamespace
        >>> from dlscope.data.dataset import Dataset
        >>> g = torch.Generator().manual_seed(0)
        >>> ds = Dataset.from_tensors(torch.rand(8, 784, generator=g), torch.arange(8) % 10,
        ...                           n_classes=10)
        >>> ctx = SimpleNamespace(dataset=lambda desc: ds, device=torch.device("cpu"))
        >>> p = {"model": "mlp:784-10", "data": {}, "train": {"epochs": 2}, "seed": 0}
        >>> model, _, res, m = train_and_evaluate(p, ctx)
        >>> res.epochs_run, sorted(m)
        (2, ['test_acc', 'test_loss', 'train_acc', 'train_loss'])
    """
    ds = ctx.dataset(p["data"])
    seed = p["seed"] if init_seed is None else init_seed
    model = build_model(p, ds, seed, ctx.device)
    res = train(model, ds, TrainConfig(**p["train"]), seed=p["seed"])
    return model, ds, res, full_metrics(model, ds)


def full_metrics(model, ds) -> dict:
    """Loss and accuracy of `model` on the whole train and test sets, in eval mode.

    Args:
        model: A classifier.
        ds: The `Dataset` (class labels).

    Returns:
        {"train_loss", "train_acc", "test_loss", "test_acc"}: mean cross-entropy and the
        fraction classified right.

    Example:
        A model with constant logits has loss ln 10 and picks class 0:

        >>> import torch
        >>> from dlscope.data.dataset import Dataset
        >>> net = torch.nn.Linear(4, 10)
        >>> _ = torch.nn.init.zeros_(net.weight), torch.nn.init.zeros_(net.bias)
        >>> y = torch.tensor([0, 0, 1, 2])
        >>> m = full_metrics(net, Dataset.from_tensors(torch.ones(4, 4), y, n_classes=10))
        >>> round(m["train_loss"], 6), m["train_acc"]
        (2.302585, 0.5)
    """
    train_loss, train_acc = evaluate(model, ds.x_train, ds.y_train, True)
    test_loss, test_acc = evaluate(model, ds.x_test, ds.y_test, True)
    return {"train_loss": train_loss, "train_acc": train_acc, "test_loss": test_loss,
            "test_acc": test_acc}


def ensemble_ok(nets) -> bool:
    """True when every net is a plain MLP the stacked ensemble (train.ensemble) can train.

    Args:
        nets: The seeds' models.

    Returns:
        Whether `train.fastpath.mlp_chain` reads each of them.

    Example:
        >>> ensemble_ok([models.build(models.parse_model("mlp:4-8-1"))])
        True
    """
    from dlscope.train.fastpath import mlp_chain

    return all(mlp_chain(n) is not None for n in nets)


def slug(text: str, max_len: int = 40) -> str:
    """A file-name-safe version of text (letters, digits, - and _).

    Args:
        text: Any text (a function's expression, a model name).
        max_len: Longest slug kept.

    Returns:
        `text` with every other character replaced by "_", cut to `max_len`.

    Example:
        >>> slug("expr:sin(3x)"), slug("abcdef", max_len=3)
        ('expr_sin_3x_', 'abc')
    """
    return "".join(ch if ch.isalnum() or ch in "-_" else "_" for ch in str(text))[:max_len]


def slugs(names: Iterable[str], max_len: int = 40) -> dict[str, str]:
    """A file-name-safe slug per distinct name, never two alike: where cleaned names repeat
    (``expr:x+2`` and ``expr:x*2`` both clean to ``expr_x_2``) each gets a short hash of its
    original text as a suffix.

    Args:
        names: The names; repeats are kept once.
        max_len: Longest slug before any suffix.

    Returns:
        {name: slug} in the order the names first come.

    Example:
        >>> slugs(["sin", "sin", "x^2"])
        {'sin': 'sin', 'x^2': 'x_2'}
        >>> list(slugs(["expr:x+2", "expr:x*2"]).values())
        ['expr_x_2_...', 'expr_x_2_...']
    """
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
    """The seeds of a config with `seed` (the first) and `seeds` (how many).

    Args:
        cfg: Anything with int attributes `seed` and `seeds`.

    Returns:
        [seed, seed + 1, ..., seed + seeds - 1].

    Example:
        >>> from types import SimpleNamespace
        >>> seeds_of(SimpleNamespace(seed=10, seeds=3))
        [10, 11, 12]
    """
    return [cfg.seed + i for i in range(cfg.seeds)]


def setting_statistics(df: pd.DataFrame, by: Sequence[str], metrics: Sequence[str],
                       status: str = "status", failed: Sequence[str] = FAILED) -> dict:
    """Per setting (the values of the `by` columns, joined by '/'): the median and 95%
    t-interval over seeds of each metric, from the runs whose status is not a failure, and
    the failure counts and rates as numbers of their own.

    Args:
        df: One row per run.
        by: The columns that make a setting.
        metrics: The columns to summarise.
        status: The column with each run's status.
        failed: The statuses left out of the statistics (and counted).

    Returns:
        {"v1/v2": {metric: `stats.Interval.to_dict()`, ..., "failures":
        `stats.failure_rates(...)`}} per setting, in the order settings first come.

    Example:
        >>> df = pd.DataFrame({"w": [8, 8, 8, 16], "acc": [0.5, 0.7, 0.1, 0.9],
        ...                    "status": ["ok", "ok", "diverged", "ok"]})
        >>> st = setting_statistics(df, ["w"], ["acc"])
        >>> list(st), st["8"]["acc"]["n"], st["8"]["acc"]["median"]
        (['8', '16'], 2, 0.6)
        >>> st["8"]["failures"]["diverged"], st["16"]["acc"]["method"]
        (1, 'none')
    """
    out = {}
    for key, g in df.groupby(list(by), sort=False):
        key = key if isinstance(key, tuple) else (key,)
        ok = g[~g[status].isin(failed)]
        out["/".join(str(k) for k in key)] = {
            **{m: stats.interval(ok[m]).to_dict() for m in metrics},
            "failures": stats.failure_rates(g[status], failed)}
    return out


def median_band(ax, x, ys: np.ndarray, color, label: str, marker: str = "-"):
    """Bold median over the rows of `ys` (seeds x points, NaN ignored) with a min-max band.

    Args:
        ax: The matplotlib axes.
        x: The points' x values.
        ys: Seeds x points.
        color: The line's and band's color.
        label: The median line's legend label.
        marker: The median line's format ("-", "-o").

    Returns:
        None; draws on `ax`.

    Example:
        >>> fig, ax = plotting.figure()
        >>> median_band(ax, [0, 1], np.array([[1.0, 2.0], [3.0, np.nan]]), "C0", "median")
        >>> ax.lines[0].get_ydata().tolist()
        [2.0, 2.0]
    """
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
    `failed_col` is true are drawn as grey crosses and left out of the median.

    Args:
        df: One row per seed and x, with the loss and accuracy columns of each line.
        x: The x column.
        lines: Label -> column prefix.
        seed: The seed column.
        failed_col: The column marking failed runs; None: no run failed.
        logx: Log-scale x axes.
        titles: The two panels' titles.
        xlabel: The x axes' label.
        loss_label: The loss axis's label.
        chance: Draw ln 10 and 10% (chance on 10 classes).

    Returns:
        (figure, (loss axes, accuracy axes)).

    Example:
        >>> df = pd.DataFrame({"epoch": [1, 2, 1, 2], "seed": [0, 0, 1, 1],
        ...                    "train_loss": [1.0, 0.5, 1.2, 0.4],
        ...                    "train_acc": [0.6, 0.8, 0.5, 0.9]})
        >>> fig, (ax1, ax2) = loss_accuracy_figure(df, "epoch", {"train": "train"})
        >>> ax2.get_ylabel(), ax1.get_yscale()
        ('accuracy (%)', 'log')
    """
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
