"""The new training package against the engine it replaced, bit for bit.

`old_train` below is `dlscope.train.engine.train` as it was at commit 229c17c (ENGINE_VERSION
"1"), with its private helpers (`_FusedOptimizer`, `_MLPStep`, `make_optimizer`) copied
verbatim and only the kernels that did not change (`mlp_chain`, `loss_and_grad`,
`act_forward`/`act_backward`, `tune_malloc`, `evaluate`, `grad_norm`) imported. The same
runs through `old_train` and the new `train` (one loop, step variants) must give identical
step losses, gradient norms, histories and parameters. The comparison runs on one torch
thread (tests/conftest.py). ENGINE_VERSION "2" differs from "1" in running small MLP steps on
one thread whatever torch's setting (`dlscope.train.threads`; tests/test_threads.py), in building
CNNs with ReLU after the pool (bit-exact: tests/test_engine.py) and in the CNN step (channels-
last convolutions, the first layer as one GEMM: `train.cnnfast`), so MLP runs must agree bit for
bit and CNN runs to float tolerance (`CNN_RTOL`).
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable

import numpy as np
import pytest
import torch
from torch import nn

from dlscope import models
from dlscope.data import Dataset
from dlscope.train.config import TrainConfig, TrainResult
from dlscope.train.engine import evaluate, grad_norm, loss_function, seeded_model, train
from dlscope.train.ensemble import train_ensemble
from dlscope.train.fastpath import act_backward, act_forward, loss_and_grad, mlp_chain, tune_malloc

# ---------------------------------------------------------------- the old engine (229c17c)

class _FusedOptimizer:
    """torch.optim's fused Adam / SGD kernels called directly, with the state kept here.

    Same arithmetic as `torch.optim.Adam(fused=True)` / `SGD(fused=True)` (their `step` calls
    exactly `torch._fused_adam_` / `torch._fused_sgd_` with these arguments; tests compare
    the parameters bit for bit), without the per-step Python of `Optimizer.step` (grouping,
    state lookups, profiler hooks: 0.1-0.5 ms a step here, as much as the kernel itself).
    `grads` are passed in each step, so gradients may live anywhere (autograd's fresh
    `.grad`, or the MLP fast path's preallocated buffers).
    """

    def __init__(self, params: list[torch.Tensor], cfg: TrainConfig):
        self.params = params
        self.cfg = cfg
        if cfg.optimizer == "adam":
            self.exp_avg = [torch.zeros_like(p, memory_format=torch.preserve_format)
                            for p in params]
            self.exp_avg_sq = [torch.zeros_like(p, memory_format=torch.preserve_format)
                               for p in params]
            # torch.optim keeps one float32 step tensor per parameter, all equal: one suffices.
            self._step = torch.zeros((), dtype=torch.float32, device=params[0].device)
            self.steps = [self._step] * len(params)
        else:
            self.momentum_buffer: list[torch.Tensor] | None = None

    @staticmethod
    def supports(params: list[torch.Tensor]) -> bool:
        if not params:
            return False
        p0 = params[0]
        return (p0.device.type in ("cpu", "cuda") and p0.dtype in (torch.float32, torch.float64)
                and all(p.device == p0.device and p.dtype == p0.dtype for p in params))

    @torch.no_grad()
    def step(self, grads: list[torch.Tensor]) -> None:
        cfg = self.cfg
        if cfg.optimizer == "adam":
            self._step.add_(1)
            torch._fused_adam_(self.params, grads, self.exp_avg, self.exp_avg_sq, [],
                               self.steps, amsgrad=False, lr=cfg.lr, beta1=0.9, beta2=0.999,
                               weight_decay=cfg.weight_decay, eps=1e-8, maximize=False,
                               grad_scale=None, found_inf=None)
            return
        first = cfg.momentum != 0 and self.momentum_buffer is None
        if first:
            self.momentum_buffer = [torch.empty_like(g) for g in grads]
        torch._fused_sgd_(self.params, grads,
                          [] if cfg.momentum == 0 else self.momentum_buffer,
                          weight_decay=cfg.weight_decay, momentum=cfg.momentum, lr=cfg.lr,
                          dampening=0.0, nesterov=False, maximize=False, is_first_step=first,
                          grad_scale=None, found_inf=None)


class _MLPStep:
    """One training step of a plain MLP without autograd; gradients land in `p.grad`."""

    def __init__(self, chain: list[tuple[nn.Linear, str | None]], flatten: bool,
                 classification: bool):
        self.W = [lin.weight.detach() for lin, _ in chain]
        self.b = [lin.bias.detach() for lin, _ in chain]
        self.acts = [act for _, act in chain]
        self.flatten = flatten
        self.classification = classification
        for lin, _ in chain:  # preallocated .grad, written in place every step
            for p in (lin.weight, lin.bias):
                p.grad = torch.empty_like(p)
        self.gW = [lin.weight.grad for lin, _ in chain]
        self.gb = [lin.bias.grad for lin, _ in chain]
        self.grads = [g for pair in zip(self.gW, self.gb) for g in pair]
        self.one = torch.ones((), dtype=self.W[0].dtype, device=self.W[0].device)

    def __call__(self, xb: torch.Tensor, yb: torch.Tensor):
        """(loss, output) of the batch; the gradients are in the parameters' .grad."""
        a = xb.flatten(1) if self.flatten else xb
        inputs, pre, post = [a], [], []
        last = len(self.W) - 1
        for i, (w, b, act) in enumerate(zip(self.W, self.b, self.acts)):
            z = torch.addmm(b, a, w.t())
            a = act_forward(z, act)
            pre.append(z)
            post.append(a)
            if i < last:
                inputs.append(a)
        out = a
        loss, g = loss_and_grad(out, yb, self.classification, self.one)
        for i in range(last, -1, -1):
            g = act_backward(g, pre[i], post[i], self.acts[i])
            torch.mm(g.t(), inputs[i], out=self.gW[i])
            torch.sum(g, 0, out=self.gb[i])
            if i > 0:
                g = torch.mm(g, self.W[i])
        return loss, out


def make_optimizer(params, cfg: TrainConfig) -> torch.optim.Optimizer:
    """Adam or SGD with the fused kernel (measured fastest on CPU, see bench), else foreach."""
    params = list(params)
    fused = all(p.device.type in ("cpu", "cuda") for p in params)
    kind = {"fused": True} if fused else {"foreach": True}
    if cfg.optimizer == "adam":
        return torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay, **kind)
    return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum,
                           weight_decay=cfg.weight_decay, **kind)


