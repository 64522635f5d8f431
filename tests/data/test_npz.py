"""The npz kind (a user's own arrays), parse_data/data_label/info, and the shared image
pipeline against MNIST's former formula."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from dlscope.data import (
    DataInfo,
    MnistOptions,
    build_dataset,
    content_description,
    data_label,
    identity,
    info,
    load_mnist_arrays,
    load_npz_arrays,
    mnist_dataset,
    nbytes,
    parse_data,
    register_kind,
)
from dlscope.data import kinds as kinds_mod
from dlscope.data.images import noisy_labels
from dlscope.errors import UserError


def arrays(n=30, m=12, shape=(6, 5), k=4, dtype=np.uint8, seed=0):
    rng = np.random.default_rng(seed)
    if dtype == np.uint8:
        x = rng.integers(0, 256, size=(n + m, *shape), dtype=np.uint8)
    else:
        x = rng.normal(2.0, 3.0, size=(n + m, *shape)).astype(dtype)
    y = rng.integers(0, k, size=n + m)
    y[0] = k - 1
    return {"x_train": x[:n], "y_train": y[:n], "x_test": x[n:], "y_test": y[n:]}


def save(tmp_path, name="d.npz", **arrs):
    path = tmp_path / name
    np.savez(path, **arrs)
    return path


def npz(path, **options):
    return {"kind": "npz", "path": str(path), **options}


def test_uint8_one_channel_round_trip(tmp_path):
    a = arrays()
    path = save(tmp_path, **a)
    ds = build_dataset(npz(path, normalize=False))
    assert ds.input_shape == (1, 6, 5) and ds.n_classes == 4 and ds.name == "npz"
    np.testing.assert_allclose(ds.x_train[:, 0].numpy(), a["x_train"] / 255.0, rtol=1e-6)
    np.testing.assert_array_equal(ds.y_train.numpy(), a["y_train"])
    np.testing.assert_array_equal(ds.y_test.numpy(), a["y_test"])
    assert ds.y_train.dtype == torch.int64 and ds.x_test.dtype == torch.float32
    v = a["x_train"] / 255.0
    norm = build_dataset(npz(path, flatten=True))
    np.testing.assert_allclose(norm.x_test.numpy(),
                               ((a["x_test"] / 255.0 - v.mean()) / v.std()).reshape(12, 30),
                               atol=2e-6)
    assert info(npz(path, flatten=True)) == DataInfo(
        (1, 6, 5), 4, "npz", False, load_npz_arrays(path).source)


def test_float_channels_and_vectors(tmp_path):
    a = arrays(shape=(3, 4, 4), dtype=np.float64)
    ds = build_dataset(npz(save(tmp_path, **a)))
    mean = a["x_train"].mean(axis=(0, 2, 3), keepdims=True)
    std = a["x_train"].std(axis=(0, 2, 3), keepdims=True)
    np.testing.assert_allclose(ds.x_train.numpy(), (a["x_train"] - mean) / std, atol=1e-5)
    np.testing.assert_allclose(ds.x_test.numpy(), (a["x_test"] - mean) / std, atol=1e-5)
    v = arrays(shape=(7,), dtype=np.float32, k=3)
    path = save(tmp_path, "v.npz", **v)
    vec = build_dataset(npz(path))
    assert vec.input_shape == (7,) and info(npz(path)).input_shape == (7,)
    x = v["x_train"].astype(np.float64)  # a vector dataset is one channel
    np.testing.assert_allclose(vec.x_train.numpy(), (x - x.mean()) / x.std(), atol=1e-5)
    raw = build_dataset(npz(path, normalize=False))
    assert torch.equal(raw.x_train, torch.from_numpy(v["x_train"]))


def test_classes_span_train_and_test_and_subset_noise(tmp_path):
    a = arrays(k=3)
    a["y_test"][1] = 6  # a class only the test set has
    path = save(tmp_path, **a)
    assert info(npz(path)).n_classes == 7
    ds = build_dataset(npz(path, train_subset=10, label_noise=1.0, seed=4, normalize=False))
    idx = np.random.default_rng([4, 0]).permutation(30)[:10]
    np.testing.assert_array_equal(ds.y_train.numpy(),
                                  noisy_labels(a["y_train"][idx], 1.0, 4, n_classes=7))
    np.testing.assert_allclose(ds.x_train[:, 0].numpy(), a["x_train"][idx] / 255.0, rtol=1e-6)
    assert nbytes(npz(path, train_subset=10)) == (4 * 30 + 8) * (10 + 12)
    assert nbytes(npz(path)) == (4 * 30 + 8) * (30 + 12)


def test_identity_is_the_content_not_the_path(tmp_path):
    a = arrays()
    p1, p2 = save(tmp_path, "one.npz", **a), save(tmp_path, "two.npz", **a)
    i1 = identity(npz(p1))
    assert i1 == identity(npz(p2)) and i1["official"] is False and len(i1["sha256"]) == 64
    b = {k: v.copy() for k, v in a.items()}
    b["y_test"][0] = (b["y_test"][0] + 1) % 4
    assert identity(npz(save(tmp_path, "three.npz", **b)))["sha256"] != i1["sha256"]
    assert content_description(npz(p1, seed=1)) == content_description(npz(p2, seed=1))
    assert data_label(npz(p1)) == "npz:one.npz"


def _refused(tmp_path, message, **arrs):
    path = save(tmp_path, "bad.npz", **arrs)
    with pytest.raises(UserError, match=message) as e:
        build_dataset(npz(path))
    assert "\n" not in str(e.value) and "bad.npz" in str(e.value)


@pytest.mark.parametrize("change, message", [
    (lambda a: a.update(x_test=a["x_test"][:, :5]), r"train examples are \(6, 5\) but test"),
    (lambda a: a.update(x_train=a["x_train"][..., None, None]), r"x_train has shape"),
    (lambda a: a.update(y_train=a["y_train"][:, None]), "y_train is int64 .* expected 1-D"),
    (lambda a: a.update(y_test=a["y_test"][:5]), "y_test has 5 labels but x_test has 12"),
    (lambda a: a.update(y_train=a["y_train"] - 1), "y_train has label -1"),
    (lambda a: a.update(y_train=a["y_train"] * 0, y_test=a["y_test"] * 0), "every label is 0"),
    (lambda a: a.update(y_test=a["y_test"].astype(float)), "y_test is float64"),
    (lambda a: a.update(x_train=a["x_train"].astype(np.int16)), "x_train is int16"),
    (lambda a: a["y_train"].__setitem__(0, 10**6), "more than 65536"),
])
def test_bad_contents_are_one_line_errors(tmp_path, change, message):
    a = arrays()
    change(a)
    _refused(tmp_path, message, **a)


def test_nan_and_inf_are_counted(tmp_path):
    a = arrays(dtype=np.float32)
    a["x_train"][0, 0, :2] = np.nan
    a["x_train"][3, 1, 1] = np.inf
    _refused(tmp_path, "x_train has 3 non-finite values", **a)


def test_keys_objects_and_files(tmp_path, monkeypatch):
    a = arrays()
    _refused(tmp_path, r"missing y_test \(it must hold exactly x_train, y_train, x_test, "
             r"y_test\)", **{k: v for k, v in a.items() if k != "y_test"})
    _refused(tmp_path, "unexpected extra", **a, extra=np.zeros(1))
    obj = dict(a, y_train=np.array([1, "a"] * 15, dtype=object))
    _refused(tmp_path, "y_train is an object array", **obj)
    text = tmp_path / "text.npz"
    text.write_text("hello")
    with pytest.raises(UserError, match="text.npz: not a zip/npz archive"):
        build_dataset(npz(text))
    good = save(tmp_path, "good.npz", **a).read_bytes()
    (tmp_path / "cut.npz").write_bytes(good[: len(good) // 2])
    with pytest.raises(UserError, match="cut.npz: (not a zip|unreadable)"):
        build_dataset(npz(tmp_path / "cut.npz"))
    with pytest.raises(UserError, match="is not a file"):
        build_dataset(npz(tmp_path))
    with pytest.raises(UserError, match="missing.npz does not exist"):
        info(npz(tmp_path / "missing.npz"))
    with pytest.raises(UserError, match="data npz: flaten: Extra inputs"):
        build_dataset(npz(tmp_path / "good.npz", flaten=True))
    # larger than memory: refused from the header, before np.load reads anything
    monkeypatch.setenv("DLSCOPE_MEMORY_LIMIT", "500")
    monkeypatch.setattr(np, "load", lambda *a, **k: pytest.fail("loaded"))
    with pytest.raises(UserError, match=r"x_train \(30, 6, 5\) uint8 takes .* more than this "
                                        r"machine's memory"):
        build_dataset(npz(save(tmp_path, "big.npz", **arrays(seed=5))))


def test_parse_data_and_labels(tmp_path, monkeypatch):
    path = save(tmp_path, **arrays())
    assert parse_data("mnist") == {"kind": "mnist"}
    monkeypatch.chdir(tmp_path)
    assert parse_data("npz:d.npz") == {"kind": "npz", "path": str(path)}
    assert parse_data({"kind": "npz", "path": "d.npz", "flatten": True}) == npz(
        path, flatten=True)
    assert parse_data({"kind": "mnist", "resize": 32}) == {"kind": "mnist", "resize": 32}
    assert parse_data({"kind": "function", "spec": "sinc"}) == {"kind": "function",
                                                                 "spec": "sinc"}
    for bad, message in [
        ("xyz", r"data 'xyz': unknown data \(one of mnist, cifar10:PATH, npz:FILE\)"),
        ("npz:", r"npz needs a path"),
        (42, r"data 42: unknown data"),
        ("npz:nothere.npz", r"data npz: .*nothere.npz does not exist"),
        ("npz:.", r"data npz: .* is not a file"),
        ({"kind": "imagenet"}, r"data table: unknown kind 'imagenet'"),
        ({"kind": "npz"}, r"data npz: 'path' is required"),
        ({"kind": "npz", "path": "d.npz", "md5": {}}, r"data npz: md5: Extra inputs"),
        ({"kind": "mnist", "resize": 30}, r"data mnist: resize:"),
    ]:
        with pytest.raises(UserError, match=message):
            parse_data(bad)
    assert data_label({"kind": "mnist"}) == "mnist" and data_label(None) == "none"
    assert data_label({"kind": "function", "spec": "sinc"}) == "function"


def test_plugin_kind_without_info_gives_none(monkeypatch):
    for table in ("KINDS", "INFOS"):
        monkeypatch.setattr(kinds_mod, table, dict(getattr(kinds_mod, table)))
    register_kind("test-plugin-kind", lambda device="cpu", **o: None)
    assert info({"kind": "test-plugin-kind"}) is None
    with pytest.raises(UserError, match="unknown dataset kind 'no-such-kind'"):
        info({"kind": "no-such-kind"})


# ------------------------------------------------- MNIST through the shared image pipeline


def old_mnist_images(x: np.ndarray, opts: MnistOptions) -> torch.Tensor:
    """mnist._images as it was before the shared pipeline (the reference)."""
    t = torch.from_numpy(x.astype(np.float32)).div_(255.0).unsqueeze(1)
    if opts.resize != 28:
        t = torch.nn.functional.interpolate(
            t, size=(opts.resize, opts.resize), mode="bilinear", align_corners=False)
    if opts.normalize:
        t = t.sub_(0.1307).div_(0.3081)
    return t.flatten(1) if opts.flatten else t


@pytest.mark.parametrize("options", [
    {},
    {"flatten": True, "train_subset": 500, "seed": 2},
    {"resize": 32, "normalize": False, "train_subset": 300, "label_noise": 0.4, "seed": 1},
    {"resize": 32, "train_subset": 200},
])
def test_mnist_tensors_are_bit_identical_to_the_former_formula(options):
    raw = load_mnist_arrays(log=lambda _m: None)
    opts = MnistOptions(**options)
    ds = mnist_dataset(opts, log=lambda _m: None)
    x, y = raw.x_train, raw.y_train.astype(np.int64)
    if opts.train_subset:
        idx = np.random.default_rng([opts.seed, 0]).permutation(len(y))[: opts.train_subset]
        x, y = x[idx], y[idx]
    if opts.label_noise:
        y = noisy_labels(y, opts.label_noise, opts.seed)
    if opts.train_subset is None:  # the full set: test the first 5000 rows (time)
        x, ds_x = x[:5000], ds.x_train[:5000]
    else:
        ds_x = ds.x_train
    assert torch.equal(ds_x, old_mnist_images(x, opts))
    assert torch.equal(ds.x_test, old_mnist_images(raw.x_test, opts))
    np.testing.assert_array_equal(ds.y_train.numpy()[: len(y)], y)
    d = info({"kind": "mnist", **options})
    assert d == DataInfo((1, opts.resize, opts.resize), 10, "mnist", True, d.source)
