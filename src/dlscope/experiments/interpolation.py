"""interpolation (HW1 1-3, flatness vs generalization part 1): what lies on the straight
line between two trained models that differ in one training setting, and how wide is each
minimum on its own scale?

Setup: pairs of MLPs 784-128-64-10 trained with Adam on a fixed seeded subset of MNIST
(8,192 images), each pair differing in one setting: batch 64 vs 1024 (lr 1e-3, or scaled
with the batch size if `lr_scaling` says so), and lr 1e-3 vs 1e-2 (batch 64). Every model
trains to the same criterion (matched training, `flatness_common`: by default
full-evaluation train accuracy ≥ 99%, with a step cap), so the pair compares minima, not
training progress. Three pairs (seeds) per comparison; both models of a pair start from the
seed's init (`shared_init`; otherwise the second uses seed + 1000). The (batch 64, lr 1e-3)
model of a seed is common to both pairs and trained once. Then:
- θ(α) = (1−α)θ₁ + αθ₂ for 31+ values of α on [−1, 2] (0 and 1 exact), evaluated on the
  whole training subset and test set, in eval mode, without retraining (metrics.interpolation);
- for each trained model, a filter-normalized 1-D loss curve L(θ + t·d), t ∈ [−1, 1], along a
  seeded random direction d (Li et al. 2018, metrics.directions), so each minimum is seen on
  its own scale; its width is summarised by the rise of the train loss at t = ±0.5.

Expected: from a shared init the loss has no or a small barrier between the two solutions
and rises faster beyond the large-batch model (Keskar et al. 2017, arXiv:1609.04836, Fig. 3);
on filter-normalized curves small-batch minima are wider than large-batch ones (Li et al.
2018, arXiv:1712.09913, Fig. 3). The lr pair has no published expectation with Adam (for SGD
a larger lr acts like a smaller batch) and gets no verdict. A run whose models mostly miss
the criterion (the quick profile) is a pipeline check and issues no verdicts.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch
from pydantic import Field, field_validator, model_validator

from dlscope import plotting
from dlscope.contract.runspec import RunResult, RunSpec
from dlscope.data import build_dataset
from dlscope.experiments import stats
from dlscope.experiments.flatness_common import (
    MatchedConfig,
    flat_params,
    iv,
    pipeline_reason,
    rebuild,
    scaled_lr,
    seed_lines,
    train_matched,
)
from dlscope.experiments.inputs import (
    ImageInputs,
    build_model,
    setup,
    tag,
)
from dlscope.metrics.directions import curve_rise, filter_normalized_direction, loss_curve_1d
from dlscope.metrics.interpolation import alpha_grid, evaluate_classifier, interpolate
from dlscope.train.engine import TrainConfig, evaluate

NAME = "interpolation"
SECTION = "1-3"
TITLE = "Flatness vs generalization: linear interpolation and filter-normalized curves"
QUESTION = ("Along the line between two models trained to the same criterion with different "
            "batch sizes (or learning rates), and around each of them, how does the loss change?")


class Config(MatchedConfig, ImageInputs):
    """Settings of the interpolation experiment; defaults: the assignment profile."""
    batch_pair: list[int] = Field([64, 1024], min_length=2, max_length=2,
                                  description="batch sizes of the batch pair (lr = lr)")
    lr_pair: list[float] = Field([1e-3, 1e-2], min_length=2, max_length=2,
                                 description="learning rates of the lr pair (batch = batch_size)")
    batch_size: int = Field(64, ge=1, description="batch size of the lr pair")
    lr: float = Field(1e-3, gt=0, description="Adam learning rate of the batch pair at "
                                              "lr_base_batch (scaled by lr_scaling)")
    shared_init: bool = Field(True, description="both models of a pair start from one init")
    n_alpha: int = Field(31, ge=3, description="evenly spaced α values (0 and 1 always added)")
    alpha_min: float = Field(-1.0, description="first α")
    alpha_max: float = Field(2.0, description="last α")
    curve_points: int = Field(21, ge=3, description="t values of each filter-normalized curve")
    curve_range: float = Field(1.0, gt=0, description="the curves span t ∈ [−range, range]")

    @field_validator("lr_pair", "batch_pair")
    @classmethod
    def _positive(cls, v: list) -> list:
        if min(v) <= 0:
            raise ValueError("learning rates and batch sizes must be > 0")
        return v

    @model_validator(mode="after")
    def _alphas(self):
        if not self.alpha_min < self.alpha_max:
            raise ValueError(f"alpha_min ({self.alpha_min}) must be below alpha_max "
                             f"({self.alpha_max})")
        return self

    def batch_sizes_used(self) -> list[int]:
        return [*self.batch_pair, self.batch_size]


PROFILES = {"quick": {"seeds": 2, "train_subset": 1024, "max_steps": 48, "n_alpha": 11,
                      "curve_points": 11}}


def inputs(cfg: Config):
    """The runs' model and data (`experiments.inputs.setup`)."""
    return setup(cfg.model, cfg.data, {"train_subset": cfg.train_subset or None,
                                       "seed": cfg.seed}, NAME, deterministic=True)


