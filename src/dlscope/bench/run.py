"""`run_bench`: every figure of the package docstring, in its order, from one process."""

from __future__ import annotations

import os
import statistics
import tempfile
import time
from dataclasses import replace

import numpy as np
import torch

from dlscope import models
from dlscope.bench.conventional import conventional_epoch
from dlscope.bench.curvature import curvature_figures, hessian_seconds
from dlscope.bench.floors import CNN, MLP, flops_per_epoch, macs_per_image, sgemm_gflops
from dlscope.bench.timing import Log, load, med, round_sig, stdout_to_stderr, timed
from dlscope.train.engine import TrainConfig, seeded_model, train
from dlscope.train.fastpath import tune_malloc
from dlscope.train.threads import intra_op_threads


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
        f"{load()} at start; OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', 'unset')}; "
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
            return timed(lambda: train(model, ds_mlp, mlp_cfg, seed=0))

        def conventional(seed: int) -> float:
            model = seeded_model(lambda: models.build(MLP), 0)
            return timed(lambda: conventional_epoch(model, raw_x, raw_y, seed))

        def cnn() -> float:
            model = seeded_model(lambda: models.build(CNN), 0)
            return timed(lambda: train(model, ds_cnn, cnn_cfg, seed=0))

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
                f"(load {load()})")

        seeds = list(range(ensemble_size))
        ens_cfg = TrainConfig(lr=1e-3, batch_size=64, epochs=1, eval_test=False)

        def ensemble() -> float:
            return timed(lambda: train_ensemble([MLP] * ensemble_size, ds_ens, ens_cfg,
                                                 seeds))

        def sequential() -> float:
            def go():
                for s in seeds:
                    train(seeded_model(lambda: models.build(MLP), s), ds_ens, ens_cfg, s)
            return timed(go)

        ens_rows: list[dict] = []
        for r in range(repeats):
            if r % 2 == 0:
                t_e, t_s = ensemble(), sequential()
            else:
                t_s, t_e = sequential(), ensemble()
            ens_rows.append({"ens": t_e, "seq": t_s, "ratio": t_e / t_s})
            log(f"bench: repeat {r + 1}/{repeats}: ensemble of {ensemble_size} {t_e:.2f} s, "
                f"sequential {t_s:.2f} s ({n_ens:,} images each)")

        cnn_rows = [cnn_ensemble_times(first(img, min(3000, n_cnn)), cnn_cfg, log)
                    for _ in range(repeats)]
        busy = contention_figures(contention, repeats, mlp, conventional, log)
        hess = [(hessian_seconds(log) if hessian else None) for _ in range(repeats)]
        figures = {
            "sgemm_gflops": med(r["sgemm"] for r in rows),
            "mlp_epoch_s": med(r["mlp"] for r in rows),
            "mlp_floor_ratio": med(r["mlp_floor"] for r in rows),
            "sgemm1_gflops": med(r["sgemm1"] for r in rows),
            "mlp_floor1_ratio": med(r["mlp_floor1"] for r in rows),
            "conventional_epoch_s": med(r["conv"] for r in rows),
            "engine_vs_conventional": med(r["eng_conv"] for r in rows),
            "cnn_epoch_s": med(r["cnn"] for r in rows),
            "cnn_floor_ratio": med(r["cnn_floor"] for r in rows),
            "ensemble8_s": med(r["ens"] for r in ens_rows),
            "sequential8_s": med(r["seq"] for r in ens_rows),
            "ensemble_ratio": med(r["ratio"] for r in ens_rows),
            "cnn_ensemble3_s": med(r[0] for r in cnn_rows),
            "cnn_sequential3_s": med(r[1] for r in cnn_rows),
            "cnn_ensemble_ratio": med(r[0] / r[1] for r in cnn_rows),
            "hessian_1k_s": med(hess),
        }
        for k, times in busy.items():  # k competing busy processes
            figures[f"mlp_epoch_busy{k}_s"] = med(t[0] for t in times)
            figures[f"conventional_busy{k}_s"] = med(t[1] for t in times)
            figures[f"busy{k}_ratio"] = med(t[0] for t in times) / figures["mlp_epoch_s"]
            figures[f"conventional_busy{k}_ratio"] = (med(t[1] for t in times)
                                                      / figures["conventional_epoch_s"])
        if hessian:
            figures.update(curvature_figures(log, n=min(10000, flat.n_train), repeats=repeats))
        figures = {k: round_sig(v) for k, v in figures.items()}
        if suite:
            from dlscope.execution.suite import run_all

            with tempfile.TemporaryDirectory(prefix="dlscope-bench-") as tmp, \
                    stdout_to_stderr():
                t = time.perf_counter()
                failed = run_all(profile="quick", out=tmp, log=log)
                figures["suite_s"] = round_sig(time.perf_counter() - t)
                if failed:
                    log(f"bench: suite: failed experiments: {', '.join(failed)}")
        log(f"bench: load average {load()} at the end")
        return figures
    finally:
        torch.set_num_threads(old_threads)


def cnn_ensemble_times(ds, cfg: TrainConfig, log: Log) -> tuple[float, float]:
    """(3 same-shape CNN members trained together as one grouped network, the same 3 one
    after the other), seconds."""
    from dlscope.train.ensemble import train_ensemble

    seeds = [0, 1, 2]
    t_e = timed(lambda: train_ensemble([CNN] * 3, ds, cfg, seeds, group_cnns=True))
    t_s = timed(lambda: [train(seeded_model(lambda: models.build(CNN), s), ds, cfg, s)
                         for s in seeds])
    log(f"bench: 3 {CNN} members on {ds.n_train:,} images: together (grouped) {t_e:.2f} s, "
        f"one by one {t_s:.2f} s")
    return t_e, t_s


def contention_figures(n: int, repeats: int, mlp, conventional, log: Log) -> dict:
    """{k: [(MLP epoch s, conventional epoch s) per repeat]} with k = 1..n busy processes."""
    from dlscope.contention import busy_processes

    out: dict[int, list[tuple[float, float]]] = {}
    for k in range(1, n + 1):
        with busy_processes(k, max_s=60.0 * repeats + 120):
            out[k] = [(mlp(), conventional(r)) for r in range(repeats)]
        log(f"bench: {k} busy process(es): MLP epoch {med(t[0] for t in out[k]):.2f} s, "
            f"conventional {med(t[1] for t in out[k]):.2f} s (load {load()})")
    return out
