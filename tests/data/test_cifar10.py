"""The cifar10 kind on a tiny CIFAR-format archive (tests/data/cifar_fixture.py): exact
decoding, MNIST's subset/noise semantics, checksum before unpickling, one-line errors."""

from __future__ import annotations

import io
import os
import pickle
import shutil
import tarfile

import numpy as np
import pytest
import torch
from cifar_fixture import (
    BATCHES,
    CLASSES,
    make_batches,
    make_cifar_archive,
    make_files,
    md5_of,
    write_archive,
    write_folder,
)

from dlscope.data import (
    DataInfo,
    build_dataset,
    data_label,
    identity,
    info,
    load_cifar_arrays,
    nbytes,
    parse_data,
)
from dlscope.data import cifar10 as cifar_mod
from dlscope.data.mnist import noisy_labels
from dlscope.data.safe_pickle import safe_load
from dlscope.errors import UserError

N = 40  # images per batch in the fixture


def desc(path, table, **options):
    return {"kind": "cifar10", "path": str(path), "md5": table, **options}


def expected_images(data: np.ndarray) -> np.ndarray:
    """The documented layout by explicit indexing: pixel [c, i, j] = row[c*1024 + i*32 + j]."""
    c, i, j = np.indices((3, 32, 32))
    return data[:, c * 1024 + i * 32 + j]


@pytest.fixture
def archive(tmp_path):
    return make_cifar_archive(tmp_path, n_per_batch=N, seed=0)


def test_decoding_is_exact(archive):
    path, table = archive
    batches = make_batches(N, 0)
    a = load_cifar_arrays(path, table)
    train = [batches[n] for n in BATCHES[:5]]
    want_x = np.concatenate([expected_images(d) for d, _ in train])
    want_y = np.concatenate([y for _, y in train])
    assert a.x_train.shape == (5 * N, 3, 32, 32) and a.x_train.dtype == np.uint8
    np.testing.assert_array_equal(a.x_train, want_x)
    np.testing.assert_array_equal(a.y_train, want_y)
    np.testing.assert_array_equal(a.x_test, expected_images(batches["test_batch"][0]))
    np.testing.assert_array_equal(a.y_test, batches["test_batch"][1])
    # one pixel by hand: the green channel of row 7 of data_batch_2, at (i, j) = (3, 5)
    d2 = batches["data_batch_2"][0]
    assert a.x_train[N + 7, 1, 3, 5] == d2[7, 1024 + 3 * 32 + 5]
    assert a.classes == tuple(CLASSES)
    assert not a.x_train.flags.writeable and not a.y_test.flags.writeable
    assert load_cifar_arrays(path, table) is a  # loaded once per process and path


def test_tensors_unnormalized_and_normalized(archive):
    path, table = archive
    raw = load_cifar_arrays(path, table)
    ds = build_dataset(desc(path, table, normalize=False))
    assert ds.x_train.dtype == torch.float32 and ds.y_train.dtype == torch.int64
    assert ds.input_shape == (3, 32, 32) and ds.n_classes == 10
    np.testing.assert_allclose(ds.x_train.numpy(), raw.x_train / 255.0, rtol=1e-6)
    # numpy float64 reference: per-channel mean/std over ALL training images
    v = raw.x_train.astype(np.float64) / 255.0
    mean = v.mean(axis=(0, 2, 3), keepdims=True)
    std = v.std(axis=(0, 2, 3), keepdims=True)
    norm = build_dataset(desc(path, table))
    np.testing.assert_allclose(norm.x_train.numpy(), (v - mean) / std, atol=2e-6)
    t = raw.x_test.astype(np.float64) / 255.0
    np.testing.assert_allclose(norm.x_test.numpy(), (t - mean) / std, atol=2e-6)
    flat = build_dataset(desc(path, table, flatten=True))
    assert flat.x_train.shape == (5 * N, 3072)
    assert torch.equal(flat.x_train, norm.x_train.flatten(1))
    assert norm.name == "other" and "not the official CIFAR-10" in norm.source


