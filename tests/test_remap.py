"""Remapping rules (FNA_SPEC §4): kernel, width, depth, BN state, variants, and the report."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from fnatune.arch import Arch, Skeleton, StageShape
from fnatune.blocks.mbconv import MBConv
from fnatune.errors import RemapError
from fnatune.nets import ChildNet, MixedLayer, SuperNet
from fnatune.remap import RemapOptions, TensorWriter, kernel_positions, remap, remap_layer
from fnatune.space import get_space
from tests.conftest import randomize_bn


def _seed_layer(c_in: int, c_out: int, k: int, e: int, stride: int, dilation: int) -> MBConv:
    torch.manual_seed(0)
    layer = MBConv(c_in, c_out, k, e, stride, dilation)
    return randomize_bn(layer, seed=1).eval()


@pytest.mark.parametrize("k_new", [5, 7])
@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("dilation", [1, 2])
def test_centre_kernel_remap_preserves_the_function(k_new: int, stride: int, dilation: int) -> None:
    seed = _seed_layer(16, 16 if stride == 1 else 24, 3, 6, stride, dilation)
    new = MBConv(16, seed.c_out, k_new, 6, stride, dilation).eval()
    records = remap_layer(seed, new)
    assert {r.action for r in records if r.target == "dw.conv.weight"} == {"centre_padded"}
    x = torch.randn(2, 16, 19, 17)
    with torch.no_grad():
        assert torch.allclose(new(x), seed(x), atol=1e-5, rtol=0)


def test_kernel_shrink_is_the_centre_crop() -> None:
    seed = _seed_layer(16, 16, 7, 6, 1, 1)
    new = MBConv(16, 16, 3, 6).eval()
    remap_layer(seed, new)
    assert torch.equal(new.dw.conv.weight, seed.dw.conv.weight[:, :, 2:5, 2:5])


def test_dilation_lattice_equals_a_dilated_seed_kernel() -> None:
    """3x3 taps placed at {0,2,4} of a 5x5 kernel compute the seed's 3x3 conv with dilation 2."""
    assert kernel_positions(3, 5, "dilation") == ([0, 2, 4], "lattice_padded")
    assert kernel_positions(3, 7, "dilation") == ([0, 3, 6], "lattice_padded")
    assert kernel_positions(5, 7, "dilation") == ([1, 2, 3, 4, 5], "centre_padded")  # no lattice: centre
    seed = _seed_layer(16, 16, 3, 6, 1, 1)
    new = MBConv(16, 16, 5, 6).eval()
    remap_layer(seed, new, RemapOptions(kernel="dilation"))
    x = torch.randn(1, 96, 15, 15)
    expected = F.conv2d(x, seed.dw.conv.weight, padding=2, dilation=2, groups=96)
    got = F.conv2d(x, new.dw.conv.weight, padding=2, groups=96)
    assert torch.allclose(got, expected, atol=1e-5, rtol=0)


def test_e3_candidate_is_exactly_the_first_half_of_the_seed(mbv2_seed) -> None:  # type: ignore[no-untyped-def]
    space = get_space("mbv2_det")
    arch = space.project(mbv2_seed.arch)
    ops = [list(s) for s in arch.ops]
    ops[3][1] = "k3_e3"  # stage 32->64, layer 1 (seed layer 1: c=64, hidden 384)
    child, _ = remap(mbv2_seed, space.arch(ops))
    src = mbv2_seed.state_dict
    s, d = "stages.3.1.", "stages.3.1."
    h = 64 * 3
    assert torch.equal(child.state_dict()[d + "expand.conv.weight"], src[s + "expand.conv.weight"][:h])
    for t in ("weight", "bias", "running_mean", "running_var"):
        assert torch.equal(child.state_dict()[d + f"expand.bn.{t}"], src[s + f"expand.bn.{t}"][:h])
        assert torch.equal(child.state_dict()[d + f"dw.bn.{t}"], src[s + f"dw.bn.{t}"][:h])
    assert torch.equal(child.state_dict()[d + "dw.conv.weight"], src[s + "dw.conv.weight"][:h])
    assert torch.equal(child.state_dict()[d + "project.conv.weight"], src[s + "project.conv.weight"][:, :h])
    assert torch.equal(child.state_dict()[d + "project.bn.running_var"], src[s + "project.bn.running_var"])


def test_bn_gamma_width_rule_uses_one_ranked_index_set() -> None:
    seed = _seed_layer(16, 16, 3, 6, 1, 1)
    new = MBConv(16, 16, 3, 3).eval()
    remap_layer(seed, new, RemapOptions(width="bn_gamma"))
    top = torch.sort(torch.argsort(seed.expand.bn.weight.abs(), descending=True)[:48]).values
    assert not torch.equal(top, torch.arange(48))
    assert torch.equal(new.expand.conv.weight, seed.expand.conv.weight[top])
    assert torch.equal(new.expand.bn.running_mean, seed.expand.bn.running_mean[top])
    assert torch.equal(new.dw.conv.weight, seed.dw.conv.weight[top])
    assert torch.equal(new.dw.bn.weight, seed.dw.bn.weight[top])
    assert torch.equal(new.project.conv.weight, seed.project.conv.weight[:, top])