def old_train(model: nn.Module, data, cfg: TrainConfig, seed: int, *,
          record_grad_norm: bool = False,
          on_epoch: Callable[[int, nn.Module, dict], None] | None = None,
          progress: Callable[[int], None] | None = None,
          fast: bool = True, compile: bool = False) -> TrainResult:
    """Train `model` in place on `data` (a dlscope Dataset already on the model's device).

    `on_epoch(epoch, model, metrics)` is called after epoch 0 (before any step, so
    trajectories include the initial point) and after every epoch.
    `fast=False` takes the plain autograd + `torch.optim` path (same numbers; for tests and
    comparisons); `compile=True` runs the model through `torch.compile` on the autograd path
    (opt-in: on this CPU it was measured slower for the course's small models, see docs/PERFORMANCE.md).
    """
    t0 = time.perf_counter()
    tune_malloc()
    classification = data.n_classes is not None
    loss_fn = loss_function(classification)
    x, y = data.x_train, data.y_train
    n = len(x)
    bs = n if cfg.batch_size is None else min(cfg.batch_size, n)
    steps_per_epoch = math.ceil(n / bs)
    gen = torch.Generator(device="cpu").manual_seed(int(seed))
    params = list(model.parameters())
    fused = fast and not compile and _FusedOptimizer.supports(params)
    opt = _FusedOptimizer(params, cfg) if fused else make_optimizer(params, cfg)
    chain = mlp_chain(model) if fused else None
    flatten = chain is not None and type(model[0]) is nn.Flatten
    if chain is not None and (x.dtype != params[0].dtype or (x.dim() != 2 and not flatten)):
        chain = None
    forward = torch.compile(model) if compile else model
    hist: dict[str, list] = {k: [] for k in
                             ("epoch", "train_loss", "train_acc", "test_loss", "test_acc")}
    step_losses: list[float] = []
    norms: list[torch.Tensor] = []
    result = TrainResult(status="ok", epochs_run=0)

    def log_epoch(epoch: int, train_loss: float, train_acc: float | None) -> None:
        hist["epoch"].append(epoch)
        hist["train_loss"].append(train_loss)
        hist["train_acc"].append(train_acc)
        test = cfg.eval_test and (epoch % cfg.eval_every == 0 or epoch == cfg.epochs)
        tl, ta = (evaluate(model, data.x_test, data.y_test, classification)
                  if test else (None, None))
        hist["test_loss"].append(tl)
        hist["test_acc"].append(ta)
        if on_epoch is not None:
            on_epoch(epoch, model, {k: v[-1] for k, v in hist.items()})

    if on_epoch is not None:  # the initial point, for trajectories
        log_epoch(0, *evaluate(model, x, y, classification))

    model.train()
    mlp_step = _MLPStep(chain, flatten, classification) if chain is not None else None
    best: list[float] = []
    sizes = [bs] * (steps_per_epoch - 1) + [n - bs * (steps_per_epoch - 1)]
    # Per-epoch buffers, written by each step in place and read once per epoch.
    losses = torch.empty(steps_per_epoch, device=x.device)
    loss_slots = losses.unbind(0)
    preds = torch.empty(n, dtype=torch.int64, device=x.device) if classification else None
    pred_slots = preds.split(bs) if preds is not None else None
    for epoch in range(1, cfg.epochs + 1):
        gnorms = torch.empty(steps_per_epoch, device=x.device) if record_grad_norm else None
        perm = torch.randperm(n, generator=gen).to(x.device) if bs < n else None
        batches = perm.split(bs) if perm is not None else None
        with torch.no_grad() if mlp_step is not None else contextlib.nullcontext():
            for s in range(steps_per_epoch):
                if batches is None:
                    xb, yb = x, y
                else:
                    idx = batches[s]
                    xb, yb = x.index_select(0, idx), y.index_select(0, idx)
                if mlp_step is not None:
                    loss, out = mlp_step(xb, yb)
                else:
                    out = forward(xb)
                    loss = loss_fn(out, yb)
                    if fused:
                        for p in params:
                            p.grad = None
                    else:
                        opt.zero_grad(set_to_none=True)
                    loss.backward()
                if gnorms is not None:
                    gnorms[s] = grad_norm(model)  # after backward(), before step()
                if mlp_step is not None:
                    opt.step(mlp_step.grads)
                elif fused:
                    grads = [p.grad for p in params]
                    if any(g is None for g in grads):  # a parameter outside the graph
                        if epoch > 1 or s > 0:
                            raise RuntimeError("a parameter lost its gradient mid-training")
                        opt, fused = make_optimizer(params, cfg), False
                        opt.step()
                    else:
                        opt.step(grads)
                else:
                    opt.step()
                loss_slots[s].copy_(loss.detach())
                if pred_slots is not None:
                    torch.argmax(out.detach(), 1, out=pred_slots[s])
        result.epochs_run = epoch
        epoch_losses = losses.tolist()  # the epoch's one host sync
        step_losses.extend(epoch_losses)
        if gnorms is not None:
            norms.append(gnorms)
        bad = [i for i, v in enumerate(epoch_losses) if not math.isfinite(v)]
        if bad:
            result.status = "diverged"
            result.diverged_step = (epoch - 1) * steps_per_epoch + bad[0] + 1
            hist["epoch"].append(epoch)
            hist["train_loss"].append(float("nan"))
            for k in ("train_acc", "test_loss", "test_acc"):
                hist[k].append(None)
            break
        # Running mean over the epoch's batches (weighted by batch size).
        train_loss = sum(v * b for v, b in zip(epoch_losses, sizes)) / n
        train_acc = None
        if preds is not None:
            y_epoch = y if perm is None else y.index_select(0, perm)
            train_acc = int((preds == y_epoch).sum()) / n
        log_epoch(epoch, train_loss, train_acc)
        if progress is not None:
            progress(epoch)
        if cfg.converge_loss is not None and train_loss < cfg.converge_loss:
            result.status, result.converged_epoch = "converged", epoch
            result.stop_rule = f"loss < {cfg.converge_loss:g}"
            break
        best.append(min(train_loss, best[-1]) if best else train_loss)
        w = cfg.converge_window
        if cfg.converge_rel is not None and len(best) > w:
            old, now = best[-1 - w], best[-1]
            if old > 0 and (old - now) / old < cfg.converge_rel:
                result.status, result.converged_epoch = "converged", epoch
                result.stop_rule = f"best loss improved < {cfg.converge_rel:g} over {w} epochs"
                break
    result.history = hist
    result.step_loss = np.asarray(step_losses, dtype=np.float32)
    if norms:
        result.grad_norm = torch.cat(norms).cpu().numpy()
    result.wall_s = time.perf_counter() - t0
    return result


