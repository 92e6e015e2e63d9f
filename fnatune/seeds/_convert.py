"""Turn an inverted-residual network (any module layout) into our canonical seed layout (MBConv blocks).

An adapter only has to say *where* the stem, each block's (conv, BN) pairs, the tail and the classifier
are in its model. This module reads their shapes to build the seed's :class:`~fnatune.arch.Arch`
(stages are runs of blocks with one output width, a new stage starting at every stride or width
change) and the key map canonical -> original that copies the tensors across.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from torch import nn

from fnatune.arch import Arch, Skeleton, StageShape
from fnatune.blocks.mbconv import MBCONV
from fnatune.errors import SeedError

_TENSOR_SUFFIXES = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")


@dataclass(frozen=True)
class ConvBN:
    """Module names of a conv and the BN that follows it in the source model."""

    conv: str
    bn: str


@dataclass(frozen=True)
class SEParts:
    """A squeeze-and-excitation module in the source model: its reduce and expand convs (both with bias) and how
    its library sizes and gates it (FNA_SPEC §14.2): ``ratio`` of the block input (``from_hidden`` False:
    EfficientNet, MnasNet-A1) or of the hidden width (True: MobileNetV3); ``hard_gate``: hard sigmoid with ReLU
    inside (MobileNetV3), else sigmoid with the block's activation."""

    fc1: str
    fc2: str
    ratio: float = 0.25
    from_hidden: bool = False
    hard_gate: bool = False


@dataclass(frozen=True)
class BlockParts:
    """An inverted residual block in the source model: optional expand, depthwise, optional SE, project; ``act``
    is the block's activation where it differs from the network's (MobileNetV3's ReLU blocks)."""

    expand: ConvBN | None
    dw: ConvBN
    project: ConvBN
    se: SEParts | None = None
    act: str | None = None


@dataclass
class SeedLayout:
    """The canonical arch of a source model and how to copy its tensors."""

    arch: Arch
    key_map: dict[str, str]  # canonical state-dict key -> source state-dict key
    # "weight"/"bias" (and "pre.weight"/"pre.bias" for a hidden pre-logits layer) -> source key
    classifier_keys: dict[str, str] = field(default_factory=dict)


def conv_bn_pairs(model: nn.Module, prefix: str) -> list[ConvBN]:
    """(conv, BN) pairs inside submodule ``prefix``, in definition order."""
    root = model.get_submodule(prefix)
    convs = [f"{prefix}.{n}" for n, m in root.named_modules() if isinstance(m, nn.Conv2d)]
    bns = [f"{prefix}.{n}" for n, m in root.named_modules() if isinstance(m, nn.BatchNorm2d)]
    if len(convs) != len(bns):
        raise SeedError(f"block '{prefix}' has {len(convs)} convs but {len(bns)} BNs; expected one BN per conv")
    return [ConvBN(c, b) for c, b in zip(convs, bns)]


def block_from_pairs(pairs: Sequence[ConvBN], where: str, se: SEParts | None = None, act: str | None = None
                     ) -> BlockParts:
    if len(pairs) == 3:
        return BlockParts(pairs[0], pairs[1], pairs[2], se, act)
    if len(pairs) == 2:
        return BlockParts(None, pairs[0], pairs[1], se, act)
    raise SeedError(f"block '{where}' has {len(pairs)} conv+BN pairs; an inverted residual has 2 or 3")


def bn_pairs_and_se(model: nn.Module, prefix: str, se_type: type[nn.Module] | tuple[type[nn.Module], ...],
                    fc_names: tuple[str, str], ratio: float, from_hidden: bool, hard_gate: bool,
                    act: str | None = None) -> BlockParts:
    """An inverted residual whose SE module (if any) is of ``se_type`` with reduce/expand convs ``fc_names``:
    its (conv, BN) pairs come from everything outside the SE, whose two biased convs have no BN."""
    root = model.get_submodule(prefix)
    se_mods = [n for n, m in root.named_modules() if isinstance(m, se_type)]
    if len(se_mods) > 1:
        raise SeedError(f"block '{prefix}' has {len(se_mods)} squeeze-and-excitation modules; one is expected")
    inside = f"{se_mods[0]}." if se_mods else None
    convs = [f"{prefix}.{n}" for n, m in root.named_modules()
             if isinstance(m, nn.Conv2d) and not (inside and n.startswith(inside))]
    bns = [f"{prefix}.{n}" for n, m in root.named_modules() if isinstance(m, nn.BatchNorm2d)]
    if len(convs) != len(bns):
        raise SeedError(f"block '{prefix}' has {len(convs)} convs outside its SE but {len(bns)} BNs; expected one "
                        "BN per conv")
    se = (SEParts(f"{prefix}.{se_mods[0]}.{fc_names[0]}", f"{prefix}.{se_mods[0]}.{fc_names[1]}", ratio,
                  from_hidden, hard_gate) if se_mods else None)
    return block_from_pairs([ConvBN(c, b) for c, b in zip(convs, bns)], prefix, se, act)


