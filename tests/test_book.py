"""The book as a reader gets it: the build fails on a failing notebook, every chapter
page exists and shows its figures, and every page reads well anywhere (issue 16): no
script from outside the site (MathJax is served by the site), the title first and the
install cell folded under it, no unfolded output over 40 lines, and, in a browser with
the network off, math rendered, figures loaded and nothing sticking out sideways. The
repository URL is said once (``_config.yml``) and the install cells and README agree.

Three kinds of test:

* unit tests of ``bookcheck`` on handmade HTML (fast);
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

import bookbrowser
import bookcheck
from icmlib.book import assets as bookassets, source as booksource
from bookcheck import (
    MAX_OUTPUT_LINES,
    BookError,
    chapter_pages,
    check_book,
    colab_links,
    errors_in,
    figures_in,
    first_content_element,
    long_outputs,
    missing_images,
    missing_resources,
    outside_resources,
    outside_resources_in_site,
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
<section id="chapter"><h1>The chapter</h1>
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
</section></article></main></body></html>
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


def _one_chapter_book(tmp_path):
    """A book of one chapter, book/t, and the empty folder its HTML goes to."""
    (tmp_path / "book").mkdir()
    (tmp_path / "book" / "t.ipynb").write_text("x")
    html = tmp_path / "html"
    (html / "book").mkdir(parents=True)
    return {"root": "book/t"}, html


def test_chapters_without_figures_still_need_a_table(tmp_path):
    toc, html = _one_chapter_book(tmp_path)
    table_only = '<h1>T</h1><div class="cell_output"><div class="output text_html"><table><tr><td>1</td></tr></table></div></div>'
    (html / "book" / "t.html").write_text(table_only)
    [strict] = check_book(toc, html, book_root=tmp_path)
    assert strict.problems == ["book/t: no figure in any cell output"]
    [lenient] = check_book(toc, html, book_root=tmp_path, without_figures=["book/t"])
    assert lenient.problems == []
    (html / "book" / "t.html").write_text('<h1>T</h1><div class="cell_output"><pre>only text</pre></div>')
    [empty] = check_book(toc, html, book_root=tmp_path, without_figures=["book/t"])
    assert empty.problems == ["book/t: neither a figure nor a table in any cell output"]


def test_bad_inputs_give_clear_errors(tmp_path):
    with pytest.raises(BookError, match="no table of contents"):
        toc_docnames(tmp_path / "missing.yml")
    with pytest.raises(BookError, match="root"):
        toc_docnames({"chapters": []})
    with pytest.raises(BookError, match="make book"):
        check_book({"root": "x"}, tmp_path / "nothing", book_root=tmp_path)


# ----------------------------------------------------------------------------- reading well anywhere (issue 16)
def _cell(output: str, tags=(), details=False) -> str:
    classes = " ".join(["cell"] + [f"tag_{t}" for t in tags] + ["docutils", "container"])
    out = f'<div class="cell_output docutils container">{output}</div>'
    if details:
        out = f'<details class="hide below-input"><summary>Show code cell output</summary>{out}</details>'
    return f'<div class="{classes}"><div class="cell_input"><pre>x</pre></div>{out}</div>'


def _stream(lines: int) -> str:
    text = "\n".join(f"step {i}: bpp=0.5" for i in range(lines))
    return f'<div class="output stream highlight-myst-ansi notranslate"><pre>{text}</pre></div>'


def test_outside_scripts_and_stylesheets_are_found(tmp_path):
    page = tmp_path / "book" / "ch.html"
    (tmp_path / "_static").mkdir()
    (tmp_path / "_static" / "here.js").write_text("")
    html = """<html><head>
      <script src="https://cdn.jsdelivr.net/npm/mathjax@3/es5/tex-mml-chtml.js"></script>
      <script src="//unpkg.com/thing.js"></script>
      <script src="../_static/here.js?v=1"></script>
      <script src="../_static/mathjax/tex-mml-chtml.js"></script>
      <script type="application/vnd.jupyter.widget-state+json">{}</script>
      <link rel="stylesheet" href="https://fonts.example.org/font.css">
      <link rel="stylesheet" href="data:text/css,body{}">
      <link rel="canonical" href="https://example.org/ch.html">
    </head><body><article><h1>T</h1></article></body></html>"""
    assert outside_resources(html) == [
        "https://cdn.jsdelivr.net/npm/mathjax@3/es5/tex-mml-chtml.js",
        "//unpkg.com/thing.js",
        "https://fonts.example.org/font.css",
    ]
    assert missing_resources(html, page) == ["../_static/mathjax/tex-mml-chtml.js"]
    page.parent.mkdir()
    page.write_text(html)
    (tmp_path / "index.html").write_text("<html><head></head><body></body></html>")
    assert list(outside_resources_in_site(tmp_path)) == ["book/ch.html"]


def test_the_title_comes_first():
    assert first_content_element(PAGE) == "h1"
    code_first = '<article><div class="cell docutils container"><pre>%pip install</pre></div><section><h1>T</h1></section></article>'
    assert first_content_element(code_first) == "code cell"
    # a label target or an empty wrapper before the title is not content
    assert first_content_element('<article><span id="x"></span><section><h1>T</h1><p>p</p></section></article>') == "h1"
    assert first_content_element("<article></article>") is None


def test_long_outputs_must_be_folded():
    limit = MAX_OUTPUT_LINES
    html = "<article>" + "".join([
        _cell(_stream(limit)),                          # at the limit: fine
        _cell(_stream(limit + 1)),                      # over it and shown: a problem
        _cell(_stream(limit + 30), ["hide-output"], details=True),  # folded
        _cell(_stream(limit + 30), ["scroll-output"]),  # in its own scroll box
    ]) + "</article>"
    assert long_outputs(html) == [(limit + 1, "step 0: bpp=0.5")]
    opened = _cell(_stream(limit + 5), details=True).replace("<details ", "<details open ")
    assert long_outputs(f"<article>{opened}</article>") == [(limit + 5, "step 0: bpp=0.5")]


def test_page_report_says_what_breaks_the_reading(tmp_path):
    toc, html = _one_chapter_book(tmp_path)
    figure = '<img src="data:image/png;base64,iVBORw0KGgo=" />'
    (html / "book" / "t.html").write_text(
        '<html><head><script src="https://cdn.example.org/mathjax.js"></script></head><body><article>'
        + _cell(figure) + "<section><h1>T</h1>" + _cell(_stream(60)) + "</section></article></body></html>")
    [report] = check_book(toc, html, book_root=tmp_path)
    problems = "\n".join(report.problems)
    assert "loads https://cdn.example.org/mathjax.js from outside the site" in problems
    assert "opens with code cell, not its title (h1)" in problems
    assert "an unfolded output of 60 lines" in problems and "hide-output" in problems
    assert len(report.problems) == 3


def test_mathjax_is_served_by_the_site(tmp_path):
    """_config.yml loads the extension and points mathjax_path into _static; the package
    that ships MathJax is installed and its copy holds the entry script and the fonts."""
    import yaml

    config = yaml.safe_load(CONFIG.read_text())
    assert "icmlib.book.assets" in config["sphinx"]["extra_extensions"]
    assert config["sphinx"]["config"]["mathjax_path"] == f"{bookassets.STATIC_SUBDIR}/{bookassets.ENTRY}"
    assert config["sphinx"]["config"]["nb_ipywidgets_js"] == {}  # no widget JavaScript from a CDN
    written = bookassets.copy_mathjax(tmp_path / "mathjax")
    assert (tmp_path / "mathjax" / bookassets.ENTRY).stat().st_size > 500_000
    assert list((tmp_path / "mathjax" / "output" / "chtml" / "fonts").rglob("MathJax_Main-Regular.woff"))
    assert list((tmp_path / "mathjax" / "input" / "tex" / "extensions").glob("*.js"))
    assert len(written) == len(bookassets.PARTS)
    with pytest.raises(bookassets.MathJaxMissing, match="reinstall django-static-mathjax"):
        bookassets.copy_mathjax(tmp_path / "out", source=tmp_path / "nowhere")


def test_mathjax_path_from_a_cdn_is_refused():
    from types import SimpleNamespace

    from sphinx.errors import ConfigError

    with pytest.raises(ConfigError, match="outside the site"):
        bookassets._check_path(None, SimpleNamespace(mathjax_path="https://cdn.jsdelivr.net/npm/mathjax@3/es5/tex-mml-chtml.js"))
    bookassets._check_path(None, SimpleNamespace(mathjax_path="mathjax/tex-mml-chtml.js"))


def test_every_chapter_opens_with_its_title_then_the_folded_install_cell():
    problems = [p for nb in sorted((REPO / "book").glob("*.ipynb")) for p in booksource.opening_problems(nb)]
    assert not problems, "\n".join(problems)


def test_opening_problems_are_named(tmp_path):
    install = nbformat.v4.new_code_cell('import sys\nif "google.colab" in sys.modules:\n    %pip install -q "icmlib[book] @ git+https://github.com/a/b"')
    title = nbformat.v4.new_markdown_cell("# Title\n\nWhat the chapter does.")
    cases = {
        "good": ([title, _tagged(install, "hide-input")], []),
        "code_first": ([_tagged(install, "hide-input"), title], ["first cell is not the chapter's title",
                                                                 "must be the second cell"]),
        "unfolded": ([title, install], ["not folded"]),
        "no_promise": ([nbformat.v4.new_markdown_cell("# Title"), _tagged(install, "hide-input")],
                       ["no paragraph"]),
    }
    for name, (cells, expected) in cases.items():
        nb = nbformat.v4.new_notebook()
        nb.cells = [nbformat.from_dict(dict(c)) for c in cells]
        nbformat.write(nb, tmp_path / f"{name}.ipynb")
        problems = booksource.opening_problems(tmp_path / f"{name}.ipynb")
        assert len(problems) == len(expected), (name, problems)
        for problem, words in zip(problems, expected):
            assert words in problem, (name, problem)


def _tagged(cell, tag):
    cell = nbformat.from_dict(dict(cell))
    cell.metadata = {"tags": [tag]}
    return cell


def test_the_repository_url_is_said_once():
    """_config.yml's repository.url (the launch buttons) and every git+ URL agree."""
    assert booksource.book_problems(REPO) == []
    mentions = booksource.repository_mentions(REPO)
    assert mentions["README.md"] and all(mentions[n] for n in mentions if n.endswith(".ipynb"))


