"""Filter-normalized random directions and 1-D loss curves (Li et al. 2018, arXiv:1712.09913).

A loss curve ``t ↦ L(θ + t·d)`` along a raw random direction d depends on the scale of θ:
ReLU nets are invariant to rescaling a layer's weights by c and the next one's by 1/c, yet the
curve changes.  Li et al. draw d ~ N(0, I) and rescale every *filter* of d to the norm of the
same filter of θ::

    d_{i,j} ← d_{i,j} / ‖d_{i,j}‖ · ‖θ_{i,j}‖

where a filter is a row of a linear layer's weight (one output unit) or one output channel of
a conv kernel (dim 0 of any weight with ≥ 2 dimensions).  Entries of d for parameters with
fewer than 2 dimensions (biases, norm-layer scales and shifts) are set to 0, Li et al.'s
``ignore='biasbn'`` choice.  Then ``t = 1`` moves every filter by its own length, and curves of
different models are on comparable scales.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import numpy as np
import pandas as pd
import torch
from torch import nn

from dlscope.errors import UserError

__all__ = ["curve_rise", "filter_normalized_direction", "loss_curve_1d"]


def filter_normalized_direction(model: nn.Module, seed: int = 0) -> dict[str, torch.Tensor]:
    """A random direction with the shapes of ``model``'s parameters, filter-normalized.

    The Gaussian draw depends only on ``seed`` and the parameter shapes (a CPU generator, in
    ``named_parameters`` order), so models of one architecture get the same raw draw, each
    rescaled to its own filters.  A filter of θ that is exactly zero stays zero in d.

    Args:
        model: the network.
        seed: the seed of the Gaussian draw.

    Returns:
        ``{name: tensor}`` with the parameters' names, shapes, dtypes and devices.

    Each row of a weight gets the norm of the same row of θ; biases get 0:

    >>> m = torch.nn.Linear(2, 2)
    >>> with torch.no_grad():
    ...     _ = m.weight.copy_(torch.tensor([[3.0, 4.0], [0.0, 1.0]]))
    >>> d = filter_normalized_direction(m, seed=0)
    >>> d["weight"].norm(dim=1), d["bias"]
    (tensor([5., 1.]), tensor([0., 0.]))
    """
    gen = torch.Generator(device="cpu").manual_seed(int(seed))
    out: dict[str, torch.Tensor] = {}
    for name, p in model.named_parameters():
        w = p.detach()
        if w.dim() < 2:
            out[name] = torch.zeros_like(w)
            continue
        d = torch.randn(w.shape, generator=gen, dtype=torch.float64)
        wf = w.to(torch.float64).cpu().reshape(w.shape[0], -1)
        df = d.reshape(w.shape[0], -1)
        dn = df.norm(dim=1, keepdim=True)
        scale = torch.where(dn > 0, wf.norm(dim=1, keepdim=True) / dn, torch.zeros_like(dn))
        out[name] = (df * scale).reshape(w.shape).to(device=w.device, dtype=w.dtype)
    return out


def loss_curve_1d(model: nn.Module, direction: dict[str, torch.Tensor], ts: Iterable[float],
                  evaluate: Callable[[nn.Module], dict]) -> pd.DataFrame:
    """``evaluate`` at θ + t·d for each t; one row per t ("t" + evaluate's keys).

    The parameters are moved in place under ``no_grad`` and restored exactly (a saved copy)
    afterwards, also on error; the model's mode is left to ``evaluate``.

    Args:
        model: the network.
        direction: ``{name: tensor}`` with the model's parameter names.
        ts: the step sizes t.
        evaluate: ``evaluate(model) -> dict`` of numbers.

    Returns:
        A DataFrame, one row per t: ``t`` and ``evaluate``'s keys.

    Raises:
        UserError: ``direction`` and the model have different parameter names.

    >>> m = torch.nn.Linear(1, 1, bias=False)
    >>> with torch.no_grad():
    ...     _ = m.weight.fill_(1.0)
    >>> df = loss_curve_1d(m, {"weight": torch.ones(1, 1)}, [-1.0, 2.0],
    ...                    lambda mm: {"w": mm.weight.item()})
    >>> df["w"].tolist(), m.weight.item()  # θ + t·d, then θ restored
    ([0.0, 3.0], 1.0)
    """
    params = dict(model.named_parameters())
    if set(direction) != set(params):
        raise UserError("direction and model have different parameter names")
    ts = [float(t) for t in np.atleast_1d(np.asarray(list(ts), dtype=float))]
    saved = {k: p.detach().clone() for k, p in params.items()}
    rows = []
    try:
        for t in ts:
            with torch.no_grad():
                for k, p in params.items():
                    p.copy_(saved[k] + t * direction[k])
            rows.append({"t": t, **evaluate(model)})
    finally:
        with torch.no_grad():
            for k, p in params.items():
                p.copy_(saved[k])
    return pd.DataFrame(rows)


def curve_rise(t, loss) -> float:
    """Width summary of a 1-D curve symmetric about t = 0; larger: a narrower minimum.

    Args:
        t: the step sizes.
        loss: the loss at each t.

    Returns:
        The mean loss at t = ±max|t|/2 (the nearest grid points) minus the loss at t = 0.

    For ``loss = t²`` on [−2, 2]: the loss at ±1 is 1:

    >>> curve_rise([-2, -1, 0, 1, 2], [4.0, 1.0, 0.0, 1.0, 4.0])
    1.0
    """
    t, loss = np.asarray(t, dtype=float), np.asarray(loss, dtype=float)
    half = np.abs(t).max() / 2
    at = [loss[np.abs(t - v).argmin()] for v in (-half, half)]
    return float(np.mean(at) - loss[np.abs(t).argmin()])
