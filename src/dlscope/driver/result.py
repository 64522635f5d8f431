"""The object a notebook gets back: tables (DataFrames), figures, observations, summary.

`dlscope.run(...)` returns one; `dlscope.load(DIR)` rebuilds it from a results folder
(tables from the CSVs, figures redrawn from the tables, config from config.toml).
"""

from __future__ import annotations

import base64
import html
import io
import json
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd


@dataclass
class ExperimentResult:
    name: str
    path: Path
    config: object
    tables: dict[str, pd.DataFrame]
    figures: dict = field(default_factory=dict)
    observations: list[str] = field(default_factory=list)
    summary: dict = field(default_factory=dict)

    def __repr__(self) -> str:
        tables = ", ".join(f"{k} ({len(v)} rows)" for k, v in self.tables.items())
        return (f"ExperimentResult({self.name!r}, path={str(self.path)!r}, tables: {tables}; "
                f"figures: {', '.join(self.figures)})")

    def _repr_html_(self) -> str:
        parts = [f"<h3>{html.escape(self.summary.get('title', self.name))}</h3>",
                 f"<p><code>{html.escape(str(self.path))}</code></p><ul>"]
        parts += [f"<li>{html.escape(o)}</li>" for o in self.observations]
        parts.append("</ul>")
        for tname, df in self.tables.items():
            parts.append(f"<details><summary>{html.escape(tname)} ({len(df)} rows)</summary>"
                         f"{df.head(20).to_html(index=False)}</details>")
        for fig in self.figures.values():
            buf = io.BytesIO()
            fig.savefig(buf, format="png", dpi=80, bbox_inches="tight")
            data = base64.b64encode(buf.getvalue()).decode()
            parts.append(f'<img src="data:image/png;base64,{data}" style="max-width:48%">')
        return "\n".join(parts)


def load(path) -> ExperimentResult | dict[str, ExperimentResult]:
    """Read a finished results folder: one experiment's, or an OUT folder holding several."""
    from dlscope.contract import config as configs
    from dlscope.errors import UserError

    path = Path(path)
    if not (path / "summary.json").exists():
        found = {d.name: load(d) for d in sorted(path.iterdir()) if (d / "summary.json").exists()} \
            if path.is_dir() else {}
        if not found:
            raise UserError(f"{path}: no finished experiment here (no summary.json)")
        return found
    try:
        summary = json.loads((path / "summary.json").read_text())
        exp = _experiment(summary, path)
        cfg = configs.from_toml(exp, (path / "config.toml").read_text())
        tables = {p.stem: pd.read_csv(p) for p in sorted(path.glob("*.csv"))}
        figures = exp.figures(cfg, tables)
    except UserError as exc:
        raise UserError(f"{path}: not a readable results folder ({exc})") from None
    except Exception as exc:  # noqa: BLE001 - garbage files: one line naming the folder, not a raw traceback
        what = " ".join(str(exc).split())[:300]
        raise UserError(f"{path}: not a readable results folder ({type(exc).__name__}: "
                        f"{what})") from None
    return ExperimentResult(name=summary["experiment"], path=path, config=cfg, tables=tables,
                            figures=figures, observations=summary.get("observations", []),
                            summary=summary)


def _experiment(summary: dict, path: Path):
    """The module of the experiment that wrote `path`: the registered one, or else the module
    summary.json records (an outside experiment), imported and registered when importable."""
    from dlscope import experiments
    from dlscope.errors import UserError

    name, module = summary.get("experiment"), summary.get("module")
    if not isinstance(name, str):
        raise UserError(f"{path}/summary.json: no experiment name")
    if name not in experiments.available() and isinstance(module, str) and module:
        try:
            experiments.register(module)
        except UserError as exc:
            raise UserError(f"{path}: experiment {name!r} comes from module {module!r}, which "
                            f"cannot be used here: {exc}") from None
    return experiments.get(name)
