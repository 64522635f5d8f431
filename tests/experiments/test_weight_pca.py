"""weight-pca: a shrunk quick run (tables, figures, summary, reload) checked against the
stored snapshots: joint PCA, the Li et al. plane's origin, the initial weights."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

import dlscope
from dlscope import experiments, models
from dlscope.contract import config as configs
from dlscope.contract.runspec import RunResult
from dlscope.data import MnistOptions, mnist_dataset
from dlscope.errors import UserError
from dlscope.metrics.flat import flatten_params
from dlscope.metrics.random_walk import walk_shares
from dlscope.metrics.trajectory import pca
from dlscope.train.engine import evaluate, seeded_model

EXP = experiments.get("weight-pca")
SMALL = {"seeds": 2, "epochs": 3, "every": 1, "train_subset": 800, "eval_subset": 500,
         "landscape_subset": 300, "grid": 21}


@pytest.fixture(scope="module")
def result(tmp_path_factory):
    out = tmp_path_factory.mktemp("wp")
    return dlscope.run("weight-pca", profile="quick", out=out, executor="local", threads=1,
                       **SMALL)


def _arrays(result) -> list[dict]:
    runs = []
    for d in sorted((result.path / "runs").iterdir()):
        with np.load(d / "arrays.npz") as z:
            runs.append({k: z[k] for k in z.files})
    return sorted(runs, key=lambda a: "plane_loss" not in a)  # run 0 (with the plane) first


def test_writes_every_table_figure_and_summary(result):
    for f in ("points.csv", "landscape.csv", "trajectory.csv", "variance.csv", "results.csv",
              "run_variance.csv", "null.csv", "summary.json", "figures/pca_model.png",
              "figures/pca_layer1.png", "figures/landscape.png", "figures/null.png"):
        assert (result.path / f).is_file(), f
    pts = result.tables["points"]
    assert list(pts.columns) == ["scope", "run", "seed", "epoch", "pc1", "pc2", "train_loss",
                                 "train_acc", "test_acc"]
    assert len(pts) == 2 * 2 * 4 and sorted(pts.epoch.unique()) == [0, 1, 2, 3]
    assert (pts.seed == pts.run).all() and result.tables["results"].seed.tolist() == [0, 1]
    land = result.tables["landscape"]
    assert list(land.columns) == ["alpha", "beta", "loss"]
    assert land.alpha.nunique() >= 21 and land.beta.nunique() >= 21
    traj = result.tables["trajectory"]
    assert traj.epoch.tolist() == [0, 1, 2, 3] and (traj.iloc[-1][["alpha", "beta"]] == 0).all()
    var = result.tables["variance"].set_index("scope")
    assert set(var.index) == {"model", "layer1", "trajectory"}
    assert ((var.pc12 > 0) & (var.pc12 <= 1 + 1e-9)).all()
    obs = result.summary["observations"]
    assert len(obs) >= 4 and any("Li et al." in o for o in obs)
    back = dlscope.load(result.path)
    assert set(back.figures) == {"pca_model", "pca_layer1", "landscape", "null"}


def test_points_are_the_joint_pca_of_the_stored_snapshots(result):
    runs = _arrays(result)
    assert all(a["snapshots"].dtype == np.float32 and a["snapshots"].shape[0] == 4 for a in runs)
    pts = result.tables["points"]
    for scope, sl in (("model", slice(None)), ("layer1", slice(0, 784 * 128))):
        proj, _, ratio, _ = pca(np.concatenate([a["snapshots"][:, sl] for a in runs]), 2)
        got = pts[pts.scope == scope].sort_values(["run", "epoch"])[["pc1", "pc2"]].to_numpy()
        np.testing.assert_allclose(got, proj, rtol=1e-5, atol=1e-5)
        var = result.tables["variance"].set_index("scope").loc[scope]
        np.testing.assert_allclose([var.pc1, var.pc2], ratio, rtol=1e-9)


def test_per_run_trajectory_variance_statistics_and_verdict(result):
    """Each run's share of variance in its own top-2 directions (Li et al.), recomputed from
    the stored snapshots with numpy's SVD; its interval over the runs; a pipeline check."""
    runs = _arrays(result)
    rv = result.tables["run_variance"]
    assert list(rv.columns) == ["scope", "run", "seed", "status", "pc1", "pc2", "pc12"]
    for run, a in enumerate(runs):  # run 0 (with the plane) first, then run 1
        for scope, sl in (("model", slice(None)), ("layer1", slice(0, 784 * 128))):
            d = a["snapshots"][:, sl].astype(np.float64)
            sv = np.linalg.svd(d - d.mean(0), compute_uv=False) ** 2
            got = rv[(rv.scope == scope) & (rv.run == run)].iloc[0]
            np.testing.assert_allclose([got.pc1, got.pc2], sv[:2] / sv.sum(), rtol=1e-6)
            assert got.pc12 < 1 - 1e-6  # 4 snapshots: three directions carry variance
    plane = result.tables["variance"].set_index("scope").loc["trajectory"]
    assert plane.pc12 == pytest.approx(rv[(rv.scope == "model") & (rv.run == 0)].pc12.iloc[0])
    st = result.summary["statistics"]
    iv = st["run_pc12"]["model"]
    vals = rv[rv.scope == "model"].pc12
    assert iv["n"] == 2 and iv["mean"] == pytest.approx(vals.mean())
    assert iv["lo"] <= vals.mean() <= iv["hi"]
    assert st["test_acc"]["n"] == 2 and st["runs"] == 2 and st["diverged"] == 0
    assert st["joint_pca"]["model"]["pc12"] == pytest.approx(
        result.tables["variance"].set_index("scope").loc["model"].pc12)
    (v,) = result.summary["verdicts"]
    assert v["outcome"] == "pipeline check" and v["source"].startswith("Li et al. 2018")


