"""One experiment's section: question, warnings, setup, figures, key numbers, observations,
data files. Failed and flagged runs go in visible boxes at the top, never hidden."""

from __future__ import annotations

import base64
import math

from dlscope.report.collect import Experiment
from dlscope.report.fmt import esc, flatten, fmt_seconds, fmt_value, href, kv, table

MODEL_COLUMNS = ("model", "arch", "architecture")
PARAM_COLUMNS = ("params", "n_params", "parameters", "num_params")
DESCRIBE_COLUMNS = ("depth", "hidden", "widths", "width", "layers", "activation", "kind", "init")
MAX_HEADLINE = 40      # headline entries shown
MAX_MODELS = 12        # rows of the model table
MAX_ROWS = 15          # rows of results.csv shown
MAX_STATS = 60         # rows of each statistics table shown


def badge(e: Experiment) -> str:
    out = f'<span class="badge st-{esc(e.state.replace(" ", "-"))}">{esc(e.state)}</span>'
    n_flag, n_fail = len(_list(e.summary.get("flagged"))), len(_list(e.summary.get("failed")))
    if n_fail:
        out += f' <span class="badge st-failed">{n_fail} run{"s" * (n_fail != 1)} failed</span>'
    if n_flag:
        out += f' <span class="badge st-flagged">{n_flag} flagged</span>'
    return out


def _list(v) -> list:
    return v if isinstance(v, list) else []


def _meta(e: Experiment) -> str:
    s, env = e.summary, e.env
    bits = [f"<code>{esc(e.name)}</code>"]
    if s.get("profile"):
        bits.append(f"profile {esc(s['profile'])}")
    if isinstance(s.get("runs"), int):
        extra = ""
        if isinstance(s.get("reused"), int) and isinstance(s.get("computed"), int):
            extra = f" ({s['reused']} reused, {s['computed']} computed)"
        bits.append(f"{s['runs']} runs{extra}")
    wall = s.get("wall_s", e.suite.get("wall_s"))
    if wall is not None:
        bits.append(f"wall time {esc(fmt_seconds(wall))}")
    if env.get("device"):
        how = f"on {esc(env['device'])}"
        if env.get("executor"):
            how += f", {esc(env['executor'])} executor"
        if isinstance(env.get("workers"), int) and env["workers"] > 1:
            how += f" × {env['workers']} workers"
        if env.get("threads_per_run"):
            how += f", {esc(env['threads_per_run'])} thread(s) per run"
        bits.append(how)
    return '<p class="meta">' + " · ".join(bits) + "</p>"


def _boxes(e: Experiment) -> str:
    out = []
    if e.state == "failed":
        err = e.suite.get("error", "unknown error")
        body = f"<p><strong>This experiment failed:</strong> <code>{esc(err)}</code></p>"
        if e.suite.get("traceback"):
            body += (f"<details><summary>traceback</summary><pre>{esc(e.suite['traceback'])}"
                     "</pre></details>")
        if e.summary:
            body += ("<p>The folder still holds a summary from an earlier or partial run; it is "
                     "shown below.</p>")
        out.append(f'<div class="box error" role="alert">{body}</div>')
    elif e.state == "incomplete":
        out.append('<div class="box error" role="alert"><p><strong>Incomplete:</strong> the folder '
                   "has no summary.json (interrupted, or still running). "
                   f"{e.stored_runs} finished run(s) are stored in <code>{esc(e.name)}/runs/"
                   "</code>; a new run reuses them.</p></div>")
    elif e.state == "not run":
        out.append('<p class="note">Not run: no folder for this experiment in these results.</p>')
    failed = [f for f in _list(e.summary.get("failed")) if isinstance(f, dict)]
    if failed:
        items = "".join(f"<li><code>{esc(f.get('run', '?'))}</code>: {esc(f.get('error', ''))}"
                        "</li>" for f in failed)
        out.append(f'<div class="box error" role="alert"><p><strong>{len(failed)} run(s) failed'
                   "</strong> (they are missing from the tables and figures):</p>"
                   f"<ul>{items}</ul></div>")
    flagged = [f for f in _list(e.summary.get("flagged")) if isinstance(f, dict)]
    if flagged:
        items = "".join(f"<li><code>{esc(f.get('run', '?'))}</code>: "
                        f"<strong>{esc(f.get('status', '?'))}</strong></li>" for f in flagged)
        out.append(f'<div class="box warn" role="alert"><p><strong>{len(flagged)} run(s) flagged'
                   "</strong> (kept in the tables and figures, marked by their status):</p>"
                   f'<ul class="runs">{items}</ul></div>')
    for p in e.problems:
        out.append(f'<div class="box warn"><p>{esc(p)}</p></div>')
    return "".join(out)


