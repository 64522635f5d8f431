"""report.pdf beside report.html: the page printed by headless Chromium (A4, the page's own
print styles in style.css), with no header or footer lines.

Chromium prints to a temporary name in the same folder, which is renamed into place only
once it is a complete PDF: report.pdf is never half-written. A Chromium that is missing says
so in one line (UserError); one that hangs is stopped after `timeout` seconds, with every
process it started.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
import uuid
from pathlib import Path

from dlscope.errors import UserError

# Chromium's names on Debian (the package `chromium`), other distributions and Google's build
BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
         "--no-default-browser-check", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--disable-extensions",
         "--disable-dev-shm-usage", "--mute-audio", "--no-pdf-header-footer")
TIMEOUT_S = 180.0


class PdfFailed(RuntimeError):
    """Chromium ran but left no complete PDF (a crash, a timeout): a fault, not bad input."""


def find_chromium() -> str | None:
    """The path of a Chromium on PATH, or None.

    Returns:
        The first of `BROWSERS` found by `shutil.which`, or None.
    """
    for name in BROWSERS:
        found = shutil.which(name)
        if found:
            return found
    return None


def require_chromium(html_path=None) -> str:
    """The Chromium `write_pdf` would use; UserError (one line) when there is none.

    Args:
        html_path: The HTML report, named in the message when given.

    Returns:
        The path of the browser.
    """
    found = find_chromium()
    if found is None:
        where = f"; the HTML report is at {html_path}" if html_path else ""
        raise UserError("--pdf needs headless Chromium (Debian package chromium) on PATH"
                        + where)
    return found


def _is_pdf(path: Path) -> bool:
    try:
        size = path.stat().st_size
        with path.open("rb") as f:
            head = f.read(5)
            f.seek(max(0, size - 1024))
            tail = f.read()
    except OSError:
        return False
    return head == b"%PDF-" and b"%%EOF" in tail


def _stop(proc: subprocess.Popen) -> None:
    """Kill Chromium and every process it started (its own session)."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    proc.wait()


def write_pdf(html_path, pdf_path=None, *, timeout: float = TIMEOUT_S) -> Path:
    """Print an HTML report to PDF with headless Chromium.

    Args:
        html_path: The page (report.html); its links and images resolve beside it.
        pdf_path: Where the PDF goes; default: report.pdf beside the page.
        timeout: Seconds Chromium may take before it is stopped.

    Returns:
        The PDF's path.

    Raises:
        UserError: No Chromium on PATH, or no such page (one line; nothing written).
        PdfFailed: Chromium failed or timed out (nothing written).
    """
    html_path = Path(html_path).resolve()
    if not html_path.is_file():
        raise UserError(f"{html_path}: no such page to print")
    browser = require_chromium(html_path)
    pdf_path = Path(pdf_path) if pdf_path is not None else html_path.with_suffix(".pdf")
    tmp = pdf_path.parent / f".{pdf_path.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    try:
        with tempfile.TemporaryDirectory(prefix="dlscope-chromium-") as profile:
            cmd = [browser, *FLAGS, f"--user-data-dir={profile}",
                   f"--print-to-pdf={tmp.resolve()}", html_path.as_uri()]
            with tempfile.TemporaryFile() as log:
                proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                        start_new_session=True)
                try:
                    code = proc.wait(timeout=timeout)
                except subprocess.TimeoutExpired:
                    _stop(proc)
                    raise PdfFailed(f"{browser} did not print {html_path} within {timeout:g} s"
                                    ) from None
                _stop(proc)  # helpers it may have left behind
                log.seek(0)
                said = log.read().decode(errors="replace").strip().splitlines()
        if code != 0 or not _is_pdf(tmp):
            last = " ".join(said[-1].split())[:300] if said else "no output"
            raise PdfFailed(f"{browser} left no complete PDF of {html_path} (exit code {code}; "
                            f"{last})")
        os.chmod(tmp, 0o644)
        os.replace(tmp, pdf_path)
    finally:
        tmp.unlink(missing_ok=True)
    return pdf_path
