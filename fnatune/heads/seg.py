"""FNA's DeepLabv3 segmentation head (FNA_SPEC §3.4), in plain torch.

The head is plain torch so that ``fnatune cost --task seg`` and the conformance tests run without
OpenMMLab; :mod:`fnatune.mm.seg` wraps the same :class:`ASPPSep` as an mmseg decode head for training,
so :class:`SegNet` has exactly the mmseg model's parameters and MAdds.

ASPP_Sep on the last tap (320 channels at output stride 16), 256 channels:
a 1x1 branch; three separable branches (dw 3x3 dilated 6/12/18 + BN + ReLU, pw 1x1 + BN + ReLU);
image pooling (GAP, 1x1, BN, ReLU, bilinear up); concat (1280) -> 1x1 256 + BN + ReLU + Dropout2d(0.1);
then a 1x1 classifier with bias and bilinear upsampling to the input size (align_corners=True).
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def _conv_bn_relu(c_in: int, c_out: int, k: int = 1, dilation: int = 1, groups: int = 1, eps: float = 1e-5) -> nn.Sequential:
    pad = (k - 1) // 2 * dilation
    return nn.Sequential(nn.Conv2d(c_in, c_out, k, padding=pad, dilation=dilation, groups=groups, bias=False),
                         nn.BatchNorm2d(c_out, eps=eps), nn.ReLU(inplace=True))


class ASPPSep(nn.Module):
    """Separable ASPP with image pooling and a 1x1 bottleneck; returns 256-channel features."""

    def __init__(self, in_channels: int, channels: int = 256, dilations: Sequence[int] = (6, 12, 18),
                 dropout: float = 0.1, bn_eps: float = 1e-5) -> None:
        super().__init__()
        self.branches = nn.ModuleList([_conv_bn_relu(in_channels, channels, eps=bn_eps)])
        for d in dilations:
            self.branches.append(nn.Sequential(
                _conv_bn_relu(in_channels, in_channels, 3, dilation=d, groups=in_channels, eps=bn_eps),
                _conv_bn_relu(in_channels, channels, eps=bn_eps)))
        self.image_pool = _conv_bn_relu(in_channels, channels, eps=bn_eps)
        self.bottleneck = _conv_bn_relu(channels * (len(dilations) + 2), channels, eps=bn_eps)
        self.dropout = nn.Dropout2d(dropout)

    def forward(self, x: Tensor) -> Tensor:
        outs = [b(x) for b in self.branches]
        pooled = self.image_pool(F.adaptive_avg_pool2d(x, 1))
        outs.append(F.interpolate(pooled, size=x.shape[-2:], mode="bilinear", align_corners=True))
        return self.dropout(self.bottleneck(torch.cat(outs, dim=1)))


class SegNet(nn.Module):
    """Backbone (OS16 arch, one tap) + ASPPSep + 1x1 classifier + bilinear upsampling to the input."""

    def __init__(self, backbone: nn.Module, num_classes: int = 19, channels: int = 256) -> None:
        super().__init__()
        self.backbone = backbone
        in_ch = backbone.feature_info[-1].channels  # type: ignore[union-attr,index]
        self.aspp = ASPPSep(in_ch, channels)
        self.classifier = nn.Conv2d(channels, num_classes, 1)

    def forward(self, x: Tensor) -> Tensor:
        logits = self.classifier(self.aspp(self.backbone(x)[-1]))
        return F.interpolate(logits, size=x.shape[-2:], mode="bilinear", align_corners=True)
