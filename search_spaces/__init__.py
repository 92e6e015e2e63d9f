"""Bundled search-space families. Importing this package registers them with :mod:`fnatune.space`.

One module per family; each declares its spaces with ``@register_space``. Add a family by adding a
module here and importing it below.
"""
from search_spaces import mbv2  # noqa: F401

ARCHS_DIR = __import__("pathlib").Path(__file__).parent / "archs"
