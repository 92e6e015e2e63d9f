"""The search-space DSL and FNA's registered spaces (FNA_SPEC §3)."""
from __future__ import annotations

import pytest

from fnatune.errors import ArchError, UnknownNameError
from fnatune.space import (
    SearchSpace,
    StageSpec,
    get_space,
    list_spaces,
    with_output_stride,
)


def test_registered_spaces_and_sizes() -> None:
    assert {"mbv2_det", "mbv2_seg", "mbv2_ssdlite"} <= set(list_spaces())
    det, seg = get_space("mbv2_det"), get_space("mbv2_seg")
    assert det.num_layers == (1, 4, 4, 4, 4, 4, 1) and seg.num_layers == (1, 4, 4, 6, 6, 4, 1)
    assert len(det.searchable_layers()) == 21 and det.size() == 6**6 * 7**15
    assert len(seg.searchable_layers()) == 25 and seg.size() == 6**6 * 7**19


def test_first_layer_has_no_skip_and_others_do() -> None:
    det = get_space("mbv2_det")
    for s, l in det.searchable_layers():
        assert ("skip" in det.candidates(s, l)) == (l > 0)
    assert det.candidates(0, 0) == ("k3_e1",)  # fixed first layer


def test_output_stride_16_dilation_policy() -> None:
    seg = get_space("mbv2_seg")
    assert [(s.out_channels, s.stride, s.dilation) for s in seg.stages] == [
        (16, 1, 1), (24, 2, 1), (32, 2, 1), (64, 2, 1), (96, 1, 1), (160, 1, 2), (320, 1, 2)]
    os8 = with_output_stride([StageSpec(24, 2, ops=("k3_e6",)), StageSpec(32, 2, ops=("k3_e6",)),
                              StageSpec(64, 2, ops=("k3_e6",)), StageSpec(96, 2, ops=("k3_e6",))], 8)
    assert [(s.stride, s.dilation) for s in os8] == [(2, 1), (2, 1), (1, 2), (1, 4)]


def test_indices_round_trip_and_sampling_is_deterministic() -> None:
    space = get_space("mbv2_ssdlite")
    arch = space.sample(42)
    assert space.arch_from_indices(space.indices_of(arch)) == arch
    assert space.sample(42) == arch and space.sample(43) != arch


def test_unknown_space_lists_known_ones() -> None:
    with pytest.raises(UnknownNameError, match="unknown search space 'mbv2'.*Known search spaces: .*mbv2_det"):
        get_space("mbv2")


def test_declaration_errors_are_clear() -> None:
    with pytest.raises(ArchError, match="do not list 'skip'"):
        StageSpec(24, 2, 4, ops=("k3_e6", "skip"))
    with pytest.raises(ArchError, match="same expansion width"):
        SearchSpace("bad", stages=(StageSpec(16, 1, 1, ops=("k3_e1",)), StageSpec(24, 2, 2, ops=("k3_e3", "k3_e6"))),
                    taps=("1.0.expand",))
    with pytest.raises(ArchError, match="names stage 5"):
        SearchSpace("bad", stages=(StageSpec(16, 1, 1, ops=("k3_e1",)),), taps=("5",))
