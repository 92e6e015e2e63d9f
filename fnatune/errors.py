"""Errors a user can act on.

Every error raised on purpose by fnatune derives from :class:`FnatuneError`. The CLI prints these as one
clear message without a traceback; anything else is a bug and keeps its traceback.
"""
from __future__ import annotations


class FnatuneError(Exception):
    """Base class: something the user can fix (a name, a file, an argument)."""


class UnknownNameError(FnatuneError, LookupError):
    """A registry lookup (space, seed, op, task ...) found no such name."""


class ArchError(FnatuneError, ValueError):
    """An architecture or search-space definition is malformed or does not fit its space."""


class SeedError(FnatuneError, ValueError):
    """A seed checkpoint cannot be read or does not match its seed family."""


class RemapError(FnatuneError, ValueError):
    """Two networks cannot be remapped onto each other (e.g. different stage counts)."""


class MissingPathError(FnatuneError, FileNotFoundError):
    """A file or folder the user named does not exist."""


class DataError(FnatuneError):
    """A sample that cannot be loaded: it fails the same way on every retry, so a trial stops at once."""


class DiskFullError(FnatuneError, OSError):
    """A write failed for lack of space (or quota). The file it would have replaced is untouched, so the run
    stops with the last good state on disk and ``fnatune resume`` continues once space is freed."""
