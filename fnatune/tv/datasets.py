"""The torchvision backend's datasets: a COCO-layout detection set and a Cityscapes-layout segmentation set, read
the way mmdet's ``CocoDataset`` and mmseg's ``CityscapesDataset`` read them (same image order, same box rules, same
label files), so FNA's search split picks the same images on either backend.

Items are dicts of tv_tensors (``img``: uint8 RGB; ``boxes``/``labels`` or ``label``) plus the metadata the
evaluation needs (``image_id``, ``ori_shape``, ``img_shape``, ``scale_factor``). Normalisation and padding happen
in the model, on its device, as OpenMMLab's data preprocessors do.
"""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset
from torchvision import tv_tensors
from torchvision.io import ImageReadMode, decode_image

from fnatune.data.coco import ann_path, img_dir, read_annotations
from fnatune.tv.transforms import Seeded, scale_factor


def read_rgb(path: Path) -> torch.Tensor:
    """A uint8 3xHxW RGB image (grey and RGBA files converted)."""
    return decode_image(str(path), mode=ImageReadMode.RGB)


def coco_boxes(anns: Sequence[dict[str, Any]], width: int, height: int, label_of: dict[Any, int]
               ) -> tuple[list[list[float]], list[int]]:
    """mmdet's box rules: [x, y, w, h] -> xyxy; skipped when it has no overlap with the image, a width or height
    below 1, a non-positive area, or ``iscrowd`` (mmdet keeps crowd boxes only to ignore them)."""
    boxes, labels = [], []
    for a in anns:
        x, y, w, h = a["bbox"]
        inter_w = max(0.0, min(x + w, width) - max(x, 0.0))
        inter_h = max(0.0, min(y + h, height) - max(y, 0.0))
        if inter_w * inter_h == 0 or w < 1 or h < 1 or a.get("area", w * h) <= 0 or a.get("iscrowd", 0):
            continue
        boxes.append([float(x), float(y), float(x + w), float(y + h)])
        labels.append(label_of[a["category_id"]])
    return boxes, labels


class CocoDetection(Dataset):
    """``<root>/<split>2017`` with ``annotations/instances_<split>2017.json``; labels are the categories' positions
    in the file. Training sets (``test_mode=False``) drop images without a usable box (mmdet's ``filter_empty_gt``)."""

    def __init__(self, root: str | Path, split: str, transform: Any, test_mode: bool = False) -> None:
        data = read_annotations(root, split)
        self.root, self.split, self.test_mode = Path(root), split, test_mode
        self.classes = tuple(c["name"] for c in data["categories"])
        self.cat_ids = [c["id"] for c in data["categories"]]
        label_of = {cid: i for i, cid in enumerate(self.cat_ids)}
        by_image: dict[Any, list[dict[str, Any]]] = {}
        for a in data["annotations"]:
            by_image.setdefault(a["image_id"], []).append(a)
        self.items: list[dict[str, Any]] = []
        for im in data["images"]:
            boxes, labels = coco_boxes(by_image.get(im["id"], []), im["width"], im["height"], label_of)
            if not test_mode and not boxes:
                continue
            self.items.append({"image_id": im["id"], "file": img_dir(root, split) / im["file_name"],
                               "boxes": boxes, "labels": labels})
        self.image_ids = [it["image_id"] for it in self.items]
        self.ann_file = ann_path(root, split)
        self.transform = Seeded(transform)

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> dict[str, Any]:
        it = self.items[i]
        img = tv_tensors.Image(read_rgb(it["file"]))
        h, w = img.shape[-2:]
        boxes = tv_tensors.BoundingBoxes(torch.tensor(it["boxes"], dtype=torch.float32).reshape(-1, 4),
                                         format="XYXY", canvas_size=(h, w))
        out = self.transform({"img": img, "boxes": boxes, "labels": torch.tensor(it["labels"], dtype=torch.int64)})
        new_hw = tuple(out["img"].shape[-2:])
        return {"img": out["img"].as_subclass(torch.Tensor), "boxes": out["boxes"].as_subclass(torch.Tensor),
                "labels": out["labels"], "image_id": it["image_id"], "ori_shape": (h, w), "img_shape": new_hw,
                "scale_factor": scale_factor((h, w), new_hw)}


class CityscapesSegmentation(Dataset):
    """``leftImg8bit/<split>/<city>/*_leftImg8bit.png`` with ``gtFine/<split>/<city>/*_gtFine_labelTrainIds.png``,
    sorted by path as mmseg sorts them."""

    IMG_SUFFIX, SEG_SUFFIX = "_leftImg8bit.png", "_gtFine_labelTrainIds.png"

    def __init__(self, root: str | Path, split: str, transform: Any | None = None) -> None:
        self.root = Path(root)
        imgs = sorted((self.root / "leftImg8bit" / split).rglob(f"*{self.IMG_SUFFIX}"))
        seg_dir = self.root / "gtFine" / split
        self.items = [(p, seg_dir / p.relative_to(self.root / "leftImg8bit" / split).parent
                       / p.name.replace(self.IMG_SUFFIX, self.SEG_SUFFIX)) for p in imgs]
        self.transform = Seeded(transform) if transform is not None else None

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> dict[str, Any]:
        img_path, seg_path = self.items[i]
        img = tv_tensors.Image(read_rgb(img_path))
        label = tv_tensors.Mask(decode_image(str(seg_path), mode=ImageReadMode.GRAY)[0])
        if self.transform is not None:
            out = self.transform({"img": img, "label": label})
            img, label = out["img"], out["label"]
        return {"img": img.as_subclass(torch.Tensor), "label": label.as_subclass(torch.Tensor).long(),
                "path": str(img_path)}
