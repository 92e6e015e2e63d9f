"""fnatune: FNA++ (Fast Network Adaptation via parameter remapping and architecture search), made usable.

Public API (everything else is internal and may change)::

    import fnatune
    space = fnatune.get_space("mbv2_det")             # a declarative SearchSpace
    seed = fnatune.load_seed("mobilenet_v2", weights="path/to/state_dict.pt")
    supernet, report = fnatune.remap(seed, space)     # seed -> every candidate of every layer
    child, report = fnatune.remap(seed, space.project(seed.arch))  # seed -> one architecture
"""
from __future__ import annotations

from fnatune.arch import Arch, Skeleton, StageShape, Tap
from fnatune.cost import MAddsTable, count_madds, count_params, madds_table
from fnatune.errors import (
    ArchError,
    FnatuneError,
    MissingPathError,
    RemapError,
    SeedError,
    UnknownNameError,
)
from fnatune.nets import ChildNet, FeatureInfo, MixedLayer, SuperNet
from fnatune.ops import BNOptions
from fnatune.remap import RemapOptions, RemapReport, remap
from fnatune.seeds import Seed, list_seeds, load_seed, register_seed
from fnatune.space import (
    SearchSpace,
    StageSpec,
    get_space,
    list_spaces,
    register_space,
    with_output_stride,
)

__version__ = "0.1.0"

__all__ = [
    "Arch",
    "ArchError",
    "BNOptions",
    "ChildNet",
    "FeatureInfo",
    "FnatuneError",
    "MAddsTable",
    "MissingPathError",
    "MixedLayer",
    "RemapError",
    "RemapOptions",
    "RemapReport",
    "SearchSpace",
    "Seed",
    "SeedError",
    "Skeleton",
    "StageShape",
    "StageSpec",
    "SuperNet",
    "Tap",
    "UnknownNameError",
    "__version__",
    "count_madds",
    "count_params",
    "get_space",
    "list_seeds",
    "list_spaces",
    "load_seed",
    "madds_table",
    "register_seed",
    "register_space",
    "remap",
    "with_output_stride",
]
