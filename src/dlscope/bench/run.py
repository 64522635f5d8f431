"""`run_bench`: every figure of the package docstring, in its order, from one process.

The figures are a table, `FIGURES`: (name, function) entries, each function measuring one
figure or a small group from the shared `Bench` (data, configurations, earlier figures) and
returning its dict entries; `run_bench` prepares the `Bench` and loops over the table."""

from __future__ import annotations

import json
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

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


@dataclass
class Bench:
    """What every figure of one bench run shares: its settings, the data sets cut to the asked
    sizes, the training configurations, and the figures measured so far (unrounded, so that a
    later figure can be a ratio to an earlier one)."""

    repeats: int
    log: Log
    ensemble_size: int
    sgemm_n: int
    hessian: bool
    contention: int
    suite: bool
    flat: Any  # the flattened MNIST set, whole
    img: Any  # the image MNIST set, whole
    ds_mlp: Any
    ds_cnn: Any
    ds_ens: Any
    raw_x: np.ndarray
    raw_y: np.ndarray
    mlp_cfg: TrainConfig
    cnn_cfg: TrainConfig
    mlp_flops: float
    cnn_flops: float
    figures: dict = field(default_factory=dict)

    def mlp(self) -> float:
        """Seconds of one `engine.train` epoch of the bench MLP."""
        model = seeded_model(lambda: models.build(MLP), 0)
        return timed(lambda: train(model, self.ds_mlp, self.mlp_cfg, seed=0))

    def conventional(self, seed: int) -> float:
        """Seconds of the same epoch written the usual way (`conventional_epoch`)."""
        model = seeded_model(lambda: models.build(MLP), 0)
        return timed(lambda: conventional_epoch(model, self.raw_x, self.raw_y, seed))

    def cnn(self) -> float:
        """Seconds of one `engine.train` epoch of the bench CNN."""
        model = seeded_model(lambda: models.build(CNN), 0)
        return timed(lambda: train(model, self.ds_cnn, self.cnn_cfg, seed=0))


def first(ds, n: int):
    """The data set `ds` with only its first `n` training rows."""
    return replace(ds, x_train=ds.x_train[:n], y_train=ds.y_train[:n])


def prepare(repeats: int, log: Log, *, n_train: int, cnn_train: int | None,
            ensemble_train: int, ensemble_size: int, sgemm_n: int, hessian: bool,
            contention: int, suite: bool) -> Bench:
    """Load the data, cut it to the asked sizes, log the FLOP counts and warm up (the first
    calls initialise MKL/oneDNN and allocator pools)."""
    from dlscope import data
    from dlscope.data.mnist import load_mnist_arrays
    from dlscope.train.ensemble import train_ensemble

    quiet = lambda _msg: None
    flat = data.mnist_dataset(data.MnistOptions(flatten=True), log=quiet)
    img = data.mnist_dataset(data.MnistOptions(), log=quiet)
    raw = load_mnist_arrays(log=quiet)
    n_mlp = min(n_train, flat.n_train)
    n_cnn = min(cnn_train or n_train, img.n_train)
    n_ens = min(ensemble_train, flat.n_train)
    b = Bench(repeats=repeats, log=log, ensemble_size=ensemble_size, sgemm_n=sgemm_n,
              hessian=hessian, contention=contention, suite=suite, flat=flat, img=img,
              ds_mlp=first(flat, n_mlp), ds_cnn=first(img, n_cnn), ds_ens=first(flat, n_ens),
              raw_x=raw.x_train[:n_mlp], raw_y=raw.y_train[:n_mlp].astype(np.int64),
              mlp_cfg=TrainConfig(lr=1e-3, batch_size=64, epochs=1, eval_test=False),
              cnn_cfg=TrainConfig(lr=1e-3, batch_size=100, epochs=1, eval_test=False),
              mlp_flops=flops_per_epoch(MLP, n_mlp), cnn_flops=flops_per_epoch(CNN, n_cnn))
    log(f"bench: FLOPs per epoch = 3 x 2 x MACs/image x images: MLP {MLP} "
        f"{macs_per_image(MLP):,} MACs x {n_mlp:,} = {b.mlp_flops / 1e9:.1f} GFLOP; "
        f"{CNN} {macs_per_image(CNN):,} MACs x {n_cnn:,} = {b.cnn_flops / 1e9:.1f} GFLOP")
    warm = TrainConfig(lr=1e-3, batch_size=64, epochs=1, eval_test=False)
    train(seeded_model(lambda: models.build(MLP), 0), first(flat, 640), warm, 0)
    conventional_epoch(seeded_model(lambda: models.build(MLP), 0), b.raw_x[:640],
                       b.raw_y[:640], 0)
    train(seeded_model(lambda: models.build(CNN), 0), first(img, 300), b.cnn_cfg, 0)
    train_ensemble([MLP] * ensemble_size, first(flat, 640), warm, list(range(ensemble_size)))
    return b


