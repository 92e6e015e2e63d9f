"""FNA's SSDLite (FNA_SPEC §3.3, §6.2) on plain torch and torchvision's ops, as the mm backend builds it from
mmdet's ``SSDNeck``, its depthwise ``SSDHead`` and ``SSDAnchorGenerator``: the two backbone taps (FNA's 576-channel
expansion and the 1280 tail), four depthwise extra layers to 512/256/256/128 (1x1 to half, dw 3x3/2, 1x1, each
with BN(eps 1e-3) and ReLU6, normal-0.03 init), per level a dw 3x3 + BN + ReLU6 and FNA's bias-free 1x1
predictor followed by a BN (``SSDLightHead``), 4/6/6/6/4/4 anchors with the SSD300-VOC sizes, IoU 0.5/0.5 (one
best anchor per box), softmax cross entropy with 3:1 hard negatives and smooth L1 (β 1) over the batch's
positives, deltas coded with stds (0.1, 0.1, 0.2, 0.2).

torchvision's ``ssdlite320_mobilenet_v3_large`` has other anchors (its ``DefaultBoxGenerator``), a predictor with
a bias and no BN, and extra layers of other widths: FNA's detector is assembled here instead, with its parameter
count equal to the mm backend's (tested).
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fnatune.tv.detection import (
    assign,
    base_anchors,
    batch_images,
    box_coder,
    detect,
    grid_anchors,
    smooth_l1,
    targets_of,
)

EXTRA_CHANNELS = (512, 256, 256, 128)
STRIDES = (16, 32, 64, 107, 160, 320)
RATIOS = ((2,), (2, 3), (2, 3), (2, 3), (2,), (2,))
MIN_SIZES = (30, 60, 114, 168, 222, 276)   # mmdet-0.6's "SSD300 VOC" branch FNA's configs trigger
MAX_SIZES = (60, 114, 168, 222, 276, 330)
BN_EPS = 1e-3


def _conv_bn(c_in: int, c_out: int, k: int = 1, stride: int = 1, groups: int = 1, act: bool = True) -> list[nn.Module]:
    layers: list[nn.Module] = [nn.Conv2d(c_in, c_out, k, stride, (k - 1) // 2, groups=groups, bias=False),
                               nn.BatchNorm2d(c_out, eps=BN_EPS)]
    return [*layers, nn.ReLU6(inplace=True)] if act else layers


def ssd_base_anchors(level: int) -> Tensor:
    """mmdet's ``SSDAnchorGenerator`` base anchors of one level: ratio 1 at the min size, ratio 1 at
    sqrt(min·max), then each ratio r as 1/r and r at the min size; centred at stride/2."""
    ratios = [1.0]
    for r in RATIOS[level]:
        ratios += [1 / r, float(r)]
    scales = [1.0, math.sqrt(MAX_SIZES[level] / MIN_SIZES[level])]
    base = base_anchors(MIN_SIZES[level], scales, ratios, center=STRIDES[level] / 2, scale_major=False)
    order = list(range(len(ratios)))
    order.insert(1, len(ratios))
    return base[order]


class SSDLite(nn.Module):
    """Backbone (two taps) + extra layers + FNA's SSDLite head. ``forward(images)`` returns the per-level raw
    outputs (class logits N x H·W·A x (K+1), deltas N x H·W·A x 4); :meth:`loss` and :meth:`predict` take batches."""

    def __init__(self, backbone: nn.Module, in_channels: Sequence[int], num_classes: int, mean: Sequence[float],
                 std: Sequence[float], score_thr: float = 0.02, nms_iou: float = 0.6, max_per_img: int = 200,
                 nms_pre: int = 1000) -> None:
        super().__init__()
        self.backbone = backbone
        chans = [*in_channels, *EXTRA_CHANNELS]
        self.extra = nn.ModuleList(
            nn.Sequential(*_conv_bn(c_in, c_out // 2), *_conv_bn(c_out // 2, c_out // 2, 3, 2, groups=c_out // 2),
                          *_conv_bn(c_out // 2, c_out))
            for c_in, c_out in zip(chans[len(in_channels) - 1:], EXTRA_CHANNELS))
        self.base = [ssd_base_anchors(i) for i in range(len(STRIDES))]
        k1 = num_classes + 1
        self.cls_convs = nn.ModuleList(
            nn.Sequential(*_conv_bn(c, c, 3, groups=c), *_conv_bn(c, len(b) * k1, act=False)) for c, b in zip(chans, self.base))
        self.reg_convs = nn.ModuleList(
            nn.Sequential(*_conv_bn(c, c, 3, groups=c), *_conv_bn(c, len(b) * 4, act=False)) for c, b in zip(chans, self.base))
        for m in [*self.extra.modules(), *self.cls_convs.modules(), *self.reg_convs.modules()]:
            if isinstance(m, nn.Conv2d):
                nn.init.normal_(m.weight, std=0.03)
        self.num_classes = num_classes
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32), persistent=False)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32), persistent=False)
        self.test_cfg = {"score_thr": score_thr, "nms_iou": nms_iou, "max_per_img": max_per_img, "nms_pre": nms_pre}
        self.coder = box_coder((0.1, 0.1, 0.2, 0.2))

    def features(self, x: Tensor) -> list[Tensor]:
        """The two taps and the four extra layers."""
        feats = list(self.backbone(x))
        for layer in self.extra:
            feats.append(layer(feats[-1]))
        return feats

    def heads(self, feats: Sequence[Tensor]) -> tuple[list[Tensor], list[Tensor]]:
        n, k1 = feats[0].shape[0], self.num_classes + 1
        cls = [c(f).permute(0, 2, 3, 1).reshape(n, -1, k1) for c, f in zip(self.cls_convs, feats)]
        reg = [r(f).permute(0, 2, 3, 1).reshape(n, -1, 4) for r, f in zip(self.reg_convs, feats)]
        return cls, reg

    def forward(self, x: Tensor) -> tuple[list[Tensor], list[Tensor]]:
        return self.heads(self.features(x))

    def _run(self, batch: dict[str, Any]) -> tuple[list[Tensor], list[Tensor], list[Tensor]]:
        dev = self.mean.device
        feats = self.features(batch_images(batch["img"], self.mean, self.std, dev))
        cls, reg = self.heads(feats)
        anchors = [grid_anchors(b.to(dev), s, f.shape[-2:]) for b, s, f in zip(self.base, STRIDES, feats)]
        return cls, reg, anchors

    def loss(self, batch: dict[str, Any]) -> Tensor:
        """mmdet's SSDHead loss: cross entropy over the positives and the 3x as many hardest negatives, smooth L1
        over the positives, summed over the batch and divided by its number of positive anchors."""
        cls, reg, anchors = self._run(batch)
        dev = self.mean.device
        all_anchors = torch.cat(anchors)
        cls_all, reg_all = torch.cat(cls, 1), torch.cat(reg, 1)
        valid = torch.ones(len(all_anchors), dtype=torch.bool, device=dev)
        loss_cls, loss_box, num_pos = cls_all.sum() * 0, reg_all.sum() * 0, 0
        for k, (boxes, labels) in enumerate(targets_of(batch, dev)):
            matched = assign(all_anchors, valid, boxes, 0.5, 0.5, 0.0, all_ties=False)
            pos, neg = matched >= 0, matched == -1
            target = torch.full((len(all_anchors),), self.num_classes, dtype=torch.long, device=dev)
            target[pos] = labels[matched[pos]]
            ce = F.cross_entropy(cls_all[k].float(), target, reduction="none")
            n_neg = min(3 * int(pos.sum()), int(neg.sum()))
            loss_cls = loss_cls + ce[pos].sum() + ce[neg].topk(n_neg).values.sum()
            if pos.any():
                deltas = self.coder.encode_single(boxes[matched[pos]], all_anchors[pos])
                loss_box = loss_box + smooth_l1(reg_all[k][pos], deltas, beta=1.0)
            num_pos += int(pos.sum())
        avg = max(num_pos, 1)
        return loss_cls / avg + loss_box / avg

    def _class_scores(self, logits: Tensor) -> Tensor:
        """Softmax over the classes and background; the background column dropped."""
        return logits.softmax(-1)[:, : self.num_classes]

    @torch.no_grad()
    def predict(self, batch: dict[str, Any]) -> list[dict[str, Tensor]]:
        cls, reg, anchors = self._run(batch)
        return detect(cls, reg, anchors, batch, self.coder, self.test_cfg, self._class_scores)