def pairs(cfg: Config) -> list[dict]:
    """Per seed and comparison: name, seed, the setting, the two trainings (bs, lr, init)."""
    b1, b2 = cfg.batch_pair
    l1, l2 = cfg.lr_pair
    out = []
    for s in cfg.run_seeds():
        second = s if cfg.shared_init else s + 1000
        lr_b = [scaled_lr(cfg.lr, b, cfg.lr_scaling, cfg.lr_base_batch) for b in (b1, b2)]
        out += [{"pair": f"batch {b1} vs {b2}", "seed": s, "setting": "batch_size",
                 "a": (b1, lr_b[0], s), "b": (b2, lr_b[1], second)},
                {"pair": f"lr {l1:g} vs {l2:g}", "seed": s, "setting": "lr",
                 "a": (cfg.batch_size, l1, s), "b": (cfg.batch_size, l2, second)}]
    return out


def _key(t: tuple, seed: int) -> str:
    return f"bs={t[0]},lr={t[1]:g},init={t[2]},seed={seed}"


def runs(cfg: Config) -> list[RunSpec]:
    su = inputs(cfg)
    out: dict[str, RunSpec] = {}
    for pr in pairs(cfg):
        for bs, lr, init in (pr["a"], pr["b"]):
            key = _key((bs, lr, init), pr["seed"])
            tc = TrainConfig(lr=lr, batch_size=bs, epochs=1, eval_test=False)
            out.setdefault(key, RunSpec(NAME, key, __name__, {
                "model": su.model, "data": su.data, "data_name": tag(su.info),
                "input_shape": list(su.info.input_shape), "n_classes": su.info.n_classes,
                "train": tc.model_dump(),
                "matched": cfg.matched(), "init_seed": init, "seed": pr["seed"],
                "curve": {"points": cfg.curve_points, "range": cfg.curve_range}},
                data=su.data))
    return list(out.values())


def run_one(p: dict, ctx) -> RunResult:
    ds = ctx.dataset(p["data"])
    model = build_model(p, ds, p["init_seed"], ctx.device)
    tr = train_matched(model, ds, TrainConfig(**p["train"]), p["matched"], p["seed"])
    m = dict(zip(("train_loss", "train_acc"), evaluate(model, ds.x_train, ds.y_train, True)))
    m.update(zip(("test_loss", "test_acc"), evaluate(model, ds.x_test, ds.y_test, True)))
    ev_tr, ev_te = (evaluate_classifier(ds.x_train, ds.y_train, batch_size=8192),
                    evaluate_classifier(ds.x_test, ds.y_test, batch_size=8192))
    c = p["curve"]
    ts = np.linspace(-c["range"], c["range"], c["points"])
    curve = loss_curve_1d(model.eval(), filter_normalized_direction(model, p["seed"]), ts,
                          lambda mod: {**{f"train_{k}": v for k, v in ev_tr(mod).items()},
                                       **{f"test_{k}": v for k, v in ev_te(mod).items()}})
    arrays = {f"param.{k}": v.detach().cpu().numpy() for k, v in model.state_dict().items()}
    arrays.update({f"curve.{k}": curve[k].to_numpy() for k in curve.columns})
    return RunResult(values={"status": tr["status"], "reached": tr["reached"],
                             "steps": tr["steps"], "criterion_step": tr["criterion_step"],
                             "wall_s": tr["wall_s"], **m}, arrays=arrays)


