"""mmdet integration: our backbones in RetinaNet and SSDLite exactly as FNA builds them (FNA_SPEC
§3.2, §3.3, §6.1, §6.2), COCO-format datasets through mmdet's ``CocoDataset``, and COCO bbox mAP.

Registered in mmdet's ``MODELS`` on import: ``FNABackbone`` and ``FNASuperBackbone``
(:mod:`fnatune.mm.backbones`) and ``FNASSDLiteHead``. Everything else is mmdet's own: ``RetinaNet``
with ``FPN`` (P6/P7 by 3x3 s2 convs on C5, ``start_level=1``) and ``RetinaHead`` (focal loss,
SmoothL1 0.11, 9 anchors per location), ``SingleStageDetector`` with ``SSDNeck`` (the depthwise extra
layers) and the SSD anchors, assigners, samplers, hard-negative mining and NMS. The one thing mmdet
lacks is FNA's ``SSDLightHead`` predictor (a BN after a bias-free 1x1 predictor): ``FNASSDLiteHead``.

A plain mmdet config that only wants a searched backbone imports this module (see
``pipelines/mm/retinanet_fna_coco.py``).
"""
from __future__ import annotations

import contextlib
import io
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from torch import nn

from fnatune.mm import collate, feed_metric, loss_fn, quiet_logger, require  # noqa: F401  (re-exported)

warnings.filterwarnings("ignore", message=".*build_loss.*", category=UserWarning)
require("mmcv._ext")
require("mmdet.models")
from mmdet.models.dense_heads import SSDHead
from mmdet.registry import MODELS

from fnatune.data.coco import ann_path, img_dir, read_annotations, split_image_ids
from fnatune.mm.backbones import FNABackbone, FNASuperBackbone

MODELS.register_module(module=FNABackbone, force=True)
MODELS.register_module(module=FNASuperBackbone, force=True)

RETINA_STRIDES = (8, 16, 32, 64, 128)
SSD_OUT_CHANNELS = (512, 256, 256, 128)     # the four extra layers after the two backbone taps
SSD_STRIDES = (16, 32, 64, 107, 160, 320)
SSD_RATIOS = ([2], [2, 3], [2, 3], [2, 3], [2], [2])
SSD_MIN_SIZES = (30, 60, 114, 168, 222, 276)  # mmdet-0.6's "SSD300 VOC" branch FNA's configs trigger
SSD_MAX_SIZES = (60, 114, 168, 222, 276, 330)
SSD_BN = dict(type="BN", eps=1e-3)


@MODELS.register_module(force=True)
class FNASSDLiteHead(SSDHead):
    """FNA's ``SSDLightHead``: per level and branch dw3x3 + BN + ReLU6, then a bias-free 1x1 predictor
    followed by a BN (FNA_SPEC §3.3). mmdet's depthwise SSDHead ends in a 1x1 conv with bias instead;
    anchors, targets, hard-negative mining and the loss are mmdet's."""

    def __init__(self, **kwargs: Any) -> None:
        kwargs.setdefault("use_depthwise", True)
        kwargs.setdefault("stacked_convs", 0)
        if not kwargs["use_depthwise"] or kwargs["stacked_convs"]:
            raise ValueError("FNASSDLiteHead is the depthwise head without stacked convs")
        super().__init__(**kwargs)
        # mmdet 3.3's SSDHead computes its cross-entropy inline and has no `loss_cls`, but the shared
        # predict code reads `self.loss_cls` (for v3det's custom losses): without this, inference fails.
        self.loss_cls = None

    def _init_layers(self) -> None:
        super()._init_layers()
        eps = (self.norm_cfg or {}).get("eps", 1e-3)
        for branches in (self.cls_convs, self.reg_convs):
            for i, seq in enumerate(branches):
                pred: nn.Conv2d = seq[-1]
                conv = nn.Conv2d(pred.in_channels, pred.out_channels, 1, bias=False)
                branches[i] = nn.Sequential(*seq[:-1], conv, nn.BatchNorm2d(pred.out_channels, eps=eps))


