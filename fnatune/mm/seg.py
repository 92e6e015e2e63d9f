"""mmsegmentation integration: our backbones and FNA's DeepLabv3 head as mmseg modules, the model,
the Cityscapes datasets and the mIoU metric.

Registered in mmseg's ``MODELS`` on import:

* ``FNABackbone``, ``FNASuperBackbone`` (:mod:`fnatune.mm.backbones`). Usable in any plain mmseg
  config (``pipelines/mm/deeplabv3_fna_cityscapes.py``).
* ``FNAASPPHead``: FNA's separable ASPP (:class:`~fnatune.heads.seg.ASPPSep`) as a decode head.

The training loops are ours (exact resume, search alternation); everything else is mmseg's: the
``EncoderDecoder``, ``SegDataPreProcessor``, ``CityscapesDataset`` with its transforms, the
cross-entropy loss and ``IoUMetric``.
"""
from __future__ import annotations

import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from torch import Tensor, nn

from fnatune.mm import collate, feed_metric, loss_fn, quiet_logger, require  # noqa: F401  (re-exported)

# mmseg 1.2 warns on every model build about its own internals (build_loss, align_corners hints)
warnings.filterwarnings("ignore", message=".*build_loss.*", category=UserWarning)
warnings.filterwarnings("ignore", message="When align_corners=True", category=UserWarning)
require("mmcv._ext")
mmseg_models = require("mmseg.models")
from mmseg.models.decode_heads.decode_head import BaseDecodeHead
from mmseg.registry import MODELS

from fnatune.heads.seg import ASPPSep
from fnatune.mm.backbones import FNABackbone, FNASuperBackbone

MODELS.register_module(module=FNABackbone, force=True)
MODELS.register_module(module=FNASuperBackbone, force=True)


@MODELS.register_module(force=True)
class FNAASPPHead(BaseDecodeHead):
    """FNA's DeepLabv3 head: separable ASPP (256) + image pooling + 1x1 bottleneck, then mmseg's
    dropout (Dropout2d 0.1) and 1x1 classifier. Same function and parameter count as
    :class:`~fnatune.heads.seg.SegNet`'s head."""

    def __init__(self, dilations: Sequence[int] = (6, 12, 18), **kwargs: Any) -> None:
        kwargs.setdefault("dropout_ratio", 0.1)
        kwargs.setdefault("align_corners", True)
        super().__init__(**kwargs)
        self.aspp = ASPPSep(self.in_channels, self.channels, dilations, dropout=0.0)

    def forward(self, inputs: Sequence[Tensor]) -> Tensor:
        return self.cls_seg(self.aspp(self._transform_inputs(inputs)))


def model_config(backbone: dict[str, Any], in_channels: int, num_classes: int, mean: Sequence[float],
                 std: Sequence[float], crop: Sequence[int], ignore_index: int = 255, test_mode: str = "whole",
                 test_crop: Sequence[int] | None = None, test_stride: Sequence[int] | None = None) -> dict[str, Any]:
    """An mmseg ``EncoderDecoder`` config: our backbone, FNAASPPHead, CE with ``ignore_index``."""
    test_cfg: dict[str, Any] = {"mode": test_mode}
    if test_mode == "slide":
        test_cfg.update(crop_size=tuple(test_crop or crop), stride=tuple(test_stride or crop))
    return dict(
        type="EncoderDecoder",
        data_preprocessor=dict(type="SegDataPreProcessor", mean=list(mean), std=list(std), bgr_to_rgb=True,
                               pad_val=0, seg_pad_val=ignore_index, size=tuple(crop)),
        backbone=backbone,
        decode_head=dict(type="FNAASPPHead", in_channels=in_channels, channels=256, num_classes=num_classes,
                         ignore_index=ignore_index, align_corners=True,
                         norm_cfg=dict(type="BN", requires_grad=True),
                         loss_decode=dict(type="CrossEntropyLoss", use_sigmoid=False, loss_weight=1.0,
                                          avg_non_ignore=True)),
        train_cfg=dict(),
        test_cfg=test_cfg,
    )


def _scope() -> Any:
    """mmseg's registry scope, entered only while building (mmdet may share the process)."""
    from mmengine.registry import DefaultScope
    from mmseg.utils import register_all_modules

    register_all_modules(init_default_scope=False)
    return DefaultScope.overwrite_default_scope("mmseg")


def build_model(cfg: dict[str, Any]) -> nn.Module:
    from mmengine.config import ConfigDict

    with _scope():
        return MODELS.build(ConfigDict(cfg))


def train_pipeline(crop: Sequence[int], scales: Sequence[float], flip: float, base: Sequence[int]) -> list[dict[str, Any]]:
    """FNA_SPEC §6.3 augmentation: random scale from a set, random crop (padded later), random flip."""
    h, w = base
    return [
        dict(type="LoadImageFromFile"),
        dict(type="LoadAnnotations"),
        dict(type="RandomChoiceResize", scales=[(int(w * s), int(h * s)) for s in scales], resize_type="Resize",
             keep_ratio=True),
        dict(type="RandomCrop", crop_size=tuple(crop), cat_max_ratio=1.0),
        dict(type="RandomFlip", prob=flip),
        dict(type="PackSegInputs"),
    ]


def plain_pipeline() -> list[dict[str, Any]]:
    """Val pipeline (no augmentation) with labels: FNA's 'plain' half and the evaluation set."""
    return [dict(type="LoadImageFromFile"), dict(type="LoadAnnotations"), dict(type="PackSegInputs")]


def cityscapes(root: str | Path, split: str, pipeline: list[dict[str, Any]]) -> Any:
    from mmseg.datasets import CityscapesDataset

    with _scope():
        return CityscapesDataset(data_root=str(root), data_prefix=dict(img_path=f"leftImg8bit/{split}",
                                                                       seg_map_path=f"gtFine/{split}"),
                                 pipeline=pipeline, serialize_data=False)



def evaluate(model: nn.Module, dataset: Any, max_images: int | None = None) -> dict[str, float]:
    """mmseg's IoUMetric over ``dataset`` (batch 1, eval mode): mIoU, mAcc, aAcc in percent."""
    from mmseg.evaluation import IoUMetric

    metric = IoUMetric(iou_metrics=["mIoU"], prefix="val")
    metric.dataset_meta = dataset.metainfo
    feed_metric(model, dataset, metric, len(dataset) if max_images is None else min(max_images, len(dataset)))
    with quiet_logger():  # the per-class table: the numbers come back as metrics
        return {k: float(v) for k, v in metric.compute_metrics(metric.results).items()}
