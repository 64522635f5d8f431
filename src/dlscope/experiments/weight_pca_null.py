"""weight-pca beside its null: each run's top-2 PCA share against a random walk's.

Split from :mod:`dlscope.experiments.weight_pca` to keep that module about the runs; the
random-walk math is :mod:`dlscope.metrics.random_walk`. The "null" table (one row per run and
scope) holds the run's share ("training"), the closed form for its number of snapshots with
equal steps ("closed_form"), the infinite-dimensional share with the run's own step norms
("profile"), the mean and sd over seeded simulated walks with those norms in the run's
dimension ("simulated", "simulated_sd") and "excess" = training - simulated.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from dlscope import plotting
from dlscope.experiments import stats


def null_excess(tables, scope: str = "model") -> tuple[stats.Interval, str]:
    """Training minus random-walk top-2 share over the runs, and what it says.

    Args:
        tables: The tables of `analyze` (its "null" table).
        scope: "model" or "layer1".

    Returns:
        (the interval of training − simulated null over the runs, "differs" when it excludes 0,
        "no clear difference" when it covers 0, or why there is no interval).
    """
    g = tables["null"][tables["null"].scope == scope]
    iv = stats.interval(g.excess)
    if iv.n == 0:
        return iv, "no run has a trajectory to compare"
    if not np.isfinite(iv.lo):
        return iv, "one run: no interval, no verdict on the difference"
    return iv, "differs" if (iv.lo > 0 or iv.hi < 0) else "no clear difference"


def null_text(tables, scope: str = "model") -> str:
    """The comparison of training's top-2 share with the random-walk null, in words."""
    g = tables["null"][tables["null"].scope == scope]
    iv, word = null_excess(tables, scope)
    if iv.n == 0:
        return f"random-walk null: {word}"
    return (f"top-2 share {stats.brief(g.training, '.1f', 100)}% in training vs "
            f"{stats.brief(g.simulated, '.1f', 100)}% for random walks with each run's own "
            f"step norms and dimension ({int(g.walks.iloc[0])} walks per run; closed form for "
            f"{int(g.snapshots.iloc[0])} snapshots, equal steps: "
            f"{100 * g.closed_form.iloc[0]:.1f}%); "
            f"training - null {iv.text('+.1f', 100, ' pts')}: {word}")


def null_figure(nl: pd.DataFrame, names: dict, li_range: tuple[float, float]):
    """Each run's top-2 share beside its random walk's (simulated mean ± sd, closed form).

    Args:
        nl: The "null" table.
        names: Scope -> its name in titles.
        li_range: Li et al.'s range of the share, drawn as a band.

    Returns:
        A matplotlib Figure, one panel per scope.
    """
    fig, axes = plotting.figure(ncols=nl.scope.nunique(), width=4.6, height=3.6)
    for ax, (scope, g) in zip(np.atleast_1d(axes), nl.groupby("scope", sort=False)):
        ax.axhspan(100 * li_range[0], 100 * li_range[1], color="0.9", label="Li et al. 40-90%")
        ax.axhline(100 * g.closed_form.iloc[0], ls="--", color="grey",
                   label=f"closed form, {g.snapshots.iloc[0]} snapshots")
        ax.errorbar(g.run, 100 * g.simulated, 100 * g.simulated_sd, fmt="o", mfc="none",
                    capsize=3, label="random walk, the run's steps")
        ax.plot(g.run, 100 * g.training, "o", color="C3", label="training")
        ax.set_xticks(g.run)
        plotting.finish(ax, f"{names[scope]}: top-2 share vs random walk", "run",
                        "variance in top 2 directions (%)")
    return fig
