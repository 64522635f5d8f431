"""The README's "Curvature of your own model" block runs as written and its numbers are right."""

import re
from pathlib import Path

import numpy as np
import torch

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_curvature_block_runs(tmp_path, monkeypatch):
    text = README.read_text(encoding="utf-8")
    section = text.split("## Curvature of your own model", 1)[1]
    block = re.search(r"```python\n(.*?)```", section, re.DOTALL).group(1)
    monkeypatch.chdir(tmp_path)
    ns: dict = {}
    exec(compile(block, "README.md", "exec"), ns)  # noqa: S102 -- the README as written
    assert (tmp_path / "hessian_density.png").stat().st_size > 0
    # the printed numbers against the dense Hessian of the same model and data
    from dlscope.metrics import full_hessian

    h = full_hessian(ns["model"], ns["loss"], ns["x"], ns["y"])
    ev = torch.linalg.eigvalsh(h).numpy()
    np.testing.assert_allclose(ns["top"].top, ev[-3:], atol=1e-6 * np.abs(ev).max())
    tr = float(torch.trace(h))
    assert abs(ns["trace"].trace - tr) <= 4 * ns["trace"].stderr
    assert ns["density"].lambda_max <= ev[-1] * (1 + 1e-9) and ns["density"].lambda_min >= ev[0] - 1e-9 * np.abs(ev).max()
