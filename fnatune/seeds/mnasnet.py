"""torchvision MnasNet-B1 (a NAS-found network: k3/k5, e3/e6, ReLU) as a seed, at every width multiplier.

MnasNet's first "layer" is a depthwise-separable conv (dw3x3 + BN + ReLU, pw + BN) written as loose
modules; it is exactly our ``k3_e1``. Checkpoints of the old v1 layout (fixed-size stem for widths other
than 1.0) are rejected with the first mismatching shape.
"""
from __future__ import annotations

from functools import partial

from torch import Tensor, nn

from fnatune.seeds import SeedAdapter, register_seed
from fnatune.seeds._convert import (
    BlockParts,
    ConvBN,
    SeedLayout,
    block_from_pairs,
    build_layout,
    conv_bn_pairs,
)


def _build(builder: str, **kwargs: object) -> nn.Module:
    import torchvision.models as tvm

    return getattr(tvm, builder)(weights=None, **kwargs)


def _layout(model: nn.Module) -> SeedLayout:
    layers = model.get_submodule("layers")
    stem = ConvBN("layers.0", "layers.1")
    first = BlockParts(None, ConvBN("layers.3", "layers.4"), ConvBN("layers.6", "layers.7"))
    blocks = [first]
    for i in range(8, 14):
        for j in range(len(layers[i])):
            prefix = f"layers.{i}.{j}"
            blocks.append(block_from_pairs(conv_bn_pairs(model, prefix), prefix))
    tail = ConvBN("layers.14", "layers.15")
    return build_layout(model, stem, blocks, tail, act="relu", classifier="classifier.1")


def _build_any(alpha: float = 1.0, **kwargs: object) -> nn.Module:
    from torchvision.models import MNASNet

    return MNASNet(alpha, **kwargs)


def _features(model: nn.Module, x: Tensor) -> Tensor:
    return model.layers(x)


register_seed(SeedAdapter("mnasnet", _build_any, _layout, _features,
                          description="torchvision MNASNet at any width multiplier (alpha=...), ReLU; local weights only"))

for _name in ("mnasnet0_5", "mnasnet0_75", "mnasnet1_0", "mnasnet1_3"):
    register_seed(SeedAdapter(_name, partial(_build, _name), _layout, _features, torchvision_model=_name,
                              description=f"torchvision {_name} (MnasNet-B1, a NAS-found net), ReLU"))
