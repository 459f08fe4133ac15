"""Sphinx extension: the built book serves MathJax itself, so its math renders offline.

Sphinx's default ``mathjax_path`` is a CDN address: a reader without network (a
laptop on a train, a lab machine behind a firewall, the project's own screenshot
checks) then sees every equation as raw TeX. This extension copies MathJax 3 from
an installed Python package (``django-static-mathjax``, which ships MathJax's
``es5`` build and needs nothing else; the ``book`` extra installs it) into the
site's ``_static/mathjax/`` at build time. ``_config.yml`` points Sphinx's
``mathjax_path`` at the copy and loads this extension::

    sphinx:
      extra_extensions: [icmlib.book.assets]
      config:
        mathjax_path: mathjax/tex-mml-chtml.js

Nothing of MathJax is committed to the repository: the package pins the version
(``pyproject.toml``), and the build copies only the parts a page can load (the
entry script, TeX input and its extensions, HTML-CSS output with its fonts, the
menu and the accessibility components): about 9 MB of the package's 24 MB.
"""
from __future__ import annotations

import shutil
from pathlib import Path

#: Sphinx's ``mathjax_path`` is relative to the site's ``_static`` folder.
STATIC_SUBDIR = "mathjax"
#: The entry script Sphinx's own default loads (TeX and MathML input, CommonHTML output).
ENTRY = "tex-mml-chtml.js"
#: What a page may load from the MathJax folder besides the entry script: TeX
#: extensions autoloaded by a macro, the CommonHTML output's fonts, the right-click
#: menu and the accessibility components the menu offers (with their speech rules).
PARTS = (ENTRY, "input", "output/chtml.js", "output/chtml", "ui", "a11y", "sre")
PACKAGE = "django-static-mathjax"


class MathJaxMissing(RuntimeError):
    """No installed package provides MathJax's files."""


def mathjax_source() -> Path:
    """The folder of MathJax's ``es5`` build inside the installed package.

    Raises :class:`MathJaxMissing`, with the command that fixes it, when the package
    is not installed (a book built without it would load MathJax from nowhere).
    """
    try:
        from importlib.resources import files

        root = Path(str(files("mathjax"))) / "static" / "mathjax" / "es5"
    except (ImportError, ModuleNotFoundError, TypeError):
        root = None
    if root is None or not (root / ENTRY).is_file():
        raise MathJaxMissing(
            f"MathJax's files are not installed, so the book's math cannot be served offline: "
            f"pip install '{PACKAGE}' (it comes with `pip install -e .[book]` / `make setup`)")
    return root


def copy_mathjax(dest: Path, source: Path | None = None) -> list[Path]:
    """Copy the parts of MathJax a page loads from ``source`` (default: the package) into ``dest``.

    Returns the paths written under ``dest`` (top level only). Parts already there
    are replaced, so a rebuild after a package upgrade serves the new version.
    """
    source = mathjax_source() if source is None else Path(source)
    dest = Path(dest)
    written = []
    for part in PARTS:
        src, out = source / part, dest / part
        if not src.exists():
            raise MathJaxMissing(f"MathJax at {source} has no {part}: reinstall {PACKAGE}")
        out.parent.mkdir(parents=True, exist_ok=True)
        if src.is_dir():
            shutil.rmtree(out, ignore_errors=True)
            shutil.copytree(src, out)
        else:
            shutil.copyfile(src, out)
        written.append(out)
    return written


def _check_path(app, config) -> None:
    """Fail early when ``mathjax_path`` still points outside the site."""
    path = str(config.mathjax_path or "")
    if "://" in path or path.startswith("//"):
        from sphinx.errors import ConfigError

        raise ConfigError(
            f"mathjax_path is {path!r}, outside the site: with {__name__} loaded it must be "
            f"'{STATIC_SUBDIR}/{ENTRY}' (set sphinx.config.mathjax_path in _config.yml)")


def _copy_into_site(app, exception) -> None:
    if exception is None and app.builder.format == "html":
        copy_mathjax(Path(app.outdir) / "_static" / STATIC_SUBDIR)


def setup(app):
    """Sphinx entry point: check ``mathjax_path`` and copy MathJax into ``_static`` after a build."""
    mathjax_source()  # a missing package fails the build at once, not after an hour of notebooks
    app.connect("config-inited", _check_path)
    app.connect("build-finished", _copy_into_site)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
