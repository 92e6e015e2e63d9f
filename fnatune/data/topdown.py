"""Top-down pose data: each person's box cropped out of its image by an affine warp to the model's input size,
with SimpleBaseline's augmentation, and its joints as heatmap targets.

The box becomes a centre and a size of the input's aspect ratio, padded by 1.25 (SimpleBaseline). Training
augments each crop: a random scale (``1 +- scale_factor``, Gaussian, clipped), a rotation (Gaussian in
``+- 2 rotation`` degrees, clipped, with probability 0.6) and a horizontal flip (``flip`` probability) that
mirrors the image and swaps COCO's left/right joint pairs. The random draws use NumPy's and Python's global
generators, which :class:`~fnatune.data.BatchStream` seeds per sample, so a resumed run sees the same crops.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from fnatune.data.keypoints import FLIP_PAIRS, Instance
from fnatune.heads.pose import encode


@dataclass(frozen=True)
class Augment:
    scale_factor: float = 0.3
    rotation: float = 40.0
    rotation_prob: float = 0.6
    flip: float = 0.5


def box_to_center_scale(box: Sequence[float], aspect: float, padding: float = 1.25) -> tuple[np.ndarray, np.ndarray]:
    """A box (x, y, w, h) as its centre and a (w, h) size of aspect ratio ``aspect`` (w / h) that covers it, padded."""
    x, y, w, h = box
    center = np.array([x + w / 2, y + h / 2], np.float64)
    if w > aspect * h:
        h = w / aspect
    else:
        w = h * aspect
    return center, np.array([w, h], np.float64) * padding


def crop_matrix(center: np.ndarray, size: np.ndarray, rotation: float, out_size: Sequence[int]) -> np.ndarray:
    """The 2x3 affine map from image pixels to crop pixels: the box of ``size`` around ``center``, turned by
    ``rotation`` degrees, onto an ``out_size`` (h, w) crop."""
    out_h, out_w = int(out_size[0]), int(out_size[1])
    s = out_w / size[0]
    t = math.radians(rotation)
    rot = np.array([[math.cos(t), -math.sin(t)], [math.sin(t), math.cos(t)]]) * s
    offset = np.array([out_w / 2, out_h / 2]) - rot @ center
    return np.concatenate([rot, offset[:, None]], axis=1)


def apply(matrix: np.ndarray, points: np.ndarray) -> np.ndarray:
    """``points`` (N x 2) through a 2x3 affine map."""
    return points @ matrix[:, :2].T + matrix[:, 2]


def invert(matrix: np.ndarray) -> np.ndarray:
    a = np.linalg.inv(np.vstack([matrix, [0.0, 0.0, 1.0]]))
    return a[:2]


def warp(image: Image.Image, matrix: np.ndarray, out_size: Sequence[int]) -> Image.Image:
    """The crop of ``image`` under ``matrix`` (bilinear; outside the image is black).

    ``matrix`` maps pixel indices (pixel centres at integers, as OpenCV's ``warpAffine`` that SimpleBaseline uses);
    PIL asks, for every crop pixel, where it comes from in *continuous* coordinates (centres at +0.5), so the
    inverse map is shifted by half a pixel on both sides. Without the shift a joint lands (scale - 1) / 2 crop
    pixels off its drawn position."""
    a, b, c, d, e, f = invert(matrix).reshape(-1)
    data = (a, b, c + 0.5 - 0.5 * (a + b), d, e, f + 0.5 - 0.5 * (d + e))
    return image.transform((int(out_size[1]), int(out_size[0])), Image.Transform.AFFINE, data=data,
                           resample=Image.Resampling.BILINEAR)


class TopDownDataset(Dataset):
    """Person crops with heatmap targets. Each item: ``img`` (3 x H x W, normalised), ``target`` (K x h x w),
    ``weight`` (K), and what evaluation needs to map predictions back: ``center``, ``size``, ``image_id``."""

    def __init__(self, image_dir: str | Path, instances: Sequence[Instance], input_size: Sequence[int],
                 heatmap_stride: int, sigma: float, mean: Sequence[float], std: Sequence[float],
                 augment: Augment | None = None, padding: float = 1.25,
                 flip_pairs: Sequence[tuple[int, int]] = FLIP_PAIRS) -> None:
        self.image_dir = Path(image_dir)
        self.instances = list(instances)
        self.input_size = (int(input_size[0]), int(input_size[1]))
        self.stride, self.sigma = heatmap_stride, sigma
        self.heatmap_size = (self.input_size[0] // heatmap_stride, self.input_size[1] // heatmap_stride)
        self.mean = torch.tensor(mean, dtype=torch.float32)[:, None, None] / 255.0
        self.std = torch.tensor(std, dtype=torch.float32)[:, None, None] / 255.0
        self.augment, self.padding, self.flip_pairs = augment, padding, flip_pairs

    def __len__(self) -> int:
        return len(self.instances)

    def __getitem__(self, i: int) -> dict[str, Any]:
        inst = self.instances[i]
        image = Image.open(self.image_dir / inst.file_name).convert("RGB")
        joints = inst.keypoints.astype(np.float64).copy()
        center, size = box_to_center_scale(inst.bbox, self.input_size[1] / self.input_size[0], self.padding)
        rotation = 0.0
        a = self.augment
        if a is not None:
            size = size * float(np.clip(np.random.randn() * a.scale_factor + 1, 1 - a.scale_factor, 1 + a.scale_factor))
            if np.random.rand() <= a.rotation_prob:
                rotation = float(np.clip(np.random.randn() * a.rotation, -2 * a.rotation, 2 * a.rotation))
            if np.random.rand() < a.flip:
                image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
                width = image.width
                labelled = joints[:, 2] > 0
                joints[labelled, 0] = width - 1 - joints[labelled, 0]
                for l, r in self.flip_pairs:
                    joints[[l, r]] = joints[[r, l]]
                center = np.array([width - 1 - center[0], center[1]])
        matrix = crop_matrix(center, size, rotation, self.input_size)
        crop = warp(image, matrix, self.input_size)
        joints[:, :2] = apply(matrix, joints[:, :2])
        target, weight = encode(joints.astype(np.float32), self.heatmap_size, self.stride, self.sigma)
        img = torch.from_numpy(np.asarray(crop, np.float32) / 255.0).permute(2, 0, 1)
        return {"img": (img - self.mean) / self.std, "target": torch.from_numpy(target), "weight": torch.from_numpy(weight),
                "center": torch.from_numpy(center), "size": torch.from_numpy(size), "image_id": inst.image_id}


def to_image(coords: np.ndarray, center: np.ndarray, size: np.ndarray, input_size: Sequence[int]) -> np.ndarray:
    """Crop-pixel coordinates (N x 2) of an unrotated crop back to image pixels."""
    return apply(invert(crop_matrix(center, size, 0.0, input_size)), coords)
