"""report.html from a results folder: one real experiment (function-fit, tiny) plus fabricated
failures (a failed experiment in suite.json, a failed and a flagged run, an interrupted
experiment, a long table) and hostile text, checked by parsing the page."""

from __future__ import annotations

import base64
import html
import json
import re
import sys
from html.parser import HTMLParser
from pathlib import Path

import pytest

import dlscope
from dlscope import experiments
from dlscope.errors import UserError
from dlscope.report import build_report
from dlscope.report.fmt import fmt_number

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
HOSTILE = "<script>alert('x')</script> & \"quotes\""
VERDICT = {"claim": "More parameters do not hurt", "source": "Neyshabur et al. 2015",
           "published": "qualitative", "statistic": "Spearman ρ = +0.88 (p = 0.0001, n = 40)",
           "rule": "trend rule", "outcome": "reproduced"}
VOID = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source",
        "track", "wbr"}


def make_results(out: Path) -> Path:
    """A results folder holding every case the page must show."""
    dlscope.run("function-fit", profile="quick", out=out, executor="local", threads=1,
                epochs=200, functions=["sinc"], n_train=64)                    # ~2 s
    fit = out / "function-fit"
    summary = json.loads((fit / "summary.json").read_text())
    summary["flagged"] = [{"run": "sinc/deep", "status": "diverged"}]
    summary["failed"] = [{"run": "sinc/extra", "hash": "0" * 16, "error": f"ValueError: {HOSTILE}"}]
    summary["observations"].append(f"A hostile observation: {HOSTILE}")
    (fit / "summary.json").write_text(json.dumps(summary))
    # an experiment with a long table (fabricated; registered name, no run needed)
    pc = out / "param-count"
    pc.mkdir()
    (pc / "config.toml").write_text('widths = [4, 8]\nseed = 0\n[train]\nlr = 0.001\n')
    rows = ["model,params,test_acc"] + [f"m{i},{1000 * i},{0.5 + i / 100:.6f}" for i in range(40)]
    (pc / "results.csv").write_text("\n".join(rows) + "\n")
    (pc / "summary.json").write_text(json.dumps({
        "experiment": "param-count", "title": "Parameters vs generalization", "section": "1-3",
        "question": "Does test accuracy follow parameter count?", "profile": "quick",
        "wall_s": 1.5, "runs": 40, "failed": [], "flagged": [],
        "observations": ["Forty models."], "headline": {"best_test_acc": 0.89},
        "statistics": {"interval": "t-interval of the mean", "settings": {"m1": {
            "test_acc": {"n": 3, "median": 0.5123, "mean": 0.51, "lo": 0.4987, "hi": 0.5213,
                         "method": "t-interval of the mean"},
            "failures": {"runs": 4, "diverged": 1, "diverged_rate": 0.25}}},
            "trend": {"n": 40, "rho": 0.8765, "p_value": 0.0001},
            "largest_minus_second": {"n_a": 3, "n_b": 3, "diff": 0.0012, "lo": -0.0034,
                                     "hi": 0.0058, "p_value": 0.6, "clear": False}},
        "verdicts": [VERDICT, {**VERDICT, "claim": f"Under-trained claim {HOSTILE}",
                               "outcome": "pipeline check"}, "not a verdict"]}))
    # an interrupted experiment: config written, no summary
    (out / "weight-pca").mkdir()
    (out / "weight-pca" / "config.toml").write_text("seed = 0\n")
    (out / "suite.json").write_text(json.dumps({"profile": "quick", "wall_s": 12.5, "experiments": {
        "function-fit": {"status": "ok", "wall_s": 5.0}, "param-count": {"status": "ok"},
        "mnist-models": {"status": "failed", "error": f"RuntimeError: {HOSTILE}",
                         "traceback": "Traceback (most recent call last):\n  boom\n",
                         "wall_s": 0.1}}}))
    return out


class Page(HTMLParser):
    """Checks nesting as it parses; keeps what the tests look at."""

    def __init__(self, text: str):
        super().__init__(convert_charrefs=True)
        self.stack: list[str] = []
        self.ids: list[str] = []
        self.hrefs: list[str] = []
        self.imgs: list[dict] = []
        self.sections: list[str] = []
        self.boxes: list[tuple[str, str]] = []     # (class, text)
        self._box_depth: list[tuple[int, str, list[str]]] = []
        self.text: list[str] = []
        self.tags: set[str] = set()
        self.feed(text)
        self.close()
        assert not self.stack, f"unclosed tags: {self.stack}"

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        self.tags.add(tag)
        if "id" in a:
            self.ids.append(a["id"])
        if tag == "a" and "href" in a:
            self.hrefs.append(a["href"])
        if tag == "img":
            self.imgs.append(a)
        if tag == "section" and "experiment" in a.get("class", ""):
            self.sections.append(a["id"])
        if tag in VOID:
            return
        if tag == "div" and "box" in a.get("class", "").split():
            self._box_depth.append((len(self.stack), a["class"], []))
        self.stack.append(tag)

    def handle_endtag(self, tag):
        if tag in VOID:
            return
        assert self.stack and self.stack[-1] == tag, f"</{tag}> closes {self.stack[-3:]}"
        self.stack.pop()
        if self._box_depth and self._box_depth[-1][0] == len(self.stack):
            _, cls, text = self._box_depth.pop()
            self.boxes.append((cls, "".join(text)))

    def handle_data(self, data):
        self.text.append(data)
        for _, _, t in self._box_depth:
            t.append(data)


