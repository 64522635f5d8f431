"""`dlscope bench`: this machine's arithmetic ceiling, and how close dlscope's training gets.

All figures come from one process and one run, each the median of `repeats` measurements;
within a repeat the compared variants run back to back (sgemm, engine epoch, conventional
epoch, CNN epoch; then ensemble and sequential, alternating which goes first), and every
ratio is the median of the per-repeat ratios, so the ratios hold on a machine whose load
drifts. Torch is set to all cores (`torch.set_num_threads(os.cpu_count())`) for every figure;
the engine then runs a small MLP step on one thread by its fixed rule (`train.threads`), so
`mlp_epoch_s` is a one-core figure, compared with one core's ceiling in `mlp_floor1_ratio`. The
log says the threads, and the load average at the start and the end.

    sgemm_gflops            float32 [2048x2048] @ [2048x2048], 2*n^3 FLOPs / median seconds
    sgemm1_gflops           the same on one thread
    mlp_epoch_s             one 60,000-image epoch of the 784-128-64-10 MLP, batch 64, Adam
                            1e-3, with `engine.train` (no test evaluation)
    mlp_floor_ratio         mlp_epoch_s / (FLOPs / sgemm throughput)
    mlp_floor1_ratio        mlp_epoch_s / (FLOPs / one-thread sgemm throughput)
    conventional_epoch_s    the same epoch written the usual way: a torch Dataset turning the
                            uint8 image into a normalized tensor per item (x.float()/255, then
                            (x-0.1307)/0.3081, as ToTensor + Normalize), DataLoader(batch 64,
                            shuffle=True), torch.optim.Adam defaults, zero_grad/backward/step
                            and loss.item() per step
    engine_vs_conventional  mlp_epoch_s / conventional_epoch_s
    cnn_epoch_s             one epoch of cnn-b (conv 16, 32, k3p1, pool 2, fc 128), batch 100
    cnn_floor_ratio         cnn_epoch_s / (FLOPs / sgemm throughput)
    ensemble8_s             8 weight-pca runs (784-128-64-10, batch 64, Adam 1e-3, seeds 0-7)
                            on 10,000 images each (1/6 epoch, 157 steps), as one ensemble
    sequential8_s           the same 8 runs one after the other with `engine.train`
    ensemble_ratio          ensemble8_s / sequential8_s
    hvp_per_s, hessian_top5_s, hessian_trace_s, hessian_density_s (and the HVPs/probes used):
                            curvature of the 784-128-64-10 MLP on 10,000 MNIST images
                            (`curvature_figures`)
    hessian_1k_s            `metrics.hessian.hessian_eigenvalues` of a 1-w1-w-1 MLP with ~1,000
                            parameters (models.width_for_params(2, 1000)) on 1,000 points of
                            sinc, MSE: exact float64 Hessian and its full spectrum
    cnn_ensemble3_s         3 cnn-b members (seeds 0-2) on 3,000 images, one epoch, trained as
                            one request (`train_ensemble`)
    cnn_sequential3_s       the same 3 one after the other with `engine.train`
    cnn_ensemble_ratio      cnn_ensemble3_s / cnn_sequential3_s
    mlp_epoch_busy{k}_s     (--contention N, k = 1..N) mlp_epoch_s with k busy-loop processes
                            competing for the cores (`dlscope.contention.busy_processes`)
    conventional_busy{k}_s  conventional_epoch_s likewise
    busy{k}_ratio           mlp_epoch_busy{k}_s / mlp_epoch_s (conventional_busy{k}_ratio too)
    suite_s                 (--suite) `run all --profile quick` into a temporary folder

FLOP counts (`flops_per_epoch`): a forward pass costs 2 FLOPs per multiply-accumulate (MAC),
the backward pass twice the forward (input and weight gradients), so
    FLOPs per epoch = 3 x 2 x MACs per image x images.
MLP 784-128-64-10: MACs = 784*128 + 128*64 + 64*10 = 109,184, so 39.3 GFLOP per epoch.
cnn-b: MACs = 16*28*28*(1*9) + 32*14*14*(16*9) + 1568*128 + 128*10 = 1,218,048, 438.5 GFLOP.
Biases, activations, pooling, loss and optimizer are left out (under 2% of the MACs); the
first layer's unneeded input gradient is counted, so the floor is slightly generous.

Dated measurements and where the time goes (torch.profiler tables: `profile_steps("mlp" |
"cnn", fast=...)`) are in docs/PERFORMANCE.md.
"""

