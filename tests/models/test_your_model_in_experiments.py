"""A user's model factory, defined outside the package, in mnist-models, param-count and
sensitivity: from `dlscope.run`, from the CLI (the console script, whose sys.path does not
hold the working folder) on process workers, and recomputed when its source is edited.

The data is a small npz file (8x8 images, 4 classes) so that each run takes a second.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from helpers import write_user_npz

import dlscope
from dlscope.errors import UserError

DLSCOPE = str(Path(sys.executable).with_name("dlscope"))

FACTORY = '''
from torch import nn


def mlp(size=16, input_shape=(1, 28, 28), n_classes=10):
    d = 1
    for s in input_shape:
        d *= s
    return nn.Sequential(nn.Flatten(), nn.Linear(d, size), nn.Tanh(), nn.Linear(size, n_classes))


def deep(size=16, input_shape=(1, 28, 28), n_classes=10):
    d = 1
    for s in input_shape:
        d *= s
    return nn.Sequential(nn.Flatten(), nn.Linear(d, size), nn.Tanh(), nn.Linear(size, size),
                         nn.Tanh(), nn.Linear(size, n_classes))


def fit(depth=1, size=8):
    layers, d = [], 1
    for _ in range(depth):
        layers += [nn.Linear(d, size), nn.ReLU()]
        d = size
    return nn.Sequential(*layers, nn.Linear(d, 1))


def with_dropout(input_shape=(1, 28, 28), n_classes=10):
    return nn.Sequential(nn.Flatten(), nn.Dropout(0.5), nn.Linear(64, n_classes))
'''


@pytest.fixture
def project(tmp_path, monkeypatch):
    """A user's folder: mynets.py and mine.npz; the working directory is that folder."""
    (tmp_path / "mynets.py").write_text(FACTORY)
    write_user_npz(tmp_path / "mine.npz")
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    # another test's mynets.py (another folder) may be imported in this process already
    monkeypatch.delitem(sys.modules, "mynets", raising=False)
    return tmp_path


def _count(size: int, hidden: int = 1) -> int:
    """Closed form: 64 inputs, `hidden` layers of `size`, 4 classes."""
    return 65 * size + (size + 1) * size * (hidden - 1) + (size + 1) * 4


def test_mnist_models_sizes_each_factory_to_the_target(project):
    r = dlscope.run("mnist-models", profile="quick", out=project / "out", progress=False,
                    data=f"npz:{project / 'mine.npz'}", models=["py:mynets:mlp",
                                                                 "py:mynets:deep"],
                    target_params=3000, train_subset=120, epochs=1, executor="local")
    res = r.tables["results"]
    counts = res.groupby("model").params.first()
    assert all(abs(c - 3000) <= 30 for c in counts)          # within 1% of the target
    sizes = {m: int(m.split("size=")[1]) for m in counts.index}
    assert {m: _count(s, 2 if "deep" in m else 1) for m, s in sizes.items()} == dict(counts)
    assert set(res.data) == {"npz (other data)"}


def test_param_count_calls_the_factory_with_each_width(project):
    r = dlscope.run("param-count", profile="quick", out=project / "out", progress=False,
                    data=f"npz:{project / 'mine.npz'}", model="py:mynets:mlp",
                    widths=[2, 8], train_subset=0, epochs=1)
    res = r.tables["results"]
    assert sorted(set(res.params)) == [_count(2), _count(8)]


def test_sensitivity_refuses_dropout_and_runs_a_plain_factory(project):
    kw = dict(profile="quick", out=project / "out", progress=False,
              data=f"npz:{project / 'mine.npz'}", train_subset=0, batch_sizes=[16, 64],
              max_steps=4, sensitivity_points=10, sharpness_points=20, sharpness_iter=1)
    with pytest.raises(UserError, match="Dropout"):
        dlscope.run("sensitivity", model="py:mynets:with_dropout", **kw)
    assert not (project / "out").exists()
    r = dlscope.run("sensitivity", model={"factory": "py:mynets:mlp", "size": 12}, **kw)
    assert len(r.tables["results"]) == 4 and np.isfinite(r.tables["results"].lambda_max).all()


def _cli(project: Path, *args) -> subprocess.CompletedProcess:
    return subprocess.run([DLSCOPE, "run", "param-count", "--profile", "quick", "--data",
                           f"npz:{project / 'mine.npz'}", "--set", "model=py:mynets:mlp",
                           "--set", "widths=[2,8]", "--set", "train_subset=0", "--set",
                           "epochs=1", "--out", str(project / "out"), *args],
                          capture_output=True, text=True, cwd=project, timeout=300)


def test_cli_on_process_workers_and_an_edited_factory_recomputes(project):
    first = _cli(project, "--executor", "process", "--workers", "2")
    assert first.returncode == 0, first.stderr
    summary = project / "out" / "param-count" / "summary.json"
    assert json.loads(summary.read_text())["computed"] == 4
    again = _cli(project, "--executor", "process", "--workers", "2")
    assert again.returncode == 0 and json.loads(summary.read_text())["reused"] == 4
    before = pd.read_csv(project / "out" / "param-count" / "results.csv")
    src = project / "mynets.py"
    src.write_text(src.read_text().replace("nn.Tanh(), nn.Linear(size, n_classes))",
                                           "nn.ReLU(), nn.Linear(size, n_classes))", 1))
    edited = _cli(project, "--executor", "local")
    assert edited.returncode == 0, edited.stderr
    s = json.loads(summary.read_text())
    assert s["reused"] == 0 and s["computed"] == 4, edited.stderr  # new source, new hashes
    after = pd.read_csv(project / "out" / "param-count" / "results.csv")
    assert not np.allclose(before.train_loss, after.train_loss)  # ReLU, not tanh, now


def test_a_factory_that_cannot_be_imported_is_one_line(project):
    res = subprocess.run([DLSCOPE, "run", "mnist-models", "--profile", "quick", "--data",
                          f"npz:{project / 'mine.npz'}", "--set", "models=['py:nosuch:net']",
                          "--out", str(project / "out")], capture_output=True, text=True,
                         cwd=project, timeout=120)
    lines = res.stderr.strip().splitlines()
    assert res.returncode == 2 and len(lines) == 1 and "nosuch" in lines[0], res.stderr
    assert not (project / "out").exists()


def test_function_fit_sizes_a_factory_for_each_depth(project):
    def count(depth, size):  # closed form of mynets.fit: 1 -> size (x depth) -> 1
        return 2 * size + (depth - 1) * (size * size + size) + size + 1

    r = dlscope.run("function-fit", profile="quick", out=project / "out", progress=False,
                    model="py:mynets:fit", functions=["sinc"], depths=[1, 2], epochs=20,
                    seeds=1, param_budget=481, executor="local")
    res = r.tables["results"].sort_values("depth")
    best = [min(range(1, 500), key=lambda s, d=d: abs(count(d, s) - 481)) for d in (1, 2)]
    assert list(res.params) == [count(1, best[0]), count(2, best[1])] == [481, 481]
