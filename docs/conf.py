"""Sphinx configuration of the keras-lars documentation (`make docs`).

Why Sphinx: it is actively maintained (MkDocs 1.x has had no release since
2024 and Material for MkDocs is in maintenance mode), autodoc reads the
docstrings of the installed package, so they are the one source of the API
reference, MyST reads the Markdown pages, and sphinx-argparse renders the
trainer's own `argparse` parser. The build is strict (`-W -n`, in
`make test`): a broken link, a missing image or page, or a docstring
reference to a `keras_lars` name that does not resolve fails it. It needs no
network (no intersphinx).
"""

import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "_ext"))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

project = "keras-lars"
author = "the keras-lars authors"
copyright = "2026, the keras-lars authors"

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.napoleon",
    "myst_parser",
    "sphinxarg.ext",
    "docstrings",
]

source_suffix = {".md": "markdown"}
root_doc = "index"
exclude_patterns = ["_build", "results/**", "_ext", "README.md"]
myst_heading_anchors = 3
myst_enable_extensions = ["dollarmath"]

# Single backticks in docstrings are inline code, as in Markdown.
default_role = "code"

autodoc_member_order = "bysource"
autodoc_typehints = "none"
autodoc_default_options = {"show-inheritance": True}
napoleon_google_docstring = True
napoleon_numpy_docstring = False
napoleon_use_ivar = True  # Attributes as fields: no second description of each
napoleon_custom_sections = [("References", "notes_style")]

# Every warning fails the build; these are external names without an
# inventory offline (no intersphinx): Keras, TensorFlow, NumPy, builtins.
nitpicky = True
nitpick_ignore_regex = [
    (r"py:.*", r"(keras|tf|tensorflow|np|numpy|jax)(\..*)?"),
    (r"py:.*", r"(object|int|float|str|bool|list|tuple|dict|Exception|ValueError|TypeError|RuntimeError)"),
]

# MyST asks every domain to resolve its links; sphinx-argparse's cannot.
suppress_warnings = ["myst.domains"]

html_theme = "furo"
html_title = "keras-lars"
html_static_path = []
