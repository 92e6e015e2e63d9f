"""Arch: JSON and block-string round trips, skip sorting, validation messages."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from fnatune.arch import Arch, Tap
from fnatune.errors import ArchError, MissingPathError
from fnatune.space import get_space, load_arch
from search_spaces import ARCHS_DIR


def test_json_round_trip_full_and_short_forms(tmp_path: Path) -> None:
    space = get_space("mbv2_seg")
    arch = space.sample(1)
    path = arch.save(tmp_path / "a.json")
    assert Arch.load(path) == arch
    short_ops = load_arch({"space": "mbv2_seg", "ops": [list(s) for s in arch.ops]})
    short_blocks = load_arch({"space": "mbv2_seg", "blocks": arch.block_string()})
    assert short_ops == arch == short_blocks == load_arch(path)
    # the full form needs no catalog; a short form is read with its space, and Arch says where
    with pytest.raises(ArchError, match="short-form arch .* fnatune.space.load_arch"):
        Arch.from_dict({"space": "mbv2_seg", "blocks": arch.block_string()})
    assert Arch.parse_blocks(arch.block_string()) == arch.ops


def test_sorted_skips_keeps_order_of_other_ops() -> None:
    space = get_space("mbv2_det")
    ops = [list(s) for s in space.sample(0).ops]
    ops[2] = ["k7_e6", "skip", "k3_e3", "skip"]
    arch = space.arch(ops).sorted_skips()
    assert arch.ops[2] == ("k7_e6", "k3_e3", "skip", "skip")
    assert arch.depths[2] == 2


@pytest.mark.parametrize("change,message", [
    (lambda ops: ops[:-1], "it has 6 stages, the space has 7"),
    (lambda ops: ops[:1] + [ops[1][:3]] + ops[2:], "stage 1 has 3 layers, the space has 4"),
    (lambda ops: ops[:1] + [["skip"] + ops[1][1:]] + ops[2:], "first layer of a stage"),
    (lambda ops: ops[:1] + [["k9_e6"] + ops[1][1:]] + ops[2:], r"stage 1 layer 0 is 'k9_e6'; allowed: k3_e3"),
    (lambda ops: ops[:1] + [["conv3"] + ops[1][1:]] + ops[2:], "unknown op 'conv3'"),
])
def test_arch_that_does_not_fit_names_stage_and_layer(change, message: str) -> None:  # type: ignore[no-untyped-def]
    space = get_space("mbv2_det")
    ops = [list(s) for s in space.sample(0).ops]
    with pytest.raises(ArchError, match=message):
        space.arch(change(ops))


def test_ssdlite_head_layer_only_allows_e6() -> None:
    space = get_space("mbv2_ssdlite")
    ops = [list(s) for s in space.sample(0).ops]
    ops[5][0] = "k3_e3"
    with pytest.raises(ArchError, match="stage 5 layer 0 is 'k3_e3'; allowed: k3_e6, k5_e6, k7_e6"):
        space.arch(ops)


def test_file_errors_name_the_file(tmp_path: Path) -> None:
    with pytest.raises(MissingPathError, match="nope.json"):
        load_arch(tmp_path / "nope.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(ArchError, match="bad.json: not valid JSON"):
        load_arch(bad)
    extra = tmp_path / "extra.json"
    extra.write_text(json.dumps({"space": "mbv2_det", "blocks": "k3_e1", "colour": "red"}))
    with pytest.raises(ArchError, match=r"extra.json: unknown key\(s\) \['colour'\]"):
        load_arch(extra)
    unknown = tmp_path / "unknown.json"
    unknown.write_text(json.dumps({"space": "mbv2_dett", "blocks": "k3_e1"}))
    with pytest.raises(Exception, match="Did you mean 'mbv2_det'"):
        load_arch(unknown)


def test_shipped_arch_files_load_and_fit_their_spaces() -> None:
    names = sorted(p.stem for p in ARCHS_DIR.glob("*.json"))
    assert names == ["fna_retinanet", "fna_seg", "fna_ssdlite", "mbv2_retinanet", "mbv2_seg", "mbv2_ssdlite"]
    for p in ARCHS_DIR.glob("*.json"):
        arch = Arch.load(p)
        get_space(arch.space).validate(arch)
    seg = Arch.load(ARCHS_DIR / "fna_seg.json")
    assert seg.block_string() == ("k3_e1 | k3_e6 k3_e6 skip skip | k7_e6 k3_e6 k3_e6 k3_e6 | "
                                  "k7_e6 k7_e6 k5_e6 k7_e6 k7_e6 k5_e6 | k7_e6 k7_e6 k7_e6 k7_e6 skip skip | "
                                  "k7_e6 k5_e6 skip skip | k7_e3")


def test_taps_parse_and_print() -> None:
    for text in ("stem", "tail", "3", "5.0.expand"):
        assert str(Tap.parse(text)) == text
    with pytest.raises(ArchError, match="bad tap '5.expand'"):
        Tap.parse("5.expand")
