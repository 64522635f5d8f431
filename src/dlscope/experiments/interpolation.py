"""interpolation (HW1 1-3, flatness vs generalization part 1): what lies on the straight
line between two trained models that differ in one training setting?

Setup: pairs of MLPs 784-128-64-10 trained with Adam on all 60,000 MNIST images for 10
epochs, each pair differing in one setting: batch 64 vs 1024 (lr 1e-3), and lr 1e-3 vs 1e-2
(batch 64). By default both models of a pair start from the same initialization
(`shared_init`, recorded in results.csv and summary.json); with independent inits the second
model uses init seed `seed + 1`. The (batch 64, lr 1e-3) model is common to both pairs and is
trained once: one RunSpec per distinct training, each saving its final parameters as arrays.
analyze() rebuilds the models and evaluates θ(α) = (1−α)θ₁ + αθ₂ (metrics.interpolation) at
31+ values of α on [−1, 2] (exactly 0 and 1 included) on the whole train and test sets, in
eval mode under no_grad, without retraining.

Expected (Keskar et al. 2017, arXiv:1609.04836; Goodfellow et al. 2015): from a shared init
the loss along the line has no (or a small) barrier between the two solutions and rises
outside [0, 1], faster beyond the large-batch model, the sharper minimum, whose test
accuracy is a little lower (for SGD a larger lr acts like a smaller batch; with Adam the lr
pair is an open question here). Independent inits give a barrier
near α = 0.5 that says nothing about flatness.
Measured (assignment profile, shared init, seed 0): batch 64 vs 1024: train loss 0.019 /
0.067 at α = 0 / 1 (test 97.70% / 97.09%), a small bump (0.092 at α = 0.7) between them;
half a step beyond each end the train loss is 0.075 at α = -0.5 (small batch) but 5.6 at
α = 1.5 (large batch): the loss rises much faster beyond the large-batch model. lr 1e-3 vs
1e-2: train loss 0.019 / 0.119 (test 97.70% / 96.07%), a barrier of 0.52 at α = 0.2; 868 at
α = -0.5 but 0.26 at α = 1.5: the lr-1e-2 model has moved far from the shared init
(‖θ₂‖ = 160 vs ‖θ₁‖ = 28; ‖θ₂ − θ₁‖ = 158 against 25 for the batch pair), so α = -0.5 is a
long step from θ₁, and its loss says more about θ₂'s scale than about θ₁'s flatness
(models.csv records the norms).

Wall time on this 2-core CPU, shared with other jobs while measured (load ~3): assignment
67 s (3 trainings on 2 process workers, then 62 evaluations of 70,000 images); quick 15 s
(2,000 training images, 2 epochs, 11 α values).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch
from pydantic import Field, field_validator, model_validator

from dlscope import models, plotting
from dlscope.execution.config import ExperimentConfig
from dlscope.data import MnistOptions, mnist_dataset
from dlscope.train.engine import TrainConfig
from dlscope.experiments.common import mnist_spec, train_and_evaluate
from dlscope.metrics.interpolation import alpha_grid, evaluate_classifier, interpolate
from dlscope.execution.runspec import RunResult, RunSpec

NAME = "interpolation"
SECTION = "1-3"
TITLE = "Flatness vs generalization: linear interpolation between two models"
QUESTION = ("Along the line between two models trained with different batch sizes (or learning "
            "rates), how do train and test loss and accuracy change?")


class Config(ExperimentConfig):
    model: str = Field("mlp:784-128-64-10", description="MNIST model of every training")
    batch_pair: list[int] = Field([64, 1024], min_length=2, max_length=2,
                                  description="batch sizes of the batch pair (lr = lr)")
    lr_pair: list[float] = Field([1e-3, 1e-2], min_length=2, max_length=2,
                                 description="learning rates of the lr pair (batch = batch_size)")
    batch_size: int = Field(64, ge=1, description="batch size of the lr pair")
    lr: float = Field(1e-3, gt=0, description="Adam learning rate of the batch pair")
    epochs: int = Field(10, ge=1, description="training epochs of every model")
    shared_init: bool = Field(True, description="both models of a pair start from one init")
    train_subset: int = Field(0, ge=0, le=60000,
                              description="training images (seeded subset); 0: all 60,000")
    n_alpha: int = Field(31, ge=3, description="evenly spaced α values (0 and 1 always added)")
    alpha_min: float = Field(-1.0, description="first α")
    alpha_max: float = Field(2.0, description="last α")
    seed: int = Field(0, ge=0, description="seed of init, batch order and subset")

    @field_validator("model")
    @classmethod
    def _model(cls, v: str) -> str:
        mnist_spec(v)
        return v

    @field_validator("lr_pair")
    @classmethod
    def _lrs(cls, v: list[float]) -> list[float]:
        if min(v) <= 0:
            raise ValueError("learning rates must be > 0")
        return v

    @model_validator(mode="after")
    def _alphas(self):
        if not self.alpha_min < self.alpha_max:
            raise ValueError(f"alpha_min ({self.alpha_min}) must be below alpha_max "
                             f"({self.alpha_max})")
        return self

    @field_validator("batch_pair")
    @classmethod
    def _batches(cls, v: list[int]) -> list[int]:
        if min(v) < 1:
            raise ValueError("batch sizes must be >= 1")
        return v


PROFILES = {"quick": {"train_subset": 2000, "epochs": 2, "n_alpha": 11}}


def data_options(cfg: Config) -> dict:
    flatten = isinstance(mnist_spec(cfg.model), models.MLPSpec)
    return {"train_subset": cfg.train_subset or None, "seed": cfg.seed, "flatten": flatten}


def pairs(cfg: Config) -> list[dict]:
    """Each pair: name, the setting that differs, and the two trainings (bs, lr, init seed)."""
    second = cfg.seed if cfg.shared_init else cfg.seed + 1
    b1, b2 = cfg.batch_pair
    l1, l2 = cfg.lr_pair
    return [{"pair": f"batch {b1} vs {b2}", "setting": "batch_size",
             "a": (b1, cfg.lr, cfg.seed), "b": (b2, cfg.lr, second)},
            {"pair": f"lr {l1:g} vs {l2:g}", "setting": "lr",
             "a": (cfg.batch_size, l1, cfg.seed), "b": (cfg.batch_size, l2, second)}]


def _key(t: tuple) -> str:
    return f"bs={t[0]},lr={t[1]:g},init={t[2]}"


def runs(cfg: Config) -> list[RunSpec]:
    spec = mnist_spec(cfg.model).model_dump(mode="json")
    out: dict[str, RunSpec] = {}
    for pr in pairs(cfg):
        for bs, lr, init in (pr["a"], pr["b"]):
            tc = TrainConfig(lr=lr, batch_size=bs, epochs=cfg.epochs, eval_test=False)
            out.setdefault(_key((bs, lr, init)), RunSpec(
                NAME, _key((bs, lr, init)), f"{__name__}:run_fn",
                {"model": spec, "data": data_options(cfg), "train": tc.model_dump(),
                 "init_seed": init, "seed": cfg.seed}))
    return list(out.values())


def run_fn(p: dict, ctx) -> RunResult:
    model, ds, res, m = train_and_evaluate(p, ctx, init_seed=p["init_seed"])
    arrays = {f"param.{k}": v.detach().cpu().numpy() for k, v in model.state_dict().items()}
    return RunResult(values={"status": res.status, "epochs_run": res.epochs_run,
                             "wall_s": res.wall_s, **m}, arrays=arrays)


def rebuild(params: dict, arrays: dict) -> torch.nn.Module:
    """The trained model of a run, from its spec params and saved arrays."""
    model = models.build(models.parse_model(params["model"]))
    state = {k[len("param."):]: torch.from_numpy(np.array(v)) for k, v in arrays.items()
             if k.startswith("param.")}
    model.load_state_dict(state)
    return model.eval()


def _flat(arrays: dict) -> np.ndarray:
    return np.concatenate([np.ravel(v).astype(np.float64) for k, v in sorted(arrays.items())
                           if k.startswith("param.")])


def analyze(cfg: Config, results) -> dict[str, pd.DataFrame]:
    by_key = {spec.key: (spec, r) for spec, r in results}
    ds = mnist_dataset(MnistOptions(**data_options(cfg)))
    ev_train = evaluate_classifier(ds.x_train, ds.y_train, batch_size=10000)
    ev_test = evaluate_classifier(ds.x_test, ds.y_test, batch_size=10000)

    def ev(model):
        tr, te = ev_train(model), ev_test(model)
        return {"train_loss": tr["loss"], "train_acc": tr["acc"], "test_loss": te["loss"],
                "test_acc": te["acc"]}

    alphas = alpha_grid(cfg.n_alpha, cfg.alpha_min, cfg.alpha_max)
    frames, models_rows = [], []
    for pr in pairs(cfg):
        ka, kb = _key(pr["a"]), _key(pr["b"])
        if ka not in by_key or kb not in by_key:
            continue  # a failed training: its pair is left out (the runner lists failures)
        (sa, ra), (sb, rb) = by_key[ka], by_key[kb]
        with torch.inference_mode():
            df = interpolate(rebuild(sa.params, ra.arrays), rebuild(sb.params, rb.arrays),
                             alphas, ev)
        df.insert(0, "pair", pr["pair"])
        df["shared_init"] = cfg.shared_init
        frames.append(df)
        dist = float(np.linalg.norm(_flat(ra.arrays) - _flat(rb.arrays)))
        for end, (bs, lr, init), r in (("alpha=0", pr["a"], ra), ("alpha=1", pr["b"], rb)):
            models_rows.append({"pair": pr["pair"], "end": end, "run": _key((bs, lr, init)),
                                "batch_size": bs, "lr": lr, "init_seed": init,
                                **{k: r.values[k] for k in ("train_loss", "train_acc",
                                                            "test_loss", "test_acc")},
                                "param_norm": float(np.linalg.norm(_flat(r.arrays))),
                                "pair_distance": dist})
    cols = ["pair", "alpha", "train_loss", "train_acc", "test_loss", "test_acc", "shared_init"]
    res = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=cols)
    return {"results": res[cols], "models": pd.DataFrame(models_rows)}


_WORD = {"loss": "loss", "acc": "accuracy"}


def figures(cfg: Config, tables) -> dict:
    figs = {}
    res, mods = tables["results"], tables["models"]
    for i, (name, g) in enumerate(res.groupby("pair", sort=False)):
        ends = mods[mods.pair == name].set_index("end")
        labels = [f"bs {int(e.batch_size)}, lr {e.lr:g}" for e in ends.itertuples()]
        fig, (ax1, ax2) = plotting.figure(ncols=2)
        for ax, key, scale, unit in ((ax1, "loss", 1, "cross-entropy (log)"),
                                     (ax2, "acc", 100, "accuracy (%)")):
            ax.plot(g.alpha, scale * g[f"train_{key}"], "o-", ms=3, label="train")
            ax.plot(g.alpha, scale * g[f"test_{key}"], "s--", ms=3, label="test")
            for a in (0, 1):
                ax.axvline(a, color="grey", lw=0.8, ls=":")
            if key == "loss":
                ax.set_yscale("log")
            init = "shared init" if bool(g.shared_init.iloc[0]) else "independent inits"
            plotting.finish(ax, f"{name} ({init}): {_WORD[key]}",
                            f"α  (0: {labels[0]}; 1: {labels[-1]})", unit)
        figs[f"pair{i + 1}_{_slug(name)}"] = fig
    return figs


def _slug(text: str) -> str:
    return "".join(ch if ch.isalnum() else "_" for ch in text)[:40]


def _at(g: pd.DataFrame, alpha: float, col: str) -> float:
    return float(g.loc[(g.alpha - alpha).abs().idxmin(), col])


def observations(cfg: Config, tables) -> list[str]:
    out = []
    res, mods = tables["results"], tables["models"]
    for name, g in res.groupby("pair", sort=False):
        inside = g[(g.alpha > 0) & (g.alpha < 1)]
        ends = mods[mods.pair == name].set_index("end")
        e0, e1 = ends.loc["alpha=0"], ends.loc["alpha=1"]
        init = "a shared init" if bool(g.shared_init.iloc[0]) else "independent inits"
        text = (f"{name} ({init}): train loss {_at(g, 0, 'train_loss'):.3g} at α=0 and "
                f"{_at(g, 1, 'train_loss'):.3g} at α=1; test accuracy "
                f"{100 * e0.test_acc:.2f}% vs {100 * e1.test_acc:.2f}%.")
        if len(inside):
            text += (f" Highest train loss between them {inside.train_loss.max():.3g} "
                     f"(α={inside.loc[inside.train_loss.idxmax(), 'alpha']:.2f}).")
        a_lo, a_hi = _at(g, -0.5, "alpha"), _at(g, 1.5, "alpha")
        lo, hi = _at(g, -0.5, "train_loss"), _at(g, 1.5, "train_loss")
        text += (f" Outside: train loss {lo:.3g} at α={a_lo:g} (beyond the first "
                 f"model), {hi:.3g} at α={a_hi:g} (beyond the second); ‖θ₂ − θ₁‖ = "
                 f"{e0.pair_distance:.3g}, ‖θ₁‖ = {e0.param_norm:.3g}, ‖θ₂‖ = "
                 f"{e1.param_norm:.3g}.")
        out.append(text)
    return out


def headline(cfg: Config, tables) -> dict:
    out: dict = {"shared_init": cfg.shared_init}
    for name, g in tables["results"].groupby("pair", sort=False):
        for a in (-0.5, 0.0, 0.5, 1.0, 1.5):
            out[f"{name}/train_loss@{_at(g, a, 'alpha'):g}"] = _at(g, a, "train_loss")
    return out
