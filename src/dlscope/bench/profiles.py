"""torch.profiler tables of engine steps, for docs/PERFORMANCE.md's "where the time goes"."""

from __future__ import annotations

from dataclasses import replace

from dlscope import models
from dlscope.bench.floors import CNN, MLP
from dlscope.train.engine import TrainConfig, seeded_model, train


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
