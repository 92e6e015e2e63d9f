"""ChildNet and SuperNet: taps, parameter split, single-path vs child, mixed vs single, derivation."""
from __future__ import annotations

import pytest
import torch

from fnatune.errors import ArchError
from fnatune.nets import ChildNet, SuperNet
from fnatune.remap import remap
from fnatune.space import get_space


def _one_hot_alphas(net: SuperNet, indices: list[int]) -> None:
    with torch.no_grad():
        for a, i in zip(net.alphas, indices):
            a.fill_(float("-inf"))
            a[i] = 0.0


@pytest.mark.parametrize("space_name", ["mbv2_det", "mbv2_ssdlite", "mbv2_seg"])
def test_single_path_equals_child_and_one_hot_mix_equals_single_path(space_name: str, mbv2_seed) -> None:  # type: ignore[no-untyped-def]
    space = get_space(space_name)
    net, _ = remap(mbv2_seed, space)
    net.eval()
    arch = space.sample(11)
    idx = space.indices_of(arch)
    x = torch.randn(2, 3, 64, 64)
    child = net.extract_child(arch).eval()
    with torch.no_grad():
        single = net(x, indices=idx)
        from_child = child(x)
        _one_hot_alphas(net, idx)
        mixed = net(x)
    assert len(single) == len(from_child) == len(space.taps)
    for a, b, c in zip(single, from_child, mixed):
        assert torch.equal(a, b)
        assert torch.equal(a, c)


def test_arch_parameters_are_kept_apart_from_weights() -> None:
    net = SuperNet(get_space("mbv2_det"))
    arch_ids = {id(p) for p in net.arch_parameters()}
    weight_ids = {id(p) for p in net.weight_parameters()}
    assert len(arch_ids) == 21 and not arch_ids & weight_ids
    assert arch_ids | weight_ids == {id(p) for p in net.parameters()}
    assert [a.numel() for a in net.arch_parameters()][:4] == [6, 7, 7, 7]
    assert max(a.abs().max().item() for a in net.arch_parameters()) < 1e-2  # 1e-3 * N(0,1) init


def test_candidate_bn_has_no_affine_and_no_running_stats() -> None:
    net = SuperNet(get_space("mbv2_det"))
    op = net.stages[1][1].candidates[0]
    assert op.dw.bn.weight is None and op.dw.bn.running_mean is None
    fixed = net.stages[0][0]
    assert fixed.dw.bn.weight is not None and fixed.dw.bn.running_mean is not None
    affine = SuperNet(get_space("mbv2_det"), candidate_bn=__import__("fnatune").BNOptions())
    assert affine.stages[1][1].candidates[0].dw.bn.running_mean is not None


def test_feature_info_matches_outputs() -> None:
    for name in ("mbv2_det", "mbv2_ssdlite", "mbv2_seg"):
        space = get_space(name)
        child = ChildNet(space.sample(0))
        outs = child(torch.randn(1, 3, 64, 96))
        for info, out in zip(child.feature_info, outs):
            assert out.shape[1] == info.channels
            assert (64 // out.shape[2], 96 // out.shape[3]) == (info.stride, info.stride)
    ssd = ChildNet(get_space("mbv2_ssdlite").sample(0))
    assert [(f.tap, f.channels, f.stride) for f in ssd.feature_info] == [("5.0.expand", 576, 16), ("tail", 1280, 32)]
    seg = ChildNet(get_space("mbv2_seg").sample(0))
    assert [(f.channels, f.stride) for f in seg.feature_info] == [(320, 16)]


def test_ssdlite_mixed_head_tap_is_the_weighted_sum_of_expansions() -> None:
    torch.manual_seed(0)
    net = SuperNet(get_space("mbv2_ssdlite")).eval()
    x = torch.randn(1, 3, 64, 64)
    pos = net.positions.index((5, 0))
    layer = net.stages[5][0]
    captured = {}
    hook = layer.candidates[0].expand.register_forward_pre_hook(lambda m, i: captured.setdefault("x", i[0]))
    with torch.no_grad():
        tap = net(x)[0]
        w = torch.softmax(net.alphas[pos], -1)
        expected = sum(wi * op.forward_with_expansion(captured["x"])[1] for wi, op in zip(w, layer.candidates))
    hook.remove()
    assert torch.allclose(tap, expected, atol=1e-6)


def test_sample_path_uniform_and_from_alpha() -> None:
    net = SuperNet(get_space("mbv2_det"))
    g = torch.Generator().manual_seed(0)
    path = net.sample_path(g, uniform=True)
    assert len(path) == 21 and all(0 <= i < a.numel() for i, a in zip(path, net.alphas))
    _one_hot_alphas(net, [2] * 21)
    assert net.sample_path(g) == [2] * 21
    with pytest.raises(ArchError, match="expected 21 path indices"):
        net(torch.randn(1, 3, 32, 32), indices=[0, 1])


def test_derive_takes_argmax_and_sorts_skips() -> None:
    space = get_space("mbv2_det")
    net = SuperNet(space)
    target = space.arch_from_indices([0] * 21)
    ops = [list(s) for s in target.ops]
    ops[1] = ["k5_e6", "skip", "k7_e3", "skip"]
    wanted = space.arch(ops)
    _one_hot_alphas(net, space.indices_of(wanted))
    derived = net.derive()
    assert derived.ops[1] == ("k5_e6", "k7_e3", "skip", "skip")
    assert derived == wanted.sorted_skips()


def test_inherited_child_has_the_super_nets_weights_and_plain_bn(mbv2_seed) -> None:  # type: ignore[no-untyped-def]
    """FNA's 'inherit from the super net' ablation: the chosen candidates' convs, the fixed layers' BN state,
    and fresh BN where the candidates kept none; the child is a plain ChildNet the fine-tune can load."""
    space = get_space("mbv2_seg")
    net, _ = remap(mbv2_seed, space)
    arch = space.sample(3)
    child = net.inherit_child(arch)
    plain = ChildNet(arch)
    assert set(child.state_dict()) == set(plain.state_dict())
    (s, l), op = next((p, arch.ops[p[0]][p[1]]) for p in net.positions if arch.ops[p[0]][p[1]] != "skip")
    cand = net.stages[s][l].candidates[space.candidates(s, l).index(op)]
    assert torch.equal(child.stages[s][l].dw.conv.weight, cand.dw.conv.weight)
    assert torch.equal(child.stages[s][l].dw.bn.running_var, torch.ones_like(child.stages[s][l].dw.bn.running_var))
    assert torch.equal(child.stem.bn.running_mean, net.stem.bn.running_mean)
    assert torch.equal(child.stages[0][0].dw.bn.weight, mbv2_seed.state_dict["stages.0.0.dw.bn.weight"])
