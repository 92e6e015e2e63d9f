"""Every registered space builds, remaps, runs forward/backward in both modes, derives and round-trips."""
from __future__ import annotations

import pytest
import torch

from fnatune.arch import Arch
from fnatune.nets import ChildNet
from fnatune.remap import remap
from fnatune.space import get_space, list_spaces


@pytest.mark.parametrize("space_name", list_spaces())
def test_space_conformance(space_name: str, mbv2_seed) -> None:  # type: ignore[no-untyped-def]
    space = get_space(space_name)
    net, report = remap(mbv2_seed, space)
    assert report.counts().get("copied", 0) > 0
    net.train()
    x = torch.randn(2, 3, 64, 64)

    path = net.sample_path(torch.Generator().manual_seed(0), uniform=True)
    loss = sum(o.square().mean() for o in net(x, indices=path))
    loss.backward()
    assert all(a.grad is None for a in net.arch_parameters())  # weight step: alpha untouched
    assert net.stem.conv.weight.grad is not None
    net.zero_grad(set_to_none=True)

    loss = sum(o.square().mean() for o in net(x))
    loss.backward()
    assert all(a.grad is not None and torch.isfinite(a.grad).all() for a in net.arch_parameters())

    arch = net.derive()
    space.validate(arch)
    assert Arch.from_dict(arch.to_dict()) == arch
    child, _child_report = remap(mbv2_seed, arch)
    assert isinstance(child, ChildNet)
    out = child.train()(x)
    sum(o.mean() for o in out).backward()
    assert [o.shape[1] for o in out] == [f.channels for f in net.feature_info]
