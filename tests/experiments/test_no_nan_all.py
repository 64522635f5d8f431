"""No "nan", "inf" or "None" in what a reader sees, for every built-in experiment: each is fed
its tables in degenerate forms (every run failed, one seed per setting, a setting whose runs
all failed, a metric column all NaN) built by its own `analyze` from crafted run results (no
training; interpolation's tables are crafted directly, its `analyze` rebuilds models), and
its observations, verdicts, statistics (the strings the report shows) and headline are
checked; then the report of such a folder is rendered and its visible text checked."""

from __future__ import annotations

import json
import re
from html.parser import HTMLParser
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

from dlscope import experiments, models
from dlscope.contract import config as configs
from dlscope.contract.runspec import RunResult
from dlscope.report import build_report

BAD = re.compile(r"\b(nan|inf|none)\b|[-+](nan|inf)", re.IGNORECASE)
SCENARIOS = ("failed", "one_seed", "empty_group", "nan_metric")
NAN = float("nan")


def _spec(key: str, **params):
    return SimpleNamespace(key=key, params=params)


def _status(scenario: str, setting: int, bad: str = "diverged") -> str:
    """A run's status: all fail, or the first setting's runs fail (an empty group)."""
    if scenario == "failed" or (scenario == "empty_group" and setting == 0):
        return bad
    return "ok"


def _n_seeds(scenario: str) -> int:
    return 1 if scenario == "one_seed" else 3


# ---- one builder per experiment: (cfg, tables) -------------------------------------------

def function_fit(scenario):
    exp = experiments.get("function-fit")
    cfg = configs.resolve(exp, "assignment", overrides={"functions": ["sinc"],
                                                        "seeds": _n_seeds(scenario)})
    fam = exp.family(cfg)
    out = []
    for j, (label, spec) in enumerate(fam):
        for s in range(cfg.seeds):
            st = _status(scenario, j, "collapsed" if j else "diverged")
            loss = NAN if scenario == "nan_metric" or st == "diverged" else 1e-3 * (s + 1 + j)
            x = np.linspace(-1, 1, 20, dtype=np.float32)
            out.append((_spec(f"sinc/{label}/seed={s}", function="sinc", label=label,
                              model=spec.model_dump(mode="json"), seed=s),
                        RunResult(values={"final_loss": loss, "converged": st == "ok",
                                          "converged_epoch": None, "epochs_run": 100,
                                          "status": st, "stop_rule": "max_epochs", "wall_s": 1.0,
                                          "init_pred_std": 0.1},
                                  arrays={"loss": np.full(100, loss, np.float32), "x": x,
                                          "y_pred": np.zeros_like(x)})))
    return cfg, exp.analyze(cfg, out)


def mnist_models(scenario):
    exp = experiments.get("mnist-models")
    cfg = configs.resolve(exp, "assignment", overrides={"seeds": _n_seeds(scenario)})
    metrics = (*exp.METRICS, *exp.RUNNING)
    out = []
    for j, (label, spec) in enumerate(exp.model_list(cfg)):
        for s in range(cfg.seeds):
            st = _status(scenario, j)
            bad = st != "ok" or scenario == "nan_metric"
            curve = {k: np.full(11, NAN if bad else 0.9 + 0.001 * s) for k in metrics}
            out.append((_spec(f"{label}/seed={s}", label=label, seed=s,
                              model=spec.model_dump(mode="json"), input_shape=[1, 28, 28],
                              n_classes=10, data_name="MNIST"),
                        RunResult(values={"status": st, "params": 25000, "epochs_run": 10,
                                          "n_train": 60000, "wall_s": 1.0,
                                          **{k: float(v[-1]) for k, v in curve.items()}},
                                  arrays={"epoch": np.arange(11), **curve})))
    return cfg, exp.analyze(cfg, out)