def test_a_fork_changes_the_url_everywhere_with_one_command(tmp_path):
    (tmp_path / "book").mkdir()
    for name in ("_config.yml", "README.md", "book/intro.md", "book/01_coding_for_machines.ipynb"):
        shutil.copy(REPO / name, tmp_path / name)
    fork = "https://github.com/someone/icm-fork"
    assert booksource.main(["--root", str(tmp_path), "--set-repository", fork + ".git"]) == 0
    assert booksource.repository_url(tmp_path) == fork
    assert booksource.book_problems(tmp_path) == []
    for name in ("README.md", "book/intro.md", "book/01_coding_for_machines.ipynb"):
        assert f"git+{fork}" in (tmp_path / name).read_text() and "icm-book/icm-book" not in (tmp_path / name).read_text()
    nbformat.validate(nbformat.read(tmp_path / "book/01_coding_for_machines.ipynb", 4))
    # the README now disagrees with the config: the check names the file
    (tmp_path / "README.md").write_text("pip install git+https://github.com/elsewhere/x\n")
    assert booksource.book_problems(tmp_path) == [
        f"README.md: names https://github.com/elsewhere/x, _config.yml's repository.url is {fork}"]
    with pytest.raises(ValueError, match="github.com/OWNER/NAME"):
        booksource.set_repository_url("https://gitlab.com/someone/icm", tmp_path)


