"""`dlscope run all`: every experiment in the assignment's order, then the report.

A failure in one experiment is logged, recorded in OUT/suite.json and shown in the report;
it does not stop the others or lose their results.
"""

from __future__ import annotations

import time
import traceback
from pathlib import Path

from dlscope import experiments
from dlscope.errors import UserError
from dlscope.execution.store import write_json


def run_all(*, profile: str, out, log=print, data=None, **options) -> list[str]:
    """Run everything; return the names of the experiments that failed. `data` (a
    `--data` value) goes to every experiment with a `data` key; the others keep theirs."""
    from dlscope.driver.runner import run_experiment

    out = Path(out)
    t0 = time.perf_counter()
    status: dict[str, dict] = {}
    for name in experiments.available():
        t = time.perf_counter()
        try:
            has_data = "data" in experiments.get(name).Config.model_fields
            if data is not None and not has_data:
                log(f"{name}: --data does not apply (it trains on its own data)")
            run_experiment(name, profile=profile, out=out, log=log,
                           overrides={"data": data} if data is not None and has_data else None,
                           **options)
            status[name] = {"status": "ok", "wall_s": round(time.perf_counter() - t, 2)}
        except KeyboardInterrupt:
            raise
        except UserError:
            raise
        except Exception as exc:  # keep going: the others' results must not be lost
            log(f"{name}: FAILED: {type(exc).__name__}: {exc}")
            status[name] = {"status": "failed", "error": f"{type(exc).__name__}: {exc}",
                            "traceback": traceback.format_exc(limit=8),
                            "wall_s": round(time.perf_counter() - t, 2)}
    write_json(out / "suite.json", {"profile": profile,
                                    "wall_s": round(time.perf_counter() - t0, 2),
                                    "experiments": status})
    from dlscope.report import build_report

    log(f"report: {build_report(out)}")
    log(f"all: {len(status)} experiments in {time.perf_counter() - t0:.1f} s")
    return [n for n, s in status.items() if s["status"] != "ok"]