def weight_pca(scenario):
    exp = experiments.get("weight-pca")
    cfg = configs.resolve(exp, "assignment", overrides={"null_walks": 2})
    n_runs = 1 if scenario == "one_seed" else 3
    rng = np.random.default_rng(0)
    out = []
    for i in range(n_runs):
        st = _status(scenario, i)
        n, dim = 25, 200
        if st != "ok":
            n = 6  # a diverged run stops: its last snapshot is its last finite epoch
        snaps = np.vstack([np.zeros(dim), rng.standard_normal((n - 1, dim))]).cumsum(0)
        metric = np.full(n, NAN) if st != "ok" or scenario == "nan_metric" else \
            np.linspace(1, 0.5, n)
        arrays = {"snapshots": snaps.astype(np.float32), "epoch": np.arange(n),
                  **{k: metric for k in ("train_loss", "train_acc", "test_loss", "test_acc")}}
        values = {"status": st, "run": i, "seed": i, "epochs_run": n - 1, "params": dim,
                  "layer1": [0, dim // 2], "wall_s": 1.0,
                  **{k: float(metric[-1]) for k in ("train_loss", "train_acc", "test_acc")}}
        out.append((_spec(f"run{i}", data_name="MNIST"), RunResult(values=values,
                                                                   arrays=arrays)))
    return cfg, exp.analyze(cfg, out)


def grad_norm(scenario):
    exp = experiments.get("grad-norm")
    cfg = configs.resolve(exp, "assignment", overrides={"seeds": _n_seeds(scenario)})
    out = []
    for j, task in enumerate(cfg.tasks):
        model = cfg.function_model if task == "function" else "mlp:784-32-10"
        for s in range(cfg.seeds):
            st = _status(scenario, j)
            loss = np.geomspace(1, 1e-3, 300)
            g = np.geomspace(1, 1e-2, 300)
            if st != "ok":
                loss[150:], g[150:] = np.nan, np.nan
            if scenario == "nan_metric":  # one finite step: no window, no correlation
                loss[1:], g[1:] = np.nan, np.nan
            out.append((_spec(f"{task}/seed={s}", task=task, seed=s, what="sinc",
                              model=models.parse_model(model).model_dump(mode="json")),
                        RunResult(values={"status": st, "steps": 300, "epochs_run": 3,
                                          "steps_per_epoch": 100, "batch": 100, "n_train": 1000,
                                          "params": 1000, "wall_s": 1.0},
                                  arrays={"loss": loss.astype(np.float32),
                                          "grad_norm": g.astype(np.float32)})))
    return cfg, exp.analyze(cfg, out)


def minimal_ratio(scenario):
    exp = experiments.get("minimal-ratio")
    n = 1 if scenario == "one_seed" else 6
    cfg = configs.resolve(exp, "assignment", overrides={"runs": max(n, 2)})
    out = []
    for i in range(n):
        missed = scenario == "failed" or (scenario == "empty_group" and i % 2 == 0)
        nan = scenario == "nan_metric"
        ev = np.linspace(-0.1 * i, 1.0, 13)   # run_one refuses a non-finite Hessian
        values = {k: NAN for k in exp.COLUMNS}
        values.update(run=i, start_epochs=10, loss=NAN if nan else 1e-3 * (i + 1),
                      grad_norm=1e-4 if missed else 1e-10, reached=not missed, n_params=13,
                      minimal_ratio=NAN if nan else 0.5, index=NAN if nan else 0.1 * i,
                      frac_zero=0.0, kind="degenerate" if nan else "saddle",
                      tol=NAN if nan else 1e-9, status="missed" if missed else "ok",
                      stalled=False, steps=10)
        out.append((_spec(f"run{i:03d}"), RunResult(values=values, arrays={"eigenvalues": ev})))
    return cfg, exp.analyze(cfg, out)


def curvature(scenario):
    exp = experiments.get("curvature")
    cfg = configs.resolve(exp, "assignment", overrides={"seeds": _n_seeds(scenario)})
    out = []
    for s in range(cfg.seeds):
        st = _status(scenario, s)
        nan = st != "ok" or scenario == "nan_metric"
        rows = []
        for e in cfg.checkpoints:
            row = {"epoch": e, "lambda_max": NAN if nan else 10.0 + s, "trace": NAN if nan
                   else 50.0, "trace_se": NAN if nan else 1.0, "trace_probes": 40,
                   "loss": NAN if nan else 0.3}
            if e in (min(cfg.checkpoints), max(cfg.checkpoints)):
                row |= {"mass_band": NAN if nan else 0.95, "bulk_edge": NAN if nan else 0.1,
                        "slq_lambda_min": NAN if nan else -0.01,
                        "slq_lambda_max": NAN if nan else 10.0,
                        "outlier_ratio": NAN if nan else 100.0}
            rows.append(row)
        out.append((_spec(f"seed{s}", seed=s),
                    RunResult(values={"status": st, "rows": rows, "wall_s": 1.0,
                                      "params": 1000})))
    return cfg, exp.analyze(cfg, out)


def random_labels(scenario):
    exp = experiments.get("random-labels")
    cfg = configs.resolve(exp, "assignment", overrides={"seeds": _n_seeds(scenario)})
    out = []
    for s in range(cfg.seeds):
        st = _status(scenario, 0 if scenario == "failed" else 1)
        nan = st != "ok" or scenario == "nan_metric"
        n = cfg.epochs + 1
        a = {k: np.full(n, NAN) if nan else np.linspace(0.1, 0.3, n) for k in (
            "train_loss", "train_acc", "test_loss", "test_acc", "running_loss", "running_acc")}
        out.append((_spec(f"seed={s}", seed=s, model=cfg.model, data_name="MNIST"),
                    RunResult(values={"status": st, "epochs_run": cfg.epochs, "wall_s": 1.0,
                                      "n_train": 10000, "labels_changed": 0.9, "params": 1000},
                              arrays={"epoch": np.arange(n), "lr": np.full(n, cfg.lr), **a})))
    return cfg, exp.analyze(cfg, out)


def param_count(scenario):
    exp = experiments.get("param-count")
    cfg = configs.resolve(exp, "assignment", overrides={"widths": [4, 8, 16],
                                                        "seeds": _n_seeds(scenario)})
    out = []
    for j, w in enumerate(cfg.widths):
        model = f"mlp:784-{w}-10"
        for s in range(cfg.seeds):
            st = _status(scenario, len(cfg.widths) - 1 - j)  # empty group: the largest
            nan = st != "ok" or scenario == "nan_metric"
            m = {k: NAN if nan else 0.995 for k in ("train_loss", "train_acc", "test_loss",
                                                      "test_acc")}
            out.append((_spec(f"{model}/seed={s}", model=model, seed=s, data_name="MNIST"),
                        RunResult(values={"status": st, "epochs_run": 30, "wall_s": 1.0,
                                          "module_params": models.count_params(model),
                                          "n_train": 5000, **m})))
    return cfg, exp.analyze(cfg, out)


def sensitivity(scenario):
    exp = experiments.get("sensitivity")
    cfg = configs.resolve(exp, "assignment", overrides={"seeds": _n_seeds(scenario)})
    sharp = [f"sharpness@{e:g}" for e in cfg.sharpness_epsilons]
    out = []
    for j, bs in enumerate(cfg.batch_sizes):
        for s in range(cfg.seeds):
            # the largest batch misses (an empty group) while most models reach the criterion
            missed = scenario == "failed" or (scenario == "empty_group"
                                              and j == len(cfg.batch_sizes) - 1)
            nan = scenario == "nan_metric"
            v = {k: NAN if nan else 0.1 * (j + 1) + 0.01 * s for k in (
                "train_loss", "train_acc", "test_loss", "test_acc", "sensitivity",
                "sensitivity_logits", "loss_grad_norm", "lambda_max", *sharp)}
            out.append((_spec(f"bs={bs}/seed={s}", seed=s, data_name="MNIST",
                              train={"batch_size": bs, "lr": cfg.lr}),
                        RunResult(values={**v, "status": "missed" if missed else "ok",
                                          "reached": not missed, "steps": 100,
                                          "criterion_step": None if missed else 100,
                                          "train_wall_s": 1.0})))
    return cfg, exp.analyze(cfg, out)


def interpolation(scenario):
    """Crafted in the shape `analyze` returns (it rebuilds models and evaluates them)."""
    exp = experiments.get("interpolation")
    cfg = configs.resolve(exp, "assignment", overrides={"seeds": _n_seeds(scenario)})
    alphas = np.linspace(cfg.alpha_min, cfg.alpha_max, 7)
    res, mods, curves = [], [], []
    for k, pr in enumerate(exp.pairs(cfg)):
        missed = scenario == "failed" or (scenario == "empty_group" and pr["setting"] ==
                                          "batch_size")
        nan = scenario == "nan_metric"
        for a in alphas:
            res.append({"pair": pr["pair"], "seed": pr["seed"], "alpha": a,
                        "train_loss": NAN if nan else 0.1 + a ** 2, "train_acc": 0.9,
                        "test_loss": 0.2, "test_acc": 0.9, "shared_init": cfg.shared_init})
        for end, (bs, lr, init) in (("alpha=0", pr["a"]), ("alpha=1", pr["b"])):
            run = f"bs={bs},lr={lr:g},init={init},seed={pr['seed']}"
            # one end of the batch pair misses: that side of the comparison is empty
            miss = missed and (scenario == "failed" or end == "alpha=1")
            mods.append({"pair": pr["pair"], "seed": pr["seed"], "end": end, "run": run,
                         "batch_size": bs, "lr": lr, "init_seed": init, "data": "MNIST",
                         "reached": not miss, "status": "missed" if miss else "ok",
                         "steps": 100, "criterion_step": None if miss else 100,
                         "train_loss": NAN if nan else 0.01 * (k + 1), "train_acc": 0.99,
                         "test_loss": 0.2, "test_acc": 0.97,
                         "curve_rise": NAN if nan else 0.5, "param_norm": 10.0,
                         "pair_distance": NAN if nan else 3.0, "criterion": cfg.criterion,
                         "target": cfg.target, "lr_scaling": cfg.lr_scaling})
            curves.append(pd.DataFrame({"t": [-1.0, 0.0, 1.0], "train_loss": [1.0, 0.1, 1.0],
                                        "run": run, "seed": pr["seed"], "batch_size": bs,
                                        "lr": lr}))
    return cfg, {"results": pd.DataFrame(res), "models": pd.DataFrame(mods),
                 "curves": pd.concat(curves, ignore_index=True)}


BUILDERS = {"function-fit": function_fit, "mnist-models": mnist_models,
            "weight-pca": weight_pca, "grad-norm": grad_norm, "minimal-ratio": minimal_ratio,
            "curvature": curvature, "random-labels": random_labels, "param-count": param_count,
            "interpolation": interpolation, "sensitivity": sensitivity}


def test_every_builtin_experiment_is_covered():
    assert set(BUILDERS) == set(experiments.BUILTIN)


def _strings(obj) -> list[str]:
    """Every string inside a JSON-like object (the report shows them)."""
    if isinstance(obj, str):
        return [obj]
    if isinstance(obj, dict):
        return [s for v in obj.values() for s in _strings(v)]
    if isinstance(obj, (list, tuple)):
        return [s for v in obj for s in _strings(v)]
    return []


def _reader_texts(exp, cfg, tables) -> list[str]:
    texts = list(exp.observations(cfg, tables))
    for v in exp.verdicts(cfg, tables):
        texts += [v.claim, v.source, v.published, v.statistic, v.rule, v.outcome]
    st = exp.statistics(cfg, tables)
    json.dumps(st, allow_nan=True)                   # summary.json can hold it
    # the method of an interval of no value is the token "none" (data; the report words it)
    texts += [s for s in _strings(st) if s != "none"]
    for k, v in exp.headline(cfg, tables).items():
        texts.append(k)
        assert v is None or isinstance(v, (bool, int, float, str)), (k, v)
    return texts


@pytest.mark.parametrize("scenario", SCENARIOS)
@pytest.mark.parametrize("name", list(BUILDERS))
def test_degenerate_tables_read_without_nan(name, scenario):
    exp = experiments.get(name)
    cfg, tables = BUILDERS[name](scenario)
    texts = _reader_texts(exp, cfg, tables)
    bad = [t for t in texts if BAD.search(t)]
    assert not bad, bad
    assert texts


@pytest.mark.parametrize("name, scenario, words", [
    ("sensitivity", "empty_group", "no model of batch 4096 reached the criterion"),
    ("interpolation", "empty_group", "no model of batch 1024 reached the criterion"),
    ("param-count", "failed", "no model finished"),
    ("mnist-models", "one_seed", "1 seed: no interval"),
])
def test_missing_statistics_are_said_in_words(name, scenario, words):
    exp = experiments.get(name)
    cfg, tables = BUILDERS[name](scenario)
    assert any(words in t for t in _reader_texts(exp, cfg, tables)), words


# ---- the rendered report ------------------------------------------------------------------

class Visible(HTMLParser):
    """The text a reader sees, each piece with what it belongs to: the kv key (dt) of a dd,
    or the column header of a td."""

    def __init__(self, text: str):
        super().__init__(convert_charrefs=True)
        self.pieces: list[tuple[str, str]] = []
        self._skip = 0
        self._where: list[str] = []
        self._key = ""
        self._heads: list[str] = []
        self._col = -1
        self._tag = ""
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        if tag in ("style", "script"):
            self._skip += 1
        if tag == "thead":
            self._heads = []
        if tag == "tr":
            self._col = -1
        if tag == "td":
            self._col += 1
        if tag == "th":
            self._heads.append("")    # a header may come in pieces (<wbr> after "_")
        self._where.append(tag)
        self._tag = tag

    def handle_endtag(self, tag):
        if tag in ("style", "script"):
            self._skip -= 1
        while self._where and self._where.pop() != tag:
            pass

    def handle_data(self, data):
        if self._skip or not data.strip():
            return
        where = ""
        if "th" in self._where:
            self._heads[-1] += data.strip()
        elif "dt" in self._where:
            self._key = data.strip()
        elif "dd" in self._where:
            where = self._key
        elif "td" in self._where and 0 <= self._col < len(self._heads):
            where = self._heads[self._col]
        self.pieces.append((where, data))


def _write_folder(root, scenario):
    """A results folder holding every experiment's degenerate tables and summary."""
    from dlscope.execution.store import write_json

    for name, build in BUILDERS.items():
        exp = experiments.get(name)
        cfg, tables = build(scenario)
        d = root / name
        d.mkdir(parents=True)
        (d / "config.toml").write_text(configs.to_toml(cfg))
        for t, df in tables.items():
            (d / f"{t}.csv").write_text(df.to_csv(index=False))
        write_json(d / "summary.json", {
            "experiment": name, "title": exp.TITLE, "section": exp.SECTION,
            "question": exp.QUESTION, "profile": "assignment", "wall_s": 1.0, "runs": 3,
            "failed": [], "flagged": [], "observations": exp.observations(cfg, tables),
            "headline": exp.headline(cfg, tables), "statistics": exp.statistics(cfg, tables),
            "verdicts": [v.to_dict() for v in exp.verdicts(cfg, tables)]})
    return root


@pytest.mark.parametrize("scenario", ["failed", "one_seed", "empty_group"])
def test_report_of_degenerate_folder_shows_no_nan(tmp_path, scenario):
    page = build_report(_write_folder(tmp_path, scenario)).read_text()
    pieces = Visible(page).pieces
    # the option value `lr_scaling = "none"` is the user's own word, shown as typed
    bad = [(w, t) for w, t in pieces if BAD.search(t)
           and not (w == "lr_scaling" and t.strip() == "none")]
    assert not bad, bad[:20]
    if scenario == "failed":            # a NaN cell of results.csv shows a dash
        assert ("test_acc", "—") in pieces
    if scenario == "one_seed":          # an interval of one value says so
        assert ("method", "no interval: one value") in pieces
