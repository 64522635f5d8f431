"""The page: header (profile, wall time, machine, versions, configs), contents, one group per
SECTION (in the registry's order, titled by `experiments.part_title`), one section per
experiment. Self-contained: CSS inline, figures as
data URIs, no script, no network (a Content-Security-Policy forbids any)."""

from __future__ import annotations

import datetime as _dt
import os
from pathlib import Path

from dlscope import experiments
from dlscope.report.collect import Experiment, Results, collect
from dlscope.report.fmt import esc, fmt_seconds, href, kv, slug
from dlscope.report.sections import badge, experiment_section
from dlscope.version import __version__

ENV_FIELDS = {  # env.json key -> label, in the order shown
    "machine": [("platform", "platform"), ("processor", "processor"), ("cpus", "CPUs"),
                ("device", "device"), ("executor", "executor"), ("workers", "workers"),
                ("threads_per_run", "threads per run")],
    "versions": [("python", "Python"), ("torch", "torch"), ("numpy", "numpy"),
                 ("dlscope", "dlscope"), ("engine", "engine"), ("git_commit", "git commit")],
}
CSP = ("default-src 'none'; img-src data:; style-src 'unsafe-inline'; base-uri 'none'; "
       "form-action 'none'")


def _css() -> str:
    return Path(__file__).with_name("style.css").read_text(encoding="utf-8")


def groups(exps: list[Experiment]) -> list[tuple[str, str, list[Experiment]]]:
    """(section, part title, experiments), sections in the order they first appear (collect
    lists the registry's experiments first, in its order), "?" (unknown) last."""
    order = list(dict.fromkeys(e.section for e in exps))
    order.sort(key=lambda sec: sec == "?")                       # stable: only moves "?"
    return [(sec, experiments.part_title(sec), [e for e in exps if e.section == sec])
            for sec in order]


def _env_value(exps: list[Experiment], key: str) -> str | None:
    """One value, or each distinct value with the experiments it came from."""
    seen: dict[str, list[str]] = {}
    for e in exps:
        if e.env.get(key) is not None:
            seen.setdefault(str(e.env[key]), []).append(e.name)
    if not seen:
        return None

    def show(v: str) -> str:   # commits as 12 hex digits, the whole one on hover
        if key == "git_commit":
            return f'<code title="{esc(v)}">{esc(v[:12])}</code>'
        return f"<code>{esc(v)}</code>"
    if len(seen) == 1:
        return show(next(iter(seen)))
    return "; ".join(f"{show(v)} ({esc(', '.join(names))})" for v, names in seen.items())


def _utilization(suite: dict) -> str | None:
    """suite.json's core utilization as the header shows it, e.g. "93% of 2 cores (busy
    core-seconds of the runs computed / cores x wall time)"; None when it has none."""
    u, cores = suite.get("core_utilization"), suite.get("cores")
    if not isinstance(u, (int, float)) or isinstance(u, bool) or not isinstance(cores, int):
        return None
    return (f"{100 * u:.0f}% of {cores} cores (busy core-seconds of the runs computed / "
            "cores × wall time)")


