"""Small, fast building blocks shared by tests: a tiny search space and a tiny segmentation net."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import TensorDataset

from fnatune.nets import SuperNet
from fnatune.space import SearchSpace, StageSpec


def tiny_space() -> SearchSpace:
    return SearchSpace(
        name="tiny",
        stem_channels=8,
        stages=(
            StageSpec(8, stride=1, layers=1, ops=("k3_e1",)),
            StageSpec(12, stride=2, layers=3, ops=("k3_e3", "k5_e3", "k3_e6")),
            StageSpec(16, stride=2, layers=2, ops=("k3_e3", "k5_e6")),
        ),
        taps=("2",),
        input_size=(32, 32),
    )


class TinySeg(nn.Module):
    """SuperNet + 1x1 classifier, upsampled: enough to exercise the search loop like mmseg does."""

    def __init__(self, supernet: SuperNet, classes: int = 3) -> None:
        super().__init__()
        self.backbone = supernet
        self.head = nn.Conv2d(supernet.feature_info[-1].channels, classes, 1)

    def forward(self, x: Tensor) -> Tensor:
        return F.interpolate(self.head(self.backbone(x)[-1]), size=x.shape[-2:], mode="bilinear", align_corners=False)


def tiny_dataset(n: int = 16, classes: int = 3, seed: int = 0) -> TensorDataset:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 3, 32, 32, generator=g)
    y = (x[:, 0] > 0).long() + (x[:, 1] > 0.5).long()
    return TensorDataset(x, y.clamp_max(classes - 1))


def ce_loss(model: nn.Module):  # type: ignore[no-untyped-def]
    def loss_fn(batch: list[Tensor]) -> Tensor:
        x, y = batch
        return F.cross_entropy(model(x), y)
    return loss_fn
