"""The book's sources, checked before any build: chapter openings and the repository URL.

Two rules a reader meets on every page, checked here on the ``.ipynb`` files (fast, no
build) and again by :mod:`bookcheck` on the built HTML:

* **A chapter opens with its title.** The first cell is markdown starting ``# Title``
  (with the chapter's promise), the second is the Colab install cell, folded
  (``hide-input``): a reader sees the chapter's name first, not ``%pip install``.
* **The repository URL is said once.** ``_config.yml``'s ``repository.url`` is the one
  place: the launch buttons are built from it, and the install cells, ``README.md`` and
  ``book/intro.md`` must name the same repository. A fork changes all of them with::

      python -m icmlib.book.source --set-repository https://github.com/YOU/icm-book
"""
from __future__ import annotations

import json
import re
import sys
from pathlib import Path

__all__ = [
    "INSTALL_MARKER",
    "REPOSITORY_FILES",
    "repository_url",
    "repository_mentions",
    "set_repository_url",
    "opening_problems",
    "book_problems",
    "main",
]

#: How the Colab install cell is recognised.
INSTALL_MARKER = '"google.colab" in sys.modules'
#: Files besides the notebooks that name the repository (a ``git+`` URL).
REPOSITORY_FILES = ("README.md", "book/intro.md")

_GIT_URL = re.compile(r"git\+(https?://[^\s\"'`)<>\\]+)")
_CONFIG_URL = re.compile(r"^(repository:\s*\n(?:[ \t]+.*\n)*?[ \t]+url:[ \t]*)(\S+)", re.M)
_GITHUB = re.compile(r"^https://github\.com/[\w.-]+/[\w.-]+$")


def repository_url(root=".") -> str:
    """``repository.url`` of ``<root>/_config.yml``: the one place the URL is set."""
    path = Path(root) / "_config.yml"
    match = _CONFIG_URL.search(path.read_text(encoding="utf-8"))
    if match is None:
        raise ValueError(f"{path} has no repository.url")
    return match.group(2)


def _notebooks(root) -> list[Path]:
    return sorted((Path(root) / "book").glob("*.ipynb"))


def repository_mentions(root=".") -> dict[str, list[str]]:
    """``{file: [URLs]}``: every ``git+URL`` in the install cells, the README and the intro."""
    root = Path(root)
    found = {}
    for path in [root / name for name in REPOSITORY_FILES] + _notebooks(root):
        if path.is_file():
            found[str(path.relative_to(root))] = _GIT_URL.findall(path.read_text(encoding="utf-8"))
    return found


def set_repository_url(url: str, root=".") -> list[Path]:
    """Point ``_config.yml``, every install cell, the README and the intro at ``url``.

    Returns the files changed. ``url`` must be a GitHub repository
    (``https://github.com/OWNER/NAME``): Colab's launch links need one.
    """
    url = url.rstrip("/")
    if url.endswith(".git"):
        url = url[:-4]
    if not _GITHUB.match(url):
        raise ValueError(f"{url!r} is not https://github.com/OWNER/NAME: the Colab launch "
                         f"buttons open notebooks from a GitHub repository")
    root = Path(root)
    config = root / "_config.yml"
    text = config.read_text(encoding="utf-8")
    if _CONFIG_URL.search(text) is None:
        raise ValueError(f"{config} has no repository.url to change")
    changed = []
    new = _CONFIG_URL.sub(lambda m: m.group(1) + url, text, count=1)
    if new != text:
        config.write_text(new, encoding="utf-8")
        changed.append(config)
    for path in [root / name for name in REPOSITORY_FILES] + _notebooks(root):
        if not path.is_file():
            continue
        text = path.read_text(encoding="utf-8")
        new = _GIT_URL.sub(f"git+{url}", text)
        if new != text:
            path.write_text(new, encoding="utf-8")
            changed.append(path)
    return changed


def _source(cell) -> str:
    source = cell.get("source", "")
    return "".join(source) if isinstance(source, list) else source


def opening_problems(notebook) -> list[str]:
    """Why a chapter notebook does not open with title, promise, then the folded install cell."""
    path = Path(notebook)
    cells = json.loads(path.read_text(encoding="utf-8")).get("cells", [])
    name = path.name
    if len(cells) < 2:
        return [f"{name}: fewer than two cells"]
    first, second = cells[0], cells[1]
    problems = []
    if first.get("cell_type") != "markdown" or not _source(first).startswith("# "):
        problems.append(f"{name}: the first cell is not the chapter's title (markdown '# ...')")
    elif len([b for b in _source(first).split("\n\n")[1:] if b.strip()]) == 0:
        problems.append(f"{name}: the title cell has no paragraph saying what the chapter does")
    installs = [i for i, c in enumerate(cells)
                if c.get("cell_type") == "code" and INSTALL_MARKER in _source(c)]
    if installs != [1]:
        where = "none" if not installs else ", ".join(str(i) for i in installs)
        problems.append(f"{name}: the install cell must be the second cell, once (found at: {where})")
    elif "hide-input" not in (second.get("metadata", {}).get("tags") or []):
        problems.append(f"{name}: the install cell is not folded (cell tag hide-input)")
    return problems


def book_problems(root=".") -> list[str]:
    """Every chapter's opening, and every repository URL against ``_config.yml``'s."""
    root = Path(root)
    url = repository_url(root)
    problems = []
    if not _GITHUB.match(url):
        problems.append(f"_config.yml: repository.url {url!r} is not https://github.com/OWNER/NAME")
    for path in _notebooks(root):
        problems += opening_problems(path)
    for name, urls in repository_mentions(root).items():
        notebook = name.endswith(".ipynb")
        if notebook and not urls:
            problems.append(f"{name}: the install cell names no git+ repository URL")
        for other in urls:
            if other != url:
                problems.append(f"{name}: names {other}, _config.yml's repository.url is {url}")
    return problems


def main(argv=None) -> int:
    """``python -m icmlib.book.source [--root .] [--set-repository URL]``: check, or change the URL."""
    import argparse

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", default=".", help="the repository (holds _config.yml and book/)")
    parser.add_argument("--set-repository", metavar="URL",
                        help="point _config.yml, the install cells and the README at this GitHub repository")
    args = parser.parse_args(argv)
    try:
        if args.set_repository:
            for path in set_repository_url(args.set_repository, args.root):
                print(f"changed {path}")
        problems = book_problems(args.root)
    except (OSError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    for problem in problems:
        print("PROBLEM", problem)
    if not problems:
        print(f"chapters open with their titles; every install cell and the README name {repository_url(args.root)}")
    return 1 if problems else 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
