"""The MBConv family (FNA_SPEC §3.1, §14): inverted residual blocks ``k{K}_e{E}[_se{R}|_sem{R}][_hsig][_{act}]``.

An MBConv is, in order: 1x1 expand conv (C -> hidden) + BN + activation; KxK depthwise conv (stride,
dilation, "same" padding) + BN + activation; optionally squeeze-and-excitation on the hidden channels; 1x1
project conv (hidden -> C_out) + BN without activation; plus a residual add iff C_in == C_out and stride == 1.
``e1`` drops the expand conv. No conv bias outside SE. Its inner activation (the ``S.L.expand`` tap) is the
expansion's output.

The grammar, token by token (a NAS network's layer carries more than FNA's MobileNetV2 layers; FNA_SPEC §14.2):

* ``k{K}``: the depthwise kernel (odd);
* ``e{E}``: the expansion; ``hidden = round(C_in * E)``. An integer in a search space (FNA's {3, 6}), a float
  such as ``e2.3`` or ``e2.5`` where a seed's own layer has one (MobileNetV3's 184 and 200 hidden channels on 80);
* ``pw``: only with ``e1``, the block keeps a 1x1 expand conv (+ BN + activation) of the input's width, as
  FBNet's ``ir_..._e1`` blocks do (MobileNetV2's and MnasNet's e1 blocks have none);
* ``se{R}``: SE whose reduced width is ``max(1, floor(C_in * R))``, from the block *input* (EfficientNet,
  timm's MnasNet-A1), activation inside = the block's, sigmoid gate;
* ``sem{R}``: SE whose reduced width is ``make_divisible(hidden * R, 8)``, from the *hidden* width (MobileNetV3
  in torchvision and timm);
* ``hsig``: the SE gate is a hard sigmoid, and the SE's inner activation is ReLU (MobileNetV3's SE, both
  libraries: ``scale_activation=Hardsigmoid`` / ``gate_layer='hard_sigmoid', force_act_layer=ReLU``);
* ``relu`` | ``relu6`` | ``hswish`` | ``silu``: the block's activation; without it, the skeleton's.

Tokens come in that order; ``spec.name`` writes the canonical form, and a name in another order or with an
unknown token is refused with the token and this grammar. The search chooses kernel x expansion (and skip); a
space built from a seed keeps each seed layer's SE, gate and activation in all its candidates.

Remap rule (FNA_SPEC §4.3, §4.4, §14.3): one hidden-channel index set, chosen by the width rule, is applied to the
expand-conv outputs, both BNs, the depthwise filters, the SE reduce conv's inputs, the SE expand conv's outputs
and bias, and the project-conv inputs; the SE's reduced channels keep their leading overlap (new ones: zero); the
depthwise kernel is placed by the kernel rule; input and output channels keep their leading overlap.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

from torch import Tensor

from fnatune.blocks import Block, BlockFamily, Glyph, OpSpec, register_family
from fnatune.errors import ArchError, RemapError
from fnatune.layers import ACTIVATIONS, BNOptions, ConvBNAct, SqueezeExcite, conv_madds, make_divisible, same_out

if TYPE_CHECKING:
    from fnatune.tensor_rules import TensorWriter

_NUM = r"\d+(?:\.\d+)?"
_TOKENS = {
    "kernel": re.compile(r"^k(\d+)$"),
    "expansion": re.compile(rf"^e({_NUM})$"),
    "pw": re.compile(r"^pw$"),
    "se": re.compile(rf"^se(m?)({_NUM})$"),
    "gate": re.compile(r"^hsig$"),
    "act": re.compile(r"^(" + "|".join(sorted(ACTIVATIONS, key=len, reverse=True)) + r")$"),
}
_ORDER = ("kernel", "expansion", "pw", "se", "gate", "act")
KERNEL_COLOURS = {3: "#8ecae6", 5: "#219ebc", 7: "#023047"}


def _num(text: str) -> float | int:
    v = float(text)
    return int(v) if v.is_integer() else v


def _fmt(v: float) -> str:
    return f"{v:g}"


@dataclass(frozen=True)
class MBConvSpec(OpSpec):
    """A parsed MBConv op: kernel, expansion, and the NAS networks' SE, gate and activation (module docstring)."""

    kernel: int
    expansion: float
    se: float | None = None          # SE ratio; None: no SE
    se_from_hidden: bool = False     # sem{R}: reduced width from the hidden width (MobileNetV3)
    hard_gate: bool = False          # hsig: hard-sigmoid gate, ReLU inside the SE
    act: str | None = None           # None: the skeleton's activation
    pw_expand: bool = False          # pw: an expand conv even at e1 (FBNet)
    family: ClassVar[str] = "mbconv"

    @property
    def name(self) -> str:
        parts = [f"k{self.kernel}", f"e{_fmt(self.expansion)}"] + (["pw"] if self.pw_expand else [])
        if self.se is not None:
            parts.append(f"se{'m' if self.se_from_hidden else ''}{_fmt(self.se)}")
        if self.hard_gate:
            parts.append("hsig")
        if self.act is not None:
            parts.append(self.act)
        return "_".join(parts)

    def hidden(self, c_in: int) -> int:
        """The hidden (expanded) width on ``c_in`` input channels."""
        return round(c_in * self.expansion)

    def se_width(self, c_in: int) -> int | None:
        """The SE's reduced width on ``c_in`` input channels, rounded as the seed's library rounds it."""
        if self.se is None:
            return None
        if self.se_from_hidden:
            return make_divisible(self.hidden(c_in) * self.se, 8)
        return max(1, int(c_in * self.se))

    def block_act(self, default: str) -> str:
        return self.act or default

    def se_act(self, default: str) -> str:
        return "relu" if self.hard_gate else self.block_act(default)

    @property
    def extras(self) -> tuple[object, ...]:
        """What a layer keeps from its seed layer whatever the search picks (SE, gate, activation)."""
        return (self.se, self.se_from_hidden, self.hard_gate, self.act)

    @property
    def has_expand(self) -> bool:
        return self.expansion != 1 or self.pw_expand


