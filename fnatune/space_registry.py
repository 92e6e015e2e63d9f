"""The catalog of registered search spaces: ``@register_space("name")`` on a zero-argument factory, then
:func:`get_space` / :func:`list_spaces`.

The bundled families are the public modules of ``search_spaces/`` (imported the first time a space is
looked up); other packages add theirs under the ``fnatune.spaces`` entry-point group. The catalog is apart
from the space DSL (:mod:`fnatune.space`) so that architectures can name their space without depending on it.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from fnatune.errors import ArchError
from fnatune.registry import Registry, import_submodules, load_plugins

if TYPE_CHECKING:
    from fnatune.space import SearchSpace

# the bundled families (every public module of search_spaces/), then other packages' under "fnatune.spaces"
_SPACES: Registry[SearchSpace] = Registry(
    "search space", loader=lambda: (import_submodules("search_spaces"), load_plugins("fnatune.spaces")))


def register_space(name: str) -> Callable[[Callable[[], SearchSpace]], Callable[[], SearchSpace]]:
    """Decorator registering a zero-argument factory that returns a :class:`SearchSpace`."""
    return _SPACES.register(name)


def list_spaces() -> list[str]:
    return _SPACES.names()


def get_space(name: str) -> SearchSpace:
    """The registered space ``name`` (``mbv2_det``, ``mbv2_seg``, ...)."""
    space = _SPACES.create(name)
    if space.name != name:
        raise ArchError(f"space factory '{name}' returned a space named '{space.name}'")
    return space
