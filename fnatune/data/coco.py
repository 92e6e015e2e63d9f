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
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from fnatune.data.split import split_indices
from fnatune.data.synthetic import check_marker, shape_mask, street_background, texture
from fnatune.errors import FnatuneError
from fnatune.io import atomic_write_json

# (COCO category id, name, shape, RGB base colour): real COCO ids and names
CATEGORIES = ((1, "person", "disc", (220, 20, 60)), (3, "car", "square", (0, 0, 142)),
              (13, "stop sign", "ring", (250, 170, 30)))
TINY_HINT = "pipelines/tiny/det.yaml"


def ann_path(root: str | Path, split: str, kind: str = "instances") -> Path:
    """``annotations/<kind>_<split>2017.json``: ``instances`` (boxes) or ``person_keypoints``."""
    return Path(root) / "annotations" / f"{kind}_{split}2017.json"


def img_dir(root: str | Path, split: str) -> Path:
    return Path(root) / f"{split}2017"


def check_image_files(root: str | Path, split: str, data: dict[str, Any], path: Path) -> None:
    """Every image the annotation file ``path`` lists exists under ``<root>/<split>2017``, is a complete image
    file and has the width and height the file gives it (checked in parallel, cached: :mod:`fnatune.data.scan`)."""
    from fnatune.data.scan import Scan, check_sizes

    files = [img_dir(root, split) / im["file_name"] for im in data["images"]]
    for f in files:
        if not f.is_file():
            raise FnatuneError(f"image missing: {f} (listed in {path})")
    check_sizes(files, [(im.get("width"), im.get("height")) for im in data["images"]], f"{path.name}",
                Scan(root, f"coco-{split}"))


def image_table(path: Path, data: dict[str, Any]) -> dict[Any, dict[str, Any]]:
    """The annotation file's images by id, each checked to have COCO's keys."""
    out = {}
    for im in data["images"]:
        if not isinstance(im, dict) or not all(k in im for k in ("id", "file_name", "width", "height")):
            raise FnatuneError(f"{path}: image entry {str(im)[:80]} lacks one of 'id', 'file_name', 'width', "
                               f"'height'")
        out[im["id"]] = im
    return out


def check_box(path: Path, ann: dict[str, Any], im: dict[str, Any]) -> bool:
    """Whether an annotation's ``bbox`` is usable: a list of 4 numbers inside its image (an error otherwise),
    with a width and height above 0 (False when not: such a box is skipped, as COCO's tools and mmdet do)."""
    box = ann.get("bbox")
    if not isinstance(box, list) or len(box) != 4 or not all(isinstance(v, (int, float)) for v in box):
        raise FnatuneError(f"{path}: annotation {ann.get('id')} has bbox {box!r}; expected [x, y, width, height]")
    x, y, bw, bh = box
    if bw <= 0 or bh <= 0:
        return False
    if x < -1 or y < -1 or x + bw > im["width"] + 1 or y + bh > im["height"] + 1:
        raise FnatuneError(f"{path}: annotation {ann.get('id')} has bbox {box} outside its "
                           f"{im['width']}x{im['height']} image {im['file_name']}")
    return True


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
    img = street_background(rng, h, w)
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

    def draw(rng: np.random.Generator, h: int, w: int) -> tuple[np.ndarray, list[dict[str, Any]]]:
        img, objects = draw_det_scene(rng, h, w, max_objects)
        return img, [{"category_id": c, "bbox": box, "area": float(area), "iscrowd": 0} for c, box, area in objects]

    categories = [{"id": c, "name": name, "supercategory": "object"} for c, name, _, _ in CATEGORIES]
    return write_coco_set(root, params, draw, categories, "fnatune synthetic COCO-format detection set")


