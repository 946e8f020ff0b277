"""Sphinx configuration of optlab's documentation site.

Build (from the repository root, with the ``docs`` extra installed)::

    sphinx-build -W -b html docs docs/_build/html

The notebooks in ``notebooks/`` are rendered from their stored outputs (myst-nb with
execution off): CI executes them separately (``tests/test_notebooks.py``), so the docs build
stays fast and never needs an accelerator. They are copied into ``docs/notebooks/`` (ignored
by git) at the start of the build because Sphinx only reads files under its source folder.
"""

from __future__ import annotations

import shutil
from pathlib import Path

DOCS = Path(__file__).resolve().parent
ROOT = DOCS.parent


def _copy_notebooks() -> None:
    """Mirror notebooks/*.ipynb into docs/notebooks (stale copies removed): the README's links
    to notebooks/NAME.ipynb then resolve from docs/readme.md as they do on GitHub."""
    target = DOCS / "notebooks"
    if target.exists():
        shutil.rmtree(target)
    target.mkdir()
    for path in sorted((ROOT / "notebooks").glob("*.ipynb")):
        shutil.copy2(path, target / path.name)


_copy_notebooks()

project = "optlab"
author = "optlab authors"
copyright = "optlab authors, Apache-2.0"  # noqa: A001 (Sphinx's name for it)

extensions = [
    "myst_nb",
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.napoleon",
    "sphinx.ext.mathjax",
    "sphinx.ext.viewcode",
]

# The notebooks come as .ipynb with stored outputs; the paired py:percent files are sources
# for editing and are not pages.
source_suffix = {".rst": "restructuredtext", ".md": "myst-nb", ".ipynb": "myst-nb"}
exclude_patterns = ["_build", "**.ipynb_checkpoints", "Thumbs.db", ".DS_Store"]

# Rendered from stored outputs, never executed here (tests/test_notebooks.py executes them).
nb_execution_mode = "off"
# Colab badges and README links point at GitHub / Colab, outside the site.
myst_enable_extensions = ["dollarmath", "colon_fence"]
myst_heading_anchors = 3

autosummary_generate = True
autodoc_default_options = {"members": True, "show-inheritance": False}
autodoc_member_order = "bysource"
# Signatures carry the hints; the docstrings already describe every argument in words.
autodoc_typehints = "signature"
napoleon_google_docstring = True
napoleon_numpy_docstring = False
napoleon_use_rtype = False
# NamedTuple states document their fields in "Attributes:"; as :ivar: fields they do not
# clash with the field descriptions autodoc generates for the same names.
napoleon_use_ivar = True

html_theme = "furo"
html_title = "optlab"
html_static_path: list[str] = []
