"""A fork server for the hostile suite: imports dlscope.cli (and torch) once, then runs each
requested command line in a forked child with its own environment, working folder, stdin
(/dev/null) and stdout/stderr files, under a timeout. Each child is a separate process, as
`dlscope ...` from a shell is; the server only saves the ~3 s import per case.

Protocol: one JSON request per stdin line {"args", "env", "cwd", "timeout"}; one JSON reply
per stdout line {"code", "stdout", "stderr", "timed_out"}. Not a test module (no test_ prefix).
"""

from __future__ import annotations

import json
import os
import signal
import sys
import tempfile
import time

import dlscope.cli  # noqa: F401 - the expensive imports, once
import dlscope.driver.runner  # noqa: F401 - (torch, pydantic, the experiments)
import dlscope.report  # noqa: F401
from dlscope import experiments

for _name in experiments.available():  # every experiment module, imported and checked once
    experiments.get(_name)


def _child(req: dict, out_path: str, err_path: str) -> None:
    code = 1
    try:
        os.environ.clear()
        os.environ.update(req["env"])
        os.chdir(req["cwd"])
        null = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null, 0)
        for fd, path in ((1, out_path), (2, err_path)):
            f = os.open(path, os.O_WRONLY | os.O_TRUNC)
            os.dup2(f, fd)
            os.close(f)
        sys.argv = ["dlscope", *req["args"]]
        try:
            dlscope.cli.main()
            code = 0
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        except BaseException:  # noqa: BLE001 - what an uncaught exception does to `dlscope`
            import traceback

            traceback.print_exc()
            code = 1
    finally:
        try:
            sys.stdout.flush()
            sys.stderr.flush()
        finally:
            os._exit(code)


def _serve() -> None:
    out_f = tempfile.NamedTemporaryFile(prefix="hostile-out-", delete=False)
    err_f = tempfile.NamedTemporaryFile(prefix="hostile-err-", delete=False)
    reply_fd = os.dup(1)
    replies = os.fdopen(reply_fd, "w")
    for line in sys.stdin:
        req = json.loads(line)
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:
            os.close(reply_fd)
            _child(req, out_f.name, err_f.name)
        t0, timed_out = time.monotonic(), False
        while True:
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                break
            if time.monotonic() - t0 > req["timeout"]:
                os.kill(pid, signal.SIGKILL)
                _, status = os.waitpid(pid, 0)
                timed_out = True
                break
            time.sleep(0.005)
        code = os.waitstatus_to_exitcode(status)
        with open(out_f.name, errors="replace") as f:
            out = f.read()
        with open(err_f.name, errors="replace") as f:
            err = f.read()
        reply = json.dumps({"code": code, "stdout": out, "stderr": err, "timed_out": timed_out})
        replies.write(reply + "\n")
        replies.flush()
    os.unlink(out_f.name)
    os.unlink(err_f.name)


if __name__ == "__main__":
    _serve()
