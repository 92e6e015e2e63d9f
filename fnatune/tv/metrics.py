"""The torchvision backend's metrics, computed as the mm backend's OpenMMLab metrics compute them:

* :class:`ConfusionMatrix`: mmseg's ``IoUMetric`` (mIoU, mAcc, aAcc) from one confusion matrix summed over the
  images: IoU = TP / (TP + FP + FN) per class, classes that never occur in labels or predictions left out (NaN),
  the means in percent rounded to two decimals as mmseg rounds them;
* :func:`coco_bbox_metrics`: COCO bbox AP by pycocotools with mmdet ``CocoMetric``'s settings (max detections
  100/300/1000, so an SSD's 200 boxes per image all count) and its six numbers, in percent (an area range without
  ground truth, COCO's -1, is reported as 0, as the pose task reports it).
"""
from __future__ import annotations

import contextlib
import io
import json
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

BBOX_METRICS = ("mAP", "mAP_50", "mAP_75", "mAP_s", "mAP_m", "mAP_l")


class ConfusionMatrix:
    """Pixels counted by (label, prediction) over every image ``update`` sees; ``ignore_index`` pixels are left out."""

    def __init__(self, num_classes: int, ignore_index: int = 255) -> None:
        self.num_classes, self.ignore_index = num_classes, ignore_index
        self.matrix = torch.zeros(num_classes, num_classes, dtype=torch.int64)

    def update(self, pred: torch.Tensor, label: torch.Tensor) -> None:
        keep = label != self.ignore_index
        k = self.num_classes
        idx = label[keep].long().cpu() * k + pred[keep].long().cpu()
        self.matrix += torch.bincount(idx, minlength=k * k).reshape(k, k)

    def metrics(self) -> dict[str, float]:
        m = self.matrix.double().numpy()
        tp, label, pred = np.diag(m), m.sum(1), m.sum(0)
        with np.errstate(divide="ignore", invalid="ignore"):
            iou = tp / (label + pred - tp)
            acc = tp / label
            a_acc = tp.sum() / label.sum()
        return {"aAcc": _pct(a_acc), "mIoU": _pct(np.nanmean(iou) if not np.isnan(iou).all() else np.nan),
                "mAcc": _pct(np.nanmean(acc) if not np.isnan(acc).all() else np.nan)}

    def per_class_iou(self) -> list[float]:
        m = self.matrix.double().numpy()
        tp = np.diag(m)
        with np.errstate(divide="ignore", invalid="ignore"):
            return [float(v) for v in 100 * tp / (m.sum(1) + m.sum(0) - tp)]


def _pct(v: float) -> float:
    return float(np.round(float(v) * 100, 2)) if not np.isnan(v) else 0.0


def coco_results(image_id: Any, boxes: torch.Tensor, scores: torch.Tensor, labels: torch.Tensor,
                 cat_ids: Sequence[Any]) -> list[dict[str, Any]]:
    """One image's detections (xyxy) in COCO's results format (xywh, the category's COCO id)."""
    out = []
    for b, s, lab in zip(boxes.tolist(), scores.tolist(), labels.tolist()):
        out.append({"image_id": image_id, "category_id": cat_ids[int(lab)],
                    "bbox": [b[0], b[1], b[2] - b[0], b[3] - b[1]], "score": float(s)})
    return out


def cocoeval_stats(ann_file: str | Path, results: list[dict[str, Any]], iou_type: str,
                   image_ids: Sequence[Any] | None = None, cat_ids: Sequence[Any] | None = None,
                   max_dets: Sequence[int] | None = None) -> list[float]:
    """pycocotools' COCOeval (``bbox`` or ``keypoints``) on results in COCO's format, its summary stats in percent
    (COCO's -1, a range without ground truth, as 0); quiet (COCO prints its steps)."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    with contextlib.redirect_stdout(io.StringIO()), tempfile.TemporaryDirectory() as d:
        gt = COCO(str(ann_file))
        path = Path(d) / "results.json"
        path.write_text(json.dumps(results))
        ev = COCOeval(gt, gt.loadRes(str(path)), iou_type)
        if image_ids is not None:
            ev.params.imgIds = list(image_ids)
        if cat_ids is not None:
            ev.params.catIds = list(cat_ids)
        if max_dets is not None:
            ev.params.maxDets = list(max_dets)
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return [100.0 * max(float(v), 0.0) for v in ev.stats]


def coco_bbox_metrics(ann_file: str | Path, results: list[dict[str, Any]], image_ids: Sequence[Any],
                      cat_ids: Sequence[Any]) -> dict[str, float]:
    """COCOeval (bbox) over ``image_ids``: ``bbox_mAP`` ... ``bbox_mAP_l`` in percent; all 0 without a detection."""
    if not results:
        return {f"bbox_{k}": 0.0 for k in BBOX_METRICS}
    stats = cocoeval_stats(ann_file, results, "bbox", image_ids, cat_ids, (100, 300, 1000))
    return {f"bbox_{k}": v for k, v in zip(BBOX_METRICS, stats[:6])}
