"""The ResNet family: residual blocks with a searchable spatial conv, ``r_k{K}_g{G}`` and ``r_k{K}_g{G}_e{E}``.

* **Basic** block ``r_k{K}_g{G}`` (ResNet-18/34): KxK conv (stride, dilation, G groups) + BN + ReLU, KxK conv
  (G groups) + BN, plus the shortcut, then ReLU. torchvision's BasicBlock is ``r_k3_g1``.
* **Bottleneck** ``r_k{K}_g{G}_e{E}`` (ResNet-50/101/152, ResNeXt, wide ResNets): 1x1 conv to the inner width
  ``C_out / E`` + BN + ReLU, KxK conv (stride, dilation, G groups) + BN + ReLU, 1x1 conv to ``C_out`` + BN,
  plus the shortcut, then ReLU. torchvision's ResNet-50 block is ``r_k3_g1_e4``, ResNeXt-50 32x4d's
  ``r_k3_g32_e2``, Wide ResNet-50-2's ``r_k3_g1_e2``. The stride sits in the KxK conv (ResNet v1.5, as
  torchvision and mmdet's "pytorch" style).
* The shortcut is a 1x1 conv (stride) + BN where the block changes stride or width (torchvision's
  ``downsample``), the identity otherwise.

The search (FNA++'s ResNet space as far as it is known, FNA_SPEC §4.6) chooses the spatial conv's kernel and
group count per block; the widths are the seed's. Remap rule: the block's input and output channels keep their
leading overlap; a bottleneck's inner channels are chosen by the width rule (ranked by the first BN) and used
for all three convs; the spatial conv maps its groups by the writer's group rule (block-diagonal by default,
FNA_SPEC §4.6 b) and its kernel by the kernel rule.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

from torch import Tensor

from fnatune.blocks import Block, BlockFamily, Glyph, OpSpec, register_family
from fnatune.errors import ArchError, RemapError
from fnatune.layers import ACTIVATIONS, BNOptions, ConvBNAct, conv_madds, same_out

if TYPE_CHECKING:
    from fnatune.tensor_rules import TensorWriter

_OP_RE = re.compile(r"^r_k(\d+)_g(\d+)(?:_e(\d+))?$")
GROUP_COLOURS = {1: "#6a040f", 2: "#dc2f02", 4: "#f48c06"}


@dataclass(frozen=True)
class ResNetSpec(OpSpec):
    """A parsed ResNet op: spatial kernel, groups, and (bottleneck) the ratio of output to inner width."""

    kernel: int
    groups: int
    expansion: int | None = None  # None: a basic block
    family: ClassVar[str] = "resnet"

    @property
    def bottleneck(self) -> bool:
        return self.expansion is not None

    @property
    def name(self) -> str:
        return f"r_k{self.kernel}_g{self.groups}" + (f"_e{self.expansion}" if self.bottleneck else "")

    def inner(self, c_out: int) -> int:
        """The width of the block's spatial conv."""
        return c_out // self.expansion if self.expansion else c_out


class ResBlock(Block):
    """A basic block or a bottleneck (see the module docstring); child names ``conv1``, ``conv2``, (``conv3``),
    ``downsample``, as torchvision's."""

    def __init__(self, spec: ResNetSpec, c_in: int, c_out: int, stride: int = 1, dilation: int = 1,
                 act: str = "relu", bn: BNOptions = BNOptions()) -> None:
        super().__init__()
        self.spec = spec
        self.c_in, self.c_out, self.stride = c_in, c_out, stride
        self.width = width = spec.inner(c_out)
        k, g = spec.kernel, spec.groups
        if spec.bottleneck:
            self.conv1 = ConvBNAct(c_in, width, 1, act=act, bn=bn)
            self.conv2 = ConvBNAct(width, width, k, stride, dilation, groups=g, act=act, bn=bn)
            self.conv3: ConvBNAct | None = ConvBNAct(width, c_out, 1, act=None, bn=bn)
        else:
            self.conv1 = ConvBNAct(c_in, c_out, k, stride, dilation, groups=g, act=act, bn=bn)
            self.conv2 = ConvBNAct(c_out, c_out, k, 1, dilation, groups=g, act=None, bn=bn)
            self.conv3 = None
        self.downsample = (ConvBNAct(c_in, c_out, 1, stride, act=None, bn=bn)
                           if stride != 1 or c_in != c_out else None)
        self.act = ACTIVATIONS[act]()

    def forward_with_expansion(self, x: Tensor) -> tuple[Tensor, Tensor]:
        out = self.conv2(self.conv1(x))
        if self.conv3 is not None:
            out = self.conv3(out)
        out = self.act(out + (self.downsample(x) if self.downsample is not None else x))
        return out, out


