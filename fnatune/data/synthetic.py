"""Synthetic datasets in real on-disk formats, so every pipeline runs without downloads.

* :func:`generate_cityscapes` writes a Cityscapes-layout segmentation set
  (``leftImg8bit/<split>/<city>/<name>_leftImg8bit.png`` and
  ``gtFine/<split>/<city>/<name>_gtFine_labelTrainIds.png``) that mmseg's ``CityscapesDataset``
  reads unchanged. Labels are real Cityscapes train ids: textured road / building / sky backgrounds
  with vegetation, cars and people drawn on top (6 of the 19 classes).
* :func:`generate_classification` writes an ImageFolder set (``<split>/<class>/<n>.png``) of the same
  family of shapes, for pretraining a seed where no ImageNet weights can be had.

Both are deterministic by ``seed`` and write a ``fnatune_synthetic.json`` marker, so asking again for
the same set is free and asking for another set into the same folder is an error, not a silent mix.
"""
from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from fnatune.errors import FnatuneError
from fnatune.io import atomic_write_json

# Cityscapes train ids of the classes drawn, with a base colour each (RGB)
ROAD, BUILDING, VEGETATION, SKY, PERSON, CAR = 0, 2, 8, 10, 11, 13
COLOURS = {ROAD: (128, 64, 128), BUILDING: (70, 70, 70), VEGETATION: (107, 142, 35), SKY: (70, 130, 180),
           PERSON: (220, 20, 60), CAR: (0, 0, 142)}
CLASSES_DRAWN = (ROAD, BUILDING, VEGETATION, SKY, PERSON, CAR)
SHAPES = ("disc", "square", "triangle", "ring", "cross", "bar")
MARKER = "fnatune_synthetic.json"


def texture(rng: np.random.Generator, h: int, w: int, colour: Sequence[int], kind: int) -> np.ndarray:
    """A class-specific texture: base colour, a periodic pattern and pixel noise."""
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    period = 4 + kind % 5
    phase = rng.uniform(0, period)
    if kind % 3 == 0:
        pattern = np.sin((xx + phase) * 2 * np.pi / period)
    elif kind % 3 == 1:
        pattern = np.sin((yy + phase) * 2 * np.pi / period)
    else:
        pattern = np.sign(np.sin((xx + phase) * np.pi / period) * np.sin((yy + phase) * np.pi / period))
    base = np.array(colour, np.float32) * rng.uniform(0.85, 1.15)
    img = base[None, None, :] + 18.0 * pattern[..., None] + rng.normal(0, 8, (h, w, 3))
    return np.clip(img, 0, 255)