from __future__ import annotations

import contextlib
import math
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import replace
from itertools import pairwise

import numpy as np
import torch
import torch.nn.functional as F

from dlscope import models
from dlscope.train.engine import TrainConfig, seeded_model, train
from dlscope.train.fastpath import tune_malloc
from dlscope.train.threads import intra_op_threads

Log = Callable[[str], None]
MLP = "mlp:784-128-64-10"
CNN = "cnn-b"


def macs_per_image(spec) -> int:
    """Multiply-accumulates of one forward pass (convolutions and linear layers)."""
    spec = models.parse_model(spec)
    if isinstance(spec, models.MLPSpec):
        dims = [spec.input_dim, *spec.hidden, spec.output_dim]
        return sum(a * b for a, b in pairwise(dims))
    total, side, chans = 0, spec.input_size, [spec.in_channels, *spec.channels]
    for c_in, c_out in pairwise(chans):
        side = side + 2 * spec.padding - spec.kernel + 1
        total += c_out * side * side * c_in * spec.kernel ** 2
        side //= spec.pool
    dims = [chans[-1] * side * side, *spec.fc, spec.n_classes]
    return total + sum(a * b for a, b in pairwise(dims))


def flops_per_epoch(spec, images: int) -> int:
    """3 x 2 x MACs per image x images: forward 2 FLOPs a MAC, backward twice the forward."""
    return 3 * 2 * macs_per_image(spec) * images


def sgemm_gflops(n: int = 2048, repeats: int = 3) -> float:
    """float32 n x n matmul throughput, median of `repeats` (after one warm-up)."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    out = torch.empty(n, n)
    torch.mm(a, b, out=out)
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        torch.mm(a, b, out=out)
        times.append(time.perf_counter() - t)
    return 2 * n ** 3 / statistics.median(times) / 1e9


class ConventionalMnist(torch.utils.data.Dataset):
    """One normalized image tensor [1, 28, 28] per item from the uint8 array, as
    torchvision's ToTensor + Normalize((0.1307,), (0.3081,)) make it."""

    def __init__(self, images: np.ndarray, labels: np.ndarray):
        self.images, self.labels = images, labels

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i):
        x = torch.from_numpy(self.images[i]).float().div(255).unsqueeze(0)
        return (x - 0.1307) / 0.3081, int(self.labels[i])


def conventional_epoch(model: torch.nn.Module, images: np.ndarray, labels: np.ndarray,
                       seed: int, batch_size: int = 64, lr: float = 1e-3) -> float:
    """One epoch the conventional way; returns the mean training loss."""
    loader = torch.utils.data.DataLoader(ConventionalMnist(images, labels),
                                         batch_size=batch_size, shuffle=True,
                                         generator=torch.Generator().manual_seed(seed))
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    model.train()
    total, count = 0.0, 0
    for xb, yb in loader:
        opt.zero_grad()
        loss = F.cross_entropy(model(xb), yb)
        loss.backward()
        opt.step()
        total += loss.item() * len(yb)
        count += len(yb)
    return total / count


def _timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def _med(values) -> float | None:
    values = [v for v in values if v is not None]
    return float(statistics.median(values)) if values else None


def _round(v, digits: int = 4):
    if v is None or not math.isfinite(v) or v == 0:
        return v
    return round(v, max(0, digits - 1 - math.floor(math.log10(abs(v)))))


def _load() -> str:
    try:
        return " ".join(f"{v:.2f}" for v in os.getloadavg())
    except OSError:
        return "n/a"


