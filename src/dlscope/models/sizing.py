"""Sizes for a parameter budget: MLP widths, CNN heads, and a factory's size argument."""

from __future__ import annotations

import math

from torch import nn

from dlscope.errors import UserError
from dlscope.models.factory import FactorySpec, call_factory, count_module, factory_accepts
from dlscope.models.specs import CNNSpec, count_builtin


def module_params(model: nn.Module) -> int:
    """Number of parameters of a built module."""
    return sum(p.numel() for p in model.parameters())


def mlp_params(widths: list[int], input_dim: int = 1, output_dim: int = 1) -> int:
    """Parameters of an MLP input_dim -> widths... -> output_dim (weights and biases)."""
    dims = [input_dim, *widths, output_dim]
    return sum((a + 1) * b for a, b in zip(dims[:-1], dims[1:]))


def width_for_params(depth: int, target: int, input_dim: int = 1, output_dim: int = 1) -> list[int]:
    """Hidden widths for `depth` hidden layers whose MLP has about `target` parameters.

    All layers get a width w except the first, whose width w1 fine-tunes the count (a
    uniform width moves the count in steps of ~2w per unit, too coarse for a 1% match at
    small budgets). Among the (w, w1) pairs closest to the budget, the one with w1 nearest
    to w wins, so the family stays as uniform as the budget allows.
    """
    if depth < 1 or target < 1:
        raise UserError(f"width_for_params: depth and target must be >= 1 (got {depth}, {target})")
    if depth == 1:
        w = max(1, round((target - output_dim) / (input_dim + 1 + output_dim)))
        return [w]
    best: tuple[float, int, list[int]] | None = None
    w_max = max(2, int(math.sqrt(target)) + 2)
    for w in range(1, w_max + 1):
        for w1 in range(max(1, w // 3), 3 * w + 1):
            widths = [w1] + [w] * (depth - 1)
            err = abs(mlp_params(widths, input_dim, output_dim) - target)
            cand = (err, abs(w1 - w), widths)
            if best is None or cand[:2] < best[:2]:
                best = cand
    assert best is not None
    return best[2]


def cnn_for_params(fc_layers: int, target: int, channels: tuple[int, ...] = (8, 16),
                   kernel: int = 5, padding: int = 0, pool: int = 2, in_channels: int = 1,
                   input_size: int = 28, n_classes: int = 10, tol: float = 0.01) -> CNNSpec:
    """A CNN with a fixed conv stack and `fc_layers` hidden fully connected layers whose
    widths bring the whole net to about `target` parameters.

    The conv stack's parameters are exact and fixed; the fully connected head is an MLP from
    the flattened features to `n_classes`, sized by `width_for_params` for the remaining
    budget. Varying `fc_layers` at one `target` gives a family of equal size and different
    depth (SCIENCE.md section 1: 2 conv layers plus 1, 2 or 4 fully connected layers).
    A count more than `tol` (relative) from `target` is a UserError: with one hidden layer
    the count moves in steps of (features + 1 + n_classes), too coarse for small budgets.
    """
    if fc_layers < 1:
        raise UserError(f"cnn_for_params: fc_layers must be >= 1 (got {fc_layers})")
    base = CNNSpec(in_channels=in_channels, input_size=input_size, channels=tuple(channels),
                   kernel=kernel, padding=padding, pool=pool, fc=(), n_classes=n_classes)
    flat = channels[-1] * base.feature_size() ** 2
    conv = count_builtin(base) - (flat + 1) * n_classes
    budget = target - conv
    if budget < mlp_params([1] * fc_layers, flat, n_classes):
        raise UserError(f"cnn_for_params: {target:,} parameters cannot hold the conv stack "
                        f"({conv:,}) and {fc_layers} fully connected layers")
    widths = width_for_params(fc_layers, budget, input_dim=flat, output_dim=n_classes)
    spec = base.model_copy(update={"fc": tuple(widths)})
    got = count_builtin(spec)
    if abs(got - target) > tol * target:
        raise UserError(f"cnn_for_params: the nearest count to {target:,} with {fc_layers} "
                        f"fully connected layers is {got:,} ({100 * (got / target - 1):+.1f}%, "
                        f"more than {100 * tol:g}% off): choose another target")
    return spec


def _with(spec: FactorySpec, size_arg: str, size: int) -> FactorySpec:
    return spec.model_copy(update={"kwargs": dict(sorted({**spec.kwargs, size_arg: size}.items()))})


def _need_arg(spec: FactorySpec, size_arg: str) -> None:
    if not factory_accepts(spec, size_arg):
        raise UserError(f"model {spec.name}: the factory has no parameter {size_arg!r} to size")


def sized(spec: FactorySpec, target: int, *, size_arg: str = "size",
          input_shape: tuple[int, ...] | None = None, n_classes: int | None = None,
          tol: float = 0.01, max_size: int = 1 << 16) -> FactorySpec:
    """The factory spec with `size_arg` set to the whole number in [1, max_size] whose
    parameter count is nearest `target` (ties: the smaller size).

    The count must not decrease with the size: the smallest size reaching the target is
    found by bisection (counts on torch's meta device, no memory), its neighbours checked.

    Args:
        spec: A FactorySpec whose factory takes `size_arg`.
        target: The parameter count wanted.
        size_arg: The factory's keyword that sets its size.
        input_shape, n_classes: Passed to the factory as build would (when it names them).
        tol: Largest relative distance of the count from `target`.
        max_size: Largest size tried.

    Returns:
        The spec with kwargs[size_arg] set. UserError when the factory has no `size_arg`,
        the count decreases with size, or the nearest count is more than `tol` off.
    """
    _need_arg(spec, size_arg)
    if target < 1 or max_size < 1:
        raise UserError(f"sized: target and max_size must be >= 1 (got {target}, {max_size})")
    cache: dict[int, int] = {}

    def count(size: int) -> int:
        if size not in cache:
            model = call_factory(spec, input_shape, n_classes, meta=True, **{size_arg: size})
            cache[size] = count_module(model, f"factory {spec.name}")
        return cache[size]

    count(1), count(max_size)
    lo, hi = 1, max_size  # invariant: the answer (first size with count >= target) is in [lo, hi]
    while lo < hi:
        mid = (lo + hi) // 2
        if count(mid) >= target:
            hi = mid
        else:
            lo = mid + 1
    for s in (lo - 1, lo + 1):
        if 1 <= s <= max_size:
            count(s)
    seen = sorted(cache.items())  # every size tried, with the two ends and lo's neighbours
    drops = [(a, b) for a, b in zip(seen[:-1], seen[1:]) if b[1] < a[1]]
    if drops:
        (s0, n0), (s1, n1) = drops[0]
        raise UserError(f"model {spec.name}: the parameter count decreases with {size_arg} "
                        f"({n0:,} at {s0}, {n1:,} at {s1}): cannot size it")
    near = [s for s in (lo - 1, lo) if s >= 1]
    best = min(near, key=lambda s: (abs(count(s) - target), s))
    got = count(best)
    if abs(got - target) > tol * target:
        raise UserError(f"model {spec.name}: the nearest count to {target:,} is {got:,} at "
                        f"{size_arg}={best} ({100 * (got / target - 1):+.1f}%, more than "
                        f"{100 * tol:g}% off)")
    return _with(spec, size_arg, best)


def sizes_for(spec: FactorySpec, sizes: list[int], size_arg: str = "size") -> list[FactorySpec]:
    """One spec per size (a width sweep): the spec with kwargs[size_arg] = each size."""
    _need_arg(spec, size_arg)
    bad = [s for s in sizes if isinstance(s, bool) or int(s) != s or s < 1]
    if bad:
        raise UserError(f"model {spec.name}: sizes must be whole numbers >= 1, got {bad}")
    return [_with(spec, size_arg, int(s)) for s in sizes]
