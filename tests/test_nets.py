"""ChildNet and SuperNet: taps, parameter split, single-path vs child, mixed vs single, derivation."""
from __future__ import annotations

import pytest
import torch

from fnatune.errors import ArchError
from fnatune.nets import ChildNet, SuperNet
from fnatune.remap import remap
from fnatune.seeds import load_seed
from fnatune.space import get_space
from tests.conftest import randomize_bn
from tests.helpers import fitting_seed, registry_space_cases


def _one_hot_alphas(net: SuperNet, indices: list[int]) -> None:
    with torch.no_grad():
        for a, i in zip(net.alphas, indices):
            a.fill_(float("-inf"))
            a[i] = 0.0


@pytest.mark.parametrize("space_name", registry_space_cases())
def test_single_path_equals_child_and_one_hot_mix_equals_single_path(space_name: str) -> None:
    """Every registered space, remapped from a registered seed that fits it (random weights, perturbed BN)."""
    space = get_space(space_name)
    seed_name = fitting_seed(space_name)
    assert seed_name is not None, f"no registered seed fits space '{space_name}'"
    torch.manual_seed(0)
    seed = load_seed(seed_name)
    seed.state_dict = {k: v.clone() for k, v in randomize_bn(seed.build(), seed=1).state_dict().items()}
    net, _ = remap(seed, space)
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


def _mixed_grads(net: SuperNet, x: torch.Tensor, recompute: bool, weights_too: bool) -> dict[str, torch.Tensor]:
    net.recompute_mixed = recompute
    for p in net.weight_parameters():
        p.requires_grad_(weights_too)
    net.zero_grad(set_to_none=True)
    xin = x.clone().requires_grad_(True)
    out = net(xin, temperature=1.0)
    sum(o.square().mean() for o in out).backward()
    grads = {n: p.grad.clone() for n, p in net.named_parameters() if p.grad is not None}
    grads["input"] = xin.grad.clone()
    grads.update({f"out{i}": o.detach() for i, o in enumerate(out)})
    return grads


@pytest.mark.parametrize("space_name", ["mbv2_seg", "mbv2_ssdlite"])  # ssdlite: a mixed expansion tap
def test_recomputed_mixed_step_gives_the_plain_mixed_steps_outputs_and_gradients(space_name: str) -> None:
    """The arch step (weights frozen) and a step with every weight trainable: the same outputs, alpha
    gradients, weight gradients and input gradient as the plain mix, and no activation of any candidate
    kept for the backward pass (only each mixed layer's input and mixing weights)."""
    torch.manual_seed(0)
    net = SuperNet(get_space(space_name)).train()
    x = torch.randn(2, 3, 32, 32)
    for weights_too in (False, True):
        plain = _mixed_grads(net, x, recompute=False, weights_too=weights_too)
        again = _mixed_grads(net, x, recompute=True, weights_too=weights_too)
        assert plain.keys() == again.keys()
        assert any(k.startswith("alphas") for k in plain) and (weights_too == any("candidates" in k for k in plain))
        # float tolerance: the sums run in another order; gradients that BN's scale invariance makes ~0
        # (a BN's gamma right before another BN) are compared against the largest gradient, not themselves
        scale = max(float(v.abs().max()) for k, v in plain.items() if not k.startswith("out"))
        for k in plain:
            if k.startswith("out"):
                assert torch.equal(plain[k], again[k]), k  # the forward is the same computation
            else:
                assert torch.allclose(plain[k], again[k], rtol=1e-3, atol=1e-6 * scale), k

    kept = {}
    for recompute in (True, False):
        net.recompute_mixed = recompute
        saved: list[int] = []
        with torch.autograd.graph.saved_tensors_hooks(lambda t, saved=saved: saved.append(t.numel()) or t,
                                                      lambda t: t):
            net(x, temperature=1.0)
        kept[recompute] = sum(saved)
    assert kept[True] < kept[False] / 4


def test_recompute_is_skipped_when_candidate_bn_tracks_running_stats() -> None:
    """Recomputing would update the running statistics twice: such a super net mixes the plain way."""
    from fnatune.layers import BNOptions

    torch.manual_seed(0)
    net = SuperNet(get_space("mbv2_seg"), candidate_bn=BNOptions(track_running_stats=True), recompute_mixed=True)
    net.train()
    layer = next(m for m in net.modules() if hasattr(m, "recomputable"))
    assert not layer.recomputable
    before = layer.candidates[0].dw.bn.num_batches_tracked.clone()
    net(torch.randn(2, 3, 64, 64), temperature=1.0)[-1].mean().backward()
    assert int(layer.candidates[0].dw.bn.num_batches_tracked) == int(before) + 1


def test_recompute_share_picks_the_layers_holding_the_most_activations() -> None:
    """A share s recomputes the fewest layers, largest first, whose plain activations add up to s of all;
    the probe that measures them moves no running statistic and leaves every requires_grad flag as it was."""
    torch.manual_seed(0)
    net = SuperNet(get_space("mbv2_seg")).train()
    x = torch.randn(2, 3, 32, 32)
    stats = {k: v.clone() for k, v in net.state_dict().items() if "running" in k or "num_batches" in k}
    flags = [p.requires_grad for p in net.parameters()]
    rng = torch.get_rng_state()
    held = net.activation_bytes(x)
    assert torch.equal(rng, torch.get_rng_state())  # the heads' dropout draws from it: a resume must match
    assert all(torch.equal(v, net.state_dict()[k]) for k, v in stats.items())
    assert flags == [p.requires_grad for p in net.parameters()] and net.training
    assert set(held) == set(net.positions) and sum(b > 0 for b in held.values()) >= len(held) - 1  # the first: no grad flows in
    total = sum(held.values())
    net.recompute_mixed = 0.5
    net(x, temperature=1.0)
    plan = net._recompute
    assert plan is not None and 0 < len(plan) < len(held)
    chosen = sum(held[p] for p in plan)
    assert chosen >= 0.5 * total > chosen - min(held[p] for p in plan)
    assert max(held[p] for p in held if p not in plan) <= min(held[p] for p in plan)
    net.recompute_mixed = 0.0
    assert net._recompute == set()
    net.recompute_mixed = 0.5
    assert net._recompute is plan  # measured once per share
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        net.recompute_mixed = 1.5