def _rv(values):
    return {"run_variance": pd.DataFrame({"scope": "model", "run": range(len(values)),
                                          "pc12": values})}


def test_li_verdict_on_constructed_tables():
    cfg = configs.resolve(EXP, "assignment")
    assert [v.outcome for v in EXP.verdicts(cfg, _rv([0.6, 0.7, 0.65, 0.62]))] == ["reproduced"]
    assert [v.outcome for v in EXP.verdicts(cfg, _rv([0.97, 0.98, 0.96]))] == ["not reproduced"]
    assert [v.outcome for v in EXP.verdicts(cfg, _rv([0.85, 0.95, 0.9]))] == ["inconclusive"]
    assert [v.outcome for v in EXP.verdicts(cfg, _rv([0.6]))] == ["inconclusive"]


def test_runs_is_an_alias_of_seeds():
    assert configs.resolve(EXP, "quick").seeds == 4
    assert configs.resolve(EXP, "quick", overrides={"runs": 3}).seeds == 3
    assert configs.resolve(EXP, "assignment", sets=["runs=5"]).seeds == 5


def test_epoch0_snapshot_is_the_seeded_init_and_runs_differ(result):
    runs = _arrays(result)
    spec = models.parse_model("mlp-pca")
    inits = [flatten_params(seeded_model(lambda: models.build(spec), s)).numpy() for s in (0, 1)]
    np.testing.assert_array_equal(runs[0]["snapshots"][0], inits[0])  # run 0: seed 0
    np.testing.assert_array_equal(runs[1]["snapshots"][0], inits[1])  # run 1: seed 1
    assert not np.array_equal(inits[0], inits[1])


def test_plane_origin_is_the_final_models_loss_on_the_subset(result):
    a = _arrays(result)[0]
    model = models.build("mlp-pca")
    torch.nn.utils.vector_to_parameters(torch.from_numpy(a["snapshots"][-1]), model.parameters())
    ds = mnist_dataset(MnistOptions(flatten=True, train_subset=800))
    idx = torch.from_numpy(EXP.eval_indices(800, 500, 0)[:300])
    ref, _ = evaluate(model, ds.x_train[idx], ds.y_train[idx], classification=True)
    land = result.tables["landscape"]
    origin = land[(land.alpha == 0) & (land.beta == 0)]
    assert len(origin) == 1 and origin.loss.iloc[0] == pytest.approx(ref, rel=1e-5)
    np.testing.assert_allclose(a["plane_loss"].shape, (land.alpha.nunique(), land.beta.nunique()))


def test_assignment_profile_and_runspecs():
    cfg = configs.resolve(EXP, "assignment")
    assert (cfg.seeds, cfg.epochs, cfg.every, cfg.batch_size, cfg.lr) == (8, 24, 1, 64, 1e-3)
    assert len(EXP.snapshot_epochs(cfg.epochs, cfg.every)) == 25  # every epoch, epoch 0 too
    specs = EXP.runs(cfg)
    assert len(specs) == 8 and {s.group for s in specs} == {"mlp"}
    assert len({s.params["seed"] for s in specs}) == 8 and len({s.hash for s in specs}) == 8
    assert EXP.snapshot_epochs(24, 3) == [0, 3, 6, 9, 12, 15, 18, 21, 24]
    assert EXP.snapshot_epochs(5, 2) == [0, 2, 4, 5]


@pytest.mark.parametrize("bad", [{"every": 5, "epochs": 4}, {"model": "cnn-a"},
                                 {"model": "mlp:10-4-10"}, {"epochs": 1, "every": 1},
                                 {"runs": 0}, {"seeds": 0}, {"annotate": "loss"}])
def test_bad_config_is_a_user_error(bad, tmp_path):
    with pytest.raises(UserError):
        dlscope.run("weight-pca", profile="quick", out=tmp_path / "o", **bad)
    assert not (tmp_path / "o").exists()


