"""The report in a real browser: headless Chromium, driven over the DevTools protocol.

How: Chromium is started with `--remote-debugging-pipe`, which speaks the DevTools protocol
as NUL-separated JSON messages on file descriptors 3 (commands in) and 4 (replies and events
out). A few lines of stdlib (os.pipe, select, json) drive it: no websocket client, no
playwright, no browser download. Console errors are read from the protocol's own events
(Runtime.exceptionThrown, Runtime.consoleAPICalled, Log.entryAdded: failed loads and CSP
violations land there), not from a script injected into the page, so the page is tested
exactly as written. A first page with a deliberate error proves the harness sees errors.

Needs Debian's `chromium` package (`apt-get install -y chromium`); skipped without it.
`python tests/test_browser.py DIR/report.html docs/` saves the README screenshots.
"""

from __future__ import annotations

import base64
import fcntl
import json
import os
import select
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

CHROMIUM = shutil.which("chromium")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--no-default-browser-check", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--disable-extensions",
         "--disable-dev-shm-usage", "--mute-audio", "--hide-scrollbars",
         "--remote-debugging-pipe"]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"

# Waits for every <img> to decode, then reports what a reader would see.
PROBE = """(async () => {
  const imgs = Array.from(document.images);
  const decoded = await Promise.all(imgs.map(i => i.decode().then(() => true, () => false)));
  const box = el => { const r = el.getBoundingClientRect(); return [r.left, r.top, r.width]; };
  return {
    title: document.title,
    imgs: imgs.map((i, k) => ({alt: i.alt, decoded: decoded[k], w: i.naturalWidth,
                               h: i.naturalHeight, box: box(i),
                               section: (i.closest('section.experiment') || {}).id || null})),
    sections: Array.from(document.querySelectorAll('section.experiment')).map(s => ({
      id: s.id, title: s.querySelector('h3').textContent, height: box(s)[2] > 0})),
    scrollWidth: document.documentElement.scrollWidth,
    viewport: window.innerWidth,
  };
})()"""


def _high_fd(fd: int) -> int:
    new = fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 10)
    os.close(fd)
    return new


