"""torchvision MobileNetV2 (any ``width_mult``) as a seed, the seed FNA uses (FNA_SPEC §2)."""
from __future__ import annotations

from torch import Tensor, nn

from fnatune.seeds import SeedAdapter, register_seed
from fnatune.seeds._convert import (
    SeedLayout,
    block_from_pairs,
    build_layout,
    conv_bn_pairs,
)


def _build(**kwargs: object) -> nn.Module:
    from torchvision.models import mobilenet_v2

    return mobilenet_v2(weights=None, **kwargs)


def _layout(model: nn.Module) -> SeedLayout:
    features = model.get_submodule("features")
    n = len(features)
    stem = conv_bn_pairs(model, "features.0")[0]
    blocks = [block_from_pairs(conv_bn_pairs(model, f"features.{i}"), f"features.{i}") for i in range(1, n - 1)]
    tail = conv_bn_pairs(model, f"features.{n - 1}")[0]
    return build_layout(model, stem, blocks, tail, act="relu6", classifier="classifier.1")


def _features(model: nn.Module, x: Tensor) -> Tensor:
    return model.features(x)


register_seed(SeedAdapter("mobilenet_v2", _build, _layout, _features, torchvision_model="mobilenet_v2",
                          description="torchvision MobileNetV2 (width_mult=...), ReLU6; FNA's seed"))
