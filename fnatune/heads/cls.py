"""Image classification on top of a backbone: global average pooling, (a hidden pre-logits layer + activation,
as MobileNetV3's 960 -> 1280 with h-swish,) dropout, linear.

This is the seed's own task (ImageNet), so ``ClassifierNet.from_seed`` rebuilds a seed's full
classifier exactly, logits included.
"""
from __future__ import annotations

from typing import Any

from torch import Tensor, nn

from fnatune.arch import Arch
from fnatune.layers import ACTIVATIONS
from fnatune.nets import ChildNet


class ClassifierNet(nn.Module):
    """Backbone features (the tail if present, else the last stage) -> GAP -> dropout -> linear."""

    def __init__(self, arch: Arch, num_classes: int = 1000, dropout: float = 0.2, pre_logits: int | None = None,
                 pre_act: str = "hswish") -> None:
        super().__init__()
        last = "tail" if arch.skeleton.tail_channels is not None else str(len(arch.ops) - 1)
        self.backbone = ChildNet(arch.with_taps([last]))
        width = self.backbone.feature_info[-1].channels
        self.pre: nn.Module | None = None
        if pre_logits is not None:
            self.pre = nn.Sequential(nn.Linear(width, pre_logits), ACTIVATIONS[pre_act]())
            width = pre_logits
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(width, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        h = self.backbone(x)[-1].mean((2, 3))
        if self.pre is not None:
            h = self.pre(h)
        return self.fc(self.dropout(h))

    @classmethod
    def from_seed(cls, seed: Any, dropout: float = 0.2) -> ClassifierNet:
        """The seed's whole classifier (requires ``seed.classifier``)."""
        if seed.classifier is None:
            raise ValueError(f"seed '{seed.name}' has no classifier weights")
        c = seed.classifier
        pre = c["pre.weight"].shape[0] if "pre.weight" in c else None
        net = cls(seed.arch, num_classes=c["weight"].shape[0], dropout=dropout, pre_logits=pre,
                  pre_act=seed.meta.get("pre_logits_act", "hswish"))
        net.backbone.load_state_dict(seed.state_dict)
        net.fc.load_state_dict({k: c[k] for k in ("weight", "bias") if k in c})
        if net.pre is not None:  # a 1x1 conv on the pooled map (timm's conv_head) is the same linear layer
            lin = net.pre[0]
            lin.load_state_dict({"weight": c["pre.weight"].reshape(lin.weight.shape), "bias": c["pre.bias"]})
        return net
