"""Bundled search-space families, one module each, declaring their spaces with ``@register_space``.

:mod:`fnatune.space` imports every public module of this package the first time a space is looked up, so
adding a family is adding a module here. ``archs/`` holds architecture files (the released FNA archs and
each seed's own layout in a space).
"""
from pathlib import Path

ARCHS_DIR = Path(__file__).parent / "archs"
