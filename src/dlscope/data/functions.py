"""1-D regression targets: a small registry plus safe user expressions in ``x``.

A spec is a registry name (``list_functions()``), ``expr:<expression>``, or a bare expression
that mentions ``x``. Expressions are parsed with :mod:`ast` and compiled from a whitelist of
node types into a numpy-vectorised closure; Python's ``eval`` is never used.
"""

from __future__ import annotations

import ast
import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from dlscope.data.dataset import Dataset
from dlscope.errors import UserError

Fn = Callable[[np.ndarray], np.ndarray]


@dataclass(frozen=True)
class TargetFunction:
    name: str
    fn: Fn
    domain: tuple[float, float]
    formula: str


REGISTRY: dict[str, TargetFunction] = {
    f.name: f
    for f in (
        TargetFunction(
            "sin-log", lambda x: np.sin(x) + np.log(x + 1), (1.0, 5.0), "sin(x) + log(x + 1)"
        ),
        TargetFunction("sinc", lambda x: np.sinc(5 * x), (-1.0, 1.0), "sin(5*pi*x) / (5*pi*x)"),
        TargetFunction(
            "sign-sin", lambda x: np.sign(np.sin(5 * np.pi * x)), (-1.0, 1.0), "sgn(sin(5*pi*x))"
        ),
    )
}
EXPR_DEFAULT_DOMAIN = (-1.0, 1.0)
MAX_EXPR_LEN = 500

FUNCTIONS: dict[str, Fn] = {
    "sin": np.sin,
    "cos": np.cos,
    "tan": np.tan,
    "exp": np.exp,
    "log": np.log,
    "log1p": np.log1p,
    "sqrt": np.sqrt,
    "abs": np.abs,
    "tanh": np.tanh,
    "sign": np.sign,
    "sinc": np.sinc,  # numpy's normalised sinc: sin(pi*x) / (pi*x)
    "arctan": np.arctan,
}
CONSTANTS = {"pi": math.pi, "e": math.e}
_BINOPS = {
    ast.Add: np.add,
    ast.Sub: np.subtract,
    ast.Mult: np.multiply,
    ast.Div: np.divide,
    ast.Pow: np.power,
}
_UNARY = {ast.USub: np.negative, ast.UAdd: np.positive}


def list_functions() -> dict[str, str]:
    """Registry name -> ``"formula on [a, b]"``."""
    return {n: f"{f.formula} on [{f.domain[0]:g}, {f.domain[1]:g}]" for n, f in REGISTRY.items()}


def _show(expr: str) -> str:
    return repr(expr if len(expr) <= 60 else expr[:57] + "...")


def _constant(value, bad: str) -> np.float64:
    """A literal as float64: every operation runs in floats, so 9**9**9 is inf at once and
    never a huge Python integer."""
    if type(value) not in (int, float):
        raise UserError(f"{bad} only real numbers are allowed as constants, not {value!r}")
    try:
        return np.float64(float(value))
    except OverflowError:
        raise UserError(f"{bad} the number {str(value)[:20]}... is too large") from None


def _compile(node: ast.AST, expr: str) -> Fn:
    """Turn one whitelisted AST node into a closure of x; anything else is a UserError."""
    bad = f"expression {_show(expr)}:"
    if isinstance(node, ast.Expression):
        return _compile(node.body, expr)
    if isinstance(node, ast.Constant):
        value = _constant(node.value, bad)
        return lambda x: np.full_like(x, value)
    if isinstance(node, ast.Name):
        if node.id == "x":
            return lambda x: x
        if node.id in CONSTANTS:
            value = np.float64(CONSTANTS[node.id])
            return lambda x: np.full_like(x, value)
        if node.id in FUNCTIONS:
            raise UserError(f"{bad} function {node.id!r} must be called, e.g. {node.id}(x)")
        raise UserError(f"{bad} unknown name {node.id!r} (allowed: x, pi, e)")
    if isinstance(node, ast.BinOp) and type(node.op) in _BINOPS:
        op, left, right = (
            _BINOPS[type(node.op)],
            _compile(node.left, expr),
            _compile(node.right, expr),
        )
        return lambda x: op(left(x), right(x))
    if isinstance(node, ast.UnaryOp) and type(node.op) in _UNARY:
        op, operand = _UNARY[type(node.op)], _compile(node.operand, expr)
        return lambda x: op(operand(x))
    if isinstance(node, ast.Call):
        if not isinstance(node.func, ast.Name):
            raise UserError(f"{bad} only plain function calls like sin(x) are allowed")
        name = node.func.id
        if name not in FUNCTIONS:
            raise UserError(
                f"{bad} unknown function {name!r} (allowed: {', '.join(sorted(FUNCTIONS))})"
            )
        if len(node.args) != 1 or node.keywords or isinstance(node.args[0], ast.Starred):
            raise UserError(f"{bad} {name}() takes exactly one argument")
        f, arg = FUNCTIONS[name], _compile(node.args[0], expr)
        return lambda x: f(arg(x))
    if isinstance(node, ast.Attribute):
        raise UserError(f"{bad} attribute access ('.{node.attr}') is not allowed")
    what = type(getattr(node, "op", node)).__name__
    raise UserError(
        f"{bad} {what} is not allowed (use numbers, x, pi, e, + - * / ** and "
        f"{', '.join(sorted(FUNCTIONS))})"
    )


