"""Ensembles equal the same runs trained alone with engine.train (per-step losses, final
parameters, histories, stopping), and the bench's FLOP formula and a tiny bench run."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from dlscope import bench, models
from dlscope.data import Dataset
from dlscope.train.engine import TrainConfig, seeded_model, train
from dlscope.train.ensemble import StackedMLP, train_ensemble, unstack
from dlscope.train.fastpath import batch_last_wins


def classification_data(n=800, d=24, k=5, seed=0) -> Dataset:
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(d, k, generator=g)
    x = torch.randn(n + 100, d, generator=g)
    y = (x @ w + 0.5 * torch.randn(n + 100, k, generator=g)).argmax(1)
    return Dataset(x[:n], y[:n], x[n:], y[n:], "blobs", k, "test")


def regression_data(n=50) -> Dataset:
    x = torch.linspace(-1, 1, n).unsqueeze(1)
    y = torch.sin(4 * x)
    return Dataset(x, y, x[::5].clone(), y[::5].clone(), "sin", None, "test")


def solo(spec, data, cfg, seed, **kw):
    model = seeded_model(lambda: models.build(spec), seed)
    return train(model, data, cfg, seed, **kw), model


def assert_same_run(ens_result, ens_model, solo_result, solo_model, rtol=1e-4):
    assert ens_result.status == solo_result.status
    assert ens_result.epochs_run == solo_result.epochs_run
    assert ens_result.diverged_step == solo_result.diverged_step
    assert ens_result.converged_epoch == solo_result.converged_epoch
    assert ens_result.stop_rule == solo_result.stop_rule
    assert len(ens_result.step_loss) == len(solo_result.step_loss)
    finite = np.isfinite(solo_result.step_loss)
    np.testing.assert_array_equal(np.isfinite(ens_result.step_loss), finite)
    np.testing.assert_allclose(ens_result.step_loss[finite], solo_result.step_loss[finite],
                               rtol=rtol, atol=1e-6)
    h, hs = ens_result.history, solo_result.history
    assert h["epoch"] == hs["epoch"] and h["train_acc"] == hs["train_acc"]
    for key in ("train_loss", "test_loss", "test_acc"):
        a = [np.nan if v is None else v for v in h[key]]
        b = [np.nan if v is None else v for v in hs[key]]
        np.testing.assert_allclose(a, b, rtol=rtol, atol=1e-6, equal_nan=True)
    if solo_result.status != "diverged":
        for p, q in zip(ens_model.parameters(), solo_model.parameters()):
            torch.testing.assert_close(p, q, rtol=rtol, atol=1e-6)


def test_ensemble_member_equals_its_solo_run_adam_and_sgd_different_lrs():
    data = classification_data()  # 800 images, batch 64: 13 steps an epoch, 52 in all
    spec = "mlp:24-32-16-5"
    cfgs = [TrainConfig(lr=1e-3, batch_size=64, epochs=4),
            TrainConfig(lr=5e-3, batch_size=64, epochs=4, weight_decay=1e-3),
            TrainConfig(optimizer="sgd", lr=0.05, momentum=0.9, batch_size=64, epochs=4),
            TrainConfig(optimizer="sgd", lr=0.2, batch_size=64, epochs=4),
            TrainConfig(lr=1e-3, batch_size=64, epochs=4)]
    seeds = [0, 1, 2, 3, 4]
    res = train_ensemble([spec] * 5, data, cfgs, seeds, record_grad_norm=True)
    assert len(res) == 5 and len(res.models) == 5
    for e in range(5):
        r, m = solo(spec, data, cfgs[e], seeds[e], record_grad_norm=True)
        assert len(r.step_loss) == 52
        assert_same_run(res[e], res.models[e], r, m)
        np.testing.assert_allclose(res[e].grad_norm, r.grad_norm, rtol=1e-4)
    # members really differ (own init, own batch order, own lr)
    assert not np.allclose(res[0].step_loss, res[4].step_loss)


def test_ensemble_regression_full_batch_tanh():
    data = regression_data()
    spec = "mlp:1-16-16-1:tanh"
    cfgs = [TrainConfig(lr=1e-2, epochs=40), TrainConfig(optimizer="sgd", lr=0.1, epochs=40)]
    res = train_ensemble([spec, spec], data, cfgs, [3, 4])
    for e in range(2):
        assert_same_run(res[e], res.models[e], *solo(spec, data, cfgs[e], [3, 4][e]))


def test_narrow_nets_on_long_batches_step_batch_last_and_equal_their_solo_runs():
    # function-fit's case (1-D input, full batch of 400 points) and a classification one
    # (24 inputs, batch 256): both take the [E, features, B] layout
    reg, cls = regression_data(400), classification_data(n=768, d=24, k=5)
    for spec, data, bs in [("mlp:1-17-8-8-1", reg, None), ("mlp:24-16-5", cls, 256)]:
        assert batch_last_wins(StackedMLP([models.build(spec)]).W, bs or len(data.x_train))
        cfgs = [TrainConfig(lr=1e-2, batch_size=bs, epochs=8),
                TrainConfig(optimizer="sgd", lr=0.1, momentum=0.9, batch_size=bs, epochs=8)]
        res = train_ensemble([spec] * 2, data, cfgs, [0, 1])
        for e in range(2):
            assert_same_run(res[e], res.models[e], *solo(spec, data, cfgs[e], e))
    # wider nets, or short batches, keep [E, B, features]
    assert not batch_last_wins([torch.zeros(3, 32, 1)], 1000)
    assert not batch_last_wins([torch.zeros(3, 16, 1)], 64)


def test_members_stop_on_their_own_rules_and_the_others_go_on():
    data = regression_data()
    spec = "mlp:1-16-16-1"
    cfgs = [TrainConfig(optimizer="sgd", lr=1e3, batch_size=10, epochs=12),  # diverges
            TrainConfig(lr=1e-2, batch_size=10, epochs=12, converge_loss=0.1),
            TrainConfig(optimizer="sgd", lr=1e-7, batch_size=10, epochs=12,
                        converge_rel=1e-3, converge_window=2),  # plateau at epoch 3
            TrainConfig(lr=1e-2, batch_size=10, epochs=12),
            TrainConfig(lr=3e-3, batch_size=10, epochs=5)]  # a shorter budget
    seeds = [0, 1, 2, 3, 4]
    res = train_ensemble([spec] * 5, data, cfgs, seeds)
    statuses = [r.status for r in res]
    assert statuses[0] == "diverged" and statuses[2] == "converged"
    assert res[4].epochs_run == 5 and res[3].epochs_run == 12
    for e in range(5):
        assert_same_run(res[e], res.models[e], *solo(spec, data, cfgs[e], seeds[e]))


def test_on_epoch_sees_each_member_as_engine_train_shows_it():
    data = classification_data(n=256)
    spec = "mlp:24-16-5"
    cfg = TrainConfig(lr=1e-2, batch_size=64, epochs=3, eval_test=False)
    seen: dict[int, list] = {0: [], 1: []}

    def recorder(e):
        return lambda epoch, m, metrics: seen[e].append(
            (epoch, metrics["train_loss"], torch.cat([p.detach().flatten().clone()
                                                      for p in m.parameters()])))

    nets = [seeded_model(lambda: models.build(spec), s) for s in (5, 6)]
    res = train_ensemble(nets, data, cfg, [5, 6], on_epoch=[recorder(0), recorder(1)])
    assert res.models[0] is nets[0]  # trained in place, like engine.train
    for e, s in enumerate((5, 6)):
        ref = []
        solo(spec, data, cfg, s, on_epoch=lambda epoch, m, metrics, ref=ref: ref.append(
            (epoch, metrics["train_loss"], torch.cat([p.detach().flatten().clone()
                                                      for p in m.parameters()]))))
        assert [r[0] for r in seen[e]] == [r[0] for r in ref] == [0, 1, 2, 3]
        for (_, la, pa), (_, lb, pb) in zip(seen[e], ref):
            assert la == pytest.approx(lb, rel=1e-5)
            torch.testing.assert_close(pa, pb, rtol=1e-4, atol=1e-6)


def test_stack_unstack_and_forward():
    nets = [seeded_model(lambda: models.build("mlp:24-8-8-5:gelu"), s) for s in range(3)]
    st = StackedMLP(nets)
    assert st.W[0].shape == (3, 8, 24) and st.b[2].shape == (3, 5)
    x = torch.randn(10, 24)
    out = st.forward(x)
    copies = unstack(st)
    for e, net in enumerate(nets):
        with torch.no_grad():
            torch.testing.assert_close(out[e], net(x), rtol=1e-5, atol=1e-6)
        assert copies[e] is not net
        assert all(torch.equal(p, q) for p, q in zip(copies[e].parameters(), net.parameters()))
    with pytest.raises(ValueError, match="same shape"):
        StackedMLP([nets[0], seeded_model(lambda: models.build("mlp:24-9-8-5:gelu"), 0)])
    with pytest.raises(ValueError, match="plain MLPs"):
        StackedMLP([models.build("cnn-c")])
    with pytest.raises(ValueError, match="batch size"):
        train_ensemble(["mlp:24-8-5"] * 2, classification_data(n=64),
                       [TrainConfig(batch_size=16), TrainConfig(batch_size=32)], [0, 1])


def test_flop_formula_equals_hand_count():
    mlp_macs = 784 * 128 + 128 * 64 + 64 * 10
    assert bench.macs_per_image("mlp:784-128-64-10") == mlp_macs == 109_184
    assert bench.flops_per_epoch("mlp:784-128-64-10", 60_000) == 3 * 2 * mlp_macs * 60_000
    # cnn-b: conv 1->16 and 16->32 (3x3, padding 1) at 28x28 and 14x14, fc 32*7*7 -> 128 -> 10
    cnn_macs = 16 * 28 * 28 * 9 + 32 * 14 * 14 * 16 * 9 + 32 * 7 * 7 * 128 + 128 * 10
    assert bench.macs_per_image("cnn-b") == cnn_macs == 1_218_048
    # cnn-a: 5x5 kernels, no padding: 28 -> 24 -> 12 -> 8 -> 4
    assert bench.macs_per_image("cnn-a") == (10 * 24 * 24 * 25 + 20 * 8 * 8 * 10 * 25
                                             + 20 * 4 * 4 * 120 + 120 * 10)


def test_run_bench_smoke_tiny_sizes():
    figures = bench.run_bench(repeats=1, log=lambda _m: None, n_train=256, cnn_train=100,
                              ensemble_train=128, ensemble_size=2, sgemm_n=128, threads=1,
                              hessian=False, contention=1)
    assert list(figures) == ["sgemm_gflops", "mlp_epoch_s", "mlp_floor_ratio",
                             "sgemm1_gflops", "mlp_floor1_ratio", "conventional_epoch_s", "engine_vs_conventional", "cnn_epoch_s",
                             "cnn_floor_ratio", "ensemble8_s", "sequential8_s",
                             "ensemble_ratio", "cnn_ensemble3_s", "cnn_sequential3_s",
                             "cnn_ensemble_ratio", "hessian_1k_s", "mlp_epoch_busy1_s",
                             "conventional_busy1_s", "busy1_ratio", "conventional_busy1_ratio"]
    assert figures["busy1_ratio"] == pytest.approx(
        figures["mlp_epoch_busy1_s"] / figures["mlp_epoch_s"], rel=1e-2)
    assert figures["hessian_1k_s"] is None
    assert figures["mlp_floor1_ratio"] == pytest.approx(  # the same epoch, one core's ceiling
        figures["mlp_floor_ratio"] * figures["sgemm1_gflops"] / figures["sgemm_gflops"],
        rel=1e-2)
    assert all(v > 0 for k, v in figures.items() if k != "hessian_1k_s")
    assert figures["engine_vs_conventional"] == pytest.approx(
        figures["mlp_epoch_s"] / figures["conventional_epoch_s"], rel=1e-2)
    assert torch.get_num_threads() == 1  # restored


def test_cnn_and_mixed_members_go_one_by_one_and_equal_their_solo_runs_exactly():
    from dlscope.train.steps import AutogradStep, MLPStep, StackedMLPStep, choose_step

    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(48, 1, 8, 8, generator=g), torch.randint(0, 10, (48,), generator=g)
    images = Dataset(x, y, x[:8], y[:8], "img", 10, "test")
    cnn = "cnn:4/k3p1/fc8/in8"
    cfgs = [TrainConfig(lr=1e-2, batch_size=16, epochs=2),
            TrainConfig(optimizer="sgd", lr=0.1, batch_size=16, epochs=3)]
    res = train_ensemble([cnn, cnn], images, cfgs, [0, 1], record_grad_norm=True)
    for e in range(2):
        r, m = solo(cnn, images, cfgs[e], e, record_grad_norm=True)
        np.testing.assert_array_equal(res[e].step_loss, r.step_loss)
        np.testing.assert_array_equal(res[e].grad_norm, r.grad_norm)
        assert res[e].history == r.history and res[e].epochs_run == r.epochs_run
        assert all(torch.equal(p, q) for p, q in zip(res.models[e].parameters(), m.parameters()))
    # two MLP shapes cannot be stacked: one by one, each exactly its solo run
    data = classification_data(n=128)
    specs = ["mlp:24-8-5", "mlp:24-12-5"]
    cfg = TrainConfig(lr=1e-2, batch_size=32, epochs=2)
    mixed = train_ensemble(specs, data, cfg, [3, 4])
    for e, spec in enumerate(specs):
        r, m = solo(spec, data, cfg, 3 + e)
        np.testing.assert_array_equal(mixed[e].step_loss, r.step_loss)
        assert all(torch.equal(p, q) for p, q in zip(mixed.models[e].parameters(),
                                                     m.parameters()))
    # which step each request gets
    adam = cfg.optimizer_settings()
    mlps = [seeded_model(lambda: models.build("mlp:24-8-5"), s) for s in (0, 1)]
    assert [type(s) for s in choose_step(mlps, True, data.x_train, [adam] * 2)] == [StackedMLPStep]
    assert [type(s) for s in choose_step(mlps[:1], True, data.x_train, [adam])] == [MLPStep]
    cnns = [seeded_model(lambda: models.build(cnn), s) for s in (0, 1)]
    assert [type(s) for s in choose_step(cnns, True, x, [adam] * 2)] == [AutogradStep] * 2
    assert [type(s) for s in choose_step(mlps, True, data.x_train, [adam] * 2, fast=False)] == \
        [AutogradStep] * 2
