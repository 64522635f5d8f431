"""The object a notebook gets back: tables (DataFrames), figures, observations, summary.

`dlscope.run(...)` returns one; `dlscope.load(DIR)` rebuilds it from a results folder
(tables from the CSVs, figures redrawn from the tables, config from config.toml).
"""

from __future__ import annotations

import base64
import html
import io
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType

import pandas as pd

from dlscope.errors import UserError


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
                         f"{df.head(20).to_html(index=False, na_rep='—')}</details>")
        for fig in self.figures.values():
            buf = io.BytesIO()
            fig.savefig(buf, format="png", dpi=80, bbox_inches="tight")
            data = base64.b64encode(buf.getvalue()).decode()
            parts.append(f'<img src="data:image/png;base64,{data}" style="max-width:48%">')
        return "\n".join(parts)


def load(path, *, plugins=()) -> ExperimentResult | dict[str, ExperimentResult]:
    """Read a finished results folder: one experiment's, or an OUT folder holding several.

    A results folder is data: reading one never imports the module its summary.json
    records. The experiment must be registered already: a built-in one, or one the user
    named (`plugins` here, DLSCOPE_PLUGINS, an installed `dlscope.experiments` entry point,
    or `dlscope.experiments.register`); any other stops with one line naming the module and
    how to allow it.

    Args:
        path: The experiment's folder (holding summary.json) or an OUT folder of them.
        plugins: Experiment modules (import paths or modules) to import and register first,
            e.g. ["mypkg.myexp"]: the caller's consent to run their code.

    Returns:
        An ExperimentResult, or {experiment folder name: ExperimentResult} for an OUT folder.

    Raises:
        UserError: No finished experiment there, unreadable files, or an experiment whose
            module is not loaded (NotLoaded).
    """
    from dlscope import experiments

    if isinstance(plugins, (str, ModuleType)):
        plugins = [plugins]
    for p in plugins:
        experiments.register(p)
    return _load(Path(path))


class NotLoaded(UserError):
    """A results folder written by an experiment whose module the user has not loaded."""


# a dotted module path, nothing else (the only form named in a refusal's advice)
_MODULE_PATH = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*")


def _load(path: Path) -> ExperimentResult | dict[str, ExperimentResult]:
    from dlscope.contract import config as configs

    if not (path / "summary.json").exists():
        found = {d.name: _load(d) for d in sorted(path.iterdir())
                 if (d / "summary.json").exists()} if path.is_dir() else {}
        if not found:
            raise UserError(f"{path}: no finished experiment here (no summary.json)")
        return found
    try:
        summary = json.loads((path / "summary.json").read_text())
        if not isinstance(summary, dict):
            raise UserError("summary.json is not a JSON object")
        exp = _experiment(summary, path)
        cfg = configs.from_toml(exp, (path / "config.toml").read_text())
        tables = {p.stem: pd.read_csv(p) for p in sorted(path.glob("*.csv"))}
        figures = exp.figures(cfg, tables)
    except NotLoaded:
        raise
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
    """The registered module of the experiment that wrote `path`. The module summary.json
    records is never imported from here: it only names what the user may choose to load."""
    from dlscope import experiments
    from dlscope.experiments import registry

    name, module = summary.get("experiment"), summary.get("module")
    if not isinstance(name, str) or not name:
        raise UserError("summary.json: no experiment name")
    if name in experiments.available():
        return experiments.get(name)
    if not (isinstance(module, str) and _MODULE_PATH.fullmatch(module)):
        shown = repr(module)[:80]
        raise NotLoaded(f"{path}: written by experiment {name[:80]!r}, which is not registered, "
                        f"and summary.json names no module path ({shown}); load its module "
                        f"with dlscope.load(DIR, plugins=['mypkg.myexp']) or DLSCOPE_PLUGINS")
    if (module == "dlscope" or module.startswith("dlscope.")) \
            and module not in registry.BUILTIN.values():
        raise NotLoaded(f"{path}: written by experiment module {module!r}, which is not one of "
                        f"dlscope's built-in experiments; refused (not imported)")
    raise NotLoaded(f"{path}: written by experiment module {module!r}, which is not loaded; "
                    f"to allow it: dlscope.load(DIR, plugins=[{module!r}]) or "
                    f"DLSCOPE_PLUGINS={module}")