def test_std_and_l1_width_rules_pick_what_algorithm_1_picks_on_a_hand_made_tensor() -> None:
    """FNA_SPEC §13.3: a = topk(v, k), sorted ascending; v = per-channel std (population) or L1 norm."""
    w = torch.tensor([[4.0, 4.0], [1.0, -1.0], [0.0, 3.0], [0.1, 0.1], [-2.0, 2.0]]).reshape(5, 2, 1, 1)
    # std: 0, 1, 1.5, 0, 2 -> top 3 = {4, 2, 1};  L1: 8, 2, 3, 0.2, 4 -> top 3 = {0, 4, 2}
    picks = {}
    for rule in ("index", "std", "l1"):
        writer = TensorWriter(torch.nn.Conv2d(2, 3, 1), RemapOptions(width=rule))
        picks[rule] = writer.channels(5, 3, weight=w).tolist()
    assert picks == {"index": [0, 1, 2], "std": [1, 2, 4], "l1": [0, 2, 4]}
    with pytest.raises(RemapError, match="needs the seed's filters"):
        TensorWriter(torch.nn.Conv2d(2, 3, 1), RemapOptions(width="std")).channels(5, 3)


@pytest.mark.parametrize("rule", ["std", "l1"])
def test_filter_width_rules_use_one_index_set_from_the_expand_filters(rule: str) -> None:
    seed = _seed_layer(16, 16, 3, 6, 1, 1)
    new = MBConv(16, 16, 3, 3).eval()
    remap_layer(seed, new, RemapOptions(width=rule))
    flat = seed.expand.conv.weight.detach().reshape(96, -1).double()
    v = flat.std(dim=1, unbiased=False) if rule == "std" else flat.abs().sum(dim=1)
    top = torch.sort(torch.argsort(v, descending=True)[:48]).values
    assert not torch.equal(top, torch.arange(48))
    assert torch.equal(new.expand.conv.weight, seed.expand.conv.weight[top])
    assert torch.equal(new.expand.bn.running_var, seed.expand.bn.running_var[top])
    assert torch.equal(new.dw.conv.weight, seed.dw.conv.weight[top])
    assert torch.equal(new.project.conv.weight, seed.project.conv.weight[:, top])


@pytest.mark.parametrize("region", ["new", "all"])
def test_width_expansion_zero_or_noise(region: str) -> None:
    seed = _seed_layer(16, 16, 3, 3, 1, 1)
    plain = MBConv(16, 16, 5, 6).eval()
    records = {r.target: r.action for r in remap_layer(seed, plain)}
    assert records["expand.conv.weight"] == "expanded"
    assert records["expand.bn.weight"] == "expanded"
    assert torch.equal(plain.expand.conv.weight[48:], torch.zeros_like(plain.expand.conv.weight[48:]))
    assert torch.equal(plain.expand.bn.weight[48:], torch.ones(48))  # new BN entries keep their init
    noisy = MBConv(16, 16, 5, 6).eval()
    opts = RemapOptions(noise=True, noise_region=region, seed=7)  # type: ignore[arg-type]
    records = {r.target: r.action for r in remap_layer(seed, noisy, opts)}
    assert records["expand.conv.weight"] == "noise"
    new_part = noisy.expand.conv.weight[48:]
    assert bool((new_part != 0).all()) and new_part.abs().max() < 1e-5
    old_part = noisy.expand.conv.weight[:48]
    if region == "new":
        assert torch.equal(old_part, seed.expand.conv.weight)
    else:
        assert not torch.equal(old_part, seed.expand.conv.weight)
        assert torch.allclose(old_part, seed.expand.conv.weight, atol=1e-5, rtol=0)
    again = MBConv(16, 16, 5, 6).eval()
    remap_layer(seed, again, opts)
    assert torch.equal(again.expand.conv.weight, noisy.expand.conv.weight)  # deterministic by seed


def test_depth_rule_in_child_follows_non_skip_positions(mbv2_seed) -> None:  # type: ignore[no-untyped-def]
    space = get_space("mbv2_det")
    ops = [list(s) for s in space.project(mbv2_seed.arch).ops]
    ops[1] = ["k3_e6", "skip", "k3_e6", "k3_e6"]  # seed stage 1 has 2 layers
    arch = space.arch(ops)
    child, _ = remap(mbv2_seed, arch)
    sd, src = child.state_dict(), mbv2_seed.state_dict
    key = "expand.conv.weight"
    assert torch.equal(sd[f"stages.1.0.{key}"], src[f"stages.1.0.{key}"])
    assert torch.equal(sd[f"stages.1.2.{key}"], src[f"stages.1.1.{key}"])  # 2nd non-skip layer -> seed layer 1
    assert torch.equal(sd[f"stages.1.3.{key}"], src[f"stages.1.1.{key}"])  # extra layer -> last seed layer
    # the same weights land on the same non-skip layers after sorting skips to the end
    sorted_child, _ = remap(mbv2_seed, arch.sorted_skips())
    assert torch.equal(sorted_child.state_dict()[f"stages.1.1.{key}"], sd[f"stages.1.2.{key}"])
    assert torch.equal(sorted_child.state_dict()[f"stages.1.2.{key}"], sd[f"stages.1.3.{key}"])


