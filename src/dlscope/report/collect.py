"""Read a results folder into plain data for the page: no training, no experiment code run.

Everything comes from the files the store wrote (suite.json, <experiment>/summary.json,
config.toml, env.json, *.csv, figures/*.png). Which experiments there are, and in what
order, comes from the registry (dlscope.experiments: built-in, then outside ones), then any
other experiment folder found, rendered from its own files. Titles and sections of
registered experiments that left no summary are read from their module's source with `ast`
(`experiments.describe`), so a half-written or broken experiment module can never break the
report.
"""

from __future__ import annotations

import csv
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path

from dlscope import experiments
from dlscope.errors import UserError
from dlscope.report.fmt import slug

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
MAX_CSV_BYTES = 50_000_000        # a table larger than this is linked, not parsed
KEEP_ROWS = 2_000                 # rows kept in memory per table (all are counted)


@dataclass
class Table:
    """A CSV file: its header, its first rows (strings), and how many rows it has in all."""
    name: str
    href: str
    size: int
    columns: list[str] = field(default_factory=list)
    rows: list[list[str]] = field(default_factory=list)
    n_rows: int = 0
    error: str | None = None


@dataclass
class Figure:
    name: str
    href: str
    data: bytes | None = None
    width: int | None = None
    height: int | None = None
    error: str | None = None


@dataclass
class Experiment:
    name: str
    title: str
    section: str
    state: str                      # done | failed | incomplete | not run
    question: str = ""
    summary: dict = field(default_factory=dict)
    suite: dict = field(default_factory=dict)       # this experiment's entry in suite.json
    config: dict | None = None
    config_error: str | None = None
    env: dict = field(default_factory=dict)
    tables: list[Table] = field(default_factory=list)
    figures: list[Figure] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)   # unreadable files and the like
    has_folder: bool = False
    files: list[str] = field(default_factory=list)      # config.toml etc. that exist
    stored_runs: int = 0

    @property
    def anchor(self) -> str:
        return "exp-" + slug(self.name)


@dataclass
class Results:
    folder: Path
    suite: dict
    experiments: list[Experiment]
    problems: list[str] = field(default_factory=list)


LINKED = "a symbolic link (not followed: the report reads only the results folder)"


def _read_json(path: Path, problems: list[str], label: str) -> dict:
    if path.is_symlink():
        problems.append(f"{label}: {LINKED}")
        return {}
    try:
        obj = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        problems.append(f"{label}: unreadable ({type(exc).__name__}: {exc})")
        return {}
    if not isinstance(obj, dict):
        problems.append(f"{label}: expected a JSON object")
        return {}
    return obj


def _png_size(data: bytes) -> tuple[int, int] | None:
    if len(data) < 24 or not data.startswith(PNG_MAGIC) or data[12:16] != b"IHDR":
        return None
    return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")


def read_table(path: Path, href: str, max_rows: int = KEEP_ROWS) -> Table:
    t = Table(name=path.stem, href=href, size=path.stat().st_size)
    if path.is_symlink():
        t.error = LINKED
        return t
    if t.size > MAX_CSV_BYTES:
        t.error = "too large to preview"
        return t
    try:
        with path.open(newline="", encoding="utf-8", errors="replace") as f:
            reader = csv.reader(f)
            t.columns = next(reader, [])
            for row in reader:
                if t.n_rows < max_rows:
                    t.rows.append(row)
                t.n_rows += 1
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        t.error = f"unreadable ({type(exc).__name__}: {exc})"
    return t


def read_figure(path: Path, href: str) -> Figure:
    fig = Figure(name=path.stem, href=href)
    if path.is_symlink() or path.parent.is_symlink():
        fig.error = LINKED
        return fig
    try:
        data = path.read_bytes()
    except OSError as exc:
        fig.error = f"unreadable ({exc})"
        return fig
    size = _png_size(data)
    if size is None:
        fig.error = "not a PNG file"
        return fig
    fig.data, (fig.width, fig.height) = data, size
    return fig


def _read_experiment(folder: Path, name: str, suite_entry: dict) -> Experiment:
    d = folder / name
    consts = experiments.describe(name)
    exp = Experiment(name=name, title=consts.get("title", name),
                     section=consts.get("section", "?"),
                     question=consts.get("question", ""), state="not run", suite=suite_entry,
                     has_folder=d.is_dir())
    if exp.has_folder:
        exp.files = [f for f in ("config.toml", "summary.json", "env.json") if (d / f).is_file()]
        if (d / "summary.json").exists():
            exp.summary = _read_json(d / "summary.json", exp.problems, f"{name}/summary.json")
        exp.state = "done" if exp.summary else "incomplete"
        if (d / "config.toml").exists() and not (d / "config.toml").is_symlink():
            try:
                exp.config = tomllib.loads((d / "config.toml").read_text(encoding="utf-8"))
            except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
                exp.config_error = f"{type(exc).__name__}: {exc}"
        if (d / "env.json").exists():
            exp.env = _read_json(d / "env.json", exp.problems, f"{name}/env.json")
        csvs = sorted(d.glob("*.csv"), key=lambda p: (p.stem != "results", p.name))
        exp.tables = [read_table(p, f"{name}/{p.name}") for p in csvs]
        exp.figures = [read_figure(p, f"{name}/figures/{p.name}")
                       for p in sorted((d / "figures").glob("*.png"))]
        if (d / "runs").is_dir():
            exp.stored_runs = sum(1 for r in (d / "runs").iterdir()
                                  if r.is_dir() and not r.name.startswith("."))
    if suite_entry.get("status") == "failed":
        exp.state = "failed"
    s = exp.summary
    for key in ("title", "section", "question"):
        if isinstance(s.get(key), str) and s[key]:
            setattr(exp, key, s[key])
    return exp


def collect(folder) -> Results:
    folder = Path(folder)
    if not folder.is_dir():
        raise UserError(f"{folder}: no such results folder")
    if (folder / "summary.json").is_file():
        raise UserError(f"{folder}: this is one experiment's folder; pass the folder that "
                        f"holds it ({folder.resolve().parent})")
    problems: list[str] = []
    suite = _read_json(folder / "suite.json", problems, "suite.json") \
        if (folder / "suite.json").exists() else {}
    entries = suite.get("experiments") if isinstance(suite.get("experiments"), dict) else {}
    found = [d.name for d in sorted(folder.iterdir())
             if d.is_dir() and not d.name.startswith(".")
             and ((d / "summary.json").exists() or (d / "config.toml").exists())]
    if not found and not entries:
        raise UserError(f"{folder}: no results here (no suite.json, no <experiment>/summary.json)"
                        f"; run `dlscope run NAME --out {folder}` first")
    names = list(dict.fromkeys([*experiments.available(), *entries, *found]))
    exps = [_read_experiment(folder, n, entries.get(n) if isinstance(entries.get(n), dict)
                             else {}) for n in names]
    return Results(folder=folder, suite=suite, experiments=exps, problems=problems)
