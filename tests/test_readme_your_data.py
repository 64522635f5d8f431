"""The README's "Your model, your data" commands run as written, with the README's own
mynets.py, on a made-up mine.npz (1,200 + 200 images of 1x8x8, 4 classes)."""

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd

README = Path(__file__).resolve().parents[1] / "README.md"
DLSCOPE = str(Path(sys.executable).with_name("dlscope"))


def _blocks():
    section = README.read_text(encoding="utf-8").split("## Your model, your data", 1)[1]
    section = section.split("\n## ", 1)[0]
    bash = re.search(r"```bash\n(.*?)```", section, re.DOTALL).group(1)
    python = re.search(r"```python\n(.*?)```", section, re.DOTALL).group(1)
    return [line for line in bash.splitlines() if line.startswith("dlscope ")], python


def test_readme_commands_run_on_a_users_npz_and_factory(tmp_path):
    commands, factory = _blocks()
    assert len(commands) == 2 and "# mynets.py" in factory
    (tmp_path / "mynets.py").write_text(factory)
    g = np.random.default_rng(0)
    np.savez(tmp_path / "mine.npz", x_train=g.integers(0, 256, (1200, 1, 8, 8), dtype=np.uint8),
             y_train=g.integers(0, 4, 1200), x_test=g.integers(0, 256, (200, 1, 8, 8),
                                                                 dtype=np.uint8),
             y_test=g.integers(0, 4, 200))
    for command in commands:
        args = command.split()[1:]
        args = [a.strip("'") for a in args]
        res = subprocess.run([DLSCOPE, *args], capture_output=True, text=True, cwd=tmp_path,
                             timeout=600)
        assert res.returncode == 0, res.stderr
    runs = tmp_path / "runs"
    rl = pd.read_csv(runs / "random-labels" / "results.csv")
    assert set(rl.model) == {"mlp:64-256-4"} and set(rl.data) == {"npz (other data)"}
    pc = pd.read_csv(runs / "param-count" / "results.csv")
    widths = sorted(set(pc.params))  # the factory at each quick width: 64 -> w -> 4
    assert widths == [65 * w + (w + 1) * 4 for w in (2, 32, 256)]
    env = json.loads((runs / "param-count" / "env.json").read_text())
    assert env["data"][0]["data"] == "npz"
