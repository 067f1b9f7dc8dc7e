"""Sphinx configuration for cedana's documentation."""

project = "cedana"
author = "cedana developers"
extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.napoleon",
    "sphinx.ext.doctest",
    # Renders docs/cli.rst's reference from cedana.cli.build_parser(), so it cannot drift.
    "sphinxarg.ext",
]
autodoc_member_order = "bysource"
autodoc_typehints = "description"
nitpicky = False
exclude_patterns = ["_build"]
html_theme = "alabaster"
