"""The torchvision backend computes what the mm backend computes: with the same weights, RetinaNet and SSDLite give
the same head outputs, the same training loss (anchors, assigner, box coding, focal / hard-negative loss and their
averaging) and the same detections; DeepLabv3 the same logits and loss; the mIoU of one set of predictions is
mmseg's IoUMetric's, and the COCO numbers mmdet's CocoMetric's."""
from __future__ import annotations

import warnings
from pathlib import Path

import pytest
import torch

from fnatune.mm import available

if not (available("mmdet") and available("mmseg")):
    pytest.skip("OpenMMLab (mmdet, mmseg + compiled mmcv) is not installed", allow_module_level=True)

from mmdet.structures import DetDataSample
from mmengine.structures import InstanceData, PixelData
from mmseg.structures import SegDataSample

from fnatune.arch import Arch
from fnatune.mm import det as mm_det
from fnatune.mm import seg as mm_seg
from fnatune.space import get_space
from fnatune.tv import det as tv_det
from fnatune.tv import seg as tv_seg
from fnatune.tv.detection import grid_anchors
from fnatune.tv.retinanet import STRIDES as RETINA_STRIDES
from fnatune.tv.ssdlite import STRIDES as SSD_STRIDES
from search_spaces import ARCHS_DIR

MEAN, STD = (123.675, 116.28, 103.53), (58.395, 57.12, 57.375)
GROUPS = {
    "retinanet": [("backbone.", "backbone."), ("fpn.", "neck."),
                  ("head.classification_head.conv.", "bbox_head.cls_convs."),
                  ("head.classification_head.cls_logits.", "bbox_head.retina_cls."),
                  ("head.regression_head.conv.", "bbox_head.reg_convs."),
                  ("head.regression_head.bbox_reg.", "bbox_head.retina_reg.")],
    "ssdlite": [("backbone.", "backbone."), ("extra.", "neck.extra_layers."), ("cls_convs.", "bbox_head.cls_convs."),
                ("reg_convs.", "bbox_head.reg_convs.")],
    "seg": [("backbone.", "backbone."), ("aspp.", "decode_head.aspp."), ("classifier.", "decode_head.conv_seg.")],
}


def copy_weights(dst: torch.nn.Module, src: torch.nn.Module, groups: list[tuple[str, str]]) -> None:
    """Every tensor of ``src`` into ``dst``, group by group in registration order (shapes checked)."""
    sd, ss = dst.state_dict(), src.state_dict()
    done = 0
    for pd, ps in groups:
        kd = [k for k in sd if k.startswith(pd) and not k.endswith("num_batches_tracked")]
        ks = [k for k in ss if k.startswith(ps) and not k.endswith("num_batches_tracked")]
        assert len(kd) == len(ks), (pd, len(kd), len(ks))
        for a, b in zip(kd, ks):
            assert sd[a].shape == ss[b].shape, (a, b)
            sd[a] = ss[b].clone()
        done += len(kd)
    assert done == len([k for k in sd if not k.endswith("num_batches_tracked")])
    dst.load_state_dict(sd)


def _detectors(name: str, k: int = 3) -> tuple[torch.nn.Module, torch.nn.Module]:
    arch = Arch.load(ARCHS_DIR / f"{name}.json")
    bb = dict(type="FNABackbone", arch=arch.to_dict())
    chans = [arch.tap_channels(t) for t in arch.skeleton.taps]
    kind = "retinanet" if "retina" in name else "ssdlite"
    torch.manual_seed(0)
    mm_model = mm_det.build_model(getattr(mm_det, f"{kind}_config")(bb, chans, k, MEAN, STD, score_thr=0.0))
    tv_model = tv_det.build_model(getattr(tv_det, f"{kind}_config")(bb, chans, k, MEAN, STD, score_thr=0.0))
    with torch.no_grad():  # perturbed BN statistics: a wrong BN mapping would show
        for m in mm_model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 1.5)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.1, 0.1)
    copy_weights(tv_model, mm_model, GROUPS[kind])
    return tv_model, mm_model


def _batches(shapes: list[tuple[int, int]], boxes: list[list[list[float]]], labels: list[list[int]]
             ) -> tuple[dict, dict]:  # type: ignore[type-arg]
    g = torch.Generator().manual_seed(1)
    imgs = [torch.randint(0, 256, (3, h, w), generator=g, dtype=torch.uint8) for h, w in shapes]
    tv_batch = {"img": imgs, "boxes": [torch.tensor(b) for b in boxes], "labels": [torch.tensor(lab) for lab in labels],
                "img_shape": shapes, "scale_factor": [(1.0, 1.0)] * len(imgs), "image_id": list(range(len(imgs)))}
    samples = []
    for (h, w), b, lab in zip(shapes, boxes, labels):
        s = DetDataSample(metainfo={"img_shape": (h, w), "ori_shape": (h, w), "scale_factor": (1.0, 1.0)})
        s.gt_instances = InstanceData(bboxes=torch.tensor(b), labels=torch.tensor(lab))
        samples.append(s)
    mm_batch = {"inputs": [i.flip(0) for i in imgs], "data_samples": samples}  # mmdet reads BGR and converts
    return tv_batch, mm_batch


