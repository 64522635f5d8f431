"""function-fit end to end: every table and figure, matched budgets, one row per seed,
collapse detected and excluded, divergence kept and shown, verdicts on known tables."""

import json

import numpy as np
import pandas as pd
import pytest
import torch

import dlscope
from dlscope import models
from dlscope.experiments import function_fit as ff
from dlscope.experiments.common import slugs


def test_quick_run_writes_everything(tmp_path):
    r = dlscope.run("function-fit", profile="quick", out=tmp_path, epochs=200, n_train=100,
                    functions=["sinc", "expr:x**2"], threads=1)
    root = tmp_path / "function-fit"
    res = pd.read_csv(root / "results.csv")
    assert list(res.columns[:11]) == ["function", "model", "depth", "widths", "params", "seed",
                                      "final_loss", "converged", "converged_epoch",
                                      "epochs_run", "status"]
    # quick profile: 2 seeds per function and depth, one row each
    assert len(res) == 12 and set(res.model) == {"shallow", "middle", "deep"}
    assert all(sorted(g.seed) == [0, 1] for _, g in res.groupby(["function", "model"]))
    assert (res.params.max() - res.params.min()) / res.params.min() <= 0.01
    assert set(res.init) == {ff.INIT}                         # the init is stated per run
    curves = pd.read_csv(root / "curves.csv")
    assert set(curves.columns) == {"function", "model", "seed", "epoch", "loss"}
    # The curve's last point is the reported final loss (same numbers, two tables).
    for row in res.itertuples():
        c = curves[(curves.function == row.function) & (curves.model == row.model)
                   & (curves.seed == row.seed)]
        assert c.epoch.iloc[-1] == row.epochs_run
        assert np.isclose(c.loss.iloc[-1], row.final_loss, rtol=1e-6)
    pred = pd.read_csv(root / "predictions.csv")
    sq = pred[pred.function == "expr:x**2"]
    assert np.allclose(sq.y_true, sq.x ** 2, atol=1e-6)  # ground truth is the closed form
    for name in ["sinc_loss", "sinc_fit", "expr_x__2_loss", "expr_x__2_fit", "final_loss"]:
        png = root / "figures" / f"{name}.png"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5000
    summary = json.loads((root / "summary.json").read_text())
    assert summary["observations"] == r.observations and len(r.observations) == 4
    st = summary["statistics"]
    assert set(st["settings"]) == {f"{f}/{m}" for f in ("sinc", "expr:x**2")
                                   for m in ("shallow", "middle", "deep")}
    for s in st["settings"].values():
        assert {"median", "lo", "hi", "n", "method"} <= set(s["log10_final_loss"])
        assert s["failures"]["runs"] == 2 and "collapsed_rate" in s["failures"]
    assert set(st["collapse_rate_by_depth"]) == {"shallow", "middle", "deep"}
    assert st["collapse_rate_by_depth"]["deep"] == res[res.model == "deep"].collapsed.mean()
    # 300 steps: under-trained, a pipeline check instead of a verdict
    assert [v["outcome"] for v in summary["verdicts"]] == ["pipeline check"]
    assert {"claim", "source", "published", "statistic", "rule"} <= set(summary["verdicts"][0])
    env = json.loads((root / "env.json").read_text())
    assert env["torch"] and env["threads_per_run"] == 1
    loaded = dlscope.load(root)  # tables from CSV, figures redrawn
    assert set(loaded.figures) == set(r.figures)
    pd.testing.assert_frame_equal(loaded.tables["results"], res)


def test_diverging_runs_are_kept_marked_and_listed(tmp_path):
    r = dlscope.run("function-fit", profile="quick", out=tmp_path, lr=1e6, epochs=100,
                    functions=["sin-log"], threads=1, seeds=1)
    res = r.tables["results"]
    diverged = res[res.status == "diverged"]
    assert len(diverged) >= 1 and len(res) == 3  # the sweep went on
    flagged = {f["run"]: f["status"] for f in r.summary["flagged"]}
    assert {f"sin-log/{m}/seed=0" for m in diverged.model} <= set(flagged)
    assert set(flagged.values()) <= {"diverged", "collapsed"}
    assert any("diverged" in o for o in r.observations)


def test_colliding_function_names_get_distinct_files(tmp_path):
    names = slugs(["expr:x+2", "expr:x*2", "sinc"])
    assert names["sinc"] == "sinc"
    assert names["expr:x+2"] != names["expr:x*2"]
    assert names["expr:x+2"].startswith("expr_x_2_") and names["expr:x*2"].startswith("expr_x_2_")
    r = dlscope.run("function-fit", profile="quick", out=tmp_path, epochs=20, n_train=16,
                    functions=["expr:x+2", "expr:x*2"], depths=[1, 2], seeds=1, threads=1,
                    executor="local")
    figs = sorted(p.name for p in (tmp_path / "function-fit" / "figures").glob("*.png"))
    assert len(figs) == 5 and len(r.figures) == 5           # 2 per function + final_loss
    assert {f"{names[f]}_{k}.png" for f in ("expr:x+2", "expr:x*2") for k in ("loss", "fit")} \
        <= set(figs)


