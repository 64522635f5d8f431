"""Ensembles: E same-shape MLP runs trained together as one, with batched matmuls.

Runs that differ only in seed (initialization and batch order), learning rate or optimizer
settings are stacked: layer l's weights become one ``[E, out, in]`` tensor and a step is one
``baddbmm``/``bmm`` per layer for all members instead of E separate small steps, each with its
own Python and dispatch overhead. Every member follows exactly the trajectory that
``engine.train`` would give it alone:

- initialization: a member is built as ``engine.seeded_model(lambda: models.build(spec), seed)``
  (or passed in built), then its parameters are stacked;
- data order: member e draws its permutations from its own generator seeded with ``seeds[e]``,
  one ``randperm`` per epoch, the stream ``engine.train`` uses for that seed;
- step: forward with ``baddbmm``, the backward written out with the kernels autograd uses for
  Linear / ReLU / Tanh / Sigmoid / GELU / cross-entropy / MSE (as engine's MLP fast path);
- optimizer: torch's fused Adam / SGD kernel on each member's parameter views (slices of the
  stacked tensors), one call per group of members sharing hyperparameters, so a member's
  update is torch.optim.Adam(fused=True)'s bit for bit and members may have different
  learning rates (torch.optim takes one scalar lr per call; the per-member lr is handled by
  grouping, no hand-written Adam);
- stopping: each member's divergence/convergence/epoch budget rule fires as in engine.train;
  a stopped member's parameters are copied out and it leaves the stack (the others go on).

Batched and single matmuls sum in different orders, so a member equals its solo run to float
tolerance, not bit for bit (tests/test_ensemble.py: per-step losses and final parameters,
SGD and Adam, different lrs). Speed (`dlscope bench`, ensemble8_s vs sequential8_s): 0.77-0.85
at 2 threads, ~1.0 at 1 thread on the shared 2-core machine. An ensemble does the same FLOPs
as its runs one by one; it saves their per-step overhead, and the engine's MLP fast path left
little of that (single runs at ~1.2x their FLOP floor at 1 thread), so the gain is mostly the
better multi-core scaling of [E, 64, 784] GEMMs over [64, 784] ones. MLPs only; CNN members
(grouped conv or torch.func.vmap) are not done.

    nets = [engine.seeded_model(lambda: models.build(spec), s) for s in seeds]
    results = train_ensemble(nets, ds, cfgs, seeds)      # trains nets in place
    results[i]                                            # an engine.TrainResult
    results = train_ensemble([spec] * 8, ds, cfg, seeds)  # or let it build them:
    results.models                                        # ... the trained nn.Modules
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable, Sequence

import numpy as np
import torch
from torch import nn

from dlscope import models
from dlscope.train.engine import TrainConfig, TrainResult, seeded_model
from dlscope.train.fastpath import (
    _FusedOptimizer,
    act_backward,
    act_forward,
    mlp_chain,
    tune_malloc,
)

_aten = torch.ops.aten
OnEpoch = Callable[[int, nn.Module, dict], None]


class EnsembleResults(list):
    """A list of per-member `TrainResult`s plus the trained modules (`.models`) and the
    ensemble's total wall time (`.wall_s`)."""

    models: list[nn.Module]
    wall_s: float