class MBConv(Block):
    """Inverted residual block; see the module docstring for the exact layout."""

    def __init__(self, c_in: int, c_out: int, kernel: int, expansion: float, stride: int = 1, dilation: int = 1,
                 act: str = "relu6", bn: BNOptions = BNOptions(), spec: MBConvSpec | None = None) -> None:
        super().__init__()
        spec = spec if spec is not None else MBConvSpec(kernel, _num(str(expansion)))
        hidden = spec.hidden(c_in)
        block_act = spec.block_act(act)
        self.spec = spec
        self.c_in, self.c_out, self.hidden = c_in, c_out, hidden
        self.kernel, self.expansion, self.stride, self.dilation = spec.kernel, spec.expansion, stride, dilation
        self.expand = ConvBNAct(c_in, hidden, 1, act=block_act, bn=bn) if spec.has_expand else None
        self.dw = ConvBNAct(hidden, hidden, spec.kernel, stride, dilation, groups=hidden, act=block_act, bn=bn)
        reduced = spec.se_width(c_in)
        self.se = (SqueezeExcite(hidden, reduced, spec.se_act(act), "hsigmoid" if spec.hard_gate else "sigmoid")
                   if reduced is not None else None)
        self.project = ConvBNAct(hidden, c_out, 1, act=None, bn=bn)
        self.use_residual = c_in == c_out and stride == 1

    def forward_with_expansion(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Return ``(output, expansion activation)``; the latter feeds SSDLite's in-block head tap."""
        hidden = self.expand(x) if self.expand is not None else x
        h = self.dw(hidden)
        if self.se is not None:
            h = self.se(h)
        out = self.project(h)
        if self.use_residual:
            out = out + x
        return out, hidden


class MBConvFamily(BlockFamily):
    """Inverted residual blocks: MobileNetV2's k{K}_e{E} (FNA's search space) and the NAS networks' SE, gate
    and activation tokens (EfficientNet, MobileNetV3, MnasNet-A1)."""

    name = "mbconv"
    grammar = ("k<kernel>_e<expansion>[_pw][_se<ratio>|_sem<ratio>][_hsig][_relu|_relu6|_hswish|_silu] "
               "(such as k3_e6, k5_e6_se0.25, k3_e2.3_hswish, k5_e3_sem0.25_hsig_relu)")

    def parse(self, op: str) -> MBConvSpec | None:
        tokens = op.split("_") if isinstance(op, str) else []
        if len(tokens) < 2 or not _TOKENS["kernel"].match(tokens[0]) or not tokens[1].startswith("e"):
            return None
        found: dict[str, re.Match[str]] = {}
        for tok in tokens:
            kind = next((k for k in _ORDER if _TOKENS[k].match(tok)), None)
            if kind is None:
                raise ArchError(f"op '{op}': unknown token '{tok}'; the MBConv grammar is {self.grammar}")
            if kind in found:
                raise ArchError(f"op '{op}': token '{tok}' repeats a {kind} token; the MBConv grammar is {self.grammar}")
            found[kind] = _TOKENS[kind].match(tok)  # type: ignore[assignment]
        kernel, expansion = int(found["kernel"].group(1)), _num(found["expansion"].group(1))
        if kernel % 2 == 0 or kernel < 1:
            raise ArchError(f"op '{op}': the kernel size must be odd, got {kernel}")
        if expansion < 1:
            raise ArchError(f"op '{op}': the expansion ratio must be >= 1, got {_fmt(expansion)}")
        se = found.get("se")
        ratio = _num(se.group(2)) if se else None
        if ratio is not None and not 0 < ratio <= 1:
            raise ArchError(f"op '{op}': the SE ratio must be in (0, 1], got {_fmt(ratio)}")
        if "pw" in found and expansion != 1:
            raise ArchError(f"op '{op}': the token 'pw' (an expand conv at e1) goes only with e1")
        if "gate" in found and se is None:
            raise ArchError(f"op '{op}': the gate token 'hsig' needs an SE token (se<ratio> or sem<ratio>) before it")
        spec = MBConvSpec(kernel, expansion, ratio, bool(se and se.group(1)), "gate" in found,
                          found["act"].group(1) if "act" in found else None, "pw" in found)
        if spec.name != op:
            raise ArchError(f"op '{op}': write it as '{spec.name}' (tokens in the order of the grammar "
                            f"{self.grammar})")
        return spec

    def spec(self, kernel: int, expansion: float, se: float | None = None, se_from_hidden: bool = False,
             hard_gate: bool = False, act: str | None = None, pw_expand: bool = False) -> MBConvSpec:
        """The spec of a block with these numbers (how seed converters name the blocks they find); expansions
        are written with at most 4 significant digits, as a seed's hidden width is ``round(C_in * E)``."""
        e = _num(f"{expansion:.4g}")
        return self.parse(MBConvSpec(kernel, e, se, se_from_hidden, hard_gate, act, pw_expand and e == 1).name)  # type: ignore[return-value]

    def check(self, spec: OpSpec, c_in: int, c_out: int) -> str | None:
        assert isinstance(spec, MBConvSpec)
        if spec.expansion != 1 and spec.hidden(c_in) < 1:
            return f"its hidden width round({c_in} x {_fmt(spec.expansion)}) is 0"
        return None

    def fits(self, seed: OpSpec, target: OpSpec) -> str | None:
        assert isinstance(seed, MBConvSpec) and isinstance(target, MBConvSpec)
        if seed.extras != target.extras:
            return (f"the seed's '{seed.name}' and the target's '{target.name}' differ in SE, gate or activation; "
                    "a layer keeps its seed layer's (only kernel and expansion are searched)")
        return None

    def build(self, spec: OpSpec, c_in: int, c_out: int, stride: int, dilation: int, act: str, bn: BNOptions) -> MBConv:
        assert isinstance(spec, MBConvSpec)
        return MBConv(c_in, c_out, spec.kernel, spec.expansion, stride, dilation, act, bn, spec=spec)

    def inner_width(self, spec: OpSpec, c_in: int) -> int:
        assert isinstance(spec, MBConvSpec)
        return spec.hidden(c_in)

    def remap(self, writer: TensorWriter, src: Block, dst: Block) -> None:
        assert isinstance(src, MBConv) and isinstance(dst, MBConv)
        problem = self.fits(src.spec, dst.spec)
        if problem:
            raise RemapError(problem)
        cin, cout = writer.leading(min(src.c_in, dst.c_in)), writer.leading(min(src.c_out, dst.c_out))
        # the width rule ranks the seed's hidden channels by the BN that scales them (the expand BN; the
        # depthwise BN of an e1 block) or by the expand conv's filters; one index set for all five tensors
        scale_bn = src.expand.bn if src.expand is not None else src.dw.bn
        filters = src.expand.conv.weight if src.expand is not None else src.dw.conv.weight
        hid = writer.channels(src.hidden, dst.hidden, bn=scale_bn, weight=filters)
        if dst.expand is not None and src.expand is not None:
            writer.conv_bn(src.expand, dst.expand, hid, cin)
        writer.conv_bn(src.dw, dst.dw, hid, hid)
        if src.se is not None and dst.se is not None:  # FNA_SPEC §14.3: hidden set I, reduced width leading
            red = writer.leading(min(src.se.fc1.out_channels, dst.se.fc1.out_channels))
            writer.conv(src.se.fc1, dst.se.fc1, red, hid)
            writer.conv(src.se.fc2, dst.se.fc2, hid, red)
        writer.conv(src.project.conv, dst.project.conv, cout, hid)
        writer.bn(src.project.bn, dst.project.bn, cout)

    def madds(self, spec: OpSpec, c_in: int, c_out: int, stride: int, dilation: int, in_hw: tuple[int, int]) -> int:
        assert isinstance(spec, MBConvSpec)
        hidden = spec.hidden(c_in)
        out_hw = (same_out(in_hw[0], stride), same_out(in_hw[1], stride))
        expand = conv_madds(c_in, hidden, 1, in_hw) if spec.has_expand else 0
        total = expand + conv_madds(hidden, hidden, spec.kernel, out_hw, groups=hidden) + conv_madds(hidden, c_out, 1, out_hw)
        reduced = spec.se_width(c_in)
        if reduced is not None:  # SE's two 1x1 convs on the pooled 1x1 map, with biases; the gate's multiply is
            # not counted, as torchvision's published figures do not count it (FNA_SPEC §14, issue 24 item 5)
            total += conv_madds(hidden, reduced, 1, (1, 1), bias=True) + conv_madds(reduced, hidden, 1, (1, 1), bias=True)
        return total

    def glyph(self, spec: OpSpec) -> Glyph:
        """Height grows with the expansion, colour darkens with the kernel."""
        assert isinstance(spec, MBConvSpec)
        return Glyph(0.25 + 0.12 * min(float(spec.expansion), 6.0), KERNEL_COLOURS.get(spec.kernel, "#ffb703"), spec.name)

    def legend(self) -> list[Glyph]:
        return [Glyph(0.5, c, f"k{k}") for k, c in KERNEL_COLOURS.items()]


MBCONV = register_family(MBConvFamily())