def compile_expression(expr: str) -> Fn:
    """Compile a safe expression in ``x`` to a vectorised ``f(x: ndarray) -> ndarray``."""
    expr = expr.strip()
    if not expr:
        raise UserError("expression is empty")
    if len(expr) > MAX_EXPR_LEN:
        raise UserError(f"expression is longer than {MAX_EXPR_LEN} characters")
    try:
        tree = ast.parse(expr, mode="eval")
        return _compile(tree, expr)
    except SyntaxError as e:
        raise UserError(f"expression {_show(expr)}: syntax error ({e.msg})") from None
    except (RecursionError, MemoryError):
        raise UserError(f"expression {_show(expr)}: too deeply nested") from None


def resolve(spec: str) -> TargetFunction:
    """A registry name, ``expr:<expression>``, or a bare expression mentioning ``x``."""
    spec = spec.strip()
    if spec in REGISTRY:
        return REGISTRY[spec]
    if spec.startswith("expr:"):
        expr = spec[len("expr:") :].strip()
    elif "x" in spec:
        expr = spec
    else:
        raise UserError(
            f"unknown function {spec!r}: use one of {', '.join(REGISTRY)}, "
            "or an expression in x such as 'expr:x**2 * sin(3*x)'"
        )
    return TargetFunction(spec, compile_expression(expr), EXPR_DEFAULT_DOMAIN, expr)


def evaluate(spec: str, x: np.ndarray) -> np.ndarray:
    """The target function ``spec`` at points ``x`` (float64, same shape)."""
    return _evaluate(resolve(spec), x)


def _evaluate(target: TargetFunction, x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    with np.errstate(all="ignore"):
        y = np.asarray(target.fn(x), dtype=np.float64)
    return np.broadcast_to(y, x.shape).copy()


CHECK_POINTS = 10_001  # grid on which a target is checked before any run starts


def check_target(spec: str, domain: tuple[float, float] | None = None,
                 points: int = CHECK_POINTS) -> TargetFunction:
    """Resolve a target and make sure it is finite on its domain, before any run starts.

    Args:
        spec: A registry name, ``expr:<expression>`` or a bare expression in x.
        domain: (low, high); None: the target's own domain.
        points: Grid points (evenly spaced, both ends and 0 when inside) it is evaluated at.

    Returns:
        The resolved `TargetFunction`.

    Raises:
        UserError: unknown or unsafe spec, bad domain, or a value that is NaN or infinite
            on the grid (naming the first such x).

    >>> check_target("sinc").domain
    (-1.0, 1.0)
    >>> try:
    ...     check_target("expr:1/x")
    ... except UserError as e:
    ...     print(str(e)[:52])
    function 'expr:1/x' is not finite on [-1, 1] (e.g. a
    """
    target = resolve(spec)
    lo, hi = _check_domain(target.domain if domain is None else domain, spec)
    x = np.linspace(lo, hi, points)
    if lo < 0 < hi:
        x = np.sort(np.append(x, 0.0))
    bad = ~np.isfinite(_evaluate(target, x))
    if bad.any():
        raise UserError(f"function {spec!r} is not finite on [{lo:g}, {hi:g}] (e.g. at "
                        f"x={x[bad][0]:.6g}); choose another function or domain")
    return target


def _check_domain(domain, spec: str) -> tuple[float, float]:
    try:
        lo, hi = (float(v) for v in domain)
    except (TypeError, ValueError):
        raise UserError(
            f"domain for {spec!r} must be two numbers (low, high), got {domain!r}"
        ) from None
    if not (math.isfinite(lo) and math.isfinite(hi) and lo < hi):
        raise UserError(f"domain for {spec!r} must be finite with low < high, got {domain!r}")
    return lo, hi


def function_dataset(
    spec: str,
    domain: tuple[float, float] | None = None,
    n_train: int = 1000,
    n_test: int = 1000,
    seed: int = 0,
    device: str | torch.device = "cpu",
) -> Dataset:
    """Regression data for ``spec``: train x on an even grid, test x uniform random (seeded).

    x and y are float32 ``[N, 1]``; test points are sorted (handy for plotting).
    """
    target = resolve(spec)
    lo, hi = _check_domain(target.domain if domain is None else domain, spec)
    for key, n in (("n_train", n_train), ("n_test", n_test)):
        if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
            raise UserError(f"{key} must be a positive integer, got {n!r}")
    if seed < 0:
        raise UserError(f"seed must be >= 0, got {seed}")
    x_train = np.linspace(lo, hi, n_train)
    x_test = np.sort(np.random.default_rng(seed).uniform(lo, hi, n_test))
    y_train, y_test = _evaluate(target, x_train), _evaluate(target, x_test)
    for xs, ys in ((x_train, y_train), (x_test, y_test)):
        bad = ~np.isfinite(ys)
        if bad.any():
            raise UserError(
                f"function {spec!r} is not finite on [{lo:g}, {hi:g}] "
                f"(e.g. at x={xs[bad][0]:.6g}); choose another domain"
            )

    def col(a: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(a.astype(np.float32).reshape(-1, 1))

    ds = Dataset(
        col(x_train),
        col(y_train),
        col(x_test),
        col(y_test),
        name=spec,
        n_classes=None,
        source=f"{target.formula} on [{lo:g}, {hi:g}]",
    )
    return ds if str(device) == "cpu" else ds.to(device)
