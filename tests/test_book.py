"""The book as a reader gets it: the build fails on a failing notebook, and every
chapter page exists and shows its figures.

Three kinds of test:

* unit tests of ``icmlib.bookcheck`` on handmade HTML (fast);
* two builds of a tiny book that uses the repository's own ``_config.yml`` (the
  thing under test): a notebook that raises must make ``jupyter-book build``
  exit non-zero, and a notebook that works must render its printed output and
  its matplotlib figure;
* the real book: every notebook chapter of ``_toc.yml`` has a page with at
  least one figure and no error output. It inspects the built book in
  ``$ICM_BOOK_HTML`` (relative paths from the repository root). ``make book`` runs it
  on the book it has just built, so a build that loses its figures fails; in
  ``make test`` it is skipped, since nbval already executes every notebook and a
  second full execution would double the test time.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import textwrap
import time
from pathlib import Path

import nbformat
import pytest

from icmlib import bookcheck
from icmlib.bookcheck import (
    BookError,
    chapter_pages,
    check_book,
    errors_in,
    figures_in,
    missing_images,
    stderr_in,
    tables_in,
    toc_docnames,
)

REPO = Path(__file__).resolve().parents[1]
# Chapters that show computed tables but, by design, no plot. Every other
# notebook chapter must show at least one figure.
CHAPTERS_WITHOUT_FIGURES = ("book/11_paper_scale",)
CONFIG = REPO / "_config.yml"
TOC = REPO / "_toc.yml"

# ----------------------------------------------------------------------------- unit tests on handmade HTML
PAGE = """
<html><head><link rel="icon" href="_static/favicon.png"></head><body>
<div class="header"><img alt="Colab logo" src="_static/images/logo_colab.png"></div>
<main><article>
<p>Some prose with a markdown image <img src="_images/diagram.png"></p>
<div class="cell docutils container">
  <div class="cell_input docutils container"><pre>plt.plot([1, 2])</pre></div>
  <div class="cell_output docutils container">
    <div class="output stream highlight-myst-ansi notranslate"><pre>MARKER 42</pre></div>
    <div class="output stderr highlight-myst-ansi notranslate"><pre>UserWarning: careful</pre></div>
    <img alt="_images/abc.png" src="_images/abc.png" />
  </div>
</div>
<div class="cell docutils container">
  <div class="cell_output docutils container">
    <img src="data:image/png;base64,iVBORw0KGgo=" />
    <div class="output text_html"><table class="dataframe"><tr><td>1</td></tr></table></div>
  </div>
</div>
<div class="cell tag_raises-exception docutils container">
  <div class="cell_output docutils container">
    <div class="output traceback highlight-ipythontb notranslate"><pre>ValueError: shown on purpose</pre></div>
  </div>
</div>
</article></main></body></html>
"""

BROKEN = """
<div class="cell docutils container"><div class="cell_output docutils container">
  <div class="output traceback highlight-ipythontb notranslate"><pre>Traceback (most recent call last)
RuntimeError: boom</pre></div>
  <div class="output stderr highlight-myst-ansi"><pre>Traceback (most recent call last):
  File "x.py", line 1
KeyError: 'k'</pre></div>
  <div class="output stderr highlight-myst-ansi"><pre>100%|##########| 3/3</pre></div>
