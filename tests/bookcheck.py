"""Look at a built HTML book the way a reader would, without a browser.

The book is only worth reading if every chapter page exists and shows the
outputs its notebook computed: figures, tables, no tracebacks.  A Sphinx build
can succeed and still produce a page without figures (for example when the
kernel was started with a non-inline matplotlib backend, ``plt.show()`` draws
nothing), so the tests open the built HTML and check it.  This module holds that
inspection, shared by ``tests/test_book.py``, ``benchmarks/screenshot_book.py``
and the command line::

    python -m bookcheck _build/html          # report, exit 1 on problems

Beyond "exists and shows its figures", a page must read well anywhere (issue 16):

* it loads no script or stylesheet from outside the site (a CDN fails offline: the
  math would show as raw TeX), and every local one it names is in the site;
* the first thing in its main content is its title (``h1``), never a code cell;
* no output block longer than :data:`MAX_OUTPUT_LINES` lines is shown unfolded (a log
  goes into a folded output, ``hide-output``, or becomes a progress bar and a summary).

How myst-nb (Jupyter Book 1.x) renders a notebook cell, which is what we parse::

    <div class="cell docutils container">            (+ "tag_<tag>" per cell tag)
      <div class="cell_input ...">  source  </div>
      <div class="cell_output docutils container">
        <div class="output stream ...">     stdout  </div>
        <div class="output stderr ...">     stderr (warnings too) </div>
        <div class="output traceback ..."> an exception's traceback </div>
        <img src="_images/<hash>.png" ...>  a figure (or data:image/png;base64,...)
        <div class="output text_html">      a table (pandas) or widget </div>
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

__all__ = [
    "INLINE_BACKEND",
    "PageReport",
    "ChapterPage",
    "BookError",
    "toc_docnames",
    "chapter_pages",
    "figures_in",
    "tables_in",
    "errors_in",
    "stderr_in",
    "missing_images",
    "MAX_OUTPUT_LINES",
    "outside_resources",
    "missing_resources",
    "first_content_element",
    "long_outputs",
    "colab_links",
    "outside_resources_in_site",
    "check_page",
    "check_book",
    "jupyter_book_executable",
    "build_env",
    "build_book",
    "main",
]

# The backend ipykernel picks when MPLBACKEND is unset. A kernel that inherits
# MPLBACKEND=Agg (as the test commands set it) renders no figure at all.
INLINE_BACKEND = "module://matplotlib_inline.backend_inline"

#: An output block longer than this must be folded: past it, a reader scrolls through a log.
MAX_OUTPUT_LINES = 40

_IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".gif", ".svg", ".webp")
_SOURCE_SUFFIXES = (".ipynb", ".md", ".rst")


class BookError(ValueError):
    """A table of contents or a built book that cannot be inspected as asked."""


# --------------------------------------------------------------------------- toc
def _load_yaml(path: Path):
    try:
        import yaml
    except ImportError as exc:  # pragma: no cover - yaml comes with jupyter-book
        raise BookError("reading _toc.yml needs PyYAML: pip install 'icmlib[book]'") from exc
    with open(path, encoding="utf-8") as f:
        return yaml.safe_load(f)


def toc_docnames(toc) -> list[str]:
    """Every ``file`` of a Jupyter Book ``_toc.yml``, root first, in reading order.

    ``toc`` is a path or an already loaded dict. Handles ``parts``, ``chapters``
    and nested ``sections``; ``url`` and ``glob`` entries are not pages of ours.
    """
    if not isinstance(toc, dict):
        path = Path(toc)
        if not path.is_file():
            raise BookError(f"no table of contents at {path}")
        toc = _load_yaml(path)
    if not isinstance(toc, dict) or "root" not in toc:
        raise BookError("a Jupyter Book _toc.yml needs a top-level 'root: <file>' entry")

    names = [_strip_suffix(str(toc["root"]))]

    def walk(entries):
        for entry in entries or []:
            if not isinstance(entry, dict):
                continue
            if "file" in entry:
                names.append(_strip_suffix(str(entry["file"])))
            for key in ("parts", "chapters", "sections"):
                walk(entry.get(key))

    walk([{k: v for k, v in toc.items() if k in ("parts", "chapters", "sections")}])
    return names


def _strip_suffix(name: str) -> str:
    for suffix in _SOURCE_SUFFIXES:
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return name


def _source_of(docname: str, book_root: Path) -> Path | None:
    for suffix in _SOURCE_SUFFIXES:
        candidate = book_root / (docname + suffix)
        if candidate.is_file():
            return candidate
    return None


@dataclass
class ChapterPage:
    """One page of the table of contents: where its source is and where its HTML should be."""

    docname: str
    source: Path | None
    html: Path

    @property
    def is_notebook(self) -> bool:
        return self.source is not None and self.source.suffix == ".ipynb"


def chapter_pages(toc, html_dir, book_root=None, notebooks_only: bool = True) -> list[ChapterPage]:
    """The pages a built book must have, from its ``_toc.yml``.

    ``book_root`` is the folder the toc's paths are relative to (default: the
    toc's folder). With ``notebooks_only`` (the default) only chapters whose
    source is a notebook are returned: those are the ones with computed outputs.
    """
    if book_root is None:
        if isinstance(toc, dict):
            raise BookError("pass book_root when the toc is given as a dict")
        book_root = Path(toc).parent
    book_root, html_dir = Path(book_root), Path(html_dir)
    pages = []
    for name in toc_docnames(toc):
        page = ChapterPage(name, _source_of(name, book_root), html_dir / (name + ".html"))
        if notebooks_only and not page.is_notebook:
            continue
        pages.append(page)
    return pages


# -------------------------------------------------------------------------- html
def _soup(html):
    try:
        from bs4 import BeautifulSoup
    except ImportError as exc:  # pragma: no cover - bs4 comes with the book theme
        raise BookError("inspecting HTML needs beautifulsoup4: pip install 'icmlib[book]'") from exc
    if not isinstance(html, str):
        html = Path(html).read_text(encoding="utf-8")
    return BeautifulSoup(html, "html.parser")


def _has_class(tag, *names) -> bool:
    classes = tag.get("class") or []
    return all(name in classes for name in names)


def _outputs(soup):
    """All ``cell_output`` containers of the page's cells."""
    return soup.find_all("div", class_="cell_output")


