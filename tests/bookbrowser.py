"""Look at a built page in a real browser (headless Chromium) with the network off.

:mod:`bookcheck` reads the HTML; some things only a browser knows: whether
MathJax really typeset the equations (or left raw TeX), whether every image loaded,
whether anything sticks out sideways, and what the page fetched while it opened. This
module opens a page in Chromium with every host name unresolvable and a dead proxy (the
network is off, as on a train or behind a firewall), lets its JavaScript run, and reads
back a small report that a script injected into a copy of the page wrote into the DOM.

The checklist (:func:`checklist`) is what ``tests/test_book.py`` asserts on every chapter
and what ``benchmarks/screenshot_book.py`` prints next to each screenshot:

* **math rendered**: every ``\\(..\\)`` / ``\\[..\\]`` of the page became a MathJax
  ``mjx-container``, none is left as raw TeX;
* **figures present**: every image in the main content loaded (non-zero natural size);
* **no horizontal overflow**: neither the page nor its main content scrolls sideways,
  and no element sticks out of the content column (boxes that scroll on their own,
  such as wide tables, are fine);
* **title first**: the first element of the main content is the page's ``h1``;
* **nothing from outside**: the page fetched nothing but ``file:`` and ``data:`` URLs.

Chromium comes from the system (Debian: ``apt-get install -y chromium``); without it
the callers skip these checks.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

__all__ = ["CHROMIUM_NAMES", "OFFLINE_FLAGS", "find_chromium", "probe_page", "screenshot", "checklist"]

CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome", "chrome")
# No sandbox (containers run as root), no first-run UI, no background chatter ...
_BASE_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--hide-scrollbars",
)
# ... and no network: no host name resolves and every proxied request goes nowhere.
OFFLINE_FLAGS = _BASE_FLAGS + (
    "--host-resolver-rules=MAP * ~NOTFOUND",
    "--proxy-server=http://127.0.0.1:9",
    "--proxy-bypass-list=<-loopback>",
)

_REPORT_ID = "icm-browser-report"
# Runs after the page's load event and MathJax's first typeset; writes JSON into the DOM.
_PROBE = r"""
<script>
(function () {
  function box(el) { return el.getBoundingClientRect(); }
  function scrollsItself(el, stop) {
    for (var p = el.parentElement; p && p !== stop; p = p.parentElement) {
      var o = getComputedStyle(p).overflowX;
      if (o === "auto" || o === "scroll" || o === "hidden") return true;
    }
    return false;
  }
  function report() {
    var main = document.querySelector("article") || document.querySelector("main") || document.body;
    var r = {};
    var maths = main.querySelectorAll(".math");
    r.math = maths.length;
    r.math_rendered = main.querySelectorAll("mjx-container").length;
    r.raw_tex = [];
    maths.forEach(function (m) {
      if (!m.querySelector("mjx-container")) r.raw_tex.push(m.textContent.trim().slice(0, 80));
    });
    var imgs = main.querySelectorAll("img");
    r.images = imgs.length;
    r.broken_images = [];
    imgs.forEach(function (i) {
      if (!i.complete || i.naturalWidth === 0) r.broken_images.push(i.getAttribute("src").slice(0, 80));
    });
    var doc = document.documentElement;
    r.page_overflow = Math.max(0, doc.scrollWidth - doc.clientWidth);
    r.main_overflow = Math.max(0, main.scrollWidth - main.clientWidth);
    var right = box(main).right + 1;
    r.sticking_out = [];
    main.querySelectorAll("img, pre, table, mjx-container, div.cell_output, p").forEach(function (el) {
      var b = box(el);
      if (b.width > 0 && b.right > right && !scrollsItself(el, main)) {
        r.sticking_out.push(el.tagName.toLowerCase() + "." + (el.className || "").toString().split(" ")[0] +
                            " by " + Math.round(b.right - right) + "px");
      }
    });
    r.first_element = null;
    var walker = main.querySelectorAll("h1,h2,h3,h4,h5,h6,p,pre,table,img,ul,ol,dl,figure,blockquote,div.cell,div.math");
    if (walker.length) {
      var f = walker[0];
      r.first_element = f.matches("div.cell") ? "code cell" : f.matches("div.math") ? "display math" : f.tagName.toLowerCase();
    }
    r.fetched_outside = performance.getEntriesByType("resource").map(function (e) { return e.name; })
      .filter(function (u) { return !/^(file|data|blob|about):/.test(u); });
    var pre = document.createElement("pre");
    pre.id = "__ID__";
    pre.style.display = "none";
    pre.textContent = JSON.stringify(r);
    document.body.appendChild(pre);
  }
  window.addEventListener("load", function () {
    var mj = window.MathJax && window.MathJax.startup && window.MathJax.startup.promise;
    Promise.resolve(mj).then(function () { setTimeout(report, 300); }, function () { setTimeout(report, 300); });
  });
})();
</script>
""".replace("__ID__", _REPORT_ID)


def find_chromium(explicit: str | None = None) -> str | None:
    """The Chromium (or Chrome) binary: ``explicit``, ``$CHROMIUM``, else the first on PATH."""
    for name in [explicit] if explicit else [os.environ.get("CHROMIUM"), *CHROMIUM_NAMES]:
        if name:
            path = shutil.which(name)
            if path:
                return path
    return None


def _run(chromium: str, args: list[str], timeout: float) -> subprocess.CompletedProcess:
    with tempfile.TemporaryDirectory(prefix="chromium-profile-") as profile:
        cmd = [chromium, *OFFLINE_FLAGS, f"--user-data-dir={profile}", *args]
        return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)


def probe_page(chromium: str, page, *, width: int = 1280, height: int = 1600,
               wait_ms: int = 10000, timeout: float = 180) -> dict:
    """Open ``page`` offline and return what the injected probe measured (see module doc).

    The probe goes into a copy of the page written next to it (so its relative links
    resolve), deleted afterwards.
    """
    page = Path(page)
    html = page.read_text(encoding="utf-8")
    probed = re.sub(r"</body>", _PROBE + "</body>", html, count=1, flags=re.I)
    if probed == html:
        probed = html + _PROBE
    fd, tmp = tempfile.mkstemp(prefix=f".{page.stem}-probe-", suffix=".html", dir=page.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(probed)
        proc = _run(chromium, [f"--virtual-time-budget={wait_ms}", f"--window-size={width},{height}",
                               "--dump-dom", Path(tmp).resolve().as_uri()], timeout)
    finally:
        os.unlink(tmp)
    match = re.search(rf'<pre id="{_REPORT_ID}"[^>]*>(.*?)</pre>', proc.stdout, flags=re.S)
    if proc.returncode != 0 or match is None:
        raise RuntimeError(f"chromium did not report on {page} (exit {proc.returncode}):\n"
                           f"{proc.stderr[-2000:]}")
    import html as html_lib

    return json.loads(html_lib.unescape(match.group(1)))


def screenshot(chromium: str, page, png, *, width: int = 1280, height: int = 2400,
               wait_ms: int = 10000, timeout: float = 180) -> float:
    """A screenshot of ``page`` (offline) into ``png``; returns the seconds it took."""
    png = Path(png)
    png.parent.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    proc = _run(chromium, [f"--virtual-time-budget={wait_ms}", f"--window-size={width},{height}",
                           f"--screenshot={png}", Path(page).resolve().as_uri()], timeout)
    if proc.returncode != 0 or not png.is_file():
        raise RuntimeError(f"chromium failed on {page} (exit {proc.returncode}):\n{proc.stderr[-2000:]}")
    return time.perf_counter() - start


def checklist(report: dict) -> list[str]:
    """What is wrong on a probed page (empty when math, figures, layout and title are fine)."""
    problems = []
    if report.get("raw_tex"):
        problems.append(f"{len(report['raw_tex'])} of {report['math']} equations left as raw TeX, "
                        f"e.g. {report['raw_tex'][0]!r}")
    elif report.get("math") and not report.get("math_rendered"):
        problems.append(f"{report['math']} equations and no MathJax output")
    if report.get("broken_images"):
        problems.append(f"images that did not load: {', '.join(report['broken_images'][:3])}")
    if report.get("page_overflow") or report.get("main_overflow"):
        problems.append(f"horizontal overflow: page {report.get('page_overflow')} px, "
                        f"main content {report.get('main_overflow')} px")
    if report.get("sticking_out"):
        problems.append(f"elements sticking out of the content column: {', '.join(report['sticking_out'][:3])}")
    if report.get("first_element") != "h1":
        problems.append(f"the main content opens with {report.get('first_element')}, not the title (h1)")
    if report.get("fetched_outside"):
        problems.append(f"fetched from outside the site: {', '.join(report['fetched_outside'][:3])}")
    return problems