</div></div>
"""


def test_figures_are_cell_output_images_only():
    assert figures_in(PAGE) == ["_images/abc.png", "data:image/png;base64,iVBORw0KGgo="]
    # With outputs_only=False the markdown image counts, theme logos never do.
    assert set(figures_in(PAGE, outputs_only=False)) == {
        "_images/diagram.png",
        "_images/abc.png",
        "data:image/png;base64,iVBORw0KGgo=",
    }
    assert figures_in(BROKEN) == []


def test_tables_errors_and_stderr():
    assert tables_in(PAGE) == 1
    assert errors_in(PAGE) == []  # the traceback sits in a raises-exception cell
    assert stderr_in(PAGE) == ["UserWarning: careful"]
    errors = errors_in(BROKEN)
    assert len(errors) == 2
    assert errors[0].endswith("RuntimeError: boom")
    assert errors[1].endswith("KeyError: 'k'")
    assert len(stderr_in(BROKEN)) == 2


def test_missing_images(tmp_path):
    page = tmp_path / "book" / "ch.html"
    (tmp_path / "book" / "_images").mkdir(parents=True)
    (tmp_path / "book" / "_images" / "abc.png").write_bytes(b"png")
    assert missing_images(PAGE, page) == ["_images/diagram.png"]


def test_toc_and_chapter_pages(tmp_path):
    (tmp_path / "book").mkdir()
    for name in ("intro.md", "a.ipynb", "b.md", "c.ipynb"):
        (tmp_path / "book" / name).write_text("x")
    toc = tmp_path / "_toc.yml"
    toc.write_text(
        textwrap.dedent(
            """
            format: jb-book
            root: book/intro
            parts:
              - caption: One
                chapters:
                  - file: book/a
                    sections:
                      - file: book/c.ipynb
                  - url: https://example.org
              - caption: Two
                chapters:
                  - file: book/b
                  - file: book/not_written_yet
            """
        )
    )
    assert toc_docnames(toc) == ["book/intro", "book/a", "book/c", "book/b", "book/not_written_yet"]
    html = tmp_path / "_build" / "html"
    pages = chapter_pages(toc, html)
    assert [p.docname for p in pages] == ["book/a", "book/c"]
    assert pages[0].html == html / "book" / "a.html"
    # A chapter listed without a source file is still a page that must exist.
    everything = chapter_pages(toc, html, notebooks_only=False)
    assert [p.docname for p in everything][-1] == "book/not_written_yet"

    (html / "book").mkdir(parents=True)
    (html / "book" / "a.html").write_text(PAGE)
    reports = {r.docname: r for r in check_book(toc, html)}
    assert reports["book/a"].problems == [
        "book/a: image file missing: _images/diagram.png",
        "book/a: image file missing: _images/abc.png",
    ]
    assert reports["book/c"].problems == [f"book/c: no page at {html / 'book' / 'c.html'}"]


def test_chapters_without_figures_still_need_a_table(tmp_path):
    toc = {"root": "book/t"}
    (tmp_path / "book").mkdir()
    (tmp_path / "book" / "t.ipynb").write_text("x")
    html = tmp_path / "html"
    (html / "book").mkdir(parents=True)
    table_only = '<div class="cell_output"><div class="output text_html"><table><tr><td>1</td></tr></table></div></div>'
    (html / "book" / "t.html").write_text(table_only)
    [strict] = check_book(toc, html, book_root=tmp_path)
    assert strict.problems == ["book/t: no figure in any cell output"]
    [lenient] = check_book(toc, html, book_root=tmp_path, without_figures=["book/t"])
    assert lenient.problems == []
    (html / "book" / "t.html").write_text('<div class="cell_output"><pre>only text</pre></div>')
    [empty] = check_book(toc, html, book_root=tmp_path, without_figures=["book/t"])
    assert empty.problems == ["book/t: neither a figure nor a table in any cell output"]


def test_bad_inputs_give_clear_errors(tmp_path):
    with pytest.raises(BookError, match="no table of contents"):
        toc_docnames(tmp_path / "missing.yml")
    with pytest.raises(BookError, match="root"):
        toc_docnames({"chapters": []})
    with pytest.raises(BookError, match="make book"):
        check_book({"root": "x"}, tmp_path / "nothing", book_root=tmp_path)


def test_the_real_toc_lists_existing_sources():
    """Every file in the repository's _toc.yml has a source, so the lead's toc never points nowhere."""
    pages = chapter_pages(TOC, REPO / "_build" / "html", notebooks_only=False)
    assert pages, "the table of contents lists no page"
    assert [p.docname for p in pages if p.source is None] == []


def test_make_book_keeps_figures():
    """`make book` must not hand the kernels a non-inline matplotlib backend.

    ipykernel picks the inline backend only when MPLBACKEND is unset; with
    MPLBACKEND=Agg every ``plt.show()`` in the book renders nothing.
    """
    make = shutil.which("make")
    if make is None:
        pytest.skip("make is not installed")
    dry = subprocess.run([make, "-n", "-C", str(REPO), "book"], capture_output=True, text=True, env=dict(os.environ, MAKEFLAGS=""))
    assert dry.returncode == 0, dry.stderr
    commands = dry.stdout.replace("\\\n", " ").splitlines()  # join continued recipe lines
    build_lines = [line for line in commands if "jupyter-book" in line]
    assert build_lines, dry.stdout
    wanted = f"MPLBACKEND={bookcheck.INLINE_BACKEND}"
    for line in build_lines:
        backends = [token for token in line.split() if token.startswith("MPLBACKEND=")]
        found = " ".join(backends) or "the caller's MPLBACKEND"
        assert backends == [wanted], (
            f"`make book` runs the kernels with {found}; with anything but the "
            f"inline backend (e.g. MPLBACKEND=Agg, which the test commands export) plt.show() draws nothing and "
            f"the book's figures are missing. Put {wanted} in front of jupyter-book in the Makefile."
        )


# ----------------------------------------------------------------------------- a tiny book with the real config
def _tiny_book(root: Path, cells: list[str]) -> Path:
    """A book made of a root page and one notebook with ``cells``, configured by the repo's _config.yml."""
    root.mkdir(parents=True, exist_ok=True)
    shutil.copy(CONFIG, root / "_config.yml")
    (root / "_toc.yml").write_text("format: jb-book\nroot: intro\nchapters:\n  - file: chapter\n")
    (root / "intro.md").write_text("# A tiny book\n\nBuilt by tests/test_book.py.\n")
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nb.cells = [nbformat.v4.new_markdown_cell("# The chapter")] + [nbformat.v4.new_code_cell(c) for c in cells]
    nbformat.write(nb, root / "chapter.ipynb")
    return root


