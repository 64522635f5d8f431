"""Targets that are not finite on their domain are refused when the config is read: one line,
exit 2, no results folder, before any run starts (and fast: the parser computes in floats)."""

from __future__ import annotations

import time

import numpy as np
import pytest
from helpers import cli

import dlscope
from dlscope.data.functions import check_target, evaluate
from dlscope.errors import UserError


@pytest.mark.parametrize("spec, where", [("expr:9**9**9", "x=-1"), ("expr:1/x", "x=0"),
                                         ("expr:log(x)", "x=-1"), ("expr:sqrt(x - 0.5)", "x=-1"),
                                         ("expr:1/(x - 0.25)", "x=0.25")])
def test_not_finite_targets_are_refused(spec, where):
    with pytest.raises(UserError, match=f"not finite on \\[-1, 1\\] \\(e.g. at {where}\\)"):
        check_target(spec)


def test_finite_targets_pass_and_huge_powers_are_fast():
    for spec in ("sinc", "sin-log", "sign-sin", "expr:x**2 * sin(3*x)", "expr:exp(x)"):
        assert check_target(spec).name == spec
    t0 = time.perf_counter()
    assert np.isinf(evaluate("expr:9**9**9", np.zeros(3))).all()  # float64, not a huge int
    with pytest.raises(UserError, match="too large"):
        check_target("expr:1" + "0" * 400)
    assert time.perf_counter() - t0 < 1.0
    with pytest.raises(UserError, match=r"not finite on \[2, 3\]"):
        check_target("expr:1/(x - 2.5)", (2.0, 3.0))
    assert check_target("expr:log(x)", (0.5, 2.0)).formula == "log(x)"


@pytest.mark.parametrize("exp, key, spec", [
    ("function-fit", "functions", '["expr:9**9**9"]'), ("grad-norm", "function", '"expr:1/x"'),
    ("function-fit", "functions", '["sinc", "expr:log(x)"]')])
def test_cli_refuses_in_one_line_without_a_results_folder(monkeypatch, capsys, tmp_path, exp,
                                                         key, spec):
    code, out, err = cli(monkeypatch, capsys, "run", exp, "--profile", "quick", "--set",
                          f"{key}={spec}", "--out", str(tmp_path / "o"))
    assert code == 2 and err.count("\n") == 1 and "not finite on [-1, 1]" in err, err
    assert not (tmp_path / "o").exists()


def test_minimal_ratio_target_is_checked():
    with pytest.raises(UserError, match="not finite"):
        dlscope.run("minimal-ratio", profile="quick", target="expr:sqrt(x)", model="mlp:1-4-1",
                    out="/nonexistent/never-written")
