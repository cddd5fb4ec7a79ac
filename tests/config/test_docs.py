"""The documentation: README.md as a short front page that points into docs/, and the MkDocs site built strictly
(a broken link, anchor or nav entry fails) and offline (no page loads anything from outside the site: checked in
the built HTML and CSS, and in Chromium, which records every resource a page fetched)."""

from __future__ import annotations

import functools
import os
import re
import subprocess
import sys
import threading
from html.parser import HTMLParser
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import urlparse

import pytest

from tests.e2e import readme_examples
from tests.e2e.browser import chromium

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"
README_MAX_LINES = 200
# Addresses a page may name in a link: the stack itself, which the reader runs.
LOCAL_HOSTS = {"127.0.0.1", "localhost", "::1", "stack.internal"}


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("site")
    result = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(out)], cwd=ROOT,
                            capture_output=True, text=True, env={**os.environ, "NO_MKDOCS_2_WARNING": "1"})
    assert result.returncode == 0, result.stderr[-3000:]
    return out


def nav_pages() -> list[str]:
    return readme_examples.nav_pages(ROOT)


class References(HTMLParser):
    """Every URL an element names (src, href, srcset, poster, data) and every url(...) in inline styles."""

    def __init__(self) -> None:
        super().__init__()
        self.urls: list[tuple[str, str]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        for name, value in attrs:
            if value and name in {"src", "href", "poster", "data", "action", "formaction"}:
                self.urls.append((tag, value))
            elif value and name == "srcset":
                self.urls.extend((tag, part.split()[0]) for part in value.split(",") if part.strip())
            elif value and name == "style":
                self.urls.extend((tag, url) for url in re.findall(r"url\(['\"]?([^'\")]+)", value))


def outside(url: str) -> bool:
    parsed = urlparse(url)
    if parsed.scheme in ("", "file", "data", "blob", "javascript", "mailto"):
        return bool(parsed.netloc) and parsed.hostname not in LOCAL_HOSTS
    return parsed.hostname not in LOCAL_HOSTS and not (parsed.hostname or "").startswith("127.")


def test_the_readme_is_a_front_page_that_points_into_the_docs():
    readme = (ROOT / "README.md").read_text()
    assert len(readme.splitlines()) <= README_MAX_LINES
    sections = re.findall(r"^## (.+)$", readme, re.MULTILINE)
    assert sections[0] == "The two commands", sections  # the two commands come first
    assert readme.index("make up") < readme.index("## A five-line tour")
    links = re.findall(r"\]\((docs/[^)#]+)(?:#[^)]*)?\)", readme)
    assert len(links) >= 15
    missing = [link for link in links if not (ROOT / link).exists()]
    assert not missing, missing
    linked = {link.removeprefix("docs/") for link in links}
    # every page but the home page, and the reports' own pages (the reports index lists them)
    topics = [page for page in nav_pages() if (DOCS / page).exists()
              and (not page.startswith("reports/") or page == "reports/index.md")]
    assert set(topics) - linked <= {"index.md"}, "a page the README's map leaves out"


def test_every_page_is_in_the_nav_and_opens_with_who_it_is_for():
    pages = {str(path.relative_to(DOCS)) for path in DOCS.rglob("*.md")}
    in_nav = set(nav_pages())
    assert pages <= in_nav, pages - in_nav
    for page in sorted(pages):
        lines = (DOCS / page).read_text().splitlines()
        assert lines[0].startswith("# "), page
        opening = " ".join(lines[2:4]).split("\n\n")[0]
        assert re.match(r"\*For [^*]+\*", opening), (page, lines[2])  # one sentence: who the page is for


def test_each_hop_and_topic_page_says_what_you_will_see_and_the_command():
    for page in nav_pages():
        if page in ("index.md", "glossary.md") or page.startswith("reports/"):
            continue
        text = (DOCS / page).read_text()
        opening = "\n".join(text.splitlines()[:8])
        assert re.search(r"\*\*What you will see:\*\* .+\*\*The command:\*\* `[^`]+`", opening, re.DOTALL), page


def test_the_site_builds_strictly_with_every_page_and_the_generated_reports(site):
    for page in nav_pages():
        assert (site / page.replace(".md", ".html")).is_file(), page
    for report in ("compare", "compare-wsgi", "iolab"):
        html = (site / "reports" / report / "index.html").read_text()
        assert re.search(r"<h1[^>]*>(Comparison|IO-models lab), 20\d\d-\d\d-\d\dT", html), report  # dated
        charts = re.findall(r'<img[^>]+src="([^"]+\.png)"', html)
        assert charts and all((site / "reports" / report / chart).is_file() for chart in charts), report


def test_the_built_site_references_nothing_outside(site):
    found = []
    for page in site.rglob("*.html"):
        parser = References()
        parser.feed(page.read_text())
        found += [(str(page.relative_to(site)), tag, url) for tag, url in parser.urls if outside(url)]
    for sheet in site.rglob("*.css"):
        found += [(str(sheet.relative_to(site)), "css", url)
                  for url in re.findall(r"url\(['\"]?([^'\")]+)", sheet.read_text()) if outside(url)]
    assert not found, found[:20]


def test_pages_load_only_their_own_files_in_chromium(site):
    """What a reader's browser fetches when it opens the built site (served on loopback, as `make docs-serve`
    does): nothing but the site's own files, each found; the page's text and its pictures shown."""
    handler = functools.partial(QuietHandler, directory=str(site))
    with ThreadingHTTPServer(("127.0.0.1", 0), handler) as server:
        threading.Thread(target=server.serve_forever, daemon=True).start()
        base = f"http://127.0.0.1:{server.server_address[1]}/"
        with chromium() as browser:
            for page in ("index.html", "trace.html", "reports/compare/index.html"):
                browser.get(base + page)
                fetched = browser.execute_script(
                    "return performance.getEntriesByType('resource').map(e => [e.name, e.responseStatus])")
                assert len(fetched) >= 3, (page, fetched)  # the theme's stylesheet and scripts at least
                assert all(url.startswith(base) and status == 200 for url, status in fetched), (page, fetched)
                assert browser.find_element("css selector", "h1").text, page
                broken = browser.execute_script(
                    "return [...document.images].filter(i => !i.complete || i.naturalWidth === 0).map(i => i.src)")
                assert not broken, (page, broken)
        server.shutdown()


class QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 (the base class's name)
        pass


# The study notes' terms and the stack's own that the pages use without explaining them where they stand.
GLOSSARY_TERMS = ("TIME-WAIT", "CLOSE_WAIT", "uWSGI", "WSGI", "keep-alive", "chunked", "Content-Length", "epoll",
                  "selectors", "io_uring", "idempotent", "safe", "cookie", "session", "TCP", "UDP", "OSI model",
                  "three-way handshake", "four-way close", "reverse proxy", "upstream", "gevent", "ALPN", "HSTS",
                  "Server-Timing", "request id", "problem+json", "backlog", "SO_REUSEPORT", "QUIC")


def test_the_glossary_defines_the_terms_the_pages_lean_on():
    text = (DOCS / "glossary.md").read_text()
    terms = re.findall(r"^(\S.*)\n:   ", text, re.MULTILINE)
    assert terms == sorted(terms, key=str.lower), "alphabetical, so a reader can find one"
    defined = " | ".join(terms).lower()
    missing = [term for term in GLOSSARY_TERMS if term.lower() not in defined]
    assert not missing, missing
    pages = " ".join(path.read_text() for path in DOCS.rglob("*.md") if path.name != "glossary.md").lower()
    unused = [term for term in GLOSSARY_TERMS if term.lower() not in pages]
    assert not unused, unused  # a term no page uses does not belong here