def test_failing_notebook_fails_the_build(tmp_path):
    book = _tiny_book(
        tmp_path / "book",
        ["print('BOOKCHECK_BEFORE')", "raise RuntimeError('BOOKCHECK_BOOM: this notebook is broken')"],
    )
    start = time.perf_counter()
    proc = bookcheck.build_book(book, timeout=300)
    seconds = time.perf_counter() - start
    assert proc.returncode != 0, f"a failing notebook did not fail the build:\n{proc.stdout[-3000:]}"
    # The reader of the build log learns which notebook and which exception.
    assert "BOOKCHECK_BOOM: this notebook is broken" in proc.stdout
    assert "chapter.ipynb" in proc.stdout
    assert seconds < 120, f"tiny book build took {seconds:.0f} s"


def test_passing_notebook_renders_its_outputs(tmp_path):
    book = _tiny_book(
        tmp_path / "book",
        [
            "print('BOOKCHECK_MARKER', 6 * 7)",
            "import matplotlib.pyplot as plt\nfig, ax = plt.subplots(figsize=(2, 2))\nax.plot([0, 1], [1, 0])\nplt.show()",
        ],
    )
    proc = bookcheck.build_book(book, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:]
    page = book / "_build" / "html" / "chapter.html"
    html = page.read_text(encoding="utf-8")
    assert "BOOKCHECK_MARKER 42" in html
    figures = figures_in(html)
    assert len(figures) == 1, "the matplotlib figure is not on the page"
    assert missing_images(html, page) == []
    assert errors_in(html) == []
    reports = check_book(book / "_toc.yml", book / "_build" / "html")
    assert [r.problems for r in reports] == [[]]


# ----------------------------------------------------------------------------- the real book
@pytest.fixture(scope="module")
def built_book():
    """The HTML folder of the real book, ``$ICM_BOOK_HTML``."""
    given = os.environ.get("ICM_BOOK_HTML")
    if given:
        html = Path(given)
        if not html.is_absolute():
            html = REPO / html
        if not (html / "index.html").is_file():
            pytest.fail(f"ICM_BOOK_HTML={given} holds no built book (no index.html); run `make book` first")
        return html
    pytest.skip("no built book: `make book` builds it and runs this check on it "
                "(or set ICM_BOOK_HTML to a built _build/html)")


@pytest.mark.slow
def test_every_chapter_page_shows_its_figures(built_book):
    reports = check_book(TOC, built_book, book_root=REPO, without_figures=CHAPTERS_WITHOUT_FIGURES)
    assert reports, "no notebook chapter in _toc.yml"
    problems = [p for r in reports for p in r.problems]
    summary = "\n".join(r.summary() for r in reports)
    assert not problems, "\n".join(problems) + "\n\n" + summary