def _in_cell_with_tag(tag, cell_tag: str) -> bool:
    for parent in tag.parents:
        if parent.name == "div" and _has_class(parent, "cell"):
            return f"tag_{cell_tag}" in (parent.get("class") or [])
    return False


def figures_in(html, outputs_only: bool = True) -> list[str]:
    """The ``src`` of every figure on the page.

    A figure is an ``<img>`` whose source is an embedded image (``data:image/...``)
    or a file under ``_images/`` (where Sphinx copies notebook figures). With
    ``outputs_only`` only images that a code cell produced count; theme logos and
    launch-button icons never count.
    """
    soup = _soup(html)
    containers = _outputs(soup) if outputs_only else [soup]
    srcs = []
    for container in containers:
        for img in container.find_all("img"):
            src = img.get("src", "")
            if src.startswith("data:image/") or (
                "_images/" in src and src.lower().endswith(_IMAGE_EXTENSIONS)
            ):
                srcs.append(src)
    return srcs


def tables_in(html) -> int:
    """How many ``<table>`` a code cell produced (pandas DataFrames render as tables)."""
    return sum(len(out.find_all("table")) for out in _outputs(_soup(html)))


def errors_in(html) -> list[str]:
    """The text of every error a reader would see in the page's outputs.

    That is every ``output traceback`` / ``output error`` block (how myst-nb shows
    an exception), and any stderr output holding a Python traceback. Cells tagged
    ``raises-exception`` show their traceback on purpose and are skipped.
    """
    soup = _soup(html)
    found = []
    for out in soup.find_all("div", class_="output"):
        classes = out.get("class") or []
        is_error = "traceback" in classes or "error" in classes
        if not is_error and "stderr" in classes:
            is_error = "Traceback (most recent call last)" in out.get_text()
        if is_error and not _in_cell_with_tag(out, "raises-exception"):
            found.append(out.get_text().strip())
    return found


def stderr_in(html) -> list[str]:
    """The text of every stderr output (warnings, progress bars): not errors, but noise a reader sees."""
    return [
        out.get_text().strip()
        for out in _soup(html).find_all("div", class_="output")
        if "stderr" in (out.get("class") or [])
    ]


def missing_images(html, page_path) -> list[str]:
    """``_images/...`` files the page links to that do not exist next to it."""
    base = Path(page_path).parent
    missing = []
    for src in figures_in(html, outputs_only=False):
        if src.startswith("data:"):
            continue
        if not (base / src.split("#")[0].split("?")[0]).is_file():
            missing.append(src)
    return missing


def _resource_urls(soup) -> list[str]:
    """What the page loads as it opens: script sources and stylesheets (and preloads)."""
    urls = [tag["src"] for tag in soup.find_all("script", src=True)]
    for link in soup.find_all("link", href=True):
        rel = {r.lower() for r in (link.get("rel") or [])}
        if rel & {"stylesheet", "preload", "modulepreload"}:
            urls.append(link["href"])
    return urls


def _is_outside(url: str) -> bool:
    parts = urlsplit(url)
    return url.startswith("//") or (bool(parts.scheme) and parts.scheme not in ("data", "blob"))


