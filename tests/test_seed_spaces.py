"""Spaces derived from a seed's layout (search_spaces/from_seed.py, issue 24 item 4): the seed's stages and extras
kept per layer, FNA's kernel x expansion choice, the task's taps; conformance (every space builds, remaps, trains,
derives, exports) is in tests/test_conformance.py."""
from __future__ import annotations

import pytest
import torch

from fnatune.blocks import SKIP, parse_op
from fnatune.errors import ArchError
from fnatune.remap import fit_problem, remap
from fnatune.seeds import load_seed
from fnatune.space import get_space
from search_spaces.from_seed import seed_space

SPACES = [f"{p}_{t}" for p in ("mbv3_large", "effb0") for t in ("det", "seg", "pose")]
SEEDS = {"mbv3_large": "mobilenet_v3_large", "effb0": "efficientnet_b0"}


@pytest.mark.parametrize("name", SPACES)
def test_every_layer_keeps_its_seed_layers_se_gate_and_activation_and_searches_kernel_x_expansion(name: str) -> None:
    space = get_space(name)
    seed = load_seed(SEEDS[name.rsplit("_", 1)[0]])
    assert [len(ops) for ops in seed.arch.ops] == [st.layers for st in space.stages]
    assert space.stages[0].ops == (seed.arch.ops[0][0],) and not space.stages[0].allow_skip
    assert space.act == seed.arch.skeleton.act and space.bn_eps == seed.arch.skeleton.bn_eps
    for s, st in enumerate(space.stages[1:], start=1):
        extras = {parse_op(op).extras for op in seed.arch.ops[s]}  # type: ignore[union-attr]
        for l in range(st.layers):
            cands = st.candidates(l)
            assert (SKIP in cands) == (l > 0)
            specs = [parse_op(o) for o in cands if o != SKIP]
            assert {(sp.kernel, sp.expansion) for sp in specs} == {(k, e) for k in (3, 5, 7) for e in (3, 6)}  # type: ignore[union-attr]
            assert {sp.extras for sp in specs} == extras  # type: ignore[union-attr]
    assert fit_problem(seed, space) is None


def test_taps_follow_the_task() -> None:
    det, seg, pose = (get_space(f"mbv3_large_{t}") for t in ("det", "seg", "pose"))
    from fnatune.nets import ChildNet

    def strides(space):  # type: ignore[no-untyped-def]
        arch = space.arch([[st.candidates(0)[0]] * st.layers for st in space.stages])
        return [f.stride for f in ChildNet(arch).feature_info], [f.channels for f in ChildNet(arch).feature_info]

    assert strides(det) == ([4, 8, 16, 32], [24, 40, 112, 160])
    assert strides(seg) == ([16], [160]) and seg.stages[-1].dilation == 2
    assert strides(pose) == ([32], [960])
    assert det.input_size == (800, 1088) and seg.input_size == (1024, 2048) and pose.input_size == (256, 192)


def test_extra_layers_are_remapped_from_the_stages_last_seed_layer() -> None:
    seed = load_seed("efficientnet_b0")
    space = seed_space("effb0_deeper", "efficientnet_b0", "det", extra_layers=(1, 0, 0, 0, 0, 0))
    assert space.stages[1].layers == 3
    ops = [[st.candidates(0)[0]] * st.layers for st in space.stages]
    child, _report = remap(seed, space.arch(ops))
    last_seed = seed.state_dict["stages.1.1.se.fc1.bias"]
    assert torch.equal(child.state_dict()["stages.1.2.se.fc1.bias"], last_seed)


def test_a_seed_space_from_a_non_mbconv_seed_or_an_unknown_task_is_refused() -> None:
    with pytest.raises(ArchError, match="inverted-residual"):
        seed_space("r18", "resnet18", "det")
    with pytest.raises(ArchError, match="task 'cls'"):
        seed_space("x", "efficientnet_b0", "cls")
    with pytest.raises(ArchError, match="extra_layers has 2 entries"):
        seed_space("x", "efficientnet_b0", "det", extra_layers=(1, 1))
