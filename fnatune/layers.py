"""Generic building blocks every block family and fixed part uses: BN options, conv + BN + activation, and
the noise sample of FNA++'s remapping.

Module names are part of the public layout (``conv``, ``bn``, ``act``): the remapping rules and the seed
adapters address tensors through them, never through key slicing.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from fnatune.errors import ArchError

# hswish and silu are the NAS networks' (MobileNetV3, EfficientNet; FNA_SPEC §14.2); the gates are SE's
ACTIVATIONS: dict[str, type[nn.Module]] = {"relu6": nn.ReLU6, "relu": nn.ReLU, "hswish": nn.Hardswish, "silu": nn.SiLU}
GATES: dict[str, type[nn.Module]] = {"sigmoid": nn.Sigmoid, "hsigmoid": nn.Hardsigmoid}


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


class SqueezeExcite(nn.Module):
    """Squeeze-and-excitation as torchvision and timm build it: global average pool, 1x1 conv ``fc1`` (with
    bias) to ``reduced`` channels, activation, 1x1 conv ``fc2`` (with bias) back, gate, and the input scaled
    channel-wise by it. Child names ``fc1``/``fc2`` are torchvision's (timm: ``conv_reduce``/``conv_expand``)."""

    def __init__(self, channels: int, reduced: int, act: str = "relu", gate: str = "sigmoid") -> None:
        super().__init__()
        self.fc1 = nn.Conv2d(channels, reduced, 1)
        self.act = ACTIVATIONS[act]()
        self.fc2 = nn.Conv2d(reduced, channels, 1)
        self.gate = GATES[gate]()

    def forward(self, x: Tensor) -> Tensor:
        s = x.mean((2, 3), keepdim=True)
        return x * self.gate(self.fc2(self.act(self.fc1(s))))


class Stem(ConvBNAct):
    """The stem: a KxK conv + BN + activation, then (ResNets) a 3x3 max-pool of stride ``pool``. The pool has no
    tensors, so a stem's state dict is a ConvBNAct's."""

    def __init__(self, c_in: int, c_out: int, kernel: int, stride: int, pool: int = 1, act: str | None = "relu6",
                 bn: BNOptions = BNOptions()) -> None:
        super().__init__(c_in, c_out, kernel, stride, act=act, bn=bn)
        self.pool = nn.MaxPool2d(3, pool, 1) if pool > 1 else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        return self.pool(super().forward(x))


def same_out(size: int, stride: int) -> int:
    """Output length of a "same"-padded conv (padding ``dilation * (k - 1) / 2``) of ``stride``: ceil(size / stride)."""
    return -(-size // stride)


def make_divisible(value: float, divisor: int = 8) -> int:
    """``value`` rounded to the nearest multiple of ``divisor`` (at least ``divisor``), but never more than 10%
    below ``value``: the channel rounding of MobileNetV2/V3 and EfficientNet (torchvision's ``_make_divisible``,
    timm's ``make_divisible``)."""
    new = max(divisor, int(value + divisor / 2) // divisor * divisor)
    return new + divisor if new < 0.9 * value else new


def conv_madds(c_in: int, c_out: int, kernel: int, out_hw: tuple[int, int], groups: int = 1, bias: bool = False) -> int:
    """MAdds of a conv as FNA counts them (FNA_SPEC §5.3): ``k*k*C_in/groups`` per output element, + 1 with a bias."""
    n = out_hw[0] * out_hw[1] * c_out
    return n * (c_in // groups) * kernel * kernel + (n if bias else 0)


@torch.no_grad()
def kaiming_uniform_like(t: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """A Kaiming-uniform sample with ``t``'s shape (fan-in mode, gain for ReLU), used for noise init."""
    fan_in = t[0].numel() if t.dim() > 1 else t.numel()
    bound = (6.0 / max(fan_in, 1)) ** 0.5
    return (torch.rand(t.shape, generator=generator, dtype=t.dtype) * 2 - 1) * bound