# --------------------------------------------------------------------------------------------- models
def retinanet_config(backbone: dict[str, Any], in_channels: Sequence[int], num_classes: int, mean: Sequence[float],
                     std: Sequence[float], score_thr: float = 0.05, nms_iou: float = 0.5, max_per_img: int = 100,
                     nms_pre: int = 1000, channels: int = 256) -> dict[str, Any]:
    """FNA's RetinaNet (FNA_SPEC §3.2, §6.1): taps C2..C5, FPN from C3 (``start_level=1``) with P6/P7
    from C5 (``on_input``, no ReLU), 4x256 conv towers, focal loss, SmoothL1 beta 0.11, IoU 0.5/0.4."""
    return dict(
        type="RetinaNet",
        data_preprocessor=dict(type="DetDataPreprocessor", mean=list(mean), std=list(std), bgr_to_rgb=True,
                               pad_size_divisor=32),
        backbone=backbone,
        neck=dict(type="FPN", in_channels=list(in_channels), out_channels=channels, start_level=1,
                  add_extra_convs="on_input", num_outs=5),
        bbox_head=dict(
            type="RetinaHead", num_classes=num_classes, in_channels=channels, stacked_convs=4, feat_channels=channels,
            anchor_generator=dict(type="AnchorGenerator", octave_base_scale=4, scales_per_octave=3,
                                  ratios=[0.5, 1.0, 2.0], strides=list(RETINA_STRIDES)),
            bbox_coder=dict(type="DeltaXYWHBBoxCoder", target_means=[0.0] * 4, target_stds=[1.0] * 4),
            loss_cls=dict(type="FocalLoss", use_sigmoid=True, gamma=2.0, alpha=0.25, loss_weight=1.0),
            loss_bbox=dict(type="SmoothL1Loss", beta=0.11, loss_weight=1.0)),
        train_cfg=dict(assigner=dict(type="MaxIoUAssigner", pos_iou_thr=0.5, neg_iou_thr=0.4, min_pos_iou=0,
                                     ignore_iof_thr=-1),
                       sampler=dict(type="PseudoSampler"), allowed_border=-1, pos_weight=-1, debug=False),
        test_cfg=dict(nms_pre=nms_pre, min_bbox_size=0, score_thr=score_thr,
                      nms=dict(type="nms", iou_threshold=nms_iou), max_per_img=max_per_img),
    )


def ssdlite_config(backbone: dict[str, Any], in_channels: Sequence[int], num_classes: int, mean: Sequence[float],
                   std: Sequence[float], score_thr: float = 0.02, nms_iou: float = 0.6, max_per_img: int = 200,
                   nms_pre: int = 1000) -> dict[str, Any]:
    """FNA's SSDLite (FNA_SPEC §3.3, §6.2): taps = the 576-ch expansion inside the 96->160 stage and the
    1280 conv; depthwise extra layers to 512/256/256/128 (normal 0.03 init); FNA's head; 4/6/6/6/4/4
    anchors with the SSD300-VOC sizes; IoU 0.5/0.5, 3:1 hard negatives, SmoothL1 1.0."""
    out = tuple(in_channels) + SSD_OUT_CHANNELS
    act = dict(type="ReLU6")
    return dict(
        type="SingleStageDetector",
        data_preprocessor=dict(type="DetDataPreprocessor", mean=list(mean), std=list(std), bgr_to_rgb=True,
                               pad_size_divisor=1),
        backbone=backbone,
        neck=dict(type="SSDNeck", in_channels=tuple(in_channels), out_channels=out, level_strides=(2, 2, 2, 2),
                  level_paddings=(1, 1, 1, 1), l2_norm_scale=None, use_depthwise=True, norm_cfg=SSD_BN, act_cfg=act,
                  init_cfg=dict(type="Normal", layer="Conv2d", std=0.03)),
        bbox_head=dict(
            type="FNASSDLiteHead", in_channels=out, num_classes=num_classes, norm_cfg=SSD_BN, act_cfg=act,
            init_cfg=[dict(type="Normal", layer="Conv2d", std=0.03), dict(type="Constant", layer="BatchNorm2d", val=1)],
            anchor_generator=dict(type="SSDAnchorGenerator", scale_major=False, strides=list(SSD_STRIDES),
                                  ratios=[list(r) for r in SSD_RATIOS], min_sizes=list(SSD_MIN_SIZES),
                                  max_sizes=list(SSD_MAX_SIZES)),
            bbox_coder=dict(type="DeltaXYWHBBoxCoder", target_means=[0.0] * 4, target_stds=[0.1, 0.1, 0.2, 0.2])),
        train_cfg=dict(assigner=dict(type="MaxIoUAssigner", pos_iou_thr=0.5, neg_iou_thr=0.5, min_pos_iou=0.0,
                                     ignore_iof_thr=-1, gt_max_assign_all=False),
                       sampler=dict(type="PseudoSampler"), smoothl1_beta=1.0, allowed_border=-1, pos_weight=-1,
                       neg_pos_ratio=3, debug=False),
        test_cfg=dict(nms_pre=nms_pre, nms=dict(type="nms", iou_threshold=nms_iou), min_bbox_size=0,
                      score_thr=score_thr, max_per_img=max_per_img),
    )


