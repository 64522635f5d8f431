"""Importing dlscope changes no process-wide state a notebook user did not ask for: not the
environment, not the umask (never even set and reset), not the matplotlib backend. The
settings dlscope's own processes want are made by the CLI and the pool workers
(dlscope.execution.process_env), and checked here too."""

from __future__ import annotations

import json
import subprocess
import sys

from dlscope.errors import UserError

PROBE = r"""
import json, os, sys

def umask_now():                       # read without setting it (Linux 4.7+), else None
    try:
        for line in open("/proc/self/status"):
            if line.startswith("Umask:"):
                return line.split()[1]
    except OSError:
        return None

calls = []
real_umask = os.umask
os.umask = lambda mask: calls.append(f"os.umask({mask:o})") or real_umask(mask)
real_umask(0o027); umask_before = umask_now()
import matplotlib
matplotlib.use = lambda *a, **k: calls.append(f"matplotlib.use{a}")
backend_before = matplotlib.rcParams._get("backend")
env_before = dict(os.environ)

import dlscope, dlscope.cli, dlscope.plotting, dlscope.report, dlscope.data, dlscope.metrics
import dlscope.bench, dlscope.models
from dlscope.execution import executor, process_env, ray_executor, store
from dlscope.contract import config, limits, runspec
from dlscope.driver import configdoc, result, runner, suite
from dlscope import experiments
for name in experiments.available():
    experiments.get(name)
import dlscope.train.engine, dlscope.train.ensemble, dlscope.train.fastpath
fig, ax = dlscope.plotting.figure()
ax.plot([0, 1], [1, 2])
import io; fig.savefig(io.BytesIO(), format="png")   # no backend needed for a Figure

after = dict(os.environ)
changed = sorted(k for k in set(env_before) | set(after) if env_before.get(k) != after.get(k))
print(json.dumps({"calls": calls, "env_changed": changed, "umask": [umask_before, umask_now()],
                  "backend": [repr(backend_before), repr(matplotlib.rcParams._get("backend"))],
                  "torch_loaded": "torch" in sys.modules}))
"""


def _probe() -> dict:
    res = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True,
                         timeout=300, check=False)
    assert res.returncode == 0, res.stderr
    return json.loads(res.stdout.strip().splitlines()[-1])


def test_import_dlscope_changes_no_process_state():
    out = _probe()
    assert out["torch_loaded"]                      # the probe really imported everything
    assert out["calls"] == []                       # no os.umask, no matplotlib.use
    assert out["env_changed"] == []
    assert out["umask"][0] in ("0027", None) and out["umask"][0] == out["umask"][1]
    assert out["backend"][0] == out["backend"][1]


def test_the_cli_and_workers_set_openmp_before_torch(monkeypatch):
    from dlscope.execution import process_env

    monkeypatch.delenv("GOMP_SPINCOUNT", raising=False)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    process_env.configure_openmp(3)
    assert process_env.GOMP_SPINCOUNT == "100000"
    assert (process_env.os.environ["GOMP_SPINCOUNT"], process_env.os.environ["OMP_NUM_THREADS"]
            ) == ("100000", "3")
    monkeypatch.setenv("GOMP_SPINCOUNT", "7")        # the user's own setting wins
    process_env.configure_openmp()
    assert process_env.os.environ["GOMP_SPINCOUNT"] == "7"
    # a spawned worker unpickles its initializer before torch loads: process_env must not
    # import torch itself
    code = "import sys, dlscope.execution.process_env; print('torch' in sys.modules)"
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=120, check=False)
    assert res.stdout.strip() == "False", res.stderr


def test_user_error_is_a_value_error():
    assert issubclass(UserError, ValueError)
