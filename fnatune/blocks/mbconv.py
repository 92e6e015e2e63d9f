"""The MBConv family (FNA_SPEC §3.1): inverted residual blocks ``k{K}_e{E}``.

An MBConv is, in order: 1x1 expand conv (C -> E*C) + BN + activation; KxK depthwise conv (stride,
dilation, "same" padding) + BN + activation; 1x1 project conv (E*C -> C_out) + BN without activation;
plus a residual add iff C_in == C_out and stride == 1. ``k3_e1`` drops the expand conv. No SE block, no
conv bias. Its inner activation (the ``S.L.expand`` tap) is the expansion's output.

Remap rule (FNA_SPEC §4.3, §4.4): one hidden-channel index set, chosen by the width rule, is applied to the
expand-conv outputs, both BNs, the depthwise filters and the project-conv inputs; the depthwise kernel is
placed by the kernel rule; input and output channels keep their leading overlap.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

from torch import Tensor

from fnatune.blocks import Block, BlockFamily, Glyph, OpSpec, register_family
from fnatune.errors import ArchError
from fnatune.layers import BNOptions, ConvBNAct, conv_madds, same_out

if TYPE_CHECKING:
    from fnatune.remap import TensorWriter

_OP_RE = re.compile(r"^k(\d+)_e(\d+)$")
KERNEL_COLOURS = {3: "#8ecae6", 5: "#219ebc", 7: "#023047"}


@dataclass(frozen=True)
class MBConvSpec(OpSpec):
    """A parsed MBConv op name: kernel size and expansion ratio."""

    kernel: int
    expansion: int
    family: ClassVar[str] = "mbconv"

    @property
    def name(self) -> str:
        return f"k{self.kernel}_e{self.expansion}"


class MBConv(Block):
    """Inverted residual block; see the module docstring for the exact layout."""

    def __init__(self, c_in: int, c_out: int, kernel: int, expansion: int, stride: int = 1, dilation: int = 1,
                 act: str = "relu6", bn: BNOptions = BNOptions()) -> None:
        super().__init__()
        hidden = c_in * expansion
        self.spec = MBConvSpec(kernel, expansion)
        self.c_in, self.c_out, self.hidden = c_in, c_out, hidden
        self.kernel, self.expansion, self.stride, self.dilation = kernel, expansion, stride, dilation
        self.expand = ConvBNAct(c_in, hidden, 1, act=act, bn=bn) if expansion != 1 else None
        self.dw = ConvBNAct(hidden, hidden, kernel, stride, dilation, groups=hidden, act=act, bn=bn)
        self.project = ConvBNAct(hidden, c_out, 1, act=None, bn=bn)
        self.use_residual = c_in == c_out and stride == 1

    def forward_with_expansion(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Return ``(output, expansion activation)``; the latter feeds SSDLite's in-block head tap."""
        hidden = self.expand(x) if self.expand is not None else x
        out = self.project(self.dw(hidden))
        if self.use_residual:
            out = out + x
        return out, hidden


class MBConvFamily(BlockFamily):
    """MobileNetV2's inverted residual blocks, k{K}_e{E} (FNA's search space)."""

    name = "mbconv"
    grammar = "k<kernel>_e<expansion> (such as k3_e6)"

    def parse(self, op: str) -> MBConvSpec | None:
        m = _OP_RE.match(op)
        if m is None:
            return None
        kernel, expansion = int(m.group(1)), int(m.group(2))
        if kernel % 2 == 0 or kernel < 1:
            raise ArchError(f"op '{op}': the kernel size must be odd, got {kernel}")
        if expansion < 1:
            raise ArchError(f"op '{op}': the expansion ratio must be >= 1, got {expansion}")
        return MBConvSpec(kernel, expansion)

    def spec(self, kernel: int, expansion: int) -> MBConvSpec:
        """The spec of a block with these numbers (how seed converters name the blocks they find)."""
        return self.parse(MBConvSpec(kernel, expansion).name)  # type: ignore[return-value]

    def build(self, spec: OpSpec, c_in: int, c_out: int, stride: int, dilation: int, act: str, bn: BNOptions) -> MBConv:
        assert isinstance(spec, MBConvSpec)
        return MBConv(c_in, c_out, spec.kernel, spec.expansion, stride, dilation, act, bn)

    def inner_width(self, spec: OpSpec, c_in: int) -> int:
        assert isinstance(spec, MBConvSpec)
        return c_in * spec.expansion

    def remap(self, writer: TensorWriter, src: Block, dst: Block) -> None:
        assert isinstance(src, MBConv) and isinstance(dst, MBConv)
        cin, cout = writer.leading(min(src.c_in, dst.c_in)), writer.leading(min(src.c_out, dst.c_out))
        # the width rule ranks the seed's hidden channels by the BN that scales them (the expand BN; the
        # depthwise BN of an e1 block) or by the expand conv's filters; one index set for all five tensors
        scale_bn = src.expand.bn if src.expand is not None else src.dw.bn
        filters = src.expand.conv.weight if src.expand is not None else src.dw.conv.weight
        hid = writer.channels(src.hidden, dst.hidden, bn=scale_bn, weight=filters)
        if dst.expand is not None and src.expand is not None:
            writer.conv_bn(src.expand, dst.expand, hid, cin)
        writer.conv_bn(src.dw, dst.dw, hid, hid)
        writer.conv(src.project.conv, dst.project.conv, cout, hid)
        writer.bn(src.project.bn, dst.project.bn, cout)

    def madds(self, spec: OpSpec, c_in: int, c_out: int, stride: int, dilation: int, in_hw: tuple[int, int]) -> int:
        assert isinstance(spec, MBConvSpec)
        hidden = c_in * spec.expansion
        out_hw = (same_out(in_hw[0], stride), same_out(in_hw[1], stride))
        expand = conv_madds(c_in, hidden, 1, in_hw) if spec.expansion != 1 else 0
        return expand + conv_madds(hidden, hidden, spec.kernel, out_hw, groups=hidden) + conv_madds(hidden, c_out, 1, out_hw)

    def glyph(self, spec: OpSpec) -> Glyph:
        """Height grows with the expansion, colour darkens with the kernel."""
        assert isinstance(spec, MBConvSpec)
        return Glyph(0.25 + 0.12 * spec.expansion, KERNEL_COLOURS.get(spec.kernel, "#ffb703"), spec.name)

    def legend(self) -> list[Glyph]:
        return [Glyph(0.5, c, f"k{k}") for k, c in KERNEL_COLOURS.items()]


MBCONV = register_family(MBConvFamily())