@pytest.fixture(scope="module")
def chromium():
    found = bookbrowser.find_chromium()
    if found is None:
        pytest.skip("no Chromium (apt-get install -y chromium): the browser checks need one")
    return found


def test_the_browser_checklist_can_fail(tmp_path, chromium):
    """On a handmade page with raw TeX, a broken image, an overflowing box and code first,
    opened offline, every item of the checklist fires."""
    page = tmp_path / "page.html"
    page.write_text(
        '<html><head><script src="https://cdn.jsdelivr.net/npm/mathjax@3/es5/tex-mml-chtml.js"></script></head>'
        '<body style="margin:0"><article style="width:600px">'
        '<div class="cell"><pre>%pip install</pre></div><h1>T</h1>'
        '<p><span class="math notranslate nohighlight">\\(x^2\\)</span></p>'
        '<img src="_images/missing.png"><pre style="width:2000px">wide</pre>'
        "</article></body></html>")
    report = bookbrowser.probe_page(chromium, page, wait_ms=3000)
    problems = "\n".join(bookbrowser.checklist(report))
    for words in ("raw TeX", "did not load", "overflow", "sticking out", "opens with code cell",
                  "fetched from outside the site: https://cdn.jsdelivr.net"):
        assert words in problems, problems
    assert [p.name for p in tmp_path.iterdir()] == ["page.html"]  # the probed copy is gone


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
    nb.cells = [nbformat.v4.new_markdown_cell("# The chapter\n\nWith math: $L = R + \\lambda D$.")] + [
        nbformat.v4.new_code_cell(c) for c in cells]
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
    # the repository's _config.yml serves MathJax from the site itself, nothing from outside
    assert outside_resources_in_site(book / "_build" / "html") == {}
    assert (book / "_build" / "html" / "_static" / bookassets.STATIC_SUBDIR / bookassets.ENTRY).is_file()
    assert first_content_element(html) == "h1"


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


@pytest.mark.slow
def test_every_chapter_page_loads_nothing_from_outside(built_book):
    """Every page of the site (chapters, index, search) works offline: no CDN script or style."""
    assert outside_resources_in_site(built_book) == {}
    assert (built_book / "_static" / bookassets.STATIC_SUBDIR / bookassets.ENTRY).is_file()


@pytest.mark.slow
def test_every_chapter_page_launches_the_configured_repository(built_book):
    """The launch buttons open the repository of _config.yml, the one the install cells name."""
    url = booksource.repository_url(REPO)
    colab = url.replace("https://github.com/", "https://colab.research.google.com/github/")
    for page in chapter_pages(TOC, built_book, REPO):
        links = colab_links(page.html.read_text(encoding="utf-8"))
        assert links and all(link.startswith(colab + "/") for link in links), (page.docname, links, colab)


@pytest.mark.slow
def test_every_chapter_page_in_a_browser_offline(built_book, chromium):
    """The screenshots' checklist on every chapter, in Chromium with the network off: math
    rendered, figures loaded, no horizontal overflow, title first, nothing from outside."""
    problems = []
    for page in chapter_pages(TOC, built_book, REPO, notebooks_only=False):
        report = bookbrowser.probe_page(chromium, page.html)
        problems += [f"{page.docname}: {p}" for p in bookbrowser.checklist(report)]
    assert not problems, "\n".join(problems)