def _dead_relu_net() -> torch.nn.Module:
    """A 1-8-8-1 ReLU net whose first layer outputs only negatives on [-1, 1]: every ReLU is
    dead, the output is the last bias whatever x is."""
    net = models.build(models.MLPSpec(input_dim=1, hidden=(8, 8), output_dim=1))
    with torch.no_grad():
        net[0].weight.fill_(0.1)
        net[0].bias.fill_(-5.0)
    return net


def test_dead_relu_net_is_detected_as_collapsed():
    x = np.linspace(-1, 1, 200, dtype=np.float32)
    y_true = np.sinc(5 * x)
    dead = _dead_relu_net()
    live = models.build(models.MLPSpec(input_dim=1, hidden=(8, 8), output_dim=1))
    with torch.no_grad():
        y_dead = dead(torch.from_numpy(x[:, None])).numpy()[:, 0]
        y_live = live(torch.from_numpy(x[:, None])).numpy()[:, 0]
    assert np.ptp(y_dead) == 0                               # closed form: a constant
    assert ff.is_collapsed(y_dead, y_true)
    assert not ff.is_collapsed(y_true, y_true) and not ff.is_collapsed(y_live, y_true)


def _table(shallow, deep, deep_status=None, fn="sinc") -> dict:
    rows = []
    for model, depth, losses in (("shallow", 1, shallow), ("deep", 7, deep)):
        for s, loss in enumerate(losses):
            status = (deep_status or {}).get(s, "converged") if model == "deep" else "converged"
            rows.append({"function": fn, "model": model, "depth": depth, "params": 550,
                         "seed": s, "final_loss": loss, "status": status,
                         "collapsed": status == "collapsed", "converged": True,
                         "epochs_run": 100})
    df = pd.DataFrame(rows)
    df["log10_final_loss"] = np.log10(df.final_loss)
    return {"results": df}


def test_collapsed_runs_are_counted_and_left_out_of_the_median():
    # deep: 9 good seeds at 1e-4 and one collapsed at 0.1 (the constant fit)
    t = _table([1e-3] * 10, [1e-4] * 9 + [0.1], deep_status={9: "collapsed"})
    st = ff.statistics(ff.Config(), t)
    deep = st["settings"]["sinc/deep"]
    assert deep["log10_final_loss"]["n"] == 9
    assert deep["log10_final_loss"]["median"] == pytest.approx(-4.0)
    assert deep["failures"]["collapsed"] == 1 and deep["failures"]["collapsed_rate"] == 0.1
    assert st["collapse_rate_by_depth"] == {"shallow": 0.0, "deep": 0.1}
    assert ff.headline(ff.Config(), t)["sinc/deep"] == pytest.approx(1e-4)


def _losses(center: float, n: int = 10) -> list[float]:
    rng = np.random.default_rng(0)
    return list(10 ** (center + 0.1 * rng.standard_normal(n)))


@pytest.mark.parametrize("shallow, deep, outcome", [
    (_losses(-3), _losses(-4), "reproduced"),            # deep lower by a decade
    (_losses(-4), _losses(-3), "not reproduced"),        # deep higher by a decade
    (_losses(-3), _losses(-3)[::-1], "inconclusive"),    # same values: interval covers 0
    ([1e-3], [1e-4], "inconclusive"),                    # one seed each: no interval
])
def test_verdict_on_known_tables(shallow, deep, outcome):
    v = ff.verdicts(ff.Config(), _table(shallow, deep))
    assert [x.outcome for x in v] == [outcome]
    assert "sinc" in v[0].claim and v[0].rule == ff.stats.DIFFERENCE_RULE


def test_short_training_is_a_pipeline_check():
    v = ff.verdicts(ff.Config(epochs=3000), _table(_losses(-3), _losses(-4)))
    assert [x.outcome for x in v] == ["pipeline check"]


def test_seeds_trained_as_an_ensemble_equal_their_solo_runs():
    from dlscope.contract.runspec import RunContext

    cfg = ff.Config(epochs=40, n_train=64, functions=["sinc"], seeds=2)
    deep = [s for s in ff.runs(cfg) if s.group == "sinc/deep"]
    ctx = RunContext(device=torch.device("cpu"), threads=1)
    together = ff.run_many([s.params for s in deep], ctx)
    for spec, r in zip(deep, together):
        solo = ff.run_one(spec.params, ctx)
        assert r.values["epochs_run"] == solo.values["epochs_run"] == 40
        np.testing.assert_allclose(r.arrays["loss"], solo.arrays["loss"], rtol=1e-4)
        np.testing.assert_allclose(r.arrays["y_pred"], solo.arrays["y_pred"], atol=1e-5)
    assert together[0].values["final_loss"] != together[1].values["final_loss"]  # two inits
