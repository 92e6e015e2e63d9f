"""A tiny named registry: ``@registry.register("name")`` and ``registry.create("name")``.

Registries replace string surgery: spaces, seeds, block families and tasks are looked up by name, and an
unknown name produces an error listing the known ones and the closest match.

A registry fills itself on first use: ``loader`` imports the modules that register the built-in entries
(:func:`import_submodules` finds every public submodule of a package, so a new entry is a new file and no
list to edit), then :func:`load_plugins` imports what other installed packages declare under the entry-point
group (``[project.entry-points."fnatune.tasks"]`` in their ``pyproject.toml``).
"""
from __future__ import annotations

import difflib
import importlib
import pkgutil
import sys
from collections.abc import Callable
from typing import Any, Generic, TypeVar

from fnatune.errors import UnknownNameError

T = TypeVar("T")


def import_submodules(package: str) -> None:
    """Import every submodule of ``package`` whose name does not start with ``_`` (their registrations run)."""
    pkg = importlib.import_module(package)
    for info in sorted(pkgutil.iter_modules(pkg.__path__), key=lambda i: i.name):
        if not info.name.startswith("_"):
            importlib.import_module(f"{package}.{info.name}")


def load_plugins(group: str, registry: Registry[Any] | None = None) -> list[str]:
    """Import the modules other installed distributions declare under entry-point ``group``.

    A plugin that fails to import is named in one line on stderr and skipped, and whatever it registered into
    ``registry`` before failing is taken out again: the registry holds every built-in entry and every plugin that
    loaded, never half a plugin. Returns the failure lines (the registry keeps them for its unknown-name errors)."""
    from importlib.metadata import entry_points

    failures = []
    for ep in entry_points(group=group):
        before = set(registry._factories) if registry is not None else set()
        try:
            ep.load()
        except Exception as e:
            if registry is not None:
                registry._drop(set(registry._factories) - before)
            dist = getattr(getattr(ep, "dist", None), "name", None)
            first = str(e).strip().splitlines()[0] if str(e).strip() else ""
            line = (f"plugin '{ep.name} = {ep.value}'{f' of {dist}' if dist else ''} (entry points '{group}') failed "
                    f"to import: {type(e).__name__}{': ' + first if first else ''}; its entries are not registered")
            print(f"fnatune: {line}", file=sys.stderr)
            failures.append(line)
    if registry is not None:
        registry.plugin_failures = failures
    return failures


class Registry(Generic[T]):
    """Maps names to factories that build ``T``."""

    def __init__(self, kind: str, loader: Callable[[], None] | None = None) -> None:
        self.kind = kind
        self._factories: dict[str, Callable[..., T]] = {}
        self._docs: dict[str, str] = {}
        self._loader = loader
        self._loaded = loader is None
        self.plugin_failures: list[str] = []

    def _drop(self, names: set[str]) -> None:
        for name in names:
            self._factories.pop(name, None)
            self._docs.pop(name, None)

    def _ensure_loaded(self) -> None:
        if not self._loaded:
            self._loaded = True  # first: the modules the loader imports register into this registry
            assert self._loader is not None
            self._loader()

    def register(self, name: str, doc: str | None = None) -> Callable[[Callable[..., T]], Callable[..., T]]:
        """Decorator registering a factory under ``name``; re-registering a name is an error."""

        def deco(factory: Callable[..., T]) -> Callable[..., T]:
            if name in self._factories and self._factories[name] is not factory:
                raise ValueError(f"{self.kind} '{name}' is already registered")
            self._factories[name] = factory
            first_doc_line = (factory.__doc__ or "").strip().splitlines()
            self._docs[name] = doc or (first_doc_line[0] if first_doc_line else "")
            return factory

        return deco

    def names(self) -> list[str]:
        self._ensure_loaded()
        return sorted(self._factories)

    def doc(self, name: str) -> str:
        self.factory(name)
        return self._docs[name]

    def factory(self, name: str) -> Callable[..., T]:
        self._ensure_loaded()
        try:
            return self._factories[name]
        except KeyError:
            raise UnknownNameError(self.unknown_message(name)) from None

    def create(self, name: str, **kwargs: object) -> T:
        return self.factory(name)(**kwargs)

    def unknown_message(self, name: str) -> str:
        known = self.names()
        close = difflib.get_close_matches(name, known, n=1)
        hint = f" Did you mean '{close[0]}'?" if close else ""
        failed = f" ({'; '.join(self.plugin_failures)})" if self.plugin_failures else ""
        return f"unknown {self.kind} '{name}'.{hint} Known {self.kind}s: {', '.join(known) or '(none)'}.{failed}"

    def __contains__(self, name: object) -> bool:
        self._ensure_loaded()
        return name in self._factories
