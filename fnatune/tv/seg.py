"""Segmentation on the torchvision backend: the functions :class:`~fnatune.tasks.seg.SegBackend` calls, with the
same names and arguments as :mod:`fnatune.mm.seg` (its mmseg twin): Cityscapes-layout datasets with v2 pipelines,
FNA's DeepLabv3 (:mod:`fnatune.tv.deeplab`) and mIoU from a confusion matrix (:mod:`fnatune.tv.metrics`)."""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from torch import nn

from fnatune.tv import loss_fn  # noqa: F401  (the module's surface)
from fnatune.tv import transforms as T
from fnatune.tv.datasets import CityscapesSegmentation
from fnatune.tv.detection import collate  # noqa: F401  (the module's surface)


def model_config(backbone: dict[str, Any], in_channels: int, num_classes: int, mean: Sequence[float],
                 std: Sequence[float], crop: Sequence[int], ignore_index: int = 255, test_mode: str = "whole",
                 test_crop: Sequence[int] | None = None, test_stride: Sequence[int] | None = None) -> dict[str, Any]:
    """FNA's DeepLabv3 (:class:`fnatune.tv.deeplab.DeepLabV3`'s arguments; ``in_channels`` is the backbone's)."""
    return dict(backbone=backbone, num_classes=num_classes, mean=list(mean), std=list(std), crop=list(crop),
                ignore_index=ignore_index, test_mode=test_mode, test_crop=test_crop, test_stride=test_stride)


def build_model(cfg: dict[str, Any]) -> nn.Module:
    from fnatune.backbone import build_backbone
    from fnatune.tv.deeplab import DeepLabV3

    return DeepLabV3(build_backbone(cfg["backbone"]), **{k: v for k, v in cfg.items() if k != "backbone"})


def train_pipeline(crop: Sequence[int], scales: Sequence[float], flip: float, base: Sequence[int]) -> Any:
    return T.seg_train(crop, scales, flip, base)


def plain_pipeline() -> Any:
    """No augmentation: FNA's plain half and the evaluation set."""
    return None


def cityscapes(root: str | Path, split: str, pipeline: Any) -> CityscapesSegmentation:
    return CityscapesSegmentation(root, split, pipeline)


def evaluate(model: nn.Module, dataset: CityscapesSegmentation, max_images: int | None = None) -> dict[str, float]:
    """mIoU, mAcc, aAcc in percent (mmseg's IoUMetric numbers) over the first ``max_images``."""
    from fnatune.tv.deeplab import evaluate as run

    return run(model, dataset, model.classifier.out_channels, model.ignore_index, max_images)  # type: ignore[arg-type]
