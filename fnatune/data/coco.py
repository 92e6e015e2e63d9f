"""COCO-format detection data: a generator, a layout check and FNA's split by image.

* :func:`generate_coco` writes a small detection set in COCO's on-disk format
  (``<root>/<split>2017/*.jpg`` and ``<root>/annotations/instances_<split>2017.json``) from the same
  family of scenes as the segmentation generator: sky / building / road bands with people (discs),
  cars (squares) and stop signs (rings) on top, boxes tight around each object's pixels. mmdet's
  ``CocoDataset`` and pycocotools read it unchanged.
* :func:`check_coco` checks a split exists and its annotation file is sound, naming what is missing.
* :func:`split_image_ids` is FNA's search split (FNA_SPEC §5.5): ``random.Random(seed)`` shuffles the
  annotation file's image list and cuts it, *before* any empty-image filtering.
"""
from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from fnatune.data.split import split_indices
from fnatune.data.synthetic import BUILDING, COLOURS, ROAD, SKY, check_marker, shape_mask, texture
from fnatune.errors import FnatuneError
from fnatune.io import atomic_write_json

# (COCO category id, name, shape, RGB base colour): real COCO ids and names
CATEGORIES = ((1, "person", "disc", (220, 20, 60)), (3, "car", "square", (0, 0, 142)),
              (13, "stop sign", "ring", (250, 170, 30)))
TINY_HINT = "pipelines/tiny/det.yaml"


def ann_path(root: str | Path, split: str) -> Path:
    return Path(root) / "annotations" / f"instances_{split}2017.json"


def img_dir(root: str | Path, split: str) -> Path:
    return Path(root) / f"{split}2017"


def _box_iou(a: Sequence[float], b: Sequence[float]) -> float:
    ax0, ay0, aw, ah = a
    bx0, by0, bw, bh = b
    iw = max(0.0, min(ax0 + aw, bx0 + bw) - max(ax0, bx0))
    ih = max(0.0, min(ay0 + ah, by0 + bh) - max(ay0, by0))
    inter = iw * ih
    return inter / (aw * ah + bw * bh - inter + 1e-9)


def draw_det_scene(rng: np.random.Generator, h: int, w: int, max_objects: int = 4
                   ) -> tuple[np.ndarray, list[tuple[int, list[float], int]]]:
    """A street-like scene with 1..max_objects objects that overlap little (box IoU <= 0.3).

    Returns (RGB uint8, [(category id, [x, y, w, h], area in pixels)])."""
    label = np.empty((h, w), np.uint8)
    horizon, ground = int(h * rng.uniform(0.3, 0.45)), int(h * rng.uniform(0.6, 0.75))
    label[:horizon], label[horizon:ground], label[ground:] = SKY, BUILDING, ROAD
    img = np.zeros((h, w, 3), np.float32)
    for cls in (SKY, BUILDING, ROAD):
        tex = texture(rng, h, w, COLOURS[cls], cls)
        img[label == cls] = tex[label == cls]
    objects: list[tuple[int, list[float], int]] = []
    for _ in range(int(rng.integers(1, max_objects + 1)) * 4):  # tries; most scenes reach their count
        if len(objects) >= max_objects:
            break
        cat_id, _name, shape, colour = CATEGORIES[int(rng.integers(len(CATEGORIES)))]
        r = float(rng.uniform(0.08, 0.2) * min(h, w))
        cy, cx = float(rng.uniform(r, h - r)), float(rng.uniform(r, w - r))
        mask = shape_mask(rng, h, w, shape, cy, cx, r)
        ys, xs = np.nonzero(mask)
        if len(ys) < 16:
            continue
        box = [float(xs.min()), float(ys.min()), float(xs.max() - xs.min() + 1), float(ys.max() - ys.min() + 1)]
        if any(_box_iou(box, b) > 0.3 for _, b, _ in objects):
            continue
        tex = texture(rng, h, w, colour, cat_id)
        img[mask] = tex[mask]
        objects.append((cat_id, box, int(mask.sum())))
    return img.astype(np.uint8), objects


