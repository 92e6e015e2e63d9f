"""Shared fixtures: seeds with non-trivial BN statistics saved as real checkpoint files.

Random-init BN layers have mean 0 / var 1 / gamma 1 / beta 0, which would hide a wrong BN mapping; every
seed here gets random statistics so conversions and remaps are really exercised.
"""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn


def randomize_bn(model: nn.Module, seed: int = 0) -> nn.Module:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                n = m.num_features
                if m.running_mean is not None:
                    m.running_mean.copy_(torch.randn(n, generator=g) * 0.5)
                    m.running_var.copy_(torch.rand(n, generator=g) * 1.5 + 0.5)
                if m.weight is not None:
                    m.weight.copy_(torch.rand(n, generator=g) + 0.5)
                    m.bias.copy_(torch.randn(n, generator=g) * 0.2)
    return model


def make_checkpoint(builder: str, path: Path, seed: int = 0, **kwargs: object) -> tuple[nn.Module, Path]:
    import torchvision.models as tvm

    torch.manual_seed(seed)
    if builder == "mnasnet":  # any width multiplier: torchvision's class, not a named builder
        model = tvm.MNASNet(**kwargs)
    else:
        model = getattr(tvm, builder)(weights=None, **kwargs)
    model = randomize_bn(model, seed).eval()
    torch.save(model.state_dict(), path)
    return model, path


@pytest.fixture(scope="session")
def mbv2_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> tuple[nn.Module, Path]:
    return make_checkpoint("mobilenet_v2", tmp_path_factory.mktemp("seeds") / "mbv2.pt")


@pytest.fixture(scope="session")
def mbv2_seed(mbv2_checkpoint):  # type: ignore[no-untyped-def]
    from fnatune.seeds import load_seed

    return load_seed("mobilenet_v2", weights=str(mbv2_checkpoint[1]))


@pytest.fixture(scope="session")
def mnasnet_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> tuple[nn.Module, Path]:
    return make_checkpoint("mnasnet0_75", tmp_path_factory.mktemp("seeds") / "mnasnet.pt", seed=1)


@pytest.fixture(scope="session")
def mnasnet_seed(mnasnet_checkpoint):  # type: ignore[no-untyped-def]
    from fnatune.seeds import load_seed

    return load_seed("mnasnet0_75", weights=str(mnasnet_checkpoint[1]))


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Every test under tests/mm/ needs the OpenMMLab extra: marked ``mm``, so `pytest -m "not mm"` is the suite
    of an install without it."""
    mm_dir = Path(__file__).parent / "mm"
    for item in items:
        if mm_dir in Path(str(item.fspath)).parents:
            item.add_marker(pytest.mark.mm)
