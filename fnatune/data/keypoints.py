"""COCO keypoints data: the 17 joints, a generator of stick figures in COCO's on-disk format, and its checks.

* :func:`generate_coco_keypoints` writes ``<root>/<split>2017/*.jpg`` and
  ``<root>/annotations/person_keypoints_<split>2017.json``: street scenes with front-facing stick figures drawn
  along COCO's skeleton (so the person's left is the image's right, as in a front view), each joint a disc
  coloured by its kind, some joints covered by an occluder (labelled, visibility 1) and joints off the image
  unlabelled (visibility 0). Now and then a crowd region (``iscrowd: 1``) and a person too small to label
  (``num_keypoints: 0``) are annotated, the two kinds of annotation COCO's tools leave out of training and
  scoring. Deterministic by seed; pycocotools reads it unchanged.
* :func:`check_coco_keypoints` names what is wrong in a user's set: the layout, a keypoint list that is not
  ``3 x K`` long, a box outside its image, a category other than person.
* :func:`person_instances` lists the annotations a top-down model trains and is scored on (COCO's rule: not
  crowd, at least one labelled joint).
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from fnatune.data.coco import ann_path, check_box, check_image_files, image_table, read_annotations, write_coco_set
from fnatune.data.synthetic import check_marker, street_background
from fnatune.errors import FnatuneError

KIND = "person_keypoints"
TINY_HINT = "pipelines/tiny/pose.yaml"
KEYPOINTS = ("nose", "left_eye", "right_eye", "left_ear", "right_ear", "left_shoulder", "right_shoulder",
             "left_elbow", "right_elbow", "left_wrist", "right_wrist", "left_hip", "right_hip", "left_knee",
             "right_knee", "left_ankle", "right_ankle")
FLIP_PAIRS = ((1, 2), (3, 4), (5, 6), (7, 8), (9, 10), (11, 12), (13, 14), (15, 16))
SKELETON = ((16, 14), (14, 12), (17, 15), (15, 13), (12, 13), (6, 12), (7, 13), (6, 7), (6, 8), (7, 9), (8, 10),
            (9, 11), (2, 3), (1, 2), (1, 3), (2, 4), (3, 5), (4, 6), (5, 7))  # 1-based, COCO's own
SIGMAS = (0.026, 0.025, 0.025, 0.035, 0.035, 0.079, 0.079, 0.072, 0.072, 0.062, 0.062, 0.107, 0.107, 0.087,
          0.087, 0.089, 0.089)  # COCO's per-joint OKS constants (pycocotools uses the same)
# a front-facing figure, height 1 from the top of the head to the ankles; x: the person's left is +x
_TEMPLATE = np.array([[0.0, 0.07], [0.03, 0.05], [-0.03, 0.05], [0.06, 0.06], [-0.06, 0.06], [0.12, 0.2],
                      [-0.12, 0.2], [0.17, 0.36], [-0.17, 0.36], [0.2, 0.5], [-0.2, 0.5], [0.08, 0.52],
                      [-0.08, 0.52], [0.09, 0.74], [-0.09, 0.74], [0.1, 0.96], [-0.1, 0.96]], np.float32)
_JOINT_COLOURS = ((255, 255, 255), (255, 220, 0), (255, 220, 0), (255, 140, 0), (255, 140, 0), (0, 255, 120),
                  (0, 255, 120), (0, 200, 255), (0, 200, 255), (255, 0, 200), (255, 0, 200), (120, 255, 0),
                  (120, 255, 0), (160, 80, 255), (160, 80, 255), (255, 60, 60), (255, 60, 60))


def _figure(rng: np.random.Generator, h: int, w: int) -> tuple[np.ndarray, float]:
    """Joint positions (17 x 2, image pixels) of one randomly posed figure, and its height in pixels."""
    height = float(rng.uniform(0.45, 0.85) * h)
    joints = _TEMPLATE * height
    joints[:, 0] *= float(rng.uniform(0.8, 1.2))  # a wider or narrower build
    joints[[7, 9], 0] += rng.uniform(-0.08, 0.12, 2) * height  # arms and legs move
    joints[[8, 10], 0] -= rng.uniform(-0.08, 0.12, 2) * height
    joints[[9, 10], 1] += rng.uniform(-0.25, 0.05, 2) * height
    joints[[13, 15], 0] += rng.uniform(-0.03, 0.08, 2) * height
    joints[[14, 16], 0] -= rng.uniform(-0.03, 0.08, 2) * height
    # front view: the person's left is on the image's right; a figure may stand a little off the image's edge
    cx, top = float(rng.uniform(0.1, 0.9) * w), float(rng.uniform(-0.05, 1.0) * (h - height))
    return np.stack([cx + joints[:, 0], top + joints[:, 1]], axis=1), height


def draw_pose_scene(rng: np.random.Generator, h: int, w: int, max_people: int = 3
                    ) -> tuple[np.ndarray, list[dict[str, Any]]]:
    """A street scene with 1..max_people figures. Returns (RGB uint8, annotations without ids): each has
    ``keypoints`` (3 x 17), ``num_keypoints``, ``bbox``, ``area``, ``iscrowd``."""
    img = Image.fromarray(np.clip(street_background(rng, h, w), 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(img)
    anns: list[dict[str, Any]] = []
    for _ in range(int(rng.integers(1, max_people + 1))):
        pts, height = _figure(rng, h, w)
        colour = tuple(int(c) for c in rng.integers(20, 120, 3))
        limb = max(2, int(height * 0.05))
        for a, b in SKELETON:
            draw.line([tuple(pts[a - 1]), tuple(pts[b - 1])], fill=colour, width=limb)
        r = max(2, int(height * 0.025))
        for j, (x, y) in enumerate(pts):
            draw.ellipse([x - r, y - r, x + r, y + r], fill=_JOINT_COLOURS[j])
        vis = np.full(17, 2, np.int64)
        if rng.uniform() < 0.35:  # an occluder over part of the figure: those joints are labelled, not visible
            ox0, oy0 = pts[:, 0].min() + rng.uniform(-5, 5), pts[:, 1].min() + rng.uniform(0.4, 0.7) * height
            box = [ox0, oy0, ox0 + rng.uniform(0.3, 0.6) * height, oy0 + rng.uniform(0.15, 0.3) * height]
            draw.rectangle(box, fill=(70, 70, 70))
            inside = (pts[:, 0] >= box[0]) & (pts[:, 0] <= box[2]) & (pts[:, 1] >= box[1]) & (pts[:, 1] <= box[3])
            vis[inside] = 1
        off = (pts[:, 0] < 0) | (pts[:, 0] > w - 1) | (pts[:, 1] < 0) | (pts[:, 1] > h - 1)
        vis[off] = 0
        labelled = vis > 0
        if not labelled.any():
            continue
        x0, y0 = np.clip(pts[:, 0].min() - r, 0, w - 1), np.clip(pts[:, 1].min() - 2 * r, 0, h - 1)
        x1, y1 = np.clip(pts[:, 0].max() + r, 0, w - 1), np.clip(pts[:, 1].max() + r, 0, h - 1)
        kps = np.concatenate([np.where(labelled[:, None], pts, 0), vis[:, None]], axis=1)
        anns.append({"keypoints": [round(float(v), 2) for v in kps.reshape(-1)], "num_keypoints": int(labelled.sum()),
                     "bbox": [float(x0), float(y0), float(x1 - x0 + 1), float(y1 - y0 + 1)],
                     "area": float((x1 - x0 + 1) * (y1 - y0 + 1) * 0.6), "iscrowd": 0})
    if rng.uniform() < 0.15:  # a person too small to label: an annotation with no keypoints
        x, y = float(rng.uniform(0, w - 8)), float(rng.uniform(0, h - 16))
        draw.rectangle([x, y, x + 6, y + 14], fill=(90, 40, 40))
        anns.append({"keypoints": [0] * 51, "num_keypoints": 0, "bbox": [x, y, 7.0, 15.0], "area": 60.0, "iscrowd": 0})
    if rng.uniform() < 0.1:  # a crowd region: excluded from training and scoring, as COCO's tools do
        x, y = float(rng.uniform(0, w * 0.6)), float(rng.uniform(0, h * 0.5))
        anns.append({"keypoints": [0] * 51, "num_keypoints": 0, "bbox": [x, y, w * 0.3, h * 0.3],
                     "area": w * h * 0.09, "iscrowd": 1})
    return np.asarray(img), anns


def generate_coco_keypoints(root: str | Path, num_train: int = 32, num_val: int = 8, size: Sequence[int] = (128, 192),
                            seed: int = 0, max_people: int = 3) -> Path:
    """Write (or find already written) a synthetic COCO keypoints set under ``root``; see the module docstring."""
    root = Path(root)
    params = {"kind": "coco_keypoints", "num_train": num_train, "num_val": num_val, "size": list(size),
              "seed": seed, "max_people": max_people, "version": 1}
    if check_marker(root, params):
        return root
    category = {"id": 1, "name": "person", "supercategory": "person", "keypoints": list(KEYPOINTS),
                "skeleton": [list(e) for e in SKELETON]}

    def draw(rng: np.random.Generator, h: int, w: int) -> tuple[np.ndarray, list[dict[str, Any]]]:
        img, anns = draw_pose_scene(rng, h, w, max_people)
        return img, [{"category_id": 1, **a} for a in anns]

    return write_coco_set(root, params, draw, [category], "fnatune synthetic COCO keypoints set", KIND)


def read_keypoint_annotations(root: str | Path, split: str) -> dict[str, Any]:
    return read_annotations(root, split, KIND, TINY_HINT)


def check_coco_keypoints(root: str | Path, split: str, num_joints: int = 17, check_files: bool = True) -> dict[str, int]:
    """Check a COCO keypoints split and name the first thing that is wrong (with its annotation id).

    Returns ``{"images", "annotations", "instances"}`` (instances: what a top-down model trains on)."""
    root = Path(root)
    data = read_keypoint_annotations(root, split)
    path = ann_path(root, split, KIND)
    person = {c.get("id") for c in data["categories"] if c.get("name") == "person"}
    if not person:
        raise FnatuneError(f"{path}: no 'person' category; a keypoints set has category person")
    images = image_table(path, data)
    for a in data["annotations"]:
        aid = a.get("id")
        if a.get("category_id") not in person:
            raise FnatuneError(f"{path}: annotation {aid} has category_id {a.get('category_id')}, not person; "
                               "a keypoints set annotates persons only")
        im = images.get(a.get("image_id"))
        if im is None:
            raise FnatuneError(f"{path}: annotation {aid} names image_id {a.get('image_id')}, not in 'images'")
        kps = a.get("keypoints")
        if not isinstance(kps, list) or len(kps) != 3 * num_joints:
            n = len(kps) if isinstance(kps, list) else type(kps).__name__
            raise FnatuneError(f"{path}: annotation {aid} has a keypoint list of {n} numbers; expected "
                               f"3 x {num_joints} = {3 * num_joints} (x, y, visibility per joint)")
        check_box(path, a, im)  # a zero-sized box is allowed here: person_instances skips it
    if check_files:
        check_image_files(root, split, data, path)
    return {"images": len(images), "annotations": len(data["annotations"]), "instances": len(person_instances(data))}


@dataclass(frozen=True)
class Instance:
    """One person a top-down model sees: its image, box (x, y, w, h) and joints (K x 3: x, y, visibility)."""

    image_id: int
    file_name: str
    bbox: tuple[float, float, float, float]
    keypoints: np.ndarray
    ann_id: int


def person_instances(data: dict[str, Any], image_ids: Sequence[int] | None = None) -> list[Instance]:
    """The annotations COCO's rules keep: not crowd, at least one labelled joint, a box of positive size; in
    ``image_ids`` when given (FNA's image split)."""
    images = {im["id"]: im for im in data["images"]}
    keep = set(image_ids) if image_ids is not None else None
    out = []
    for a in data["annotations"]:
        if a.get("iscrowd", 0) or a.get("num_keypoints", 0) == 0 or (keep is not None and a["image_id"] not in keep):
            continue
        x, y, bw, bh = a["bbox"]
        if bw <= 0 or bh <= 0:
            continue
        out.append(Instance(a["image_id"], images[a["image_id"]]["file_name"], (x, y, bw, bh),
                            np.asarray(a["keypoints"], np.float32).reshape(-1, 3), a["id"]))
    return out
