"""The built HTML book, read in a real browser with the network closed.

Every page of the table of contents is served from ``_build/html`` on
127.0.0.1 and opened in Debian's Chromium (headless, fresh profile), driven by
Playwright. For each page:

* it loads with no console error, uncaught exception or failed request;
* no request leaves 127.0.0.1 (any other is recorded and refused, as on a
  machine with no network);
* MathJax, served from the build, has typeset every formula: no raw ``$$``,
  ``\\(`` or ``\\frac`` is left in the text outside code, and no TeX error;
* every image has loaded (natural width > 0);
* axe-core finds no serious or critical accessibility violation (see
  ``THEME_VIOLATIONS`` for the one exception and why);
* a full-page screenshot is saved to ``_build/screenshots/`` for review.

For the whole site: LinkChecker finds no broken internal link, every link to
an anchor finds it on its page, and every external link is a well-formed URL
(external links are never fetched).

``make test`` builds the book and installs Chromium before running these. With
no ``_build/html`` the tests fail (they never skip silently); set
``SKIP_SITE_TESTS=1`` to skip them on purpose, e.g. to run the unit tests alone.
"""

from __future__ import annotations

import csv
import functools
import http.server
import io
import os
import posixpath
import re
import struct
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote, urlsplit

import pytest

from book_toc import toc_names as toc_pages

ROOT = Path(__file__).resolve().parents[1]
SITE = ROOT / "_build" / "html"
SCREENSHOTS = ROOT / "_build" / "screenshots"
CHROMIUM = Path("/usr/bin/chromium")
# Without the network flags Chromium stalls on a closed network.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
RAW_TEX = ("$$", "\\(", "\\frac")

# Accessibility violations that come from the theme or docutils rather than
# from our content or configuration, and that neither configuration nor CSS can
# fix. Each is excused only on elements whose HTML contains the given text.
THEME_VIOLATIONS = {
    # docutils 0.21 writes the bibliography as <div role="list"
    # class="citation-list"> whose entries carry the deprecated DPUB role
    # doc-biblioentry instead of listitem, so axe reports the list's children.
    # sphinxcontrib-bibtex's ":list: bullet" would give a plain list, but then
    # {cite} references no longer resolve; CSS cannot change ARIA roles.
    "aria-required-children": 'class="citation-list"',
}

pytestmark = pytest.mark.skipif(
    os.environ.get("SKIP_SITE_TESTS") == "1", reason="SKIP_SITE_TESTS=1 is set"
)


@dataclass
class PageReport:
    """What one visit of a page found."""

    console_errors: list[str] = field(default_factory=list)
    requests: list[str] = field(default_factory=list)
    raw_tex: list[str] = field(default_factory=list)
    tex_errors: list[str] = field(default_factory=list)
    math_elements: int = 0
    typeset_elements: int = 0
    images: list[tuple[str, int]] = field(default_factory=list)
    violations: list[str] = field(default_factory=list)
    screenshot: Path | None = None


MISSING_SITE = (
    f"{SITE.relative_to(ROOT)}/index.html is missing: build the book first (`make test` does; "
    "or `.venv/bin/jupyter-book build .`), or set SKIP_SITE_TESTS=1 to skip the browser tests"
)


def test_the_book_is_built():
    assert (SITE / "index.html").is_file(), MISSING_SITE


# ------------------------------------------------------------------ fixtures
@pytest.fixture(scope="module")
def site() -> Path:
    if not (SITE / "index.html").is_file():
        pytest.fail(MISSING_SITE)
    return SITE


@pytest.fixture(scope="module")
def base_url(site: Path) -> Iterator[str]:
    """The site served over HTTP on 127.0.0.1, on a free port."""

    class QuietHandler(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

        def end_headers(self) -> None:
            # LinkChecker paces itself to 10 requests/s per host unless the
            # server sends this header.
            self.send_header("LinkChecker", "local test server")
            super().end_headers()

    server = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), functools.partial(QuietHandler, directory=str(site))
    )
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