class ResNetFamily(BlockFamily):
    """ResNet basic blocks and bottlenecks with a searchable spatial conv: r_k{K}_g{G}[_e{E}]."""

    name = "resnet"
    grammar = "r_k<kernel>_g<groups> or r_k<kernel>_g<groups>_e<expansion> (such as r_k5_g2, r_k3_g1_e4)"

    def parse(self, op: str) -> ResNetSpec | None:
        m = _OP_RE.match(op)
        if m is None:
            return None
        kernel, groups = int(m.group(1)), int(m.group(2))
        expansion = int(m.group(3)) if m.group(3) is not None else None
        if kernel % 2 == 0 or kernel < 1:
            raise ArchError(f"op '{op}': the kernel size must be odd, got {kernel}")
        if groups < 1 or (expansion is not None and expansion < 1):
            raise ArchError(f"op '{op}': groups and expansion must be >= 1")
        return ResNetSpec(kernel, groups, expansion)

    def spec(self, kernel: int, groups: int, expansion: int | None) -> ResNetSpec:
        """The spec of a block with these numbers (how the seed converter names what it finds)."""
        return ResNetSpec(kernel, groups, expansion)

    def check(self, spec: OpSpec, c_in: int, c_out: int) -> str | None:
        assert isinstance(spec, ResNetSpec)
        if spec.bottleneck and c_out % spec.expansion:  # type: ignore[operator]
            return f"the output width {c_out} is not a multiple of the expansion {spec.expansion}"
        width = spec.inner(c_out)
        if width % spec.groups:
            what = "inner" if spec.bottleneck else "output"
            return f"its {width}-channel {what} width is not divisible by its {spec.groups} groups"
        if not spec.bottleneck and c_in % spec.groups:
            return f"its {c_in}-channel input is not divisible by its {spec.groups} groups"
        return None

    def fits(self, seed: OpSpec, target: OpSpec) -> str | None:
        assert isinstance(seed, ResNetSpec) and isinstance(target, ResNetSpec)
        if seed.bottleneck != target.bottleneck:
            kinds = {True: "bottleneck", False: "basic"}
            return (f"a {kinds[seed.bottleneck]} block ('{seed.name}') cannot be remapped into a "
                    f"{kinds[target.bottleneck]} block ('{target.name}')")
        return None

    def build(self, spec: OpSpec, c_in: int, c_out: int, stride: int, dilation: int, act: str, bn: BNOptions) -> ResBlock:
        assert isinstance(spec, ResNetSpec)
        return ResBlock(spec, c_in, c_out, stride, dilation, act, bn)

    def remap(self, writer: TensorWriter, src: Block, dst: Block) -> None:
        assert isinstance(src, ResBlock) and isinstance(dst, ResBlock)
        problem = self.fits(src.spec, dst.spec)
        if problem:
            raise RemapError(problem)
        cin, cout = writer.leading(min(src.c_in, dst.c_in)), writer.leading(min(src.c_out, dst.c_out))
        if dst.spec.bottleneck:  # type: ignore[attr-defined]
            assert src.conv3 is not None and dst.conv3 is not None
            inner = writer.channels(src.width, dst.width, bn=src.conv1.bn, weight=src.conv1.conv.weight)
            writer.conv_bn(src.conv1, dst.conv1, inner, cin)
            writer.conv_bn(src.conv2, dst.conv2, inner, inner)
            writer.conv_bn(src.conv3, dst.conv3, cout, inner)
        else:
            writer.conv_bn(src.conv1, dst.conv1, cout, cin)
            writer.conv_bn(src.conv2, dst.conv2, cout, cout)
        if src.downsample is not None and dst.downsample is not None:
            writer.conv_bn(src.downsample, dst.downsample, cout, cin)

    def madds(self, spec: OpSpec, c_in: int, c_out: int, stride: int, dilation: int, in_hw: tuple[int, int]) -> int:
        assert isinstance(spec, ResNetSpec)
        out_hw = (same_out(in_hw[0], stride), same_out(in_hw[1], stride))
        k, g, width = spec.kernel, spec.groups, spec.inner(c_out)
        if spec.bottleneck:
            total = (conv_madds(c_in, width, 1, in_hw) + conv_madds(width, width, k, out_hw, groups=g)
                     + conv_madds(width, c_out, 1, out_hw))
        else:
            total = conv_madds(c_in, c_out, k, out_hw, groups=g) + conv_madds(c_out, c_out, k, out_hw, groups=g)
        if stride != 1 or c_in != c_out:
            total += conv_madds(c_in, c_out, 1, out_hw)
        return total

    def glyph(self, spec: OpSpec) -> Glyph:
        """Height grows with the kernel, colour lightens with the groups."""
        assert isinstance(spec, ResNetSpec)
        return Glyph(0.3 + 0.1 * spec.kernel, GROUP_COLOURS.get(spec.groups, "#ffba08"), spec.name)

    def legend(self) -> list[Glyph]:
        return [Glyph(0.5, c, f"g{g}") for g, c in GROUP_COLOURS.items()]


RESNET = register_family(ResNetFamily())
