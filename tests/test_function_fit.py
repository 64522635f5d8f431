"""function-fit end to end: every table and figure, matched budgets, divergence kept and shown."""

import json

import numpy as np
import pandas as pd

import dlscope


def test_quick_run_writes_everything(tmp_path):
    r = dlscope.run("function-fit", profile="quick", out=tmp_path, epochs=300,
                    functions=["sinc", "expr:x**2"], threads=1)
    root = tmp_path / "function-fit"
    res = pd.read_csv(root / "results.csv")
    assert list(res.columns[:10]) == ["function", "model", "depth", "widths", "params",
                                      "final_loss", "converged", "converged_epoch",
                                      "epochs_run", "status"]
    assert len(res) == 6 and set(res.model) == {"shallow", "middle", "deep"}
    assert (res.params.max() - res.params.min()) / res.params.min() <= 0.01
    curves = pd.read_csv(root / "curves.csv")
    assert set(curves.columns) == {"function", "model", "epoch", "loss"}
    # The curve's last point is the reported final loss (same numbers, two tables).
    for row in res.itertuples():
        c = curves[(curves.function == row.function) & (curves.model == row.model)]
        assert c.epoch.iloc[-1] == row.epochs_run
        assert np.isclose(c.loss.iloc[-1], row.final_loss, rtol=1e-6)
    pred = pd.read_csv(root / "predictions.csv")
    sq = pred[pred.function == "expr:x**2"]
    assert np.allclose(sq.y_true, sq.x ** 2, atol=1e-6)  # ground truth is the closed form
    for name in ["sinc_loss", "sinc_fit", "expr_x__2_loss", "expr_x__2_fit"]:
        png = root / "figures" / f"{name}.png"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5000
    summary = json.loads((root / "summary.json").read_text())
    assert summary["observations"] == r.observations and len(r.observations) == 3
    env = json.loads((root / "env.json").read_text())
    assert env["torch"] and env["threads_per_run"] == 1
    loaded = dlscope.load(root)  # tables from CSV, figures redrawn
    assert set(loaded.figures) == set(r.figures)
    pd.testing.assert_frame_equal(loaded.tables["results"], res)


def test_diverging_runs_are_kept_marked_and_listed(tmp_path):
    r = dlscope.run("function-fit", profile="quick", out=tmp_path, lr=1e6, epochs=100,
                    functions=["sin-log"], threads=1)
    res = r.tables["results"]
    diverged = res[res.status == "diverged"]
    assert len(diverged) >= 1 and len(res) == 3  # the sweep went on
    assert all(f["status"] == "diverged" for f in r.summary["flagged"])
    assert {f["run"] for f in r.summary["flagged"]} == {f"sin-log/{m}" for m in diverged.model}
    assert any("Diverged" in o for o in r.observations)
