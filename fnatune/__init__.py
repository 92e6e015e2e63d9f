"""fnatune: FNA++ (Fast Network Adaptation via parameter remapping and architecture search), made usable.

Public API (everything else is internal and may change)::

    import fnatune
    space = fnatune.get_space("mbv2_det")             # a declarative SearchSpace
    seed = fnatune.load_seed("mobilenet_v2", weights="path/to/state_dict.pt")
    supernet, report = fnatune.remap(seed, space)     # seed -> every candidate of every layer
    child, report = fnatune.remap(seed, space.project(seed.arch))  # seed -> one architecture
"""
from __future__ import annotations

import importlib
import sys
import types
from typing import TYPE_CHECKING, Any

from fnatune.errors import (
    ArchError,
    FnatuneError,
    MissingPathError,
    RemapError,
    SeedError,
    UnknownNameError,
)

# The public names that need torch are imported on first use (PEP 562), so that `fnatune run`, whose
# driver only validates a config and starts Ray Tune, does not pay torch's import time: the trials do.
_LAZY = {
    "Arch": "fnatune.arch", "Skeleton": "fnatune.arch", "StageShape": "fnatune.arch", "Tap": "fnatune.arch",
    "MAddsTable": "fnatune.cost", "count_madds": "fnatune.cost", "count_params": "fnatune.cost",
    "madds_table": "fnatune.cost",
    "ChildNet": "fnatune.nets", "FeatureInfo": "fnatune.nets", "MixedLayer": "fnatune.nets",
    "SuperNet": "fnatune.nets",
    "BNOptions": "fnatune.layers",
    "BlockFamily": "fnatune.blocks", "list_families": "fnatune.blocks", "register_family": "fnatune.blocks",
    "RunDir": "fnatune.rundir",
    "Task": "fnatune.tasks", "TaskBackend": "fnatune.tasks", "get_task": "fnatune.tasks", "list_tasks": "fnatune.tasks",
    "register_task": "fnatune.tasks",
    "RemapOptions": "fnatune.remap", "RemapReport": "fnatune.remap", "remap": "fnatune.remap",
    "Seed": "fnatune.seeds", "list_seeds": "fnatune.seeds", "load_seed": "fnatune.seeds",
    "register_seed": "fnatune.seeds",
    "SearchSpace": "fnatune.space", "StageSpec": "fnatune.space", "get_space": "fnatune.space",
    "list_spaces": "fnatune.space", "register_space": "fnatune.space", "with_output_stride": "fnatune.space",
    "load_arch": "fnatune.space",
}

if TYPE_CHECKING:  # what type checkers and IDEs see: the same names, imported eagerly
    from fnatune.arch import Arch, Skeleton, StageShape, Tap
    from fnatune.blocks import BlockFamily, list_families, register_family
    from fnatune.cost import MAddsTable, count_madds, count_params, madds_table
    from fnatune.layers import BNOptions
    from fnatune.nets import ChildNet, FeatureInfo, MixedLayer, SuperNet
    from fnatune.remap import RemapOptions, RemapReport, remap
    from fnatune.rundir import RunDir
    from fnatune.seeds import Seed, list_seeds, load_seed, register_seed
    from fnatune.space import (
        SearchSpace,
        StageSpec,
        get_space,
        list_spaces,
        load_arch,
        register_space,
        with_output_stride,
    )
    from fnatune.tasks import Task, TaskBackend, get_task, list_tasks, register_task


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'fnatune' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))


class _Package(types.ModuleType):
    """``fnatune.remap`` is the function, as it was when this package imported it eagerly; importing the
    submodule ``fnatune.remap`` would otherwise rebind the package attribute to the module."""

    def __setattr__(self, name: str, value: Any) -> None:
        if name == "remap" and isinstance(value, types.ModuleType):
            value = value.remap
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package

__version__ = "0.1.0"

__all__ = [
    "Arch",
    "ArchError",
    "BNOptions",
    "BlockFamily",
    "ChildNet",
    "FeatureInfo",
    "FnatuneError",
    "MAddsTable",
    "MissingPathError",
    "MixedLayer",
    "RemapError",
    "RemapOptions",
    "RemapReport",
    "RunDir",
    "SearchSpace",
    "Seed",
    "SeedError",
    "Skeleton",
    "StageShape",
    "StageSpec",
    "SuperNet",
    "Tap",
    "Task",
    "TaskBackend",
    "UnknownNameError",
    "__version__",
    "count_madds",
    "count_params",
    "get_space",
    "get_task",
    "list_families",
    "list_seeds",
    "list_spaces",
    "list_tasks",
    "load_arch",
    "load_seed",
    "madds_table",
    "register_family",
    "register_seed",
    "register_space",
    "register_task",
    "remap",
    "with_output_stride",
]