def outside_resources(html) -> list[str]:
    """Scripts and stylesheets the page loads from outside the site (a CDN, say).

    Offline they fail: with MathJax from a CDN every equation shows as raw TeX.
    """
    return [url for url in _resource_urls(_soup(html)) if _is_outside(url)]


def missing_resources(html, page_path) -> list[str]:
    """Local scripts and stylesheets the page names that are not in the site."""
    base = Path(page_path).parent
    missing = []
    for url in _resource_urls(_soup(html)):
        if _is_outside(url) or url.startswith(("data:", "blob:")):
            continue
        if not Path(os.path.normpath(base / urlsplit(url).path)).is_file():
            missing.append(url)
    return missing


_CONTENT_TAGS = {"h1", "h2", "h3", "h4", "h5", "h6", "p", "pre", "table", "img", "ul", "ol",
                 "dl", "figure", "blockquote"}


def _main_content(soup):
    return soup.find("article") or soup.find("main") or soup.body or soup


def first_content_element(html) -> str | None:
    """What a reader meets first in the page's main content: ``"h1"``, ``"code cell"``, ...

    The main content is the ``<article>`` of the book theme (else ``<main>``, else the
    body). ``None`` for a page with no content at all.
    """
    for tag in _main_content(_soup(html)).find_all(True):
        if tag.name == "div" and _has_class(tag, "cell"):
            return "code cell"
        if tag.name == "div" and _has_class(tag, "math"):
            return "display math"
        if tag.name in _CONTENT_TAGS:
            return tag.name
    return None


def _folded(tag) -> bool:
    """Shown only on a click: inside a closed ``<details>`` (``hide-output``, ``hide-cell``,
    ``hide-input``) or in a cell whose outputs scroll in a box (``scroll-output``)."""
    for parent in tag.parents:
        if parent.name == "details" and not parent.has_attr("open"):
            return True
        if parent.name == "div" and _has_class(parent, "cell"):
            if "tag_scroll-output" in (parent.get("class") or []):
                return True
    return False


def long_outputs(html, limit: int = MAX_OUTPUT_LINES) -> list[tuple[int, str]]:
    """``(lines, first line)`` of every unfolded text output longer than ``limit`` lines."""
    found = []
    for out in _main_content(_soup(html)).find_all("div", class_="output"):
        pre = out.find("pre")
        if pre is None or _folded(out):
            continue
        lines = pre.get_text().strip("\n").splitlines()
        if len(lines) > limit:
            found.append((len(lines), lines[0][:120]))
    return found


def colab_links(html) -> list[str]:
    """The page's "open in Colab" launch links (built from ``_config.yml``'s repository)."""
    return [a["href"] for a in _soup(html).find_all("a", href=True)
            if "colab.research.google.com" in a["href"]]


def outside_resources_in_site(html_dir) -> dict[str, list[str]]:
    """``{page: [urls]}`` for every HTML page of a built site that loads anything from outside it."""
    html_dir = Path(html_dir)
    found = {}
    for page in sorted(html_dir.rglob("*.html")):
        if "_static" in page.relative_to(html_dir).parts:
            continue
        urls = outside_resources(page.read_text(encoding="utf-8"))
        if urls:
            found[str(page.relative_to(html_dir))] = urls
    return found


@dataclass
class PageReport:
    """What a reader would find on one chapter page."""

    docname: str
    html: Path
    exists: bool
    figures: list[str] = field(default_factory=list)
    tables: int = 0
    errors: list[str] = field(default_factory=list)
    stderr: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    figures_required: bool = True
    outside: list[str] = field(default_factory=list)
    missing_resources: list[str] = field(default_factory=list)
    first_element: str | None = "h1"
    long_outputs: list[tuple[int, str]] = field(default_factory=list)

    @property
    def problems(self) -> list[str]:
        """Why this page fails the "exists and shows its figures" check (empty when fine)."""
        if not self.exists:
            return [f"{self.docname}: no page at {self.html}"]
        out = []
        if self.figures_required and not self.figures:
            out.append(f"{self.docname}: no figure in any cell output")
        elif not self.figures and not self.tables:
            out.append(f"{self.docname}: neither a figure nor a table in any cell output")
        for err in self.errors:
            last = err.strip().splitlines()[-1] if err.strip() else "(empty)"
            out.append(f"{self.docname}: error output: {last[:200]}")
        for src in self.missing:
            out.append(f"{self.docname}: image file missing: {src}")
        for url in self.outside:
            out.append(f"{self.docname}: loads {url} from outside the site (fails offline)")
        for url in self.missing_resources:
            out.append(f"{self.docname}: script or stylesheet missing from the site: {url}")
        if self.first_element != "h1":
            out.append(f"{self.docname}: the page opens with {self.first_element or 'nothing'}, "
                       f"not its title (h1): put the title cell first, the install cell after it")
        for lines, first in self.long_outputs:
            out.append(f"{self.docname}: an unfolded output of {lines} lines (over "
                       f"{MAX_OUTPUT_LINES}) starting {first!r}: fold it (cell tag hide-output) "
                       f"or print a summary")
        return out

    def summary(self) -> str:
        if not self.exists:
            return f"{self.docname}: MISSING"
        return (
            f"{self.docname}: {len(self.figures)} figures, {self.tables} tables, "
            f"{len(self.errors)} errors, {len(self.stderr)} stderr outputs, "
            f"opens with {self.first_element}, {len(self.long_outputs)} long unfolded outputs, "
            f"{len(self.outside)} outside resources"
        )