def _scope() -> Any:
    """mmdet's registry scope, entered only while building (mmseg may share the process)."""
    from mmdet.utils import register_all_modules
    from mmengine.registry import DefaultScope

    register_all_modules(init_default_scope=False)
    return DefaultScope.overwrite_default_scope("mmdet")


def build_model(cfg: dict[str, Any], init: bool = True) -> nn.Module:
    """Build a detector; ``init`` runs mmdet's init (RetinaNet's focal-loss bias prior, SSD's normal 0.03),
    which leaves our backbones' weights alone unless their ``init_cfg`` says otherwise."""
    from mmengine.config import ConfigDict

    with _scope():
        model = MODELS.build(ConfigDict(cfg))
        if init:
            with quiet_logger():
                model.init_weights()
    return model


# --------------------------------------------------------------------------------------------- data
def _scale(size: Sequence[int]) -> tuple[int, int]:
    """Our sizes are (h, w); mmdet's Resize takes (w, h)."""
    return int(size[1]), int(size[0])


def train_pipeline(scale: Sequence[int], keep_ratio: bool, flip: float, ssd_augment: bool,
                   mean: Sequence[float]) -> list[dict[str, Any]]:
    """RetinaNet: resize (keep ratio) + flip (FNA_SPEC §6.1). SSDLite: photometric distortion, expand
    1-4x, min-IoU crop, resize to the square input, flip (§6.2), in FNA's order."""
    steps: list[dict[str, Any]] = [dict(type="LoadImageFromFile"), dict(type="LoadAnnotations", with_bbox=True)]
    if ssd_augment:
        steps += [dict(type="PhotoMetricDistortion", brightness_delta=32, contrast_range=(0.5, 1.5),
                       saturation_range=(0.5, 1.5), hue_delta=18),
                  dict(type="Expand", mean=list(mean), to_rgb=True, ratio_range=(1, 4)),
                  dict(type="MinIoURandomCrop", min_ious=(0.1, 0.3, 0.5, 0.7, 0.9), min_crop_size=0.3)]
    steps += [dict(type="Resize", scale=_scale(scale), keep_ratio=keep_ratio),
              dict(type="RandomFlip", prob=flip),
              dict(type="PackDetInputs")]
    return steps


def plain_pipeline(scale: Sequence[int], keep_ratio: bool, with_labels_resized: bool = True) -> list[dict[str, Any]]:
    """The val pipeline. ``with_labels_resized``: boxes loaded before the resize (FNA's labelled 'val' half
    of the search); otherwise after it, as mmdet evaluates (predictions are mapped back to the image)."""
    load = dict(type="LoadAnnotations", with_bbox=True)
    resize = dict(type="Resize", scale=_scale(scale), keep_ratio=keep_ratio)
    middle = [load, resize] if with_labels_resized else [resize, load]
    return [dict(type="LoadImageFromFile"), *middle,
            dict(type="PackDetInputs", meta_keys=("img_id", "img_path", "ori_shape", "img_shape", "scale_factor"))]


