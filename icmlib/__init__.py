"""icmlib: Image Coding for Machines — codec, entropy coding, tasks, training, evaluation.

Every line of real code in the book lives here; the notebooks import it.
"""
__version__ = "0.2.0.dev0"  # the one place the version is written (pyproject reads it); see CHANGELOG.md