@pytest.fixture(scope="module")
def results(tmp_path_factory) -> Path:
    return make_results(tmp_path_factory.mktemp("results"))


@pytest.fixture(scope="module")
def page(results) -> tuple[str, Page]:
    path = build_report(results)
    assert path == results / "report.html"
    text = path.read_text()
    return text, Page(text)


def test_every_experiment_has_a_section_in_the_assignments_order(results, page):
    text, p = page
    assert p.sections == [f"exp-{n}" for n in experiments.REGISTRY]   # folder or not
    assert len(set(p.ids)) == len(p.ids), "duplicate ids"
    order = [text.index(f'id="part-{s}"') for s in ("1-1", "1-2", "1-3")]
    assert order == sorted(order)
    body = "".join(p.text)
    for d in results.iterdir():
        if (d / "summary.json").exists():
            title = json.loads((d / "summary.json").read_text())["title"]
            section = text[text.index(f'id="exp-{d.name}"'):]
            assert html.escape(title) in section[:section.index("</h3>")]
            assert f'href="#exp-{d.name}"' in text                      # in the contents
    assert "Deep vs shallow: simulate a function" in body
    assert "Parameters vs generalization" in body
    for name in ("grad-norm", "sensitivity"):                           # no folder
        section = text[text.index(f'id="exp-{name}"'):]
        assert "not run" in section[:section.index("</section>")]


def test_figures_are_embedded_pngs(results, page):
    _, p = page
    files = sorted((results / "function-fit" / "figures").glob("*.png"))
    assert len(files) == 3 and len(p.imgs) == len(files)
    for img, f in zip(p.imgs, files):
        head, data = img["src"].split(",", 1)
        assert head == "data:image/png;base64"
        png = base64.b64decode(data, validate=True)
        assert png[:8] == PNG_MAGIC and len(png) > 5_000 and png == f.read_bytes()
        assert int(img["width"]) > 100 and img["alt"]


def test_numbers_observations_and_setup(results, page):
    _, p = page
    body = "".join(p.text)
    summary = json.loads((results / "function-fit" / "summary.json").read_text())
    for obs in summary["observations"]:
        assert obs in body
    for value in summary["headline"].values():
        assert fmt_number(value) in body
    assert "11-17-17" in body and "547" in body                       # model table
    assert "param_budget" in body and "converge_window" in body        # resolved config
    assert "train.lr" in body                                          # nested config key
    assert "25 more rows in param-count/results.csv" in body           # 40 rows, 15 shown
    assert "28 more models in" in body                                 # model table: 12
    env = json.loads((results / "function-fit" / "env.json").read_text())
    for key in ("python", "torch", "numpy", "platform"):
        assert str(env[key]) in body
    assert "quick" in body and "12.5 s (run all)" in body              # profile, suite wall time


def test_verdicts_table_at_the_top(results, page):
    text, _ = page
    top = text[:text.index('<nav class="toc"')]
    table = top[top.index('<section class="verdicts"'):]
    rows = re.findall(r"<tr><td>.*?</tr>", table)
    # function-fit (quick: a pipeline check) and param-count's two well-formed verdicts
    fit = json.loads((results / "function-fit" / "summary.json").read_text())["verdicts"]
    assert len(rows) == len(fit) + 2
    for col in ("claim", "source", "published number", "statistic here", "outcome"):
        assert f">{col}</th>" in table
    assert sum("pipeline check, not evidence" in r for r in rows) == len(fit) + 1
    pc = [r for r in rows if 'href="#exp-param-count"' in r]
    assert "<strong>reproduced</strong>" in pc[0] and "Neyshabur et al. 2015" in pc[0]
    assert "Spearman ρ = +0.88" in pc[0] and 'title="trend rule"' in pc[0]
    assert html.escape(f"Under-trained claim {HOSTILE}") in pc[1]