@contextlib.contextmanager
def _stdout_to_stderr():
    """Send this process's and its children's stdout to stderr (the suite's workers print
    progress), so that `dlscope bench --json` writes nothing but the JSON to stdout."""
    sys.stdout.flush()
    try:
        saved = os.dup(1)
    except OSError:  # no real stdout (e.g. captured): Python-level redirection only
        with contextlib.redirect_stdout(sys.stderr):
            yield
        return
    os.dup2(2, 1)
    try:
        with contextlib.redirect_stdout(sys.stderr):
            yield
    finally:
        sys.stdout.flush()
        os.dup2(saved, 1)
        os.close(saved)


def _hessian_seconds(log: Log) -> float | None:
    try:
        from dlscope.metrics.hessian import hessian_eigenvalues
    except ImportError as exc:
        log(f"hessian_1k_s: null (dlscope.metrics.hessian unavailable: {exc})")
        return None
    from dlscope import data

    ds = data.function_dataset(spec="sinc", n_train=1000, n_test=16, seed=0)
    widths = models.width_for_params(2, 1000)
    model = seeded_model(lambda: models.build(models.MLPSpec(hidden=tuple(widths))), 0)
    t = time.perf_counter()
    eig = hessian_eigenvalues(model, F.mse_loss, ds.x_train, ds.y_train)
    elapsed = time.perf_counter() - t
    if len(eig) != models.module_params(model):
        log(f"hessian_1k_s: expected {models.module_params(model)} eigenvalues, got {len(eig)}")
    return elapsed


def curvature_figures(log: Log, n: int = 10000, repeats: int = 1) -> dict:
    """Curvature of the 784-128-64-10 MLP (seed 0, at initialisation) on the first ``n``
    MNIST training images, float64, cross-entropy (medians over ``repeats``):

        hvp_per_s             Hessian-vector products per second (HessianOperator.matvec)
        hessian_top5_s        extreme_eigenvalues(k=5, which="top"), tol 1e-8
        hessian_top5_hvps     the HVPs it used
        hessian_trace_s       hessian_trace, Hutchinson, rtol 1e-2, at most 100 probes
        hessian_trace_probes  the probes it used
        hessian_density_s     hessian_density, 1 probe x 80 Lanczos steps (PyHessian-like)
    """
    from dlscope import data
    from dlscope.metrics import extreme_eigenvalues, hessian_density, hessian_trace
    from dlscope.metrics.operators import HessianOperator

    flat = data.mnist_dataset(data.MnistOptions(flatten=True), log=lambda _m: None)
    xy = (flat.x_train[:n], flat.y_train[:n])
    model = seeded_model(lambda: models.build(MLP), 0)
    loss = F.cross_entropy
    rows = []
    for _ in range(max(1, int(repeats))):
        op = HessianOperator(model, loss, xy)
        v = torch.ones(op.p, dtype=torch.float64)
        op.matvec(v)  # warm-up
        k, t = 10, time.perf_counter()
        for _ in range(k):
            op.matvec(v)
        t_hvp = time.perf_counter() - t
        t = time.perf_counter()
        top = extreme_eigenvalues(model, loss, xy, k=5, which="top", return_vectors=True)
        t_top = time.perf_counter() - t
        tr = hessian_trace(model, loss, xy, exact=False, rtol=1e-2, max_probes=100)
        d = hessian_density(model, loss, xy, probes=1, steps=80)
        rows.append({"hvp": k / t_hvp, "top": t_top, "top_hvps": top.hvps - 5,
                     "trace": tr.wall_s, "probes": tr.probes, "density": d.wall_s})
        log(f"bench: curvature on {n:,} images: {k / t_hvp:.1f} HVPs/s; top-5 {t_top:.2f} s "
            f"({top.hvps} HVPs, λmax {top.top[-1]:.4g}); trace {tr.trace:.4g} ± "
            f"{tr.stderr:.2g} in {tr.wall_s:.2f} s ({tr.probes} probes); density "
            f"{d.wall_s:.2f} s (load {_load()})")
    return {"hvp_per_s": _med(r["hvp"] for r in rows),
            "hessian_top5_s": _med(r["top"] for r in rows),
            "hessian_top5_hvps": _med(r["top_hvps"] for r in rows),
            "hessian_trace_s": _med(r["trace"] for r in rows),
            "hessian_trace_probes": _med(r["probes"] for r in rows),
            "hessian_density_s": _med(r["density"] for r in rows)}


