"""Image classification on top of a backbone: global average pooling, dropout, linear.

This is the seed's own task (ImageNet), so ``ClassifierNet.from_seed`` rebuilds a seed's full
classifier exactly, logits included.
"""
from __future__ import annotations

from typing import Any

from torch import Tensor, nn

from fnatune.arch import Arch
from fnatune.nets import ChildNet


class ClassifierNet(nn.Module):
    """Backbone features (the tail if present, else the last stage) -> GAP -> dropout -> linear."""

    def __init__(self, arch: Arch, num_classes: int = 1000, dropout: float = 0.2) -> None:
        super().__init__()
        last = "tail" if arch.skeleton.tail_channels is not None else str(len(arch.ops) - 1)
        self.backbone = ChildNet(arch.with_taps([last]))
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(self.backbone.feature_info[-1].channels, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        feats = self.backbone(x)[-1]
        return self.fc(self.dropout(feats.mean((2, 3))))

    @classmethod
    def from_seed(cls, seed: Any, dropout: float = 0.2) -> ClassifierNet:
        """The seed's whole classifier (requires ``seed.classifier``)."""
        if seed.classifier is None:
            raise ValueError(f"seed '{seed.name}' has no classifier weights")
        net = cls(seed.arch, num_classes=seed.classifier["weight"].shape[0], dropout=dropout)
        net.backbone.load_state_dict(seed.state_dict)
        net.fc.load_state_dict(seed.classifier)
        return net
