"""icmlib: Image Coding for Machines — codec, entropy coding, tasks, training, evaluation.

Every line of real code in the book lives here; the notebooks import it.
"""
__version__ = "0.2.0.dev0"  # the one place the version is written (pyproject reads it); see CHANGELOG.md

from icmlib.listing import show  # noqa: E402  (icmlib.show(obj): a function's source, highlighted)

__all__ = ["show", "__version__"]
