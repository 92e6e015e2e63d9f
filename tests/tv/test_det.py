"""Detection on the torchvision backend (no OpenMMLab): FNA's RetinaNet and SSDLite with the paper's counts, the
anchors per level, a forward/backward with a matched box, COCO-layout data read with mmdet's rules and FNA's image
split, COCO mAP by pycocotools, and a detector that finds nothing. `tests/mm/test_backends_agree.py` checks, where
OpenMMLab is installed, that every number here is the mm backend's."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from fnatune.arch import Arch
from fnatune.cost import count_madds, count_params
from fnatune.data.coco import ann_path, generate_coco, split_image_ids
from fnatune.tv import det
from fnatune.tv.detection import assign
from search_spaces import ARCHS_DIR

ROOT = Path(__file__).resolve().parents[2]
MEAN, STD = (123.675, 116.28, 103.53), (58.395, 57.12, 57.375)


def _detector(name: str, num_classes: int = 80, **kw: float) -> torch.nn.Module:
    arch = Arch.load(ARCHS_DIR / f"{name}.json")
    bb = dict(type="FNABackbone", arch=arch.to_dict())
    chans = [arch.tap_channels(t) for t in arch.skeleton.taps]
    if "retinanet" in name:
        return det.build_model(det.retinanet_config(bb, chans, num_classes, MEAN, STD, **kw))
    return det.build_model(det.ssdlite_config(bb, chans, num_classes, MEAN, STD, **kw))


def test_paper_params_and_madds_of_both_detectors() -> None:
    """FNA_SPEC §7.3 on the torchvision backend, exactly the mm backend's counts: MobileNetV2 RetinaNet 11.49M /
    133.05B, FNA 11.73M / 133.03B (800x1088); SSDLite 4.3M / 0.8B and 4.6M / 0.9B (320x320)."""
    got = {}
    for name, size in [("mbv2_retinanet", (800, 1088)), ("fna_retinanet", (800, 1088)),
                       ("mbv2_ssdlite", (320, 320)), ("fna_ssdlite", (320, 320))]:
        m = _detector(name)
        got[name] = (count_params(m), count_madds(m, size))
    # the mm backend's numbers, counted by tests/mm/test_det.py with the same counter
    assert got == {"mbv2_retinanet": (11_488_244, 133_053_449_976), "fna_retinanet": (11_732_244, 133_029_704_376),
                   "mbv2_ssdlite": (4_322_988, 808_218_304), "fna_ssdlite": (4_630_316, 880_333_504)}
    assert round(got["mbv2_retinanet"][0] / 1e6, 2) == 11.49 and round(got["fna_retinanet"][1] / 1e9, 2) == 133.03
    assert round(got["fna_ssdlite"][0] / 1e6, 1) == 4.6 and round(got["fna_ssdlite"][1] / 1e9, 1) == 0.9


def test_fpn_and_ssdlite_heads_are_fnas() -> None:
    retina = _detector("fna_retinanet", 3)
    p6, p7 = retina.fpn.extra_blocks.p6, retina.fpn.extra_blocks.p7
    assert p6.in_channels == 320 and p6.stride == (2, 2) and p7.in_channels == 256  # P6 on C5, the input
    x = torch.randn(1, 3, 128, 192)
    feats = retina.features(x)
    assert [tuple(f.shape[-2:]) for f in feats] == [(16, 24), (8, 12), (4, 6), (2, 3), (1, 2)]
    ssd = _detector("fna_ssdlite", 3)
    assert [len(b) for b in ssd.base] == [4, 6, 6, 6, 4, 4]
    for branch in (*ssd.cls_convs, *ssd.reg_convs):
        dw, pred, bn = branch[0], branch[3], branch[4]
        assert dw.groups == dw.in_channels and dw.kernel_size == (3, 3)
        assert pred.bias is None and pred.kernel_size == (1, 1)
        assert isinstance(bn, torch.nn.BatchNorm2d) and bn.eps == 1e-3 and bn.num_features == pred.out_channels
    assert [tuple(f.shape[-2:]) for f in ssd.eval().features(torch.randn(1, 3, 320, 320))] == \
        [(20, 20), (10, 10), (5, 5), (3, 3), (2, 2), (1, 1)]


@pytest.mark.parametrize("name,shapes", [("fna_retinanet", [(96, 128), (80, 112)]), ("fna_ssdlite", [(320, 320)] * 2)])
def test_forward_backward_with_matched_boxes(name: str, shapes: list[tuple[int, int]]) -> None:
    torch.manual_seed(0)
    model = _detector(name, 3).train()
    g = torch.Generator().manual_seed(1)
    batch = {"img": [torch.randint(0, 256, (3, h, w), generator=g, dtype=torch.uint8) for h, w in shapes],
             "boxes": [torch.tensor([[10.0, 12.0, 60.0, 70.0]]), torch.tensor([[5.0, 5.0, 40.0, 30.0]])],
             "labels": [torch.tensor([1]), torch.tensor([2])], "img_shape": shapes, "scale_factor": [(1.0, 1.0)] * 2}
    loss = model.loss(batch)
    assert torch.isfinite(loss) and loss.item() > 0
    loss.backward()
    grads = [p.grad for p in model.backbone.parameters()]
    assert all(g is not None for g in grads) and any(float(g.abs().sum()) > 0 for g in grads)
    model.eval()
    out = model.predict(batch)
    assert len(out) == 2 and all(o["boxes"].shape[1] == 4 for o in out)


def test_assigner_thresholds_low_quality_matches_and_invalid_anchors() -> None:
    anchors = torch.tensor([[0.0, 0, 10, 10], [0, 0, 9, 10], [20, 20, 30, 30], [0, 0, 4, 4], [100, 100, 110, 110]])
    gt = torch.tensor([[0.0, 0, 10, 10], [21, 21, 40, 40]])
    valid = torch.tensor([True, True, True, True, False])
    out = assign(anchors, valid, gt, pos_iou=0.5, neg_iou=0.4, all_ties=True)
    # 0: IoU 1 -> box 0; 1: IoU 0.9 -> box 0; 2: IoU 0.22 with box 1 but its best anchor -> box 1 (low quality);
    # 3: IoU 0.16 -> background; 4: invalid -> ignored
    assert out.tolist() == [0, 0, 1, -1, -2]
    assert assign(anchors, valid, gt[:0], 0.5, 0.4).tolist() == [-1, -1, -1, -1, -2]


def test_generated_coco_set_is_read_with_mmdets_rules(tmp_path: Path) -> None:
    root = generate_coco(tmp_path / "coco", 6, 2, (96, 128), seed=3, max_objects=3)
    ann = json.loads(ann_path(root, "train").read_text())
    ds = det.coco(root, "train", det.plain_pipeline((96, 128), True))
    assert len(ds) == 6 and ds.classes == ("person", "car", "stop sign")
    item = ds[0]
    want = [a for a in ann["annotations"] if a["image_id"] == item["image_id"]]
    expect = torch.tensor([[x, y, x + bw, y + bh] for x, y, bw, bh in (a["bbox"] for a in want)])
    assert torch.allclose(item["boxes"], expect)
    assert item["labels"].tolist() == [{1: 0, 3: 1, 13: 2}[a["category_id"]] for a in want]
    assert item["img"].shape == (3, 96, 128) and item["img"].dtype == torch.uint8 and item["scale_factor"] == (1.0, 1.0)
    half = det.coco(root, "train", det.plain_pipeline((48, 64), True))[0]
    assert half["img_shape"] == (48, 64) and half["scale_factor"] == (0.5, 0.5)
    assert torch.allclose(half["boxes"], expect / 2)


def test_search_split_is_fnas_image_split(tmp_path: Path) -> None:
    root = generate_coco(tmp_path / "coco", 10, 2, (64, 64), seed=0)
    a = det.coco(root, "train", det.plain_pipeline((64, 64), True))
    b = det.coco(root, "train", det.plain_pipeline((64, 64), True))
    idx1, idx2 = det.search_subsets(a, b, root, "train", 0.5, 520)
    ids = [im["id"] for im in json.loads(ann_path(root, "train").read_text())["images"]]
    part1, part2 = split_image_ids(ids, 0.5, 520)
    assert sorted(a.image_ids[i] for i in idx1) == sorted(part1) and sorted(b.image_ids[i] for i in idx2) == sorted(part2)


def test_coco_map_is_100_for_perfect_boxes_and_lower_for_shifted(tmp_path: Path) -> None:
    from fnatune.tv.metrics import coco_bbox_metrics, coco_results

    root = generate_coco(tmp_path / "coco", 2, 6, (96, 128), seed=1)
    ds = det.coco(root, "val", det.plain_pipeline((96, 128), True), test_mode=True)

    def mAP(shift: float) -> float:
        results = []
        for i in range(len(ds)):
            it = ds[i]
            boxes = it["boxes"].clone()
            boxes[:, 0::2] += shift * (boxes[:, 2:3] - boxes[:, 0:1])
            results += coco_results(it["image_id"], boxes, torch.ones(len(boxes)), it["labels"], ds.cat_ids)
        return coco_bbox_metrics(ds.ann_file, results, ds.image_ids, ds.cat_ids)["bbox_mAP"]

    assert mAP(0.0) == pytest.approx(100.0)
    shifted = mAP(0.3)  # IoU 0.7/1.3 = 0.54
    assert 0.0 < shifted < 100.0 and mAP(0.6) < shifted


def test_a_detector_that_finds_nothing_scores_zero_with_a_warning(tmp_path: Path) -> None:
    root = generate_coco(tmp_path / "coco", 2, 3, (96, 128), seed=1)
    ds = det.coco(root, "val", det.plain_pipeline((96, 128), True), test_mode=True)
    model = _detector("fna_retinanet", 3, score_thr=1.0)  # no sigmoid score exceeds 1
    with pytest.warns(UserWarning, match="found no box above its score threshold on 3 val images"):
        metrics = det.evaluate(model, ds, root, "val")
    assert metrics == {f"bbox_{k}": 0.0 for k in det.METRIC_NAMES}


def test_a_detector_on_a_space_with_the_wrong_taps_is_a_clear_error() -> None:
    from fnatune.config import load_config
    from fnatune.errors import FnatuneError
    from fnatune.space import get_space
    from fnatune.tasks.det import DetBackend

    cfg = load_config(ROOT / "pipelines/tiny/det.yaml", ["space=mbv2_ssdlite"])
    arch = get_space("mbv2_ssdlite").sample(0)
    with pytest.raises(FnatuneError, match="retinanet needs a space with 4 taps.*use space: mbv2_det"):
        DetBackend(cfg).model(dict(type="FNABackbone", arch=arch.to_dict()), arch, "finetune")