def _header(r: Results) -> str:
    exps = r.experiments
    done = [e for e in exps if e.summary]
    profiles = sorted({str(e.summary["profile"]) for e in done if e.summary.get("profile")})
    profile = (", ".join(profiles) + (" (mixed)" if len(profiles) > 1 else "") if profiles
               else str(r.suite.get("profile") or "—"))
    # suite.json's time counts only when it covers every result shown (not a later single run)
    util = None
    if isinstance(r.suite.get("wall_s"), (int, float)) and all(e.suite for e in done):
        wall = fmt_seconds(r.suite["wall_s"]) + " (run all)"
        util = _utilization(r.suite)
    else:
        walls = [e.summary["wall_s"] for e in done
                 if isinstance(e.summary.get("wall_s"), (int, float))]
        wall = fmt_seconds(sum(walls)) + " (sum of experiments)" if walls else "—"
    counts = {}
    for e in exps:
        counts[e.state] = counts.get(e.state, 0) + 1
    status = ", ".join(f"{n} {s}" for s, n in counts.items())
    when = _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    run = [("profile", esc(profile)), ("total wall time", esc(wall)),
           *([("core utilization", esc(util))] if util else []),
           ("experiments", esc(status)),
           ("results folder", f"<code>{esc(r.folder.resolve())}</code>"),
           ("generated", esc(f"{when} by dlscope {__version__}"))]
    with_env = [e for e in exps if e.env]
    blocks = [("Run", run)]
    for title, fields in ENV_FIELDS.items():
        items = [(label, v) for key, label in fields
                 if (v := _env_value(with_env, key)) is not None]
        if items:
            blocks.append((title.capitalize(), items))
    configs = [f'<a href="{href(e.name + "/config.toml")}">{esc(e.name)}/config.toml</a>'
               for e in exps if e.config is not None or e.config_error]
    if configs:
        blocks.append(("Config", [("resolved configs", " · ".join(configs))]))
    facts = "".join(f'<div class="block{" wide" if t == "Config" else ""}"><h2>{esc(t)}</h2>'
                    f"{kv(items)}</div>" for t, items in blocks)
    return (f'<header><h1>dlscope report</h1><p class="lead">HW1 — deep vs shallow, '
            f"optimization, generalization: {len(done)} of {len(exps)} experiments with results, "
            f"profile <strong>{esc(profile)}</strong>, total wall time <strong>{esc(wall)}"
            f"</strong>. Methods: {_methods_link(r)}.</p>{_attention(exps)}"
            f"<div class=\"facts\">{facts}</div></header>")


def _attention(exps: list[Experiment]) -> str:
    def links(sel):
        return ", ".join(f'<a href="#{esc(e.anchor)}">{esc(e.name)}</a>' for e in sel)
    lines = []
    failed = [e for e in exps if e.state in ("failed", "incomplete")]
    if failed:
        lines.append(f"<li><strong>{len(failed)} experiment(s) failed or incomplete:</strong> "
                     f"{links(failed)}</li>")
    bad_runs = [e for e in exps if e.summary.get("failed")]
    if bad_runs:
        lines.append(f"<li><strong>failed runs</strong> in {links(bad_runs)}</li>")
    flagged = [e for e in exps if e.summary.get("flagged")]
    if flagged:
        n = sum(len(e.summary["flagged"]) for e in flagged
                if isinstance(e.summary["flagged"], list))
        lines.append(f"<li><strong>{n} flagged run(s)</strong> (diverged, missed, …) in "
                     f"{links(flagged)}</li>")
    if not lines:
        return ""
    return f'<div class="box error attention" role="alert"><ul>{"".join(lines)}</ul></div>'


OUTCOME_CLASS = {"reproduced": "ok", "not reproduced": "bad", "inconclusive": "unsure",
                 "pipeline check": "check"}
METHODS = "METHODS.md"      # copied next to report.html from the repository's docs/


def verdict_rows(exps: list[Experiment]) -> list[tuple[Experiment, dict]]:
    """(experiment, verdict) for every well-formed verdict in the experiments' summaries."""
    out = []
    for e in exps:
        v = e.summary.get("verdicts")
        for d in v if isinstance(v, list) else []:
            if isinstance(d, dict) and isinstance(d.get("outcome"), str):
                out.append((e, d))
    return out


def _verdicts(r: Results) -> str:
    rows = verdict_rows(r.experiments)
    if not rows:
        return ""
    body = []
    for e, v in rows:
        outcome = v["outcome"]
        label = "pipeline check, not evidence" if outcome == "pipeline check" else outcome
        cls = OUTCOME_CLASS.get(outcome, "unsure")
        rule = f' title="{esc(v.get("rule", ""))}"' if v.get("rule") else ""
        body.append(f'<tr><td><a href="#{esc(e.anchor)}">{esc(e.name)}</a></td>'
                    + "".join(f"<td>{esc(v.get(k, ''))}</td>"
                              for k in ("claim", "source", "published", "statistic"))
                    + f'<td class="verdict v-{cls}"{rule}><strong>{esc(label)}</strong></td></tr>')
    heads = ("experiment", "claim", "source", "published number", "statistic here", "outcome")
    return ('<section class="verdicts" aria-label="Verdicts"><h2>Verdicts</h2>'
            '<p class="note">Each experiment\'s published claim, the statistic computed from its '
            "seeds and the outcome by the rule in summary.json (hover an outcome for its rule). "
            "A pipeline check is a run too short to be evidence: it issues no verdict.</p>"
            '<div class="tablewrap"><table class="data"><thead><tr>'
            + "".join(f'<th scope="col">{h}</th>' for h in heads)
            + f'</tr></thead><tbody>{"".join(body)}</tbody></table></div></section>')