def analyze(cfg: Config, results) -> dict[str, pd.DataFrame]:
    """Tables from the run results: results, models (a row per trained model) and curves."""
    by_key = {spec.key: (spec, r) for spec, r in results}
    ds = build_dataset(results[0][0].params["data"])
    ev_train = evaluate_classifier(ds.x_train, ds.y_train, batch_size=10000)
    ev_test = evaluate_classifier(ds.x_test, ds.y_test, batch_size=10000)

    def ev(model):
        tr, te = ev_train(model), ev_test(model)
        return {"train_loss": tr["loss"], "train_acc": tr["acc"], "test_loss": te["loss"],
                "test_acc": te["acc"]}

    alphas = alpha_grid(cfg.n_alpha, cfg.alpha_min, cfg.alpha_max)
    frames, models_rows = [], []
    curves = [pd.DataFrame({k[len("curve."):]: v for k, v in r.arrays.items()
                            if k.startswith("curve.")}).assign(
        run=spec.key, seed=spec.params["seed"], batch_size=spec.params["train"]["batch_size"],
        lr=spec.params["train"]["lr"]) for spec, r in results]
    for pr in pairs(cfg):
        ka, kb = _key(pr["a"], pr["seed"]), _key(pr["b"], pr["seed"])
        if ka not in by_key or kb not in by_key:
            continue  # a failed training: its pair is left out (the runner lists failures)
        (sa, ra), (sb, rb) = by_key[ka], by_key[kb]
        with torch.inference_mode():
            df = interpolate(rebuild(sa.params, ra.arrays), rebuild(sb.params, rb.arrays),
                             alphas, ev)
        df.insert(0, "pair", pr["pair"])
        df.insert(1, "seed", pr["seed"])
        df["shared_init"] = cfg.shared_init
        frames.append(df)
        dist = float(np.linalg.norm(flat_params(ra.arrays) - flat_params(rb.arrays)))
        for end, (bs, lr, init), r in (("alpha=0", pr["a"], ra), ("alpha=1", pr["b"], rb)):
            v = r.values
            models_rows.append({"pair": pr["pair"], "seed": pr["seed"], "end": end,
                                "run": _key((bs, lr, init), pr["seed"]), "batch_size": bs,
                                "lr": lr, "init_seed": init,
                                "data": sa.params.get("data_name", "MNIST"),
                                "reached": v["reached"],
                                "status": v["status"], "steps": v["steps"],
                                "criterion_step": v["criterion_step"],
                                **{k: v[k] for k in ("train_loss", "train_acc", "test_loss",
                                                     "test_acc")},
                                "curve_rise": curve_rise(r.arrays["curve.t"],
                                                          r.arrays["curve.train_loss"]),
                                "param_norm": float(np.linalg.norm(flat_params(r.arrays))),
                                "pair_distance": dist, "criterion": cfg.criterion,
                                "target": cfg.target, "lr_scaling": cfg.lr_scaling})
    cols = ["pair", "seed", "alpha", "train_loss", "train_acc", "test_loss", "test_acc",
            "shared_init"]
    res = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=cols)
    return {"results": res[cols], "models": pd.DataFrame(models_rows),
            "curves": pd.concat(curves, ignore_index=True) if curves else pd.DataFrame()}


def figures(cfg: Config, tables) -> dict:
    """The figures, by name, drawn from the tables."""
    figs = {}
    res, mods, cur = tables["results"], tables["models"], tables["curves"]
    for i, (name, g) in enumerate(res.groupby("pair", sort=False)):
        ends = mods[mods.pair == name].drop_duplicates("end").set_index("end")
        labels = [f"bs {int(e.batch_size)}, lr {e.lr:g}" for e in ends.itertuples()]
        init = "shared init" if bool(g.shared_init.iloc[0]) else "independent inits"
        fig, axes = plotting.figure(ncols=3)
        for ax, key, scale, unit in ((axes[0], "loss", 1, "cross-entropy (log)"),
                                     (axes[1], "acc", 100, "accuracy (%)")):
            seed_lines(ax, g, "alpha", f"train_{key}", "C0", "train", scale)
            seed_lines(ax, g, "alpha", f"test_{key}", "C1", "test", scale)
            for a in (0, 1):
                ax.axvline(a, color="grey", lw=0.8, ls=":")
            if key == "loss":
                ax.set_yscale("log")
            plotting.finish(ax, f"{name} ({init}): {key}",
                            f"α  (0: {labels[0]}; 1: {labels[-1]})", unit)
        ax = axes[2]
        for j, (end, _e) in enumerate(ends.iterrows()):
            runs_ = mods[(mods.pair == name) & (mods.end == end)].run
            seed_lines(ax, cur[cur.run.isin(runs_)], "t", "train_loss", f"C{j + 2}",
                        f"{labels[j]} ({end})")
        ax.set_yscale("log")
        plotting.finish(ax, "filter-normalized curves around each end (Li et al.)",
                        "t (θ + t·d, d filter-normalized)", "train loss (log)")
        fig.suptitle(f"{len(g.seed.unique())} seeds: faint = one seed, bold = median; "
                     f"matched: {cfg.criterion_text()}", fontsize=8)
        figs[f"pair{i + 1}_{_slug(name)}"] = fig
    return figs