@pytest.fixture(scope="module")
def browser(base_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[object]:
    """A headless Chromium with a fresh profile that can reach 127.0.0.1 only."""
    if not CHROMIUM.is_file():
        pytest.fail(
            f"{CHROMIUM} is missing: install Debian's chromium and chromium-driver "
            "(`make test` does), or set SKIP_SITE_TESTS=1"
        )
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            str(tmp_path_factory.mktemp("chromium-profile")),
            executable_path=str(CHROMIUM),
            headless=True,
            args=CHROMIUM_ARGS,
            viewport={"width": 1280, "height": 900},
        )
        context.set_default_timeout(60_000)
        context.route("**/*", _local_only)
        try:
            yield context
        finally:
            context.close()


def _local_only(route) -> None:
    """Let requests to 127.0.0.1 through and refuse every other one."""
    if urlsplit(route.request.url).hostname == "127.0.0.1":
        route.continue_()
    else:
        route.abort()


@pytest.fixture(scope="module")
def visits() -> dict[str, PageReport]:
    return {}


@pytest.fixture(params=toc_pages())
def report(request, browser, base_url: str, visits: dict[str, PageReport]) -> PageReport:
    """The visit of one page of the table of contents (each page is visited once)."""
    page = request.param
    if page not in visits:
        visits[page] = visit(browser, f"{base_url}/{page}.html", SCREENSHOTS / f"{Path(page).name}.png")
    return visits[page]


# ------------------------------------------------------------------ one visit
_SETTLE = """async () => {
  if (window.MathJax && MathJax.startup && MathJax.startup.promise) {
    await MathJax.startup.promise;
  }
  await Promise.all(Array.from(document.images).map(img => {
    img.loading = "eager";
    return img.complete ? null : new Promise(done => { img.onload = img.onerror = done; });
  }));
  await document.fonts.ready;
}"""

_TEXT_OUTSIDE_CODE = """() => {
  const copy = document.body.cloneNode(true);
  copy.querySelectorAll("pre, code, script, style, textarea, mjx-container, .highlight")
      .forEach(e => e.remove());
  return copy.textContent;
}"""


def visit(context, url: str, screenshot: Path) -> PageReport:
    from axe_playwright_python.sync_playwright import Axe

    found = PageReport()
    page = context.new_page()
    listeners = {
        "console": lambda m: m.type == "error" and found.console_errors.append(f"console: {m.text}"),
        "pageerror": lambda e: found.console_errors.append(f"uncaught: {e}"),
        "requestfailed": lambda r: found.console_errors.append(f"failed: {r.url} ({r.failure})"),
        "response": lambda r: r.status >= 400 and found.console_errors.append(f"HTTP {r.status}: {r.url}"),
        "request": lambda r: found.requests.append(r.url),
    }
    for event, listener in listeners.items():
        page.on(event, listener)
    try:
        page.goto(url, wait_until="networkidle")
        page.evaluate(_SETTLE)
        page.wait_for_load_state("networkidle")

        text = page.evaluate(_TEXT_OUTSIDE_CODE)
        for raw in RAW_TEX:
            for match in re.finditer(re.escape(raw), text):
                found.raw_tex.append(" ".join(text[max(0, match.start() - 40):match.end() + 40].split()))
        found.tex_errors = page.eval_on_selector_all("mjx-merror", "els => els.map(e => e.textContent)")
        found.math_elements = page.locator(".math").count()
        found.typeset_elements = page.locator("mjx-container").count()
        found.images = page.eval_on_selector_all(
            "img", "imgs => imgs.map(i => [i.currentSrc || i.src, i.naturalWidth])"
        )

        screenshot.parent.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(screenshot), full_page=True)
        found.screenshot = screenshot

        # What the page did is recorded; axe's own requests are not the page's
        # (its CSSOM preload resolves the theme's @import against the page URL).
        for event, listener in listeners.items():
            page.remove_listener(event, listener)
        for violation in Axe().run(page).response["violations"]:
            if violation["impact"] not in ("serious", "critical"):
                continue
            excused = THEME_VIOLATIONS.get(violation["id"])
            for node in violation["nodes"]:
                if excused is None or excused not in node["html"]:
                    found.violations.append(
                        f"{violation['id']} ({violation['impact']}): {violation['help']} "
                        f"at {node['target']}: {node['failureSummary']}"
                    )
    finally:
        page.close()
    return found


