"""Params and MAdds as FNA counts them, the super-net cost table and E[cost]."""
from __future__ import annotations

import pytest
import torch
import torchvision
from torch import nn

from fnatune.arch import Arch
from fnatune.cost import count_madds, count_params, madds_table
from fnatune.nets import ChildNet, SuperNet
from fnatune.space import get_space
from search_spaces import ARCHS_DIR
from tests.helpers import registry_space_cases


def test_conv_and_linear_madds_by_hand() -> None:
    conv = nn.Conv2d(8, 16, 3, stride=2, padding=1, bias=True)
    assert count_madds(conv, (10, 12), in_channels=8) == 5 * 6 * 16 * (8 * 9) + 5 * 6 * 16
    dw = nn.Conv2d(8, 8, 5, padding=2, groups=8, bias=False)
    assert count_madds(dw, (7, 7), in_channels=8) == 7 * 7 * 8 * 25
    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 4 * 4, 10))
    assert count_madds(model, (4, 4)) == 48 * 10 + 10


def test_mobilenet_v2_reference_counts() -> None:
    model = torchvision.models.mobilenet_v2()
    assert count_params(model) == 3_504_872
    assert round(count_madds(model, (224, 224)) / 1e6, 1) == 300.8  # the well-known "300M MAdds"


def test_counting_does_not_touch_weights_or_bn_state() -> None:
    net = ChildNet(get_space("mbv2_det").sample(0)).train()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    count_madds(net, (1024, 2048))
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())


def test_detection_table_reproduces_fna_sanity_values() -> None:
    """FNA_SPEC §5.3: searchable part 0.90-8.39 GMAdds at 800x1088, 4.87 for uniform alpha; 320x320: 0.11-0.99, 0.57."""
    net = SuperNet(get_space("mbv2_det"))
    s = madds_table(net, (800, 1088)).summary()
    assert (round(s["min"], 2), round(s["max"], 2), round(s["uniform"], 2)) == (0.90, 8.39, 4.87)
    s = madds_table(net, (320, 320)).summary()
    assert (round(s["min"], 2), round(s["max"], 2), round(s["uniform"], 2)) == (0.11, 0.99, 0.57)


def test_released_archs_reproduce_the_paper_backbone_deltas() -> None:
    """FNA_SPEC §7.3: FNA - MobileNetV2 backbone params +0.244M (RetinaNet), +0.307M (SSDLite); MAdds -0.024B."""
    def cost(name: str, size: tuple[int, int] = (800, 1088)) -> tuple[int, int]:
        net = ChildNet(Arch.load(ARCHS_DIR / f"{name}.json"))
        return count_params(net), count_madds(net, size)

    fna, mbv2 = cost("fna_retinanet"), cost("mbv2_retinanet")
    assert round((fna[0] - mbv2[0]) / 1e6, 3) == 0.244
    assert round((fna[1] - mbv2[1]) / 1e9, 3) == -0.024
    fna, mbv2 = cost("fna_ssdlite", (320, 320)), cost("mbv2_ssdlite", (320, 320))
    assert round((fna[0] - mbv2[0]) / 1e6, 3) == 0.307


@pytest.mark.parametrize("space_name", registry_space_cases())
def test_one_hot_expected_cost_equals_arch_cost_equals_counter(space_name: str) -> None:
    space = get_space(space_name)
    net = SuperNet(space)
    table = madds_table(net, (128, 160))
    arch = space.sample(5)
    idx = space.indices_of(arch)
    alphas = [torch.full((len(c),), float("-inf")) for c in table.candidates]
    for a, i in zip(alphas, idx):
        a[i] = 0.0
    searchable = sum(row[i] for row, i in zip(table.madds, idx))
    assert table.expected(alphas).item() == pytest.approx(searchable / 1e9, rel=1e-7)  # float32 alphas
    assert table.expected([a.double() for a in alphas]).item() == pytest.approx(searchable / 1e9, rel=1e-15)
    assert table.of_arch(arch) == pytest.approx(searchable / 1e9, rel=1e-12)
    assert count_madds(ChildNet(arch), (128, 160)) == searchable + table.fixed_madds


def test_expected_cost_gradient_matches_hand_computation() -> None:
    net = SuperNet(get_space("mbv2_det"))
    table = madds_table(net, (64, 64))
    torch.manual_seed(0)
    alphas = [torch.randn(len(c), dtype=torch.float64, requires_grad=True) for c in table.candidates]
    T = 0.9
    cost = table.expected(alphas, temperature=T)
    cost.backward()
    for a, row in zip(alphas, table.rows()):
        p = torch.softmax(a.detach() / T, -1)
        layer = (p * row).sum()
        hand = p * (row - layer) / T  # d/dalpha_j sum_o p_o m_o = p_j (m_j - E) / T
        assert torch.allclose(a.grad, hand, atol=1e-15, rtol=1e-10)
    assert cost.item() == pytest.approx(sum((torch.softmax(a.detach() / T, -1) * r).sum().item()
                                            for a, r in zip(alphas, table.rows())))


@pytest.mark.parametrize("name,params,madds", [("fna_seg", 2.47e6, 24.17e9), ("mbv2_seg", 2.57e6, 24.52e9)])
def test_seg_network_reproduces_the_paper_table(name: str, params: float, madds: float) -> None:
    """FNA_SPEC §7.1: DeepLabv3 (separable ASPP) at 1024x2048, backbone + head + classifier."""
    from fnatune.whole_network import whole_network

    model, _ = whole_network("seg", Arch.load(ARCHS_DIR / f"{name}.json"), num_classes=19)
    assert count_params(model) == pytest.approx(params, rel=0.005)
    assert count_madds(model, (1024, 2048)) == pytest.approx(madds, rel=0.005)
    assert round(count_params(model) / 1e6, 2) == params / 1e6 and round(count_madds(model, (1024, 2048)) / 1e9, 2) == madds / 1e9
