"""Look at a built HTML book the way a reader would, without a browser.

The book is only worth reading if every chapter page exists and shows the
outputs its notebook computed: figures, tables, no tracebacks.  A Sphinx build
can succeed and still produce a page without figures (for example when the
kernel was started with a non-inline matplotlib backend, ``plt.show()`` draws
nothing), so the tests open the built HTML and check it.  This module holds that
inspection, shared by ``tests/test_book.py``, ``benchmarks/screenshot_book.py``
and the command line::

    python -m icmlib.bookcheck _build/html          # report, exit 1 on problems

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
        return out

    def summary(self) -> str:
        if not self.exists:
            return f"{self.docname}: MISSING"
        return (
            f"{self.docname}: {len(self.figures)} figures, {self.tables} tables, "
            f"{len(self.errors)} errors, {len(self.stderr)} stderr outputs"
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
    """``python -m icmlib.bookcheck [HTML_DIR] [--toc _toc.yml]``: print one line per chapter."""
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
    problems = []
    for report in reports:
        print(report.summary())
        if args.show_stderr:
            for text in report.stderr:
                print("    stderr:", text[:300].replace("\n", "\n            "))
        problems += report.problems
    for problem in problems:
        print("PROBLEM", problem)
    return 1 if problems else 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