# ------------------------------------------------------------------ per page
def test_page_loads_without_console_errors(report: PageReport):
    assert not report.console_errors, "\n".join(report.console_errors)


def test_no_request_leaves_localhost(report: PageReport):
    outside = [u for u in report.requests if urlsplit(u).scheme in ("http", "https", "ws", "wss")
               and urlsplit(u).hostname != "127.0.0.1"]
    assert not outside, f"requests to other hosts (the book must work offline): {outside}"


def test_math_is_typeset_by_mathjax(report: PageReport):
    assert not report.raw_tex, f"raw TeX left in the rendered text: {report.raw_tex}"
    assert not report.tex_errors, f"MathJax could not typeset: {report.tex_errors}"
    if report.math_elements:
        assert report.typeset_elements > 0, (
            f"{report.math_elements} math elements but nothing typeset: did MathJax load?"
        )


def test_every_image_loads(report: PageReport):
    broken = [src for src, width in report.images if width == 0]
    assert not broken, f"images that did not load: {broken}"


def test_no_serious_accessibility_violations(report: PageReport):
    assert not report.violations, "\n".join(report.violations)


def test_full_page_screenshot_is_saved(report: PageReport):
    assert report.screenshot is not None and report.screenshot.is_file()
    header = report.screenshot.read_bytes()[:24]
    assert header[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG file"
    width, height = struct.unpack(">II", header[16:24])       # the IHDR chunk
    assert width >= 1280 and height >= 900, (width, height)


# ------------------------------------------------------------------ whole site
def test_no_broken_internal_link(base_url: str, tmp_path: Path):
    """LinkChecker crawls the site from its index; external URLs are only syntax-checked."""
    config = tmp_path / "linkcheckerrc"
    config.write_text("[filtering]\ncheckextern=0\n\n[checking]\nmaxrequestspersecond=1000\n")
    linkchecker = Path(sys.executable).with_name("linkchecker")
    result = subprocess.run(
        [str(linkchecker), "--config", str(config), "--no-status", "--output", "csv",
         "--threads", "4", f"{base_url}/index.html"],
        capture_output=True, text=True, timeout=600,
    )
    rows = list(csv.DictReader(
        io.StringIO("\n".join(line for line in result.stdout.splitlines() if not line.startswith("#"))),
        delimiter=";",
    ))
    problems = [
        f"{row['urlname']} in {row['parentname']} line {row['line']}: {row['result']} {row['warningstring']}"
        for row in rows if row["valid"] != "True" or row["warningstring"]
    ]
    assert not problems, "\n".join(problems)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]


class _Page(HTMLParser):
    """The link targets and the anchors (ids and names) of one HTML page."""

    def __init__(self) -> None:
        super().__init__()
        self.hrefs: list[str] = []
        self.anchors: set[str] = set()

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = dict(attrs)
        self.anchors.update(v for k, v in attrs if k == "id" and v)
        if tag == "a":
            if values.get("name"):
                self.anchors.add(values["name"])
            if values.get("href"):
                self.hrefs.append(values["href"])


@pytest.fixture(scope="module")
def parsed_pages(site: Path) -> dict[str, _Page]:
    """Every HTML page of the site, parsed once, by path relative to the site."""
    pages = {}
    for html in sorted(site.rglob("*.html")):
        pages[html.relative_to(site).as_posix()] = page = _Page()
        page.feed(html.read_text(encoding="utf-8"))
    return pages


