"""A tiny named registry: ``@registry.register("name")`` and ``registry.create("name")``.

Registries replace string surgery: spaces, seeds and (later) tasks are looked up by name, and an unknown
name produces an error listing the known ones and the closest match.
"""
from __future__ import annotations

import difflib
from collections.abc import Callable
from typing import Generic, TypeVar

from fnatune.errors import UnknownNameError

T = TypeVar("T")


class Registry(Generic[T]):
    """Maps names to factories that build ``T``."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._factories: dict[str, Callable[..., T]] = {}
        self._docs: dict[str, str] = {}

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
        return sorted(self._factories)

    def doc(self, name: str) -> str:
        self.factory(name)
        return self._docs[name]

    def factory(self, name: str) -> Callable[..., T]:
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
        return f"unknown {self.kind} '{name}'.{hint} Known {self.kind}s: {', '.join(known) or '(none)'}."

    def __contains__(self, name: object) -> bool:
        return name in self._factories
