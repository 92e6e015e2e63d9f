"""The ResNet family: its grammar and blocks, torchvision's ResNets at every stage, group remapping (FNA_SPEC §4.6),
the reconstructed spaces and the errors for seeds and groups that do not fit."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from fnatune.arch import Arch
from fnatune.blocks import parse_op
from fnatune.blocks.resnet import ResBlock, ResNetSpec
from fnatune.errors import ArchError, RemapError
from fnatune.nets import ChildNet, SuperNet
from fnatune.remap import RemapOptions, remap, remap_grouped_weight, remap_layer
from fnatune.seeds import get_seed_adapter, load_seed
from fnatune.space import SearchSpace, StageSpec, get_space
from search_spaces.resnet import resnet_space
from tests.conftest import randomize_bn


def _seed(name: str, tmp_path: Path):  # type: ignore[no-untyped-def]
    torch.manual_seed(4)
    reference = randomize_bn(get_seed_adapter(name).build(), seed=4).eval()
    torch.save(reference.state_dict(), tmp_path / f"{name}.pt")
    return reference, load_seed(name, weights=str(tmp_path / f"{name}.pt"))


def test_grammar_and_blocks() -> None:
    assert parse_op("r_k5_g2") == ResNetSpec(5, 2) and parse_op("r_k3_g1_e4") == ResNetSpec(3, 1, 4)
    assert parse_op("r_k5_g2").name == "r_k5_g2" and parse_op("r_k7_g4_e4").name == "r_k7_g4_e4"
    with pytest.raises(ArchError, match="must be odd"):
        parse_op("r_k4_g1")
    basic = ResBlock(ResNetSpec(5, 2), 64, 128, stride=2)
    assert basic.conv1.conv.weight.shape == (128, 32, 5, 5) and basic.conv2.conv.groups == 2
    assert basic.downsample is not None and basic.downsample.conv.stride == (2, 2)
    neck = ResBlock(ResNetSpec(3, 4, 4), 256, 256)
    assert neck.width == 64 and neck.conv2.conv.weight.shape == (64, 16, 3, 3) and neck.downsample is None
    x = torch.randn(1, 256, 9, 9)
    assert neck(x).shape == x.shape and ResBlock(ResNetSpec(3, 1), 64, 128, 2)(torch.randn(1, 64, 9, 9)).shape == (1, 128, 5, 5)


@pytest.mark.parametrize("name", ["resnet18", "resnet50", "resnext50_32x4d", "wide_resnet50_2"])
def test_torchvision_resnets_match_at_every_stage(name: str, tmp_path: Path) -> None:
    reference, seed = _seed(name, tmp_path)
    net = ChildNet(seed.arch.with_taps(["0", "1", "2", "3"]))
    net.load_state_dict(seed.state_dict)
    x = torch.randn(2, 3, 64, 72)
    with torch.no_grad():
        h = reference.maxpool(reference.relu(reference.bn1(reference.conv1(x))))
        theirs = []
        for layer in (reference.layer1, reference.layer2, reference.layer3, reference.layer4):
            h = layer(h)
            theirs.append(h)
        for ours, t in zip(net.eval()(x), theirs):
            assert ours.shape == t.shape and (ours - t).abs().max().item() <= 1e-5
    expected = {"resnet18": "r_k3_g1", "resnet50": "r_k3_g1_e4", "resnext50_32x4d": "r_k3_g32_e2",
                "wide_resnet50_2": "r_k3_g1_e2"}[name]
    assert set(o for s in seed.arch.ops for o in s) == {expected}
    assert seed.arch.skeleton.stem_kernel == 7 and seed.arch.skeleton.stem_pool == 2


def test_group_rules_on_a_hand_made_weight() -> None:
    dense = torch.arange(16, dtype=torch.float32).reshape(4, 4, 1, 1)
    idx = torch.arange(4)
    block, mask, action = remap_grouped_weight(dense, 1, (4, 2, 1, 1), 2, idx, idx)
    # outputs 0,1 (group 0) keep inputs 0,1; outputs 2,3 (group 1) keep inputs 2,3: the block diagonal
    assert block[:, :, 0, 0].tolist() == [[0, 1], [4, 5], [10, 11], [14, 15]] and action == "regrouped"
    lead, _, _ = remap_grouped_weight(dense, 1, (4, 2, 1, 1), 2, idx, idx, rule="leading")
    assert lead[:, :, 0, 0].tolist() == [[0, 1], [4, 5], [8, 9], [12, 13]]  # every group: the first two inputs
    grouped = torch.arange(1, 9, dtype=torch.float32).reshape(4, 2, 1, 1)
    back, mask, _ = remap_grouped_weight(grouped, 2, (4, 4, 1, 1), 1, idx, idx)
    assert back[:, :, 0, 0].tolist() == [[1, 2, 0, 0], [3, 4, 0, 0], [0, 0, 5, 6], [0, 0, 7, 8]]
    assert mask[:, :, 0, 0].tolist() == [[True, True, False, False]] * 2 + [[False, False, True, True]] * 2


def test_dense_into_grouped_is_the_seed_masked_to_its_block_diagonal() -> None:
    """A 3x3 dense conv remapped into 4 groups (k5, centre placed) computes the dense conv with every weight
    outside its block diagonal zeroed: each output keeps exactly the inputs its group still sees."""
    torch.manual_seed(0)
    seed = randomize_bn(ResBlock(ResNetSpec(3, 1), 32, 32), seed=2).eval()
    new = ResBlock(ResNetSpec(5, 4), 32, 32).eval()
    records = {r.target: r.action for r in remap_layer(seed, new)}
    assert records["conv1.conv.weight"] == records["conv2.conv.weight"] == "regrouped"
    w = seed.conv1.conv.weight
    masked = torch.zeros_like(w)
    for g in range(4):
        masked[g * 8:(g + 1) * 8, g * 8:(g + 1) * 8] = w[g * 8:(g + 1) * 8, g * 8:(g + 1) * 8]
    x = torch.randn(1, 32, 11, 11)
    assert torch.allclose(new.conv1.conv(x), F.conv2d(x, masked, padding=1), atol=1e-5, rtol=0)


def test_a_resnext_seed_into_dense_convs_keeps_its_function(tmp_path: Path) -> None:
    """FNA_SPEC §4.6: grouped -> less grouped is the seed's block-diagonal weight with zeros elsewhere, exactly."""
    _, seed = _seed("resnext50_32x4d", tmp_path)
    ops = [[op.replace("_g32_", "_g1_") for op in stage] for stage in seed.arch.ops]
    child, report = remap(seed, Arch(seed.arch.skeleton, tuple(tuple(s) for s in ops)))
    assert report.counts()["regrouped"] == 16  # every block's spatial conv
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.allclose(child.eval()(x)[-1], seed.build()(x)[-1], atol=1e-4, rtol=1e-4)