def test_no_broken_anchor(parsed_pages: dict[str, _Page]):
    """Every internal link with a #fragment points at an id or name on its target page.

    (LinkChecker's anchor plugin parses the target page once per link, minutes on
    this book; parsing each page once here gives the same answer in a second.)
    """
    broken = []
    for name, page in parsed_pages.items():
        for href in page.hrefs:
            parts = urlsplit(href)
            if parts.scheme or parts.netloc or not parts.fragment:
                continue
            target = posixpath.normpath(posixpath.join(posixpath.dirname(name), unquote(parts.path))) \
                if parts.path else name
            if target not in parsed_pages:
                broken.append(f"{name}: {href} (no page {target})")
            elif unquote(parts.fragment) not in parsed_pages[target].anchors:
                broken.append(f"{name}: {href} (no anchor #{parts.fragment} in {target})")
    assert not broken, "\n".join(broken)


_HOST = re.compile(r"^(?=.{1,253}$)([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?\.)+[a-z]{2,}$", re.IGNORECASE)


def test_external_links_are_well_formed(parsed_pages: dict[str, _Page]):
    """http(s) links have a real host name and no spaces; they are not fetched."""
    bad = []
    for name, page in parsed_pages.items():
        for href in page.hrefs:
            parts = urlsplit(href)
            if parts.scheme in ("http", "https"):
                if not (parts.hostname and _HOST.match(parts.hostname)) or re.search(r"\s", href):
                    bad.append(f"{name}: {href}")
            elif parts.scheme not in ("", "mailto"):
                bad.append(f"{name}: {href} (unexpected scheme {parts.scheme!r})")
    assert not bad, "\n".join(bad)


# ------------------------------------------------------------------ chapter 7's explorable figure
EXPLORER_PAGE = "book/ch07_when_ema_misleads"
# Keys pressed on each control, then the checkboxes toggled with the space bar.
EXPLORER_CASES = [
    ({"alpha": ["Home"], "drift": ["Home"], "m": ["End"]}, []),
    ({"alpha": ["End"], "drift": ["End"], "m": ["Home"]}, ["debiased", "cumulative"]),
    ({"alpha": ["Home"] + ["ArrowRight"] * 10, "drift": ["End", "ArrowLeft"], "m": ["Home", "ArrowRight"]},
     ["debiased"]),
    ({"alpha": ["ArrowLeft"] * 3, "drift": ["ArrowRight"] * 5, "m": ["ArrowLeft"] * 2}, ["cumulative"]),
    ({"alpha": ["PageUp"], "drift": ["ArrowLeft"] * 9, "m": ["ArrowRight"] * 3}, ["debiased", "cumulative"]),
]


def _four_digits(shown: str, expected: float) -> bool:
    """``shown`` is ``expected`` printed with four significant digits."""
    return abs(float(shown) - expected) <= 5.01e-4 * abs(expected) + 1e-12


@pytest.fixture(scope="module")
def explorer(browser, base_url: str):
    page = browser.new_page()
    errors: list[str] = []
    page.on("console", lambda m: m.type == "error" and errors.append(f"console: {m.text}"))
    page.on("pageerror", lambda e: errors.append(f"uncaught: {e}"))
    page.goto(f"{base_url}/{EXPLORER_PAGE}.html", wait_until="load")
    page.wait_for_selector("#ema-explorer-figure[data-ready='true']")
    yield page, errors
    page.close()


def _explorer_state(page) -> dict:
    return page.evaluate("""() => {
      const d = window.emaExplorerData, v = id => Number(document.getElementById(id).value);
      const numbers = {};
      document.querySelectorAll('#ema-explorer-figure [data-q]').forEach(e => { numbers[e.dataset.q] = e.textContent; });
      return {alpha: d.alpha[v('emx-alpha')], drift: d.drift[v('emx-drift')], m: d.batch_size[v('emx-m')],
              s_star: d.s_star, start: d.start_distance, numbers: numbers,
              trusted: document.querySelector('#ema-explorer-figure [data-q=verdict]').dataset.trusted,
              settled: document.querySelector('#ema-explorer-figure [data-q=verdict]').dataset.settled,
              valuetext: document.getElementById('emx-alpha').getAttribute('aria-valuetext'),
              debiased: document.getElementById('emx-debiased').checked,
              cumulative: document.getElementById('emx-cumulative').checked};
    }""")