def generate_coco(root: str | Path, num_train: int = 32, num_val: int = 8, size: Sequence[int] = (128, 192),
                  seed: int = 0, max_objects: int = 4) -> Path:
    """Write (or find already written) a synthetic COCO-format detection set under ``root``.

    Deterministic by ``seed``; a ``fnatune_synthetic.json`` marker makes asking again free and asking
    for another set in the same folder an error."""
    root = Path(root)
    params = {"kind": "coco", "num_train": num_train, "num_val": num_val, "size": list(size), "seed": seed,
              "max_objects": max_objects, "version": 1}
    if check_marker(root, params):
        return root
    rng = np.random.default_rng(seed)
    h, w = int(size[0]), int(size[1])
    ann_id = 1
    for split, n in (("train", num_train), ("val", num_val)):
        images, annotations = [], []
        out = img_dir(root, split)
        out.mkdir(parents=True, exist_ok=True)
        for i in range(n):
            img_id = (0 if split == "train" else 100_000) + i + 1
            img, objects = draw_det_scene(rng, h, w, max_objects)
            name = f"{img_id:012d}.jpg"
            Image.fromarray(img).save(out / name, quality=95)
            images.append({"id": img_id, "file_name": name, "width": w, "height": h})
            for cat_id, box, area in objects:
                x, y, bw, bh = box
                annotations.append({"id": ann_id, "image_id": img_id, "category_id": cat_id, "bbox": box,
                                    "area": float(area), "iscrowd": 0,
                                    "segmentation": [[x, y, x + bw, y, x + bw, y + bh, x, y + bh]]})
                ann_id += 1
        atomic_write_json(ann_path(root, split), {
            "info": {"description": "fnatune synthetic COCO-format detection set", "version": "1"},
            "images": images, "annotations": annotations,
            "categories": [{"id": c, "name": name, "supercategory": "object"} for c, name, _, _ in CATEGORIES]})
    atomic_write_json(root / "fnatune_synthetic.json", params)
    return root


def _layout(root: Path, split: str) -> str:
    return (f"expected the COCO layout:\n  {img_dir(root, split)}/<image files>\n  {ann_path(root, split)}\n"
            f"No dataset at hand? Try `fnatune run {TINY_HINT}` (generated data).")


def read_annotations(root: str | Path, split: str) -> dict[str, Any]:
    path = ann_path(root, split)
    if not path.is_file() or not img_dir(root, split).is_dir():
        raise FnatuneError(f"dataset not found at {root}: {_layout(Path(root), split)}")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise FnatuneError(f"{path}: not valid JSON ({e})") from None
    for key in ("images", "annotations", "categories"):
        if not isinstance(data.get(key), list):
            raise FnatuneError(f"{path}: the COCO key '{key}' is missing or not a list")
    return data


def check_coco(root: str | Path, split: str, num_classes: int | None = None, check_files: bool = True) -> dict[str, Any]:
    """Check a COCO-format split: files, categories, and every box inside its image.

    Returns ``{"images": n, "annotations": n, "classes": (names...)}``."""
    root = Path(root)
    data = read_annotations(root, split)
    path = ann_path(root, split)
    classes = tuple(c["name"] for c in data["categories"])
    if num_classes is not None and len(classes) != num_classes:
        raise FnatuneError(f"{path} has {len(classes)} categories {list(classes)[:10]}, but data.num_classes is "
                           f"{num_classes}; set data.num_classes to {len(classes)}")
    images = {im["id"]: im for im in data["images"]}
    cat_ids = {c["id"] for c in data["categories"]}
    for a in data["annotations"]:
        im = images.get(a.get("image_id"))
        if im is None:
            raise FnatuneError(f"{path}: annotation {a.get('id')} names image_id {a.get('image_id')}, not in 'images'")
        if a.get("category_id") not in cat_ids:
            raise FnatuneError(f"{path}: annotation {a.get('id')} has category_id {a.get('category_id')}, "
                               f"not in 'categories'")
        x, y, bw, bh = a["bbox"]
        if bw <= 0 or bh <= 0 or x < -1 or y < -1 or x + bw > im["width"] + 1 or y + bh > im["height"] + 1:
            raise FnatuneError(f"{path}: annotation {a.get('id')} has bbox {a['bbox']} outside its "
                               f"{im['width']}x{im['height']} image {im['file_name']}")
    if check_files:
        for im in data["images"]:
            if not (img_dir(root, split) / im["file_name"]).is_file():
                raise FnatuneError(f"image missing: {img_dir(root, split) / im['file_name']} (listed in {path})")
    return {"images": len(images), "annotations": len(data["annotations"]), "classes": classes}


def split_image_ids(image_ids: Sequence[int], fraction: float = 0.5, seed: int = 520) -> tuple[list[int], list[int]]:
    """FNA's split of the annotation file's image list (:func:`~fnatune.data.split.split_indices` over the
    list's positions), done before any filtering of images without boxes. Returns image ids."""
    ids = list(image_ids)
    part1, part2 = split_indices(len(ids), fraction, seed)
    return [ids[i] for i in part1], [ids[i] for i in part2]
