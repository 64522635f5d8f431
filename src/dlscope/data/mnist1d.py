"""MNIST-1D (Greydanus 2020): 4,000 train / 1,000 test length-40 sequences, generated locally.

Uses ``mnist1d.data.make_dataset`` (pure numpy/scipy generation; ``get_dataset`` would try to
download a pickle, so it is never called). ``make_dataset`` reseeds numpy's and Python's
global RNGs; their states are saved and restored around the call.
"""

from __future__ import annotations

import random

import numpy as np
import torch

from dlscope.data.dataset import Dataset

# The published dataset (mnist1d_data.pkl, and get_dataset_args()'s default) uses seed 42.
CANONICAL_SEED = 42

_CACHE: dict[int, dict] = {}


def _generate(seed: int) -> dict:
    if seed not in _CACHE:
        from mnist1d.data import (  # slow import (matplotlib)
            get_dataset_args,
            make_dataset,
        )

        args = get_dataset_args()
        args.seed = seed
        np_state, py_state = np.random.get_state(), random.getstate()
        try:
            _CACHE[seed] = make_dataset(args)
        finally:
            np.random.set_state(np_state)
            random.setstate(py_state)
    return _CACHE[seed]


def mnist1d_dataset(seed: int = 0, device: str | torch.device = "cpu") -> Dataset:
    """MNIST-1D as tensors: x float32 ``[N, 40]``, y int64, 10 classes (same seed, same data)."""
    d = _generate(int(seed))
    ds = Dataset(
        x_train=torch.tensor(d["x"], dtype=torch.float32),
        y_train=torch.tensor(d["y"], dtype=torch.int64),
        x_test=torch.tensor(d["x_test"], dtype=torch.float32),
        y_test=torch.tensor(d["y_test"], dtype=torch.int64),
        name="mnist1d",
        n_classes=10,
        source=f"mnist1d.data.make_dataset (generated locally, seed {seed})",
    )
    return ds if str(device) == "cpu" else ds.to(device)