def check_page(page: ChapterPage, figures_required: bool = True) -> PageReport:
    """Inspect one built page.

    A page with ``figures_required=False`` (a chapter of tables, say) must
    still show a figure or a table computed by its code.
    """
    if not page.html.is_file():
        return PageReport(page.docname, page.html, exists=False, figures_required=figures_required)
    html = page.html.read_text(encoding="utf-8")
    return PageReport(
        page.docname,
        page.html,
        exists=True,
        figures=figures_in(html),
        tables=tables_in(html),
        errors=errors_in(html),
        stderr=stderr_in(html),
        missing=missing_images(html, page.html),
        figures_required=figures_required,
        outside=outside_resources(html),
        missing_resources=missing_resources(html, page.html),
        first_element=first_content_element(html),
        long_outputs=long_outputs(html),
    )


def check_book(toc, html_dir, book_root=None, without_figures=()) -> list[PageReport]:
    """One report per notebook chapter of the toc.

    ``without_figures`` names chapters (docnames) that show tables but no plot
    by design; every other notebook chapter must show at least one figure.
    """
    html_dir = Path(html_dir)
    if not html_dir.is_dir():
        raise BookError(f"no built book at {html_dir}; build it with `make book`")
    exempt = set(without_figures)
    return [check_page(p, p.docname not in exempt) for p in chapter_pages(toc, html_dir, book_root)]


# ------------------------------------------------------------------------- build
def jupyter_book_executable() -> str:
    """The ``jupyter-book`` next to this Python (the venv's), else the one on PATH."""
    here = Path(sys.executable).parent / "jupyter-book"
    if here.is_file():
        return str(here)
    found = shutil.which("jupyter-book")
    if not found:
        raise BookError("jupyter-book is not installed: pip install 'icmlib[book]'")
    return found


def build_env(base=None) -> dict:
    """The environment a book build needs: the caller's, with matplotlib's inline backend.

    ipykernel only selects the inline backend when ``MPLBACKEND`` is unset; the
    test commands export ``MPLBACKEND=Agg`` and a kernel inheriting it draws no
    figure into the notebook, so the page would have none.
    """
    env = dict(os.environ if base is None else base)
    env["MPLBACKEND"] = INLINE_BACKEND
    return env


def build_book(source_dir, output_dir=None, env=None, timeout=None, extra_args=()) -> subprocess.CompletedProcess:
    """Run ``jupyter-book build`` on ``source_dir``; the HTML lands in ``<output_dir>/_build/html``.

    Returns the completed process (stdout and stderr merged, ANSI colours
    removed) and never raises on a failed build: the caller decides.
    """
    cmd = [jupyter_book_executable(), "build", str(source_dir)]
    if output_dir is not None:
        cmd += ["--path-output", str(output_dir)]
    cmd += list(extra_args)
    proc = subprocess.run(
        cmd,
        env=build_env() if env is None else env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=timeout,
    )
    proc.stdout = re.sub(r"\x1b\[[0-9;]*m", "", proc.stdout or "")
    return proc


# --------------------------------------------------------------------------- cli
def main(argv=None) -> int:
    """``python -m bookcheck [HTML_DIR] [--toc _toc.yml]``: print one line per chapter."""
    import argparse

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("html_dir", nargs="?", default="_build/html")
    parser.add_argument("--toc", default="_toc.yml")
    parser.add_argument("--show-stderr", action="store_true", help="print each page's stderr outputs")
    parser.add_argument("--without-figures", nargs="*", default=(), metavar="DOCNAME",
                        help="chapters that show tables but no figure by design, e.g. book/11_paper_scale")
    args = parser.parse_args(argv)
    try:
        reports = check_book(args.toc, args.html_dir, without_figures=args.without_figures)
    except BookError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    problems = [f"{page}: loads {url} from outside the site (fails offline)"
                for page, urls in outside_resources_in_site(args.html_dir).items() for url in urls]
    for report in reports:
        print(report.summary())
        if args.show_stderr:
            for text in report.stderr:
                print("    stderr:", text[:300].replace("\n", "\n            "))
        problems += report.problems
    for problem in dict.fromkeys(problems):  # a chapter's outside script is also a site's
        print("PROBLEM", problem)
    return 1 if problems else 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