# long and branchy on purpose: one place that runs every figure in the order the docstring gives
def run_bench(repeats: int = 3, suite: bool = False, log: Log = print, *,  # noqa: C901, PLR0915
              n_train: int = 60000, cnn_train: int | None = None, ensemble_train: int = 10000,
              ensemble_size: int = 8, sgemm_n: int = 2048, threads: int | None = None,
              hessian: bool = True, contention: int = 0) -> dict:
    """Measure this machine (see the module docstring); a dict of the figures.

    The keyword sizes exist for tests and quick looks (`n_train` images per MLP epoch,
    `cnn_train` per CNN epoch (default n_train), `ensemble_train` per ensemble member);
    the defaults are the documented figures. `contention=N` adds the MLP and conventional
    epochs with 1..N busy-loop processes competing for the cores (`dlscope.contention`).
    """
    from dlscope import data
    from dlscope.data.mnist import load_mnist_arrays
    from dlscope.train.ensemble import train_ensemble

    repeats = max(1, int(repeats))
    threads = threads or max(1, os.cpu_count() or 1)
    old_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    malloc = tune_malloc()
    cores = os.cpu_count() or 1
    log(f"bench: torch threads {threads} (of {cores} cores) for every figure; load average "
        f"{_load()} at start; OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', 'unset')}; "
        f"malloc tuned: {malloc}; {repeats} repeats, medians")
    try:
        load1 = os.getloadavg()[0]
    except OSError:
        load1 = 0.0
    if threads > 1 and load1 > cores:  # docs/PERFORMANCE.md: the contention study
        log("bench: the machine is busier than its cores; the multi-threaded figures (sgemm, "
            "CNN, ensembles, conventional loop) stall when another process holds a core, so "
            "their times and ratios are not the idle machine's")
    try:
        quiet = lambda _msg: None
        flat = data.mnist_dataset(data.MnistOptions(flatten=True), log=quiet)
        img = data.mnist_dataset(data.MnistOptions(), log=quiet)
        raw = load_mnist_arrays(log=quiet)
        n_mlp = min(n_train, flat.n_train)
        n_cnn = min(cnn_train or n_train, img.n_train)
        n_ens = min(ensemble_train, flat.n_train)

        def first(ds, n):
            return replace(ds, x_train=ds.x_train[:n], y_train=ds.y_train[:n])

        ds_mlp, ds_cnn, ds_ens = first(flat, n_mlp), first(img, n_cnn), first(flat, n_ens)
        raw_x, raw_y = raw.x_train[:n_mlp], raw.y_train[:n_mlp].astype(np.int64)
        mlp_cfg = TrainConfig(lr=1e-3, batch_size=64, epochs=1, eval_test=False)
        cnn_cfg = TrainConfig(lr=1e-3, batch_size=100, epochs=1, eval_test=False)
        mlp_flops = flops_per_epoch(MLP, n_mlp)
        cnn_flops = flops_per_epoch(CNN, n_cnn)
        log(f"bench: FLOPs per epoch = 3 x 2 x MACs/image x images: MLP {MLP} "
            f"{macs_per_image(MLP):,} MACs x {n_mlp:,} = {mlp_flops / 1e9:.1f} GFLOP; "
            f"{CNN} {macs_per_image(CNN):,} MACs x {n_cnn:,} = {cnn_flops / 1e9:.1f} GFLOP")

        def mlp() -> float:
            model = seeded_model(lambda: models.build(MLP), 0)
            return _timed(lambda: train(model, ds_mlp, mlp_cfg, seed=0))

        def conventional(seed: int) -> float:
            model = seeded_model(lambda: models.build(MLP), 0)
            return _timed(lambda: conventional_epoch(model, raw_x, raw_y, seed))

        def cnn() -> float:
            model = seeded_model(lambda: models.build(CNN), 0)
            return _timed(lambda: train(model, ds_cnn, cnn_cfg, seed=0))

        # warm-up: first calls initialise MKL/oneDNN and allocator pools
        warm = TrainConfig(lr=1e-3, batch_size=64, epochs=1, eval_test=False)
        train(seeded_model(lambda: models.build(MLP), 0), first(flat, 640), warm, 0)
        conventional_epoch(seeded_model(lambda: models.build(MLP), 0), raw_x[:640],
                           raw_y[:640], 0)
        train(seeded_model(lambda: models.build(CNN), 0), first(img, 300), cnn_cfg, 0)
        train_ensemble([MLP] * ensemble_size, first(flat, 640), warm,
                       list(range(ensemble_size)))

        rows: list[dict] = []
        for r in range(repeats):
            g = statistics.median(sgemm_gflops(sgemm_n) for _ in range(3))
            with intra_op_threads(1):
                g1 = statistics.median(sgemm_gflops(sgemm_n) for _ in range(3))
            t_mlp, t_conv, t_cnn = mlp(), conventional(r), cnn()
            rows.append({"sgemm": g, "sgemm1": g1, "mlp": t_mlp, "conv": t_conv, "cnn": t_cnn,
                         "mlp_floor": t_mlp / (mlp_flops / (g * 1e9)),
                         "mlp_floor1": t_mlp / (mlp_flops / (g1 * 1e9)),
                         "cnn_floor": t_cnn / (cnn_flops / (g * 1e9)),
                         "eng_conv": t_mlp / t_conv})
            log(f"bench: repeat {r + 1}/{repeats}: sgemm {g:.1f} GFLOP/s ({g1:.1f} on one "
                f"thread), MLP epoch "
                f"{t_mlp:.2f} s, conventional {t_conv:.2f} s, CNN epoch {t_cnn:.2f} s "
                f"(load {_load()})")

        seeds = list(range(ensemble_size))
        ens_cfg = TrainConfig(lr=1e-3, batch_size=64, epochs=1, eval_test=False)

        def ensemble() -> float:
            return _timed(lambda: train_ensemble([MLP] * ensemble_size, ds_ens, ens_cfg,
                                                 seeds))

        def sequential() -> float:
            def go():
                for s in seeds:
                    train(seeded_model(lambda: models.build(MLP), s), ds_ens, ens_cfg, s)
            return _timed(go)

        ens_rows: list[dict] = []
        for r in range(repeats):
            if r % 2 == 0:
                t_e, t_s = ensemble(), sequential()
            else:
                t_s, t_e = sequential(), ensemble()
            ens_rows.append({"ens": t_e, "seq": t_s, "ratio": t_e / t_s})
            log(f"bench: repeat {r + 1}/{repeats}: ensemble of {ensemble_size} {t_e:.2f} s, "
                f"sequential {t_s:.2f} s ({n_ens:,} images each)")

        cnn_rows = [_cnn_ensemble_times(first(img, min(3000, n_cnn)), cnn_cfg, log)
                    for _ in range(repeats)]
        busy = _contention_figures(contention, repeats, mlp, conventional, log)
        hess = [(_hessian_seconds(log) if hessian else None) for _ in range(repeats)]
        figures = {
            "sgemm_gflops": _med(r["sgemm"] for r in rows),
            "mlp_epoch_s": _med(r["mlp"] for r in rows),
            "mlp_floor_ratio": _med(r["mlp_floor"] for r in rows),
            "sgemm1_gflops": _med(r["sgemm1"] for r in rows),
            "mlp_floor1_ratio": _med(r["mlp_floor1"] for r in rows),
            "conventional_epoch_s": _med(r["conv"] for r in rows),
            "engine_vs_conventional": _med(r["eng_conv"] for r in rows),
            "cnn_epoch_s": _med(r["cnn"] for r in rows),
            "cnn_floor_ratio": _med(r["cnn_floor"] for r in rows),
            "ensemble8_s": _med(r["ens"] for r in ens_rows),
            "sequential8_s": _med(r["seq"] for r in ens_rows),
            "ensemble_ratio": _med(r["ratio"] for r in ens_rows),
            "cnn_ensemble3_s": _med(r[0] for r in cnn_rows),
            "cnn_sequential3_s": _med(r[1] for r in cnn_rows),
            "cnn_ensemble_ratio": _med(r[0] / r[1] for r in cnn_rows),
            "hessian_1k_s": _med(hess),
        }
        for k, times in busy.items():  # k competing busy processes
            figures[f"mlp_epoch_busy{k}_s"] = _med(t[0] for t in times)
            figures[f"conventional_busy{k}_s"] = _med(t[1] for t in times)
            figures[f"busy{k}_ratio"] = _med(t[0] for t in times) / figures["mlp_epoch_s"]
            figures[f"conventional_busy{k}_ratio"] = (_med(t[1] for t in times)
                                                      / figures["conventional_epoch_s"])
        if hessian:
            figures.update(curvature_figures(log, n=min(10000, flat.n_train), repeats=repeats))
        figures = {k: _round(v) for k, v in figures.items()}
        if suite:
            from dlscope.execution.suite import run_all

            with tempfile.TemporaryDirectory(prefix="dlscope-bench-") as tmp, \
                    _stdout_to_stderr():
                t = time.perf_counter()
                failed = run_all(profile="quick", out=tmp, log=log)
                figures["suite_s"] = _round(time.perf_counter() - t)
                if failed:
                    log(f"bench: suite: failed experiments: {', '.join(failed)}")
        log(f"bench: load average {_load()} at the end")
        return figures
    finally:
        torch.set_num_threads(old_threads)