def test_subset_and_label_noise_follow_mnist_semantics(archive):
    path, table = archive
    raw = load_cifar_arrays(path, table)
    ds = build_dataset(desc(path, table, train_subset=50, label_noise=0.5, seed=3,
                            normalize=False))
    idx = np.random.default_rng([3, 0]).permutation(5 * N)[:50]
    y = raw.y_train[idx].astype(np.int64)
    rng = np.random.default_rng([3, 1])  # noisy_labels, written out
    pick = rng.permutation(50)[:25]
    y[pick] = rng.integers(0, 10, size=25)
    np.testing.assert_array_equal(ds.y_train.numpy(), y)
    np.testing.assert_array_equal(ds.y_train.numpy(),
                                  noisy_labels(raw.y_train[idx], 0.5, 3, n_classes=10))
    np.testing.assert_allclose(ds.x_train.numpy(), raw.x_train[idx] / 255.0, rtol=1e-6)
    assert ds.n_test == N
    with pytest.raises(UserError, match="train_subset=201 > 200 training images"):
        build_dataset(desc(path, table, train_subset=201))


def test_archive_folder_and_moved_copy_share_the_fingerprint(archive, tmp_path):
    path, table = archive
    ident = identity(desc(path, table))
    assert ident == {"data": "cifar-format", "official": False,
                     "sha256": load_cifar_arrays(path, table).sha256}
    files = make_files(make_batches(N, 0))
    folder = write_folder(tmp_path / "extracted", files)
    assert identity(desc(folder, table)) == ident  # the cifar-10-batches-py folder
    assert identity(desc(tmp_path / "extracted", table)) == ident  # the folder above it
    moved = tmp_path / "elsewhere" / "copy.tar.gz"
    moved.parent.mkdir()
    shutil.copy(path, moved)
    assert identity(desc(moved, table)) == ident
    other, other_table = make_cifar_archive(tmp_path / "elsewhere", n_per_batch=N, seed=1)
    assert identity(desc(other, other_table))["sha256"] != ident["sha256"]


def test_official_needs_the_published_checksums(archive, monkeypatch):
    path, table = archive
    assert not load_cifar_arrays(path, table).official
    # the published table (md5 absent) refuses the tiny archive: its md5 is not CIFAR-10's
    with pytest.raises(UserError, match=r"md5 [0-9a-f]{32} does not match the expected "
                                        r"c58f30108f718f92721af3b95e74349a; refusing"):
        load_cifar_arrays(path)
    # were these the published checksums and sizes, the same bytes would be the official data
    monkeypatch.setattr(cifar_mod, "PUBLISHED_MD5", dict(table))
    monkeypatch.setattr(cifar_mod, "IMAGES_PER_BATCH", N)
    path = shutil.copy(path, path.parent / "copy.tar.gz")  # a new path: not the cached load
    a = load_cifar_arrays(path, table)
    assert a.official and a.name == "cifar10" and a.source.endswith("(md5 verified)")
    d = info(desc(path, table))
    assert d == DataInfo((3, 32, 32), 10, "cifar10", True, a.source)
    assert identity(desc(path, table))["official"] is True


def test_info_nbytes_and_label(archive):
    path, table = archive
    d = info(desc(path, table, flatten=True))
    assert d.input_shape == (3, 32, 32) and d.n_classes == 10  # before flatten
    assert d.name == "other" and d.official is False and str(path) in d.source
    assert nbytes(desc(path, table)) == (4 * 3072 + 8) * (5 * N + N)
    assert nbytes(desc(path, table, train_subset=10)) == (4 * 3072 + 8) * (10 + N)
    # published checksums: known without reading (50,000 + 10,000 images)
    assert nbytes({"kind": "cifar10", "path": "/nowhere"}) == (4 * 3072 + 8) * 60000
    assert data_label(desc(path, table)) == "cifar10"