def _slug(text: str) -> str:
    return "".join(ch if ch.isalnum() else "_" for ch in text)[:40]


def _at(g: pd.DataFrame, alpha: float, col: str) -> pd.Series:
    """Per seed, the value of `col` at the grid α nearest `alpha`."""
    a = g.alpha.to_numpy()
    near = a[np.abs(a - alpha).argmin()]
    return g[g.alpha == near].set_index("seed")[col]


def _ends(mods: pd.DataFrame, name: str, end: str) -> pd.DataFrame:
    m = mods[(mods.pair == name) & (mods.end == end)]
    return m[m.reached.astype(bool)]


def statistics(cfg: Config, tables) -> dict:
    """The numbers over seeds behind the verdicts and observations (summary.json)."""
    res, mods = tables["results"], tables["models"]
    out: dict = {"matched_criterion": cfg.criterion_text(), "lr_scaling": cfg.lr_scaling,
                 "interval": "95% t-interval of the mean over seeds",
                 "pipeline_check": pipeline_reason(mods.drop_duplicates("run"), cfg),
                 "pairs": {}}
    for name, g in res.groupby("pair", sort=False):
        e0, e1 = _ends(mods, name, "alpha=0"), _ends(mods, name, "alpha=1")
        out["pairs"][name] = {
            **{f"{c}@{end}": stats.interval(e[c]).to_dict() for end, e in (("0", e0), ("1", e1))
               for c in ("train_loss", "test_acc", "steps", "curve_rise")},
            "train_loss_1_minus_0": stats.compare(e0.train_loss, e1.train_loss).to_dict(),
            "curve_rise_1_minus_0": stats.compare(e0.curve_rise, e1.curve_rise).to_dict(),
            "log10_loss_at_1.5_minus_at_-0.5": stats.compare(
                np.log10(_at(g, -0.5, "train_loss")), np.log10(_at(g, 1.5, "train_loss"))
            ).to_dict(),
            "max_train_loss_between": stats.interval(
                g[(g.alpha > 0) & (g.alpha < 1)].groupby("seed").train_loss.max()).to_dict(),
            "failures": stats.failure_rates(
                mods[mods.pair == name].drop_duplicates("run").status, ("missed", "diverged"))}
    return out


def verdicts(cfg: Config, tables) -> list[stats.Verdict]:
    """The published claims this run tests, each with its outcome."""
    res, mods = tables["results"], tables["models"]
    b1, b2 = cfg.batch_pair
    name = f"batch {b1} vs {b2}"
    li = ((f"On filter-normalized 1-D curves the batch-{b2} minimum is narrower (larger rise "
          f"of the train loss at t = ±{cfg.curve_range / 2:g}) than the batch-{b1} one"),
          "Li et al. 2018 (arXiv:1712.09913)", stats.published_for(
              "VGG-9 on CIFAR-10, batch 128 vs 8192 (Fig. 3): small-batch minima wider on "
              "filter-normalized plots", "CIFAR-10", stats.data_of(mods)))
    ke = ((f"On the line θ(α) from batch {b1} (α = 0) to batch {b2} (α = 1) the train loss "
          f"rises faster beyond the large-batch end (α = 1.5) than beyond the small-batch end "
          f"(α = −0.5)"), "Keskar et al. 2017 (arXiv:1609.04836)",
          stats.published_for("Fig. 3 (F1 on MNIST and others): sharp rise beyond the "
                              "large-batch solution", "MNIST", stats.data_of(mods)))
    why = pipeline_reason(mods.drop_duplicates("run"), cfg)
    if why is not None or name not in set(res.pair):
        why = why or "the batch pair did not finish"
        return [stats.pipeline_check(*li, why), stats.pipeline_check(*ke, why)]
    e0, e1 = _ends(mods, name, "alpha=0"), _ends(mods, name, "alpha=1")
    d = stats.compare(e0.curve_rise, e1.curve_rise)
    out = [stats.Verdict(*li, f"rise (bs {b2}) − rise (bs {b1}): {_diff_text(d, name, e0, e1)}",
                         stats.DIFFERENCE_RULE, stats.outcome_of_difference(d, +1))]
    g = res[res.pair == name]
    ok = set(e0.seed) & set(e1.seed)
    lo, hi = (np.log10(_at(g, a, "train_loss")) for a in (-0.5, 1.5))
    d2 = stats.compare(lo[lo.index.isin(ok)], hi[hi.index.isin(ok)])
    out.append(stats.Verdict(*ke, f"log10 train loss at α = 1.5 − at α = −0.5: "
                             f"{_diff_text(d2, name, e0, e1)}",
                             stats.DIFFERENCE_RULE, stats.outcome_of_difference(d2, +1)))
    return out