class Chromium:
    """One headless Chromium with one page, spoken to over the DevTools pipe."""

    def __init__(self, binary: str, profile: Path, timeout: float = 60):
        self.timeout = timeout
        # our commands -> the browser's fd 3; its fd 4 -> our replies and events. The ends are
        # moved above 9 so that the redirections below cannot clobber one another.
        to_r, self._out = map(_high_fd, os.pipe())
        self._in, from_w = map(_high_fd, os.pipe())
        # bash (not dash) because the pipe ends may be numbered above 9
        script = f'exec "$0" "$@" 3<&{to_r} 4>&{from_w} {to_r}<&- {from_w}>&-'
        self.log_path = profile / "chromium.log"
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(["bash", "-c", script, binary, *FLAGS,
                                          f"--user-data-dir={profile}"],
                                         pass_fds=(to_r, from_w), stdin=subprocess.DEVNULL,
                                         stdout=log, stderr=log)
        os.close(to_r)
        os.close(from_w)
        self._buf, self._id, self.events, self._closed = b"", 0, [], False
        try:
            target = self.call("Target.createTarget", {"url": "about:blank"})["targetId"]
            self.session = self.call("Target.attachToTarget",
                                     {"targetId": target, "flatten": True})["sessionId"]
            for domain in ("Page", "Runtime", "Log"):
                self.call(f"{domain}.enable", session=self.session)
        except BaseException:
            self.close()
            raise

    def _log_tail(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-2000:]
        except OSError:
            return ""

    def _read(self, deadline: float) -> dict:
        while b"\0" not in self._buf:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self._in], [], [], left)[0]:
                raise TimeoutError(f"chromium did not answer; its log:\n{self._log_tail()}")
            chunk = os.read(self._in, 1 << 20)
            if not chunk:
                raise RuntimeError(f"chromium closed the DevTools pipe; its log:\n"
                                   f"{self._log_tail()}")
            self._buf += chunk
        msg, self._buf = self._buf.split(b"\0", 1)
        return json.loads(msg)

    def call(self, method: str, params: dict | None = None, session: str | None = None):
        self._id += 1
        msg = {"id": self._id, "method": method, "params": params or {}}
        if session:
            msg["sessionId"] = session
        os.write(self._out, json.dumps(msg).encode() + b"\0")
        deadline = time.monotonic() + self.timeout
        while True:
            m = self._read(deadline)
            if m.get("id") == self._id:
                if "error" in m:
                    raise RuntimeError(f"{method}: {m['error']}")
                return m.get("result", {})
            if "method" in m:
                self.events.append(m)

    def page(self, method: str, params: dict | None = None):
        return self.call(method, params, session=self.session)

    def open(self, url: str, width: int = 1280, height: int = 900) -> None:
        """Load url at this viewport; return after its load event (all images included)."""
        self.page("Emulation.setDeviceMetricsOverride",
                  {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": False})
        self.events.clear()
        self.page("Page.navigate", {"url": url})
        deadline = time.monotonic() + self.timeout
        while not any(e["method"] == "Page.loadEventFired" for e in self.events):
            m = self._read(deadline)
            if "method" in m:
                self.events.append(m)

    def evaluate(self, expression: str):
        r = self.page("Runtime.evaluate", {"expression": expression, "returnByValue": True,
                                           "awaitPromise": True})
        if "exceptionDetails" in r:
            raise RuntimeError(f"probe failed: {r['exceptionDetails']}")
        return r["result"]["value"]

    def errors(self) -> list[str]:
        """Everything the DevTools console would show in red since the last open()."""
        out = []
        for e in self.events:
            p = e.get("params", {})
            if e["method"] == "Runtime.exceptionThrown":
                d = p["exceptionDetails"]
                out.append(d.get("exception", {}).get("description") or d.get("text", "?"))
            elif e["method"] == "Runtime.consoleAPICalled" and p.get("type") in ("error",
                                                                                 "assert"):
                out.append(" ".join(str(a.get("value", a.get("description")))
                                    for a in p.get("args", [])))
            elif e["method"] == "Log.entryAdded" and p["entry"]["level"] == "error":
                out.append(f"{p['entry']['source']}: {p['entry']['text']} "
                           f"{p['entry'].get('url', '')}".strip())
        return out

    def screenshot(self, path: Path, clip: dict | None = None) -> bytes:
        params = {"format": "png", "captureBeyondViewport": clip is not None}
        if clip:
            params["clip"] = {**clip, "scale": 1}
        data = base64.b64decode(self.page("Page.captureScreenshot", params)["data"])
        Path(path).write_bytes(data)
        return data

    def close(self) -> None:
        if self._closed:
            return
        self._closed, self.timeout = True, min(self.timeout, 10)
        try:
            self.call("Browser.close")
        except (OSError, RuntimeError, TimeoutError):
            pass
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        for fd in (self._out, self._in):
            os.close(fd)


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    if CHROMIUM is None:
        pytest.skip("no `chromium` binary on PATH (Debian: apt-get install -y chromium)")
    b = Chromium(CHROMIUM, tmp_path_factory.mktemp("chromium-profile"))
    yield b
    b.close()


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    sys.path.insert(0, str(Path(__file__).parent))
    from test_report import make_results

    from dlscope.report import build_report

    folder = make_results(tmp_path_factory.mktemp("results"))
    return folder, build_report(folder)


def _png_size(data: bytes) -> tuple[int, int]:
    assert data[:8] == PNG_MAGIC, "not a PNG"
    return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")


@pytest.mark.browser
def test_harness_sees_console_errors(browser, tmp_path):
    bad = tmp_path / "bad.html"
    bad.write_text('<!DOCTYPE html><title>bad</title><img src="missing.png">'
                   "<script>console.error('boom'); undefined_function();</script>")
    browser.open(bad.as_uri())
    errors = " | ".join(browser.errors())
    assert "boom" in errors and "undefined_function" in errors and "missing.png" in errors, errors


@pytest.mark.browser
def test_report_in_chromium(browser, report, tmp_path):
    from dlscope import experiments

    _, page = report
    browser.open(page.resolve().as_uri(), width=1280, height=900)
    assert browser.errors() == []
    info = browser.evaluate(PROBE)
    assert info["title"].startswith("dlscope report")
    # every registered experiment is a section; those with a folder carry their title
    ids = {s["id"]: s for s in info["sections"]}
    for name in experiments.REGISTRY:
        assert f"exp-{name}" in ids, name
    assert "simulate a function" in ids["exp-function-fit"]["title"]
    # every figure decoded, at its real size
    assert len(info["imgs"]) >= 2
    for img in info["imgs"]:
        assert img["decoded"] and img["w"] > 100 and img["h"] > 100, img
    # laptop screen: no sideways scrolling, and two figures per row
    assert info["scrollWidth"] <= info["viewport"]
    fit = [i["box"] for i in info["imgs"] if i["section"] == "exp-function-fit"]
    assert abs(fit[0][1] - fit[1][1]) < 1 and fit[1][0] > fit[0][0] + fit[0][2] - 1, fit
    shot = browser.screenshot(tmp_path / "top.png")
    assert _png_size(shot) == (1280, 900) and len(shot) > 20_000

    # a phone-sized window: still no sideways scrolling, figures stacked
    browser.open(page.resolve().as_uri(), width=420, height=900)
    assert browser.errors() == []
    info = browser.evaluate(PROBE)
    assert info["scrollWidth"] <= info["viewport"] + 1
    fit = [i["box"] for i in info["imgs"] if i["section"] == "exp-function-fit"]
    assert fit[1][1] > fit[0][1] and fit[0][2] <= 420


def save_readme_screenshots(page: Path, out: Path) -> None:
    """docs/report-top.png (the first screen) and docs/report-section.png (first figures)."""
    profile = Path(tempfile.mkdtemp(prefix="dlscope-chromium-"))
    b = Chromium(CHROMIUM, profile)
    try:
        b.open(page.resolve().as_uri(), width=1280, height=900)
        assert b.errors() == [], b.errors()
        b.screenshot(out / "report-top.png")
        rect = b.evaluate("""(() => { const s = document.querySelector(
            'section.experiment .figs').closest('section.experiment');
            const r = s.getBoundingClientRect();
            return {x: r.left + scrollX - 8, y: r.top + scrollY - 8, width: r.width + 16,
                    height: Math.min(r.height + 16, 1300)}; })()""")
        b.screenshot(out / "report-section.png", clip=rect)
    finally:
        b.close()
        shutil.rmtree(profile, ignore_errors=True)
    for name in ("report-top.png", "report-section.png"):
        print(out / name, (out / name).stat().st_size // 1024, "KB")


if __name__ == "__main__":
    save_readme_screenshots(Path(sys.argv[1]), Path(sys.argv[2]))
