"""Detection with mmdet: RetinaNet and SSDLite around our backbones as FNA builds them, the paper's
counts, anchors and matching, COCO-format data through mmdet's dataset class, COCO mAP from mmdet's
metric, plain mmdet/mmseg configs, and the tiny detection pipeline end to end."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from fnatune.mm import available

if not available("mmdet"):
    pytest.skip("OpenMMLab (mmdet + compiled mmcv) is not installed", allow_module_level=True)

from click.testing import CliRunner
from mmengine.structures import InstanceData

from fnatune.arch import Arch
from fnatune.cli import main
from fnatune.cost import count_madds, count_params
from fnatune.data.coco import ann_path, generate_coco, split_image_ids
from fnatune.mm import det
from search_spaces import ARCHS_DIR

ROOT = Path(__file__).resolve().parents[2]
MEAN, STD = (123.675, 116.28, 103.53), (58.395, 57.12, 57.375)


def _detector(name: str, num_classes: int = 80, init: bool = True) -> torch.nn.Module:
    arch = Arch.load(ARCHS_DIR / f"{name}.json")
    bb = dict(type="FNABackbone", arch=arch.to_dict())
    chans = [arch.tap_channels(t) for t in arch.skeleton.taps]
    if "retinanet" in name:
        return det.build_model(det.retinanet_config(bb, chans, num_classes, MEAN, STD), init=init)
    return det.build_model(det.ssdlite_config(bb, chans, num_classes, MEAN, (1.0, 1.0, 1.0)), init=init)


def test_paper_params_and_madds_of_both_detectors() -> None:
    """FNA_SPEC §7.3: MobileNetV2 RetinaNet 11.49M / 133.05B, FNA 11.73M / 133.03B (800x1088);
    SSDLite 4.3M / 0.8B and 4.6M / 0.9B (320x320); backbone deltas +0.244M and +0.307M."""
    got = {}
    for name, size in [("mbv2_retinanet", (800, 1088)), ("fna_retinanet", (800, 1088)),
                       ("mbv2_ssdlite", (320, 320)), ("fna_ssdlite", (320, 320))]:
        m = _detector(name, init=False)
        got[name] = (count_params(m), count_madds(m, size, mode="tensor"), count_params(m.backbone))
    assert round(got["mbv2_retinanet"][0] / 1e6, 2) == 11.49 and round(got["fna_retinanet"][0] / 1e6, 2) == 11.73
    assert round(got["mbv2_retinanet"][1] / 1e9, 2) == 133.05 and round(got["fna_retinanet"][1] / 1e9, 2) == 133.03
    assert round(got["mbv2_ssdlite"][0] / 1e6, 1) == 4.3 and round(got["fna_ssdlite"][0] / 1e6, 1) == 4.6
    assert round(got["mbv2_ssdlite"][1] / 1e9, 1) == 0.8 and round(got["fna_ssdlite"][1] / 1e9, 1) == 0.9
    assert round((got["fna_retinanet"][2] - got["mbv2_retinanet"][2]) / 1e6, 3) == 0.244
    assert round((got["fna_ssdlite"][2] - got["mbv2_ssdlite"][2]) / 1e6, 3) == 0.307


def test_ssdlite_head_is_fnas_light_head() -> None:
    head = _detector("fna_ssdlite", num_classes=3).bbox_head
    assert tuple(head.in_channels) == (576, 1280, 512, 256, 256, 128)
    for branch in (*head.cls_convs, *head.reg_convs):
        dw, pred, bn = branch[0], branch[1], branch[2]
        assert dw.conv.groups == dw.conv.in_channels and dw.conv.kernel_size == (3, 3)
        assert isinstance(pred, torch.nn.Conv2d) and pred.bias is None and pred.kernel_size == (1, 1)
        assert isinstance(bn, torch.nn.BatchNorm2d) and bn.eps == 1e-3 and bn.num_features == pred.out_channels


def _one_box_sample(h: int, w: int, box: list[float]) -> dict:  # type: ignore[type-arg]
    from mmdet.structures import DetDataSample

    s = DetDataSample(metainfo={"img_shape": (h, w), "ori_shape": (h, w), "pad_shape": (h, w),
                                "scale_factor": (1.0, 1.0), "batch_input_shape": (h, w)})
    s.gt_instances = InstanceData(bboxes=torch.tensor([box]), labels=torch.tensor([1]))
    return s


@pytest.mark.parametrize("name,size,per_level", [
    ("fna_retinanet", (128, 192), [9, 9, 9, 9, 9]),
    ("fna_ssdlite", (320, 320), [4, 6, 6, 6, 4, 4]),
])
def test_forward_backward_anchors_and_a_matched_box(name: str, size: tuple[int, int], per_level: list[int]) -> None:
    torch.manual_seed(0)
    model = _detector(name, num_classes=3)
    head = model.bbox_head
    assert head.prior_generator.num_base_priors == per_level
    h, w = size
    x = torch.randn(2, 3, h, w)
    feats = model.extract_feat(x)
    sizes = [tuple(f.shape[-2:]) for f in feats]
    if "ssdlite" in name:
        assert sizes == [(20, 20), (10, 10), (5, 5), (3, 3), (2, 2), (1, 1)]
    else:
        assert sizes == [(h // s, w // s) for s in (8, 16, 32)] + [(2, 3), (1, 2)]
    priors = head.prior_generator.grid_priors(sizes, device="cpu")
    assert [len(p) for p in priors] == [a * b * n for (a, b), n in zip(sizes, per_level)]

    box = [40.0, 30.0, 100.0, 90.0]
    assigned = head.assigner.assign(InstanceData(priors=torch.cat(priors)),
                                    InstanceData(bboxes=torch.tensor([box]), labels=torch.tensor([1])))
    assert int((assigned.gt_inds > 0).sum()) >= 1
    samples = [_one_box_sample(h, w, box) for _ in range(2)]
    losses = model.loss(x, samples)
    total = sum(v.sum() if isinstance(v, torch.Tensor) else sum(t.sum() for t in v) for v in losses.values())
    total.backward()
    bbox = losses["loss_bbox"]
    assert float(bbox if isinstance(bbox, torch.Tensor) else sum(bbox)) > 0  # positives exist, so boxes regress
    grads = [p.grad for p in model.backbone.parameters() if p.requires_grad]
    assert all(g is not None for g in grads) and any(float(g.abs().sum()) > 0 for g in grads)


def test_generated_coco_set_is_read_back_by_mmdet(tmp_path: Path) -> None:
    root = generate_coco(tmp_path / "coco", 6, 2, (96, 128), seed=3, max_objects=3)
    ann = json.loads(ann_path(root, "train").read_text())
    ds = det.coco(root, "train", [dict(type="LoadImageFromFile"), dict(type="LoadAnnotations", with_bbox=True),
                                  dict(type="PackDetInputs")])
    assert len(ds) == 6 and ds.metainfo["classes"] == ("person", "car", "stop sign")
    sample = ds[0]
    img_id = sample["data_samples"].img_id
    want = [a for a in ann["annotations"] if a["image_id"] == img_id]
    boxes = sample["data_samples"].gt_instances.bboxes.tensor
    expect = torch.tensor([[x, y, x + bw, y + bh] for x, y, bw, bh in (a["bbox"] for a in want)])
    assert torch.allclose(boxes, expect)
    labels = sample["data_samples"].gt_instances.labels.tolist()
    assert labels == [{1: 0, 3: 1, 13: 2}[a["category_id"]] for a in want]
    assert sample["inputs"].shape == (3, 96, 128)


def test_search_split_is_fnas_image_split(tmp_path: Path) -> None:
    root = generate_coco(tmp_path / "coco", 10, 2, (64, 64), seed=0)
    pipe = [dict(type="LoadImageFromFile"), dict(type="LoadAnnotations", with_bbox=True), dict(type="PackDetInputs")]
    a, b = det.coco(root, "train", pipe), det.coco(root, "train", pipe)
    idx1, idx2 = det.search_subsets(a, b, root, "train", 0.5, 520)
    ids = [im["id"] for im in json.loads(ann_path(root, "train").read_text())["images"]]
    part1, part2 = split_image_ids(ids, 0.5, 520)
    assert sorted(a.get_data_info(i)["img_id"] for i in idx1) == sorted(part1)
    assert sorted(b.get_data_info(i)["img_id"] for i in idx2) == sorted(part2)
    assert not set(part1) & set(part2) and sorted(part1 + part2) == sorted(ids)


def _predictions(root: Path, shift: float) -> tuple[object, list]:  # type: ignore[type-arg]
    ann = json.loads(ann_path(root, "val").read_text())
    cat_to_label = {c["id"]: i for i, c in enumerate(ann["categories"])}
    metric = det.coco_metric(root, "val")
    metric.dataset_meta = {"classes": tuple(c["name"] for c in ann["categories"])}
    samples = []
    for im in ann["images"]:
        anns = [a for a in ann["annotations"] if a["image_id"] == im["id"]]
        boxes = torch.tensor([[x + shift * bw, y, x + bw + shift * bw, y + bh] for x, y, bw, bh in
                              (a["bbox"] for a in anns)])
        samples.append({"img_id": im["id"], "ori_shape": (im["height"], im["width"]),
                        "pred_instances": {"bboxes": boxes, "scores": torch.ones(len(anns)),
                                           "labels": torch.tensor([cat_to_label[a["category_id"]] for a in anns])}})
    return metric, samples


def test_coco_map_is_one_for_perfect_boxes_and_lower_for_shifted(tmp_path: Path) -> None:
    root = generate_coco(tmp_path / "coco", 2, 6, (96, 128), seed=1)

    def mAP(shift: float) -> float:
        metric, samples = _predictions(root, shift)
        metric.process({}, samples)
        return metric.compute_metrics(metric.results)["bbox_mAP"]

    assert mAP(0.0) == 1.0
    shifted = mAP(0.3)  # IoU of a box shifted by 30% of its width: 0.7/1.3 = 0.54
    assert 0.0 < shifted < 1.0
    assert mAP(0.6) < shifted


def test_a_detector_that_finds_nothing_scores_zero_with_a_warning(tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """An early or weak detector finds no box above its threshold on the whole val set: mmdet then returns no
    numbers at all; ours is 0 on every metric and says why (not ``KeyError: 'bbox_mAP'``)."""
    root = generate_coco(tmp_path / "coco", 2, 3, (96, 128), seed=1)
    ds = det.coco(root, "val", [dict(type="LoadImageFromFile"), dict(type="PackDetInputs")])

    def nothing_found(model, dataset, metric, n):  # type: ignore[no-untyped-def]
        for i in range(n):
            info = dataset.get_data_info(i)
            metric.process({}, [{"img_id": info["img_id"], "ori_shape": (info["height"], info["width"]),
                                 "pred_instances": {"bboxes": torch.zeros(0, 4), "scores": torch.zeros(0),
                                                    "labels": torch.zeros(0, dtype=torch.long)}}])

    monkeypatch.setattr(det, "feed_metric", nothing_found)
    with pytest.warns(UserWarning, match="found no box above its score threshold on 3 val images"):
        metrics = det.evaluate(None, ds, root, "val")  # type: ignore[arg-type]
    assert metrics == {f"bbox_{k}": 0.0 for k in det.METRIC_NAMES} and "bbox_mAP" in metrics


def test_plain_mmdet_and_mmseg_configs_build_and_load_a_run_backbone(tmp_path: Path) -> None:
    from mmengine.config import Config

    from fnatune.mm.backbones import FNABackbone
    from fnatune.mm.seg import build_model as build_seg

    arch = Arch.load(ARCHS_DIR / "fna_retinanet.json")
    torch.manual_seed(5)
    trained = FNABackbone(arch.to_dict()).net
    ckpt = tmp_path / "backbone.pt"
    torch.save(trained.state_dict(), ckpt)
    full = tmp_path / "model.pt"  # a whole detector's state dict: keys under backbone.net.
    torch.save({f"backbone.net.{k}": v for k, v in trained.state_dict().items()}, full)

    cfg = Config.fromfile(ROOT / "pipelines/mm/retinanet_fna_coco.py")
    assert cfg.custom_imports["imports"] == ["fnatune.mm.det"]
    for path in (ckpt, full):
        cfg.model.backbone.init_cfg = dict(type="Pretrained", checkpoint=str(path))
        model = det.build_model(cfg.model.to_dict())
        got, want = model.backbone.net.state_dict(), trained.state_dict()
        assert all(torch.equal(got[k], want[k]) for k in want)
    model.eval()
    with torch.no_grad():
        outs = model(torch.randn(1, 3, 128, 128), mode="tensor")
    assert len(outs[0]) == 5 and outs[0][0].shape[1] == 9 * 80

    seg_cfg = Config.fromfile(ROOT / "pipelines/mm/deeplabv3_fna_cityscapes.py")
    seg = build_seg(seg_cfg.model.to_dict())
    assert type(seg.backbone).__name__ == "FNABackbone" and type(seg.decode_head).__name__ == "FNAASPPHead"

    wrong = tmp_path / "wrong.pt"
    torch.save({"foo": torch.zeros(1)}, wrong)
    cfg.model.backbone.init_cfg = dict(type="Pretrained", checkpoint=str(wrong))
    with pytest.raises(Exception, match="does not hold this backbone's weights"):
        det.build_model(cfg.model.to_dict())


def test_resnet50_retinanet_counts_exactly_as_mmdets_own_model() -> None:
    """The ResNet-50 seed's own layout inside our RetinaNet has mmdet's retinanet_r50_fpn_1x_coco parameter count
    exactly and its MAdds within 0.1% (convs and linears at 800x1088, the same counter); `fnatune cost` prints them."""
    import mmdet
    from mmengine.config import Config

    from fnatune.seeds import load_seed
    from fnatune.whole_network import whole_network

    path = Path(mmdet.__file__).parent / ".mim/configs/retinanet/retinanet_r50_fpn_1x_coco.py"
    if not path.exists():
        pytest.skip("this mmdet install carries no configs")
    cfg = Config.fromfile(path)
    cfg.model.backbone.init_cfg = None  # no download: counting needs no weights
    theirs = det.build_model(cfg.model.to_dict(), init=False)
    ours, kwargs = whole_network("det", load_seed("resnet50").arch)
    assert count_params(ours) == count_params(theirs) == 37_968_692
    m_ours, m_theirs = count_madds(ours, (800, 1088), **kwargs), count_madds(theirs, (800, 1088), mode="tensor")
    assert abs(m_ours - m_theirs) / m_theirs < 1e-3, (m_ours, m_theirs)  # this install: equal, 202,840,385,528

    res = CliRunner().invoke(main, ["cost", "--arch", "resnet50", "--task", "det", "--detector", "retinanet",
                                    "--input", "800x1088", "--json"])
    assert res.exit_code == 0, res.output
    out = json.loads(res.output)
    assert out["params"] == count_params(theirs) and out["madds"] == m_ours and out["detector"] == "retinanet"
    res = CliRunner().invoke(main, ["cost", "--arch", "resnet50", "--task", "det", "--detector", "ssdlite",
                                    "--input", "320"])
    assert res.exit_code == 2 and "ssdlite needs an arch with a 1x1 tail" in res.output


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_tiny_pipeline_runs_on_the_mm_backend(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """tiny det through mmdet at smoke size: every stage runs, the metric is logged, the config says mm."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("FNATUNE_CACHE", str(tmp_path / "cache"))
    from fnatune.tasks import get_task

    smoke = [f"{k}={json.dumps(v)}" for k, v in get_task("det").smoke.items()]
    sets = [a for s in [*smoke, "pretrain.iters=20", "pretrain.per_class_train=8", "pretrain.per_class_val=2",
                        "search.epochs=2", "search.warmup_epochs=1", "finetune.iters=6", "export.input=[64, 96]",
                        "tracking.enabled=false"] for a in ("--set", s)]
    res = CliRunner().invoke(main, ["run", str(ROOT / "pipelines/mm/tiny_det.yaml"), "--run-dir", "run", *sets])
    assert res.exit_code == 0, res.output
    assert "backend: mm" in (tmp_path / "run/config.yaml").read_text()
    metrics = json.loads((tmp_path / "run/stages/evaluate/done.json").read_text())["metrics"]
    assert set(metrics) >= {f"bbox_{k}" for k in det.METRIC_NAMES}
