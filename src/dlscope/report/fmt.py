"""HTML building blocks: escaping, number formatting, tables. Every string from a file goes
through `esc` (or `cell`), so nothing a results folder holds can inject markup."""

from __future__ import annotations

import html
import math
from urllib.parse import quote

MAX_CELL = 80          # characters shown in a table cell before it is cut with an ellipsis


def esc(value) -> str:
    return html.escape(str(value), quote=True)


def slug(text: str) -> str:
    """An id-safe version of text (letters, digits, - and _)."""
    return "".join(c if c.isascii() and (c.isalnum() or c in "-_") else "-" for c in str(text))


def href(path: str) -> str:
    """A relative link to a file in the results folder, percent-encoded and escaped."""
    return esc(quote(path, safe="/"))


def fmt_number(v: float) -> str:
    """Four significant digits; integral values as integers; thousands separated from 10^4;
    a value that could not be computed (NaN) as "—" (no value), never "NaN"."""
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, int):
        return f"{v:,}" if abs(v) >= 10_000 else str(v)
    if math.isnan(v):
        return "—"
    if math.isinf(v):
        return "∞" if v > 0 else "−∞"
    if v == int(v) and abs(v) < 1e15:
        return fmt_number(int(v))
    return f"{v:.4g}"


def parse_number(text: str):
    """A CSV cell as int or float when it is one, else None."""
    t = text.strip()
    if not t:
        return None
    try:
        return int(t)
    except ValueError:
        pass
    try:
        return float(t)
    except ValueError:
        return None


def fmt_value(v) -> str:
    """Any JSON/TOML value, compact and human-readable (not yet escaped)."""
    if isinstance(v, (bool, int, float)):
        return fmt_number(v)
    if v is None:
        return "—"
    if isinstance(v, (list, tuple)):
        shown = ", ".join(fmt_value(x) for x in v[:12])
        return f"[{shown}{', …' if len(v) > 12 else ''}]"
    if isinstance(v, dict):
        return "{" + ", ".join(f"{k}: {fmt_value(x)}" for k, x in v.items()) + "}"
    return str(v)


def fmt_seconds(s) -> str:
    if not isinstance(s, (int, float)) or isinstance(s, bool) or not math.isfinite(s):
        return "—"
    if s < 60:
        return f"{s:.1f} s"
    m, sec = divmod(round(s), 60)
    if m < 60:
        return f"{m} min {sec} s"
    h, m = divmod(m, 60)
    return f"{h} h {m} min"


def cell(text: str, numeric_ok: bool = True) -> tuple[str, bool]:
    """(escaped HTML, is_number) for a raw CSV cell; an empty cell of a numeric column (a NaN
    or None the table wrote as nothing) shows "—", as a NaN does."""
    n = parse_number(text) if numeric_ok else None
    if n is not None:
        return esc(fmt_number(n)), True
    if text == "":
        return ("—", True) if numeric_ok else ("", False)
    if len(text) > MAX_CELL:
        return f'<span title="{esc(text)}">{esc(text[:MAX_CELL - 1])}…</span>', False
    return esc(text), False


def _numeric_columns(rows: list[list], n: int) -> list[bool]:
    """A column of raw strings is numeric when every non-empty cell parses as a number (a
    column of empty cells too: values that could not be computed, shown as "—")."""
    out = []
    for j in range(n):
        cells = [r[j] for r in rows if j < len(r) and isinstance(r[j], str) and r[j].strip()]
        out.append(all(parse_number(c) is not None for c in cells))
    return out


def table(columns: list[str], rows: list[list], cls: str = "data", caption: str = "",
          footer: str = "") -> str:
    """A table of raw strings (CSV cells) or values; numeric columns right-aligned, rounded.
    caption and footer are HTML (escape them before)."""
    numeric = _numeric_columns(rows, len(columns))
    out = [f'<p class="sub">{caption}</p>' if caption else "",
           f'<div class="tablewrap"><table class="{cls}">']
    heads = (esc(c).replace("_", "_<wbr>") for c in columns)    # may wrap there in print
    out.append("<thead><tr>" + "".join(f'<th scope="col">{h}</th>' for h in heads)
               + "</tr></thead><tbody>")
    for row in rows:
        tds = []
        for j, v in enumerate(row):
            if isinstance(v, str):
                text, num = cell(v, numeric_ok=j < len(numeric) and numeric[j])
            else:
                text, num = esc(fmt_value(v)), isinstance(v, (int, float))
            tds.append(f'<td class="num">{text}</td>' if num else f"<td>{text}</td>")
        out.append("<tr>" + "".join(tds) + "</tr>")
    out.append("</tbody></table>")
    if footer:
        out.append(f'<p class="more">{footer}</p>')
    out.append("</div>")
    return "".join(out)


def kv(items: list[tuple[str, str]], cls: str = "kv") -> str:
    """A compact key/value list; values are HTML already (escape them before)."""
    body = "".join(f"<div><dt>{esc(k)}</dt><dd>{v}</dd></div>" for k, v in items)
    return f'<dl class="{cls}">{body}</dl>'


def flatten(d: dict, prefix: str = "") -> list[tuple[str, object]]:
    """Nested dicts as dotted keys, in file order."""
    out: list[tuple[str, object]] = []
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and v:
            out += flatten(v, key + ".")
        else:
            out.append((key, v))
    return out