class Boom:
    """Unpickling this runs os.system (under a plain pickle.loads)."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_wrong_md5_refuses_before_any_unpickling(tmp_path, monkeypatch):
    marker = tmp_path / "PWNED"
    evil = pickle.dumps({"data": Boom(marker)}, protocol=2)
    files = make_files(make_batches(N, 0), replace={"data_batch_3": evil})
    path = write_archive(tmp_path / "evil.tar.gz", files)
    calls = []
    real = cifar_mod.safe_load
    monkeypatch.setattr(cifar_mod, "safe_load", lambda *a, **k: calls.append(k) or real(*a, **k))
    # a wrong checksum for the evil file: refused by the checksum, nothing unpickled
    table = md5_of(files)
    table["data_batch_3"] = "0" * 32
    with pytest.raises(UserError) as e:
        load_cifar_arrays(path, table)
    msg = str(e.value)
    assert "data_batch_3 has md5" in msg and "refusing to unpickle" in msg and "\n" not in msg
    assert calls == [] and not marker.exists()
    # its correct checksum: the restricted unpickler refuses os.system, still never called
    with pytest.raises(UserError, match=r"evil.tar.gz: data_batch_3: refused to unpickle "
                                        r"(posix|os)\.system"):
        load_cifar_arrays(path, md5_of(files))
    assert not marker.exists()
    assert pickle.loads(evil, encoding="latin1")["data"] == 0 and marker.exists()  # it was live


def test_wrong_archive_md5_is_checked_first(archive, monkeypatch):
    path, table = archive
    monkeypatch.setattr(tarfile, "open", lambda *a, **k: pytest.fail("tar opened"))
    with pytest.raises(UserError, match=r"archive .*md5 [0-9a-f]{32} does not match the "
                                        r"expected 0{32}; refusing to unpickle"):
        load_cifar_arrays(path, {**table, path.name: "0" * 32})


def test_str_keys_and_protocol_3_bytes_keys_load(tmp_path):
    batches = make_batches(3, 0)
    d, y = batches["data_batch_1"]
    files = make_files(batches, replace={
        "data_batch_1": pickle.dumps({b"data": d, b"labels": y}, protocol=3),
        "data_batch_2": pickle.dumps({"data": batches["data_batch_2"][0],
                                      "labels": batches["data_batch_2"][1]}, protocol=4),
    })
    a = load_cifar_arrays(write_folder(tmp_path, files), md5_of(files))
    np.testing.assert_array_equal(a.x_train[:3], expected_images(d))
    np.testing.assert_array_equal(a.y_train[3:6], batches["data_batch_2"][1])


def _bad(tmp_path, **replace):
    batches = make_batches(4, 0)
    files = make_files(batches, replace=replace)
    return write_archive(tmp_path / "bad.tar.gz", files), md5_of(files)


@pytest.mark.parametrize("what, replace, message", [
    ("label 10", {"labels": [10, 0, 0, 0]}, r"labels outside 0\.\.9 \(0\.\.10\)"),
    ("wide rows", {"data": np.zeros((4, 3000), np.uint8)}, r"uint8 \(4, 3000\), expected"),
    ("float data", {"data": np.zeros((4, 3072), np.float32)}, "float32"),
    ("count", {"labels": [1, 2, 3]}, "3 labels for 4 images"),
    ("str labels", {"labels": ["a", "b", "c", "d"]}, "labels must be a list of integers"),
])
def test_bad_batches_are_one_line_errors(tmp_path, what, replace, message):
    d, y = make_batches(4, 0)["data_batch_4"]
    raw = pickle.dumps({b"data": replace.get("data", d), b"labels": replace.get("labels", y)},
                       protocol=4)
    path, table = _bad(tmp_path, data_batch_4=raw)
    with pytest.raises(UserError, match=message) as e:
        load_cifar_arrays(path, table)
    assert "bad.tar.gz: data_batch_4" in str(e.value) and "\n" not in str(e.value)


def test_missing_files_links_and_bad_paths(tmp_path, archive):
    path, full = archive
    table = {name: full[name] for name in BATCHES}  # no archive md5: any archive is read
    files = make_files(make_batches(2, 0))
    del files["data_batch_5"], files["test_batch"]
    with pytest.raises(UserError, match="missing data_batch_5, test_batch"):
        load_cifar_arrays(write_archive(tmp_path / "short.tar.gz", files), table)
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="folder .*empty: missing data_batch_1, data_batch_2"):
        load_cifar_arrays(tmp_path / "empty", table)
    with pytest.raises(UserError, match=r"CIFAR-10 path .*nope does not exist"):
        load_cifar_arrays(tmp_path / "nope", table)
    junk = tmp_path / "junk.tar.gz"
    junk.write_bytes(b"not a tar at all" * 10)
    with pytest.raises(UserError, match="not a readable tar archive"):
        load_cifar_arrays(junk, table)
    link = tmp_path / "link.tar"
    with tarfile.open(link, "w") as tar:
        info_ = tarfile.TarInfo("cifar-10-batches-py/data_batch_1")
        info_.type, info_.linkname = tarfile.SYMTYPE, "/etc/passwd"
        tar.addfile(info_, io.BytesIO(b""))
    with pytest.raises(UserError, match="data_batch_1 is not a regular file"):
        load_cifar_arrays(link, table)
    with pytest.raises(UserError, match="md5 of 'test_batch' is 'xyz'"):
        load_cifar_arrays(path, {**table, "test_batch": "xyz"})
    with pytest.raises(UserError, match="the md5 table lacks data_batch_2"):
        load_cifar_arrays(path, {k: v for k, v in table.items() if k != "data_batch_2"})


def test_parse_data_cifar(archive, tmp_path, monkeypatch):
    path, table = archive
    monkeypatch.chdir(path.parent)
    assert parse_data(f"cifar10:{path.name}") == {"kind": "cifar10", "path": str(path)}
    monkeypatch.setenv("HOME", str(path.parent))
    assert parse_data(f"cifar10:~/{path.name}") == {"kind": "cifar10", "path": str(path)}
    got = parse_data({"kind": "cifar10", "path": f"~/{path.name}", "md5": table, "seed": 2})
    assert got == {"kind": "cifar10", "path": str(path), "md5": table, "seed": 2}
    with pytest.raises(UserError, match=r"data cifar10: .*missing\.tar\.gz does not exist"):
        parse_data("cifar10:missing.tar.gz")
    with pytest.raises(UserError, match=r"cifar10 needs a path \(cifar10:PATH\)"):
        parse_data("cifar10")
    with pytest.raises(UserError, match="md5 of 'x' is 3"):
        parse_data({"kind": "cifar10", "path": str(path), "md5": {"x": 3}})


def test_batches_admit_arrays_only(tmp_path):
    # numpy scalars pass the MNIST unpickler but not the narrower CIFAR allow-list
    d, y = make_batches(4, 0)["data_batch_1"]
    raw = pickle.dumps({b"data": d, b"labels": [np.int64(v) for v in y]}, protocol=4)
    path, table = _bad(tmp_path, data_batch_1=raw)
    with pytest.raises(UserError, match=r"data_batch_1: refused to unpickle "
                                        r"numpy\._?core\.multiarray\.scalar"):
        load_cifar_arrays(path, table)
    assert safe_load(raw)[b"labels"] == list(y)  # the general numpy unpickler admits them
    with pytest.raises(ValueError, match="^not in the numpy allow-list") as e:
        safe_load(raw, allowed=frozenset({("os", "system")}))  # a programming error
    assert not isinstance(e.value, UserError)