def epoch_figures(b: Bench) -> dict:
    """sgemm (all threads and one), the MLP, conventional and CNN epochs, and their ratios;
    within a repeat back to back."""
    rows: list[dict] = []
    for r in range(b.repeats):
        g = statistics.median(sgemm_gflops(b.sgemm_n) for _ in range(3))
        with intra_op_threads(1):
            g1 = statistics.median(sgemm_gflops(b.sgemm_n) for _ in range(3))
        t_mlp, t_conv, t_cnn = b.mlp(), b.conventional(r), b.cnn()
        rows.append({"sgemm": g, "sgemm1": g1, "mlp": t_mlp, "conv": t_conv, "cnn": t_cnn,
                     "mlp_floor": t_mlp / (b.mlp_flops / (g * 1e9)),
                     "mlp_floor1": t_mlp / (b.mlp_flops / (g1 * 1e9)),
                     "cnn_floor": t_cnn / (b.cnn_flops / (g * 1e9)),
                     "eng_conv": t_mlp / t_conv})
        b.log(f"bench: repeat {r + 1}/{b.repeats}: sgemm {g:.1f} GFLOP/s ({g1:.1f} on one "
              f"thread), MLP epoch {t_mlp:.2f} s, conventional {t_conv:.2f} s, CNN epoch "
              f"{t_cnn:.2f} s (load {load()})")
    return {"sgemm_gflops": med(r["sgemm"] for r in rows),
            "mlp_epoch_s": med(r["mlp"] for r in rows),
            "mlp_floor_ratio": med(r["mlp_floor"] for r in rows),
            "sgemm1_gflops": med(r["sgemm1"] for r in rows),
            "mlp_floor1_ratio": med(r["mlp_floor1"] for r in rows),
            "conventional_epoch_s": med(r["conv"] for r in rows),
            "engine_vs_conventional": med(r["eng_conv"] for r in rows),
            "cnn_epoch_s": med(r["cnn"] for r in rows),
            "cnn_floor_ratio": med(r["cnn_floor"] for r in rows)}


def ensemble_figures(b: Bench) -> dict:
    """The MLP ensemble against its members one after the other, alternating which goes
    first."""
    from dlscope.train.ensemble import train_ensemble

    seeds = list(range(b.ensemble_size))
    cfg = TrainConfig(lr=1e-3, batch_size=64, epochs=1, eval_test=False)

    def ensemble() -> float:
        return timed(lambda: train_ensemble([MLP] * b.ensemble_size, b.ds_ens, cfg, seeds))

    def sequential() -> float:
        def go():
            for s in seeds:
                train(seeded_model(lambda: models.build(MLP), s), b.ds_ens, cfg, s)
        return timed(go)

    rows: list[dict] = []
    for r in range(b.repeats):
        if r % 2 == 0:
            t_e, t_s = ensemble(), sequential()
        else:
            t_s, t_e = sequential(), ensemble()
        rows.append({"ens": t_e, "seq": t_s, "ratio": t_e / t_s})
        b.log(f"bench: repeat {r + 1}/{b.repeats}: ensemble of {b.ensemble_size} {t_e:.2f} s, "
              f"sequential {t_s:.2f} s ({b.ds_ens.n_train:,} images each)")
    return {"ensemble8_s": med(r["ens"] for r in rows),
            "sequential8_s": med(r["seq"] for r in rows),
            "ensemble_ratio": med(r["ratio"] for r in rows)}


def cnn_ensemble_figures(b: Bench) -> dict:
    """3 CNN members as one grouped network against the 3 one by one (`cnn_ensemble_times`)."""
    ds = first(b.img, min(3000, b.ds_cnn.n_train))
    rows = [cnn_ensemble_times(ds, b.cnn_cfg, b.log) for _ in range(b.repeats)]
    return {"cnn_ensemble3_s": med(r[0] for r in rows),
            "cnn_sequential3_s": med(r[1] for r in rows),
            "cnn_ensemble_ratio": med(r[0] / r[1] for r in rows)}