# ---------------------------------------------------------------- old against new


def blobs(n=200, d=12, k=4, seed=0) -> Dataset:
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(d, k, generator=g)
    x = torch.randn(n + 40, d, generator=g)
    y = (x @ w + 0.5 * torch.randn(n + 40, k, generator=g)).argmax(1)
    return Dataset(x[:n], y[:n], x[n:], y[n:], "blobs", k, "test")


def wave(n=48, out_dim=1) -> Dataset:
    x = torch.linspace(-1, 1, n).unsqueeze(1)
    y = torch.cat([torch.sin(3 * x + i) for i in range(out_dim)], 1)
    return Dataset(x, y, x[::3].clone(), y[::3].clone(), "sin", None, "test")


def images(n=60) -> Dataset:
    g = torch.Generator().manual_seed(1)
    x = torch.randn(n, 1, 8, 8, generator=g)
    y = torch.randint(0, 10, (n,), generator=g)
    return Dataset(x, y, x[:12], y[:12], "img", 10, "test")


def hooked(spec: str, seed: int) -> nn.Module:
    model = seeded_model(lambda: models.build(spec), seed)
    model[1].register_forward_hook(lambda *a: None)  # no fast path: autograd + fused kernel
    return model


def recorder(seen: list):
    return lambda epoch, m, metrics: seen.append(
        (epoch, dict(metrics), [p.detach().clone() for p in m.parameters()]))