def observations(cfg: Config, tables) -> list[str]:
    """What this run shows, in sentences for the report."""
    res, mods = tables["results"], tables["models"]
    out = [(f"Matched training: {cfg.criterion_text()}; {cfg.lr_scaling_text()}; "
           f"{int(mods.drop_duplicates('run').reached.sum())} of "
           f"{mods.run.nunique()} models reached it. Numbers are medians [95% t-intervals of "
           f"the mean over seeds].")]
    why = pipeline_reason(mods.drop_duplicates("run"), cfg)
    if why:
        out.append(f"Pipeline check, not evidence: {why}. Numbers below include every model.")
    for name, g in res.groupby("pair", sort=False):
        m = mods[mods.pair == name]
        if not why:
            m = m[m.reached.astype(bool)]
        e0, e1 = m[m.end == "alpha=0"], m[m.end == "alpha=1"]
        init = "a shared init" if bool(g.shared_init.iloc[0]) else "independent inits"
        inside = g[(g.alpha > 0) & (g.alpha < 1)].groupby("seed").train_loss.max()
        text = (f"{name} ({init}, {g.seed.nunique()} seeds): steps {iv(e0.steps, '.0f')} vs "
                f"{iv(e1.steps, '.0f')}; train loss at α=0 {iv(e0.train_loss)} and at α=1 "
                f"{iv(e1.train_loss)}; test accuracy {iv(e0.test_acc, '.2f', 100)}% vs "
                f"{iv(e1.test_acc, '.2f', 100)}%; highest train loss between them "
                f"{iv(inside)}; train loss at α=−0.5 {iv(_at(g, -0.5, 'train_loss'))}, at "
                f"α=1.5 {iv(_at(g, 1.5, 'train_loss'))}; filter-normalized rise "
                f"{iv(e0.curve_rise)} vs {iv(e1.curve_rise)}; ‖θ₂ − θ₁‖ "
                f"{iv(e0.pair_distance)}.")
        d = stats.compare(e0.train_loss, e1.train_loss)
        ratio = float(e1.train_loss.median() / e0.train_loss.median()) if len(e0) else np.nan
        if not np.isfinite(d.diff):
            text += f" Endpoint train losses not compared: {_diff_text(d, name, e0, e1)}."
        elif d.clear or not 0.8 <= ratio <= 1.25:
            ratio_text = f", ratio of medians {ratio:.2f}" if np.isfinite(ratio) else ""
            text += (f" The endpoints sit at different train losses (α=1 − α=0: {d.text()}"
                     f"{ratio_text}): the curves compare different training states as well as "
                     "different minima.")
        out.append(text)
    return out


def ends_of(name: str) -> tuple[str, str]:
    """The two ends of a pair, from its name.

    Example:
        >>> ends_of("batch 64 vs 1024"), ends_of("lr 0.001 vs 0.01")
        (('batch 64', 'batch 1024'), ('lr 0.001', 'lr 0.01'))
    """
    kind, rest = name.split(" ", 1)
    a, b = rest.split(" vs ", 1)
    return f"{kind} {a}", f"{kind} {b}"


def _diff_text(d: stats.Difference, name: str, e0: pd.DataFrame, e1: pd.DataFrame) -> str:
    """`d.text()`, naming the end of pair `name` without a value: none of its models reached
    the criterion (`e0`, `e1`: the models of each end that count), or none has a value."""
    why = "reached the criterion" if not (len(e0) and len(e1)) else "has a finite value"
    return d.text(names=ends_of(name), empty="no model of {} " + why)


def headline(cfg: Config, tables) -> dict:
    """A few numbers that summarise this run (summary.json's headline)."""
    out: dict = {"shared_init": cfg.shared_init}
    res, mods = tables["results"], tables["models"]
    for name, g in res.groupby("pair", sort=False):
        for a in (-0.5, 0.0, 0.5, 1.0, 1.5):
            out[f"{name}/train_loss@{a:g}"] = float(_at(g, a, "train_loss").median())
        for end in ("alpha=0", "alpha=1"):
            out[f"{name}/curve_rise@{end}"] = float(
                mods[(mods.pair == name) & (mods.end == end)].curve_rise.median())
    return out
