"""Modules a reader takes in at a glance: a function over 60 lines says why, in a comment
right above it (CONTRIBUTING rule, docs/CONTRACT.md); ruff (in CI) checks the rest."""

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "dlscope"
MAX_LINES = 60


def test_long_functions_say_why():
    offenders = []
    for path in sorted(SRC.rglob("*.py")):
        lines = path.read_text(encoding="utf-8").splitlines()
        for node in ast.walk(ast.parse("\n".join(lines))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                length = node.end_lineno - node.lineno + 1
                first = min([node.lineno, *(d.lineno for d in node.decorator_list)])
                above = lines[first - 2].strip() if first >= 2 else ""
                if length > MAX_LINES and not above.startswith("# long"):
                    offenders.append(f"{path.relative_to(SRC)}:{node.lineno} {node.name} "
                                     f"({length} lines)")
    assert not offenders, "functions over 60 lines without a '# long: why' comment: " + \
        "; ".join(offenders)
