"""SimpleBaseline's pose head and heatmap codec (Xiao et al. 2018), in plain torch.

The head sits on the backbone's last tap: ``num_deconv`` transposed convolutions (4x4, stride 2, no bias) each
followed by BN and ReLU, at ``channels`` wide, then a 1x1 conv to one heatmap per joint. From a stride-32 tap the
three deconvolutions give heatmaps at a quarter of the input size (64x48 for a 256x192 crop).

Targets are unnormalised Gaussians (peak 1, ``sigma`` in heatmap pixels) centred on each joint, with a weight per
joint that is 0 for an unlabelled joint or one off the heatmap; the loss is the weighted mean squared error.
Decoding takes each heatmap's maximum and moves it a quarter pixel towards the higher neighbour (SimpleBaseline's
rule), which recovers a joint to well within a heatmap pixel.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor, nn


class SimpleBaselineHead(nn.Module):
    def __init__(self, in_channels: int, num_joints: int, channels: int = 256, num_deconv: int = 3) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        c = in_channels
        for _ in range(num_deconv):
            layers += [nn.ConvTranspose2d(c, channels, 4, stride=2, padding=1, bias=False), nn.BatchNorm2d(channels),
                       nn.ReLU(inplace=True)]
            c = channels
        self.deconv = nn.Sequential(*layers)
        self.final = nn.Conv2d(c, num_joints, 1)
        for m in self.deconv.modules():  # SimpleBaseline's init: normal(0.001) deconvs, unit BN, zero-bias head
            if isinstance(m, nn.ConvTranspose2d):
                nn.init.normal_(m.weight, std=0.001)
        nn.init.normal_(self.final.weight, std=0.001)
        nn.init.zeros_(self.final.bias)

    def forward(self, x: Tensor) -> Tensor:
        return self.final(self.deconv(x))


class PoseNet(nn.Module):
    """A backbone (``.net``, returning its taps) and the SimpleBaseline head on its last tap."""

    def __init__(self, backbone: nn.Module, num_joints: int = 17, channels: int = 256, num_deconv: int = 3) -> None:
        super().__init__()
        self.backbone = backbone
        info = backbone.feature_info[-1]  # type: ignore[index,union-attr]
        self.head = SimpleBaselineHead(info.channels, num_joints, channels, num_deconv)
        self.num_deconv = num_deconv
        self.heatmap_stride = info.stride // 2 ** num_deconv

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.backbone(x)[-1])


def encode(joints: np.ndarray, heatmap_size: Sequence[int], stride: float, sigma: float = 2.0
           ) -> tuple[np.ndarray, np.ndarray]:
    """Joints ``K x 3`` (x, y in input pixels, visibility) -> heatmaps ``K x H x W`` and weights ``K``."""
    h, w = int(heatmap_size[0]), int(heatmap_size[1])
    k = joints.shape[0]
    heatmaps = np.zeros((k, h, w), np.float32)
    weights = (joints[:, 2] > 0).astype(np.float32)
    ys, xs = np.arange(h, dtype=np.float32)[:, None], np.arange(w, dtype=np.float32)[None, :]
    radius = 3 * sigma
    for j in range(k):
        if weights[j] == 0:
            continue
        mx, my = int(joints[j, 0] / stride + 0.5), int(joints[j, 1] / stride + 0.5)
        if mx - radius >= w or my - radius >= h or mx + radius < 0 or my + radius < 0:
            weights[j] = 0  # its Gaussian would not touch the heatmap
            continue
        heatmaps[j] = np.exp(-((xs - mx) ** 2 + (ys - my) ** 2) / (2 * sigma ** 2))
    return heatmaps, weights


def decode(heatmaps: Tensor) -> tuple[Tensor, Tensor]:
    """Heatmaps ``N x K x H x W`` -> joint coordinates ``N x K x 2`` (heatmap pixels) and peak values ``N x K``."""
    n, k, h, w = heatmaps.shape
    flat = heatmaps.reshape(n, k, -1)
    maxvals, idx = flat.max(dim=-1)
    x, y = (idx % w).long(), (idx // w).long()
    coords = torch.stack([x, y], dim=-1).to(heatmaps.dtype)
    # a quarter pixel towards the higher neighbour, where both neighbours exist
    hm = heatmaps.reshape(n * k, h, w)
    xi, yi = x.reshape(-1), y.reshape(-1)
    rows = torch.arange(n * k)
    inner_x, inner_y = (xi > 0) & (xi < w - 1), (yi > 0) & (yi < h - 1)
    dx = hm[rows, yi, (xi + 1).clamp(max=w - 1)] - hm[rows, yi, (xi - 1).clamp(min=0)]
    dy = hm[rows, (yi + 1).clamp(max=h - 1), xi] - hm[rows, (yi - 1).clamp(min=0), xi]
    coords = coords.reshape(-1, 2)
    coords[:, 0] += torch.where(inner_x, torch.sign(dx) * 0.25, torch.zeros_like(dx))
    coords[:, 1] += torch.where(inner_y, torch.sign(dy) * 0.25, torch.zeros_like(dy))
    return coords.reshape(n, k, 2), maxvals


def flip_back(heatmaps: Tensor, flip_pairs: Sequence[tuple[int, int]], shift: bool = True) -> Tensor:
    """Heatmaps of a horizontally flipped input, back in the original's frame: mirrored, left and right joints
    swapped, and (SimpleBaseline's ``shift_heatmap``) moved one pixel right to undo the flip's half-pixel offset."""
    out = heatmaps.flip(-1).clone()
    for a, b in flip_pairs:
        out[:, [a, b]] = out[:, [b, a]]
    if shift:
        out[..., 1:] = out[..., :-1].clone()
    return out


def weighted_mse(pred: Tensor, target: Tensor, weights: Tensor) -> Tensor:
    """Mean squared error over every joint's heatmap, each joint weighted (0 drops an unlabelled joint)."""
    w = weights[..., None, None]
    return ((pred - target) * w).pow(2).mean()