def test_remap_report_names_the_group_rule() -> None:
    opts = RemapOptions(group="leading")
    assert opts.group == "leading"
    with pytest.raises(RemapError, match="group='diagonal'"):
        RemapOptions(group="diagonal")  # type: ignore[arg-type]


def test_deeper_super_nets_copy_the_stage_last_block_and_skip_is_an_option(tmp_path: Path) -> None:
    _, seed = _seed("resnet18", tmp_path)
    space = resnet_space("deeper", 18, "det", extra_layers=(1, 0, 0, 0), allow_skip=True)
    assert space.num_layers == (3, 2, 2, 2)
    assert "skip" in space.candidates(0, 1) and "skip" not in space.candidates(0, 0)
    assert "skip" not in get_space("resnet18_det").candidates(0, 1)  # no skip by default
    net, _ = remap(seed, space)
    extra = net.stages[0][2].candidates[space.candidates(0, 2).index("r_k3_g1")]
    assert torch.equal(extra.conv1.conv.weight, seed.state_dict["stages.0.1.conv1.conv.weight"])  # the last seed block


def test_segmentation_space_runs_at_output_stride_16() -> None:
    space = get_space("resnet50_seg")
    assert [(s.stride, s.dilation) for s in space.stages] == [(1, 1), (2, 1), (2, 1), (1, 2)]
    child = ChildNet(space.first_arch())
    assert [(f.channels, f.stride) for f in child.feature_info] == [(2048, 16)]
    assert child(torch.randn(1, 3, 64, 64))[0].shape == (1, 2048, 4, 4)
    assert [(f.channels, f.stride) for f in ChildNet(get_space("resnet18_det").first_arch()).feature_info] == [
        (64, 4), (128, 8), (256, 16), (512, 32)]


def test_seeds_and_groups_that_do_not_fit_are_clear_errors(tmp_path: Path, mbv2_seed) -> None:  # type: ignore[no-untyped-def]
    _, resnet = _seed("resnet18", tmp_path)
    with pytest.raises(RemapError, match=r"seed 'resnet18' \(resnet blocks\) does not fit space 'mbv2_det' \(mbconv blocks\)"):
        remap(resnet, get_space("mbv2_det"))
    with pytest.raises(RemapError, match=r"seed 'mobilenet_v2' \(mbconv blocks\) does not fit space 'resnet18_det' \(resnet"):
        remap(mbv2_seed, get_space("resnet18_det"))
    with pytest.raises(RemapError, match=r"a basic block \('r_k3_g1'\) cannot be remapped into a bottleneck"):
        remap(resnet, get_space("resnet50_det"))
    with pytest.raises(ArchError, match=r"stage 0 layer 0 \(64 -> 100 channels\), op 'r_k3_g3': its 100-channel output "
                                        r"width is not divisible by its 3 groups"):
        SearchSpace("bad", stages=(StageSpec(100, ops=("r_k3_g3",)),), stem_channels=64)
    with pytest.raises(ArchError, match=r"op 'r_k3_g4_e4': its 50-channel inner width is not divisible by its 4 groups"):
        SearchSpace("bad", stages=(StageSpec(200, ops=("r_k3_g4_e4",)),), stem_channels=64)


def test_the_super_net_remaps_every_candidate_from_the_seed(tmp_path: Path) -> None:
    _, seed = _seed("resnet18", tmp_path)
    space = get_space("resnet18_det_small")
    net, report = remap(seed, SuperNet(space))
    assert report.counts().get("left_at_init", 0) == 0 or all(
        ".bn." in r.target for r in report.records if r.action == "left_at_init")
    for name, op in zip(net.stages[1][0].names, net.stages[1][0].candidates):
        w, s = op.conv2.conv.weight, seed.state_dict["stages.1.0.conv2.conv.weight"]
        if name == "r_k3_g1":
            assert torch.equal(w, s)
        if name == "r_k5_g1":
            assert torch.equal(w[:, :, 1:4, 1:4], s)