def _models(e: Experiment) -> str:
    for t in e.tables:
        cols = [c.lower() for c in t.columns]
        m = next((c for c in MODEL_COLUMNS if c in cols), None)
        p = next((c for c in PARAM_COLUMNS if c in cols), None)
        if not (m and p) or t.error:
            continue
        keep = [cols.index(m)] + [cols.index(c) for c in DESCRIBE_COLUMNS if c in cols] \
            + [cols.index(p)]
        seen = list(dict.fromkeys(tuple(r[i] if i < len(r) else "" for i in keep)
                                  for r in t.rows))
        if not seen:
            continue
        n_more, footer = len(seen) - MAX_MODELS, ""
        if n_more > 0:
            footer = (f"{n_more}{'+' if t.n_rows > len(t.rows) else ''} more models in "
                      f'<a href="{href(t.href)}">{esc(t.href)}</a>')
        return table([t.columns[i] for i in keep], [list(r) for r in seen[:MAX_MODELS]],
                     caption="Models", footer=footer)
    return ""


def _config(e: Experiment) -> str:
    link = (f' <a href="{href(e.name + "/config.toml")}">{esc(e.name)}/config.toml</a>'
            if e.has_folder else "")
    if e.config_error:
        return f'<p class="note">config.toml unreadable: {esc(e.config_error)}.{link}</p>'
    if not e.config:
        return ""
    items = [(k, esc(fmt_value(v))) for k, v in flatten(e.config)]
    return (f'<p class="sub">Resolved config{link}</p>' + kv(items))


def _figures(e: Experiment) -> str:
    if not e.figures:
        return ""
    out = ['<div class="figs">']
    for f in e.figures:
        cap = (f'{esc(f.name.replace("_", " "))} <a href="{href(f.href)}" class="file">'
               f"{esc(f.href)}</a>")
        if f.data is None:
            out.append(f'<figure class="broken"><p class="note">{esc(f.href)}: {esc(f.error)}'
                       f"</p><figcaption>{cap}</figcaption></figure>")
            continue
        data = base64.b64encode(f.data).decode()
        out.append(f'<figure><img src="data:image/png;base64,{data}" width="{f.width}" '
                   f'height="{f.height}" alt="{esc(e.name)}: {esc(f.name)}" loading="eager">'
                   f"<figcaption>{cap}</figcaption></figure>")
    out.append("</div>")
    return "<h4>Figures</h4>" + "".join(out)


def _headline(h: dict) -> str:
    items = flatten(h)
    if not items:
        return ""
    parts = [k.split("/") for k, _ in items]
    scalar = all(isinstance(v, (int, float, str, bool)) or v is None for _, v in items)
    if scalar and all(len(p) == 2 for p in parts):
        rows = list(dict.fromkeys(p[0] for p in parts))
        cols = list(dict.fromkeys(p[1] for p in parts))
        if 2 <= len(cols) <= 10 and len(rows) * len(cols) <= 2 * len(items) \
                and len(rows) <= MAX_HEADLINE:
            grid = {tuple(p): v for p, (_, v) in zip(parts, items)}
            body = [[r] + [_or_dash(grid.get((r, c))) for c in cols] for r in rows]
            return table([""] + cols, body, caption="Headline numbers (summary.json)")
    shown = [[k, v] for k, v in items[:MAX_HEADLINE]]
    more = (f"{len(items) - MAX_HEADLINE} more in summary.json"
            if len(items) > MAX_HEADLINE else "")
    return table(["key", "value"], shown, caption="Headline numbers (summary.json)",
                 footer=esc(more))


def _or_dash(v):
    return "—" if v is None else v


def _results(e: Experiment) -> str:
    t = next((t for t in e.tables if t.name == "results"), None)
    if t is None:
        return ""
    link = f'<a href="{href(t.href)}">{esc(t.href)}</a>'
    if t.error:
        return f'<p class="note">{link}: {esc(t.error)}</p>'
    more = f"{t.n_rows - MAX_ROWS} more rows in {link}" if t.n_rows > MAX_ROWS else ""
    rows = [r + [""] * (len(t.columns) - len(r)) for r in t.rows[:MAX_ROWS]]
    return table(t.columns, rows, caption=f"Results ({link}, {t.n_rows} rows)", footer=more)