def _methods_link(r: Results) -> str:
    if (r.folder / METHODS).is_file():
        return (f'<a href="{href(METHODS)}">{METHODS}</a> (a copy of the repository\'s '
                "docs/METHODS.md)")
    return "docs/METHODS.md in the dlscope repository"


def _toc(r: Results) -> str:
    rows = []
    for sec, part, members in groups(r.experiments):
        rows.append(f'<tr class="part"><th colspan="4" scope="rowgroup">'
                    f'<a href="#part-{slug(sec)}">{esc(sec)} · {esc(part)}</a></th></tr>')
        for e in members:
            s = e.summary
            runs = esc(s["runs"]) if isinstance(s.get("runs"), int) else "—"
            wall = esc(fmt_seconds(s.get("wall_s", e.suite.get("wall_s"))))
            rows.append(f'<tr><td><a href="#{esc(e.anchor)}">{esc(e.title)}</a> '
                        f'<code class="name">{esc(e.name)}</code></td><td>{badge(e)}</td>'
                        f'<td class="num">{runs}</td><td class="num">{wall}</td></tr>')
    return ('<nav class="toc" aria-label="Contents"><h2>Contents</h2><div class="tablewrap">'
            '<table class="data"><thead><tr><th scope="col">experiment</th>'
            '<th scope="col">status</th><th scope="col">runs</th><th scope="col">wall time</th>'
            f'</tr></thead><tbody>{"".join(rows)}</tbody></table></div></nav>')


def render(r: Results) -> str:
    body = []
    for sec, part, members in groups(r.experiments):
        body.append(f'<section class="part" id="part-{slug(sec)}"><h2><span class="secno">'
                    f'{esc(sec)}</span> {esc(part)}</h2>')
        body += [experiment_section(e) for e in members]
        body.append("</section>")
    problems = "".join(f'<div class="box warn"><p>{esc(p)}</p></div>' for p in r.problems)
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            '<meta name="viewport" content="width=device-width, initial-scale=1">'
            f'<meta http-equiv="Content-Security-Policy" content="{CSP}">'
            f"<title>dlscope report — {esc(r.folder.resolve().name)}</title>"
            f"<style>{_css()}</style></head><body><div class=\"page\">{_header(r)}{problems}"
            f"{_verdicts(r)}{_toc(r)}<main>{''.join(body)}</main><footer><p>Built by <code>"
            "dlscope report</code> from the results folder alone. Figures are embedded; links "
            "to CSV and config files are relative to this page, so keep it next to its "
            f"experiment folders.</p><p>Definitions, statistics and verdict rules: "
            f"{_methods_link(r)}.</p></footer></div></body></html>\n")


def build_report(folder) -> Path:
    """Write FOLDER/report.html from the results in FOLDER; return its path.

    Raises UserError (one line) when FOLDER is missing or holds no results."""
    from dlscope.execution.store import atomic_write_text

    results = collect(folder)
    methods = Path(__file__).resolve().parents[3] / "docs" / METHODS
    if methods.is_file():          # a source checkout: the page links a copy beside it
        atomic_write_text(Path(folder) / METHODS, methods.read_text(encoding="utf-8"))
    path = Path(folder) / "report.html"
    atomic_write_text(path, render(results))
    os.chmod(path, 0o644)          # a page to share: the temporary file it came from was 0600
    return path
