"""Sphinx configuration of the documentation site (``nox -s docs`` builds it with warnings as errors).

The pages are the Markdown files of this folder (read by myst-parser), parts of the README and of
benchmarks/RESULTS.md included from where they live, and an API reference generated from the
NumPy-style docstrings (numpydoc).
"""

from __future__ import annotations

import arrayloss

project = "arrayloss"
author = "the arrayloss developers"
copyright = "the arrayloss developers"
version = release = arrayloss.__version__

extensions = [
    "myst_parser",
    "numpydoc",
    "sphinx.ext.autodoc",
    "sphinx.ext.mathjax",
]
source_suffix = {".rst": "restructuredtext", ".md": "markdown"}
root_doc = "index"
exclude_patterns = ["_build"]

# Headings down to ### get anchors, so that [text](page.md#heading) links resolve (and are checked).
myst_heading_anchors = 3
myst_enable_extensions = ["dollarmath"]

# numpydoc: no autosummary tables of class members (the API is functions), no "See Also" guessing.
numpydoc_show_class_members = False
numpydoc_xref_param_type = False
autodoc_typehints = "none"  # the signatures show the types; the docstrings say what they mean
autodoc_member_order = "bysource"

html_theme = "alabaster"
html_title = f"arrayloss {release}"
html_static_path: list[str] = []