CASES = [("fna_retinanet", [(96, 128), (80, 112)]), ("fna_ssdlite", [(320, 320), (320, 320)])]
BOXES = [[[10.0, 12.0, 60.0, 70.0], [50.0, 20.0, 90.0, 50.0]], [[5.0, 5.0, 40.0, 30.0]]]
LABELS = [[0, 2], [1]]


@pytest.mark.parametrize("name,shapes", CASES)
def test_detectors_agree_on_outputs_loss_and_detections(name: str, shapes: list[tuple[int, int]]) -> None:
    tv_model, mm_model = _detectors(name)
    scale = 1.0 if "retina" in name else 3.0
    boxes = [[[v * scale for v in b] for b in bs] for bs in BOXES]
    tv_batch, mm_batch = _batches(shapes, boxes, LABELS)
    tv_model.train(), mm_model.train()
    data = mm_model.data_preprocessor(mm_batch, training=True)
    tv_model.eval(), mm_model.eval()  # same BN statistics for the raw outputs
    tv_cls, tv_reg = tv_model(data["inputs"])
    mm_cls, mm_reg = mm_model(data["inputs"], mode="tensor")
    n = len(shapes)
    for a, b in zip(tv_cls, mm_cls):
        assert torch.allclose(a, b.permute(0, 2, 3, 1).reshape(n, -1, a.shape[-1]), atol=1e-5)
    for a, b in zip(tv_reg, mm_reg):
        assert torch.allclose(a, b.permute(0, 2, 3, 1).reshape(n, -1, 4), atol=1e-5)

    loss_tv = tv_model.loss(tv_batch)
    parsed, _ = mm_model.parse_losses(mm_model(**data, mode="loss"))
    assert loss_tv.item() == pytest.approx(parsed.item(), rel=1e-4)

    tv_det_out = tv_model.predict(tv_batch)
    mm_out = mm_model.test_step(mm_batch)
    for a, b in zip(tv_det_out, mm_out):
        p = b.pred_instances
        top = min(20, len(p.scores))
        assert len(a["scores"]) == len(p.scores)
        assert torch.allclose(a["scores"][:top], p.scores[:top], atol=1e-5)
        assert torch.allclose(a["boxes"][:top], p.bboxes[:top], atol=1e-3)
        assert torch.equal(a["labels"][:top], p.labels[:top])


def test_anchors_are_mmdets() -> None:
    for name, sizes in [("fna_retinanet", [(12, 16), (6, 8), (3, 4), (2, 2), (1, 1)]),
                        ("fna_ssdlite", [(20, 20), (10, 10), (5, 5), (3, 3), (2, 2), (1, 1)])]:
        tv_model, mm_model = _detectors(name)
        theirs = mm_model.bbox_head.prior_generator.grid_priors(sizes, device="cpu")
        strides = RETINA_STRIDES if "retina" in name else SSD_STRIDES
        ours = [grid_anchors(b, s, hw) for b, s, hw in zip(tv_model.base, strides, sizes)]
        for a, b in zip(ours, theirs):
            assert torch.allclose(a, b, atol=1e-4)


def test_deeplab_agrees_on_logits_and_loss() -> None:
    arch = get_space("mbv2_seg").first_arch()
    bb = dict(type="FNABackbone", arch=arch.to_dict())
    crop = (64, 64)
    torch.manual_seed(0)
    mm_model = mm_seg.build_model(mm_seg.model_config(bb, arch.tap_channels(arch.skeleton.taps[-1]), 5, MEAN, STD, crop))
    tv_model = tv_seg.build_model(tv_seg.model_config(bb, 0, 5, MEAN, STD, crop))
    copy_weights(tv_model, mm_model, GROUPS["seg"])
    g = torch.Generator().manual_seed(2)
    imgs = [torch.randint(0, 256, (3, 64, 64), generator=g, dtype=torch.uint8),
            torch.randint(0, 256, (3, 48, 56), generator=g, dtype=torch.uint8)]  # padded to the crop
    labels = [torch.randint(0, 5, (64, 64), generator=g), torch.randint(0, 5, (48, 56), generator=g)]
    labels[0][:8] = 255
    samples = []
    for lab in labels:
        s = SegDataSample(metainfo={"img_shape": tuple(lab.shape), "ori_shape": tuple(lab.shape)})
        s.gt_sem_seg = PixelData(data=lab[None])
        samples.append(s)
    data = mm_model.data_preprocessor({"inputs": [i.flip(0) for i in imgs], "data_samples": samples}, training=True)
    mm_model.train(), tv_model.train()
    torch.manual_seed(3)
    parsed, _ = mm_model.parse_losses(mm_model(**data, mode="loss"))
    torch.manual_seed(3)  # the same dropout mask
    ours = tv_model.loss({"img": imgs, "label": labels})
    assert ours.item() == pytest.approx(parsed.item(), rel=1e-4)
    mm_model.eval(), tv_model.eval()
    with torch.no_grad():
        x = data["inputs"][:1]
        mm_logits = mm_model(x, mode="tensor")
        from torch.nn import functional as F
        mm_logits = F.interpolate(mm_logits, size=x.shape[-2:], mode="bilinear", align_corners=True)
        assert torch.allclose(tv_model.logits(imgs[0]), mm_logits, atol=1e-4)