def _cnn_ensemble_times(ds, cfg: TrainConfig, log: Log) -> tuple[float, float]:
    """(3 same-shape CNN members trained together, the same 3 one after the other), seconds."""
    from dlscope.train.ensemble import train_ensemble

    seeds = [0, 1, 2]
    t_e = _timed(lambda: train_ensemble([CNN] * 3, ds, cfg, seeds))
    t_s = _timed(lambda: [train(seeded_model(lambda: models.build(CNN), s), ds, cfg, s)
                          for s in seeds])
    log(f"bench: 3 {CNN} members on {ds.n_train:,} images: together {t_e:.2f} s, one by one "
        f"{t_s:.2f} s")
    return t_e, t_s


def _contention_figures(n: int, repeats: int, mlp, conventional, log: Log) -> dict:
    """{k: [(MLP epoch s, conventional epoch s) per repeat]} with k = 1..n busy processes."""
    from dlscope.contention import busy_processes

    out: dict[int, list[tuple[float, float]]] = {}
    for k in range(1, n + 1):
        with busy_processes(k, max_s=60.0 * repeats + 120):
            out[k] = [(mlp(), conventional(r)) for r in range(repeats)]
        log(f"bench: {k} busy process(es): MLP epoch {_med(t[0] for t in out[k]):.2f} s, "
            f"conventional {_med(t[1] for t in out[k]):.2f} s (load {_load()})")
    return out


def profile_steps(kind: str = "mlp", steps: int = 100, fast: bool = True,
                  row_limit: int = 15) -> str:
    """torch.profiler table (self CPU time) of `steps` engine steps of the bench MLP or CNN."""
    from torch.profiler import ProfilerActivity, profile

    from dlscope import data

    flat = kind == "mlp"
    spec, bs = (MLP, 64) if flat else (CNN, 100)
    ds = data.mnist_dataset(data.MnistOptions(flatten=flat), log=lambda _m: None)
    ds = replace(ds, x_train=ds.x_train[:steps * bs], y_train=ds.y_train[:steps * bs])
    cfg = TrainConfig(lr=1e-3, batch_size=bs, epochs=1, eval_test=False)
    train(seeded_model(lambda: models.build(spec), 0), ds, cfg, 0, fast=fast)  # warm-up
    model = seeded_model(lambda: models.build(spec), 0)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        train(model, ds, cfg, 0, fast=fast)
    return prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=row_limit)