class StackedMLP:
    """The parameters of E same-shape plain MLPs (see `fastpath.mlp_chain`) stacked on a new
    leading dimension: ``W[l]`` is ``[E, out, in]``, ``b[l]`` is ``[E, out]``."""

    def __init__(self, members: Sequence[nn.Module]):
        if not members:
            raise ValueError("an ensemble needs at least one member")
        chains = [mlp_chain(m) for m in members]
        if any(c is None for c in chains):
            raise ValueError("ensemble members must be plain MLPs (nn.Sequential of Linear and "
                             "ReLU/Tanh/Sigmoid/GELU, as models.build makes them)")
        shape = [(lin.weight.shape, act) for lin, act in chains[0]]
        if any([(lin.weight.shape, act) for lin, act in c] != shape for c in chains[1:]):
            raise ValueError("ensemble members must have the same shape and activations")
        self.templates = list(members)
        self.flatten = type(members[0][0]) is nn.Flatten
        self.acts = [act for _, act in chains[0]]
        with torch.no_grad():
            self.W = [torch.stack([c[i][0].weight.detach() for c in chains])
                      for i in range(len(shape))]
            self.b = [torch.stack([c[i][0].bias.detach() for c in chains])
                      for i in range(len(shape))]

    @property
    def size(self) -> int:
        return self.W[0].shape[0]

    def member_tensors(self, e: int, tensors: list[list[torch.Tensor]] | None = None):
        """Member e's parameter views in `nn.Module.parameters()` order (weight, bias, ...)."""
        W, b = tensors if tensors is not None else (self.W, self.b)
        return [t for pair in zip(W, b) for t in (pair[0][e], pair[1][e])]

    @torch.no_grad()
    def copy_to(self, e: int, module: nn.Module) -> nn.Module:
        """Write member e's current parameters into `module` (same shape) in place."""
        for p, src in zip(module.parameters(), self.member_tensors(e)):
            p.copy_(src)
        return module

    def unstack(self) -> list[nn.Module]:
        """Independent modules (copies of the members' modules) with the stacked parameters."""
        return [self.copy_to(e, copy.deepcopy(m)) for e, m in enumerate(self.templates)]

    @torch.inference_mode()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """All members' outputs ``[E, N, out]`` for one shared input ``x`` ``[N, ...]``.

        The first layer is one GEMM against the members' weights side by side."""
        a = x.flatten(1) if self.flatten else x
        E, out0, in0 = self.W[0].shape
        z = torch.mm(a, self.W[0].reshape(E * out0, in0).t())
        z = z.view(len(a), E, out0).transpose(0, 1).add(self.b[0].unsqueeze(1))
        a = act_forward(z, self.acts[0])
        for w, b, act in zip(self.W[1:], self.b[1:], self.acts[1:]):
            a = act_forward(torch.baddbmm(b.unsqueeze(1), a, w.transpose(1, 2)), act)
        return a


def stack(members: Sequence[nn.Module]) -> StackedMLP:
    return StackedMLP(members)


def unstack(stacked: StackedMLP) -> list[nn.Module]:
    return stacked.unstack()


