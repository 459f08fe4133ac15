"""What the book build needs at build time: MathJax served offline (a Sphinx extension), the repository URL and notebook openings."""