def coco(root: str | Path, split: str, pipeline: list[dict[str, Any]], test_mode: bool = False) -> Any:
    """mmdet's ``CocoDataset`` over ``<root>/<split>2017`` with the annotation file's own categories.
    Training sets drop images without boxes (mmdet's ``filter_empty_gt``)."""
    from mmdet.datasets import CocoDataset

    classes = tuple(c["name"] for c in read_annotations(root, split)["categories"])
    with _scope(), contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints its loading steps
        return CocoDataset(data_root=str(root), ann_file=str(ann_path(root, split).relative_to(root)),
                           data_prefix=dict(img=f"{img_dir(root, split).name}/"), metainfo=dict(classes=classes),
                           filter_cfg=None if test_mode else dict(filter_empty_gt=True, min_size=0),
                           pipeline=pipeline, test_mode=test_mode, serialize_data=False)


def search_subsets(dataset_a: Any, dataset_b: Any, root: str | Path, split: str, fraction: float, seed: int
                   ) -> tuple[list[int], list[int]]:
    """Dataset indices of FNA's two halves: the annotation file's image list is split (before mmdet's
    filtering), then each half keeps the images the datasets hold. Returns (part 1 in ``dataset_a``,
    part 2 in ``dataset_b``)."""
    ids = [im["id"] for im in read_annotations(root, split)["images"]]
    part1, part2 = split_image_ids(ids, fraction, seed)
    p1, p2 = set(part1), set(part2)
    idx1 = [i for i in range(len(dataset_a)) if dataset_a.get_data_info(i)["img_id"] in p1]
    idx2 = [i for i in range(len(dataset_b)) if dataset_b.get_data_info(i)["img_id"] in p2]
    return idx1, idx2



def coco_metric(root: str | Path, split: str, img_ids: Sequence[int] | None = None) -> Any:
    """mmdet's ``CocoMetric`` (bbox) on ``split``, restricted to ``img_ids`` when given."""
    from mmdet.evaluation import CocoMetric

    with _scope(), contextlib.redirect_stdout(io.StringIO()):
        metric = CocoMetric(ann_file=str(ann_path(root, split)), metric="bbox", format_only=False)
    if img_ids is not None:
        metric.img_ids = list(img_ids)
    return metric


METRIC_NAMES = ("mAP", "mAP_50", "mAP_75", "mAP_s", "mAP_m", "mAP_l")


def evaluate(model: nn.Module, dataset: Any, root: str | Path, split: str, max_images: int | None = None
             ) -> dict[str, float]:
    """COCO bbox mAP of ``model`` over ``dataset`` (batch 1, eval mode), in percent like the paper.

    A detector that finds no box above its score threshold on the whole set (an early or weak model) scores
    0 on every metric, with a warning that says so: COCO's evaluator has nothing to match then, and mmdet
    returns no numbers at all."""
    n = len(dataset) if max_images is None else min(max_images, len(dataset))
    ids = [dataset.get_data_info(i)["img_id"] for i in range(n)]
    metric = coco_metric(root, split, ids)
    metric.dataset_meta = dataset.metainfo
    feed_metric(model, dataset, metric, n)
    boxes = sum(len(pred["bboxes"]) for _, pred in metric.results)
    if boxes == 0:
        warnings.warn(f"the detector found no box above its score threshold on {n} {split} images; every bbox "
                      "metric is 0", stacklevel=2)
        return {f"bbox_{k}": 0.0 for k in METRIC_NAMES}
    with quiet_logger(), contextlib.redirect_stdout(io.StringIO()):  # the summary comes back as metrics
        raw = metric.compute_metrics(metric.results)
    return {f"bbox_{k}": 100.0 * float(raw[f"bbox_{k}"]) for k in METRIC_NAMES}