@pytest.mark.parametrize("keys, toggles", EXPLORER_CASES)
def test_explorer_numbers_equal_bnlib_after_keyboard_use(explorer, keys, toggles):
    import math

    import bnlib

    page, errors = explorer
    for control, presses in keys.items():
        page.focus(f"#emx-{control}")
        for key in presses:
            page.keyboard.press(key)
    for box in toggles:
        page.focus(f"#emx-{box}")
        page.keyboard.press("Space")
    s = _explorer_state(page)
    a, v, m, n = s["alpha"], s["drift"], s["m"], s["numbers"]
    assert f"α = {a}," in s["valuetext"] and f"ρ = 1 − α = " in s["valuetext"]
    steps = int(n["steps"])
    assert steps == min(2000, max(50, math.floor(5 / a + 0.5)))
    ema = bnlib.running_mean_band(a, m, v, steps, s["start"])
    s_rms = bnlib.ema_error(a, m, v, after_update=True)
    expected = {
        "window": bnlib.effective_window(a),
        "half_life": bnlib.half_life(a, exact=True),
        "n_batches": 1.0 / bnlib.ema_noise_sd(a, 1) ** 2,
        "startup": bnlib.startup_bias(a, steps, s["start"]),
        "lag": bnlib.ema_lag(a, v, after_update=True),
        "noise": bnlib.ema_noise_sd(a, m),
        "ema_error": ema.error, "ema_noise": ema.noise_sd,
        "s_rms": s_rms, "mean_abs": math.sqrt(2 / math.pi) * s_rms,
    }
    for kind in ("debiased", "cumulative"):
        assert (f"{kind}_error" in n) == s[kind]
        if s[kind]:
            band = bnlib.running_mean_band(None if kind == "cumulative" else a, m, v, steps, s["start"], kind)
            expected[f"{kind}_error"], expected[f"{kind}_noise"] = band.error, band.noise_sd
    wrong = {q: (n[q], value) for q, value in expected.items() if not _four_digits(n[q], value)}
    assert not wrong, f"alpha {a}, drift {v}, m {m}: shown vs bnlib {wrong}"
    assert s["trusted"] == str(bnlib.trusts_ema_tracking(a, m, v, s["s_star"])).lower()
    at_step = math.sqrt(2 / math.pi) * math.hypot(ema.error, ema.noise_sd)   # the rule's statistic at the step shown
    assert s["settled"] == str(at_step <= s["s_star"]).lower()
    assert not errors, errors


def test_explorer_controls_are_labelled_and_the_fallback_hidden(explorer):
    page, _ = explorer
    assert page.locator("[id='ema-explorer-figure']").count() == 1        # ids are unique on the page
    controls = page.eval_on_selector_all(
        "#ema-explorer-figure input",
        "els => els.map(e => [e.type, !!document.querySelector(`label[for='${e.id}']`), e.getAttribute('aria-valuetext')])")
    assert [c[0] for c in controls] == ["range"] * 3 + ["checkbox"] * 2
    assert all(labelled for _, labelled, _ in controls)
    assert all(text for kind, _, text in controls if kind == "range")
    hidden = page.eval_on_selector_all(".tag_ema-explorer-fallback", "els => els.map(e => e.hidden)")
    assert hidden == [True]                                  # the static version, for print and no JavaScript


def test_explorer_passes_axe_with_every_curve_shown(explorer):
    from axe_playwright_python.sync_playwright import Axe

    page, _ = explorer
    for box in ("debiased", "cumulative"):
        if not page.is_checked(f"#emx-{box}"):
            page.check(f"#emx-{box}")
    found = [f"{v['id']}: {v['help']}" for v in Axe().run(page, context="#ema-explorer-figure").response["violations"]
             if v["impact"] in ("serious", "critical")]
    assert not found, found


def test_only_chapter_7_loads_the_explorer(site: Path):
    pages = [p.relative_to(site).as_posix() for p in site.rglob("*.html") if "ema_explorer.js" in p.read_text()]
    assert pages == [f"{EXPLORER_PAGE}.html"]
