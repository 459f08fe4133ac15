"""Show the library's own code on the page: one source of truth for book and package.

A chapter that teaches a mechanism (the dynamic weighting schedule, the frozen task's loss,
a training step, the U-Net's skip connections) shows the function that *runs*, read from
``icmlib`` at build time, instead of a copy that could drift from it::

    from icmlib import show
    show(icmlib.training.weighting.Dynamic.weights)

In Jupyter (and the rendered book) the source is highlighted by Pygments with a header
naming the module and the lines; as plain text (a terminal, nbval's comparison) it is the
header and the source, so a test sees exactly what a reader sees.
"""
from __future__ import annotations

import html
import inspect
import textwrap
from pathlib import Path
from typing import Any, Optional

__all__ = ["show", "Source"]


class Source:
    """The source of one object: ``text`` (dedented), where it lives, and how to display it."""

    def __init__(self, obj: Any, lines: Optional[slice] = None):
        target = inspect.unwrap(obj.fget if isinstance(obj, property) else obj)
        try:
            src_lines, first = inspect.getsourcelines(target)
        except (TypeError, OSError) as exc:
            raise TypeError(f"show() needs a function, class, method or module of Python "
                            f"source; {obj!r} has none ({exc})") from None
        first = max(first, 1)  # a module reports line 0
        if lines is not None:
            picked = range(len(src_lines))[lines]
            src_lines = src_lines[picked.start:picked.stop:picked.step]
            first += picked.start
        self.text = textwrap.dedent("".join(src_lines)).rstrip() + "\n"
        self.first_line = first
        self.last_line = first + len(src_lines) - 1
        self.name = getattr(target, "__qualname__", getattr(target, "__name__", repr(target)))
        module = inspect.getmodule(target)
        self.module = module.__name__ if module else "?"
        self.path = Path(inspect.getsourcefile(target) or "?")

    @property
    def header(self) -> str:
        """``icmlib/…/file.py, lines a–b: module.name`` -- where a reader finds it."""
        parts = self.path.parts
        shown = "/".join(parts[parts.index("icmlib"):]) if "icmlib" in parts else self.path.name
        return f"# {shown}, lines {self.first_line}-{self.last_line}: {self.module}.{self.name}"

    def __str__(self) -> str:
        return f"{self.header}\n{self.text}"

    __repr__ = __str__

    def _repr_html_(self) -> str:
        from pygments import highlight
        from pygments.formatters import HtmlFormatter
        from pygments.lexers import PythonLexer

        body = highlight(self.text, PythonLexer(), HtmlFormatter(noclasses=True, nowrap=False))
        return (f'<div class="icmlib-source"><p style="margin:0;font-family:monospace;'
                f'font-size:85%;color:#555">{html.escape(self.header[2:])}</p>{body}</div>')


def show(obj: Any, lines: Optional[slice] = None) -> Source:
    """The source of ``obj`` (function, method, class, property or module) as displayed.

    ``lines`` picks part of it (a ``slice`` over the source's lines, 0 = its first line),
    for a long class whose one method is the point. Returns a :class:`Source`, which a
    notebook displays highlighted and ``print`` shows as text.
    """
    return Source(obj, lines)