def write_coco_set(root: Path, params: dict[str, Any], draw: Any, categories: list[dict[str, Any]],
                   description: str, kind: str = "instances") -> Path:
    """Write a generated set in COCO's layout: for each split (``num_train`` / ``num_val`` images of
    ``size`` from ``params``), ``draw(rng, h, w)`` gives an image and its annotations (category, box, ...),
    which get ids, their image's id and a box polygon; then the ``params`` marker. One RNG (``params["seed"]``)
    runs through both splits, so a set is deterministic by seed."""
    rng = np.random.default_rng(params["seed"])
    h, w = int(params["size"][0]), int(params["size"][1])
    ann_id = 1
    for split, n in (("train", params["num_train"]), ("val", params["num_val"])):
        images, annotations = [], []
        out = img_dir(root, split)
        out.mkdir(parents=True, exist_ok=True)
        for i in range(n):
            img_id = (0 if split == "train" else 100_000) + i + 1
            img, anns = draw(rng, h, w)
            name = f"{img_id:012d}.jpg"
            Image.fromarray(img).save(out / name, quality=95)
            images.append({"id": img_id, "file_name": name, "width": w, "height": h})
            for a in anns:
                x, y, bw, bh = a["bbox"]
                annotations.append({"id": ann_id, "image_id": img_id, **a,
                                    "segmentation": [[x, y, x + bw, y, x + bw, y + bh, x, y + bh]]})
                ann_id += 1
        atomic_write_json(ann_path(root, split, kind), {"info": {"description": description, "version": "1"},
                                                        "images": images, "annotations": annotations,
                                                        "categories": categories})
    atomic_write_json(root / "fnatune_synthetic.json", params)
    return root


def _layout(root: Path, split: str, kind: str, hint: str) -> str:
    return (f"expected the COCO layout:\n  {img_dir(root, split)}/<image files>\n  {ann_path(root, split, kind)}\n"
            f"No dataset at hand? Try `fnatune run {hint}` (generated data).")


def read_annotations(root: str | Path, split: str, kind: str = "instances", hint: str = TINY_HINT) -> dict[str, Any]:
    """The annotation file of a COCO-layout split (``kind``: instances or person_keypoints), checked to be a JSON
    object with COCO's lists; a missing dataset names the layout and ``hint``, a pipeline that generates one."""
    path = ann_path(root, split, kind)
    if not path.is_file() or not img_dir(root, split).is_dir():
        raise FnatuneError(f"dataset not found at {root}: {_layout(Path(root), split, kind, hint)}")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise FnatuneError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(data, dict):
        raise FnatuneError(f"{path}: expected a JSON object with 'images', 'annotations' and 'categories', got a "
                           f"JSON {type(data).__name__}")
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
    images = image_table(path, data)
    cat_ids = {c.get("id") for c in data["categories"]}
    empty: list[Any] = []
    for a in data["annotations"]:
        im = images.get(a.get("image_id"))
        if im is None:
            raise FnatuneError(f"{path}: annotation {a.get('id')} names image_id {a.get('image_id')}, not in 'images'")
        if a.get("category_id") not in cat_ids:
            raise FnatuneError(f"{path}: annotation {a.get('id')} has category_id {a.get('category_id')}, "
                               f"not in 'categories'")
        if not check_box(path, a, im):
            empty.append(a.get("id"))
    if empty:
        warnings.warn(f"{path}: {len(empty)} annotation(s) with a zero width or height (e.g. id {empty[0]}) are "
                      f"skipped, as COCO's tools do", stacklevel=2)
    if check_files:
        check_image_files(root, split, data, path)
    return {"images": len(images), "annotations": len(data["annotations"]), "classes": classes,
            "empty_boxes": len(empty)}


def split_image_ids(image_ids: Sequence[int], fraction: float = 0.5, seed: int = 520) -> tuple[list[int], list[int]]:
    """FNA's split of the annotation file's image list (:func:`~fnatune.data.split.split_indices` over the
    list's positions), done before any filtering of images without boxes. Returns image ids."""
    ids = list(image_ids)
    part1, part2 = split_indices(len(ids), fraction, seed)
    return [ids[i] for i in part1], [ids[i] for i in part2]
