"""FNA's RetinaNet (FNA_SPEC §3.2, §6.1) from torchvision's detection building blocks, set up as mmdet's
``retinanet`` config the mm backend builds: taps C2..C5, torchvision's ``FeaturePyramidNetwork`` from C3 with P6/P7
by 3x3 stride-2 convs on C5 (mmdet's ``add_extra_convs="on_input"``, no ReLU before P7), Xavier-uniform FPN init,
torchvision's ``RetinaNetHead`` (4 conv towers, prior-probability bias), 9 anchors per location at mmdet's
scales (4·2^(i/3)·stride) and ratios, not rounded, focal loss (α 0.25, γ 2) and smooth L1 (β 0.11) averaged over
the batch's positives, IoU 0.5/0.4 with low-quality matches, and mmdet's test-time rules.

torchvision's own ``RetinaNet`` class resizes inside the model, averages its loss per image and puts a ReLU before
P7; those three differ from FNA's detector, so the model here is assembled from the parts instead.
"""
from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn
from torchvision.models.detection.retinanet import RetinaNetHead
from torchvision.ops import FeaturePyramidNetwork, sigmoid_focal_loss
from torchvision.ops.feature_pyramid_network import ExtraFPNBlock

from fnatune.tv.detection import (
    assign,
    base_anchors,
    batch_images,
    box_coder,
    detect,
    grid_anchors,
    smooth_l1,
    targets_of,
    valid_flags,
)

STRIDES = (8, 16, 32, 64, 128)
OCTAVE_BASE_SCALE, SCALES_PER_OCTAVE, RATIOS = 4, 3, (0.5, 1.0, 2.0)


class P6P7OnInput(ExtraFPNBlock):
    """P6 = conv3x3/2(C5), P7 = conv3x3/2(P6): mmdet's ``add_extra_convs='on_input'`` without
    ``relu_before_extra_convs`` (torchvision's ``LastLevelP6P7`` puts a ReLU before P7)."""

    def __init__(self, in_channels: int, channels: int) -> None:
        super().__init__()
        self.p6 = nn.Conv2d(in_channels, channels, 3, 2, 1)
        self.p7 = nn.Conv2d(channels, channels, 3, 2, 1)

    def forward(self, results: list[Tensor], x: list[Tensor], names: list[str]) -> tuple[list[Tensor], list[str]]:
        p6 = self.p6(x[-1])
        return [*results, p6, self.p7(p6)], [*names, "p6", "p7"]


class RetinaNet(nn.Module):
    """Backbone (four taps) + FPN + RetinaNetHead. ``forward(images)`` returns the raw head outputs (what the
    MAdds counter runs); :meth:`loss` and :meth:`predict` take a batch of :mod:`fnatune.tv.datasets` items."""

    def __init__(self, backbone: nn.Module, in_channels: Sequence[int], num_classes: int, mean: Sequence[float],
                 std: Sequence[float], score_thr: float = 0.05, nms_iou: float = 0.5, max_per_img: int = 100,
                 nms_pre: int = 1000, channels: int = 256) -> None:
        super().__init__()
        self.backbone = backbone
        self.fpn = FeaturePyramidNetwork(list(in_channels[1:]), channels, extra_blocks=P6P7OnInput(in_channels[-1], channels))
        for m in self.fpn.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)
        scales = [OCTAVE_BASE_SCALE * 2 ** (i / SCALES_PER_OCTAVE) for i in range(SCALES_PER_OCTAVE)]
        self.base = [base_anchors(s, scales, RATIOS) for s in STRIDES]
        self.head = RetinaNetHead(channels, len(self.base[0]), num_classes)
        self.num_classes = num_classes
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32), persistent=False)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32), persistent=False)
        self.test_cfg = {"score_thr": score_thr, "nms_iou": nms_iou, "max_per_img": max_per_img, "nms_pre": nms_pre}
        self.coder = box_coder((1.0, 1.0, 1.0, 1.0))

    def features(self, x: Tensor) -> list[Tensor]:
        taps = self.backbone(x)[1:]
        return list(self.fpn(OrderedDict((str(i), t) for i, t in enumerate(taps))).values())

    def forward(self, x: Tensor) -> tuple[list[Tensor], list[Tensor]]:
        """Per level, class logits (N x H·W·A x K) and box deltas (N x H·W·A x 4)."""
        feats = self.features(x)
        out = self.head(feats)
        sizes = [f.shape[-2] * f.shape[-1] * len(self.base[0]) for f in feats]
        return list(out["cls_logits"].split(sizes, 1)), list(out["bbox_regression"].split(sizes, 1))

    def _run(self, batch: dict[str, Any]) -> tuple[list[Tensor], list[Tensor], list[Tensor], list[tuple[int, int]]]:
        """Head outputs, anchors and feature sizes per level for a batch padded to a multiple of 32."""
        dev = self.mean.device
        x = batch_images(batch["img"], self.mean, self.std, dev, divisor=32)
        cls, reg = self(x)
        sizes = [(-(-x.shape[-2] // s), -(-x.shape[-1] // s)) for s in STRIDES]
        anchors = [grid_anchors(b.to(dev), s, hw) for b, s, hw in zip(self.base, STRIDES, sizes)]
        return cls, reg, anchors, sizes

    def loss(self, batch: dict[str, Any]) -> Tensor:
        """mmdet's RetinaHead loss: focal loss over positives and negatives, smooth L1 over positives, both summed
        over the batch and divided by its number of positive anchors."""
        cls, reg, anchors, sizes = self._run(batch)
        dev = self.mean.device
        all_anchors = torch.cat(anchors)
        cls_all, reg_all = torch.cat(cls, 1), torch.cat(reg, 1)
        loss_cls, loss_box, num_pos = cls_all.sum() * 0, reg_all.sum() * 0, 0
        for k, (boxes, labels) in enumerate(targets_of(batch, dev)):
            valid = torch.cat([valid_flags(len(b), s, hw, batch["img_shape"][k], dev)
                               for b, s, hw in zip(self.base, STRIDES, sizes)])
            matched = assign(all_anchors, valid, boxes, 0.5, 0.4, 0.0, all_ties=True)
            pos, use = matched >= 0, matched >= -1
            target = torch.zeros_like(cls_all[k])
            target[pos, labels[matched[pos]]] = 1.0
            loss_cls = loss_cls + sigmoid_focal_loss(cls_all[k][use], target[use], alpha=0.25, gamma=2.0, reduction="sum")
            if pos.any():
                deltas = self.coder.encode_single(boxes[matched[pos]], all_anchors[pos])
                loss_box = loss_box + smooth_l1(reg_all[k][pos], deltas, beta=0.11)
            num_pos += int(pos.sum())
        avg = max(num_pos, 1)
        return loss_cls / avg + loss_box / avg

    @torch.no_grad()
    def predict(self, batch: dict[str, Any]) -> list[dict[str, Tensor]]:
        """Per image: boxes (xyxy, original image pixels), scores and labels after mmdet's test-time rules."""
        cls, reg, anchors, _ = self._run(batch)
        return detect(cls, reg, anchors, batch, self.coder, self.test_cfg, lambda c: c.sigmoid())

