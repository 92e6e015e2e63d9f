"""FNA's DeepLabv3 on the torchvision backend: :class:`~fnatune.heads.seg.SegNet` (our backbone at output stride
16, FNA's separable ASPP, a 1x1 classifier, bilinear upsampling with ``align_corners=True``) with the mm
backend's data preprocessing (normalise, pad the batch to the crop with 0 / ``ignore_index``), its loss (cross
entropy averaged over the labelled pixels, mmseg's ``avg_non_ignore``) and its inference (``whole`` or ``slide``).
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fnatune.heads.seg import SegNet
from fnatune.tv.detection import batch_images
from fnatune.tv.metrics import ConfusionMatrix


class DeepLabV3(SegNet):
    def __init__(self, backbone: nn.Module, num_classes: int, mean: Sequence[float], std: Sequence[float],
                 crop: Sequence[int], ignore_index: int = 255, test_mode: str = "whole",
                 test_crop: Sequence[int] | None = None, test_stride: Sequence[int] | None = None) -> None:
        super().__init__(backbone, num_classes)
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32), persistent=False)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32), persistent=False)
        self.crop, self.ignore_index, self.test_mode = tuple(crop), ignore_index, test_mode
        self.test_crop = tuple(test_crop or crop)
        self.test_stride = tuple(test_stride or self.test_crop)

    def loss(self, batch: dict[str, Any]) -> Tensor:
        dev = self.mean.device
        x = batch_images(batch["img"], self.mean, self.std, dev, size=self.crop)
        label = torch.full((len(x), x.shape[-2], x.shape[-1]), self.ignore_index, dtype=torch.long, device=dev)
        for k, lab in enumerate(batch["label"]):
            label[k, : lab.shape[-2], : lab.shape[-1]] = lab.to(dev)
        return F.cross_entropy(self(x).float(), label, ignore_index=self.ignore_index)

    @torch.no_grad()
    def logits(self, img: Tensor) -> Tensor:
        """Class scores (1 x K x H x W) of one uint8 image, by the configured inference."""
        x = batch_images([img], self.mean, self.std, self.mean.device)
        if self.test_mode == "whole":
            return self(x).float()
        return self._slide(x)

    def _slide(self, x: Tensor) -> Tensor:
        """mmseg's ``slide_inference``: overlapping windows of ``test_crop`` every ``test_stride``, scores averaged."""
        (hc, wc), (hs, ws) = self.test_crop, self.test_stride
        h, w = x.shape[-2:]
        rows, cols = max(h - hc + hs - 1, 0) // hs + 1, max(w - wc + ws - 1, 0) // ws + 1
        out = x.new_zeros(1, self.classifier.out_channels, h, w)
        count = x.new_zeros(1, 1, h, w)
        for r in range(rows):
            for c in range(cols):
                y2, x2 = min(r * hs + hc, h), min(c * ws + wc, w)
                y1, x1 = max(y2 - hc, 0), max(x2 - wc, 0)
                out[:, :, y1:y2, x1:x2] += self(x[:, :, y1:y2, x1:x2]).float()
                count[:, :, y1:y2, x1:x2] += 1
        return out / count


def evaluate(model: DeepLabV3, dataset: Any, num_classes: int, ignore_index: int = 255,
             max_images: int | None = None) -> dict[str, float]:
    """mIoU, mAcc and aAcc in percent over the first ``max_images`` of ``dataset`` (batch 1, eval mode)."""
    model.eval()
    cm = ConfusionMatrix(num_classes, ignore_index)
    n = len(dataset) if max_images is None else min(max_images, len(dataset))
    for i in range(n):
        item = dataset[i]
        cm.update(model.logits(item["img"])[0].argmax(0), item["label"])
    return cm.metrics()
