"""Tests of dlscope.data.functions: the registry, safe expressions, function_dataset."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from dlscope.data import evaluate, function_dataset, list_functions
from dlscope.data.functions import compile_expression
from dlscope.errors import UserError

X = np.random.default_rng(0).uniform(-1, 1, 200)


def test_registry_names_and_domains():
    funcs = list_functions()
    assert set(funcs) == {"sin-log", "sinc", "sign-sin"}
    assert funcs["sin-log"].endswith("on [1, 5]") and funcs["sinc"].endswith("on [-1, 1]")


def test_registry_values_match_closed_forms():
    xs = np.random.default_rng(1).uniform(1, 5, 100)
    ref = [math.sin(v) + math.log(v + 1) for v in xs]
    np.testing.assert_allclose(evaluate("sin-log", xs), ref, rtol=1e-12)

    xs = np.append(X, 0.0)
    ref = [math.sin(5 * math.pi * v) / (5 * math.pi * v) if v else 1.0 for v in xs]
    np.testing.assert_allclose(evaluate("sinc", xs), ref, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(evaluate("sinc", xs), np.sinc(5 * xs), rtol=1e-12)

    s = [math.sin(5 * math.pi * v) for v in X]
    ref = [1.0 if v > 0 else -1.0 for v in s]
    keep = np.abs(s) > 1e-9  # away from the zero crossings
    np.testing.assert_array_equal(evaluate("sign-sin", X)[keep], np.array(ref)[keep])
    assert set(np.unique(evaluate("sign-sin", X))) <= {-1.0, 0.0, 1.0}


@pytest.mark.parametrize(
    "expr, reference",
    [
        ("x**2 * sin(3*x)", lambda x: x**2 * np.sin(3 * x)),
        ("exp(-x**2 / 2) / sqrt(2*pi)", lambda x: np.exp(-(x**2) / 2) / np.sqrt(2 * np.pi)),
        ("-x + 3 - e*abs(x)", lambda x: -x + 3 - np.e * np.abs(x)),
        ("+x - -x", lambda x: 2 * x),
        (
            "sinc(x) + tanh(x) + arctan(x) + sign(x)",
            lambda x: np.sinc(x) + np.tanh(x) + np.arctan(x) + np.sign(x),
        ),
        (
            "log1p(x**2) + log(2 + x) + cos(x) * tan(x/2)",
            lambda x: np.log1p(x**2) + np.log(2 + x) + np.cos(x) * np.tan(x / 2),
        ),
        ("2.5", lambda x: np.full_like(x, 2.5)),
        ("1e-3 * x ** 3", lambda x: 1e-3 * x**3),
    ],
)
def test_safe_expression_equals_numpy(expr, reference):
    np.testing.assert_allclose(compile_expression(expr)(X), reference(X), rtol=1e-12)
    np.testing.assert_allclose(evaluate(f"expr:{expr}", X), reference(X), rtol=1e-12)


def test_bare_expression_and_python_precedence():
    np.testing.assert_allclose(evaluate("x**2", X), X**2)
    np.testing.assert_allclose(evaluate("-x**2", X), -(X**2))  # ** binds tighter than unary -
    np.testing.assert_allclose(evaluate("2**-x", X), 2.0 ** (-X))


@pytest.mark.parametrize(
    "expr, message",
    [
        ("__import__('os')", "unknown function '__import__'"),
        ("__import__('os').system('true')", "plain function calls"),
        ("x.__class__", "attribute"),
        ("open('/etc/passwd')", "unknown function 'open'"),
        ("foo(x)", "unknown function 'foo'"),
        ("x + y", "unknown name 'y'"),
        ("x+", "syntax error"),
        ("sin", "must be called"),
        ("sin(x, 2)", "exactly one argument"),
        ("sin(x=1)", "exactly one argument"),
        ("sin(*x)", "exactly one argument"),
        ("'abc' * x", "constants"),
        ("True * x", "constants"),
        ("1j * x", "constants"),
        ("lambda: x", "Lambda"),
        ("[x]", "List"),
        ("x if x else 1", "IfExp"),
        ("x < 1", "Compare"),
        ("x // 2", "FloorDiv"),
        ("x % 2", "Mod"),
        ("sin(x)(x)", "plain function calls"),
        ("(x)(1)", "unknown function 'x'"),
        ("sin.__globals__", "attribute"),
        ("x; import os", "syntax error"),
        ("", "empty"),
        pytest.param("(" * 240 + "x" + ")" * 240, "nested", id="deep-parens"),
        pytest.param("-" * 400 + "x", None, id="deep-unary"),
        pytest.param("x" + "+x" * 300, "longer than", id="too-long"),
    ],
)
def test_bad_expressions_raise_user_error(expr, message):
    if message is None:  # legal but silly: must either work or be a UserError, never crash
        try:
            np.testing.assert_allclose(evaluate(f"expr:{expr}", X), X)
        except UserError:
            pass
        return
    with pytest.raises(UserError, match=message.replace("(", r"\(").replace(".", r"\.")):
        evaluate(f"expr:{expr}", X)


def test_unknown_spec():
    with pytest.raises(UserError, match="unknown function 'nope'.*sin-log"):
        function_dataset("nope")


def test_function_dataset_shapes_and_grid():
    ds = function_dataset("sinc", n_train=101, n_test=57)
    assert ds.name == "sinc" and ds.n_classes is None and ds.input_shape == (1,)
    for t, n in ((ds.x_train, 101), (ds.y_train, 101), (ds.x_test, 57), (ds.y_test, 57)):
        assert t.shape == (n, 1) and t.dtype == torch.float32
    np.testing.assert_allclose(ds.x_train[:, 0].numpy(), np.linspace(-1, 1, 101), atol=1e-7)
    assert ds.x_train[0].item() == -1 and ds.x_train[-1].item() == 1
    xt = ds.x_test[:, 0].numpy().astype(np.float64)
    assert xt.min() >= -1 and xt.max() <= 1 and np.all(np.diff(xt) >= 0)
    np.testing.assert_allclose(ds.y_test[:, 0].numpy(), np.sinc(5 * xt), atol=1e-6)
    np.testing.assert_allclose(
        ds.y_train[:, 0].numpy(), np.sinc(5 * np.linspace(-1, 1, 101)), atol=1e-6
    )


def test_function_dataset_determinism_and_seed():
    a = function_dataset("sin-log", seed=3)
    b = function_dataset("sin-log", seed=3)
    c = function_dataset("sin-log", seed=4)
    for key in ("x_train", "y_train", "x_test", "y_test"):
        assert torch.equal(getattr(a, key), getattr(b, key))
    assert torch.equal(a.x_train, c.x_train)  # the grid does not depend on the seed
    assert not torch.equal(a.x_test, c.x_test)


def test_function_dataset_domains():
    assert function_dataset("sin-log", n_train=5).x_train[:, 0].tolist() == [1, 2, 3, 4, 5]
    ds = function_dataset("sign-sin", domain=(0, 0.5), n_train=11, n_test=300)
    assert ds.x_train[0].item() == 0 and ds.x_train[-1].item() == 0.5
    assert 0 <= ds.x_test.min().item() and ds.x_test.max().item() <= 0.5
    e = function_dataset("expr:x**2 * sin(3*x)", n_train=3)
    assert e.name == "expr:x**2 * sin(3*x)"
    assert e.x_train[:, 0].tolist() == [-1, 0, 1]  # expressions default to [-1, 1]
    ds = function_dataset("x**3", domain=(2, 4), n_train=3)
    np.testing.assert_allclose(ds.y_train[:, 0].numpy(), [8, 27, 64])


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"domain": (1, 1)}, "low < high"),
        ({"domain": (2, 1)}, "low < high"),
        ({"domain": (0, float("inf"))}, "finite"),
        ({"domain": (0,)}, "two numbers"),
        ({"domain": "ab"}, "two numbers"),
        ({"n_train": 0}, "n_train"),
        ({"n_test": 2.5}, "n_test"),
        ({"seed": -1}, "seed"),
    ],
)
def test_function_dataset_bad_options(kwargs, message):
    with pytest.raises(UserError, match=message):
        function_dataset("sinc", **kwargs)


def test_function_dataset_non_finite_values():
    with pytest.raises(UserError, match="not finite"):
        function_dataset("expr:log(x)")  # log of negatives on [-1, 1]
    with pytest.raises(UserError, match="not finite"):
        function_dataset("expr:9.0**9**9**9 * x", domain=(1, 2))
    assert torch.isfinite(function_dataset("expr:log(x)", domain=(0.5, 2)).y_train).all()
