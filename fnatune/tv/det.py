"""Detection on the torchvision backend: the functions :class:`~fnatune.tasks.det.DetBackend` calls, with the
same names and arguments as :mod:`fnatune.mm.det` (its mmdet twin): COCO-layout datasets with v2 pipelines, FNA's
RetinaNet (:mod:`fnatune.tv.retinanet`) and SSDLite (:mod:`fnatune.tv.ssdlite`), and COCO bbox mAP by
pycocotools (:mod:`fnatune.tv.metrics`)."""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from torch import nn

from fnatune.data.coco import read_annotations, split_image_ids
from fnatune.tv import loss_fn  # noqa: F401  (the module's surface)
from fnatune.tv import transforms as T
from fnatune.tv.datasets import CocoDetection
from fnatune.tv.detection import collate
from fnatune.tv.metrics import BBOX_METRICS, coco_bbox_metrics, coco_results

METRIC_NAMES = BBOX_METRICS


def retinanet_config(backbone: dict[str, Any], in_channels: Sequence[int], num_classes: int, mean: Sequence[float],
                     std: Sequence[float], score_thr: float = 0.05, nms_iou: float = 0.5, max_per_img: int = 100,
                     nms_pre: int = 1000, channels: int = 256) -> dict[str, Any]:
    """FNA's RetinaNet (:class:`fnatune.tv.retinanet.RetinaNet`'s arguments)."""
    return dict(type="RetinaNet", backbone=backbone, in_channels=list(in_channels), num_classes=num_classes,
                mean=list(mean), std=list(std), score_thr=score_thr, nms_iou=nms_iou, max_per_img=max_per_img,
                nms_pre=nms_pre, channels=channels)


def ssdlite_config(backbone: dict[str, Any], in_channels: Sequence[int], num_classes: int, mean: Sequence[float],
                   std: Sequence[float], score_thr: float = 0.02, nms_iou: float = 0.6, max_per_img: int = 200,
                   nms_pre: int = 1000) -> dict[str, Any]:
    """FNA's SSDLite (:class:`fnatune.tv.ssdlite.SSDLite`'s arguments)."""
    return dict(type="SSDLite", backbone=backbone, in_channels=list(in_channels), num_classes=num_classes,
                mean=list(mean), std=list(std), score_thr=score_thr, nms_iou=nms_iou, max_per_img=max_per_img,
                nms_pre=nms_pre)


def build_model(cfg: dict[str, Any], init: bool = True) -> nn.Module:
    """The detector of a config from :func:`retinanet_config` or :func:`ssdlite_config`; its heads are initialised
    as mmdet initialises them (``init`` is accepted for the mm twin's signature: building always initialises)."""
    from fnatune.backbone import build_backbone
    from fnatune.tv.retinanet import RetinaNet
    from fnatune.tv.ssdlite import SSDLite

    kwargs = {k: v for k, v in cfg.items() if k not in ("type", "backbone")}
    kind = {"RetinaNet": RetinaNet, "SSDLite": SSDLite}[cfg["type"]]
    return kind(build_backbone(cfg["backbone"]), **kwargs)


def train_pipeline(scale: Sequence[int], keep_ratio: bool, flip: float, ssd_augment: bool, mean: Sequence[float]) -> Any:
    return T.det_train(scale, keep_ratio, flip, ssd_augment, mean)


def plain_pipeline(scale: Sequence[int], keep_ratio: bool, with_labels_resized: bool = True) -> Any:
    """The resize alone. Boxes always follow the image here; evaluation maps predictions back by the scale factor
    (``with_labels_resized`` is the mm twin's distinction and changes nothing here)."""
    return T.det_test(scale, keep_ratio)


def coco(root: str | Path, split: str, pipeline: Any, test_mode: bool = False) -> CocoDetection:
    return CocoDetection(root, split, pipeline, test_mode)


def search_subsets(dataset_a: CocoDetection, dataset_b: CocoDetection, root: str | Path, split: str, fraction: float,
                   seed: int) -> tuple[list[int], list[int]]:
    """FNA's halves, split over the annotation file's image list before filtering (as the mm twin)."""
    ids = [im["id"] for im in read_annotations(root, split)["images"]]
    part1, part2 = split_image_ids(ids, fraction, seed)
    p1, p2 = set(part1), set(part2)
    return ([i for i, v in enumerate(dataset_a.image_ids) if v in p1],
            [i for i, v in enumerate(dataset_b.image_ids) if v in p2])


def evaluate(model: nn.Module, dataset: CocoDetection, root: str | Path, split: str, max_images: int | None = None,
             batch_size: int = 1) -> dict[str, float]:
    """COCO bbox mAP of ``model`` over the first ``max_images`` of ``dataset`` (eval mode), in percent. Batch 1 by
    default, as mmdet tests: in a batch, a smaller image is padded to the largest, which moves its border's scores."""
    import warnings

    model.eval()
    n = len(dataset) if max_images is None else min(max_images, len(dataset))
    results: list[dict[str, Any]] = []
    for start in range(0, n, batch_size):
        batch = collate([dataset[i] for i in range(start, min(start + batch_size, n))])
        for image_id, det in zip(batch["image_id"], model.predict(batch)):  # type: ignore[operator]
            results += coco_results(image_id, det["boxes"].float().cpu(), det["scores"].float().cpu(),
                                    det["labels"].cpu(), dataset.cat_ids)
    if not results:
        warnings.warn(f"the detector found no box above its score threshold on {n} {split} images; every bbox "
                      "metric is 0", stacklevel=2)
    return coco_bbox_metrics(dataset.ann_file, results, dataset.image_ids[:n], dataset.cat_ids)