def test_statistics_are_shown(page):
    text, _ = page
    sec = text[text.index('id="exp-param-count"'):]
    sec = sec[:sec.index("</section>")]
    stats = sec[sec.index("Statistics over seeds"):]
    assert "0.5123" in stats and "[0.4987, 0.5213]" in stats and "t-interval of the mean" in stats
    assert "diverged: 1 (25%)" in stats
    assert "0.8765" in stats and "no clear difference" in stats


def test_methods_are_linked_and_copied(results, page):
    _, p = page
    assert p.hrefs.count("METHODS.md") == 2                 # header and footer
    copy = (results / "METHODS.md").read_text()
    assert copy == (Path(__file__).parents[2] / "docs" / "METHODS.md").read_text()
    for name in experiments.REGISTRY:                         # a section per experiment
        assert f"### {name}" in copy


def test_failures_and_flags_are_in_visible_boxes(page):
    text, p = page
    boxes = " || ".join(f"{c}: {t}" for c, t in p.boxes)
    error_boxes = [t for c, t in p.boxes if "error" in c.split()]
    assert any("RuntimeError" in t and HOSTILE in t for t in error_boxes), boxes   # mnist-models
    assert any("sinc/extra" in t and "ValueError" in t for t in error_boxes), boxes  # failed run
    assert any("Incomplete" in t for t in error_boxes), boxes                        # weight-pca
    assert any("sinc/deep" in t and "diverged" in t for c, t in p.boxes if "warn" in c), boxes
    mnist = text[text.index('id="exp-mnist-models"'):]
    assert "failed" in mnist[:mnist.index("</h3>")]


def test_self_contained_and_escaped(results, page):
    text, p = page
    assert not re.search(r"https?:", text, re.IGNORECASE)
    assert "<script" not in text.lower() and "<link" not in text.lower()
    assert p.tags.isdisjoint({"script", "link", "iframe", "object", "embed"})
    assert all(img["src"].startswith("data:image/png;base64,") for img in p.imgs)
    assert re.findall(r'\ssrc="([^"]*)"', text) == [i["src"] for i in p.imgs]
    assert "&lt;script&gt;alert(" in text
    # relative links: every file link resolves, every CSV of an experiment is linked
    files = [h for h in p.hrefs if not h.startswith("#")]
    assert files and all(not h.startswith("/") and ".." not in h for h in files)
    for h in files:
        assert (results / h).is_file(), h
    for csv in results.glob("*/*.csv"):
        assert f"{csv.parent.name}/{csv.name}" in files
    for h in (h for h in p.hrefs if h.startswith("#")):
        assert h[1:] in p.ids, h
    assert not list(results.glob(".report.html.*"))                    # atomic write


def test_cli_rebuilds_and_rejects_empty(results, tmp_path, monkeypatch, capsys):
    from dlscope import cli

    (results / "report.html").unlink()
    monkeypatch.setattr(sys, "argv", ["dlscope", "report", str(results)])
    cli.main()
    assert capsys.readouterr().out.strip() == str(results / "report.html")
    assert (results / "report.html").stat().st_size > 20_000
    for bad in (tmp_path, tmp_path / "missing", results / "function-fit"):
        monkeypatch.setattr(sys, "argv", ["dlscope", "report", str(bad)])
        with pytest.raises(SystemExit) as exc:
            cli.main()
        err = capsys.readouterr().err
        assert exc.value.code == 2 and err.startswith("error: ") and err.count("\n") == 1, err
    with pytest.raises(UserError):
        build_report(tmp_path)


@pytest.mark.parametrize("value, text", [(0.038620371371507645, "0.03862"), (550, "550"),
                                         (206922, "206,922"), (1e-6, "1e-06"), (12.0, "12"),
                                         (float("nan"), "—"), (True, "yes"), (98.765, "98.77")])
def test_number_format(value, text):
    assert fmt_number(value) == text


def test_broken_files_are_shown_not_fatal(tmp_path):
    fit = tmp_path / "function-fit"
    (fit / "figures").mkdir(parents=True)
    (fit / "summary.json").write_text("{not json")
    (fit / "config.toml").write_text("x = [")
    (fit / "figures" / "a.png").write_bytes(b"not a png")
    (fit / "results.csv").write_text("model,params\nm1\nm2,20,extra\n")
    new = tmp_path / "new-exp"
    new.mkdir()
    (new / "summary.json").write_text(json.dumps({
        "title": "<b>New</b>", "section": "2 1", "observations": "not a list", "headline": [1],
        "flagged": "nope", "wall_s": "soon"}))
    text = build_report(tmp_path).read_text()
    p = Page(text)
    body = "".join(p.text)
    assert "function-fit/summary.json: unreadable" in body
    assert "config.toml unreadable" in body and "not a PNG file" in body
    assert p.sections[-1] == "exp-new-exp" and 'id="part-2-1"' in text
    assert "&lt;b&gt;New&lt;/b&gt;" in text and "<b>New" not in text
    assert not p.imgs
