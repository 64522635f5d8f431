"""The hostile suite's CLI runner: `cli(*args, env=..., cwd=..., timeout=...)` runs `dlscope
ARGS` in a separate process (forked from one server that imported dlscope once) with a clean
environment and a timeout, and returns (exit code, stdout, stderr)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from hostile_util import clean_env

SERVER = Path(__file__).with_name("cli_server.py")


class ForkedCli:
    """One server process; each call forks a fresh child of it running `dlscope.cli.main`."""

    def __init__(self):
        self.proc = subprocess.Popen([sys.executable, str(SERVER)], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, text=True, env=clean_env())

    def __call__(self, *args, env: dict | None = None, cwd=None, timeout: float = 120):
        req = {"args": [str(a) for a in args], "env": clean_env(env),
               "cwd": str(cwd or Path.cwd()), "timeout": timeout}
        self.proc.stdin.write(json.dumps(req) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        assert line, "the CLI server died"
        reply = json.loads(line)
        assert not reply["timed_out"], f"dlscope {' '.join(req['args'])}: timed out"
        return reply["code"], reply["stdout"], reply["stderr"]

    def close(self):
        self.proc.stdin.close()
        self.proc.wait(timeout=30)


@pytest.fixture(scope="session")
def cli():
    runner = ForkedCli()
    yield runner
    runner.close()
