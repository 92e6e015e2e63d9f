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


# ------------------------------------------------------------------------------------------ registry cases
# A super net above this many parameters (the ResNet spaces: nine candidate blocks per layer) takes tens of
# seconds to build and remap on two cores: its cases run in the slow lane (CI runs both lanes).
BIG_SUPERNET = 100e6


def supernet_params(space_name: str) -> int:
    from fnatune.space import get_space

    with torch.device("meta"):
        return sum(p.numel() for p in SuperNet(get_space(space_name)).parameters())


def registry_space_cases() -> list:  # type: ignore[type-arg]
    """Every registered space as a pytest case, the big ones marked slow."""
    import pytest

    from fnatune.space import list_spaces

    return [pytest.param(n, marks=[pytest.mark.slow, pytest.mark.timeout(900)] if supernet_params(n) > BIG_SUPERNET
                         else []) for n in list_spaces()]


def fitting_seed(space_name: str) -> str | None:
    """The first registered seed that remaps into the space (its layout read on the meta device), or None."""
    from fnatune.errors import SeedError
    from fnatune.remap import fit_problem
    from fnatune.seeds import Seed, get_seed_adapter, list_seeds
    from fnatune.space import get_space

    space = get_space(space_name)
    preferred = [space.meta["seed"]] if "seed" in space.meta else []
    for name in preferred + list_seeds():
        adapter = get_seed_adapter(name)
        try:
            with torch.device("meta"):
                seed = Seed(name, adapter.layout(adapter.build()).arch, {})
        except SeedError:  # an optional extra's seed where the extra is missing
            continue
        if fit_problem(seed, space) is None:
            return name
    return None
