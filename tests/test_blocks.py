"""Block families: the MBConv grammar and layout (FNA_SPEC §3.1), and the family seam itself."""
from __future__ import annotations

import pytest
import torch

from fnatune.blocks import Skip, build_op, family_of, get_family, parse_op
from fnatune.blocks.mbconv import MBConv, MBConvSpec
from fnatune.errors import ArchError


def test_parse_op_names() -> None:
    assert parse_op("k5_e3") == MBConvSpec(5, 3) and parse_op("skip") is None
    assert parse_op("k5_e3").name == "k5_e3" and family_of("k5_e3") is get_family("mbconv")
    for bad, msg in [("k4_e6", "must be odd"), ("k3_e0", ">= 1"), ("conv", "unknown op 'conv': expected 'skip' or")]:
        with pytest.raises(ArchError, match=msg):
            parse_op(bad)


def test_mbconv_layout_and_residual() -> None:
    op = MBConv(24, 24, 5, 6, stride=1, dilation=2)
    assert op.expand.conv.weight.shape == (144, 24, 1, 1)
    assert op.dw.conv.weight.shape == (144, 1, 5, 5) and op.dw.conv.padding == (4, 4)
    assert op.project.conv.weight.shape == (24, 144, 1, 1) and op.use_residual
    assert isinstance(op.project.act, torch.nn.Identity) and op.expand.conv.bias is None
    e1 = MBConv(32, 16, 3, 1)
    assert e1.expand is None and not e1.use_residual
    x = torch.randn(1, 24, 9, 9)
    out, hidden = op.forward_with_expansion(x)
    assert out.shape == x.shape and hidden.shape == (1, 144, 9, 9)
    assert family_of(op) is get_family("mbconv") and family_of(Skip()) is None


def test_skip_only_where_shapes_match() -> None:
    assert isinstance(build_op("skip", 24, 24), Skip)
    with pytest.raises(ArchError, match="equal input/output shapes"):
        build_op("skip", 16, 24, stride=2)
