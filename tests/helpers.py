"""Helpers several test modules share (tests/ is on sys.path through its conftest.py):

- `cli`: the `dlscope` command in this process, as (exit code, stdout, stderr);
- `contract_example`: the example experiment of docs/CONTRACT.md, as source text;
- `write_user_npz`: a small 8x8 one-channel, four-class image set in the npz form a user
  hands to `--data npz:FILE`.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

CONTRACT = Path(__file__).resolve().parents[1] / "docs" / "CONTRACT.md"


def cli(monkeypatch, capsys, *args: str) -> tuple[int, str, str]:
    """`dlscope.cli.main` with argv `args` in this process: (exit code, stdout, stderr)."""
    from dlscope.cli import main

    monkeypatch.setattr(sys, "argv", ["dlscope", *args])
    code = 0
    try:
        main()
    except SystemExit as exc:
        code = exc.code or 0
    out = capsys.readouterr()
    return code, out.out, out.err


def contract_example() -> str:
    """The code block after `<!-- example: toy_width.py -->` in docs/CONTRACT.md."""
    text = CONTRACT.read_text(encoding="utf-8")
    after = text[text.index("<!-- example: toy_width.py -->"):]
    start = after.index("```python\n") + len("```python\n")
    return after[start:after.index("\n```", start) + 1]


def write_user_npz(path: Path) -> Path:
    """120 train and 40 test uint8 images [1, 8, 8] with labels 0-3 (seeded) at `path`."""
    g = np.random.default_rng(0)
    np.savez(path, x_train=g.integers(0, 256, (120, 1, 8, 8), dtype=np.uint8),
             y_train=g.integers(0, 4, 120),
             x_test=g.integers(0, 256, (40, 1, 8, 8), dtype=np.uint8),
             y_test=g.integers(0, 4, 40))
    return path
