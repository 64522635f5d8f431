"""minimal-ratio: figures, statistics, observations and the verdict, from the tables alone.

Split from :mod:`dlscope.experiments.minimal_ratio` to keep that module about the runs.
Only runs that reached the gradient threshold enter a statistic; missed runs are counted
and drawn apart (grey crosses), and runs flagged "moved" (loss changed by more than the
stated factor in phase 2) are kept, counted, and checked by a second ρ without them.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from dlscope import plotting
from dlscope.experiments import stats

CLAIM = ("critical points at higher loss have more negative Hessian directions: the index "
         "(fraction of negative eigenvalues) increases with the loss; the lowest are minima")
SOURCE = "Dauphin et al. 2014 (arXiv:1406.2572, Fig. 1)"
PUBLISHED = ("index rises with training error for critical points of a small MLP; peer "
             "report: minimal ratio 0.11–0.84 over loss 5e-4–0.09, lower loss higher ratio")
MIN_REACHED = 30  # fewer reached critical points than this: a pipeline check, no verdict


def _reached(df: pd.DataFrame) -> pd.DataFrame:
    return df[df.reached.astype(bool)]


def statistics(cfg, tables) -> dict:
    """The numbers over seeds behind the verdicts and observations (summary.json)."""
    df = tables["results"]
    ok = _reached(df)
    kinds = ok.kind.value_counts()
    clean = ok[ok.status == "ok"]
    out = {"runs": len(df), "reached": len(ok), "reach_rate": len(ok) / len(df) if len(df)
           else math.nan, "missed": int((~df.reached.astype(bool)).sum()),
           "moved": int((ok.status == "moved").sum()),
           "loss_min": float(ok.loss.min()) if len(ok) else math.nan,
           "loss_max": float(ok.loss.max()) if len(ok) else math.nan,
           "ratio_vs_loss": stats.trend(ok.loss, ok.minimal_ratio).to_dict(),
           "index_vs_loss": stats.trend(ok.loss, ok["index"]).to_dict(),
           "index_vs_loss_without_moved": stats.trend(clean.loss, clean["index"]).to_dict(),
           "counts": {k: int(kinds.get(k, 0)) for k in ("minimum", "saddle", "degenerate")},
           "tolerance_c": cfg.tol_c}
    out["loss_decades"] = (math.log10(out["loss_max"] / out["loss_min"])
                           if len(ok) and out["loss_min"] > 0 else math.nan)
    tol = tables.get("tolerances")
    if tol is not None and len(tol):
        rows = []
        res = tol[tol.reached.astype(bool)]
        loss = ok.set_index("run").loss
        for c, g in res.groupby("c"):
            k = g.kind.value_counts()
            rows.append({"c": float(c), "median_rel_tol": float(g.rel_tol.median()),
                         "ratio_median": float(g.minimal_ratio.median()),
                         "index_median": float(g["index"].median()),
                         "zero_median": float(g.frac_zero.median()),
                         **{k_: int(k.get(k_, 0)) for k_ in ("minimum", "saddle", "degenerate")},
                         "index_vs_loss_rho": stats.trend(loss.loc[g.run], g["index"]).rho})
        out["tolerance_table"] = rows
    return out


def verdicts(cfg, tables) -> list[stats.Verdict]:
    """The published claims this run tests, each with its outcome."""
    st = statistics(cfg, tables)
    t = stats.Trend(**st["index_vs_loss"])
    if st["reached"] < MIN_REACHED:
        return [stats.pipeline_check(CLAIM, SOURCE, PUBLISHED, f"only {st['reached']} critical "
                                     f"points reached (< {MIN_REACHED}); {t.text()}")]
    outcome = stats.outcome_of_trend(t, expected_sign=+1)
    if st["reach_rate"] < 0.5:
        outcome = "inconclusive"
    statistic = (f"index vs loss over {st['reached']} critical points with ‖∇L‖ < "
                 f"{cfg.grad_threshold:g}: {t.text()}; minima {st['counts']['minimum']}, "
                 f"saddles {st['counts']['saddle']}, degenerate {st['counts']['degenerate']}")
    rule = stats.TREND_RULE + "; inconclusive if fewer than half the runs reached the threshold"
    return [stats.Verdict(CLAIM, SOURCE, PUBLISHED, statistic, rule, outcome)]


def figures(cfg, tables) -> dict:
    """The figures, by name, drawn from the tables."""
    df = tables["results"]
    ok, missed = _reached(df), df[~df.reached.astype(bool)]
    fig, axes = plotting.figure(ncols=2, width=5.0, height=4.0)
    starts = sorted(df.start_epochs.unique())
    colors = dict(zip(starts, plotting_colors(len(starts))))
    for ax, col, name in ((axes[0], "minimal_ratio", "minimal ratio (fraction λ > tol)"),
                          (axes[1], "index", "index (fraction λ < −tol)")):
        for s in starts:
            sub = ok[ok.start_epochs == s]
            moved = sub.status == "moved"
            ax.scatter(sub.loss[~moved], sub[col][~moved], s=22, color=colors[s],
                       label=f"start after {s} epochs ({len(sub)})")
            ax.scatter(sub.loss[moved], sub[col][moved], s=40, facecolors="none",
                       edgecolors=colors[s])
        if len(missed):
            ax.scatter(missed.loss, missed[col], marker="x", color="0.55", s=24,
                       label=f"missed ‖∇L‖ < {cfg.grad_threshold:g} ({len(missed)}; "
                       "not a critical point)")
        ax.set_xscale("log")
        ax.set_ylim(-0.03, 1.03)
        t = stats.trend(ok.loss, ok[col])
        plotting.finish(ax, f"{name.split(' (')[0]} vs loss: {t.text()}",
                        "full-batch training loss at the point (MSE, log)", name,
                        legend=(col == "index"))
    fig.suptitle(f"{len(ok)} critical points of {len(df)} runs; open circles: loss moved by > "
                 f"×{cfg.loss_change_flag:g} in phase 2", fontsize=9)
    figs = {"minimal_ratio": fig}
    spectra = tables.get("spectra")
    if spectra is not None and len(ok):
        fig2, ax2 = plotting.figure(width=6.4, height=4.0)
        picks = [(ok.loc[ok.loss.idxmin()], "lowest loss", "tab:blue"),
                 (ok.loc[ok.loss.idxmax()], "highest loss", "tab:red")]
        floor = max(float(r.tol) for r, _, _ in picks) or 1e-300
        for row, name, color in picks:
            ev = np.sort(spectra[spectra.run == row.run].eigenvalue.to_numpy())
            ax2.plot(np.arange(len(ev)), ev, "o-", ms=3, color=color,
                     label=f"{name}: run {int(row.run)}, loss {row.loss:.3g}, {row.kind}, "
                     f"ratio {row.minimal_ratio:.2f}, index {row['index']:.2f}")
        ax2.axhspan(-floor, floor, color="0.85", label=f"|λ| ≤ tol ({floor:.1e})")
        ax2.set_yscale("symlog", linthresh=floor)
        plotting.finish(ax2, "Hessian spectra at two critical points (all parameters)",
                        "eigenvalue rank (ascending)", "eigenvalue (symlog)")
        figs["spectra"] = fig2
    return figs


def plotting_colors(n: int) -> list:
    """n colors along viridis (its bright end left out)."""
    from matplotlib import colormaps

    cmap = colormaps["viridis"]
    return [cmap(i / max(n - 1, 1) * 0.9) for i in range(n)]


def observations(cfg, tables) -> list[str]:
    """What this run shows, in sentences for the report."""
    df = tables["results"]
    ok = _reached(df)
    st = statistics(cfg, tables)
    out = [(f"{len(ok)} of {len(df)} runs reached ‖∇L‖ < {cfg.grad_threshold:g} "
            f"({st['missed']} missed: grey crosses, excluded from statistics); "
            f"{st['moved']} reached runs changed their loss by more than ×"
            f"{cfg.loss_change_flag:g} in phase 2 (flagged 'moved', kept).")]
    if not len(ok):
        return out
    decades = (f" ({st['loss_decades']:.1f} decades)" if math.isfinite(st["loss_decades"])
               else "")
    zero = ok.frac_zero.max()
    zero = f"up to {zero:.2f}" if math.isfinite(zero) else "undefined (no finite value)"
    out.append(f"Critical points span loss {span(ok.loss, '.3g')}{decades}; minimal ratio "
               f"{span(ok.minimal_ratio)}, index {span(ok['index'])}, near-zero fraction "
               f"{zero} ({int(ok.n_params.iloc[0])} parameters, tol = "
               f"{cfg.tol_c:g}·eps·P·max|λ|).")
    c = st["counts"]
    out.append(f"Kinds: {c['minimum']} minima, {c['saddle']} saddles, {c['degenerate']} "
               f"degenerate. Index vs loss: {stats.Trend(**st['index_vs_loss']).text()}; "
               f"minimal ratio vs loss: {stats.Trend(**st['ratio_vs_loss']).text()}; "
               f"without 'moved' runs: {stats.Trend(**st['index_vs_loss_without_moved']).text()}.")
    for row in st.get("tolerance_table", []):
        if row["c"] in (1.0, 1e4, 1e8):
            out.append(f"At tol = {row['c']:g}·eps·P·max|λ| (≈{row['median_rel_tol']:.1e}·max|λ|):"
                       f" median ratio {row['ratio_median']:.2f}, median index "
                       f"{row['index_median']:.2f}, {row['minimum']} minima / {row['saddle']} "
                       f"saddles / {row['degenerate']} degenerate.")
    for v in verdicts(cfg, tables):
        out.append(f"Verdict ({v.source}): {v.outcome}. {v.statistic}.")
    return out


def span(values, fmt: str = ".2f") -> str:
    """'min–max' of the finite `values`, or why there is none.

    Example:
        >>> span(pd.Series([0.5, np.nan, 0.25])), span(pd.Series([np.nan]))
        ('0.25–0.50', 'undefined (no finite value)')
    """
    v = np.asarray(values, dtype=np.float64)
    v = v[np.isfinite(v)]
    return f"{v.min():{fmt}}–{v.max():{fmt}}" if len(v) else "undefined (no finite value)"


def headline(cfg, tables) -> dict:
    """A few numbers that summarise this run (summary.json's headline)."""
    st = statistics(cfg, tables)
    ok = _reached(tables["results"])
    return {"runs": st["runs"], "reached": st["reached"], "loss_min": st["loss_min"],
            "loss_max": st["loss_max"], "index_rho": st["index_vs_loss"]["rho"],
            "index_p": st["index_vs_loss"]["p_value"], "ratio_rho": st["ratio_vs_loss"]["rho"],
            "ratio_min": float(ok.minimal_ratio.min()) if len(ok) else None,
            "ratio_max": float(ok.minimal_ratio.max()) if len(ok) else None, **st["counts"]}