@torch.inference_mode()
def evaluate_stacked(stacked: StackedMLP, x: torch.Tensor, y: torch.Tensor,
                     classification: bool, batch_size: int = 8192):
    """Per-member (loss, accuracy) lists over a shared set, as `engine.evaluate` computes them
    (mean loss accumulated in float64; accuracy None for regression)."""
    E = stacked.size
    chunk = max(256, batch_size // E)
    total = torch.zeros(E, dtype=torch.float64, device=x.device)
    correct = torch.zeros(E, dtype=torch.int64, device=x.device)
    for i in range(0, len(x), chunk):
        out = stacked.forward(x[i:i + chunk])  # [E, n, C]
        yb = y[i:i + chunk]
        if classification:
            logp = torch.log_softmax(out, 2)
            nll = -logp.gather(2, yb.view(1, -1, 1).expand(E, -1, 1)).squeeze(2)
            total += nll.sum(1).double()  # float32 chunk sums, as engine.evaluate
            correct += (out.argmax(2) == yb).sum(1)
        else:
            total += (out - yb).pow(2).flatten(1).sum(1).double()
    n = len(x)
    loss = (total / (n * (1 if classification else y[0].numel()))).tolist()
    acc = [c / n for c in correct.tolist()] if classification else [None] * E
    return loss, acc


def _as_list(value, E: int, what: str) -> list:
    if isinstance(value, (list, tuple)):
        if len(value) != E:
            raise ValueError(f"{what}: {len(value)} given for {E} members")
        return list(value)
    return [value] * E


def train_ensemble(members: Sequence[nn.Module | models.MLPSpec | str | dict], data,
                   cfgs: TrainConfig | Sequence[TrainConfig], seeds: Sequence[int], *,
                   on_epoch: Sequence[OnEpoch | None] | OnEpoch | None = None,
                   record_grad_norm: bool = False,
                   progress: Callable[[int], None] | None = None) -> EnsembleResults:
    """Train E same-shape MLPs together; member e's result equals `engine.train(members[e],
    data, cfgs[e], seeds[e], ...)` to float tolerance.

    `members`: built modules (trained in place, like engine.train) or specs (built with
    `seeded_model(build(spec), seed)` on the data's device). `cfgs`: one TrainConfig or one
    per member; all must resolve to the same batch size. `on_epoch`: one engine-style
    callback `(epoch, model, metrics)` per member (or None), or a single one given to every
    member; it sees that member's module holding the current parameters. `progress(epoch)` is
    called once per ensemble epoch. Each result's `wall_s` is the member's share (the
    ensemble's wall time while it trained, divided by the number of members training).
    """
    t0 = time.perf_counter()
    tune_malloc()
    seeds = [int(s) for s in seeds]
    E = len(seeds)
    cfgs = _as_list(cfgs, E, "cfgs")
    callbacks = _as_list(on_epoch, E, "on_epoch")
    if len(members) != E:
        raise ValueError(f"members: {len(members)} given for {E} seeds")
    x, y = data.x_train, data.y_train
    nets = [m if isinstance(m, nn.Module) else
            seeded_model(lambda m=m: models.build(models.parse_model(m)), s).to(x.device)
            for m, s in zip(members, seeds)]
    classification = data.n_classes is not None
    n = len(x)
    sizes = {n if c.batch_size is None else min(c.batch_size, n) for c in cfgs}
    if len(sizes) != 1:
        raise ValueError(f"ensemble members must share a batch size, got {sorted(sizes)}")
    bs = sizes.pop()
    steps = math.ceil(n / bs)
    full, last = n // bs, n - (n // bs) * bs
    batch_sizes = [bs] * full + ([last] if last else [])
    stacked = StackedMLP(nets)
    if stacked.W[0].dtype != x.dtype or not _FusedOptimizer.supports(stacked.W):
        raise ValueError("ensemble: parameters and data must share a float dtype on cpu/cuda")
    gens = [torch.Generator(device="cpu").manual_seed(s) for s in seeds]
    results = [TrainResult(status="ok", epochs_run=0,
                           history={k: [] for k in ("epoch", "train_loss", "train_acc",
                                                    "test_loss", "test_acc")})
               for _ in range(E)]
    step_losses: list[list[float]] = [[] for _ in range(E)]
    norms: list[list[np.ndarray]] = [[] for _ in range(E)]
    best: list[list[float]] = [[] for _ in range(E)]
    alive = list(range(E))  # member ids still training, in stack order
    share = [0.0] * E

    def log_epoch(epoch: int, rows: dict[int, tuple]) -> None:
        """rows: member -> (train_loss, train_acc); evaluates and calls back."""
        need = [e for e in rows if cfgs[e].eval_test and
                (epoch % cfgs[e].eval_every == 0 or epoch == cfgs[e].epochs)]
        test = (evaluate_stacked(stacked, data.x_test, data.y_test, classification)
                if need else None)
        for e, (tl, ta) in rows.items():
            h = results[e].history
            h["epoch"].append(epoch)
            h["train_loss"].append(tl)
            h["train_acc"].append(ta)
            j = alive.index(e)
            h["test_loss"].append(test[0][j] if e in need else None)
            h["test_acc"].append(test[1][j] if e in need else None)
            if callbacks[e] is not None:
                stacked.copy_to(j, nets[e])
                callbacks[e](epoch, nets[e], {k: v[-1] for k, v in h.items()})

    if any(cb is not None for cb in callbacks):  # the initial point, for trajectories
        tl, ta = evaluate_stacked(stacked, x, y, classification)
        log_epoch(0, {e: (tl[e], ta[e]) for e in range(E) if callbacks[e] is not None})

    state = _State(stacked, cfgs, alive)
    one = torch.ones((), dtype=x.dtype, device=x.device)
    t_mark = time.perf_counter()
    max_epochs = max(c.epochs for c in cfgs)
    for epoch in range(1, max_epochs + 1):
        A = len(alive)
        if bs < n:
            perms = torch.stack([torch.randperm(n, generator=gens[e]) for e in alive])
            perms = perms.to(x.device)
            parts = [perms[:, :full * bs].reshape(A, full, bs).transpose(0, 1).reshape(-1)]
            if last:
                parts.append(perms[:, full * bs:].reshape(-1))
            order = torch.cat(parts)  # step-major: step s holds [A, size_s] indices
            batches = order.split(A * bs)
        else:
            order, batches = None, None
        losses = torch.empty(steps, A, device=x.device)
        gnorms = torch.empty(steps, A, device=x.device) if record_grad_norm else None
        preds = torch.empty(A * n, dtype=torch.int64, device=x.device) if classification else None
        pred_slots = preds.split(A * bs) if preds is not None else None
        with torch.no_grad():
            for s in range(steps):
                B = batch_sizes[s]
                if batches is None:
                    xb = x.unsqueeze(0).expand(A, *x.shape)
                    yb = y.unsqueeze(0).expand(A, *y.shape)
                else:
                    idx = batches[s]
                    xb = x.index_select(0, idx).view(A, B, *x.shape[1:])
                    yb = y.index_select(0, idx).view(A, B, *y.shape[1:])
                out = state.step(xb, yb, classification, losses[s], one)
                if gnorms is not None:
                    gnorms[s] = state.grad_norms()
                state.optimizer_step()
                if pred_slots is not None:
                    torch.argmax(out, 2, out=pred_slots[s].view(A, B))
        # the epoch's one host sync
        epoch_losses = losses.t().tolist()
        if preds is not None:
            y_ord = y.expand(A, n).reshape(-1) if order is None else y.index_select(0, order)
            hit = (preds == y_ord)
            correct = hit[:A * bs * full].view(full, A, bs).sum((0, 2))
            if last:
                correct = correct + hit[A * bs * full:].view(A, last).sum(1)
            accs = [c / n for c in correct.tolist()]
        else:
            accs = [None] * A
        g_np = gnorms.t().cpu().numpy() if gnorms is not None else None
        rows: dict[int, tuple] = {}
        stopped: list[int] = []
        for j, e in enumerate(alive):
            res, cfg = results[e], cfgs[e]
            res.epochs_run = epoch
            step_losses[e].extend(epoch_losses[j])
            if g_np is not None:
                norms[e].append(g_np[j])
            bad = [i for i, v in enumerate(epoch_losses[j]) if not math.isfinite(v)]
            if bad:
                res.status = "diverged"
                res.diverged_step = (epoch - 1) * steps + bad[0] + 1
                h = res.history
                h["epoch"].append(epoch)
                h["train_loss"].append(float("nan"))
                for k in ("train_acc", "test_loss", "test_acc"):
                    h[k].append(None)
                stopped.append(e)
                continue
            rows[e] = (sum(v * b for v, b in zip(epoch_losses[j], batch_sizes)) / n, accs[j])
        log_epoch(epoch, rows)
        if progress is not None:
            progress(epoch)
        for e, (train_loss, _) in rows.items():
            res, cfg = results[e], cfgs[e]
            if cfg.converge_loss is not None and train_loss < cfg.converge_loss:
                res.status, res.converged_epoch = "converged", epoch
                res.stop_rule = f"loss < {cfg.converge_loss:g}"
                stopped.append(e)
                continue
            best[e].append(min(train_loss, best[e][-1]) if best[e] else train_loss)
            w = cfg.converge_window
            if cfg.converge_rel is not None and len(best[e]) > w:
                old, now = best[e][-1 - w], best[e][-1]
                if old > 0 and (old - now) / old < cfg.converge_rel:
                    res.status, res.converged_epoch = "converged", epoch
                    res.stop_rule = (f"best loss improved < {cfg.converge_rel:g} over {w} "
                                     "epochs")
                    stopped.append(e)
                    continue
            if epoch >= cfg.epochs:
                stopped.append(e)
        now = time.perf_counter()
        for e in alive:
            share[e] += (now - t_mark) / A
        t_mark = now
        if stopped:
            for e in stopped:
                stacked.copy_to(alive.index(e), nets[e])
            keep = [j for j, e in enumerate(alive) if e not in stopped]
            alive[:] = [alive[j] for j in keep]
            if not alive:
                break
            state.compact(keep)
    for j, e in enumerate(alive):  # (only when every member hit max_epochs together)
        stacked.copy_to(j, nets[e])
    for e, res in enumerate(results):
        res.step_loss = np.asarray(step_losses[e], dtype=np.float32)
        if norms[e]:
            res.grad_norm = np.concatenate(norms[e]).astype(np.float32)
        res.wall_s = share[e]
    out = EnsembleResults(results)
    out.models = nets
    out.wall_s = time.perf_counter() - t0
    return out


class _State:
    """The stacked parameters, gradients and optimizer of the members still training."""

    def __init__(self, stacked: StackedMLP, cfgs: list[TrainConfig], alive: list[int]):
        self.stacked = stacked
        self.cfgs = cfgs
        self.alive = alive  # shared with the caller, updated before compact()
        self.gW = [torch.empty_like(w) for w in stacked.W]
        self.gb = [torch.empty_like(b) for b in stacked.b]
        # One fused optimizer per group of members with the same hyperparameters: the fused
        # kernel takes a scalar lr, so members with different lrs are separate calls.
        self.opts: dict[tuple, tuple[list[int], _FusedOptimizer]] = {}
        for j, e in enumerate(alive):
            c = cfgs[e]
            key = (c.optimizer, c.lr, c.momentum, c.weight_decay)
            self.opts.setdefault(key, ([], None))[0].append(j)
        self._build_opts(fresh=True)

    def _build_opts(self, fresh: bool, keep: list[int] | None = None) -> None:
        st = self.stacked
        new: dict[tuple, tuple[list[int], _FusedOptimizer]] = {}
        for key, (js, old) in self.opts.items():
            if keep is not None:  # remap stack positions after compaction
                pos = {j_old: j_new for j_new, j_old in enumerate(keep)}
                kept = [(i, pos[j]) for i, j in enumerate(js) if j in pos]
                if not kept:
                    continue
                js_new = [j for _, j in kept]
            else:
                js_new, kept = js, None
            params = [t for j in js_new for t in st.member_tensors(j)]
            cfg = self.cfgs[self.alive[js_new[0]]]
            opt = _FusedOptimizer(params, cfg) if fresh else _FusedOptimizer.__new__(
                _FusedOptimizer)
            if not fresh:  # carry the per-member state of the kept members over
                opt.params, opt.cfg = params, cfg
                per = 2 * len(st.W)
                sel = [i * per + k for i, _ in kept for k in range(per)]
                if cfg.optimizer == "adam":
                    opt.exp_avg = [old.exp_avg[i] for i in sel]
                    opt.exp_avg_sq = [old.exp_avg_sq[i] for i in sel]
                    opt._step = old._step
                    opt.steps = [opt._step] * len(params)
                else:
                    opt.momentum_buffer = (None if old.momentum_buffer is None else
                                           [old.momentum_buffer[i] for i in sel])
            new[key] = (js_new, opt)
        self.opts = new
        self.grads = {key: [t for j in js for t in st.member_tensors(j, [self.gW, self.gb])]
                      for key, (js, _) in self.opts.items()}

    def compact(self, keep: list[int]) -> None:
        """Drop the members not in `keep` (stack positions) from every stacked tensor."""
        st = self.stacked
        idx = torch.tensor(keep, device=st.W[0].device)
        st.W = [w.index_select(0, idx) for w in st.W]
        st.b = [b.index_select(0, idx) for b in st.b]
        self.gW = [torch.empty_like(w) for w in st.W]
        self.gb = [torch.empty_like(b) for b in st.b]
        self._build_opts(fresh=False, keep=keep)

    def step(self, xb, yb, classification, loss_slot, one):
        """Forward and backward of a [A, B, ...] batch; per-member mean losses into
        `loss_slot`; returns the output [A, B, C]."""
        st = self.stacked
        A, B = xb.shape[:2]
        a = xb.reshape(A, B, -1) if st.flatten else xb
        inputs, pre, post = [a], [], []
        L = len(st.W)
        for i, (w, b, act) in enumerate(zip(st.W, st.b, st.acts)):
            z = torch.baddbmm(b.unsqueeze(1), a, w.transpose(1, 2))
            a = act_forward(z, act)
            pre.append(z)
            post.append(a)
            if i < L - 1:
                inputs.append(a)
        out = a
        C = out.shape[2]
        if classification:
            logp = torch.log_softmax(out, 2).view(A * B, C)
            yf = yb.reshape(A * B)
            nll, tw = _aten.nll_loss_forward(logp, yf, None, 0, -100)
            torch.mean(nll.view(A, B), 1, out=loss_slot)
            g = _aten.nll_loss_backward(one.div(B).expand(A * B), logp, yf, None, 0, -100, tw)
            g = _aten._log_softmax_backward_data(g, logp, 1, logp.dtype).view(A, B, C)
        else:
            diff = torch.sub(out, yb)
            torch.mean(diff.square().view(A, -1), 1, out=loss_slot)
            g = diff.mul_(2.0 / (B * C))  # = aten.mse_loss_backward's 2 (out - y) / numel
        for i in range(L - 1, -1, -1):
            g = act_backward(g, pre[i], post[i], st.acts[i])
            torch.bmm(g.transpose(1, 2), inputs[i], out=self.gW[i])
            torch.sum(g, 1, out=self.gb[i])
            if i > 0:
                g = torch.bmm(g, st.W[i])
        return out

    def grad_norms(self) -> torch.Tensor:
        """Per-member L2 norm of the full gradient (all layers as one vector)."""
        A = self.gW[0].shape[0]
        per = [torch.linalg.vector_norm(g.reshape(A, -1), dim=1) for g in (*self.gW, *self.gb)]
        return torch.linalg.vector_norm(torch.stack(per), dim=0)

    def optimizer_step(self) -> None:
        for key, (_, opt) in self.opts.items():
            opt.step(self.grads[key])