def test_ensemble_path_equals_solo_runs():
    """weight-pca's runs share a group: trained as one ensemble they equal solo trainings."""
    import dataclasses

    from dlscope.contract.runspec import RunContext, execute
    from dlscope.experiments import weight_pca

    cfg = configs.resolve(weight_pca, "quick", overrides={"seeds": 2, "epochs": 1, "every": 1,
                                                          "landscape": False})
    specs = [dataclasses.replace(s, threads=1) for s in weight_pca.runs(cfg)]
    assert len({s.group for s in specs}) == 1
    together = execute(specs)  # -> run_many
    ctx = RunContext(device=torch.device("cpu"), threads=1)
    for spec, got in zip(specs, together):
        alone = weight_pca.run_one(spec.params, ctx)
        assert np.allclose(got.arrays["snapshots"], alone.arrays["snapshots"], rtol=1e-4,
                           atol=1e-6)
        assert np.allclose(got.arrays["train_loss"], alone.arrays["train_loss"], rtol=1e-4)


def _fake_results(trajectories) -> list:
    """(spec, RunResult) pairs as run_one makes them, around given [n, P] trajectories."""
    out = []
    for i, snaps in enumerate(trajectories):
        n = len(snaps)
        arrays = {"snapshots": np.asarray(snaps, np.float32), "epoch": np.arange(n),
                  "train_loss": np.linspace(2, 0.1, n), "train_acc": np.linspace(0.1, 0.99, n),
                  "test_loss": np.linspace(2, 0.1, n), "test_acc": np.linspace(0.1, 0.98, n)}
        values = {"status": "ok", "run": i, "seed": i, "epochs_run": n - 1,
                  "params": snaps.shape[1], "layer1": [0, snaps.shape[1] // 2], "wall_s": 1.0,
                  "train_loss": 0.1, "train_acc": 0.99, "test_acc": 0.98}
        out.append((None, RunResult(values=values, arrays=arrays)))
    return out


def _walks(runs, n, dim, seed, drift=0.0):
    rng = np.random.default_rng(seed)
    steps = rng.standard_normal((runs, n - 1, dim)) * np.geomspace(1, 0.2, n - 1)[:, None]
    steps += drift * np.ones(dim) / np.sqrt(dim)
    return [np.vstack([rng.standard_normal(dim), s]).cumsum(0) for s in steps]


def test_null_table_matches_the_closed_form_and_the_run_shares():
    cfg = configs.resolve(EXP, "assignment", overrides={"null_walks": 4})
    tables = EXP.analyze(cfg, _fake_results(_walks(3, 25, 4000, 0)))
    nl, rv = tables["null"], tables["run_variance"]
    assert len(nl) == 6 and set(nl.scope) == {"model", "layer1"}
    np.testing.assert_allclose(nl.closed_form, walk_shares(25)[:2].sum())
    np.testing.assert_allclose(nl.training.to_numpy(), rv.pc12.to_numpy())
    np.testing.assert_allclose(nl.excess, nl.training - nl.simulated)
    assert (nl.dim == np.where(nl.scope == "model", 4000, 2000)).all()
    assert (nl.simulated > nl.closed_form).all()  # decaying steps concentrate the share
    again = EXP.analyze(cfg, _fake_results(_walks(3, 25, 4000, 0)))["null"]
    pd.testing.assert_frame_equal(nl, again)  # seeded


def test_a_random_walk_shows_no_difference_from_the_null_a_line_does():
    """A random walk with decaying steps sits on its null; a straight line (every step
    aligned, share 1) and a walk with a steady drift (partly aligned steps) sit above it."""
    cfg = configs.resolve(EXP, "assignment", overrides={"null_walks": 4})
    rng = np.random.default_rng(5)
    lines = [np.outer(np.sqrt(np.arange(25.0)), rng.standard_normal(3000)) for _ in range(4)]
    for trajs, word in ((_walks(6, 25, 3000, 1), "no clear difference"),
                        (_walks(6, 25, 3000, 2, drift=3.0), "differs"), (lines, "differs")):
        tables = EXP.analyze(cfg, _fake_results(trajs))
        for scope in ("model", "layer1"):
            iv, says = EXP.null_excess(tables, scope)
            assert says == word and iv.n == len(trajs)
        (v,) = EXP.verdicts(cfg, tables)
        assert f": {word}" in v.statistic and "random walk" in v.statistic
        obs = " ".join(EXP.observations(cfg, tables))
        assert "training - null" in obs and word in obs
        assert EXP.statistics(cfg, tables)["null_excess"]["model"]["says"] == word
    assert EXP.analyze(cfg, _fake_results(lines))["null"].training.min() > 1 - 1e-6
    one = EXP.analyze(cfg, _fake_results(_walks(1, 25, 3000, 3)))
    assert EXP.null_excess(one)[1].startswith("one run: no interval")
