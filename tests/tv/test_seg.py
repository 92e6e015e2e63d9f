"""Segmentation on the torchvision backend (no OpenMMLab): Cityscapes-layout data read as mmseg reads it, the loss
over labelled pixels only with the batch padded to the crop, whole and sliding-window inference, and the confusion
matrix's mIoU on hand-made cases (`tests/mm/test_backends_agree.py` compares it with mmseg's IoUMetric)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from fnatune.data.synthetic import generate_cityscapes
from fnatune.space import get_space
from fnatune.tv import seg
from fnatune.tv.metrics import ConfusionMatrix

MEAN, STD = (123.675, 116.28, 103.53), (58.395, 57.12, 57.375)


def _model(crop: tuple[int, int] = (64, 64), **kw: object) -> torch.nn.Module:
    arch = get_space("mbv2_seg").first_arch()
    torch.manual_seed(0)
    return seg.build_model(seg.model_config(dict(type="FNABackbone", arch=arch.to_dict()), 0, 5, MEAN, STD, crop, **kw))


def test_generated_set_is_read_in_mmsegs_order_with_its_labels(tmp_path: Path) -> None:
    root = generate_cityscapes(tmp_path / "cs", 4, 2, (64, 128), seed=0)
    ds = seg.cityscapes(root, "train", seg.plain_pipeline())
    paths = sorted((root / "leftImg8bit/train").rglob("*_leftImg8bit.png"))
    assert [Path(ds[i]["path"]) for i in range(len(ds))] == paths
    item = ds[1]
    label_file = str(paths[1]).replace("leftImg8bit", "gtFine").replace("gtFine.png", "gtFine_labelTrainIds.png")
    assert torch.equal(item["label"], torch.from_numpy(np.array(Image.open(label_file))).long())
    assert torch.equal(item["img"], torch.from_numpy(np.array(Image.open(paths[1]).convert("RGB"))).permute(2, 0, 1))


def test_loss_counts_labelled_pixels_only_and_pads_to_the_crop() -> None:
    model = _model().train()
    g = torch.Generator().manual_seed(1)
    imgs = [torch.randint(0, 256, (3, 64, 64), generator=g, dtype=torch.uint8),
            torch.randint(0, 256, (3, 40, 48), generator=g, dtype=torch.uint8)]
    labels = [torch.randint(0, 5, (64, 64), generator=g), torch.randint(0, 5, (40, 48), generator=g)]
    labels[0][:10] = 255
    torch.manual_seed(2)
    loss = model.loss({"img": imgs, "label": labels})
    x = torch.zeros(2, 3, 64, 64)
    for k, img in enumerate(imgs):
        x[k, :, : img.shape[1], : img.shape[2]] = (img.float() - torch.tensor(MEAN).view(3, 1, 1)) / torch.tensor(STD).view(3, 1, 1)
    want = torch.full((2, 64, 64), 255)
    want[0], want[1, :40, :48] = labels[0], labels[1]
    torch.manual_seed(2)  # the same dropout mask
    logits = model(x)
    ref = F.cross_entropy(logits, want, ignore_index=255, reduction="sum") / (want != 255).sum()
    assert loss.item() == pytest.approx(ref.item(), rel=1e-5)


def test_slide_inference_covers_the_image_and_equals_whole_with_one_window() -> None:
    img = torch.randint(0, 256, (3, 64, 96), dtype=torch.uint8)
    whole = _model().eval().logits(img)
    one = _model(test_mode="slide", test_crop=(64, 96), test_stride=(64, 96)).eval().logits(img)
    assert torch.equal(whole, one) and whole.shape == (1, 5, 64, 96)
    many = _model(test_mode="slide", test_crop=(32, 48), test_stride=(16, 32)).eval().logits(img)
    assert many.shape == (1, 5, 64, 96) and torch.isfinite(many).all()


def test_confusion_matrix_miou_on_hand_made_cases() -> None:
    cm = ConfusionMatrix(3)
    label = torch.tensor([[0, 0, 1, 1], [2, 2, 255, 255]])
    cm.update(label.clamp(max=2), label)
    assert cm.metrics() == {"aAcc": 100.0, "mIoU": 100.0, "mAcc": 100.0}
    cm = ConfusionMatrix(3)
    cm.update(torch.tensor([[0, 1, 1, 1]]), torch.tensor([[0, 0, 1, 255]]))
    # class 0: TP 1, FN 1 -> IoU 1/2; class 1: TP 1, FP 1 -> 1/2; class 2 never seen -> left out
    assert cm.metrics() == {"aAcc": pytest.approx(66.67), "mIoU": 50.0, "mAcc": 75.0}
    assert cm.per_class_iou()[:2] == [50.0, 50.0] and np.isnan(cm.per_class_iou()[2])