def _num(v) -> str:
    return fmt_value(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else "—"


def _method(iv: dict) -> str:
    """What an interval is of; one without an interval (method "none") says why in words."""
    method = str(iv.get("method", ""))
    if method != "none":
        return method
    n = iv.get("n")
    return ("no interval: no finished run with a value" if n == 0
            else "no interval: one value")


def _pct(rate) -> str:
    return f"{100 * rate:.0f}%" if math.isfinite(rate) else "no runs"


def _statistics(stats: dict) -> str:
    """summary.json["statistics"] as tables: intervals over seeds (median, 95% interval, n,
    method), failure counts and rates, comparisons (difference, interval, p) and trends
    (Spearman ρ, p); any other entry (the method in words, lists) as key and value."""
    ivs, fails, diffs, trends, other = [], [], [], [], []

    def walk(d: dict, path: str) -> None:
        for k, v in d.items():
            key = f"{path}{k}"
            if not isinstance(v, dict):
                other.append([key, fmt_value(v)])
            elif {"median", "lo", "hi", "n"} <= set(v):
                ivs.append([key, _num(v["median"]), f"[{_num(v['lo'])}, {_num(v['hi'])}]",
                            _num(v["n"]), _method(v)])
            elif "runs" in v and any(str(x).endswith("_rate") for x in v):
                parts = [f"{x}: {v[x]} ({_pct(v[x + '_rate'])})" for x in v
                         if f"{x}_rate" in v and isinstance(v.get(f"{x}_rate"), (int, float))]
                fails.append([key, _num(v["runs"]), "; ".join(parts)])
            elif {"diff", "lo", "hi", "p_value"} <= set(v):
                clear = v.get("clear")
                diffs.append([key, _num(v["diff"]), f"[{_num(v['lo'])}, {_num(v['hi'])}]",
                              _num(v["p_value"]), f"{_num(v.get('n_a'))} / {_num(v.get('n_b'))}",
                              "clear" if clear else "no clear difference"])
            elif {"rho", "p_value"} <= set(v):
                trends.append([key, _num(v["rho"]), _num(v["p_value"]), _num(v.get("n"))])
            else:
                walk(v, key + " / ")

    walk(stats, "")

    def cut(rows):
        more = f"{len(rows) - MAX_STATS} more in summary.json" if len(rows) > MAX_STATS else ""
        return rows[:MAX_STATS], esc(more)

    out = []
    if other:
        out.append(kv([(k, esc(v)) for k, v in other[:MAX_STATS]]))
    for rows, cols, cap in (
            (ivs, ["setting / metric", "median", "95% interval", "n", "method"],
             "Per setting over seeds (failed runs excluded)"),
            (fails, ["setting", "runs", "failures"], "Failure rates"),
            (diffs, ["comparison", "difference", "95% interval", "p", "seeds", "reading"],
             "Comparisons"),
            (trends, ["trend", "Spearman ρ", "p", "n"], "Trends")):
        if rows:
            shown, more = cut(rows)
            out.append(table(cols, shown, caption=cap, footer=more))
    return "<h4>Statistics over seeds</h4>" + "".join(out) if out else ""


def _files(e: Experiment) -> str:
    if not e.has_folder:
        return ""
    items = []
    for t in e.tables:
        desc = (f"{t.n_rows} rows × {len(t.columns)} columns" if not t.error else esc(t.error))
        cols = f" — {esc(', '.join(t.columns))}" if t.columns else ""
        items.append(f'<li><a href="{href(t.href)}">{esc(t.href)}</a> '
                     f'<span class="note">({desc}, {_size(t.size)}){cols}</span></li>')
    for extra in e.files:
        items.append(f'<li><a href="{href(f"{e.name}/{extra}")}">{esc(e.name)}/{extra}</a></li>')
    return f'<h4>Data</h4><ul class="files">{"".join(items)}</ul>'


def _size(n: int) -> str:
    if n < 1024:
        return f"{n} B"
    return f"{n / 1024:.1f} KB" if n < 1024 ** 2 else f"{n / 1024 ** 2:.1f} MB"


def experiment_section(e: Experiment) -> str:
    state = esc(e.state.replace(" ", "-"))
    out = [f'<section class="experiment state-{state}" id="{esc(e.anchor)}">',
           f'<h3><span class="secno">{esc(e.section)}</span> {esc(e.title)} {badge(e)}</h3>',
           _meta(e)]
    if e.question:
        out.append(f'<p class="question"><strong>Question.</strong> {esc(e.question)}</p>')
    out.append(_boxes(e))
    setup = _models(e) + _config(e)
    if setup:
        out.append("<h4>Setup</h4>" + setup)
    out.append(_figures(e))
    numbers = (_headline(e.summary["headline"]) if isinstance(e.summary.get("headline"), dict)
               else "") + _results(e)
    if numbers:
        out.append("<h4>Key numbers</h4>" + numbers)
    if isinstance(e.summary.get("statistics"), dict):
        out.append(_statistics(e.summary["statistics"]))
    obs = _list(e.summary.get("observations"))
    if obs:
        out.append("<h4>Observations</h4><ul class=\"obs\">"
                   + "".join(f"<li>{esc(o)}</li>" for o in obs) + "</ul>")
    out.append(_files(e))
    out.append("</section>")
    return "".join(out)
