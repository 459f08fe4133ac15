"""icmlib.show: the book shows the library's real source, as text and as highlighted HTML."""
import inspect

import pytest

import icmlib
from icmlib import show
from icmlib.metrics import bpp


def test_show_is_the_source_the_library_runs():
    src = show(bpp)
    assert src.text == inspect.getsource(bpp)
    assert src.header.startswith("# icmlib/metrics.py, lines ")
    assert str(src).splitlines()[1] == src.text.splitlines()[0]
    first, last = src.first_line, src.last_line
    assert inspect.getsourcelines(bpp)[1] == first and last - first + 1 == len(src.text.splitlines())


def test_method_is_dedented_and_lines_pick_part():
    from icmlib.engine.report import Reporter
    method = show(Reporter.log)
    assert method.text.startswith("def log(")
    head = show(Reporter, lines=slice(0, 2))
    assert len(head.text.splitlines()) == 2 and head.last_line == head.first_line + 1


def test_html_is_highlighted_and_escaped():
    page = show(bpp)._repr_html_()
    assert "<span" in page and "icmlib/metrics.py" in page
    assert "def" in page and "<script" not in page


def test_objects_without_source_are_a_clear_error():
    with pytest.raises(TypeError, match="show\\(\\) needs"):
        show(42)
    with pytest.raises(TypeError, match="show\\(\\) needs"):
        show(len)


def test_exported_at_the_top():
    assert icmlib.show is show and "show" in icmlib.__all__