def street_background(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """A street-like scene, float RGB: sky, buildings and road bands, each textured."""
    label = np.empty((h, w), np.uint8)
    horizon, ground = int(h * rng.uniform(0.3, 0.45)), int(h * rng.uniform(0.6, 0.75))
    label[:horizon], label[horizon:ground], label[ground:] = SKY, BUILDING, ROAD
    img = np.zeros((h, w, 3), np.float32)
    for cls in (SKY, BUILDING, ROAD):
        tex = texture(rng, h, w, COLOURS[cls], cls)
        img[label == cls] = tex[label == cls]
    return img


def shape_mask(rng: np.random.Generator, h: int, w: int, shape: str, cy: float, cx: float, r: float) -> np.ndarray:
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    dy, dx = yy - cy, xx - cx
    if shape == "disc":
        return dx ** 2 + dy ** 2 <= r ** 2
    if shape == "square":
        return (np.abs(dx) <= r) & (np.abs(dy) <= r)
    if shape == "triangle":
        return (dy <= r) & (dy >= -r) & (np.abs(dx) <= (dy + r) / 2)
    if shape == "ring":
        d = dx ** 2 + dy ** 2
        return (d <= r ** 2) & (d >= (0.55 * r) ** 2)
    if shape == "cross":
        t = max(r / 3, 1.0)
        return ((np.abs(dx) <= t) & (np.abs(dy) <= r)) | ((np.abs(dy) <= t) & (np.abs(dx) <= r))
    if shape == "bar":
        return (np.abs(dx) <= r) & (np.abs(dy) <= r / 3)
    raise ValueError(shape)


def draw_scene(rng: np.random.Generator, h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    """One street-like scene: sky / building / road bands, then 2-6 objects. Returns (RGB uint8, train ids)."""
    label = np.empty((h, w), np.uint8)
    horizon = int(h * rng.uniform(0.3, 0.45))
    ground = int(h * rng.uniform(0.6, 0.75))
    label[:horizon] = SKY
    label[horizon:ground] = BUILDING
    label[ground:] = ROAD
    img = np.zeros((h, w, 3), np.float32)
    for cls in (SKY, BUILDING, ROAD):
        tex = texture(rng, h, w, COLOURS[cls], cls)
        img[label == cls] = tex[label == cls]
    objects = [(VEGETATION, "triangle"), (CAR, "square"), (PERSON, "disc")]
    for _ in range(int(rng.integers(2, 7))):
        cls, shape = objects[int(rng.integers(len(objects)))]
        r = float(rng.uniform(0.06, 0.16) * h)
        cy = float(rng.uniform(horizon, h - r)) if cls != VEGETATION else float(rng.uniform(horizon - r, ground))
        cx = float(rng.uniform(r, w - r))
        mask = shape_mask(rng, h, w, shape, cy, cx, r)
        tex = texture(rng, h, w, COLOURS[cls], cls + 1)
        img[mask] = tex[mask]
        label[mask] = cls
    return img.astype(np.uint8), label


def check_marker(root: Path, params: dict[str, Any]) -> bool:
    marker = root / MARKER
    if not marker.exists():
        if root.exists() and any(root.iterdir()):
            raise FnatuneError(f"{root} exists and is not empty, but holds no {MARKER}; refusing to write a "
                               f"synthetic dataset into it (choose an empty or new folder)")
        return False
    have = json.loads(marker.read_text())
    if have != params:
        raise FnatuneError(f"{root} holds another synthetic dataset ({have}); asked for {params}. "
                           f"Delete the folder or choose another one.")
    return True


def generate_cityscapes(root: str | Path, num_train: int = 24, num_val: int = 8, size: Sequence[int] = (128, 256),
                        seed: int = 0, cities: Sequence[str] = ("synthtown", "fakeburg")) -> Path:
    """Write (or find already written) a synthetic Cityscapes-layout set under ``root``."""
    root = Path(root)
    params = {"kind": "cityscapes", "num_train": num_train, "num_val": num_val, "size": list(size), "seed": seed,
              "cities": list(cities), "version": 1}
    if check_marker(root, params):
        return root
    rng = np.random.default_rng(seed)
    h, w = int(size[0]), int(size[1])
    for split, n in (("train", num_train), ("val", num_val)):
        for i in range(n):
            city = cities[i % len(cities)]
            stem = f"{city}_{i // len(cities):06d}_{i:06d}"
            img, label = draw_scene(rng, h, w)
            img_dir = root / "leftImg8bit" / split / city
            gt_dir = root / "gtFine" / split / city
            img_dir.mkdir(parents=True, exist_ok=True)
            gt_dir.mkdir(parents=True, exist_ok=True)
            Image.fromarray(img).save(img_dir / f"{stem}_leftImg8bit.png")
            Image.fromarray(label).save(gt_dir / f"{stem}_gtFine_labelTrainIds.png")
    atomic_write_json(root / MARKER, params)
    return root


def generate_classification(root: str | Path, num_classes: int = 6, per_class_train: int = 40, per_class_val: int = 10,
                            size: int = 64, seed: int = 0) -> Path:
    """Write (or find) an ImageFolder classification set: one shape per class over textured backgrounds."""
    root = Path(root)
    if not 2 <= num_classes <= len(SHAPES) * 2:
        raise FnatuneError(f"num_classes must be in [2, {len(SHAPES) * 2}], got {num_classes}")
    params = {"kind": "classification", "num_classes": num_classes, "per_class_train": per_class_train,
              "per_class_val": per_class_val, "size": size, "seed": seed, "version": 1}
    if check_marker(root, params):
        return root
    rng = np.random.default_rng(seed)
    colours = list(COLOURS.values())
    for split, n in (("train", per_class_train), ("val", per_class_val)):
        for c in range(num_classes):
            shape, filled = SHAPES[c % len(SHAPES)], c < len(SHAPES)
            out = root / split / f"class_{c:02d}_{shape}{'' if filled else '_outline'}"
            out.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                bg = texture(rng, size, size, colours[int(rng.integers(len(colours)))], int(rng.integers(9)))
                r = float(rng.uniform(0.2, 0.35) * size)
                cy, cx = (float(rng.uniform(r, size - r)) for _ in range(2))
                mask = shape_mask(rng, size, size, shape, cy, cx, r)
                if not filled:
                    mask &= ~shape_mask(rng, size, size, shape, cy, cx, 0.6 * r)
                fg = texture(rng, size, size, colours[int(rng.integers(len(colours)))], int(rng.integers(9)))
                bg[mask] = 255 - fg[mask]
                Image.fromarray(bg.astype(np.uint8)).save(out / f"{i:05d}.png")
    atomic_write_json(root / MARKER, params)
    return root


def check_cityscapes(root: str | Path, split: str, num_classes: int = 19, ignore_index: int = 255,
                     tiny_hint: str = "pipelines/tiny/seg.yaml") -> int:
    """Check a Cityscapes-layout split exists and every label value is a class or ``ignore_index``.

    Returns the number of image/label pairs. Errors name the expected layout, or the bad file and values.
    """
    root = Path(root)
    img_dir, gt_dir = root / "leftImg8bit" / split, root / "gtFine" / split
    layout = (f"expected the Cityscapes layout:\n  {img_dir}/<city>/<name>_leftImg8bit.png\n"
              f"  {gt_dir}/<city>/<name>_gtFine_labelTrainIds.png  (train ids, made with cityscapesscripts' "
              f"createTrainIdLabelImgs)\nNo dataset at hand? Try `fnatune run {tiny_hint}` (generated data).")
    if not img_dir.is_dir() or not gt_dir.is_dir():
        raise FnatuneError(f"dataset not found at {root}: {layout}")
    images = sorted(img_dir.glob("*/*_leftImg8bit.png"))
    if not images:
        raise FnatuneError(f"no images in {img_dir}: {layout}")
    labels = [gt_dir / img.parent.name / img.name.replace("_leftImg8bit.png", "_gtFine_labelTrainIds.png")
              for img in images]
    for img, label in zip(images, labels):
        if not label.exists():
            raise FnatuneError(f"label missing for {img}: expected {label}")
    # every image complete, every label complete and of its image's size, label values in range: in
    # parallel, cached by file size and mtime (fnatune.data.scan)
    from fnatune.data.scan import Scan, image_size

    def label_info(path: Path) -> dict[str, Any]:
        size = image_size(path)
        try:
            values = np.unique(np.asarray(Image.open(path)))
        except OSError as e:
            raise FnatuneError(f"label file {path} cannot be decoded: {e}") from None
        return {"size": list(size), "values": [int(v) for v in values]}

    sizes = Scan(root, f"cityscapes-{split}-images").run(images, lambda p: list(image_size(p)))
    info = Scan(root, f"cityscapes-{split}-labels").run(labels, label_info)
    for img, label, size, li in zip(images, labels, sizes, info):
        if li["size"] != size:
            raise FnatuneError(f"label file {label} is {li['size'][0]}x{li['size'][1]}, but its image {img} is "
                               f"{size[0]}x{size[1]}")
        bad = [v for v in li["values"] if v >= num_classes and v != ignore_index]
        if bad:
            raise FnatuneError(f"label file {label} has values {bad} outside the {num_classes} classes "
                               f"(0..{num_classes - 1}) and the ignore value {ignore_index}")
    return len(images)
