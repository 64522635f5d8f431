"""engine.train / evaluate against independent references (hand computations, a plain
autograd + torch.optim loop written here), its stopping rules, and the MLP fast path against
the autograd path. No timings: speed is measured by `dlscope bench` only."""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from dlscope import models
from dlscope.data import Dataset
from dlscope.train.engine import TrainConfig, evaluate, seeded_model, train
from dlscope.train.fastpath import mlp_chain
from dlscope.train.optim import FusedOptimizer


def classification_data(n=300, d=20, k=4, seed=0, n_test=50) -> Dataset:
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(d, k, generator=g)
    x = torch.randn(n + n_test, d, generator=g)
    y = (x @ w + 0.5 * torch.randn(n + n_test, k, generator=g)).argmax(1)
    return Dataset(x[:n], y[:n], x[n:], y[n:], "blobs", k, "test")


def regression_data(n=64, seed=0, out_dim=1) -> Dataset:
    g = torch.Generator().manual_seed(seed)
    x = torch.linspace(-1, 1, n).unsqueeze(1)
    y = torch.cat([torch.sin(3 * x + i) for i in range(out_dim)], 1)
    y = y + 0.01 * torch.randn(y.shape, generator=g)
    return Dataset(x, y, x[::4].clone(), y[::4].clone(), "sin", None, "test")


def build(spec: str, seed: int = 0) -> nn.Module:
    return seeded_model(lambda: models.build(spec), seed)


def params(model) -> list[torch.Tensor]:
    return [p.detach().clone() for p in model.parameters()]


