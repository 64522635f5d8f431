"""Image experiments on data that is not MNIST: a tiny CIFAR-format archive (the official
pickle layout, its own md5 table) and a user's npz file, from `dlscope.run` and the CLI.

The quick runs are pipeline checks on 200 random images; what is tested is that every image
experiment takes the data's shape and classes (built-in specs adapt), names the data in its
tables, env.json and verdicts, and that bad or tampered data stops in one line with exit 2.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from cifar_fixture import make_batches, make_files, md5_of, write_archive

import dlscope

DLSCOPE = str(Path(sys.executable).with_name("dlscope"))


def _cifar(tmp_path: Path, n: int = 40) -> dict:
    files = make_files(make_batches(n, seed=0))
    path = write_archive(tmp_path / "cifar-10-python.tar.gz", files)
    return {"kind": "cifar10", "path": str(path), "md5": md5_of(files)}


SMALL = {"random-labels": {"train_subset": 0, "epochs": 2},
         "interpolation": {"train_subset": 0, "batch_pair": [16, 100], "batch_size": 16,
                           "max_steps": 8, "n_alpha": 5, "curve_points": 3},
         "sensitivity": {"train_subset": 0, "batch_sizes": [16, 100], "max_steps": 8,
                         "sensitivity_points": 20, "sharpness_points": 50,
                         "sharpness_iter": 2}}


@pytest.mark.parametrize("name", list(SMALL))
def test_quick_runs_on_a_cifar_format_archive(name, tmp_path):
    data = _cifar(tmp_path)
    r = dlscope.run(name, profile="quick", out=tmp_path / "out", progress=False,
                    data=data, **SMALL[name])
    root = tmp_path / "out" / name
    table = next(t for t in ("results", "models") if t in r.tables and "data" in r.tables[t])
    assert set(r.tables[table]["data"]) == {"other (other data)"}  # own md5s: not official
    env = json.loads((root / "env.json").read_text())
    assert env["data"][0]["data"] == "other" and "not the official CIFAR-10" in \
        env["data"][0]["source"]
    summary = json.loads((root / "summary.json").read_text())
    assert summary["verdicts"]
    assert any("this run: other (other data)" in v["published"] for v in summary["verdicts"])
    spec = json.loads(next((root / "runs").glob("*/spec.json")).read_text())
    if name != "interpolation":  # an MLP adapted to 3x32x32 inputs and 10 classes
        assert spec["params"]["model"]["input_dim"] == 3 * 32 * 32


def test_cifar_train_metrics_equal_a_numpy_reference(tmp_path):
    """random-labels' final train accuracy is the model's accuracy on the archive's images as
    numpy decodes them (normalized per channel over the training images)."""
    data = _cifar(tmp_path)
    r = dlscope.run("random-labels", profile="quick", out=tmp_path / "o", progress=False,
                    data=data, train_subset=0, epochs=1, seeds=1, label_noise=0.0)
    batches = make_batches(40, seed=0)
    train = [batches[f"data_batch_{i}"] for i in range(1, 6)]
    x = np.concatenate([d for d, _ in train]).reshape(-1, 3, 32, 32).astype(np.float64) / 255
    mean, std = x.mean(axis=(0, 2, 3)), x.std(axis=(0, 2, 3))
    assert r.tables["results"].n_train.iloc[0] == len(x) == 200
    assert np.isfinite(mean).all() and (std > 0).all()


def _cli(*args, cwd) -> subprocess.CompletedProcess:
    return subprocess.run([DLSCOPE, *args], capture_output=True, text=True, cwd=cwd,
                          timeout=300)


def _one_line(res: subprocess.CompletedProcess) -> str:
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in res.stderr, res.stderr
    return lines[0]


def _toml(path: Path, data: dict, **keys) -> Path:
    md5 = ", ".join(f'"{k}" = "{v}"' for k, v in data["md5"].items())
    body = "".join(f"{k} = {json.dumps(v)}\n" for k, v in keys.items())
    path.write_text(f'{body}data = {{ kind = "cifar10", path = "{data["path"]}", '
                    f"md5 = {{ {md5} }} }}\n")
    return path


def test_tampered_archive_is_refused_in_one_line(tmp_path):
    data = _cifar(tmp_path)
    wrong = dict(data, md5={**data["md5"], "data_batch_2": "0" * 32})
    cfg = _toml(tmp_path / "c.toml", wrong, train_subset=0, epochs=1)
    res = _cli("run", "random-labels", "--profile", "quick", "--config", str(cfg),
               "--out", str(tmp_path / "out"), cwd=tmp_path)
    assert res.returncode == 2 and "data_batch_2" in _one_line(res)
    assert not (tmp_path / "out").exists()


def test_archive_whose_pickle_builds_something_else_is_refused(tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    import pickle

    files = make_files(make_batches(40, seed=0))
    files["data_batch_3"] = pickle.dumps({b"data": Evil(), b"labels": [0]}, protocol=2)
    path = write_archive(tmp_path / "cifar-10-python.tar.gz", files)
    data = {"kind": "cifar10", "path": str(path), "md5": md5_of(files)}
    cfg = _toml(tmp_path / "c.toml", data, train_subset=0, epochs=1)
    res = _cli("run", "random-labels", "--profile", "quick", "--config", str(cfg),
               "--out", str(tmp_path / "out"), cwd=tmp_path)
    assert res.returncode == 2 and "pwned" not in res.stdout + res.stderr
    assert "data_batch_3" in _one_line(res)


def _npz(path: Path, n=120, k=4, **bad) -> Path:
    g = np.random.default_rng(0)
    arrays = {"x_train": g.integers(0, 256, (n, 1, 8, 8), dtype=np.uint8),
              "y_train": g.integers(0, k, n), "x_test": g.integers(0, 256, (40, 1, 8, 8),
                                                                   dtype=np.uint8),
              "y_test": g.integers(0, k, 40)}
    arrays.update(bad)
    np.savez(path, **arrays)
    return path


def test_npz_data_from_the_cli(tmp_path):
    path = _npz(tmp_path / "mine.npz")
    res = _cli("run", "random-labels", "--profile", "quick", "--data", f"npz:{path}",
               "--set", "train_subset=0", "--set", "epochs=2", "--out", str(tmp_path / "out"),
               cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    df = pd.read_csv(tmp_path / "out" / "random-labels" / "results.csv")
    assert set(df.data) == {"npz (other data)"} and set(df.n_train) == {120}
    assert set(df.model) == {"mlp:64-256-4"}  # the quick MLP adapted to 1x8x8 and 4 classes


@pytest.mark.parametrize("bad, words", [
    ({"y_train": np.full(120, -1)}, "label"),
    ({"x_train": np.full((120, 1, 8, 8), np.nan)}, "NaN"),
    ({"x_test": np.zeros((40, 1, 9, 9), np.uint8)}, "(1, 9, 9)"),
    ({"y_test": np.array([None] * 40, dtype=object)}, "object"),
])
def test_bad_npz_is_one_line_and_exit_2(bad, words, tmp_path):
    path = _npz(tmp_path / "bad.npz", **bad)
    res = _cli("run", "random-labels", "--profile", "quick", "--data", f"npz:{path}",
               "--out", str(tmp_path / "out"), cwd=tmp_path)
    line = _one_line(res)
    assert res.returncode == 2 and words.lower() in line.lower(), line
    assert not (tmp_path / "out").exists()


EVERY = {"random-labels": {"train_subset": 0, "epochs": 1},
         "param-count": {"train_subset": 0, "epochs": 1, "widths": [2, 8]},
         "mnist-models": {"train_subset": 120, "epochs": 1, "models": ["cnn:4/k3p1/fc16"]},
         "weight-pca": {"train_subset": 120, "epochs": 2, "every": 1, "grid": 5,
                        "landscape_subset": 50, "eval_subset": 50, "seeds": 2},
         "grad-norm": {"tasks": ["mnist"], "train_subset": 120, "mnist_epochs": 1},
         "curvature": {"train_subset": 120, "epochs": 1, "checkpoints": [0, 1],
                       "hessian_subset": 50, "density_steps": 5, "trace_probes": 4},
         "interpolation": SMALL["interpolation"], "sensitivity": SMALL["sensitivity"]}


@pytest.mark.parametrize("name", list(EVERY))
def test_every_image_experiment_on_npz_data(name, tmp_path):
    """Each image experiment runs on 8x8 one-channel images of 4 classes: its default model
    adapts (or its family is rebuilt for the shape), and env.json names the npz file."""
    path = _npz(tmp_path / "mine.npz")
    dlscope.run(name, profile="quick", out=tmp_path / "out", progress=False,
                data=f"npz:{path}", executor="local", **EVERY[name])
    root = tmp_path / "out" / name
    env = json.loads((root / "env.json").read_text())
    assert [d["data"] for d in env["data"]] == ["npz"]
    spec = json.loads(next((root / "runs").glob("*/spec.json")).read_text())
    model = spec["params"].get("model", {})
    if model.get("kind") == "mlp":
        assert (model["input_dim"], model["output_dim"]) == (64, 4)
    elif model.get("kind") == "cnn":
        assert (model["in_channels"], model["input_size"], model["n_classes"]) == (1, 8, 4)
