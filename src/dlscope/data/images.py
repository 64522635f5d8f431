"""Image (and flat-feature) classification data as tensors: the part shared by every kind.

A loader (mnist, cifar10, npz) finds and checks four raw arrays; :func:`image_dataset` turns
them into a :class:`Dataset` the same way for all of them:

1. ``train_subset``: the first n of ``np.random.default_rng([seed, 0]).permutation(N)``;
2. ``label_noise``: :func:`noisy_labels` (a seeded fraction of train labels made uniform);
3. images to float32 (uint8 divided by 255; float data as it is), ``[N, H, W]`` gets a
   channel axis, ``[N, C, H, W]`` stays, ``[N, D]`` is a vector dataset;
4. ``normalize``: per channel, ``(x - mean_c) / std_c`` with the mean and standard deviation
   (ddof 0) of that channel over ALL training images (not the subset, so every subset of a
   dataset sees the same inputs); MNIST uses its published constants instead. A vector
   dataset ``[N, D]`` counts as one channel (one mean and std over all its values), so
   near-constant features are not blown up;
5. ``flatten``: ``[N, C*H*W]``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from dlscope.data.dataset import Dataset
from dlscope.errors import UserError

_KEYS = ("x_train", "y_train", "x_test", "y_test")


class ImageOptions(BaseModel):
    """How to turn raw image arrays into tensors (``MnistOptions`` without ``resize``)."""

    model_config = ConfigDict(extra="forbid")

    normalize: bool = True  # per channel: (x - train mean) / train std
    flatten: bool = False  # x as [N, C*H*W] instead of [N, C, H, W]
    train_subset: int | None = Field(None, ge=1)  # first n of a seeded permutation
    label_noise: float = Field(0.0, ge=0.0, le=1.0)  # fraction of train labels made uniform
    seed: int = Field(0, ge=0)  # for train_subset and label_noise


def image_options(kind: str, options: dict) -> ImageOptions:
    """``ImageOptions(**options)``, a bad key or value raising a one-line UserError."""
    try:
        return ImageOptions(**options)
    except ValidationError as e:
        err = e.errors()[0]
        where = ".".join(str(p) for p in err.get("loc", ())) or "options"
        raise UserError(f"data {kind}: {where}: {err.get('msg', 'invalid')} "
                        f"(got {err.get('input')!r})") from None


@dataclass(frozen=True)
class DataInfo:
    """What a dataset description gives, known without building tensors.

    input_shape: one example's shape BEFORE ``flatten``: ``(1, 28, 28)``, ``(3, 32, 32)``
    or ``(D,)``; n_classes; name: "mnist", "cifar10", "npz" or "other"; official: verified
    MNIST / verified CIFAR-10; source: human-readable origin.
    """

    input_shape: tuple[int, ...]
    n_classes: int
    name: str
    official: bool
    source: str


def noisy_labels(y: np.ndarray, fraction: float, seed: int, n_classes: int = 10) -> np.ndarray:
    """Zhang et al. 2017: a seeded ``fraction`` of examples get uniformly random labels.

    A replaced label may equal the old one by chance, so about ``fraction * (1 - 1/n_classes)``
    of the labels actually change. ``fraction=1`` gives all-uniform labels.

    Args:
        y: integer labels ``[N]``.
        fraction: in [0, 1]; ``round(fraction * N)`` labels are redrawn.
        seed: the draw is ``np.random.default_rng([seed, 1])``.
        n_classes: new labels are uniform over ``0..n_classes-1``.

    Returns:
        A new int64 array.

    >>> noisy_labels(np.zeros(4, dtype=np.int64), 0.0, seed=0).tolist()
    [0, 0, 0, 0]
    """
    rng = np.random.default_rng([seed, 1])
    y = np.array(y, dtype=np.int64, copy=True)
    n_noisy = round(fraction * len(y))
    idx = rng.permutation(len(y))[:n_noisy]
    y[idx] = rng.integers(0, n_classes, size=n_noisy)
    return y


def subset_and_noise(x: np.ndarray, y: np.ndarray, *, train_subset: int | None,
                     label_noise: float, seed: int, n_classes: int
                     ) -> tuple[np.ndarray, np.ndarray]:
    """The training arrays after ``train_subset`` and ``label_noise`` (steps 1-2 above).

    Returns:
        ``(x, y)``: x a (copied) selection of the input rows, y int64.

    Raises:
        UserError: ``train_subset`` larger than the number of training examples.
    """
    y = np.asarray(y).astype(np.int64)
    if train_subset is not None:
        if train_subset > len(y):
            raise UserError(f"train_subset={train_subset} > {len(y)} training images")
        idx = np.random.default_rng([seed, 0]).permutation(len(y))[:train_subset]
        x, y = x[idx], y[idx]
    if label_noise > 0:
        y = noisy_labels(y, label_noise, seed, n_classes)
    return x, y


def _unit_scale(x: np.ndarray) -> float:
    return 255.0 if x.dtype == np.uint8 else 1.0


def channel_stats(x: np.ndarray) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and standard deviation (ddof 0, float64) of training images as the
    tensors see them (uint8 divided by 255), one channel for ``[N, H, W]`` and ``[N, D]``.

    uint8 data is counted exactly (a histogram per channel); float data in float64 chunks.
    A channel with zero spread gets std 1 (it is only shifted).

    Returns:
        ``(means, stds)``, tuples of floats, one per channel.

    >>> channel_stats(np.array([[[0, 255]]], dtype=np.uint8))
    ((0.5,), (0.5,))
    """
    x = np.asarray(x)
    chans = [x[:, c] for c in range(x.shape[1])] if x.ndim == 4 else [x]
    means, stds = [], []
    for ch in chans:
        if ch.dtype == np.uint8:
            counts = np.bincount(np.ascontiguousarray(ch).reshape(-1), minlength=256)
            values = np.arange(256, dtype=np.float64) / 255.0
            n = counts.sum()
            mean = float((counts * values).sum() / n)
            var = float((counts * (values - mean) ** 2).sum() / n)
        else:
            flat = ch.reshape(len(ch), -1)
            step = max(1, 2**22 // max(1, flat.shape[1]))
            total = sum(float(flat[i:i + step].sum(dtype=np.float64))
                        for i in range(0, len(flat), step))
            mean = total / flat.size
            var = sum(float(((flat[i:i + step].astype(np.float64) - mean) ** 2).sum())
                      for i in range(0, len(flat), step)) / flat.size
        std = float(np.sqrt(var))
        means.append(mean)
        stds.append(std if std > 0 else 1.0)
    return tuple(means), tuple(stds)


def images_tensor(x: np.ndarray, *, normalize: bool, flatten: bool,
                  mean: Sequence[float] = (), std: Sequence[float] = (),
                  resize: int | None = None) -> torch.Tensor:
    """Raw images to a float32 tensor (steps 3-5 above).

    Args:
        x: ``[N, H, W]``, ``[N, C, H, W]`` (uint8 or float) or ``[N, D]``.
        normalize: subtract ``mean[c]`` and divide by ``std[c]``, channel by channel.
        flatten: return ``[N, C*H*W]``.
        mean, std: one float per channel (after the /255 of uint8 data).
        resize: bilinear resize (align_corners=False) to ``resize x resize`` (MNIST's option).

    Returns:
        ``[N, C, H, W]`` (or ``[N, D]``, or flattened) float32.
    """
    t = torch.from_numpy(np.asarray(x).astype(np.float32))
    scale = _unit_scale(np.asarray(x))
    if scale != 1.0:
        t = t.div_(scale)
    if t.ndim == 3:
        t = t.unsqueeze(1)
    if resize is not None and t.ndim == 4 and tuple(t.shape[2:]) != (resize, resize):
        t = torch.nn.functional.interpolate(
            t, size=(resize, resize), mode="bilinear", align_corners=False
        )
    if normalize:
        if t.ndim == 4:
            if len(mean) != t.shape[1] or len(std) != t.shape[1]:
                raise ValueError(f"{t.shape[1]} channels but {len(mean)} means, {len(std)} stds")
            for c in range(t.shape[1]):  # python scalars: the same arithmetic as MNIST's
                t[:, c].sub_(float(mean[c])).div_(float(std[c]))
        else:
            t = t.sub_(float(mean[0])).div_(float(std[0]))
    return t.flatten(1) if flatten else t


def _get(arrays, key: str) -> np.ndarray:
    return arrays[key] if isinstance(arrays, dict) else getattr(arrays, key)


def image_dataset(arrays, options: ImageOptions | dict | None = None, *, name: str,
                  source: str, n_classes: int,
                  stats: tuple[Sequence[float], Sequence[float]] | None = None,
                  resize: int | None = None) -> Dataset:
    """A classification Dataset from four raw arrays (see the module docstring).

    Args:
        arrays: a dict or an object with ``x_train, y_train, x_test, y_test`` (checked
            already: images ``[N, H, W]``, ``[N, C, H, W]`` or ``[N, D]``, labels in
            ``0..n_classes-1``).
        options: ImageOptions (or its fields as a dict).
        name, source, n_classes: the Dataset's metadata.
        stats: ``(means, stds)`` per channel for ``normalize``; None: computed from
            ``x_train`` (:func:`channel_stats`).
        resize: MNIST's bilinear resize (None: none).

    Returns:
        Dataset with float32 x ``[N, C, H, W]`` (``[N, C*H*W]`` if flatten, ``[N, D]`` for
        vector data) and int64 y, on the CPU.

    >>> a = {"x_train": np.array([[[0, 255]], [[255, 0]]], dtype=np.uint8),
    ...      "y_train": np.array([0, 1]), "x_test": np.zeros((1, 1, 2), np.uint8),
    ...      "y_test": np.array([1])}
    >>> image_dataset(a, {"flatten": True}, name="toy", source="doc", n_classes=2).x_train
    tensor([[-1.,  1.],
            [ 1., -1.]])
    """
    opts = ImageOptions(**options) if isinstance(options, dict) else options or ImageOptions()
    x_train, y_train = subset_and_noise(
        _get(arrays, "x_train"), _get(arrays, "y_train"), train_subset=opts.train_subset,
        label_noise=opts.label_noise, seed=opts.seed, n_classes=n_classes)
    if opts.normalize and stats is None:
        stats = channel_stats(_get(arrays, "x_train"))
    mean, std = stats if stats is not None else ((), ())
    kw = {"normalize": opts.normalize, "flatten": opts.flatten, "mean": mean, "std": std,
          "resize": resize}
    return Dataset(
        x_train=images_tensor(x_train, **kw),
        y_train=torch.from_numpy(y_train),
        x_test=images_tensor(_get(arrays, "x_test"), **kw),
        y_test=torch.from_numpy(np.asarray(_get(arrays, "y_test")).astype(np.int64)),
        name=name,
        n_classes=n_classes,
        source=source,
    )


@dataclass(eq=False)
class ImageArrays:
    """Checked raw arrays of one image dataset, loaded once per process (read-only).

    x: uint8 or float ``[N, H, W]``, ``[N, C, H, W]`` or ``[N, D]``; y: int64 in
    ``0..n_classes-1``; sha256: :func:`dlscope.data.fingerprint.arrays_sha256` of the four.
    """

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    n_classes: int
    name: str  # "cifar10", "npz", "other"
    official: bool
    source: str
    sha256: str
    classes: tuple[str, ...] | None = None
    _stats: tuple | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        for key in _KEYS:
            getattr(self, key).flags.writeable = False

    @property
    def input_shape(self) -> tuple[int, ...]:
        """One example's shape before flatten: ``(C, H, W)`` (``[N, H, W]`` -> ``(1, H, W)``)
        or ``(D,)``."""
        shape = tuple(int(n) for n in self.x_train.shape[1:])
        return (1, *shape) if len(shape) == 2 else shape

    def stats(self) -> tuple[tuple[float, ...], tuple[float, ...]]:
        """Per-channel train mean and std (:func:`channel_stats`), computed once."""
        if self._stats is None:
            self._stats = channel_stats(self.x_train)
        return self._stats

    def info(self) -> DataInfo:
        """The DataInfo of these arrays."""
        return DataInfo(input_shape=self.input_shape, n_classes=self.n_classes,
                        name=self.name, official=self.official, source=self.source)

    def dataset(self, options: ImageOptions) -> Dataset:
        """The tensors (:func:`image_dataset`) for ``options``."""
        return image_dataset(self, options, name=self.name, source=self.source,
                             n_classes=self.n_classes,
                             stats=self.stats() if options.normalize else None)

    def nbytes(self, options: ImageOptions) -> int:
        """float32 bytes of the tensors ``options`` give."""
        return tensor_nbytes(self.x_train.shape, self.x_test.shape, options.train_subset)


def tensor_nbytes(train_shape: Sequence[int], test_shape: Sequence[int],
                  train_subset: int | None) -> int:
    """float32 bytes of x and int64 bytes of y for arrays of these shapes (after subset).

    >>> tensor_nbytes((10, 3, 2, 2), (5, 3, 2, 2), train_subset=4)
    504
    """
    per = int(np.prod(train_shape[1:], dtype=np.int64))
    n = min(train_subset, train_shape[0]) if train_subset else train_shape[0]
    return (4 * per + 8) * (int(n) + int(test_shape[0]))