def same(ps, qs) -> bool:
    """Tensors equal bit for bit (NaN where NaN: a diverged run's parameters)."""
    ps, qs = list(ps), list(qs)
    return len(ps) == len(qs) and all(p.shape == q.shape and p.dtype == q.dtype and
                                      p.detach().numpy().tobytes() == q.detach().numpy().tobytes()
                                      for p, q in zip(ps, qs))


def assert_identical(a: TrainResult, b: TrainResult, rtol: float = 0.0) -> None:
    """Bit for bit (rtol 0), or every float within `rtol` (the CNN cases)."""
    for key in ("status", "epochs_run", "converged_epoch", "stop_rule", "diverged_step"):
        assert getattr(a, key) == getattr(b, key), key
    assert a.history.keys() == b.history.keys()
    for key in a.history:  # floats bit for bit (repr round-trips), NaN == NaN
        if rtol:
            np.testing.assert_allclose(np.array(a.history[key], dtype=float),
                                       np.array(b.history[key], dtype=float), rtol=rtol)
        else:
            assert [repr(v) for v in a.history[key]] == [repr(v) for v in b.history[key]], key
    check = (lambda u, v: np.testing.assert_allclose(u, v, rtol=rtol)) if rtol else \
        (lambda u, v: np.testing.assert_array_equal(u, v, strict=True))
    check(a.step_loss, b.step_loss)
    if a.grad_norm is None:
        assert b.grad_norm is None
    else:
        check(a.grad_norm, b.grad_norm)


CNN_RTOL = 1e-5  # the CNN step sums in another order than v1's oneDNN NCHW convolutions

