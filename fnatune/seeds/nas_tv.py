"""torchvision's NAS-found networks with squeeze-and-excitation as seeds: MobileNetV3-Large and EfficientNet-B0..B3
(FNA_SPEC §14.2a).

Their blocks are inverted residuals with the NAS networks' extras, which the MBConv grammar carries per layer:

* MobileNetV3-Large: ReLU or h-swish per block (``_relu`` where a block differs from the net's h-swish), SE on
  the hidden width rounded to 8 with a hard-sigmoid gate and ReLU inside (``_sem0.25_hsig``), non-integer
  expansions (``e2.3``, ``e2.5``), BN eps 1e-3;
* EfficientNet: SiLU everywhere, SE from the block input with a sigmoid gate (``_se0.25``), BN eps 1e-5;
  stochastic depth is the identity in eval mode and has no tensors, so the converted net computes the same.

Both classifiers travel with the seed: EfficientNet's linear layer, and MobileNetV3's Linear-Hardswish-Dropout-Linear
as a pre-logits layer plus the logits (``ClassifierNet.from_seed`` rebuilds the logits exactly).
"""
from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Any

from torch import Tensor, nn

from fnatune.seeds import SeedAdapter, register_seed
from fnatune.seeds._convert import BlockParts, SeedLayout, bn_pairs_and_se, build_layout, conv_bn_pairs


def _build(builder: str, **kwargs: object) -> nn.Module:
    import torchvision.models as tvm

    return getattr(tvm, builder)(weights=None, **kwargs)


def _se_type() -> type[nn.Module]:
    from torchvision.ops.misc import SqueezeExcitation

    return SqueezeExcitation


def _act_of(block: nn.Module) -> str:
    """The block's own activation: what its convs (not its SE) are followed by."""
    se = [f"{n}." for n, m in block.named_modules() if isinstance(m, _se_type())]
    kinds = {type(m) for name, m in block.named_modules() if not any(name.startswith(p) for p in se)}
    if nn.Hardswish in kinds:
        return "hswish"
    if nn.SiLU in kinds:
        return "silu"
    return "relu"


def _mbv3_layout(model: nn.Module) -> SeedLayout:
    features = model.get_submodule("features")
    n = len(features)
    blocks: list[BlockParts] = []
    for i in range(1, n - 1):
        prefix = f"features.{i}.block"
        blocks.append(bn_pairs_and_se(model, prefix, _se_type(), ("fc1", "fc2"), 0.25, from_hidden=True,
                                      hard_gate=True, act=_act_of(model.get_submodule(prefix))))
    stem = conv_bn_pairs(model, "features.0")[0]
    tail = conv_bn_pairs(model, f"features.{n - 1}")[0]
    return build_layout(model, stem, blocks, tail, act="hswish", classifier="classifier.3", pre_logits="classifier.0")


def _efficientnet_layout(model: nn.Module) -> SeedLayout:
    features = model.get_submodule("features")
    n = len(features)
    blocks = [bn_pairs_and_se(model, f"features.{s}.{b}.block", _se_type(), ("fc1", "fc2"), 0.25,
                              from_hidden=False, hard_gate=False, act="silu")
              for s in range(1, n - 1) for b in range(len(features[s]))]
    stem = conv_bn_pairs(model, "features.0")[0]
    tail = conv_bn_pairs(model, f"features.{n - 1}")[0]
    return build_layout(model, stem, blocks, tail, act="silu", classifier="classifier.1")


def _features(model: nn.Module, x: Tensor) -> Tensor:
    return model.features(x)


def _meta(size: int, **extra: str) -> Callable[[nn.Module], dict[str, Any]]:
    """What travels with the seed: torchvision's ImageNet normalisation and its weights' evaluation size."""
    return lambda _model: {"mean": IMAGENET_MEAN, "std": IMAGENET_STD, "input_size": (3, size, size), **extra}


IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
EFFICIENTNET_SIZES = {"efficientnet_b0": 224, "efficientnet_b1": 240, "efficientnet_b2": 288, "efficientnet_b3": 300}

register_seed(SeedAdapter("mobilenet_v3_large", partial(_build, "mobilenet_v3_large"), _mbv3_layout, _features,
                          torchvision_model="mobilenet_v3_large", meta=_meta(224, pre_logits_act="hswish"),
                          description="torchvision MobileNetV3-Large (a NAS-found net): SE with hard-sigmoid gates, "
                                      "ReLU/h-swish per block"))
for _name, _size in EFFICIENTNET_SIZES.items():
    register_seed(SeedAdapter(_name, partial(_build, _name), _efficientnet_layout, _features, torchvision_model=_name,
                              meta=_meta(_size),
                              description=f"torchvision EfficientNet-{_name[-2:].upper()} (a NAS-found net): SE, SiLU"))