def _block_op(b: BlockParts, conv: Callable[[str], nn.Conv2d], c_in: int, k: int, hidden: int, act: str) -> str:
    """The op name of a source block, checked: its hidden and SE widths must be what the grammar computes from
    its tokens, so that the canonical block built from the name has the source's shapes."""
    block_act = b.act if b.act not in (None, act) else None
    se = b.se
    spec = MBCONV.spec(k, hidden / c_in, se.ratio if se else None, bool(se and se.from_hidden),
                       bool(se and se.hard_gate), block_act, pw_expand=b.expand is not None)
    if b.expand is None and spec.expansion != 1:
        raise SeedError(f"block at '{b.dw.conv}' widens {c_in} to {hidden} channels without an expand conv")
    if spec.hidden(c_in) != hidden:
        raise SeedError(f"block at '{b.dw.conv}': hidden width {hidden} on {c_in} inputs is not round({c_in} x "
                        f"expansion) for any expansion the op grammar writes")
    if se is not None:
        fc1, fc2 = conv(se.fc1), conv(se.fc2)
        if fc1.in_channels != hidden or fc2.out_channels != hidden or fc1.kernel_size != (1, 1) or fc1.bias is None:
            raise SeedError(f"block at '{b.dw.conv}': its SE '{se.fc1}' is not a pair of biased 1x1 convs on the "
                            f"{hidden} hidden channels")
        if fc1.out_channels != spec.se_width(c_in):
            raise SeedError(f"block at '{b.dw.conv}': its SE reduces to {fc1.out_channels} channels, but '{spec.name}' "
                            f"gives {spec.se_width(c_in)}; the seed's SE rounds its width in a way fnatune cannot "
                            "express")
    return spec.name


def build_layout(
    model: nn.Module,
    stem: ConvBN,
    blocks: Sequence[BlockParts],
    tail: ConvBN | None,
    act: str,
    classifier: str | None = None,
    pre_logits: str | None = None,
) -> SeedLayout:
    mods = dict(model.named_modules())

    def conv(name: str) -> nn.Conv2d:
        m = mods[name]
        assert isinstance(m, nn.Conv2d)
        return m

    bn_eps = {float(mods[p.bn].eps) for p in [stem] + [q for b in blocks for q in (b.expand, b.dw, b.project) if q]}
    if len(bn_eps) != 1:
        raise SeedError(f"the seed's BN layers use several eps values {sorted(bn_eps)}; one is expected")

    stem_conv = conv(stem.conv)
    shapes: list[StageShape] = []
    ops: list[list[str]] = []
    pairs: dict[str, str] = {"stem.conv": stem.conv, "stem.bn": stem.bn}
    c_prev = stem_conv.out_channels
    for b in blocks:
        dw, proj = conv(b.dw.conv), conv(b.project.conv)
        c_in = conv(b.expand.conv).in_channels if b.expand else dw.in_channels
        k, stride, dil = dw.kernel_size[0], dw.stride[0], dw.dilation[0]
        if (dw.kernel_size[0] != dw.kernel_size[1] or dw.stride[0] != dw.stride[1]
                or dw.groups != dw.in_channels or dw.padding[0] != dil * (k - 1) // 2):
            raise SeedError(f"block at '{b.dw.conv}' is not a square 'same'-padded depthwise conv; cannot convert")
        if c_in != c_prev:
            raise SeedError(f"block at '{b.dw.conv}' takes {c_in} channels but the previous layer gives {c_prev}")
        op = _block_op(b, conv, c_in, k, dw.in_channels, act)
        new_stage = not shapes or stride != 1 or proj.out_channels != shapes[-1].out_channels
        if new_stage:
            shapes.append(StageShape(proj.out_channels, stride, dil))
            ops.append([])
        s, l = len(shapes) - 1, len(ops[-1])
        ops[-1].append(op)
        base = f"stages.{s}.{l}"
        if b.expand:
            pairs[f"{base}.expand.conv"], pairs[f"{base}.expand.bn"] = b.expand.conv, b.expand.bn
        pairs[f"{base}.dw.conv"], pairs[f"{base}.dw.bn"] = b.dw.conv, b.dw.bn
        if b.se:
            pairs[f"{base}.se.fc1"], pairs[f"{base}.se.fc2"] = b.se.fc1, b.se.fc2
        pairs[f"{base}.project.conv"], pairs[f"{base}.project.bn"] = b.project.conv, b.project.bn
        c_prev = proj.out_channels
    tail_channels = None
    if tail is not None:
        tail_channels = conv(tail.conv).out_channels
        pairs["tail.conv"], pairs["tail.bn"] = tail.conv, tail.bn

    skeleton = Skeleton(
        stages=tuple(shapes),
        stem_channels=stem_conv.out_channels,
        stem_stride=stem_conv.stride[0],
        stem_kernel=stem_conv.kernel_size[0],
        tail_channels=tail_channels,
        act=act,
        bn_eps=bn_eps.pop(),
        taps=("tail",) if tail_channels is not None else (str(len(shapes) - 1),),
        in_channels=stem_conv.in_channels,
    )
    arch = Arch(skeleton, tuple(tuple(o) for o in ops))
    source_keys = set(model.state_dict())
    key_map = {}
    for ours, theirs in pairs.items():
        for suffix in _TENSOR_SUFFIXES:
            if f"{theirs}.{suffix}" in source_keys:
                key_map[f"{ours}.{suffix}"] = f"{theirs}.{suffix}"
    classifier_keys = {}
    if classifier is not None:
        classifier_keys = {sfx: f"{classifier}.{sfx}" for sfx in ("weight", "bias") if f"{classifier}.{sfx}" in source_keys}
        if pre_logits is not None:  # a hidden layer between pooling and the logits (MobileNetV3's 960 -> 1280)
            classifier_keys.update({f"pre.{sfx}": f"{pre_logits}.{sfx}" for sfx in ("weight", "bias")
                                    if f"{pre_logits}.{sfx}" in source_keys})
    return SeedLayout(arch, key_map, classifier_keys)
