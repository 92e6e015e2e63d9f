"""Candidate operations: the MBConv family (``k{K}_e{E}``) and ``skip``.

An MBConv is, in order: 1x1 expand conv (C -> E*C) + BN + activation; KxK depthwise conv (stride,
dilation, "same" padding) + BN + activation; 1x1 project conv (E*C -> C_out) + BN without activation;
plus a residual add iff C_in == C_out and stride == 1 (FNA_SPEC §3.1). ``k3_e1`` drops the expand conv.
No SE block, no conv bias.

Module names are part of the public layout (``expand.conv``, ``dw.bn``, ``project.conv`` ...): the
remapping rules and the seed adapters address tensors through them, never through key slicing.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from fnatune.errors import ArchError

SKIP = "skip"
_OP_RE = re.compile(r"^k(\d+)_e(\d+)$")
ACTIVATIONS: dict[str, type[nn.Module]] = {"relu6": nn.ReLU6, "relu": nn.ReLU}


@dataclass(frozen=True)
class OpSpec:
    """A parsed MBConv op name: kernel size and expansion ratio."""

    kernel: int
    expansion: int

    @property
    def name(self) -> str:
        return f"k{self.kernel}_e{self.expansion}"


def parse_op(name: str) -> OpSpec | None:
    """Parse ``k{K}_e{E}`` into an :class:`OpSpec`; ``skip`` gives ``None``.

    K must be odd (so "same" padding is symmetric) and E >= 1.
    """
    if name == SKIP:
        return None
    m = _OP_RE.match(name) if isinstance(name, str) else None
    if m is None:
        raise ArchError(f"unknown op '{name}': expected 'skip' or 'k<kernel>_e<expansion>' such as 'k3_e6'")
    kernel, expansion = int(m.group(1)), int(m.group(2))
    if kernel % 2 == 0 or kernel < 1:
        raise ArchError(f"op '{name}': the kernel size must be odd, got {kernel}")
    if expansion < 1:
        raise ArchError(f"op '{name}': the expansion ratio must be >= 1, got {expansion}")
    return OpSpec(kernel, expansion)


def check_activation(act: str) -> str:
    if act not in ACTIVATIONS:
        raise ArchError(f"unknown activation '{act}'; known: {', '.join(sorted(ACTIVATIONS))}")
    return act


@dataclass(frozen=True)
class BNOptions:
    """How a BatchNorm is built.

    FNA's super net uses ``affine=False, track_running_stats=False`` inside candidate ops (they always
    normalise with batch statistics); fixed layers and derived nets use ordinary BN.
    """

    eps: float = 1e-5
    momentum: float = 0.1
    affine: bool = True
    track_running_stats: bool = True

    def build(self, channels: int) -> nn.BatchNorm2d:
        return nn.BatchNorm2d(
            channels,
            eps=self.eps,
            momentum=self.momentum,
            affine=self.affine,
            track_running_stats=self.track_running_stats,
        )


class ConvBNAct(nn.Module):
    """Conv2d (no bias) + BN + optional activation, with stable child names ``conv``/``bn``/``act``."""

    def __init__(
        self,
        c_in: int,
        c_out: int,
        kernel: int,
        stride: int = 1,
        dilation: int = 1,
        groups: int = 1,
        act: str | None = "relu6",
        bn: BNOptions = BNOptions(),
    ) -> None:
        super().__init__()
        padding = dilation * (kernel - 1) // 2
        self.conv = nn.Conv2d(c_in, c_out, kernel, stride, padding, dilation=dilation, groups=groups, bias=False)
        self.bn = bn.build(c_out)
        self.act = ACTIVATIONS[act]() if act is not None else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        return self.act(self.bn(self.conv(x)))


class MBConv(nn.Module):
    """Inverted residual block; see the module docstring for the exact layout."""

    def __init__(
        self,
        c_in: int,
        c_out: int,
        kernel: int,
        expansion: int,
        stride: int = 1,
        dilation: int = 1,
        act: str = "relu6",
        bn: BNOptions = BNOptions(),
    ) -> None:
        super().__init__()
        hidden = c_in * expansion
        self.c_in, self.c_out, self.hidden = c_in, c_out, hidden
        self.kernel, self.expansion, self.stride, self.dilation = kernel, expansion, stride, dilation
        self.expand = ConvBNAct(c_in, hidden, 1, act=act, bn=bn) if expansion != 1 else None
        self.dw = ConvBNAct(hidden, hidden, kernel, stride, dilation, groups=hidden, act=act, bn=bn)
        self.project = ConvBNAct(hidden, c_out, 1, act=None, bn=bn)
        self.use_residual = c_in == c_out and stride == 1

    @property
    def name(self) -> str:
        return OpSpec(self.kernel, self.expansion).name

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_with_expansion(x)[0]

    def forward_with_expansion(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Return ``(output, expansion activation)``; the latter feeds SSDLite's in-block head tap."""
        hidden = self.expand(x) if self.expand is not None else x
        out = self.project(self.dw(hidden))
        if self.use_residual:
            out = out + x
        return out, hidden


class Skip(nn.Identity):
    """The ``skip`` op: identity, allowed only where input and output shapes already match."""

    name = SKIP

    def forward_with_expansion(self, x: Tensor) -> tuple[Tensor, Tensor]:
        return x, x


def build_op(
    name: str,
    c_in: int,
    c_out: int,
    stride: int = 1,
    dilation: int = 1,
    act: str = "relu6",
    bn: BNOptions = BNOptions(),
) -> nn.Module:
    """Build a candidate op by name; ``skip`` requires matching shapes."""
    spec = parse_op(name)
    if spec is None:
        if c_in != c_out or stride != 1:
            raise ArchError(f"'skip' needs equal input/output shapes, got {c_in}->{c_out} channels, stride {stride}")
        return Skip()
    return MBConv(c_in, c_out, spec.kernel, spec.expansion, stride, dilation, act, bn)


def hidden_channels(name: str, c_in: int) -> int | None:
    """Width of the expansion activation of op ``name`` on ``c_in`` input channels (None for skip)."""
    spec = parse_op(name)
    return None if spec is None else c_in * spec.expansion


@torch.no_grad()
def kaiming_uniform_like(t: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """A Kaiming-uniform sample with ``t``'s shape (fan-in mode, gain for ReLU), used for noise init."""
    fan_in = t[0].numel() if t.dim() > 1 else t.numel()
    bound = (6.0 / max(fan_in, 1)) ** 0.5
    return (torch.rand(t.shape, generator=generator, dtype=t.dtype) * 2 - 1) * bound