def test_depth_rule_in_supernet_uses_layer_position(mbv2_seed) -> None:  # type: ignore[no-untyped-def]
    net, report = remap(mbv2_seed, get_space("mbv2_det"))
    src = mbv2_seed.state_dict
    for l, seed_l in [(0, 0), (1, 1), (2, 1), (3, 1)]:
        layer = net.stages[1][l]
        assert isinstance(layer, MixedLayer)
        for name, op in zip(layer.names, layer.candidates):
            if name == "skip":
                continue
            k = int(name[1])
            w = src[f"stages.1.{seed_l}.dw.conv.weight"]
            o = (k - 3) // 2
            assert torch.equal(op.dw.conv.weight[:, :, o:o + 3, o:o + 3], w[: op.hidden])
    # candidate BNs have no affine/running state, so only conv weights are remapped into candidates
    assert not any(".candidates." in r.target and ".bn." in r.target for r in report.records)
    # fixed layers (stem, first k3_e1) copy all BN state
    assert torch.equal(net.state_dict()["stages.0.0.dw.bn.running_mean"], src["stages.0.0.dw.bn.running_mean"])


def test_seed_into_its_own_arch_is_an_exact_copy(mbv2_seed) -> None:  # type: ignore[no-untyped-def]
    child, report = remap(mbv2_seed, mbv2_seed.arch)
    assert report.counts() == {"copied": len(child.state_dict())}
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(child.eval()(x)[0], mbv2_seed.build()(x)[0])


def test_nas_seed_into_mbv2_space_expands_and_crops(mnasnet_seed) -> None:  # type: ignore[no-untyped-def]
    """MnasNet (widths 24/32/64/72/144/240, k5 layers) into FNA's space: every rule is exercised."""
    net, report = remap(mnasnet_seed, get_space("mbv2_det"))
    counts = report.counts()
    assert {"copied", "cropped", "centre_padded", "expanded"} <= set(counts)
    k3 = net.stages[2][0].candidates[0]  # k3_e3 candidate of a k5 seed stage: centre crop
    seed_w = mnasnet_seed.state_dict["stages.2.0.dw.conv.weight"]
    assert torch.equal(k3.dw.conv.weight, seed_w[: k3.hidden, :, 1:4, 1:4])


def test_report_names_every_tensor_and_saves_json(tmp_path: Path, mbv2_seed) -> None:  # type: ignore[no-untyped-def]
    sk = mbv2_seed.arch.skeleton
    ops = [list(s) for s in mbv2_seed.arch.ops]
    ops[0] = ["k3_e3"]  # the seed's first layer is k3_e1: this expand conv has no source
    child, report = remap(mbv2_seed, Arch(sk, tuple(tuple(s) for s in ops)))
    assert [r.target for r in report.records] == list(child.state_dict())
    rec = report.record("stages.0.0.expand.conv.weight")
    assert rec.action == "left_at_init" and rec.source is None
    assert report.record("stages.0.0.dw.conv.weight").source == "stages.0.0.dw.conv.weight"
    data = json.loads(report.save(tmp_path / "r.json").read_text())
    assert data["counts"] == report.counts() and data["options"]["width"] == "index"
    assert len(data["tensors"]) == len(report.records)


def test_stage_count_mismatch_is_a_clear_error(mbv2_seed) -> None:  # type: ignore[no-untyped-def]
    sk = Skeleton(stages=(StageShape(16, 1), StageShape(24, 2)))
    with pytest.raises(RemapError, match="7 stages after the stem but the target has 2"):
        remap(mbv2_seed, Arch(sk, (("k3_e1",), ("k3_e6",))))


def test_bad_options_are_rejected() -> None:
    with pytest.raises(RemapError, match="width='widest'"):
        RemapOptions(width="widest")  # type: ignore[arg-type]


def test_remap_into_prebuilt_supernet_keeps_alphas(mbv2_seed) -> None:  # type: ignore[no-untyped-def]
    net = SuperNet(get_space("mbv2_seg"))
    alphas = [a.detach().clone() for a in net.alphas]
    out, _ = remap(mbv2_seed, net)
    assert out is net and all(torch.equal(a, b) for a, b in zip(alphas, net.alphas))
    assert isinstance(remap(mbv2_seed, mbv2_seed.arch)[0], ChildNet)
