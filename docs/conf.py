"""Sphinx configuration of the pyro_flows documentation.

Build it with ``sphinx-build -W --keep-going -b html docs docs/_build/html`` (CI does, warnings
as errors). Nothing here reaches the network: no intersphinx, and tutorials are not executed.
"""

import ast
import os
import sys

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
sys.path.insert(0, ROOT)  # autodoc imports the source tree, installed or not


def _version() -> str:
    """``pyro_flows.__version__``, read without importing the package (a broken import would
    otherwise stop the build before autodoc can say which module fails)."""
    with open(os.path.join(ROOT, "pyro_flows", "__init__.py")) as f:
        for node in ast.parse(f.read()).body:
            if isinstance(node, ast.Assign) and any(
                getattr(t, "id", None) == "__version__" for t in node.targets
            ):
                return ast.literal_eval(node.value)
    raise RuntimeError("pyro_flows/__init__.py defines no __version__")


project = "pyro_flows"
author = "The pyro_flows developers"
copyright = "2026, The pyro_flows developers"  # noqa: A001
version = release = _version()

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.napoleon",
    "sphinx.ext.mathjax",
    "sphinx.ext.viewcode",
    "myst_parser",
]

source_suffix = {".rst": "restructuredtext", ".md": "markdown"}
root_doc = "index"
exclude_patterns = ["_build", "Thumbs.db", ".DS_Store"]
nitpicky = False

# autodoc: signatures stay short, types go into the parameter descriptions.
autodoc_typehints = "description"
autodoc_member_order = "bysource"
autodoc_default_options = {"members": True, "show-inheritance": True}
autosummary_generate = True

# napoleon: Google-style docstrings only (Arguments:, Returns:, Example:, References:).
napoleon_google_docstring = True
napoleon_numpy_docstring = False
napoleon_use_rtype = False

# MyST: $...$ / $$...$$ math and ::: fences in the markdown tutorials.
myst_enable_extensions = ["dollarmath", "colon_fence"]
myst_heading_anchors = 3

html_theme = "furo"
html_title = f"pyro_flows {release}"