CASES = {
    "mlp fast path, adam, minibatch": (
        "mlp:12-16-8-4", blobs, None,
        TrainConfig(lr=3e-3, weight_decay=1e-3, batch_size=32, epochs=4, eval_every=2), {}),
    "mlp fast path, sgd momentum, full-batch regression": (
        "mlp:1-12-12-2:tanh", lambda: wave(out_dim=2), None,
        TrainConfig(optimizer="sgd", lr=0.05, momentum=0.9, epochs=15), {}),
    "mlp fast path, gelu, plateau rule": (
        "mlp:12-8-4:gelu", blobs, None,
        TrainConfig(optimizer="sgd", lr=1e-6, batch_size=64, epochs=30, converge_rel=1e-3,
                    converge_window=2), {}),
    "mlp fast path, converge_loss": (
        "mlp:1-16-16-1", wave, None,
        TrainConfig(lr=1e-2, batch_size=16, epochs=300, converge_loss=0.05), {}),
    "mlp diverges": (
        "mlp:1-16-16-1", wave, None, TrainConfig(optimizer="sgd", lr=1e3, batch_size=16,
                                                 epochs=40), {}),
    "autograd + torch.optim (fast=False)": (
        "mlp:12-16-4:sigmoid", blobs, None,
        TrainConfig(optimizer="sgd", lr=0.5, momentum=0.5, batch_size=40, epochs=3),
        {"fast": False}),
    "hooked mlp: autograd + fused kernel": (
        "mlp:12-8-4", blobs, hooked, TrainConfig(batch_size=50, epochs=3), {}),
    "cnn: autograd + fused kernel": (
        "cnn:16/k3p1/fc8/in8", images, None, TrainConfig(lr=1e-2, batch_size=16, epochs=3), {}),
}


@pytest.mark.parametrize("case", list(CASES))
def test_new_train_equals_the_old_engine_bit_for_bit(case):
    spec, data_fn, build, cfg, kw = CASES[case]
    build = build or (lambda s, seed: seeded_model(lambda: models.build(s), seed))
    data = data_fn()
    old_model, new_model = build(spec, 3), build(spec, 3)
    old_seen, new_seen = [], []
    old = old_train(old_model, data, cfg, 5, record_grad_norm=True, on_epoch=recorder(old_seen),
                    **kw)
    new = train(new_model, data, cfg, 5, record_grad_norm=True, on_epoch=recorder(new_seen),
                **kw)
    if data.x_train.dim() == 4:  # CNN: channels-last and FirstConv since v2
        assert_identical(new, old, rtol=CNN_RTOL)
        assert [e for e, _, _ in new_seen] == [e for e, _, _ in old_seen]
        for p, q in zip(new_model.parameters(), old_model.parameters()):
            torch.testing.assert_close(p, q, rtol=CNN_RTOL, atol=1e-6)
        return
    assert_identical(new, old)
    assert same(new_model.parameters(), old_model.parameters())
    assert [(e, {k: repr(v) for k, v in m.items()}) for e, m, _ in new_seen] == \
        [(e, {k: repr(v) for k, v in m.items()}) for e, m, _ in old_seen]
    for (_, _, pn), (_, _, po) in zip(new_seen, old_seen):
        assert same(pn, po)
    plain = train(build(spec, 3), data, cfg, 5, **kw)  # no callback, no norms: same numbers
    np.testing.assert_array_equal(plain.step_loss, old.step_loss, strict=True)


def test_an_ensemble_of_cnns_is_its_members_trained_alone_by_the_old_engine():
    data, spec = images(), "cnn:16/k3p1/fc8/in8"
    cfgs = [TrainConfig(lr=1e-2, batch_size=16, epochs=2),
            TrainConfig(optimizer="sgd", lr=0.1, momentum=0.9, batch_size=16, epochs=3)]
    res = train_ensemble([spec, spec], data, cfgs, [1, 2], record_grad_norm=True)
    for e, seed in enumerate((1, 2)):
        model = seeded_model(lambda: models.build(spec), seed)
        assert_identical(res[e], old_train(model, data, cfgs[e], seed, record_grad_norm=True),
                         rtol=CNN_RTOL)
        for p, q in zip(res.models[e].parameters(), model.parameters()):
            torch.testing.assert_close(p, q, rtol=CNN_RTOL, atol=1e-6)