def reference_train(model, data, cfg: TrainConfig, seed: int):
    """engine.train's documented semantics written the plain way: a seeded permutation per
    epoch, index slices, autograd, torch.optim, the loss and correct count of every step."""
    classification = data.n_classes is not None
    loss_fn = F.cross_entropy if classification else F.mse_loss
    opt = (torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
           if cfg.optimizer == "adam" else
           torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum,
                           weight_decay=cfg.weight_decay))
    gen = torch.Generator().manual_seed(seed)
    n = len(data.x_train)
    bs = n if cfg.batch_size is None else min(cfg.batch_size, n)
    losses, accs, epoch_losses = [], [], []
    for _ in range(cfg.epochs):
        perm = torch.randperm(n, generator=gen) if bs < n else torch.arange(n)
        correct, total = 0, 0.0
        for s in range(0, n, bs):
            idx = perm[s:s + bs]
            out = model(data.x_train[idx])
            loss = loss_fn(out, data.y_train[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses.append(loss.item())
            total += loss.item() * len(idx)
            if classification:
                correct += int((out.argmax(1) == data.y_train[idx]).sum())
        epoch_losses.append(total / n)
        accs.append(correct / n if classification else None)
    return np.array(losses, dtype=np.float32), epoch_losses, accs


@pytest.mark.parametrize("spec,cfg", [
    ("mlp:20-16-8-4", TrainConfig(lr=3e-3, batch_size=32, epochs=3)),
    ("mlp:20-16-4:tanh", TrainConfig(optimizer="sgd", lr=0.05, momentum=0.9,
                                     weight_decay=1e-3, batch_size=50, epochs=3)),
])
def test_train_matches_a_plain_autograd_loop(spec, cfg):
    data = classification_data()
    model, ref_model = build(spec, 1), build(spec, 1)
    res = train(model, data, cfg, seed=7)
    losses, epoch_losses, accs = reference_train(ref_model, data, cfg, seed=7)
    np.testing.assert_allclose(res.step_loss, losses, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(res.history["train_loss"], epoch_losses, rtol=1e-5)
    assert res.history["train_acc"] == accs
    for p, q in zip(model.parameters(), ref_model.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("spec,data_fn,cfg", [
    ("mlp:20-16-8-4", classification_data, TrainConfig(lr=1e-2, batch_size=32, epochs=2)),
    ("mlp:20-16-8-4:gelu", classification_data,
     TrainConfig(lr=1e-2, weight_decay=1e-2, batch_size=64, epochs=2)),
    ("mlp:20-16-4:sigmoid", classification_data,
     TrainConfig(optimizer="sgd", lr=0.5, momentum=0.5, batch_size=40, epochs=2)),
    ("mlp:1-16-16-2:tanh", lambda: regression_data(out_dim=2),
     TrainConfig(optimizer="sgd", lr=0.1, epochs=20)),
    ("mlp:1-12-1", regression_data, TrainConfig(lr=1e-2, batch_size=16, epochs=5)),
])
def test_fast_path_equals_autograd_path(spec, data_fn, cfg):
    data = data_fn()
    fast, slow = build(spec, 3), build(spec, 3)
    assert mlp_chain(fast) is not None
    rf = train(fast, data, cfg, seed=5, record_grad_norm=True)
    rs = train(slow, data, cfg, seed=5, record_grad_norm=True, fast=False)
    # Same kernels in the same order: equal bit for bit on this build; the tolerance only
    # leaves room for a BLAS that orders a transposed GEMM differently.
    np.testing.assert_allclose(rf.step_loss, rs.step_loss, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(rf.grad_norm, rs.grad_norm, rtol=1e-6, atol=1e-7)
    assert rf.history["train_acc"] == rs.history["train_acc"]
    for p, q in zip(fast.parameters(), slow.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-6, atol=1e-7)


def test_fused_optimizer_equals_torch_optim():
    g = torch.Generator().manual_seed(0)
    shapes = [(5, 3), (5,), (2, 5)]
    for cfg in (TrainConfig(lr=1e-2, weight_decay=1e-3),
                TrainConfig(optimizer="sgd", lr=0.1, momentum=0.9, weight_decay=1e-2),
                TrainConfig(optimizer="sgd", lr=0.1)):
        ours = [torch.randn(s, generator=g) for s in shapes]
        theirs = [nn.Parameter(p.clone()) for p in ours]
        opt = (torch.optim.Adam(theirs, lr=cfg.lr, weight_decay=cfg.weight_decay, fused=True)
               if cfg.optimizer == "adam" else
               torch.optim.SGD(theirs, lr=cfg.lr, momentum=cfg.momentum,
                               weight_decay=cfg.weight_decay, fused=True))
        fused = FusedOptimizer(ours, **cfg.optimizer_settings())
        for _ in range(5):
            grads = [torch.randn(s, generator=g) for s in shapes]
            for p, gr in zip(theirs, grads):
                p.grad = gr.clone()
            opt.step()
            fused.step(grads)
        for p, q in zip(ours, theirs):
            assert torch.equal(p, q.detach())


def test_autograd_path_for_cnn_and_hooked_models():
    cnn = build("cnn:4/k3p1/fc8", 0)
    assert mlp_chain(cnn) is None
    mlp = build("mlp:20-8-4", 0)
    calls = []
    mlp[1].register_forward_hook(lambda *a: calls.append(1))
    assert mlp_chain(mlp) is None  # a hook must run: no fast path
    train(mlp, classification_data(n=64), TrainConfig(batch_size=32, epochs=1), seed=0)
    assert len(calls) == 2 + 1  # two steps, one test evaluation
    x = torch.randn(40, 1, 8, 8)
    y = torch.randint(0, 10, (40,))
    data = Dataset(x, y, x[:8], y[:8], "img", 10, "test")
    spec = "cnn:16/k3p1/fc8/in8"
    a, b = build(spec, 2), build(spec, 2)
    ra = train(a, data, TrainConfig(batch_size=16, epochs=2), seed=1)
    rb = train(b, data, TrainConfig(batch_size=16, epochs=2), seed=1, fast=False)
    # the fast CNN step: channels-last, first layer as one GEMM (16 channels: cnnfast.FirstConv);
    # the reference's numbers to float tolerance
    assert a[0].weight.is_contiguous(memory_format=torch.channels_last)
    np.testing.assert_allclose(ra.step_loss, rb.step_loss, rtol=1e-5)
    for p, q in zip(a.parameters(), b.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-4, atol=1e-6)


def test_relu_after_pooling_is_the_conventional_order_bit_for_bit():
    """models.build puts a CNN's ReLU after its max pool (cheaper, same function): trained on
    the reference path, it equals the conventional conv-ReLU-pool module exactly."""
    spec = "cnn:4,6/k3p1/fc8/in8"
    built = build(spec, 3)
    assert [type(m).__name__ for m in built[:3]] == ["Conv2d", "MaxPool2d", "ReLU"]
    conventional = nn.Sequential(*[built[i] for i in (0, 2, 1, 3, 5, 4)], *built[6:])
    conventional = copy.deepcopy(conventional)
    x = torch.randn(48, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    y = torch.randint(0, 10, (48,), generator=torch.Generator().manual_seed(1))
    data = Dataset(x, y, x[:8], y[:8], "img", 10, "test")
    cfg = TrainConfig(lr=1e-2, batch_size=16, epochs=3)
    ra = train(built, data, cfg, seed=0, fast=False, record_grad_norm=True)
    rb = train(conventional, data, cfg, seed=0, fast=False, record_grad_norm=True)
    np.testing.assert_array_equal(ra.step_loss, rb.step_loss)
    np.testing.assert_array_equal(ra.grad_norm, rb.grad_norm)
    for p, q in zip(built.parameters(), conventional.parameters()):
        assert torch.equal(p, q)


def test_determinism_same_seed_same_numbers():
    data = classification_data()
    cfg = TrainConfig(lr=1e-2, batch_size=32, epochs=3)
    runs = []
    for _ in range(2):
        m = build("mlp:20-16-8-4", 4)
        r = train(m, data, cfg, seed=11)
        runs.append((r, params(m)))
    (r1, p1), (r2, p2) = runs
    assert r1.history == r2.history
    np.testing.assert_array_equal(r1.step_loss, r2.step_loss)
    assert all(torch.equal(a, b) for a, b in zip(p1, p2))
    r3 = train(build("mlp:20-16-8-4", 4), data, cfg, seed=12)  # another batch order
    assert r3.history["train_loss"] != r1.history["train_loss"]


@pytest.mark.parametrize("fast", [True, False])
def test_divergence_is_marked_with_its_step_and_stops(fast):
    data = regression_data()
    cfg = TrainConfig(optimizer="sgd", lr=1e3, batch_size=16, epochs=50)
    res = train(build("mlp:1-16-16-1", 0), data, cfg, seed=0, fast=fast)
    assert res.status == "diverged"
    steps = len(res.step_loss)
    assert res.epochs_run < 50 and steps == res.epochs_run * 4
    first_bad = next(i for i, v in enumerate(res.step_loss) if not math.isfinite(v))
    assert res.diverged_step == first_bad + 1
    assert np.isfinite(res.step_loss[:first_bad]).all()
    assert math.isnan(res.history["train_loss"][-1]) and res.history["epoch"][-1] == res.epochs_run
    cls = train(build("mlp:20-16-4", 0), classification_data(),
                TrainConfig(optimizer="sgd", lr=1e3, batch_size=50, epochs=30), seed=0,
                fast=fast)
    assert cls.status == "diverged" and cls.epochs_run < 30


def test_converge_loss_fires_at_the_first_epoch_below_threshold():
    data = regression_data()
    cfg = TrainConfig(lr=1e-2, batch_size=16, epochs=200, converge_loss=0.05)
    res = train(build("mlp:1-16-16-1", 0), data, cfg, seed=0)
    losses = res.history["train_loss"]
    first = next(e for e, v in zip(res.history["epoch"], losses) if v < 0.05)
    assert res.status == "converged" and res.converged_epoch == first == res.epochs_run
    assert res.stop_rule == "loss < 0.05"
    assert all(v >= 0.05 for v in losses[:-1])


def test_converge_rel_plateau_as_documented():
    data = regression_data()
    w, rel = 3, 1e-3
    cfg = TrainConfig(optimizer="sgd", lr=1e-7, epochs=50, converge_rel=rel,
                      converge_window=w)
    res = train(build("mlp:1-8-1", 0), data, cfg, seed=0)
    # the rule by hand: best-so-far loss improved by < rel over the last w epochs
    best = np.minimum.accumulate(res.history["train_loss"])
    fired = [e for e in range(w, len(best)) if (best[e - w] - best[e]) / best[e - w] < rel]
    assert res.status == "converged" and res.converged_epoch == fired[0] + 1 == w + 1
    assert res.epochs_run == res.converged_epoch and "over 3 epochs" in res.stop_rule
    moving = train(build("mlp:1-8-1", 0), data, cfg.model_copy(update={"lr": 0.05,
                                                                        "epochs": 6}), seed=0)
    assert moving.status == "ok" and moving.converged_epoch is None


@pytest.mark.parametrize("fast", [True, False])
def test_grad_norm_at_step_one_equals_hand_computation(fast):
    data = classification_data(n=100)
    model = build("mlp:20-16-8-4", 2)
    ref = build("mlp:20-16-8-4", 2)
    res = train(model, data, TrainConfig(epochs=2), seed=0, record_grad_norm=True,
                fast=fast)  # full batch
    F.cross_entropy(ref(data.x_train), data.y_train).backward()
    by_hand = math.sqrt(sum(float((p.grad.double() ** 2).sum()) for p in ref.parameters()))
    assert res.grad_norm.shape == (2,)
    assert res.grad_norm[0] == pytest.approx(by_hand, rel=1e-5)


def test_evaluate_equals_hand_computation():
    model = build("mlp:3-5-4", 1)
    g = torch.Generator().manual_seed(3)
    x = torch.randn(7, 3, generator=g)
    y = torch.tensor([0, 1, 2, 3, 0, 1, 2])
    loss, acc = evaluate(model, x, y, True, batch_size=3)
    with torch.no_grad():
        logits = model(x).double()
    by_hand = -np.mean([float(torch.log_softmax(logits[i], 0)[y[i]]) for i in range(7)])
    assert loss == pytest.approx(by_hand, rel=1e-6)
    assert acc == sum(int(logits[i].argmax() == y[i]) for i in range(7)) / 7
    reg = build("mlp:3-5-2", 1)
    t = torch.randn(7, 2, generator=g)
    rloss, racc = evaluate(reg, x, t, False, batch_size=2)
    with torch.no_grad():
        diff = (reg(x) - t).double()
    assert racc is None and rloss == pytest.approx(float((diff ** 2).mean()), rel=1e-6)


def test_history_lengths():
    data = classification_data(n=100)
    seen = []
    cfg = TrainConfig(batch_size=30, epochs=3, eval_every=2)
    res = train(build("mlp:20-8-4", 0), data, cfg, seed=0, record_grad_norm=True,
                on_epoch=lambda e, m, metrics: seen.append((e, metrics["test_loss"])))
    assert res.status == "ok" and res.epochs_run == 3
    assert res.history["epoch"] == [0, 1, 2, 3]
    assert all(len(v) == 4 for v in res.history.values())
    assert len(res.step_loss) == len(res.grad_norm) == 3 * 4  # ceil(100 / 30) steps
    assert [e for e, _ in seen] == [0, 1, 2, 3]
    assert seen[1][1] is None and seen[2][1] is not None and seen[3][1] is not None
    plain = train(build("mlp:20-8-4", 0), data, cfg.model_copy(update={"eval_test": False}),
                  seed=0)
    assert plain.history["epoch"] == [1, 2, 3] and plain.grad_norm is None
    assert plain.history["test_loss"] == [None] * 3


def test_fused_optimizer_select_carries_each_members_state():
    """Two members stepped together, then member 1 alone from fresh storage: its parameters
    equal torch.optim's on member 1 alone throughout, bit for bit (Adam and SGD momentum)."""
    g = torch.Generator().manual_seed(1)
    shapes = [(4, 3), (4,)]
    for settings in ({"kind": "adam", "lr": 1e-2, "weight_decay": 1e-3},
                     {"kind": "sgd", "lr": 0.1, "momentum": 0.9}):
        both = [torch.randn(s, generator=g) for _ in range(2) for s in shapes]
        alone = [nn.Parameter(p.clone()) for p in both[2:]]
        kind = settings.pop("kind")
        ref = (torch.optim.Adam if kind == "adam" else torch.optim.SGD)(alone, fused=True,
                                                                        **settings)
        opt = FusedOptimizer(both, kind=kind, members=2, **settings)
        for step in range(6):
            grads = [torch.randn(s, generator=g) for _ in range(2) for s in shapes]
            for p, gr in zip(alone, grads[2:]):
                p.grad = gr.clone()
            ref.step()
            if step == 3:  # member 0 leaves; member 1's tensors move to new storage
                both = [p.clone() for p in both[2:]]
                opt = opt.select([1], both)
            opt.step(grads if len(both) == 4 else grads[2:])
            assert all(torch.equal(p, q.detach()) for p, q in zip(both[-2:], alone))
    with pytest.raises(ValueError, match="members"):
        FusedOptimizer([torch.zeros(2)] * 3, kind="sgd", lr=0.1, members=2)