def test_miou_is_mmsegs_iou_metric() -> None:
    from mmseg.evaluation import IoUMetric

    from fnatune.tv.metrics import ConfusionMatrix

    g = torch.Generator().manual_seed(4)
    classes = tuple(f"c{i}" for i in range(6))
    metric = IoUMetric(iou_metrics=["mIoU"])
    metric.dataset_meta = {"classes": classes}
    cm = ConfusionMatrix(6)
    for _ in range(5):
        label = torch.randint(0, 5, (40, 50), generator=g)  # class 5 never labelled: IoU 0 when predicted
        label[:3] = 255
        pred = torch.where(torch.rand(40, 50, generator=g) < 0.6, label.clamp(max=5), torch.randint(0, 6, (40, 50), generator=g))
        pred[pred == 255] = 0
        metric.process([], [{"pred_sem_seg": {"data": pred[None]}, "gt_sem_seg": {"data": label[None]}}])
        cm.update(pred, label)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        theirs = metric.compute_metrics(metric.results)
    ours = cm.metrics()
    assert 0 < ours["mIoU"] < 100
    for k in ("aAcc", "mIoU", "mAcc"):  # mmseg rounds in float32 (42.970001...), we in float64
        assert ours[k] == pytest.approx(float(theirs[k]), abs=1e-4), k


def test_coco_numbers_are_mmdets_coco_metric(tmp_path: Path) -> None:
    from fnatune.data.coco import generate_coco

    root = generate_coco(tmp_path / "coco", 2, 4, (96, 128), seed=5, max_objects=3)
    ds_tv = tv_det.coco(root, "val", tv_det.plain_pipeline((96, 128), True), test_mode=True)
    ds_mm = mm_det.coco(root, "val", mm_det.plain_pipeline((96, 128), True, False), test_mode=True)
    g = torch.Generator().manual_seed(6)
    from fnatune.tv.metrics import coco_bbox_metrics, coco_results

    metric = mm_det.coco_metric(root, "val", ds_tv.image_ids)
    metric.dataset_meta = ds_mm.metainfo
    results = []
    for i in range(len(ds_tv)):
        item = ds_tv[i]
        gt = item["boxes"]
        noisy = (gt + torch.randn(gt.shape, generator=g) * 3).clamp(min=0)
        boxes = torch.cat([noisy, torch.tensor([[1.0, 1.0, 30.0, 30.0]])])
        scores = torch.rand(len(boxes), generator=g)
        labels = torch.cat([item["labels"], torch.tensor([0])])
        results += coco_results(item["image_id"], boxes, scores, labels, ds_tv.cat_ids)
        pred = {"bboxes": boxes, "scores": scores, "labels": labels}
        metric.process([], [{"img_id": item["image_id"], "ori_shape": item["ori_shape"], "pred_instances": pred}])
    ours = coco_bbox_metrics(ds_tv.ann_file, results, ds_tv.image_ids, ds_tv.cat_ids)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        theirs = metric.compute_metrics(metric.results)
    assert ours["bbox_mAP"] > 0
    for k in mm_det.METRIC_NAMES:  # an area range without ground truth: COCO's -1, reported as 0 here
        assert round(ours[f"bbox_{k}"] / 100, 3) == pytest.approx(max(theirs[f"bbox_{k}"], 0.0), abs=1e-9), k


@pytest.mark.parametrize("contrast_first", [True, False])
def test_photometric_distortion_is_mmdets(contrast_first: bool) -> None:
    """The same draws through mmdet's PhotoMetricDistortion (BGR, float) and ours (RGB, uint8): equal to rounding."""
    import numpy as np
    from mmdet.datasets.transforms import PhotoMetricDistortion as Theirs
    from torchvision import tv_tensors

    from fnatune.tv.transforms import PhotometricDistortion

    g = torch.Generator().manual_seed(7)
    rgb = torch.randint(40, 200, (3, 24, 32), generator=g, dtype=torch.uint8)
    theirs = Theirs()
    flags = (1 if contrast_first else 0, 1, 1, 1, 1, 0, 12.0, 1.2, 1.4, 15.0, np.arange(3))
    theirs._random_flags = lambda: flags  # mode, flags, delta, alpha, saturation, hue, swap
    bgr = rgb.flip(0).permute(1, 2, 0).numpy().copy()
    want = np.clip(theirs.transform({"img": bgr})["img"], 0, 255)[..., ::-1].transpose(2, 0, 1)
    params = {"brightness": 12.0, "contrast_first": contrast_first, "contrast": 1.2, "saturation": 1.4, "hue": 15.0,
              "swap": None}
    ours = PhotometricDistortion().transform(tv_tensors.Image(rgb), params)
    assert np.abs(ours.numpy().astype(np.float64) - want).max() <= 1.0
