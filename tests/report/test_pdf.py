"""report.pdf (`dlscope report DIR --pdf`): the page printed by headless Chromium.

The report is test_report.make_results' folder (as in test_browser.py). Real Chromium: a
complete A4 PDF whose pages begin where the print styles say (each part, each experiment
with results), collapsed parts printed open, page 1 and a figure page not blank (poppler's
pdftotext / pdftoppm read it back, an implementation independent of Chromium). Fake
Chromiums (shell scripts on PATH): one that leaves half a PDF and one that hangs, so that
nothing half-written and the timeout are tested without a browser; and no Chromium at all."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from helpers import cli

from dlscope.report import build_report
from dlscope.report.pdf import PdfFailed, write_pdf

CHROMIUM = shutil.which("chromium")
A4_PT = (595.28, 841.89)       # 210 mm x 297 mm in points


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    sys.path.insert(0, str(Path(__file__).parent))
    from test_report import make_results

    folder = make_results(tmp_path_factory.mktemp("results"))
    return folder, build_report(folder)


@pytest.fixture(scope="module")
def pdf(report):
    if CHROMIUM is None:
        pytest.skip("no `chromium` binary on PATH (Debian: apt-get install -y chromium)")
    return write_pdf(report[1])


def poppler(tool: str) -> str:
    found = shutil.which(tool)
    if found is None:
        pytest.skip(f"no `{tool}` (Debian: apt-get install -y poppler-utils)")
    return found


def page_texts(pdf: Path) -> list[str]:
    out = subprocess.run([poppler("pdftotext"), "-layout", str(pdf), "-"], capture_output=True,
                         text=True, check=True, timeout=60).stdout
    return out.split("\f")[:-1]           # a form feed ends each page


def page_pixels(pdf: Path, page: int, tmp_path: Path) -> np.ndarray:
    from PIL import Image

    stem = tmp_path / f"page{page}"
    subprocess.run([poppler("pdftoppm"), "-r", "40", "-f", str(page), "-l", str(page),
                    "-singlefile", "-png", str(pdf), str(stem)], check=True, timeout=60)
    return np.asarray(Image.open(f"{stem}.png").convert("RGB")).astype(int)


# ------------------------------------------------------------------ real Chromium

@pytest.mark.browser
def test_pdf_is_complete_a4_with_every_page_counted(pdf, report):
    data = pdf.read_bytes()
    assert pdf == report[0] / "report.pdf" and data.startswith(b"%PDF-")
    assert b"%%EOF" in data[-1024:]
    pages = len(re.findall(rb"/Type\s*/Page\b", data))           # /Page, not /Pages
    counts = [int(n) for n in re.findall(rb"/Type\s*/Pages\b[^>]*?/Count\s+(\d+)", data)]
    assert counts and pages == max(counts)
    # a page for the header, then one per part and per experiment with results under it:
    # 1-1 function-fit + mnist-models, 1-2 weight-pca, 1-3 param-count -> at least 6
    assert pages >= 6
    for box in re.findall(rb"/MediaBox\s*\[\s*0 0 ([\d.]+) ([\d.]+)\s*\]", data):
        assert np.allclose([float(b) for b in box], A4_PT, atol=1.0), box
    assert not list(report[0].glob(".report.pdf.tmp-*"))


@pytest.mark.browser
def test_pages_begin_where_the_print_styles_say(pdf):
    firsts = [" ".join(t.split())[:60] for t in page_texts(pdf)]
    starts = lambda head: any(f.startswith(head) for f in firsts)  # noqa: E731
    assert firsts[0].startswith("dlscope report"), firsts
    for head in ("1-1 Deep vs shallow 1-1 Deep vs shallow: simulate a function",  # part + 1st
                 "1-1 Deep vs shallow: CNNs of equal size on MNIST",              # failed
                 "1-2 Optimization", "1-3 Generalization",
                 "1-3 Parameters vs generalization"):
        assert starts(head), (head, firsts)
    # no part heading is left alone at the foot of a page
    assert not any(t.rstrip().endswith(("Deep vs shallow", "Optimization", "Generalization"))
                   for t in page_texts(pdf))
    # the failed experiment's traceback is inside a collapsed <details>: printed open
    assert "Traceback (most recent call last):" in "".join(page_texts(pdf))


@pytest.mark.browser
def test_first_page_and_a_figure_page_are_not_blank(pdf, tmp_path):
    first = page_pixels(pdf, 1, tmp_path)
    assert first.std() > 10 and (first.min(axis=2) < 240).mean() > 0.05   # text on white
    texts = page_texts(pdf)
    k = next(i for i, t in enumerate(texts) if "function-fit/figures/sinc_loss.png" in t)
    fig = page_pixels(pdf, k + 1, tmp_path)
    colourful = (fig.max(axis=2) - fig.min(axis=2)) > 80     # the plotted curves (0 if blank)
    assert colourful.mean() > 0.001, colourful.mean()          # measured: 0.0025 at 40 dpi


@pytest.mark.browser
def test_cli_report_pdf(report, tmp_path, monkeypatch, capsys):
    if CHROMIUM is None:
        pytest.skip("no `chromium` binary on PATH")
    folder = tmp_path / "results"
    shutil.copytree(report[0], folder)
    (folder / "report.pdf").unlink(missing_ok=True)
    code, out, err = cli(monkeypatch, capsys, "report", str(folder), "--pdf")
    assert code == 0, err
    assert out.split() == [str(folder / "report.html"), str(folder / "report.pdf")]
    assert (folder / "report.pdf").read_bytes().startswith(b"%PDF-")


# ------------------------------------------------------------------ no Chromium, fake ones

def test_without_chromium_one_line_exit_2_and_the_html_is_still_written(report, tmp_path,
                                                                         monkeypatch, capsys):
    folder = tmp_path / "results"
    shutil.copytree(report[0], folder)
    for f in ("report.html", "report.pdf"):
        (folder / f).unlink(missing_ok=True)
    (tmp_path / "empty").mkdir()
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    code, out, err = cli(monkeypatch, capsys, "report", str(folder), "--pdf")
    assert code == 2 and out.strip() == str(folder / "report.html")
    assert err == ("error: --pdf needs headless Chromium (Debian package chromium) on PATH; "
                   f"the HTML report is at {(folder / 'report.html').resolve()}\n")
    assert (folder / "report.html").stat().st_size > 10_000
    assert sorted(p.name for p in folder.glob("report.*")) == ["report.html"]


def test_run_pdf_is_checked_before_anything_runs(tmp_path, monkeypatch, capsys):
    (tmp_path / "empty").mkdir()
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    out = tmp_path / "out"
    code, _, err = cli(monkeypatch, capsys, "run", "all", "--pdf", "--out", str(out))
    assert code == 2 and err.startswith("error: --pdf needs headless Chromium")
    code, _, err = cli(monkeypatch, capsys, "run", "grad-norm", "--pdf", "--out", str(out))
    assert code == 2 and "--pdf goes with `run all`" in err and err.count("\n") == 1
    assert not out.exists()


FAKE = """#!/bin/sh
for a in "$@"; do case "$a" in --print-to-pdf=*) f="${a#--print-to-pdf=}";; esac; done
printf '%%PDF-1.4\\nhalf a page' > "$f"
MODE
"""


def fake_chromium(tmp_path: Path, monkeypatch, mode: str) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    script = bin_dir / "chromium"
    script.write_text(FAKE.replace("MODE", mode))
    script.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:/usr/bin:/bin")


def page(tmp_path: Path) -> Path:
    html = tmp_path / "report.html"
    html.write_text("<!DOCTYPE html><title>t</title><p>page</p>")
    (tmp_path / "report.pdf").write_bytes(b"the previous PDF")
    return html


def test_a_half_written_pdf_never_replaces_the_old_one(tmp_path, monkeypatch):
    fake_chromium(tmp_path, monkeypatch, "exit 0")
    with pytest.raises(PdfFailed, match="left no complete PDF"):
        write_pdf(page(tmp_path))
    assert (tmp_path / "report.pdf").read_bytes() == b"the previous PDF"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bin", "report.html", "report.pdf"]


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def test_a_hung_chromium_is_stopped_with_its_children(tmp_path, monkeypatch):
    # the fake starts a child of its own, as Chromium does, and then hangs
    fake_chromium(tmp_path, monkeypatch,
                  f'sleep 60 & echo $! > {tmp_path}/child.pid\nwait')
    with pytest.raises(PdfFailed, match=r"did not print .* within 1 s"):
        write_pdf(page(tmp_path), timeout=1)
    child = int((tmp_path / "child.pid").read_text())
    deadline = time.monotonic() + 5                 # SIGKILL lands at once; allow a slow box
    while _alive(child) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _alive(child)
    assert (tmp_path / "report.pdf").read_bytes() == b"the previous PDF"
    assert not list(tmp_path.glob(".report.pdf.tmp-*"))