def hessian_1k_figure(b: Bench) -> dict:
    """The exact 1,000-parameter Hessian spectrum's seconds (None without `hessian`)."""
    return {"hessian_1k_s": med((hessian_seconds(b.log) if b.hessian else None)
                                for _ in range(b.repeats))}


def busy_figures(b: Bench) -> dict:
    """The MLP and conventional epochs under 1..`contention` busy processes, and their ratios
    to the idle epochs measured before."""
    figures = {}
    for k, times in contention_figures(b.contention, b.repeats, b.mlp, b.conventional,
                                       b.log).items():
        figures[f"mlp_epoch_busy{k}_s"] = med(t[0] for t in times)
        figures[f"conventional_busy{k}_s"] = med(t[1] for t in times)
        figures[f"busy{k}_ratio"] = med(t[0] for t in times) / b.figures["mlp_epoch_s"]
        figures[f"conventional_busy{k}_ratio"] = (med(t[1] for t in times)
                                                  / b.figures["conventional_epoch_s"])
    return figures


def curvature_figure(b: Bench) -> dict:
    """The bench MLP's curvature figures (`curvature_figures`; none without `hessian`)."""
    if not b.hessian:
        return {}
    return curvature_figures(b.log, n=min(10000, b.flat.n_train), repeats=b.repeats)


def suite_figure(b: Bench) -> dict:
    """Seconds of `run all --profile quick` into a temporary folder and the core utilization
    its suite.json reports (none without `suite`)."""
    if not b.suite:
        return {}
    from dlscope.driver.suite import run_all

    with tempfile.TemporaryDirectory(prefix="dlscope-bench-") as tmp, stdout_to_stderr():
        t = time.perf_counter()
        failed = run_all(profile="quick", out=tmp, log=b.log)
        seconds = time.perf_counter() - t
        if failed:
            b.log(f"bench: suite: failed experiments: {', '.join(failed)}")
        # busy core-seconds / (cores x wall), as run all wrote it (dlscope.driver.schedule)
        util = json.loads((Path(tmp) / "suite.json").read_text()).get("core_utilization")
    return {"suite_s": seconds, **({"suite_core_utilization": util} if util is not None else {})}


Figure = Callable[[Bench], dict]
# the figures in the order the package docstring (and the JSON output) gives them
FIGURES: list[tuple[str, Figure]] = [
    ("epochs", epoch_figures),
    ("ensemble", ensemble_figures),
    ("cnn ensemble", cnn_ensemble_figures),
    ("hessian 1k", hessian_1k_figure),
    ("contention", busy_figures),
    ("curvature", curvature_figure),
    ("suite", suite_figure),
]


def log_start(log: Log, threads: int, repeats: int) -> None:
    """The bench's first log lines: threads, load, malloc, and a warning on a busy machine."""
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


def run_bench(repeats: int = 3, suite: bool = False, log: Log = print, *,
              n_train: int = 60000, cnn_train: int | None = None, ensemble_train: int = 10000,
              ensemble_size: int = 8, sgemm_n: int = 2048, threads: int | None = None,
              hessian: bool = True, contention: int = 0) -> dict:
    """Measure this machine (see the module docstring); a dict of the figures, each rounded
    to 4 significant digits, in `FIGURES`' order.

    The keyword sizes exist for tests and quick looks (`n_train` images per MLP epoch,
    `cnn_train` per CNN epoch (default n_train), `ensemble_train` per ensemble member);
    the defaults are the documented figures. `contention=N` adds the MLP and conventional
    epochs with 1..N busy-loop processes competing for the cores (`dlscope.contention`).
    """
    repeats = max(1, int(repeats))
    threads = threads or max(1, os.cpu_count() or 1)
    old_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        log_start(log, threads, repeats)
        b = prepare(repeats, log, n_train=n_train, cnn_train=cnn_train,
                    ensemble_train=ensemble_train, ensemble_size=ensemble_size,
                    sgemm_n=sgemm_n, hessian=hessian, contention=contention, suite=suite)
        for _name, figure in FIGURES:
            b.figures.update(figure(b))
        log(f"bench: load average {load()} at the end")
        return {k: round_sig(v) for k, v in b.figures.items()}
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
